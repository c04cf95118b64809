"""Pictures of the dataset study's numbers: a confusion matrix (`evaluate`), the regularizer study's panel."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from cnnvis.viz import font, grid, to_pil
from cnnvis.viz.tiles import grey_to_rgb, upscale


def confusion_image(cm: np.ndarray, classes: list[str], cell: int = 28) -> Image.Image:
    """(K, K) counts (rows: true, columns: predicted) -> a labelled heat map, counts written in."""
    k = len(classes)
    f = font(11)
    lw = max(len(c) for c in classes) * 7 + 10
    top = 18  # a line for the legend
    W, H = max(340, lw + k * cell + 10), top + lw + k * cell + 10
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)  # share of each true class
    for i in range(k):
        d.text((4, top + lw + i * cell + cell // 2 - 6), classes[i][:14], fill="black", font=f)
        for j in range(k):
            v = float(rows[i, j])
            shade = int(255 * (1 - v))
            colour = (shade, shade, 255) if i == j else (255, shade, shade)
            x0, y0 = lw + j * cell, top + lw + i * cell
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(220, 220, 220))
            if cm[i, j]:
                d.text((x0 + 3, y0 + cell // 2 - 6), str(int(cm[i, j])), fill="black" if v < 0.6 else "white", font=f)
    for j in range(k):  # column labels: the first three letters
        d.text((lw + j * cell + 2, top + lw - 14), classes[j][:3], fill="black", font=f)
    d.text((4, 3), "rows: true class, columns: predicted (share of the row)", fill="black", font=f)
    return img


def study_panel(vm, rows: list[dict], images: list, targets: list[int], judge) -> Image.Image:
    """A row of images per regularizer (nearest-neighbour upscaled), labelled with the judge's numbers.
    rows: the regularizer study's row records; images: per row (B, C, H, W) in [0, 1]; judge: the judge's
    VisModel or None."""
    side = images[0].shape[-1]
    f = max(1, 72 // side)
    cells = [[to_pil(grey_to_rgb(upscale(im, f))) for im in x] for x in images]
    labels = []
    for r in rows:
        j = f"judge {r['judge_mean_prob']:.3f} ({r['judge_agree']}/{r['n']})" if r["judge_mean_prob"] is not None \
            else "no judge"
        labels.append(f"{r['name']}: {j}, own {r['own_mean_prob']:.3f}")
    title = f"{vm.name}: class images per regularizer" + (f", judged by {judge.name}" if judge is not None else "")
    return grid(cells, row_labels=labels, col_labels=[vm.label(t) for t in targets], cell=side * f, title=title)
