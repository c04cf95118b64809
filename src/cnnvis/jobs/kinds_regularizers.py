"""The regularizer study (issue 11 item 8): class images under each classic regularizer, judged by a second net.

    run({"kind": "regularizer_study", "model": "runs/mnist", "judge": "runs/mnist2"})
    -> data["rows"]: [{name, config, judge_mean_prob, judge_agree, n, own_mean_prob, stats}, ...]
       files: panel.png (a row per regularizer, labelled with its numbers), row_NAME.png (the row's
       images side by side at their own size, 8 bit: what the judge read), raw_NAME.npy (float16
       (B, C, H, W): the images before they were clipped to [0, 1] and saved)

Rows (`cnnvis.study.regularizers.row_names()`): 'none' (plain normalized gradient ascent), each
regularizer alone ('decay', 'blur', 'clip', 'tv', 'range'), 'all' of them together, and 'default'
(the class image's own recipe, CLASS_PRESET). The rows are rendered by `cnnvis.study.regularizers`;
this kind saves each as an 8-bit PNG and measures what that file holds: the judge only reads the
saved rows.
"""

from __future__ import annotations

from pydantic import Field

from cnnvis import defaults as D
from cnnvis.errors import CnnvisError
from cnnvis.jobs.helpers import Side, class_target
from cnnvis.jobs.judge import CLASS_PRESET, default_judge, load_judge
from cnnvis.jobs.result import npy_bytes, png_bytes
from cnnvis.jobs.spec import Spec, register
from cnnvis.study.regularizers import default_targets, row_names


@register
class RegularizerStudySpec(Spec):
    """Class images under each classic regularizer alone, all combined and the default recipe, each row
    judged by a second classifier with the same classes (mean probability, how many it agrees on)."""

    kind = "regularizer_study"
    example = {"judge": "none", "targets": [0, 1], "steps": 4, "regularizers": ["none", "tv", "default"]}
    title = "regularizer comparison of class images, judged by a second net"
    judge: str | None = None  # a second checkpoint with the same classes (required for small nets); 'none' = none
    targets: list[int | str] | None = None  # default: every class (<= 10 classes), else 5 spread over them
    steps: int = Field(D.RegularizerStudy.steps, ge=1, le=100000)
    size: Side | None = None  # default: the model's input size
    regularizers: list[str] | None = None  # rows, a subset of row_names() (default: all, in that order)

    def normalized(self, vm):
        if vm.task != "classification":
            raise CnnvisError(f"model {vm.name!r} is not a classifier ({vm.task}); the regularizer study needs classes")
        judge = self.judge if self.judge is not None else default_judge(vm)
        if self.judge is None and judge == "none":
            raise CnnvisError(f"no judge for {vm.name!r}: give the path of a second checkpoint trained on the same "
                              f"{vm.num_classes} classes (--judge runs/mnist2), or 'none' for no judge")
        if judge != "none" and judge == self.model and self.weights is None:
            raise CnnvisError(f"the judge must be a second model, not {self.model!r} itself; give another "
                              "checkpoint trained on the same classes")
        names = row_names()
        rows = list(self.regularizers) if self.regularizers is not None else list(names)
        bad = [r for r in rows if r not in names]
        if bad or not rows or len(set(rows)) != len(rows):
            raise CnnvisError(f"unknown or repeated row {(bad or rows)[0]!r} (--rows, regularizers); use some of "
                              f"{', '.join(names)}, each once")
        targets = self.targets if self.targets is not None else default_targets(vm)
        if not targets:
            raise CnnvisError("targets is empty; give class names or indices, or leave it out for the default")
        return self.model_copy(update={"judge": judge, "regularizers": rows,
                                       "targets": [class_target(vm, t) for t in targets]})

    def extra_models(self) -> list[str]:
        return [self.judge] if self.judge not in (None, "none") else []

    def run(self, vm, ctx):
        from cnnvis.study.regularizers import read_row, render_row, row_image, row_numbers
        from cnnvis.viz.study import study_panel

        judge = load_judge(vm, ctx, self.judge)
        side = self.size if self.size is not None else min(vm.input_shape[1:])
        if side < vm.min_size:
            raise CnnvisError(f"size {side} is too small for {vm.name}; use at least {vm.min_size}")
        targets = [int(t) for t in self.targets]
        center = [float(v) for v in vm.preprocess.mean]
        rows, files, shown = [], {}, []
        for name in self.regularizers:
            r = render_row(vm, name, targets, steps=self.steps, side=side, seed=self.seed, center=center,
                           default_preset=CLASS_PRESET, progress=ctx.bar)
            png = png_bytes(row_image(r.images))
            x = read_row(png, len(targets))  # what the saved file holds: every number below is of it
            rows.append({"name": name, "config": r.config, **row_numbers(vm, judge, x, r.raw, targets, center)})
            files[f"row_{name}.png"] = png
            files[f"raw_{name}.npy"] = npy_bytes(r.raw.half())
            shown.append(x)
        files["panel.png"] = png_bytes(study_panel(vm, rows, shown, targets, judge))
        return ({"targets": targets, "labels": [vm.label(t) for t in targets], "size": side, "steps": self.steps,
                 "judge": judge.name if judge is not None else None, "center": center, "rows": rows},
                files, "panel.png")
