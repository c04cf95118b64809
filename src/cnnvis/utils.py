"""Small shared helpers: device choice, atomic file writes, model state guard."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnvis.errors import CnnvisError
from cnnvis.progress import Progress, progress_iter  # noqa: F401  (their home is cnnvis.progress; kept for old imports)


def module_device(module: nn.Module) -> torch.device:
    """Where a module lives: its first parameter's device, else its first buffer's, else the CPU.
    The one rule every part of cnnvis uses (VisModel.device, attribution, deconvnet, probes)."""
    for t in (next(module.parameters(), None), next(module.buffers(), None)):
        if t is not None:
            return t.device
    return torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype | None:
    """The floating dtype of a module's first floating parameter (None without one): the dtype its input is
    cast to, so a model kept in float64 or bfloat16 takes the float32 images every part of cnnvis makes."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', 'auto' or None (= auto) -> torch.device; clear error if CUDA is missing."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CnnvisError(f"device {device!r} asked for, but no CUDA GPU is available; use the device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise CnnvisError(f"unknown device {device!r}; use cpu, cuda or auto")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Write to a temp file next to `path`, then rename: never a half-written file.

    A folder that cannot be made or written, or a full disk, is a CnnvisError naming the path.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs get the usual permissions
            os.replace(tmp, path)
        except OSError as e:
            raise _write_error(path, e) from None
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            raise _write_error(path, e) from None
        raise


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Write a whole folder at once: `with atomic_dir(out) as tmp:` gives an empty hidden folder beside `out`
    to write into; when the block ends normally it replaces `out` (usual permissions, the old folder removed).
    When it raises, `out` is left as it was (put back if the swap had moved it) and the temp folder removed;
    an OSError becomes one CnnvisError naming `out`."""
    import shutil

    out = Path(out)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=parent))
    except OSError as e:
        raise _write_error(out, e) from None
    old = None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders
        for f in tmp.iterdir():
            if f.is_file():
                os.chmod(f, 0o666 & ~umask)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, old / "d")
        os.replace(tmp, out)
    except BaseException as e:
        if old is not None and (old / "d").exists() and not out.exists():
            os.replace(old / "d", out)  # put the earlier output back
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        if isinstance(e, OSError):
            raise _write_error(out, e) from None
        raise
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)


def _write_error(path: Path, e: OSError) -> CnnvisError:
    return CnnvisError(f"cannot write {str(path)!r}: {e.strerror or type(e).__name__}; "
                       f"choose a file in a folder you can write to")


def atomic_path(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """`write(tmp)` writes a temp file next to `path` (by its name: torch.save, safetensors), which is
    then renamed onto `path` with mode 0644: never a half-written file. The folder must exist; an
    error (or Ctrl-C) removes the temp file and propagates."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def unit_scale(Y) -> np.ndarray:  # noqa: F821  (numpy is imported when called)
    """(N, 2) -> (N, 2) float64 scaled per axis to [0, 1] (t-SNE axes carry no units)."""
    import numpy as np

    Y = np.asarray(Y, np.float64)
    lo, hi = Y.min(0), Y.max(0)
    return (Y - lo) / np.where(hi > lo, hi - lo, 1.0)


def check_writable(path: str | os.PathLike) -> None:
    """Raise a CnnvisError now if `path` cannot be written later: its folder (or, when that does
    not exist yet, the nearest existing folder above it) must take a new file. Tried for real,
    not with os.access (which says yes to root, also for /proc)."""
    path = Path(path)
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CnnvisError(f"cannot write {str(path)!r}: {str(probe)!r} is a file, not a folder; "
                          f"choose a file in a folder you can write to")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".cnnvis-probe.", suffix=".part", dir=probe)
    except OSError as e:
        raise _write_error(path, e) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def check_output_path(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output path that is one of the input files (it would destroy the input)."""
    out = Path(out)
    for inp in inputs:
        inp = Path(inp)
        try:
            same = out.exists() and inp.exists() and os.path.samefile(out, inp)
        except OSError:
            same = False
        if same or out.resolve() == inp.resolve():
            raise CnnvisError(f"output {str(out)!r} is the input file; choose another output so the input is kept")
    if out.exists() and out.is_dir():
        raise CnnvisError(f"output {str(out)!r} is a directory; give a file name such as {out / 'out.png'}")
    return out


@contextlib.contextmanager
def model_guard(model: nn.Module, *, eval_mode: bool = True, freeze: bool = True) -> Iterator[nn.Module]:
    """Put `model` in eval mode with parameters frozen; restore every flag afterwards, also on error.

    In-place activations are switched off inside the block. Restores each module's `training`
    and `inplace` flags and each parameter's `requires_grad`.
    """
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        raise CnnvisError("the model has uninitialized parameters (a torch.nn.Lazy* module); run it once on an "
                          "input of its size first, e.g. model(torch.zeros(1, 3, 224, 224))")
    training = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    inplace = {m: m.inplace for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)}
    try:
        for m in inplace:  # in-place activations would overwrite captured pre-activation tensors
            m.inplace = False
        if eval_mode:
            model.eval()
        if freeze:
            for p in grads:
                p.requires_grad_(False)
        yield model
    finally:
        for m, flag in training.items():
            m.training = flag
        for p, flag in grads.items():
            p.requires_grad_(flag)
        for m, flag in inplace.items():
            m.inplace = flag


from cnnvis.malloc import tune_malloc  # noqa: E402,F401  (torch-free home, for a fast CLI start)
