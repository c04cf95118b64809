"""A user's own model by path: `model.safetensors` + `model.json` (its metadata) side by side.

    save_checkpoint('runs/mnist', net, architecture='mnist_cnn')   # -> runs/mnist/model.json
    vm = load('runs/mnist')              # also 'runs/mnist/model.json' or '.../model.safetensors'
    cnnvis classify --model runs/mnist digit.png

The JSON (one object; `cnnvis train` writes the same):

    {"format": "cnnvis-checkpoint", "version": 1,
     "name": "mnist",                          # optional; default: the folder or file name
     "architecture": "mnist_cnn",              # a cnnvis arch, 'torchvision:NAME' or 'timm:NAME'
     "arch_args": {},                          # optional keyword arguments of the builder
     "task": "classification",                 # or "edges"
     "classes": ["0", "1", ...],               # labels; their count sets the output size
     "input": {"shape": [1, 28, 28],           # (C, H, W); = VisModel.input_config()
               "mean": [0.1307], "std": [0.3081],   # per channel, [0, 1] units (RGB order)
               "resize": 28,                   # optional: shorter side before the centre crop H
               "bgr": false},                  # optional: feed 3 channels in BGR order (Caffe)
     "weights": "model.safetensors",           # optional, relative to the JSON
     "weights_sha256": "...",                  # optional; checked when present
     "description": "...", "training": {...}}  # free text / free-form, kept, not read

Every problem (no JSON, corrupt JSON, missing fields, unknown architecture, weights that do
not fit the metadata) is one CnnvisError naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from torch import nn

from cnnvis.errors import CnnvisError

FORMAT = "cnnvis-checkpoint"
VERSION = 1
WEIGHTS_NAME, META_NAME = "model.safetensors", "model.json"
TASKS = ("classification", "edges")


def looks_like_checkpoint(name: str | os.PathLike) -> bool:
    """Is `name` meant as a path (an existing file/folder, a path separator, or a .json/.safetensors
    name, or a Keras .h5/.hdf5/.keras name)?"""
    s = str(name)
    return (os.path.exists(s) or os.sep in s or "/" in s
            or s.lower().endswith((".json", ".safetensors", ".h5", ".hdf5", ".keras")))


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """A folder, its .json or its .safetensors -> (metadata JSON, weights file)."""
    p = Path(path)
    if p.is_dir():
        meta = p / META_NAME
        if not meta.is_file():
            jsons = sorted(p.glob("*.json"))
            if len(jsons) == 1:
                meta = jsons[0]
            elif not jsons and ((p / ".training.lock").exists() or (p / "training-state.pt").exists()):
                raise CnnvisError(f"{str(p)!r} is a `cnnvis train` run that has not finished (no {META_NAME!r} yet); "
                                  f"run the same cnnvis train command again to resume it"
                                  + (f" (the finished run it replaces is kept in {str(p / '.overwritten')!r} until "
                                     f"then)" if (p / ".overwritten").is_dir() else ""))
            elif not jsons:
                raise CnnvisError(f"checkpoint folder {str(p)!r} has no metadata {META_NAME!r}; write it beside the "
                                  f"weights with cnnvis.models.save_checkpoint (architecture, classes, input shape)")
            else:
                raise CnnvisError(f"checkpoint folder {str(p)!r} has several .json files and no {META_NAME!r}; "
                                  f"pass the metadata file itself, e.g. --model {jsons[0]}")
        return meta, meta.with_suffix(".safetensors")
    if p.suffix.lower() == ".json":
        if not p.is_file():
            raise CnnvisError(f"checkpoint metadata {str(p)!r} does not exist")
        return p, p.with_suffix(".safetensors")
    if p.suffix.lower() == ".safetensors":
        if not p.is_file():
            raise CnnvisError(f"checkpoint weights {str(p)!r} do not exist")
        for meta in (p.with_suffix(".json"), p.parent / META_NAME):
            if meta.is_file():
                return meta, p
        raise CnnvisError(f"checkpoint {str(p)!r} has no metadata: expected {str(p.with_suffix('.json'))!r} beside it "
                          f"(architecture, classes, input shape, normalization); write it with "
                          f"cnnvis.models.save_checkpoint")
    if not p.exists():
        raise CnnvisError(f"model {str(path)!r} is neither a registered model name (see `cnnvis models`) nor an "
                          f"existing checkpoint (a folder with {META_NAME} + {WEIGHTS_NAME}, or one of those files)")
    raise CnnvisError(f"checkpoint {str(p)!r} is not a .json or .safetensors file; pass the folder holding "
                      f"{META_NAME} + {WEIGHTS_NAME}, or one of them")


def checkpoint_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(metadata JSON, the weights file `load_checkpoint` reads by default): a .safetensors named
    in `path` is the one meant; for a folder or a .json, the JSON's 'weights' field when given."""
    meta_path, wpath = _paths(path)
    if Path(path).is_dir() or Path(path).suffix.lower() != ".safetensors":
        w = read_metadata(meta_path).get("weights")
        if w:
            wpath = meta_path.parent / w
    return meta_path, wpath


