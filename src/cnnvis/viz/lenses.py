"""Pictures of the lenses (occlusion, feature inversion, model comparison), built on `cnnvis.viz`.
Compute code never calls these; the job kinds do."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from cnnvis import viz
from cnnvis.viz import _INFERNO, font, grid, to_pil

# distinct colours for a label map (Zeiler & Fergus Fig. 7e); the rest share OTHER
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207), (188, 189, 34)]
OTHER = (200, 200, 200)


def fixed_colormap(m: Tensor | np.ndarray, lo: float = 0.0, hi: float = 1.0) -> Image.Image:
    """(H, W) -> RGB with a fixed scale: lo -> black/purple, hi -> yellow (inferno); beyond saturates.
    Unlike `viz.colormap` (each map its own range) two maps on one scale compare."""
    a = np.asarray(m.detach().float().cpu() if isinstance(m, Tensor) else m, dtype=np.float64)
    a = np.clip((np.nan_to_num(a, nan=lo) - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    pos = a * (len(_INFERNO) - 1)
    i = np.clip(np.floor(pos).astype(int), 0, len(_INFERNO) - 2)
    f = (pos - i)[..., None]
    rgb = _INFERNO[i] * (1 - f) + _INFERNO[i + 1] * f
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def at_centres(values: Tensor, ys: Sequence[int], xs: Sequence[int], window: tuple[int, int],
               size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """(ny, nx) values, one per patch position -> (H, W): each value placed at its window's centre
    (a window cut by the edge: the centre of what is left) and interpolated in between (bilinear, or
    nearest for labels), so the map lies over the photo where the patch was."""
    H, W = size
    v = np.asarray(values.detach().float().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    cy = np.array([(y + min(y + window[0], H)) / 2 for y in ys])
    cx = np.array([(x + min(x + window[1], W)) / 2 for x in xs])
    fr = np.interp(np.arange(H) + 0.5, cy, np.arange(len(ys))) if len(ys) > 1 else np.zeros(H)
    fc = np.interp(np.arange(W) + 0.5, cx, np.arange(len(xs))) if len(xs) > 1 else np.zeros(W)
    if nearest:
        return v[np.rint(fr).astype(int)][:, np.rint(fc).astype(int)]
    r0 = np.floor(fr).astype(int)
    c0 = np.floor(fc).astype(int)
    r1, c1 = np.minimum(r0 + 1, len(ys) - 1), np.minimum(c0 + 1, len(xs) - 1)
    a, b = (fr - r0)[:, None], (fc - c0)[None, :]
    return ((1 - a) * (1 - b) * v[r0][:, c0] + (1 - a) * b * v[r0][:, c1] + a * (1 - b) * v[r1][:, c0]
            + a * b * v[r1][:, c1])


def _caption(im: Image.Image, lines: Sequence[str], width: int) -> Image.Image:
    f = font(11)
    out = Image.new("RGB", (width, im.size[1] + 4 + 14 * len(lines)), "white")
    out.paste(im, ((width - im.size[0]) // 2, 0))
    d = ImageDraw.Draw(out)
    for k, s in enumerate(lines):
        d.text((2, im.size[1] + 3 + 14 * k), str(s), fill="black", font=f)
    return out


def occlusion_panel(photo: Tensor, res, label_of, layer_label: str | None = None, title: str = "",
                    cell: int = 224) -> Image.Image:
    """Zeiler & Fergus Fig. 7 in one row: (a) the photo with the grey patch where it hurts most, (b) the
    total activation of the strongest feature map vs the patch position, (c) the probability of the class
    vs the position (one scale, 0..1), (d) the most probable class vs the position, with a legend.
    photo: (1, C, H, W) in [0, 1]; res: `cnnvis.attribution.occlusion.OcclusionResult`; label_of(index)
    -> class name."""
    x = photo[0].detach().float().cpu()
    H, W = x.shape[-2:]
    kh, kw = res.window
    wy, wx = res.worst()
    occl = x.clone()
    occl[:, wy:wy + kh, wx:wx + kw] = res.baseline
    a = to_pil(occl).convert("RGB")
    ImageDraw.Draw(a).rectangle([wx, wy, min(wx + kw, W) - 1, min(wy + kh, H) - 1], outline=(255, 0, 0))
    s = cell / max(H, W)
    fit = (max(1, round(W * s)), max(1, round(H * s)))
    big = lambda im, how=Image.BILINEAR: im.resize(fit, how)  # noqa: E731
    panels: list[Image.Image] = []
    what = "class score" if res.target is None else f"p({label_of(res.target)})"
    panels.append(_caption(big(a), [f"photo; patch {kh}x{kw}, stride {res.stride[0]}",
                                    f"here: {what} {float(res.scores.min()):.3f}"], fit[0] + 8))
    if res.activations is not None:
        m = at_centres(res.activations, res.ys, res.xs, res.window, (H, W))
        panels.append(_caption(big(viz.colormap(m, percentile=100)),
                               [f"{layer_label or res.layer} ch {res.channel}: total activation",
                                f"{float(res.activations.min()):.3g}..{float(res.activations.max()):.3g} "
                                f"(unoccluded {res.base_activation:.3g})"], fit[0] + 8))
    m = at_centres(res.scores, res.ys, res.xs, res.window, (H, W))
    if res.target is not None:
        panels.append(_caption(big(fixed_colormap(m, 0.0, 1.0)),
                               [f"{what}: black 0, yellow 1", f"unoccluded {res.base_score:.3f}, "
                                f"lowest {float(res.scores.min()):.3f}"], fit[0] + 8))
    else:
        panels.append(_caption(big(viz.colormap(m, percentile=100)), [what, f"unoccluded {res.base_score:.3g}"],
                               fit[0] + 8))
    if res.top1 is not None:
        panels.append(label_map(res, label_of, (H, W), fit))
    return _row(panels, title)


def label_map(res, label_of, size: tuple[int, int], fit: tuple[int, int]) -> Image.Image:
    """The most probable class at each patch position, one colour per class (the most frequent first),
    with a legend."""
    top = res.top1.flatten().tolist()
    counts: dict[int, int] = {}
    for c in top:
        counts[c] = counts.get(c, 0) + 1
    order = sorted(counts, key=lambda c: (-counts[c], c))
    colour = {c: PALETTE[k] for k, c in enumerate(order[:len(PALETTE)])}
    lab = at_centres(res.top1.float(), res.ys, res.xs, res.window, size, nearest=True).astype(int)
    rgb = np.zeros((*lab.shape, 3), np.uint8)
    for c in order:
        rgb[lab == c] = colour.get(c, OTHER)
    im = Image.fromarray(rgb, "RGB").resize(fit, Image.NEAREST)
    n = len(top)
    shown = order[:5]
    lines = ["most probable class:"] + [f"{label_of(c)[:22]} {counts[c] / n:.0%}" for c in shown]
    if len(order) > len(shown):
        lines.append(f"+{len(order) - len(shown)} other classes")
    out = _caption(im, lines, fit[0] + 8)
    d = ImageDraw.Draw(out)
    for k, c in enumerate(shown):  # a swatch before each name
        y = im.size[1] + 3 + 14 * (k + 1)
        d.rectangle([fit[0] - 2, y + 2, fit[0] + 6, y + 10], fill=colour.get(c, OTHER))
    return out


def _row(panels: Sequence[Image.Image], title: str = "", pad: int = 6) -> Image.Image:
    tt = 20 if title else 0
    W = sum(p.size[0] for p in panels) + pad * (len(panels) + 1)
    H = tt + max(p.size[1] for p in panels) + 2 * pad
    out = Image.new("RGB", (max(W, 7 * len(title) + 8), H), "white")
    if title:
        ImageDraw.Draw(out).text((pad, 3), title, fill="black", font=font(13))
    x = pad
    for p in panels:
        out.paste(p, (x, tt + pad))
        x += p.size[0] + pad
    return out


def inversion_row(photo: Tensor, images: Sequence[Tensor], labels: Sequence[str], title: str = "",
                  cell: int = 160) -> Image.Image:
    """[photo | inversion from each layer], each with its label (layer, distance) above."""
    return grid([[to_pil(photo)] + [to_pil(im) for im in images]], col_labels=["photo", *labels], cell=cell,
                title=title or None)


def heatmap(values: Tensor, rows: Sequence[str], cols: Sequence[str], title: str = "", row_title: str = "",
            col_title: str = "", cell: int | None = None) -> Image.Image:
    """A (R, C) matrix of values in [0, 1] as coloured cells (inferno, fixed scale) with the number in each
    cell, row labels on the left, column labels on top (rotated), a colour bar; NaN cells are grey."""
    v = values.detach().double().cpu()
    R, C = v.shape
    cell = cell or max(22, min(64, 560 // max(R, C)))
    f = font(11)
    lw = max(int(f.getlength(str(s))) for s in rows) + 10
    ch_ = max(int(f.getlength(str(s))) for s in cols) + 10
    tt = 22 if title else 0
    W = lw + C * cell + 70
    H = tt + ch_ + R * cell + 30
    out = Image.new("RGB", (max(W, 7 * len(title) + 10), H), "white")
    d = ImageDraw.Draw(out)
    if title:
        d.text((6, 4), title, fill="black", font=font(13))
    top = tt + ch_
    for j, s in enumerate(cols):  # rotated column labels
        lbl = Image.new("RGBA", (ch_, 14), (255, 255, 255, 0))
        ImageDraw.Draw(lbl).text((0, 0), str(s), fill="black", font=f)
        lbl = lbl.rotate(90, expand=True)
        out.paste(lbl, (lw + j * cell + (cell - 14) // 2, top - lbl.size[1] - 2), lbl)
    for i, s in enumerate(rows):
        d.text((4, top + i * cell + cell // 2 - 7), str(s), fill="black", font=f)
    for i in range(R):
        for j in range(C):
            x0, y0 = lw + j * cell, top + i * cell
            val = float(v[i, j])
            if val != val:
                colour, ink = (190, 190, 190), "black"
            else:
                t = min(max(val, 0.0), 1.0) * (len(_INFERNO) - 1)
                k = min(int(t), len(_INFERNO) - 2)
                colour = tuple(int(round(c)) for c in _INFERNO[k] * (1 - (t - k)) + _INFERNO[k + 1] * (t - k))
                ink = "black" if val > 0.6 else "white"
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour)
            if cell >= 26:
                d.text((x0 + 3, y0 + cell // 2 - 6), "nan" if val != val else f"{val:.2f}"[1:] if 0 <= val < 1
                       else f"{val:.1f}", fill=ink, font=font(10 if cell < 36 else 11))
    bx = lw + C * cell + 12  # colour bar
    for k in range(R * cell):
        t = 1 - k / max(1, R * cell - 1)
        d.line([(bx, top + k), (bx + 12, top + k)], fill=tuple(int(c) for c in fixed_colormap(
            np.array([[t]])).getpixel((0, 0))))
    d.text((bx + 16, top - 4), "1", fill="black", font=f)
    d.text((bx + 16, top + R * cell - 10), "0", fill="black", font=f)
    if row_title:
        d.text((4, top + R * cell + 8), f"rows: {row_title}   columns: {col_title}", fill="black", font=f)
    return out


def matches_panel(rows: Sequence[tuple[int, Image.Image | Tensor | None, int, Image.Image | Tensor | None, float]],
                  name_a: str, name_b: str, title: str = "", cell: int = 96, pairs_per_row: int = 4) -> Image.Image:
    """Pairs of feature visualizations: a channel of A beside B's best-matching channel, with the
    correlation. rows: (channel of A, its image or None (dead), channel of B (-1: none), its image or None, r)."""
    from cnnvis.viz.tiles import labelled_tiles

    tiles, labels = [], []
    for ca, ia, cb, ib, r in rows:
        tiles += [_tile(ia, cell), _tile(ib if cb >= 0 else None, cell, "no match" if cb < 0 else "dead")]
        labels += [f"A #{ca}", f"B #{cb} r={r:.2f}" if cb >= 0 else "B: none"]
    cols = 2 * max(1, min(pairs_per_row, len(rows)))
    sheet = labelled_tiles(tiles, labels, cols=cols, title=title[:160] or None)
    return sheet


def _tile(im, cell: int, empty: str = "dead") -> Image.Image:
    if im is None:
        out = Image.new("RGB", (cell, cell), (235, 235, 235))
        ImageDraw.Draw(out).text((6, cell // 2 - 6), empty, fill="black", font=font(11))
        return out
    p = im if isinstance(im, Image.Image) else to_pil(im)
    return p.convert("RGB").resize((cell, cell), Image.NEAREST if p.size[0] < cell // 2 else Image.BILINEAR)

