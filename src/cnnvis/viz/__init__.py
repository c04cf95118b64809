"""Pixels: tensor -> image, grids with labels, heat-map overlays, colour maps, PNG writing.

The only module that makes images; compute code returns tensors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from cnnvis.images import OUTPUT_FORMATS
from cnnvis.utils import atomic_write

# anchors of a perceptually ordered map (black-purple-orange-yellow, like 'inferno')
_INFERNO = np.array([
    [0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
    [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float64)
# blue-white-red for signed maps
_DIVERGING = np.array([[5, 48, 97], [67, 147, 195], [247, 247, 247], [214, 96, 77], [103, 0, 31]], dtype=np.float64)


def to_pil(x: Tensor | np.ndarray) -> Image.Image | list[Image.Image]:
    """(C, H, W) / (1, C, H, W) / (H, W) / (H, W, C) array in [0, 1] -> 8-bit PIL image (clamped, rounded),
    C = 1 (grey) or 3 (RGB). A batch (B, C, H, W) with B > 1 -> a list of B images, one per image
    (never only the first); `grid([to_pil(x)])` puts them side by side in one picture."""
    if isinstance(x, Tensor):
        x = x.detach().float().cpu()
        if x.dim() == 4:
            if x.shape[0] != 1:
                return [to_pil(im) for im in x]
            x = x[0]
        if x.dim() == 3:
            x = x.permute(1, 2, 0)
        x = x.numpy()
    a = np.clip(np.asarray(x, dtype=np.float64), 0, 1)
    a = (a * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(a, "L" if a.ndim == 2 else "RGB")


def save_png(img: Image.Image | Tensor, path: str | os.PathLike) -> Path:
    """Write an image atomically (PNG or, by extension, JPEG/WebP); returns the path."""
    if not isinstance(img, Image.Image):
        img = to_pil(img)
    path = Path(path)
    fmt = OUTPUT_FORMATS.get(path.suffix.lower(), "PNG")
    with atomic_write(path) as f:
        img.save(f, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def robust_max(a: Tensor | np.ndarray, percentile: float = 99.5) -> float:
    """The `percentile` of a's values (at least a tiny positive number when a has any non-zero)."""
    v = np.asarray(a.detach().float().cpu() if isinstance(a, Tensor) else a, dtype=np.float64).ravel()
    if v.size == 0:
        return 0.0
    q = float(np.percentile(v, percentile))
    return q if q > 0 else float(v.max())


