"""The Dataset every source returns: items, batched streaming, subsets, seeded splits.

A *source* holds uint8 pixels and labels; the Dataset turns them into float tensors in
[0, 1]. Corrupt images are skipped (one warning per dataset, count in `ds.skipped`, names in
`ds.skipped_names`: those met among the dataset's own items, and the entries its source
refused to list, e.g. a zip member with an absolute path).
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnvis.errors import CnnvisError, CnnvisWarning


class CorruptImageWarning(CnnvisWarning):
    """An image inside a dataset could not be decoded and was skipped."""


class DatasetFormatWarning(CnnvisWarning):
    """A dataset's images differ in channels or size; what they are all read as was decided."""


class CorruptImage(Exception):
    """Raised by a source for one undecodable image (caught by the Dataset, never shown)."""


class SkipLog:
    """Corrupt items met so far in one source: ids, names, and whether the warning was given."""

    def __init__(self, dataset_name: str):
        self.dataset_name = dataset_name
        self.bad: dict[int, str] = {}  # source index -> item name
        self._lock = threading.Lock()
        self._warned = False
        self._pending: list[tuple[str, type]] = []

    def note(self, msg: str, category: type = CorruptImageWarning) -> None:
        """A warning given once, from the consumer's thread, at the next `emit`."""
        with self._lock:
            self._pending.append((msg, category))

    def snapshot(self) -> dict[int, str]:
        with self._lock:
            return dict(self.bad)

    def add(self, index: int, name: str, reason: str) -> None:
        with self._lock:
            if index in self.bad:
                return
            self.bad[index] = name
            if not self._warned:
                self._warned = True
                self._pending.append((
                    f"{self.dataset_name}: skipping unreadable image {name!r} ({reason}); later ones are "
                    "skipped without a warning, and counted", CorruptImageWarning))

    def __getstate__(self):  # DataLoader workers under 'spawn' pickle the source
        d = dict(self.__dict__)
        d["_lock"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def emit(self) -> None:
        """Give the pending warning (called from the consumer's thread, never from a worker thread)."""
        with self._lock:
            msgs, self._pending = self._pending, []
        for m, cat in msgs:
            warnings.warn(m, cat, stacklevel=3)


class Source:
    """Raw storage of N images of one shape. Subclasses set the attributes and implement `read`."""

    name: str
    classes: list[str]
    labels: np.ndarray  # (N,) int64; -1 = unlabelled
    channels: int
    size: tuple[int, int]  # (H, W)
    unlisted: tuple[str, ...] = ()  # entries refused when listing (unsafe zip paths): skipped, counted
    format_note: str | None = None  # what the images were read as, when they differ (see FileSource)

    def __init__(self) -> None:
        self.log = SkipLog(self.name)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> np.ndarray:
        """uint8 (C, H, W) of item i; raises CorruptImage."""
        raise NotImplementedError

    def read_many(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, C, H, W) of the readable items among `idx`, and those indices (corrupt ones dropped)."""
        out = np.empty((len(idx), self.channels, *self.size), np.uint8)
        kept = []
        for i in idx:
            try:
                out[len(kept)] = self.read(int(i))
            except CorruptImage as e:
                self.log.add(int(i), self.item_name(int(i)), str(e) or type(e).__name__)
                continue
            kept.append(int(i))
        return out[: len(kept)], np.asarray(kept, np.int64)

    def item_name(self, i: int) -> str:
        return f"#{i}"


def _to_float(u8: np.ndarray, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 (B, channels, *size) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(u8, dtype=np.float32)).div_(255.0)  # a copy: the source may be read-only
    c = x.shape[1]
    if c != channels:
        if channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
            w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
            x = (x[:, :3] * w).sum(1, keepdim=True)
        elif c == 1:
            x = x.expand(-1, channels, -1, -1).contiguous()
        else:
            x = x[:, :channels].contiguous()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return x


class Dataset(torch.utils.data.Dataset):
    """Labelled images. ``ds[i] -> (Tensor (C, H, W) float32 in [0, 1], int label)``.

    Attributes: `name`, `classes` (list of names; label k is classes[k]), `labels` ((N,) int64
    numpy array, -1 where unlabelled), `channels` (C), `size` ((H, W)), `skipped` (corrupt
    images met so far). A torch Dataset, so ``DataLoader(ds, ...)`` works too.
    """

    def __init__(self, source: Source, index: np.ndarray | None = None, *,
                 channels: int | None = None, size: tuple[int, int] | None = None, split: str | None = None):
        self._src = source
        self._index = None if index is None else np.asarray(index, np.int64)
        self.channels = int(channels or source.channels)
        self.size = (int(size[0]), int(size[1])) if size else tuple(source.size)
        self.split = split
        if self.channels not in (1, 3):
            raise CnnvisError(f"channels must be 1 or 3, not {self.channels}")
        source.log.emit()  # a corrupt image met while opening (e.g. the first one)

    # --- basic protocol -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._src.name

    @property
    def classes(self) -> list[str]:
        return list(self._src.classes)

    @property
    def labels(self) -> np.ndarray:
        return self._src.labels if self._index is None else self._src.labels[self._index]

    @property
    def skipped(self) -> int:
        """How many items were skipped so far: unreadable ones met among this dataset's items (a
        subset counts its own), and the entries its source refused to list (`unlisted`)."""
        return len(self.skipped_names)

    @property
    def skipped_names(self) -> list[str]:
        """Names of the skipped items (see `skipped`): the unlisted entries first, then in the order met."""
        return list(self._src.unlisted) + self.unreadable_names

    @property
    def unreadable_names(self) -> list[str]:
        """Names of the unreadable items met so far among this dataset's own items."""
        bad = self._src.log.snapshot()
        if self._index is None or not bad:
            return list(bad.values())
        keys = np.fromiter(bad, np.int64, len(bad))
        return [bad[int(k)] for k in keys[np.isin(keys, self._index)]]

    @property
    def unlisted(self) -> list[str]:
        """Entries of the source that were refused when listing (e.g. zip members with an absolute path)."""
        return list(self._src.unlisted)

    @property
    def format_note(self) -> str | None:
        """One line saying what differing images were read as (None: the images agreed, or channels
        and size were given)."""
        return self._src.format_note

    def __len__(self) -> int:
        return len(self._src) if self._index is None else len(self._index)

    def _src_pos(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.name} ({n} images)")
        return int(i) % n

    def _src_index(self, i: int) -> int:
        i = self._src_pos(i)
        return i if self._index is None else int(self._index[i])

    def item_name(self, i: int) -> str:
        """Item i's name in its source (a zip member or file path like 'train/cat/0001.jpg'; '#i' in arrays)."""
        return self._src.item_name(self._src_index(i))

    def get(self, i: int) -> tuple[torch.Tensor, int] | None:
        """Item i as (Tensor (C, H, W) float32 in [0, 1], label), or None when it is unreadable
        (counted in `skipped`)."""
        j = self._src_index(i)
        u8, kept = self._src.read_many(np.asarray([j]))
        self._src.log.emit()
        if not len(kept):
            return None
        return _to_float(u8, self.channels, self.size)[0], int(self._src.labels[j])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """(Tensor (C, H, W) float32 in [0, 1], label). A corrupt image is counted in `skipped`
        and replaced by the next readable one (its image and its label), so a long run goes on;
        `get(i)` gives None instead."""
        n = len(self)
        i = self._src_pos(i)
        for k in range(n):
            j = self._src_index((i + k) % n)
            u8, kept = self._src.read_many(np.asarray([j]))
            if len(kept):
                self._src.log.emit()
                return _to_float(u8, self.channels, self.size)[0], int(self._src.labels[j])
        self._src.log.emit()
        raise CnnvisError(f"{self.name}: every image is corrupt ({n} of {n}); nothing to read")

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, split={self.split!r}, {len(self)} images, {len(self.classes)} classes, "
                f"{self.channels}x{self.size[0]}x{self.size[1]})")

    def class_counts(self) -> dict[str, int]:
        """Images per class name (unlabelled items are left out)."""
        lab = self.labels
        counts = np.bincount(lab[lab >= 0], minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}

    # --- streaming ------------------------------------------------------------------------
    def batches(self, batch_size: int = 256, *, shuffle: bool = False, seed: int = 0,
                with_index: bool = False, prefetch: int = 2) -> Iterator[tuple[torch.Tensor, ...]]:
        """Stream the dataset once: yields (images (B, C, H, W) float32, labels (B,) int64) and, with
        `with_index`, the positions (B,) int64 in this dataset. Corrupt images are dropped (a batch
        may then be short). Memory holds at most `prefetch` + 1 batches: a background thread
        decodes the next batches while the caller works on this one (prefetch=0: no thread)."""
        if batch_size < 1:
            raise CnnvisError(f"batch_size must be >= 1, not {batch_size}")
        order = np.arange(len(self), dtype=np.int64)
        if shuffle:
            order = np.random.default_rng(seed).permutation(order)
        src_of = (lambda pos: pos) if self._index is None else (lambda pos: self._index[pos])
        src_labels = self._src.labels

        def make(pos: np.ndarray) -> tuple[torch.Tensor, ...]:
            sidx = src_of(pos)
            u8, kept = self._src.read_many(sidx)
            if len(kept) != len(sidx):
                keep_mask = np.isin(sidx, kept)
                pos = pos[keep_mask]
            x = _to_float(u8, self.channels, self.size)
            y = torch.from_numpy(src_labels[kept].astype(np.int64))
            return (x, y, torch.from_numpy(pos.copy())) if with_index else (x, y)

        chunks = (order[s:s + batch_size] for s in range(0, len(order), batch_size))
        if prefetch <= 0:
            for pos in chunks:
                b = make(pos)
                self._src.log.emit()
                if len(b[1]):
                    yield b
            return
        yield from self._threaded(chunks, make, prefetch)

    def _threaded(self, chunks, make, prefetch: int):
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()
        end = object()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for pos in chunks:
                    if stop.is_set() or not put(make(pos)):
                        return
                put(end)
            except BaseException as e:  # handed to the consumer and raised there
                put(e)

        t = threading.Thread(target=work, name="cnnvis-data-prefetch", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                self._src.log.emit()
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                if len(item[1]):
                    yield item
        finally:
            stop.set()
            t.join(timeout=5)

    # --- views and splits -----------------------------------------------------------------
    def subset(self, positions: Sequence[int] | np.ndarray) -> Dataset:
        """A view of the items at `positions` (in this dataset), same classes, same source."""
        pos = np.asarray(positions, np.int64)
        base = np.arange(len(self._src), dtype=np.int64) if self._index is None else self._index
        return Dataset(self._src, base[pos], channels=self.channels, size=self.size, split=self.split)

    def split_held_out(self, held_out: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Seeded, stratified (train, held-out) views; see `train_test_split`."""
        return train_test_split(self, held_out, seed=seed)


def skipped_names(*datasets: Dataset) -> list[str]:
    """The skipped items of several datasets (e.g. a train and a held-out set), each named once."""
    return list(dict.fromkeys(n for ds in datasets for n in ds.skipped_names))


def train_test_split(ds: Dataset, held_out: float = 0.2, *, seed: int = 0,
                     stratify: bool = True) -> tuple[Dataset, Dataset]:
    """Deterministic (train, held-out) split of `ds`: the same seed gives the same split.

    Stratified by class: each class keeps round(n * held_out) (at least 1) images out, so every
    class needs at least 2 images. Unlabelled datasets (labels -1) are split without strata.
    """
    if not 0.0 < held_out < 1.0:
        raise CnnvisError(f"held_out must be a fraction between 0 and 1 (e.g. 0.2), not {held_out}")
    rng = np.random.default_rng(seed)
    labels = ds.labels
    if len(ds) < 2:
        raise CnnvisError(f"{ds.name}: a train/held-out split needs at least 2 images, it has {len(ds)}")
    if not stratify or (labels < 0).all():
        perm = rng.permutation(len(ds))
        k = min(len(ds) - 1, max(1, round(len(ds) * held_out)))
        held = np.sort(perm[:k])
        train = np.sort(perm[k:])
        return ds.subset(train), ds.subset(held)
    train_parts, held_parts = [], []
    for c in range(len(ds.classes)):
        pos = np.flatnonzero(labels == c)
        if len(pos) == 0:
            continue
        if len(pos) < 2:
            example = ds._src.item_name(ds._src_index(int(pos[0])))
            raise CnnvisError(
                f"{ds.name}: class {ds.classes[c]!r} has only 1 image ({example}); a train/held-out "
                "split needs at least 2 per class: add images to that class or remove its folder")
        pos = rng.permutation(pos)
        k = min(len(pos) - 1, max(1, round(len(pos) * held_out)))
        held_parts.append(pos[:k])
        train_parts.append(pos[k:])
    train = np.sort(np.concatenate(train_parts))
    held = np.sort(np.concatenate(held_parts))
    return ds.subset(train), ds.subset(held)


class ArraySource(Source):
    """Images in one uint8 array (in memory or a numpy memmap).

    `layout`: "NHW" (1 channel), "NHWC", "NCHW", or "NCWH" (STL-10's column-major planes).
    """

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, classes: list[str], layout: str):
        self.name = name
        self.images = images
        self.layout = layout
        self.labels = np.asarray(labels, np.int64)
        self.classes = list(classes)
        if images.dtype != np.uint8:
            raise CnnvisError(f"{name}: images must be uint8, not {images.dtype}")
        if len(images) != len(self.labels):
            raise CnnvisError(f"{name}: {len(images)} images but {len(self.labels)} labels")
        s = images.shape
        if layout == "NHW":
            self.channels, self.size = 1, (s[1], s[2])
        elif layout == "NHWC":
            self.channels, self.size = s[3], (s[1], s[2])
        elif layout == "NCHW":
            self.channels, self.size = s[1], (s[2], s[3])
        elif layout == "NCWH":
            self.channels, self.size = s[1], (s[3], s[2])
        else:
            raise ValueError(f"unknown layout {layout!r}")
        super().__init__()

    def _as_nchw(self, a: np.ndarray) -> np.ndarray:
        if self.layout == "NHW":
            return a[:, None]
        if self.layout == "NHWC":
            return a.transpose(0, 3, 1, 2)
        if self.layout == "NCWH":
            return a.transpose(0, 1, 3, 2)
        return a

    def read(self, i: int) -> np.ndarray:
        return self._as_nchw(np.asarray(self.images[i:i + 1]))[0]

    def read_many(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(idx, np.int64)
        if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and (np.diff(idx) == 1).all():
            a = np.asarray(self.images[idx[0]:idx[-1] + 1])  # a contiguous run: one slice of the memmap
        else:
            a = np.asarray(self.images[idx])
        return np.ascontiguousarray(self._as_nchw(a)), idx