def read_metadata(path: str | os.PathLike) -> dict:
    """Read and check a checkpoint's JSON -> a normalized dict (raises CnnvisError naming the file)."""
    meta_path, _ = _paths(path)
    src = str(meta_path)
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CnnvisError(f"checkpoint metadata {src!r} is not valid JSON ({e.msg} at line {e.lineno} column "
                          f"{e.colno}); fix it or write it again with cnnvis.models.save_checkpoint") from None
    except RecursionError:
        raise CnnvisError(f"checkpoint metadata {src!r} is nested too deeply to be one; write it again with "
                          "cnnvis.models.save_checkpoint") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CnnvisError(f"checkpoint metadata {src!r} could not be read ({e})") from None
    return _check_metadata(raw, src)


def _check_metadata(raw, src: str) -> dict:
    def bad(field: str, want: str):
        return CnnvisError(f"checkpoint metadata {src!r}: {field!r} must be {want}, got "
                           f"{json.dumps(_get(raw, field))[:60]}; fix the JSON")

    if not isinstance(raw, dict):
        raise CnnvisError(f"checkpoint metadata {src!r} must hold a JSON object, got {type(raw).__name__}; fix the JSON")
    if raw.get("format", FORMAT) != FORMAT:
        raise bad("format", f"{FORMAT!r}")
    if not isinstance(raw.get("version", VERSION), int) or raw.get("version", VERSION) > VERSION:
        raise CnnvisError(f"checkpoint metadata {src!r} has version {raw.get('version')!r}; this cnnvis reads "
                          f"version {VERSION} or lower (upgrade cnnvis)")
    arch = raw.get("architecture")
    if not isinstance(arch, str) or not arch.strip():
        raise CnnvisError(f"checkpoint metadata {src!r} has no 'architecture' (e.g. \"mnist_cnn\", "
                          f"\"torchvision:resnet18\"); add it to the JSON")
    task = raw.get("task", "classification")
    if task not in TASKS:
        raise bad("task", " or ".join(repr(t) for t in TASKS))
    classes = raw.get("classes")
    if classes is not None and (not isinstance(classes, list) or not classes
                                or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes)):
        raise bad("classes", "a non-empty list of class names")
    if classes:
        seen: dict[str, int] = {}
        for c in classes:
            seen[str(c)] = seen.get(str(c), 0) + 1
        dup = [c for c, n in seen.items() if n > 1]
        if dup:
            raise CnnvisError(f"checkpoint metadata {src!r}: 'classes' must be distinct names, but {dup[0]!r} appears "
                              f"{seen[dup[0]]} times" + (f" ({len(dup)} names repeat)" if len(dup) > 1 else "")
                              + "; give each output its own name in the JSON")
    inp = raw.get("input")
    if not isinstance(inp, dict):
        raise CnnvisError(f"checkpoint metadata {src!r} has no 'input' object with 'shape' [C, H, W] and "
                          f"per-channel 'mean'/'std'; add it to the JSON")
    shape = inp.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise bad("input.shape", "[C, H, W] with positive integers")
    c = shape[0]
    norm = {}
    for k, default in (("mean", 0.0), ("std", 1.0)):
        v = inp.get(k, [default] * c)
        if not (isinstance(v, list) and len(v) == c
                and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in v)):
            raise bad(f"input.{k}", f"a list of {c} numbers (one per channel)")
        if not all(math.isfinite(t) for t in v):  # JSON's NaN/Infinity: every probability would be NaN
            raise bad(f"input.{k}", "finite numbers, one per channel (no NaN or Infinity)")
        if k == "std" and any(t <= 0 for t in v):  # zero divides by zero; a negative std inverts the image
            raise bad("input.std", "positive numbers (a negative std would invert the image, zero divides by zero)")
        norm[k] = [float(t) for t in v]
    resize = inp.get("resize", shape[1])
    if not isinstance(resize, int) or resize < shape[1]:
        raise bad("input.resize", f"an integer >= the crop {shape[1]}")
    bgr = inp.get("bgr", False)
    if not isinstance(bgr, bool) or (bgr and c != 3):
        raise bad("input.bgr", "true (3 channels fed in BGR order) or false")
    args = raw.get("arch_args", {})
    if not isinstance(args, dict):
        raise bad("arch_args", "an object of keyword arguments")
    weights = raw.get("weights")
    if weights is not None and not isinstance(weights, str):
        raise bad("weights", "a file name relative to the JSON")
    out = dict(raw)
    out.update(architecture=arch.strip(), task=task, classes=[str(c) for c in classes] if classes else None,
               input={"shape": list(shape), "mean": norm["mean"], "std": norm["std"], "resize": resize, "bgr": bgr},
               arch_args=args)
    return out


