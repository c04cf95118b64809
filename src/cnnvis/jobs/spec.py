"""Job specs: one typed, JSON-serializable description per capability, with a stable hash.

    spec = parse_spec({"kind": "class_image", "target": "pelican", "steps": 256})
    spec.canonical_json()   # sorted keys, defaults filled in: the same job asked two ways is one string
    KINDS                   # kind name -> spec class (the CLI, the report, the web and Ray read it)

A spec says WHAT to compute (model, weights, method, parameters, seed), never where (device)
or how fast (progress, batch sizes that do not change the result). Each kind's `run(vm, ctx)`
computes a `Result`; `normalized(vm)` rewrites names that mean the same thing (class names ->
indices, layer aliases -> dotted names) so that their hashes agree.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from cnnvis import DEFAULT_MODEL
from cnnvis.errors import CnnvisError

KINDS: dict[str, type["Spec"]] = {}


class Spec(BaseModel):
    """Base of every job spec. Subclasses set `kind` and implement `run(vm, ctx) -> Result`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # NaN: "should be finite", not a range

    kind: ClassVar[str] = ""
    title: ClassVar[str] = ""  # one line for --help, the web page and the report
    example: ClassVar[dict] = {}  # small, quick fields: the tests run every registered kind with them
    # False: the kind needs no model of its own (it combines stored results, e.g. a top-examples merge): the
    # runner neither loads `model` nor takes its lock and calls `normalized(None)` and `run(None, ctx)`
    loads_model: ClassVar[bool] = True

    model: str = DEFAULT_MODEL  # registry name or path to a checkpoint
    weights: str | None = None  # None: the model's own; 'random'; or a path
    seed: int = 0

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict:
        """The canonical JSON-able form: every field (defaults included) plus the kind."""
        return {"kind": self.kind, **self.model_dump(mode="json")}

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def inputs(self) -> list[str]:
        """Paths of input files whose CONTENT is part of the job's identity (photos)."""
        return []

    def datasets(self) -> list[str]:
        """Dataset refs (names, zips, folders; `cnnvis.data.open_dataset`) whose content is part of the
        job's identity: a named dataset by its name, a zip by its bytes, a folder by its listing."""
        return []

    def extra_models(self) -> list[str]:
        """Names of models besides `model` the job loads (a class image's judge); their weights are part
        of its identity, and the runner hands them over loaded in `ctx.models`."""
        return []

    def keyed_by_model(self) -> bool:
        """Whether the model's weights are part of the job's identity (default: yes). A kind whose result
        follows from its input files alone (which name the weights themselves) says no."""
        return True

    def hash(self, extra: str = "") -> str:
        """sha256 of the canonical form (+ `extra`: weights and input file hashes, code version)."""
        return hashlib.sha256((self.canonical_json() + "|" + extra).encode()).hexdigest()

    # ------------------------------------------------------------------ behaviour
    def normalized(self, vm) -> "Spec":
        """The same job with model-specific names resolved (default: unchanged)."""
        return self

    def run(self, vm, ctx) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


def register(cls: type[Spec]) -> type[Spec]:
    """Class decorator: make a spec kind known to `parse_spec`, the CLI, the report and the tests."""
    if not cls.kind or cls.kind in KINDS:
        raise ValueError(f"job kind {cls.kind!r} is empty or registered twice")
    KINDS[cls.kind] = cls
    return cls


_UNION_BRANCHES = {"float", "int", "str", "bool", "none", "list[int]", "list[str]"}


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err.get("loc", ())) or "(spec)"


def validation_message(e: ValidationError, kind: str) -> str:
    """A pydantic error -> one line naming each bad field and what it should be."""
    parts, seen = [], set()
    for err in e.errors():
        loc = list(err.get("loc", ()))
        if len(loc) > 1 and loc[-1] in _UNION_BRANCHES:  # a union's branches fail one by one: the value's error
            err = {**err, "loc": tuple(loc[:-1])}
            if _loc(err) in seen:
                continue
        seen.add(_loc(err))
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown field {_loc(err)!r}")
        else:
            parts.append(f"field {_loc(err)!r}: {err.get('msg', 'invalid')}")
    fields = ", ".join(sorted(KINDS[kind].model_fields)) if kind in KINDS else ""
    return f"bad {kind} spec: " + "; ".join(parts) + (f" (fields: {fields})" if fields else "")


def make_spec(kind: str, **fields) -> Spec:
    """`make_spec('attribution', method='gradcam', image='cat.jpg')` -> validated spec."""
    from cnnvis.errors import unknown_name

    if kind not in KINDS:
        raise unknown_name("job kind", kind, sorted(KINDS))
    try:
        return KINDS[kind](**fields)
    except ValidationError as e:
        raise CnnvisError(validation_message(e, kind)) from None


def json_type(v) -> str:
    """The JSON name of a decoded JSON value's type ('array', 'object', 'number', ...)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(v), type(v).__name__)


def check_json_types(cls, body: dict) -> None:
    """CnnvisError when a top-level field's JSON type is not one its kind's schema takes (pydantic's lax mode
    would read `true` as 1 and `"3"` as 3); unknown fields and values inside arrays are left to the spec."""
    props = cls.model_json_schema().get("properties", {})
    for name, v in body.items():
        prop = props.get(name)
        if prop is None or v is None and name == "model":
            continue
        alts = prop.get("anyOf", [prop])
        if any("type" not in a for a in alts):
            continue
        allowed = {a["type"] for a in alts}
        t = json_type(v)
        if t == "number" and isinstance(v, int) or isinstance(v, float) and v.is_integer():
            t = "integer" if "integer" in allowed else t
        if t not in allowed and not (t == "integer" and "number" in allowed):
            want = " or ".join(sorted(allowed))
            raise CnnvisError(f"bad {cls.kind} spec: field {name!r} must be {want}, not {t} {json.dumps(v)[:60]}")


def parse_spec(obj: "Spec | dict | str | bytes") -> Spec:
    """A spec, a dict with a 'kind' key, or its JSON text -> a validated spec (CnnvisError if not)."""
    if isinstance(obj, Spec):
        return obj
    text = isinstance(obj, (str, bytes))
    if text:
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as e:
            raise CnnvisError(f"the job spec is not valid JSON: {e}") from None
        except RecursionError:
            raise CnnvisError("the job spec is nested too deeply to be one; a spec is a flat JSON object with a "
                              "'kind' field") from None
    if not isinstance(obj, dict):
        raise CnnvisError(f"a job spec is a JSON object with a 'kind' field, got {type(obj).__name__}")
    obj = dict(obj)
    kind = obj.pop("kind", None)
    if not isinstance(kind, str):
        raise CnnvisError(f"the job spec has no 'kind'; one of: {', '.join(sorted(KINDS))}")
    spec = make_spec(kind, **obj)
    if text:  # JSON from a user: `true` is not a seed, "224" not a size (pydantic's lax mode would take both)
        check_json_types(type(spec), obj)
    return spec
