"""Image folders (``class/xxx.jpg`` or ``split/class/xxx.jpg``) and zip files of the same layout,
read in place (no unpacking). Images are decoded with PIL when read."""

from __future__ import annotations

import io
import os
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from cnnvis.data.base import CorruptImage, Source
from cnnvis.errors import CnnvisError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "test": ("test", "testing", "val", "valid", "validation"),
    "val": ("val", "valid", "validation", "test"),
}
_LAYOUT_HINT = "expected class/xxx.jpg or split/class/xxx.jpg (e.g. train/cat/0001.jpg)"


def _hidden(parts: list[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def resolve_layout(rels: list[str], where: str, split: str | None):
    """Relative posix paths of images -> (entries [(path, label)], classes, split used, splits found).

    Labels index the classes of all splits together (sorted), so train and test agree."""
    parts = [r.split("/") for r in rels]
    if not parts:
        raise CnnvisError(f"no images in {where} (looked for {', '.join(IMAGE_EXTS)}); {_LAYOUT_HINT}")
    prefix: list[str] = []
    known_splits = {a for v in SPLIT_ALIASES.values() for a in v}
    while (all(len(p) >= 3 for p in parts) and len({p[0] for p in parts}) == 1
           and parts[0][0].lower() not in known_splits):
        prefix.append(parts[0][0])
        parts = [p[1:] for p in parts]
    depths = {len(p) for p in parts}
    if depths == {1}:
        raise CnnvisError(f"{where}: images are not in class folders (e.g. {rels[0]!r}); {_LAYOUT_HINT}")
    if len(depths) > 1 or max(depths) > 3:
        by_depth: dict[int, str] = {}
        for p in parts:
            by_depth.setdefault(len(p), "/".join(prefix + p))
        shown = ", ".join(repr(by_depth[d]) for d in sorted(by_depth)[:3])
        raise CnnvisError(f"{where}: mixed or too deep folder layout ({shown}); {_LAYOUT_HINT}")
    pre = "/".join(prefix) + "/" if prefix else ""
    if depths == {2}:
        if split not in (None, "all"):
            raise CnnvisError(
                f"{where} has no split folders (it is class/xxx.jpg), so split={split!r} does not apply: "
                "leave split out and make a held-out set with train_test_split(ds, 0.2)")
        classes = sorted({p[0] for p in parts})
        cidx = {c: k for k, c in enumerate(classes)}
        return [(pre + "/".join(p), cidx[p[0]]) for p in parts], classes, None, []
    splits = sorted({p[0] for p in parts})
    if split is None:
        split = "train"
    chosen = None
    if split != "all":
        low = {s.lower(): s for s in splits}
        for cand in (split.lower(), *SPLIT_ALIASES.get(split.lower(), ())):
            if cand in low:
                chosen = low[cand]
                break
        if chosen is None:
            raise CnnvisError(f"{where} has no split {split!r}; its splits are: {', '.join(splits)} "
                              "(pass one as split=, or split='all')")
    classes = sorted({p[1] for p in parts})
    cidx = {c: k for k, c in enumerate(classes)}
    entries = [(pre + "/".join(p), cidx[p[1]]) for p in parts if chosen is None or p[0] == chosen]
    return entries, classes, chosen or "all", splits


class FileSource(Source):
    """Images stored as files (folder or zip): decoded one by one, converted to the dataset's mode,
    resized to the dataset's size when an image differs (bilinear)."""

    def __init__(self, name: str, entries: list[tuple[str, int]], classes: list[str],
                 channels: int | None, size: tuple[int, int] | None):
        self.name = name
        self.entries = [e[0] for e in entries]
        self.labels = np.asarray([e[1] for e in entries], np.int64)
        self.classes = classes
        super().__init__()
        if channels is None or size is None:
            first = self._first_readable()
            mode_ch = 1 if first.mode in ("L", "1", "I;16", "I", "F") else 3
            channels = channels or mode_ch
            size = size or (first.height, first.width)
        self.channels = int(channels)
        self.size = (int(size[0]), int(size[1]))
        self._mode = "L" if self.channels == 1 else "RGB"

    def _first_readable(self) -> Image.Image:
        for i in range(len(self.entries)):
            try:
                return self._decode(i)
            except CorruptImage as e:
                self.log.add(i, self.item_name(i), str(e) or type(e).__name__)
        raise CnnvisError(f"{self.name}: none of its {len(self.entries)} images can be decoded")

    def _bytes(self, i: int) -> bytes:
        raise NotImplementedError

    def _decode(self, i: int) -> Image.Image:
        try:
            data = self._bytes(i)
            im = Image.open(io.BytesIO(data))
            im.load()
            return im
        except CorruptImage:
            raise
        except (OSError, ValueError, SyntaxError, EOFError, zipfile.BadZipFile, Image.DecompressionBombError) as e:
            raise CorruptImage(f"{type(e).__name__}: {e}") from None

    def item_name(self, i: int) -> str:
        return self.entries[i]

    def read(self, i: int) -> np.ndarray:
        im = self._decode(i)
        try:
            if im.mode != self._mode:
                im = im.convert(self._mode)
            if (im.height, im.width) != self.size:
                im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise CorruptImage(f"{type(e).__name__}: {e}") from None
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


class FolderSource(FileSource):
    def __init__(self, root: Path, split: str | None, channels: int | None, size: tuple[int, int] | None):
        self.root = root
        rels = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            for f in sorted(filenames):
                if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."):
                    rels.append(f if rel_dir == "." else f"{rel_dir}/{f}")
        if not rels:
            raise CnnvisError(f"folder {str(root)!r} contains no images ({', '.join(IMAGE_EXTS)}); "
                              f"{_LAYOUT_HINT}")
        entries, classes, self.split, self.splits = resolve_layout(rels, f"folder {str(root)!r}", split)
        super().__init__(root.name or str(root), entries, classes, channels, size)

    def _bytes(self, i: int) -> bytes:
        return (self.root / self.entries[i]).read_bytes()


class ZipSource(FileSource):
    """A zip read in place: the directory is listed once, members are read on demand (thread-safe,
    and re-opened after a fork, so DataLoader workers work)."""

    def __init__(self, path: Path, split: str | None, channels: int | None, size: tuple[int, int] | None):
        self.path = path
        self._zf: zipfile.ZipFile | None = None
        self._pid = -1
        self._lock = threading.Lock()
        try:
            names = self._zip().namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CnnvisError(f"{str(path)!r} is not a readable zip file ({e}); give a zip of "
                              f"{_LAYOUT_HINT}, or a folder") from None
        rels = [n for n in names if not n.endswith("/") and n.lower().endswith(IMAGE_EXTS)
                and not _hidden(n.split("/"))]
        if not rels:
            raise CnnvisError(f"zip {str(path)!r} contains no images in class folders "
                              f"({len(names)} entries, none an image: {', '.join(IMAGE_EXTS)}); {_LAYOUT_HINT}")
        entries, classes, self.split, self.splits = resolve_layout(rels, f"zip {str(path)!r}", split)
        super().__init__(path.name, entries, classes, channels, size)

    def _zip(self) -> zipfile.ZipFile:
        if self._zf is None or self._pid != os.getpid():
            self._zf = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._zf

    def _bytes(self, i: int) -> bytes:
        with self._lock:
            try:
                return self._zip().read(self.entries[i])
            except (zipfile.BadZipFile, OSError, EOFError, KeyError, zlib.error) as e:
                raise CorruptImage(f"{type(e).__name__}: {e}") from None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_zf"], d["_pid"], d["_lock"] = None, -1, None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()
