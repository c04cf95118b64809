"""Result: what a job returns, and what the store keeps. It shows and saves itself.

    res = cnnvis.run({"kind": "class_image", "target": "pelican"})
    res                       # in Jupyter: the picture (_repr_png_) or a picture + table (_repr_html_)
    res.data["prob_png"]      # numbers, JSON-able
    res.image()               # PIL image of the main file; res.array("map.npy") for raw maps
    res.save("out/")          # out/result.json + every file, written atomically
"""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnvis.errors import CnnvisError

RESULT_JSON = "result.json"


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

    # ------------------------------------------------------------------ views
    def to_dict(self) -> dict:
        """JSON-able summary: kind, key, spec, data, file names (not their bytes)."""
        return {"kind": self.kind, "key": self.key, "spec": self.spec, "data": self.data,
                "files": sorted(self.files), "main": self.main, "seconds": round(self.seconds, 3),
                "cached": self.cached, "env": self.env}

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
        rows = [(k, json.dumps(v, default=str)[:200]) for k, v in self.data.items()]
        return render_template("result.html", kind=self.kind, key=self.key[:12], img=img, rows=rows,
                               cached=self.cached, seconds=self.seconds)

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
            json.dump({**self.to_dict(), "cached": False}, f, indent=1)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Result":
        """Read a folder written by `save` (CnnvisError if incomplete or corrupt)."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / RESULT_JSON).read_text())
            files = {n: (folder / n).read_bytes() for n in meta["files"]}
            return cls(kind=meta["kind"], spec=meta["spec"], key=meta["key"], data=meta["data"], files=files,
                       main=meta.get("main"), seconds=meta.get("seconds", 0.0), cached=True,
                       env=meta.get("env", {}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CnnvisError(f"stored result {str(folder)!r} is incomplete or corrupt ({e})") from None


def png_bytes(img) -> bytes:
    """PIL image or (3|1, H, W)/(B, C, H, W) tensor in [0, 1] -> PNG bytes (8 bit)."""
    from cnnvis.viz import to_pil

    im = img if hasattr(img, "save") else to_pil(img)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a.detach().cpu() if hasattr(a, "detach") else a), allow_pickle=False)
    return buf.getvalue()