def _get(raw, dotted: str):
    cur = raw
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def _build(meta: dict, src: str) -> tuple[nn.Module, dict, int]:
    """Metadata -> (random-weight module, aliases, min_size)."""
    from cnnvis.models.archs import _ARCHS, build_arch

    arch = meta["architecture"]
    shape = tuple(meta["input"]["shape"])
    n = len(meta["classes"]) if meta["classes"] else None
    args = dict(meta["arch_args"])
    kind, _, name = arch.partition(":") if ":" in arch else ("", "", arch)
    if not kind and name in _ARCHS:
        e = _ARCHS[name]
        return build_arch(name, n, shape, **args), dict(e.aliases), e.min_size
    if kind not in ("", "torchvision", "timm"):
        raise CnnvisError(f"checkpoint metadata {src!r}: unknown architecture {arch!r}; use a cnnvis arch "
                          f"({', '.join(_ARCHS)}), 'torchvision:NAME' or 'timm:NAME'")
    if kind in ("", "torchvision"):
        from torchvision.models import get_model, list_models

        if name in list_models():
            if shape[0] != 3:
                raise CnnvisError(f"checkpoint metadata {src!r}: torchvision {name!r} takes 3 channels, the JSON says "
                                  f"input shape {shape}; use 'timm:{name}' (in_chans) or fix the JSON")
            kw = {"num_classes": n} if n else {}
            return get_model(name, weights=None, **kw, **args), {}, 32
        if kind:
            raise CnnvisError(f"checkpoint metadata {src!r}: torchvision has no model {name!r}; fix 'architecture'")
    import timm

    if timm.is_model(name):
        kw = {"num_classes": n} if n else {}
        return timm.create_model(name, pretrained=False, in_chans=shape[0], **kw, **args), {}, 32
    from cnnvis.errors import unknown_name

    raise unknown_name("architecture", arch, list(_ARCHS),
                       hint=f"in {src!r}: a cnnvis arch, 'torchvision:NAME' or 'timm:NAME'; fix the JSON")


def load_checkpoint(path: str | os.PathLike, weights: str | os.PathLike | None = None):
    """A checkpoint folder, its .json or its .safetensors -> VisModel (on the CPU, eval mode).

    weights: None = the checkpoint's own tensors, 'random' = the architecture untrained, or
    another .safetensors/.pth file for the same metadata.
    """
    from cnnvis.models.preprocess import Preprocess
    from cnnvis.models.registry import VisModel, vgg_aliases
    from cnnvis.models.weights import apply_state_dict, read_state_dict

    meta_path, wpath = checkpoint_files(path)
    meta = read_metadata(meta_path)
    src = str(meta_path)
    model, aliases, min_size = _build(meta, src)
    if weights not in ("random",):
        wfile = Path(weights) if weights not in (None, "pretrained", "DEFAULT") else wpath
        if wfile.exists() and not wfile.is_file():
            raise CnnvisError(f"checkpoint {src!r} names weights {str(wfile)!r}, which is not a regular file (a "
                              f"folder, device or FIFO); put the .safetensors beside the JSON or fix its 'weights' field")
        if not wfile.is_file():
            raise CnnvisError(f"checkpoint {src!r} names weights {str(wfile)!r}, which do not exist; put the "
                              f".safetensors beside the JSON or fix its 'weights' field")
        want = meta.get("weights_sha256")  # the sha256 of the file the JSON names
        own = meta_path.parent / meta["weights"] if meta.get("weights") else wpath
        if want and wfile == own and _sha256(wfile) != want:
            raise CnnvisError(f"checkpoint weights {str(wfile)!r} do not match the sha256 in {src!r}; the file "
                              f"changed after the JSON was written: save the checkpoint again")
        sd = read_state_dict(wfile)
        try:
            apply_state_dict(model, sd, source=f"weights {str(wfile)!r}")
        except CnnvisError as e:
            shape = tuple(meta["input"]["shape"])
            n = len(meta["classes"]) if meta["classes"] else "default"
            raise CnnvisError(f"{e} The metadata {src!r} says architecture {meta['architecture']!r}, {n} classes, "
                              f"input {shape}: fix the JSON or save the checkpoint again with "
                              f"cnnvis.models.save_checkpoint") from None
    inp = meta["input"]
    shape = tuple(inp["shape"])
    _check_runs(model, shape, src, meta["architecture"], min_size)
    prep = Preprocess(tuple(inp["mean"]), tuple(inp["std"]), bgr=inp["bgr"], resize=inp["resize"], crop=shape[1])
    name = meta.get("name") or (meta_path.parent.name if meta_path.name == META_NAME else meta_path.stem)
    desc = meta.get("description") or f"checkpoint {src} ({meta['architecture']})"
    return VisModel(str(name), model, prep, meta["classes"], meta["task"], aliases or vgg_aliases(model),
                    min_size=min_size, description=desc, input_shape=shape)


