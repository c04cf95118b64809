"""Image folders (``class/xxx.jpg`` or ``split/class/xxx.jpg``) and zip files of the same layout,
read in place (no unpacking). Images are decoded with PIL when read.

What the images are read as (channels, size) is decided from the data as a whole: the most
common among the headers of up to FORMAT_SAMPLE images spread over the dataset; every image is
converted to it, and differing ones are named in one DatasetFormatWarning (`ds.format_note`).

Hostile files are skipped and counted like corrupt images, never read whole, never waited on:
anything but a regular file (a FIFO named x.jpg), a file or zip member over MAX_IMAGE_BYTES
(counted as it streams out, whatever its header claims), an encrypted zip member or one whose
compression Python cannot read (Deflate64), a zip member whose path is absolute or has '..'.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnvis.data.base import CorruptImage, DatasetFormatWarning, Source
from cnnvis.errors import CnnvisError
from cnnvis.images import IMAGE_SUFFIXES

MAX_IMAGE_BYTES = 64 << 20  # per image file or zip member (bytes as read, not as claimed)
FORMAT_SAMPLE = 256  # images whose headers decide what a dataset's images are read as
_HEAD = 256 << 10  # bytes read for a header (all of the file when it does not parse from them)
_CHUNK = 1 << 20
_GREY = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                zipfile.ZIP_LZMA: "lzma"}
_METHOD_NAMES = {9: "Deflate64", 6: "implode", 1: "shrink", 93: "zstd", 95: "xz", 98: "PPMd", 99: "AES"}

SPLIT_ALIASES = {
    "train": ("train", "training"),
    "test": ("test", "testing", "val", "valid", "validation"),
    "val": ("val", "valid", "validation", "test"),
}
_LAYOUT_HINT = "expected class/xxx.jpg or split/class/xxx.jpg (e.g. train/cat/0001.jpg)"


def _hidden(parts: list[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _unsafe(name: str) -> bool:
    """A zip member path that is absolute, starts with a drive, or has a '..', '.' or empty part
    (unpackers strip or refuse these; never read as a class)."""
    parts = name.replace("\\", "/").split("/")
    return (name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":" and name[0].isalpha())
            or any(p in ("", ".", "..") for p in parts))


def _why(e: BaseException) -> str:
    """A decoding error in a few words (PIL names a BytesIO object where a file name would be)."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image format PIL can decode"
    return f"{type(e).__name__}: {e}"


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def read_capped(f, limit: int) -> bytes:
    """All bytes of the stream `f`, or CorruptImage as soon as more than `limit` came out (what
    is counted is what was read: a header's claim is not trusted). Memory: at most limit + 1 MiB."""
    buf = bytearray()
    while True:
        b = f.read(min(_CHUNK, limit + 1 - len(buf)))
        if not b:
            return bytes(buf)
        buf += b
        if len(buf) > limit:
            raise CorruptImage(f"more than {_mib(limit)} of data, the limit per image")


def _fold_classes(names: dict[str, int], where: str, folders: dict[str, list[str]],
                  trained: set[str] = frozenset()) -> tuple[dict[str, str], str | None]:
    """Class folder names that differ only in case (train/cat, test/Cat) -> one class each.

    names: folder name -> images; folders: folder name -> where it is ('train/cat'); trained: the
    names in the training split. Returns (name -> class name: the training split's spelling, else
    the one with the most images, ties the first sorted; a note or None)."""
    groups: dict[str, list[str]] = {}
    for n in sorted(names):
        groups.setdefault(n.casefold(), []).append(n)
    canon, merged = {}, []
    for spellings in groups.values():
        best = min(spellings, key=lambda n: (n not in trained, -names[n], n))
        for n in spellings:
            canon[n] = best
        if len(spellings) > 1:
            shown = " + ".join(f for n in spellings for f in folders[n][:2])
            merged.append(f"{shown} -> {best!r}")
    note = None
    if merged:
        note = (f"{where}: class folders that differ only in case are read as one class ({'; '.join(merged[:3])}"
                f"{'; ...' if len(merged) > 3 else ''}); rename them to match")
    return canon, note


