"""What the server is willing to run: a request body -> a validated job Spec over its own models, its
bundled and uploaded photos and its datasets only (`build_spec`); and the way results name things
back to the client (`public`: an upload's cache path -> 'upload:<sha>')."""

from __future__ import annotations

import json
import math
from pathlib import Path

from cnnvis.errors import CnnvisError
from cnnvis.jobs.spec import check_json_types, json_type  # noqa: F401  (json_type re-exported)
from cnnvis.web.context import WebContext, embedded
from cnnvis.web.uploads import UPLOAD_RE, read_upload

DATA_KINDS_FIELD = "data"


def need_string(body: dict, name: str, what: str) -> None:
    """CnnvisError (-> 400) when body[name] is given but is not a JSON string (a list, object, number)."""
    v = body.get(name)
    if v is not None and not isinstance(v, str):
        raise CnnvisError(f"field {name!r} must be a string ({what}), not {json_type(v)} {json.dumps(v)[:60]}")


def build_spec(ctx: WebContext, body: dict):
    """A request body -> a validated Spec the server is willing to run (served models, its photos and
    datasets only); CnnvisError (400) or HTTPException (404: unknown model) otherwise."""
    from cnnvis.errors import unknown_name
    from cnnvis.images import SAMPLE_NAMES
    from cnnvis.jobs import KINDS, parse_spec

    served = ctx.served
    body = dict(body)
    kind = body.get("kind")
    if kind is None:
        raise CnnvisError(f"the job spec has no 'kind'; one of: {', '.join(sorted(KINDS))}")
    need_string(body, "kind", f"a job kind: one of {', '.join(sorted(KINDS))}")
    if kind not in KINDS:
        raise unknown_name("job kind", str(kind), sorted(KINDS))
    need_string(body, "model", f"a model id: one of {', '.join(served)}")
    need_string(body, "judge", f"'none' or a model id: one of {', '.join(served)}")
    need_string(body, DATA_KINDS_FIELD, "a dataset name; leave it out for the model's own dataset")
    m = ctx.model_of(body.get("model"))
    body["model"] = m.ref
    if body.get("weights") is not None:
        raise CnnvisError("the field 'weights' cannot be set here: the server runs only the models named on its "
                          "command line; leave it out")
    fields = KINDS[kind].model_fields
    check_json_types(KINDS[kind], body)

    def photo(v):
        if isinstance(v, str):
            mt = UPLOAD_RE.match(v)
            if mt:
                p = ctx.uploads / f"{mt.group(1)}.png"
                if not p.is_file() or p.is_symlink():
                    raise CnnvisError(f"no uploaded photo {v!r}; upload it first (POST /api/uploads)")
                if read_upload(p, mt.group(1)) is None:
                    raise CnnvisError(f"the uploaded photo {v!r} is damaged on the server (its bytes no longer match "
                                      f"its sha256); upload it again (POST /api/uploads)")
                return str(p)
        if isinstance(v, list):
            return [photo(x) for x in v]
        return v

    for k in list(body):
        if k not in ("kind", "model"):
            body[k] = photo(body[k])
    if DATA_KINDS_FIELD in fields:
        allowed = {m.data} if m.data else set()  # only the model's own, which fits it
        given = body.get(DATA_KINDS_FIELD)
        if given is None and fields[DATA_KINDS_FIELD].is_required():
            if not m.data:
                raise CnnvisError(f"no dataset is served for model {m.mid!r} ({m.data_note}); start the server "
                                  f"with --data {m.mid}=DATA")
            body[DATA_KINDS_FIELD] = m.data
        elif given is not None and given not in allowed:
            raise CnnvisError(f"dataset {given!r} is not served here; use {m.data!r}" if m.data else
                              f"no dataset is served for model {m.mid!r}; start the server with --data {m.mid}=DATA")
    judge = body.get("judge")
    by_ref = ctx.by_ref
    if isinstance(judge, str) and judge != "none":
        body["judge"] = ctx.model_of(judge).ref if (judge in served or judge in by_ref) else judge
    need_string(body, "other", f"a model id to compare with: one of {', '.join(served)}")
    other = body.get("other")
    if isinstance(other, str) and (other in served or other in by_ref):  # compare: a served model by its id
        body["other"] = ctx.model_of(other).ref
    spec = parse_spec(body)
    uploads = ctx.uploads.resolve()
    for p in spec.inputs():
        p = str(p)
        if p.startswith("sample:"):
            if p.split(":", 1)[1] not in SAMPLE_NAMES:
                raise unknown_name("sample photo", p.split(":", 1)[1], SAMPLE_NAMES)
            continue
        q = Path(p)
        if q.parent.resolve() != uploads or not UPLOAD_RE.match("upload:" + q.stem) or q.suffix != ".png" \
                or q.is_symlink() or not q.is_file():
            raise CnnvisError(f"{p!r} is not served here: this server reads only its own photos, 'upload:<sha256>' "
                              f"(POST /api/uploads) or 'sample:NAME', and the datasets it was started with")
    for mname in spec.extra_models():  # a judge: a served model or one embedded in the package, never a
        if mname not in by_ref and not embedded(mname):  # path or a download
            raise CnnvisError(f"model {mname!r} is not served here; use one of {', '.join(served)} or 'none'")
    _check_names(m.vm, spec)
    return spec


def _check_names(vm, spec) -> None:
    """Layers and a class the served model does not have: a 400 now, not a job that fails later (names only,
    no forward pass)."""
    from cnnvis.jobs.helpers import class_target
    from cnnvis.layers import resolve_layer

    for field in ("layer", "layers"):
        v = getattr(spec, field, None)
        for n in [v] if isinstance(v, str) else (v or []):
            resolve_layer(vm, n)  # unknown: one line with close names
    t = getattr(spec, "target", None)
    if t is not None:
        class_target(vm, t)


def public_text(ctx: WebContext, text: str) -> str:
    """A message as the client named things: an upload's path in the server's cache -> 'upload:<sha>'."""
    import os
    import re

    return re.sub(re.escape(str(ctx.uploads) + os.sep) + r"([0-9a-f]{64})\.png", r"upload:\1", text)


def public(ctx: WebContext, v):
    """Result data as the client named things: an uploaded photo's cache path -> 'upload:<sha>'."""
    def pub(v):
        if isinstance(v, str):
            return public_text(ctx, v)
        if isinstance(v, list):
            return [pub(x) for x in v]
        if isinstance(v, dict):
            return {k: pub(x) for k, x in v.items()}
        if isinstance(v, float) and not math.isfinite(v):
            return None  # JSON has no NaN/inf: a non-finite number is shown as null, never a 500
        return v

    return pub(v)
