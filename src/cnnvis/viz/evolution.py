"""The features-across-training grid (Zeiler & Fergus 2014, Fig. 4): rows = channels grouped by
layer, columns = snapshots; each cell a feature visualization with the channel's top dataset
patches beside it.

    img, boxes = evolution_grid(groups, col_labels, title="mnist: features across training")
    # groups: [(layer label, [(row label, [(vis image, [patch images]) per column])])]
    # boxes[r][j]: (x0, y0, x1, y1) of row r's visualization in column j (inclusive), rows counted over groups
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from cnnvis.viz import _text_w, font


def fit_tile(im: Image.Image, side: int) -> Image.Image:
    """`im` at side x side: enlarged by a whole factor, nearest-neighbour (pixels stay square) when it
    divides `side`, else bicubic."""
    if im.size == (side, side):
        return im
    up = Image.NEAREST if side % im.size[0] == 0 and side % im.size[1] == 0 else Image.BICUBIC
    return im.resize((side, side), up)


def evolution_grid(groups: Sequence[tuple[str, Sequence[tuple[str, Sequence[tuple]]]]], col_labels: Sequence[str],
                   *, col_notes: Sequence[str] | None = None, title: str = "", k: int = 0, pad: int = 4,
                   ) -> tuple[Image.Image, list[list[tuple[int, int, int, int]]]]:
    """Draw the grid -> (image, boxes of every visualization tile).

    groups: per layer (label, rows); a row is (label, cells), one cell per column: (vis PIL image,
    list of up to `k` patch PIL images). Every vis tile is drawn at the size of the largest (smaller ones
    enlarged, see `fit_tile`); the patches are stacked in a strip right of it, each (side - 2 (k - 1)) // k square.
    col_notes: a second line under each column label (e.g. the held-out accuracy)."""
    vis = [c[0] for _, rows in groups for _, cells in rows for c in cells]
    side = max((im.size[0] for im in vis), default=64)
    p = (side - 2 * (k - 1)) // k if k else 0  # patches 2 px apart
    strip = (p + 2) if k else 0
    cw, ch = side + strip, side
    f, fb = font(11), font(12)
    labels = [lab for _, rows in groups for lab, _ in rows]
    lw = max((_text_w(f, s) for s in labels), default=0) + 10
    tt = 22 if title else 0
    th = 30 if col_notes else 16
    gh = 18  # a layer's heading
    n_rows = len(labels)
    W = max(lw + len(col_labels) * (cw + pad) + pad, _text_w(font(14), title) + 12 if title else 0)
    H = tt + th + len(groups) * gh + n_rows * (ch + pad) + pad
    canvas = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(canvas)
    if title:
        d.text((pad, 4), title, fill="black", font=font(14))
    for j, s in enumerate(col_labels):
        x = lw + pad + j * (cw + pad)
        d.text((x, tt + 1), str(s), fill="black", font=fb)
        if col_notes:
            d.text((x, tt + 15), str(col_notes[j]), fill=(90, 90, 90), font=f)
    boxes: list[list[tuple[int, int, int, int]]] = []
    y = tt + th
    for g_label, rows in groups:
        d.line([(4, y + gh - 3), (W - 4, y + gh - 3)], fill=(170, 170, 170))
        d.text((4, y + 2), str(g_label), fill=(20, 60, 140), font=fb)
        y += gh
        for r_label, cells in rows:
            y0 = y + pad // 2
            d.text((4, y0 + ch // 2 - 6), str(r_label), fill="black", font=f)
            line = []
            for j, (im, patches) in enumerate(cells):
                x0 = lw + pad + j * (cw + pad)
                canvas.paste(fit_tile(im.convert("RGB"), side), (x0, y0))
                line.append((x0, y0, x0 + side - 1, y0 + side - 1))
                for i, pt in enumerate(list(patches)[:k]):
                    canvas.paste(fit_tile(pt.convert("RGB"), p), (x0 + side + 2, y0 + i * (p + 2)))
            boxes.append(line)
            y += ch + pad
    return canvas, boxes