def resolve_layout(rels: list[str], where: str, split: str | None):
    """Relative posix paths of images -> (entries [(path, label)], classes, split used, splits found, note).

    Labels index the classes of all splits together (sorted), so train and test agree; class
    folders whose names differ only in case are one class (note: a line saying so, else None)."""
    parts = [r.split("/") for r in rels]
    if not parts:
        raise CnnvisError(f"no images in {where} (looked for {', '.join(IMAGE_SUFFIXES)}); {_LAYOUT_HINT}")
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
                "leave --split out (a run holds out a stratified part itself, e.g. train --held-out 0.2; in "
                "Python: train_test_split(ds, 0.2))")
        canon, note = _fold_classes(Counter(p[0] for p in parts), where, {c: [pre + c] for c in {p[0] for p in parts}})
        classes = sorted(set(canon.values()))
        cidx = {c: k for k, c in enumerate(classes)}
        return [(pre + "/".join(p), cidx[canon[p[0]]]) for p in parts], classes, None, [], note
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
    folders: dict[str, list[str]] = {}
    for s, c in sorted({(p[0], p[1]) for p in parts}):
        folders.setdefault(c, []).append(f"{pre}{s}/{c}")
    trained = {p[1] for p in parts if p[0].lower() in SPLIT_ALIASES["train"]}
    canon, note = _fold_classes(Counter(p[1] for p in parts), where, folders, trained)
    classes = sorted(set(canon.values()))
    cidx = {c: k for k, c in enumerate(classes)}
    entries = [(pre + "/".join(p), cidx[canon[p[1]]]) for p in parts if chosen is None or p[0] == chosen]
    return entries, classes, chosen or "all", splits, note


