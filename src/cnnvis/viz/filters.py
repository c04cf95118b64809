"""The filter grid's picture: the rows of `optvis.filters.render_filters` as one labelled grid, dead channels
as a hatched 'dead' tile.

    img = filters_grid(vm, rows, title="vgg16_hed: 10 filters per layer", row_labels=["conv1_1", ...])
"""

from __future__ import annotations

from collections.abc import Sequence


def dead_tile(size: int):
    """A light tile with 'dead' written on it (a channel that never fires on photos)."""
    from PIL import Image, ImageDraw

    from cnnvis.viz import font

    im = Image.new("RGB", (size, size), (236, 236, 236))
    d = ImageDraw.Draw(im)
    for k in range(-size, size, max(6, size // 8)):  # light hatching: not mistaken for a grey render
        d.line([(k, size), (k + size, 0)], fill=(222, 222, 222), width=1)
    f = font(max(10, size // 6))
    text = "dead"
    try:
        w = int(f.getlength(text))
    except AttributeError:
        w = 7 * len(text)
    d.text(((size - w) // 2, size // 2 - size // 12), text, fill=(150, 40, 40), font=f)
    return im


def filters_grid(vm, rows, *, title: str | None = None, row_labels: Sequence[str] | None = None):
    """The grid image of `render_filters` rows: every tile at the largest row's size (smaller renders
    enlarged; tiles under 64 px to about 84, nearest-neighbour, so a 28-px net's can be seen), dead channels as
    a 'dead' tile."""
    from PIL import Image

    from cnnvis.viz import grid, to_pil

    cell = max(int(r[2].shape[-1]) for r in rows)
    if cell < 64:  # a small net's tiles: whole multiples, so its pixels stay square and sharp
        cell *= -(-84 // cell)
    tiles = []
    for r in rows:
        dead = set(getattr(r, "dead", ()))
        line = []
        for ch, im in zip(r[1], r[2]):
            if ch in dead:
                line.append(dead_tile(cell))
            else:
                pil = to_pil(im)
                up = Image.NEAREST if cell % pil.size[0] == 0 else Image.BICUBIC
                line.append(pil if pil.size[0] == cell else pil.resize((cell, cell), up))
        tiles.append(line)
    cols = max(rows, key=lambda r: len(r[1]))[1]
    return grid(tiles, row_labels=row_labels or [r[0] for r in rows], col_labels=[str(c) for c in cols], title=title)
