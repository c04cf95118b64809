"""Tile sheets with a label under every tile (feature maps, filters, top examples)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw
from torch import Tensor

from cnnvis.viz import font, to_pil


def upscale(x: Tensor, factor: int) -> Tensor:
    """(C, h, w) -> (C, h * factor, w * factor), nearest neighbour (pixels stay square and exact)."""
    if factor <= 1:
        return x
    return x.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def labelled_tiles(tiles: Sequence[Image.Image | Tensor], labels: Sequence[str], *, cols: int | None = None,
                   title: str | None = None, pad: int = 4, label_h: int = 14, rows_labels: Sequence[str] | None = None
                   ) -> Image.Image:
    """Tiles (PIL images or (C, h, w) tensors in [0, 1]) in rows of `cols` (default: about square),
    each with its label underneath, on white. `rows_labels`: a label left of each row."""
    ims = [t if isinstance(t, Image.Image) else to_pil(t) for t in tiles]
    n = len(ims)
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    cw = max((im.size[0] for im in ims), default=16)
    ch = max((im.size[1] for im in ims), default=16)
    f = font(11)
    lw = 0
    if rows_labels:
        lw = max(int(f.getlength(str(s))) if hasattr(f, "getlength") else 7 * len(str(s)) for s in rows_labels) + 8
    tt = 20 if title else 0
    W = max(lw + cols * (cw + pad) + pad, 7 * len(title) + 8 if title else 0)
    H = tt + rows * (ch + label_h + pad) + pad
    canvas = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(canvas)
    if title:
        d.text((pad, 3), title, fill="black", font=font(13))
    for i, (im, lab) in enumerate(zip(ims, labels)):
        r, c = divmod(i, cols)
        x0 = lw + pad + c * (cw + pad)
        y0 = tt + pad + r * (ch + label_h + pad)
        canvas.paste(im.convert("RGB"), (x0 + (cw - im.size[0]) // 2, y0 + (ch - im.size[1]) // 2))
        d.text((x0, y0 + ch + 1), str(lab), fill="black", font=f)
    if rows_labels:
        for r, s in enumerate(rows_labels[:rows]):
            d.text((4, tt + pad + r * (ch + label_h + pad) + ch // 2 - 6), str(s), fill="black", font=f)
    return canvas


def grey_to_rgb(x: Tensor) -> Tensor:
    """(1, h, w) -> (3, h, w); other channel counts unchanged."""
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x