class FileSource(Source):
    """Images stored as files (folder or zip): decoded one by one, converted to the dataset's mode,
    resized to the dataset's size when an image differs (bilinear). channels/size None: decided
    from the data (`_decide`)."""

    def __init__(self, name: str, entries: list[tuple[str, int]], classes: list[str],
                 channels: int | None, size: tuple[int, int] | None, note: str | None = None):
        self.name = name
        self.entries = [e[0] for e in entries]
        self.labels = np.asarray([e[1] for e in entries], np.int64)
        self.classes = classes
        super().__init__()
        if note:
            self.log.note(note, DatasetFormatWarning)
        if channels is None or size is None:
            channels, size = self._decide(channels, size)
        self.channels = int(channels)
        self.size = (int(size[0]), int(size[1]))
        self._mode = "L" if self.channels == 1 else "RGB"

    # --- what the images are read as
    def _sample(self) -> list[int]:
        n = len(self.entries)
        if n <= FORMAT_SAMPLE:
            return list(range(n))
        return sorted({int(v) for v in np.linspace(0, n - 1, FORMAT_SAMPLE).round()})

    def _decide(self, channels: int | None, size: tuple[int, int] | None) -> tuple[int, tuple[int, int]]:
        """Channels and size from the headers of a sample of the images (spread over the dataset):
        the most common (channels: ties -> RGB; size: ties -> the smallest); a differing sample is
        described in `format_note` (given once as a DatasetFormatWarning)."""
        own_ch, own_size = channels is None, size is None
        kinds: Counter = Counter()
        sizes: Counter = Counter()
        tried = self._sample()
        first_why = None
        for i in tried:
            try:
                mode, hw = self._header(i)
            except CorruptImage as e:
                self.log.add(i, self.item_name(i), str(e) or "unreadable")
                first_why = first_why or str(e) or "unreadable"
                continue
            kinds["grey" if mode in _GREY else "colour"] += 1
            sizes[hw] += 1
        if not sizes:  # every sampled image is unreadable: the first readable one of the others decides
            for i in sorted(set(range(len(self.entries))) - set(tried)):
                try:
                    mode, hw = self._header(i)
                except CorruptImage as e:
                    self.log.add(i, self.item_name(i), str(e) or "unreadable")
                    continue
                kinds["grey" if mode in _GREY else "colour"] += 1
                sizes[hw] += 1
                break
        if not sizes:
            raise CnnvisError(f"{self.name}: none of its {len(self.entries)} images can be decoded "
                              f"(e.g. {self.entries[0]!r}: {first_why or 'unreadable'})")
        if channels is None:
            channels = 1 if kinds["grey"] > kinds["colour"] else 3
        if size is None:
            size = min(sizes, key=lambda hw: (-sizes[hw], hw[0] * hw[1], hw))
        differ = []
        n = sum(sizes.values())
        if len(kinds) > 1 and own_ch:
            differ.append(f"{kinds['colour']} colour, {kinds['grey']} grey")
        if len(sizes) > 1 and own_size:
            shown = ", ".join(f"{c} of {h}x{w}" for (h, w), c in sizes.most_common(3))
            differ.append(shown + (f", {len(sizes) - 3} other sizes" if len(sizes) > 3 else ""))
        if differ:
            self.format_note = (
                f"{self.name}: its images differ ({'; '.join(differ)} among {n} sampled), so every image is "
                f"read as {'grey' if channels == 1 else 'RGB'} {size[0]}x{size[1]}, the most common "
                "(the others converted and resized)")
            self.log.note(self.format_note, DatasetFormatWarning)
        return channels, size

    def _header(self, i: int) -> tuple[str, tuple[int, int]]:
        """(PIL mode, (H, W)) of image i from its first bytes (all of them if those do not parse)."""
        try:
            head = self._bytes(i, _HEAD)
            try:
                im = Image.open(io.BytesIO(head))
            except (OSError, ValueError, SyntaxError, EOFError):
                if len(head) < _HEAD:
                    raise
                im = Image.open(io.BytesIO(self._bytes(i)))
            return im.mode, (im.height, im.width)
        except CorruptImage:
            raise
        except (OSError, ValueError, SyntaxError, EOFError, zipfile.BadZipFile, Image.DecompressionBombError) as e:
            raise CorruptImage(_why(e)) from None

    # --- reading
    def _bytes(self, i: int, most: int | None = None) -> bytes:
        """The bytes of item i (at most `most` of them: a header); CorruptImage when it is not a
        regular file, or over MAX_IMAGE_BYTES."""
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
            raise CorruptImage(_why(e)) from None

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
                if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."):
                    rels.append(f if rel_dir == "." else f"{rel_dir}/{f}")
        if not rels:
            raise CnnvisError(f"folder {str(root)!r} contains no images ({', '.join(IMAGE_SUFFIXES)}); "
                              f"{_LAYOUT_HINT}")
        entries, classes, self.split, self.splits, note = resolve_layout(rels, f"folder {str(root)!r}", split)
        super().__init__(root.name or str(root), entries, classes, channels, size, note)

    def _bytes(self, i: int, most: int | None = None) -> bytes:
        # O_NONBLOCK: opening a FIFO named x.jpg returns at once (and is refused), never waits for a writer
        fd = os.open(self.root / self.entries[i], os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb", buffering=0) as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptImage("not a regular file (a FIFO, device or socket named like an image)")
            if most is None and st.st_size > MAX_IMAGE_BYTES:
                raise CorruptImage(f"{st.st_size / 2**20:.0f} MiB, over the limit of {_mib(MAX_IMAGE_BYTES)} "
                                   "per image")
            return f.read(most) if most is not None else read_capped(f, MAX_IMAGE_BYTES)


class ZipSource(FileSource):
    """A zip read in place: the directory is listed once, members are read on demand (thread-safe,
    and re-opened after a fork, so DataLoader workers work)."""

    def __init__(self, path: Path, split: str | None, channels: int | None, size: tuple[int, int] | None):
        self.path = path
        self._zf: zipfile.ZipFile | None = None
        self._pid = -1
        self._lock = threading.Lock()
        try:
            infos = self._zip().infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise CnnvisError(f"{str(path)!r} is not a readable zip file ({e}); give a zip of "
                              f"{_LAYOUT_HINT}, or a folder") from None
        names = [z.filename for z in infos]
        imgs = [n for n in names if not n.endswith("/") and n.lower().endswith(IMAGE_SUFFIXES)]
        self.unlisted = tuple(n for n in imgs if _unsafe(n))
        rels = [n for n in imgs if not _unsafe(n) and not _hidden(n.split("/"))]
        if not rels:
            raise CnnvisError(f"zip {str(path)!r} contains no images in class folders "
                              f"({len(names)} entries, none an image: {', '.join(IMAGE_SUFFIXES)}"
                              + (f"; {len(self.unlisted)} with an absolute or '..' path, skipped" if self.unlisted
                                 else "") + f"); {_LAYOUT_HINT}")
        entries, classes, self.split, self.splits, note = resolve_layout(rels, f"zip {str(path)!r}", split)
        if self.unlisted:
            shown = ", ".join(repr(n) for n in self.unlisted[:3]) + (", ..." if len(self.unlisted) > 3 else "")
            unsafe = (f"zip {str(path)!r}: skipping {len(self.unlisted)} member(s) with an absolute or '..' path "
                      f"({shown}); they are counted as skipped")
            note = f"{note}; {unsafe}" if note else unsafe
        super().__init__(path.name, entries, classes, channels, size, note)

    def _zip(self) -> zipfile.ZipFile:
        if self._zf is None or self._pid != os.getpid():
            self._zf = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._zf

    def _bytes(self, i: int, most: int | None = None) -> bytes:
        name = self.entries[i]
        with self._lock:
            try:
                info = self._zip().getinfo(name)
                if info.flag_bits & 0x1:
                    raise CorruptImage("an encrypted (password-protected) zip member")
                if info.compress_type not in _ZIP_METHODS:
                    what = _METHOD_NAMES.get(info.compress_type, "unknown")
                    raise CorruptImage(f"zip compression method {info.compress_type} ({what}), which Python "
                                       "cannot read: re-zip with deflate")
                if most is None and info.file_size > MAX_IMAGE_BYTES:
                    raise CorruptImage(f"{info.file_size / 2**20:.0f} MiB uncompressed, over the limit of "
                                       f"{_mib(MAX_IMAGE_BYTES)} per image")
                with self._zip().open(info) as f:
                    return f.read(most) if most is not None else read_capped(f, MAX_IMAGE_BYTES)
            except CorruptImage:
                raise
            except (zipfile.BadZipFile, OSError, EOFError, KeyError, zlib.error, RuntimeError, NotImplementedError,
                    ValueError) as e:
                raise CorruptImage(f"{type(e).__name__}: {e}") from None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_zf"], d["_pid"], d["_lock"] = None, -1, None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()
