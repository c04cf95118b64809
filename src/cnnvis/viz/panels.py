"""Pictures of attribution results (built on `cnnvis.viz`): map panels, deconvnet panels, sanity curves.
Compute code never calls these; the CLI and the report do."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from cnnvis import viz  # the package: colour maps, grids, overlays


def signed_image(r: Tensor, percentile: float = 99.5, reach: Tensor | None = None) -> Image.Image:
    """(C, H, W) signed reconstruction -> image on grey: 0.5 + r / (2 s), s = the `percentile` of
    |r| (a few extreme pixels would otherwise leave the rest flat grey), clipped. `reach` (H, W)
    bool: take the percentile over those pixels only (a projection that is zero outside a unit's
    field would otherwise get its scale from the zeros)."""
    r = r.detach().float().cpu()
    vals = r.abs() if reach is None else r.abs()[:, reach.cpu()]
    s = viz.robust_max(vals, percentile) if vals.numel() else 0.0
    return viz.to_pil(0.5 + r / (2 * s) if s > 0 else torch.full_like(r, 0.5))


def map_panel(photo: Tensor, heat: Tensor, title: str = "", cell: int = 224, caption: str = "") -> Image.Image:
    """[photo | raw map | overlay] for x (1, 3, H, W) in [0, 1] and a (H, W) map; `caption` under it."""
    p = viz.to_pil(photo)
    g = viz.grid([[p, viz.colormap(heat), viz.overlay(p, heat)]], col_labels=["photo", "map", "overlay"],
                 cell=cell, title=title or None)
    return stack([g, _text_lines([caption], g.size[0])]) if caption else g


def methods_grid(photos: Sequence[tuple[str, Tensor]], maps: dict[str, Tensor], cell: int = 160) -> Image.Image:
    """Rows = photos, columns = photo + one overlay per method; maps[method] is (B, H, W)."""
    rows = []
    for i, (_, x) in enumerate(photos):
        p = viz.to_pil(x)
        rows.append([p] + [viz.overlay(p, m[i], alpha=0.6) if m.dim() == 3 else None for m in maps.values()])
    return viz.grid(rows, row_labels=[n for n, _ in photos], col_labels=["photo", *maps], cell=cell)


# outline colours of the top units' fields (rank 1, 2, ...), shared by the photo and the cells
_RANK_COLOURS = [(230, 30, 30), (40, 200, 40), (30, 120, 255), (255, 170, 0), (200, 0, 200), (0, 200, 200)]
MIN_CROP = 32  # px: a field smaller than this (the first layers') is shown with this much context


def deconv_panel(photo: Tensor, res, boxes: Sequence[Sequence[Sequence[int]] | None] | None = None,
                 cell: int = 128, title: str = "", captions: Sequence[str] = ()) -> Image.Image:
    """A DeconvResult as a picture; rows = layers, the rule and the seed named under the title.

    With the strongest units' projections (res.seed == 'max', or res.unit_reconstructions) the
    first column is the photo with each crop outlined ('where'); per top channel then (seed 'sum'
    or 'map') its full-size projection with the same box outlined, and always the photo patch
    beside the strongest unit's projection, both cropped to that box (Zeiler & Fergus Fig. 2):
    the unit's receptive field, tightened to where its projection holds 99% of its energy (deep
    fields cover the whole photo), at least MIN_CROP px a side. Without them (seed 'sum' / 'map'
    alone): per top channel its activation over the photo and its full-size projection. Every
    projection has its own contrast (`signed_image` over the pixels it reaches). photo:
    (1, C, H, W) in [0, 1]; boxes[i][j]: (top, left, bottom, right) inclusive, the field of layer
    i's channel j's strongest unit (None: the whole photo).
    """
    x = photo.detach().float().cpu()[0]
    H, W = x.shape[-2:]
    p = viz.to_pil(x)
    k = max(len(c) for c in res.channels)
    pairs = crop_pairs(photo, res, boxes)
    whole = res.seed != "max"  # the full-size projections have their own column
    line = max(1, round(W / cell))
    rows, labels = [], []
    for i, (lab, ch, acts, rec) in enumerate(zip(res.labels, res.channels, res.activations, res.reconstructions)):
        labels.append(f"{lab}: " + ",".join(f"#{c}" for c in ch.tolist()))
        if pairs is None:
            row = []
            for a, r in zip(acts, rec):
                row += [viz.overlay(p, a, alpha=0.6), signed_image(r, reach=r.abs().sum(0) > 0)]
            rows.append(row)
            continue
        where = p.convert("RGB")
        d = ImageDraw.Draw(where)
        row = [where]
        for j, (box, patch, proj) in enumerate(pairs[i]):
            colour = _RANK_COLOURS[j % len(_RANK_COLOURS)]
            t, left, bottom, right = box
            d.rectangle([left, t, right, bottom], outline=colour, width=line)
            if whole:
                full = signed_image(rec[j], reach=rec[j].abs().sum(0) > 0).convert("RGB")
                ImageDraw.Draw(full).rectangle([left, t, right, bottom], outline=colour, width=line)
                row.append(full)
            row += [_framed(_fit(viz.to_pil(patch), cell), colour),
                    _framed(_fit(signed_image(proj, reach=proj.abs().sum(0) > 0), cell), colour)]
        rows.append(row)
    if pairs is None:
        cols = [s for j in range(k) for s in (f"top{j + 1} activation", "its projection")]
        how = "each top channel projected, full size"
    elif whole:
        cols = ["where"] + [s for j in range(k) for s in (f"top{j + 1} projection", "photo patch", "strongest unit")]
        how = ("each top channel projected, full size, its strongest unit's box outlined; beside it the photo patch "
               "in that box and the strongest unit's own projection there (Z&F Fig. 2)")
    else:
        cols = ["where"] + [s for j in range(k) for s in (f"top{j + 1} photo patch", "its projection")]
        how = ("each top channel's strongest unit projected, beside the photo patch that drove it (Z&F Fig. 2); "
               "both cropped to the unit's receptive field, tightened to 99% of the projection's energy")
    g = viz.grid(rows, row_labels=labels, col_labels=cols, cell=cell)
    lines = [f"{title}: {how}" if title else how, f"{res.rule_text}; {res.seed_text}"] + list(captions)
    return stack([_text_lines(lines, g.size[0]), g])


def unit_projections(res) -> list[Tensor] | None:
    """Per layer (k, C, H, W): each top channel's strongest unit projected alone, or None."""
    return res.reconstructions if res.seed == "max" else getattr(res, "unit_reconstructions", None)


