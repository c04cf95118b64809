"""Job kinds about the model itself: classify photos."""

from __future__ import annotations

from pydantic import Field

from cnnvis.jobs.helpers import load_input
from cnnvis.jobs.spec import Spec, register


# ---------------------------------------------------------------------- classify
@register
class ClassifySpec(Spec):
    """Top-k classes of each photo."""

    kind = "classify"
    example = {"images": ["sample:chelsea"], "top": 3}
    title = "top-k classes of photos"
    images: list[str] = Field(min_length=1)
    top: int = Field(5, ge=1, le=1000)

    def inputs(self) -> list[str]:
        return list(self.images)

    def run(self, vm, ctx):
        from cnnvis.classify import classify

        photos = [load_input(p) for p in self.images]
        preds = classify(vm, photos, top=self.top, progress=ctx.bar)
        return {"predictions": [{"image": p, "top": [{"index": q.index, "label": q.label, "prob": round(q.prob, 6)}
                                                      for q in pr]} for p, pr in zip(self.images, preds)]}, {}, None