def _check_runs(model: nn.Module, shape: tuple, src: str, arch: str, min_size: int) -> None:
    """Refuse, at load, an input shape the network cannot take (too small for its pooling, a head made for
    another size): one forward of a (1, C, H, W) grey image, no grad, in eval mode (nothing changes)."""
    import torch

    if min(shape[1:]) < min_size:
        raise CnnvisError(f"checkpoint metadata {src!r}: input shape {list(shape)} is too small for {arch!r}, which "
                          f"needs at least {min_size} x {min_size} pixels; fix 'input.shape' in the JSON")
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.full((1, *shape), 0.5))
    except (RuntimeError, ValueError, IndexError) as e:
        why = " ".join(str(e).split())[:200]
        raise CnnvisError(f"checkpoint metadata {src!r}: the {arch!r} network cannot run on its input shape "
                          f"{list(shape)} ({why}); fix 'input.shape' in the JSON (the size it was trained "
                          f"on)") from None
    finally:
        model.train(training)


def save_checkpoint(path: str | os.PathLike, model, *, architecture: str, classes=None, input_shape=None,
                    mean=None, std=None, task: str | None = None, arch_args: dict | None = None,
                    name: str | None = None, description: str = "", extra: dict | None = None) -> Path:
    """Write `model`'s weights (.safetensors) and metadata (.json) -> the JSON's path.

    path: a folder (gets model.safetensors + model.json) or a '.safetensors' file name (the JSON
    gets its stem). model: a VisModel (its labels, input contract and task are the defaults) or
    an nn.Module (defaults: the registered arch's contract and labels; for a torchvision/timm
    name the module's inferred one, no normalization: pass mean/std). architecture: a cnnvis
    arch name (`list_archs()`), 'torchvision:NAME' or 'timm:NAME'.
    extra: more fields for the JSON (e.g. {'training': {...}}). The model is not changed;
    files are written to temporary names and renamed, so a killed process leaves no half file.
    """
    from safetensors.torch import save_file

    from cnnvis.models.archs import _ARCHS
    from cnnvis.models.registry import as_vismodel
    from cnnvis.utils import atomic_path

    vm = as_vismodel(model)
    e = _ARCHS.get(architecture)
    own = model is vm  # a VisModel: its contract is the default
    shape = tuple(input_shape or (vm.input_shape if own or e is None else e.input_shape))
    mean = tuple(mean if mean is not None else (vm.preprocess.mean if own or e is None else e.mean))
    std = tuple(std if std is not None else (vm.preprocess.std if own or e is None else e.std))
    if classes is None:
        classes = list(vm.labels) if vm.labels else (list(e.labels) if e and e.labels else None)
    p = Path(path)
    if p.suffix.lower() == ".safetensors":
        wpath, mpath = p, p.with_suffix(".json")
    else:
        wpath, mpath = p / WEIGHTS_NAME, p / META_NAME
    same = own and vm.preprocess.crop == shape[1]
    resize = vm.preprocess.resize if same else shape[1]
    meta = {"format": FORMAT, "version": VERSION, "name": name or (p.name if p.suffix == "" else p.stem),
            "architecture": architecture, "arch_args": dict(arch_args or {}),
            "task": task or vm.task, "classes": [str(x) for x in classes] if classes else None,
            "input": {"shape": list(shape), "mean": [float(v) for v in mean], "std": [float(v) for v in std],
                      "resize": resize, "bgr": bool(own and vm.preprocess.bgr)},
            "weights": wpath.name, "weights_sha256": "", "description": description}
    meta.update(extra or {})
    try:  # refuse bad metadata before writing anything
        _check_metadata(meta, str(mpath))
    except CnnvisError as e:
        raise CnnvisError(f"save_checkpoint: {str(e).replace('fix the JSON', 'fix the arguments')}") from None
    wpath.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().clone().contiguous() for k, v in vm.model.state_dict().items()}
    atomic_path(wpath, lambda tmp: save_file(sd, tmp))
    meta["weights_sha256"] = _sha256(wpath)
    text = json.dumps(meta, indent=2)
    atomic_path(mpath, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return mpath


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
