"""Result: what a job returns, and what the store keeps. It shows and saves itself.

    res = cnnvis.run({"kind": "class_image", "target": "pelican"})
    res                       # in Jupyter: the picture (_repr_png_) or a picture + table (_repr_html_)
    res.data["prob_png"]      # numbers, JSON-able
    res.image()               # PIL image of the main file; res.array("map.npy") for raw maps
    res.save("out/")          # out/result.json + every file, written atomically

result.json records each file's size and sha256 ("digests"); `Result.load` checks them, so a
truncated or altered file is never served as a result (`DamagedResult`, a CnnvisError).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnvis.errors import CnnvisError

RESULT_JSON = "result.json"
LONG_VALUE = 200  # characters: a longer value of the HTML table is folded into a <details>


class DamagedResult(CnnvisError):
    """A stored result whose files do not match result.json (missing, truncated, altered, unreadable)."""


def digest(blob: bytes) -> dict:
    """{'size': bytes, 'sha256': hex} of a file's content, as result.json records it."""
    return {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


@dataclass
class Result:
    """kind + canonical spec + key (hash) + numbers (`data`) + encoded files (name -> bytes).

    `main` names the file that shows the result (a PNG). `cached` is True when the store
    served it; `seconds` is the compute time when it was made; `env` what else the numbers
    depend on (torch version, device, CPU threads): the same spec on another torch, device or
    thread count can differ in the last bits, and optimized images (class images, filters,
    dreams) can differ visibly.
    """

    kind: str
    spec: dict
    key: str
    data: dict = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    main: str | None = None
    seconds: float = 0.0
    cached: bool = False
    env: dict = field(default_factory=dict)  # what the numbers depend on besides the spec: torch, device, threads
    # this run only, never stored: what the user should know (a damaged cache entry recomputed, caching failed,
    # a cached result made with other threads/device/torch) and, on a hit, {field: [stored, here]} of `env`
    notes: list[str] = field(default_factory=list)
    env_differs: dict = field(default_factory=dict)
    pending_store: tuple | None = field(default=None, repr=False, compare=False)  # (store, aliases, damaged): jobs.run
    store_error: str | None = field(default=None, repr=False, compare=False)  # why the store did not take it

    # ------------------------------------------------------------------ views
    def to_dict(self) -> dict:
        """JSON-able summary: kind, key, spec, data, file names (not their bytes)."""
        out = {"kind": self.kind, "key": self.key, "spec": self.spec, "data": self.data,
               "files": sorted(self.files), "main": self.main, "seconds": round(self.seconds, 3),
               "cached": self.cached, "env": self.env}
        if self.cached:
            out["env_differs"] = self.env_differs
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def record(self) -> dict:
        """The content of result.json: `to_dict()` of the result as made (not cached, no notes) plus each
        file's size and sha256."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("notes", "env_differs")}
        return {**d, "cached": False, "digests": {n: digest(b) for n, b in sorted(self.files.items())}}

    def image(self, name: str | None = None):
        """PIL image of file `name` (default: the main file)."""
        from PIL import Image

        name = name or self.main
        if name is None or name not in self.files:
            raise CnnvisError(f"result {self.kind} has no image {name!r}; files: {', '.join(sorted(self.files))}")
        im = Image.open(io.BytesIO(self.files[name]))
        im.load()
        return im

    def array(self, name: str) -> np.ndarray:
        """A stored .npy file as an array (raw maps, activations)."""
        if name not in self.files:
            raise CnnvisError(f"result {self.kind} has no array {name!r}; files: {', '.join(sorted(self.files))}")
        return np.load(io.BytesIO(self.files[name]), allow_pickle=False)

    def _repr_png_(self) -> bytes | None:
        if self.main and self.main.endswith(".png"):
            return self.files[self.main]
        return None

    def _repr_html_(self) -> str:
        from cnnvis.viz import render_template

        img = None
        if self.main and self.main.endswith(".png"):
            img = "data:image/png;base64," + base64.b64encode(self.files[self.main]).decode()
        rows = []
        for k, v in self.data.items():  # every value in full (escaped by the template); a long one folded
            text = json.dumps(v, default=str, ensure_ascii=False)
            summary = text[:LONG_VALUE - 20].rsplit(",", 1)[0] + " ..." if len(text) > LONG_VALUE else None
            rows.append((k, text, summary))
        return render_template("result.html", kind=self.kind, key=self.key[:12], img=img, rows=rows,
                               cached=self.cached, seconds=self.seconds, notes=self.notes)

    def __repr__(self) -> str:
        files = ", ".join(sorted(self.files))
        return f"Result(kind={self.kind!r}, key={self.key[:12]!r}, files=[{files}], data keys={sorted(self.data)})"

    # ------------------------------------------------------------------ files
    def save(self, folder: str | os.PathLike) -> Path:
        """Write every file and result.json into `folder` (each atomically). Returns the folder."""
        from cnnvis.utils import atomic_write

        folder = Path(folder)
        for name, blob in self.files.items():
            with atomic_write(folder / name) as f:
                f.write(blob)
        with atomic_write(folder / RESULT_JSON, "w") as f:
            json.dump(self.record(), f, indent=1)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, *, need_digests: bool = False) -> "Result":
        """Read a folder written by `save`, checking every file against the size and sha256 that
        result.json records. Raises `DamagedResult` (a CnnvisError) naming the first problem: no or
        corrupt result.json, a missing, truncated or altered file; with `need_digests`, also a
        result.json without digests (written by an older cnnvis: nothing to check against)."""
        folder = Path(folder)
        where = f"stored result {str(folder)!r}"
        try:
            meta = json.loads((folder / RESULT_JSON).read_text())
            names = list(meta["files"])
            digests = meta.get("digests")
            if digests is None and need_digests:
                raise DamagedResult(f"{where} has no file checksums (stored by an older cnnvis)")
            files = {}
            for n in names:
                want = (digests or {}).get(n) if digests is not None else None
                if digests is not None and not isinstance(want, dict):
                    raise DamagedResult(f"{where}: result.json has no checksum of {n}")
                p = folder / n
                if want is not None and p.stat().st_size != want["size"]:  # cheap: before reading
                    raise DamagedResult(f"{where}: {n} has {p.stat().st_size} bytes, {want['size']} expected")
                blob = p.read_bytes()
                if want is not None and (len(blob) != want["size"]
                                         or hashlib.sha256(blob).hexdigest() != want["sha256"]):
                    raise DamagedResult(f"{where}: {n} does not match its sha256 (altered)")
                files[n] = blob
            return cls(kind=meta["kind"], spec=meta["spec"], key=meta["key"], data=meta["data"], files=files,
                       main=meta.get("main"), seconds=meta.get("seconds", 0.0), cached=True,
                       env=meta.get("env", {}))
        except FileNotFoundError as e:
            missing = Path(e.filename).name if e.filename else "a file"
            raise DamagedResult(f"{where}: {missing} is missing") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise DamagedResult(f"{where} is incomplete or corrupt ({type(e).__name__}: {e})") from None


def png_bytes(img) -> bytes:
    """PIL image or (3|1, H, W)/(1, C, H, W) tensor in [0, 1] -> PNG bytes (8 bit); a batch of B > 1 images
    -> one PNG of the B side by side."""
    from cnnvis.viz import grid, to_pil

    im = img if hasattr(img, "save") else to_pil(img)
    if isinstance(im, list):
        im = grid([im])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a.detach().cpu() if hasattr(a, "detach") else a), allow_pickle=False)
    return buf.getvalue()