def colormap(m: Tensor | np.ndarray, cmap: str = "inferno", signed: bool = False, percentile: float = 99.5) -> Image.Image:
    """(H, W) map -> RGB image. Unsigned maps: min .. `percentile` -> [0, 1] (saliency maps are
    sparse: a handful of pixels would otherwise darken the rest); signed maps: a diverging map
    centred on 0, scaled by the percentile of |m|. Values beyond saturate."""
    a = m.detach().float().cpu().numpy() if isinstance(m, Tensor) else np.asarray(m, dtype=np.float64)
    a = np.nan_to_num(a.astype(np.float64))
    if signed:
        s = robust_max(np.abs(a), percentile) or 1.0
        a = np.clip((a / s + 1) / 2, 0, 1)
        lut = _DIVERGING
    else:
        lo = a.min()
        hi = lo + robust_max(a - lo, percentile)
        a = np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)
        lut = _INFERNO
    pos = a * (len(lut) - 1)
    i = np.clip(np.floor(pos).astype(int), 0, len(lut) - 2)
    f = (pos - i)[..., None]
    rgb = lut[i] * (1 - f) + lut[i + 1] * f
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def overlay(photo: Image.Image | Tensor, heat: Tensor | np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a colour-mapped (h, w) heat map over a photo (resized to the photo)."""
    if not isinstance(photo, Image.Image):
        photo = to_pil(photo)
    hm = colormap(heat).resize(photo.size, Image.BILINEAR)
    return Image.blend(photo.convert("RGB"), hm, alpha)


def font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # old Pillow
        return ImageFont.load_default()


def _wrap(text: str, f, width: int) -> list[str]:
    """Words of `text` in lines at most `width` px wide in font `f` (a single longer word keeps its own line)."""
    lines: list[str] = []
    for word in str(text).split(" "):
        if lines and _text_w(f, lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def grid(
    images: Sequence[Sequence[Image.Image | Tensor | None]],
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cell: int | tuple[int, int] | None = None,
    pad: int = 4,
    label_width: int | None = None,
    title: str | None = None,
) -> Image.Image:
    """Rows x columns of images on white, with optional row/column labels. None = empty cell.

    cell: the cell size, an int (square) or (width, height); images are fitted inside it keeping
    their aspect ratio. Default: the largest image width."""
    rows = [[(to_pil(im) if im is not None and not isinstance(im, Image.Image) else im) for im in r] for r in images]
    n_cols = max((len(r) for r in rows), default=0)
    if cell is None:
        cell = max((im.size[0] for r in rows for im in r if im is not None), default=64)
    cw, ch = (cell, cell) if isinstance(cell, int) else cell
    f = font(max(10, min(14, min(cw, ch) // 6)))
    lw = label_width if label_width is not None else (max((_text_w(f, s) for s in row_labels), default=0) + 8 if row_labels else 0)
    th = 16 if col_labels else 0
    W = lw + n_cols * (cw + pad) + pad
    lines = _wrap(title, font(14), W - 2 * pad) if title else []  # a long title is wrapped, not cut at the edge
    tt = 18 * len(lines) + (2 if lines else 0)
    H = tt + th + len(rows) * (ch + pad) + pad
    canvas = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        d.text((pad, 3 + 18 * k), line, fill="black", font=font(14))
    if col_labels:
        for j, s in enumerate(col_labels):
            d.text((lw + pad + j * (cw + pad), tt + 2), str(s), fill="black", font=f)
    for i, r in enumerate(rows):
        y = tt + th + pad + i * (ch + pad)
        if row_labels:
            d.text((4, y + ch // 2 - 6), str(row_labels[i]), fill="black", font=f)
        for j, im in enumerate(r):
            if im is None:
                continue
            ox = oy = 0
            if im.size != (cw, ch):  # fit inside the cell, keeping the aspect ratio
                s = min(cw / im.size[0], ch / im.size[1])
                im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.BILINEAR)
                ox, oy = (cw - im.size[0]) // 2, (ch - im.size[1]) // 2
            canvas.paste(im.convert("RGB"), (lw + pad + j * (cw + pad) + ox, y + oy))
    return canvas


def captioned(img: Image.Image | Tensor, text: str, side: int = 64, colour: str = "black") -> Image.Image:
    """An image scaled (nearest) to `side` px wide with one line of text below it: a labelled thumbnail."""
    im = img if isinstance(img, Image.Image) else to_pil(img)
    s = side / im.size[0]
    im = im.convert("RGB").resize((side, max(1, round(im.size[1] * s))), Image.NEAREST)
    out = Image.new("RGB", (side, im.size[1] + 14), "white")
    out.paste(im, (0, 0))
    ImageDraw.Draw(out).text((1, im.size[1] + 1), str(text), fill=colour, font=font(10))
    return out


def _text_w(f, s: str) -> int:
    try:
        return int(f.getlength(str(s)))
    except AttributeError:
        return 7 * len(str(s))


def normalize_map(m: Tensor) -> Tensor:
    """Scale a non-negative map to [0, 1] by its max (all-zero stays zero)."""
    m = m.detach().float()
    mx = m.max()
    return m / mx if mx > 0 else torch.zeros_like(m)


_JINJA = None


def render_template(name: str, **values) -> str:
    """Render `cnnvis/templates/<name>` (Jinja2, HTML-escaped) with `values`; the report and the web share them."""
    global _JINJA
    if _JINJA is None:
        import jinja2

        _JINJA = jinja2.Environment(loader=jinja2.PackageLoader("cnnvis", "templates"),
                                    autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    return _JINJA.get_template(name).render(**values)


# pictures of attribution, deconvnet and sanity results (built on the functions above)
from cnnvis.viz.panels import (  # noqa: E402
    curve, deconv_panel, map_panel, methods_grid, sanity_strip, signed_image, stack,
)

attribution_panel = map_panel
