"""STL-10's binary format, read with a numpy memmap (nothing is loaded up front).

``{split}_X.bin``: uint8, N images of 3 x 96 x 96, each colour plane stored column-major
(so the file is an array (N, 3, W, H)); ``{split}_y.bin``: uint8 labels 1..10 (absent for
``unlabeled``); ``class_names.txt``: one name per line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnvis.data.base import ArraySource
from cnnvis.errors import CnnvisError

STL10_SIZE = 96
STL10_IMAGE_BYTES = 3 * STL10_SIZE * STL10_SIZE
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
STL10_SPLITS = ("train", "test", "unlabeled")


def find_stl10_dir(root: Path) -> Path | None:
    """The folder holding ``*_X.bin`` under `root` (root itself or root/stl10_binary), or None."""
    for d in (root, root / "stl10_binary"):
        if d.is_dir() and any(d.glob("*_X.bin")):
            return d
    return None


def read_stl10(folder: str | Path, split: str = "train", name: str = "stl10") -> ArraySource:
    """An ArraySource over ``folder/{split}_X.bin``: images (N, 3, 96, 96) as (C, H, W), labels - 1."""
    folder = Path(folder)
    x_path = folder / f"{split}_X.bin"
    if not x_path.is_file():
        have = sorted(p.name[: -len("_X.bin")] for p in folder.glob("*_X.bin"))
        raise CnnvisError(f"STL-10 split {split!r} not found: no {x_path}"
                          + (f" (splits here: {', '.join(have)})" if have else ""))
    nbytes = x_path.stat().st_size
    if nbytes == 0 or nbytes % STL10_IMAGE_BYTES:
        raise CnnvisError(f"{x_path} is {nbytes} bytes, not a multiple of {STL10_IMAGE_BYTES} "
                          "(3x96x96): not an STL-10 image file, or a truncated one; download it again")
    n = nbytes // STL10_IMAGE_BYTES
    images = np.memmap(x_path, dtype=np.uint8, mode="r", shape=(n, 3, STL10_SIZE, STL10_SIZE))
    y_path = folder / f"{split}_y.bin"
    if y_path.is_file():
        y = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
        if len(y) != n:
            raise CnnvisError(f"{y_path} has {len(y)} labels but {x_path.name} has {n} images")
        if len(y) and (y.min() < 1 or y.max() > 10):
            raise CnnvisError(f"{y_path}: labels must be 1..10, found {y.min()}..{y.max()}")
        labels = y - 1
    else:
        labels = np.full(n, -1, np.int64)  # 'unlabeled'
    names_path = folder / "class_names.txt"
    classes = (names_path.read_text().split() if names_path.is_file() else list(STL10_CLASSES))
    return ArraySource(name, images, labels, classes, layout="NCWH")


def write_stl10(folder: str | Path, split: str, images: np.ndarray, labels: np.ndarray | None,
                classes: list[str] | None = None) -> Path:
    """Write images (N, 3, 96, 96) uint8 as (C, H, W) and labels 0..9 in STL-10's binary format."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = np.asarray(images, np.uint8)
    if images.ndim != 4 or images.shape[1:] != (3, STL10_SIZE, STL10_SIZE):
        raise ValueError(f"images must be (N, 3, 96, 96), not {images.shape}")
    np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tofile(folder / f"{split}_X.bin")
    if labels is not None:
        (np.asarray(labels, np.int64) + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(classes or STL10_CLASSES) + "\n")
    return folder