def crop_pairs(photo: Tensor, res, boxes=None) -> list[list[tuple[tuple[int, int, int, int], Tensor, Tensor]]] | None:
    """Per layer, per top channel: (box, photo patch (C, h, w), strongest unit's projection (C, h, w)),
    both cut from the same box (top, left, bottom, right, inclusive): the unit's field `boxes[i][j]`
    (None: the whole photo) tightened to 99% of the projection's energy, at least MIN_CROP px a side.
    None when `res` holds no strongest-unit projections (seed 'sum' / 'map' without also_units)."""
    recs = unit_projections(res)
    if recs is None:
        return None
    x = photo.detach().float().cpu()[0]
    H, W = x.shape[-2:]
    out = []
    for i, rec in enumerate(recs):
        fields = boxes[i] if boxes is not None and boxes[i] is not None else [(0, 0, H - 1, W - 1)] * len(rec)
        row = []
        for b, r in zip(fields, rec):
            t, left, bottom, right = _at_least(_energy_box(r, b), MIN_CROP, H, W)
            row.append(((t, left, bottom, right), x[:, t:bottom + 1, left:right + 1],
                        r.detach().float().cpu()[:, t:bottom + 1, left:right + 1]))
        out.append(row)
    return out


def _energy_box(r: Tensor, box, share: float = 0.99) -> tuple[int, int, int, int]:
    """The part of `box` (top, left, bottom, right) that holds at least `share` of the projection r's
    energy (sum_c |r|): each axis trimmed by (1 - share) / 4 of the energy at either end. Deep
    units' fields cover the whole photo while their projections do not."""
    t, left, b, rr = (int(v) for v in box)
    a = r.detach().float().abs().sum(0)[t:b + 1, left:rr + 1]
    total = float(a.sum())
    if total <= 0:
        return t, left, b, rr

    def span(m: Tensor) -> tuple[int, int]:
        c = m.cumsum(0) / total
        lo = int((c < (1 - share) / 4).sum())
        hi = int((c < 1 - (1 - share) / 4).sum())
        return lo, min(hi, m.numel() - 1)

    (y0, y1), (x0, x1) = span(a.sum(1)), span(a.sum(0))
    return t + y0, left + x0, t + y1, left + x1


