"""Job kinds about the model itself: classify photos."""

from __future__ import annotations

from pydantic import Field

from cnnvis import defaults as D
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
    top: int = Field(D.Classify.top, ge=1, le=1000)

    def inputs(self) -> list[str]:
        return list(self.images)

    def run(self, vm, ctx):
        from cnnvis.classify import classify

        photos = [load_input(p) for p in self.images]
        preds = classify(vm, photos, top=self.top, progress=ctx.bar)
        return {"predictions": [{"image": p, "top": [{"index": q.index, "label": q.label, "prob": round(q.prob, 6)}
                                                      for q in pr]} for p, pr in zip(self.images, preds)]}, {}, None


# ---------------------------------------------------------------------- layers
@register
class LayersSpec(Spec):
    """A model's layers in execution order: dotted name, alias, type, output shape for a probe input
    (`size` px a side, default the model's), parameter count. What `cnnvis layers` lists."""

    kind = "layers"
    example = {"leaves_only": True}
    title = "layer listing"
    size: int | None = Field(None, ge=1, le=4096)  # probe input side in pixels (default: the model's)
    leaves_only: bool = True  # False: containers too

    def run(self, vm, ctx):
        from cnnvis.errors import CnnvisError
        from cnnvis.layers import list_layers

        if self.size is not None and self.size < vm.min_size:
            raise CnnvisError(f"size {self.size} is too small for {vm.name}; use at least {vm.min_size}")
        infos = list_layers(vm, self.size, leaves_only=self.leaves_only)
        return {"layers": [{"name": i.name, "alias": i.alias, "type": i.kind,
                            "shape": list(i.shape) if i.shape is not None else None, "params": i.params,
                            "spatial": i.spatial} for i in infos]}, {}, None
