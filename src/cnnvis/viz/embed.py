"""Pictures of an embedding (`cnnvis.study.embed`): a t-SNE scatter coloured by class, an image
atlas (thumbnails on a grid by t-SNE position), and a nearest-neighbours panel."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from cnnvis import viz
from cnnvis.utils import unit_scale as unit  # (N, 2) -> per axis in [0, 1]

# matplotlib's tab10 then tab20's light shades: distinct colours for up to 20 classes
_TAB = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
        (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
        (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
        (219, 219, 141), (158, 218, 229)]
MATCH, MISMATCH, QUERY = (20, 150, 40), (210, 30, 30), (31, 90, 200)


def palette(n: int) -> list[tuple[int, int, int]]:
    """n distinct RGB colours (tab10/tab20, then evenly spaced hues)."""
    if n <= len(_TAB):
        return _TAB[:n]
    return [tuple(round(255 * v) for v in colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.75, 0.85)) for i in range(n)]


def thumbnail(x: np.ndarray, side: int) -> Image.Image:
    """(C, H, W) in [0, 1] -> RGB image `side` px wide (nearest-neighbour: small digits stay crisp)."""
    im = viz.to_pil(np.transpose(x, (1, 2, 0))).convert("RGB")
    if im.size[0] != side:
        s = side / im.size[0]
        im = im.resize((side, max(1, round(im.size[1] * s))), Image.NEAREST if s >= 1 else Image.BILINEAR)
    return im


def scatter(Y: np.ndarray, labels: np.ndarray, classes: Sequence[str], size: int = 720, title: str = "",
            seed: int = 0) -> Image.Image:
    """(N, 2) points coloured by class, drawn in a seeded random order (no class hides the others),
    with a legend of class names and counts on the right."""
    labels = np.asarray(labels)
    n_cls = max(len(classes), int(labels.max()) + 1 if len(labels) else 0)
    cols = palette(n_cls)
    f = viz.font(12)
    legend_w = min(220, max(90, 30 + max((viz._text_w(f, c) for c in classes), default=40) + 50))
    top = 26 if title else 8
    m = 10
    img = Image.new("RGB", (size + legend_w, size + top + m), "white")
    d = ImageDraw.Draw(img)
    if title:
        d.text((m, 6), title, fill="black", font=viz.font(13))
    U = unit(Y)
    px = m + U[:, 0] * (size - 2 * m)
    py = top + U[:, 1] * (size - 2 * m)
    r = 2.5 if len(Y) <= 3000 else 1.5
    for i in np.random.default_rng(seed).permutation(len(Y)):
        c = cols[labels[i]] if labels[i] >= 0 else (0, 0, 0)
        d.ellipse([px[i] - r, py[i] - r, px[i] + r, py[i] + r], fill=c)
    counts = np.bincount(labels[labels >= 0], minlength=n_cls)
    for j, name in enumerate(classes):
        y = top + 4 + 18 * j
        d.rectangle([size + 4, y + 2, size + 14, y + 12], fill=cols[j])
        d.text((size + 20, y), f"{name} ({counts[j]})", fill="black", font=f)
    return img


def atlas(thumbs: Sequence[Image.Image | None], cells: np.ndarray, side: int, title: str = "") -> Image.Image:
    """Thumbnails on a G x G grid: `cells[r, c]` is the thumbnail index shown in cell (r, c), -1 = empty."""
    G = cells.shape[0]
    top = 22 if title else 0
    img = Image.new("RGB", (G * side, G * side + top), "white")
    if title:
        ImageDraw.Draw(img).text((4, 4), title, fill="black", font=viz.font(13))
    for r in range(G):
        for c in range(G):
            i = int(cells[r, c])
            if i >= 0:
                img.paste(thumbs[i].resize((side, side)) if thumbs[i].size != (side, side) else thumbs[i],
                          (c * side, top + r * side))
    return img


def _tile(im: Image.Image, text: str, colour, side: int, frame: int = 3) -> Image.Image:
    """A thumbnail in a coloured frame with its caption below."""
    out = Image.new("RGB", (side + 2 * frame, side + 2 * frame + 13), "white")
    d = ImageDraw.Draw(out)
    d.rectangle([0, 0, side + 2 * frame - 1, side + 2 * frame - 1], fill=colour)
    out.paste(im, (frame, frame))
    d.text((1, side + 2 * frame), text[:max(4, side // 6)], fill=colour, font=viz.font(10))
    return out


def neighbours_panel(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], nb, side: int = 56,
                     title: str = "") -> Image.Image:
    """One row per query: query | its k feature-space neighbours | its k pixel-space neighbours.

    images: (N, C, H, W) in [0, 1]; nb: a `Neighbours` (rows = the shown queries). Neighbours are
    framed and captioned green when their class is the query's, red otherwise; each row's title
    gives its two purities."""
    k = nb.feature.shape[1]
    frame, gap, pad = 3, 18, 4
    tw, th = side + 2 * frame, side + 2 * frame + 13
    f = viz.font(11)
    head = 22 if title else 0
    W = pad + tw + gap + k * (tw + pad) + gap + k * (tw + pad)
    row_h = 16 + th + 6
    img = Image.new("RGB", (W, head + 16 + row_h * len(nb.queries)), "white")
    d = ImageDraw.Draw(img)
    if title:
        d.text((pad, 4), title, fill="black", font=viz.font(13))
    x_feat = pad + tw + gap
    x_pix = x_feat + k * (tw + pad) + gap
    d.text((pad, head + 2), "query", fill="black", font=f)
    d.text((x_feat, head + 2), f"{k} nearest in feature space", fill="black", font=f)
    d.text((x_pix, head + 2), f"{k} nearest in pixel space", fill="black", font=f)

    def name(i):
        lab = int(labels[i])
        return classes[lab] if 0 <= lab < len(classes) else str(lab)

    for r, q in enumerate(nb.queries):
        y = head + 16 + r * row_h
        d.text((pad, y + 1), f"{name(q)} (#{int(q)}): feature purity {nb.feature_purities[r]:.2f}, "
                             f"pixel purity {nb.pixel_purities[r]:.2f}", fill="black", font=f)
        y += 16
        img.paste(_tile(thumbnail(images[q], side), name(q), QUERY, side, frame), (pad, y))
        for x0, row in ((x_feat, nb.feature[r]), (x_pix, nb.pixel[r])):
            for j, i in enumerate(row):
                colour = MATCH if labels[i] == labels[q] else MISMATCH
                img.paste(_tile(thumbnail(images[i], side), name(i), colour, side, frame), (x0 + j * (tw + pad), y))
    return img