def _at_least(box, side: int, H: int, W: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) inclusive, grown about its centre to at least `side` px a side, inside H x W."""
    def grow(lo: int, hi: int, n: int) -> tuple[int, int]:
        want = min(side, n)
        if hi - lo + 1 >= want:
            return lo, hi
        lo = min(max(0, round((lo + hi) / 2 - (want - 1) / 2)), n - want)
        return lo, lo + want - 1

    t, left, b, r = (int(v) for v in box)
    t, b = grow(t, b, H)
    left, r = grow(left, r, W)
    return t, left, b, r


def _fit(im: Image.Image, cell: int) -> Image.Image:
    """Scale to fit a cell: pixels stay square and sharp when enlarged 3x or more."""
    s = cell / max(im.size)
    mode = Image.NEAREST if s >= 3 else Image.BILINEAR
    return im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), mode)


def _framed(im: Image.Image, colour) -> Image.Image:
    im = im.convert("RGB")
    ImageDraw.Draw(im).rectangle([0, 0, im.size[0] - 1, im.size[1] - 1], outline=colour, width=2)
    return im


def _text_lines(lines: Sequence[str], width: int, size: int = 13) -> Image.Image:
    """Lines of text on white, each wrapped at `width` px."""
    f = viz.font(size)
    out_lines = []
    for line in lines:
        words, cur = str(line).split(), ""
        for w in words:
            cand = f"{cur} {w}".strip()
            if cur and viz._text_w(f, cand) > width - 8:
                out_lines.append(cur)
                cur = w
            else:
                cur = cand
        out_lines.append(cur)
    h = size + 5
    img = Image.new("RGB", (width, h * len(out_lines) + 6), "white")
    d = ImageDraw.Draw(img)
    for i, s in enumerate(out_lines):
        d.text((4, 3 + i * h), s, fill="black", font=f)
    return img


def curve(steps: Sequence[str], series: dict[str, Sequence[float]], title: str = "", size=(720, 420)) -> Image.Image:
    """Line chart of rank correlation (y in [-1, 1]) per randomization step, one line per method."""
    W, H = size
    left, right, top, bottom = 80, 150, 30, 110
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    f = viz.font(11)
    pw, ph = W - left - right, H - top - bottom
    n = max(len(steps) - 1, 1)

    def xy(i, v):
        return left + pw * i / n, top + ph * (1 - (v + 1) / 2)

    for v in (-1, -0.5, 0, 0.5, 1):
        y = xy(0, v)[1]
        d.line([(left, y), (left + pw, y)], fill=(220, 220, 220) if v else (150, 150, 150))
        d.text((8, y - 6), f"{v:+.1f}", fill="black", font=f)
    for i, s in enumerate(steps):
        x = xy(i, 0)[0]
        d.line([(x, top + ph), (x, top + ph + 4)], fill="black")
        lbl = Image.new("RGBA", (100, 14), (255, 255, 255, 0))
        ImageDraw.Draw(lbl).text((0, 0), str(s)[:16], fill="black", font=f)
        lbl = lbl.rotate(60, expand=True)
        img.paste(lbl, (max(0, int(x - lbl.size[0] + 6)), top + ph + 6), lbl)
    colors = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
    for k, (name, vals) in enumerate(series.items()):
        c = colors[k % len(colors)]
        pts = [xy(i, float(v)) for i, v in enumerate(vals)]
        if len(pts) > 1:
            d.line(pts, fill=c, width=2)
        for px, py in pts:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=c)
        d.text((left + pw + 10, top + 14 * k), name, fill=c, font=f)
    d.text((left, 8), title or "Spearman rank correlation with the trained model's map", fill="black", font=viz.font(13))
    return img


def sanity_strip(res, photo: Tensor, cell: int = 96) -> Image.Image:
    """The photo and the map after each randomization step, in one row."""
    heads = [viz.to_pil(photo)] + [viz.colormap(m) for m in res.maps]
    labels = ["photo"] + [f"{s[:12]} {r:+.2f}" for s, r in zip(res.steps, res.spearman)]
    return viz.grid([heads], col_labels=None, cell=cell, title=" | ".join(labels[:1]) + f"  ({res.method})")


def stack(images: Sequence[Image.Image]) -> Image.Image:
    """Images one below the other on white."""
    W = max(i.size[0] for i in images)
    H = sum(i.size[1] for i in images)
    out = Image.new("RGB", (W, H), "white")
    y = 0
    for i in images:
        out.paste(i, (0, y))
        y += i.size[1]
    return out
