"""Pictures of attribution results (built on `cnnvis.viz`): map panels, deconvnet panels, sanity curves.
Compute code never calls these; the CLI and the report do."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from cnnvis import viz  # the package: colour maps, grids, overlays


def signed_image(r: Tensor, percentile: float = 99.5) -> Image.Image:
    """(3, H, W) signed reconstruction -> RGB on grey: 0.5 + r / (2 s), s = the `percentile`
    of |r| (a few extreme pixels would otherwise leave the rest flat grey), clipped."""
    r = r.detach().float()
    s = viz.robust_max(r.abs(), percentile)
    return viz.to_pil(0.5 + r / (2 * s) if s > 0 else torch.full_like(r, 0.5))


def map_panel(photo: Tensor, heat: Tensor, title: str = "", cell: int = 224) -> Image.Image:
    """[photo | raw map | overlay] for x (1, 3, H, W) in [0, 1] and a (H, W) map."""
    p = viz.to_pil(photo)
    return viz.grid([[p, viz.colormap(heat), viz.overlay(p, heat)]], col_labels=["photo", "map", "overlay"],
                    cell=cell, title=title or None)


def methods_grid(photos: Sequence[tuple[str, Tensor]], maps: dict[str, Tensor], cell: int = 160) -> Image.Image:
    """Rows = photos, columns = photo + one overlay per method; maps[method] is (B, H, W)."""
    rows = []
    for i, (_, x) in enumerate(photos):
        p = viz.to_pil(x)
        rows.append([p] + [viz.overlay(p, m[i], alpha=0.6) if m.dim() == 3 else None for m in maps.values()])
    return viz.grid(rows, row_labels=[n for n, _ in photos], col_labels=["photo", *maps], cell=cell)


def deconv_panel(photo: Tensor, res, cell: int = 128, title: str = "") -> Image.Image:
    """Rows = layers; per top channel two panels: its activation over the photo, its reconstruction."""
    p = viz.to_pil(photo)
    rows, labels = [], []
    for lab, ch, acts, rec in zip(res.labels, res.channels, res.activations, res.reconstructions):
        row = []
        for c, a, r in zip(ch.tolist(), acts, rec):
            row += [viz.overlay(p, a, alpha=0.6), signed_image(r)]
        rows.append(row)
        labels.append(f"{lab}: " + ",".join(f"#{c}" for c in ch.tolist()))
    k = max(len(c) for c in res.channels)
    cols = [s for j in range(k) for s in (f"top{j + 1} activation", "reconstruction")]
    return viz.grid(rows, row_labels=labels, col_labels=cols, cell=cell, title=title or None)


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
