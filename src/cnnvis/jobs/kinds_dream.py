"""Job kind of DeepDream on a photo."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from cnnvis import defaults as D
from cnnvis.jobs.helpers import PhotoSpec, Side, layer_label, load_input, resolve_layers
from cnnvis.jobs.result import png_bytes
from cnnvis.jobs.spec import register


# ---------------------------------------------------------------------- DeepDream
class DreamSettings(PhotoSpec):
    """The settings a dream and a row of dreams share (not a job kind itself)."""

    channels: list[int] | None = None
    octaves: int = Field(D.Dream.octaves, ge=1, le=12)
    octave_scale: float = Field(D.Dream.octave_scale, ge=1.01, le=4)
    steps: int = Field(D.Dream.steps, ge=1, le=10000)  # per octave
    step_size: float = Field(D.Dream.step_size, gt=0, le=1)
    jitter: int = Field(D.Dream.jitter, ge=0, le=512)
    tile: Annotated[Side, Field(ge=32)] = D.Dream.tile
    objective: Literal["l2", "mean"] = D.Dream.objective
    guide: str | None = None
    max_side: int | None = Field(None, ge=8, le=100000)  # shrink the photo first so its longest side is this

    def inputs(self) -> list[str]:
        return [self.image] + ([self.guide] if self.guide else [])


@register
class DreamSpec(DreamSettings):
    """DeepDream of a photo at some layers (output: the photo's size, or `max_side`)."""

    kind = "dream"
    example = {"image": "sample:chelsea", "octaves": 1, "steps": 2, "max_side": 64}
    title = "DeepDream"
    layers: list[str] | None = None  # default: one layer about two thirds deep
    animate: bool = False  # also store the optimization as an animated GIF (animation.gif), a frame per step

    def normalized(self, vm):
        from cnnvis.layers import dream_layers

        layers = self.layers if self.layers is not None else dream_layers(vm, 1)
        return self.model_copy(update={"layers": resolve_layers(vm, layers)})

    def run(self, vm, ctx):
        from cnnvis.dream import dream

        img = load_input(self.image)
        if self.max_side and max(img.size) > self.max_side:
            s = self.max_side / max(img.size)
            img = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))))
        guide = load_input(self.guide) if self.guide else None
        anim = None
        if self.animate:
            import torch.nn.functional as F

            from cnnvis.viz.animate import Animation

            w, h = img.size
            f = min(1.0, 512 / max(w, h))
            thumb = (max(1, round(h * f)), max(1, round(w * f)))
            anim = Animation(compose=lambda n, im: F.interpolate(
                im, size=thumb, mode="bilinear", antialias=True, align_corners=False)[0])
        out = dream(vm, img, self.layers, self.channels, octaves=self.octaves, octave_scale=self.octave_scale,
                    steps_per_octave=self.steps, step_size=self.step_size, jitter=self.jitter, tile=self.tile,
                    objective=self.objective, guide=guide, seed=self.seed, progress=ctx.bar,
                    watch=anim.add if anim is not None else None)
        files = {"dream.png": png_bytes(out)}
        if anim is not None:
            anim.add(self.steps * self.octaves, out, final=True)
            files["animation.gif"] = anim.gif()
        return ({"size": [out.shape[-1], out.shape[-2]], "layers": [layer_label(vm, n) for n in self.layers],
                 "frames": len(anim.frames) if anim is not None else 0}, files, "dream.png")


# ---------------------------------------------------------------------- a row of dreams
@register
class DreamRowSpec(DreamSettings):
    """The photo beside its DeepDream at each of several layers: one `dream` job per layer (cached and shared
    like any other), composed into row.png."""

    kind = "dream_row"
    example = {"image": "sample:chelsea", "n": 2, "octaves": 1, "steps": 2, "max_side": 64}
    title = "DeepDream row (one dream per layer)"
    layers: list[str] | None = Field(None, min_length=1, max_length=32)  # default: `n` layers (dream_layers)
    n: int = Field(1, ge=1, le=8)  # how many layers, shallow to deep, when `layers` is not given
    # None: the report's row (the photo resized to the dreams' size, columns labelled with `layers` as named);
    # a side in px: the CLI's (`cnnvis dream --row`: cells of the photo thumbnailed to it, columns labelled as
    # each dream job names its layer)
    cell: int | None = Field(None, ge=8, le=2048)

    def normalized(self, vm):
        from cnnvis.layers import dream_layers

        layers = self.layers if self.layers is not None else dream_layers(vm, self.n)
        resolve_layers(vm, layers)  # every name checked before the first dream
        return self.model_copy(update={"layers": list(layers), "n": len(layers)})

    def dream_specs(self) -> list:
        """The `dream` job of each layer: what `cnnvis dream --row` and the report sent before this kind."""
        from cnnvis.jobs.spec import make_spec

        common = self.model_dump(exclude={"layers", "n", "cell"})
        return [make_spec("dream", **{**common, "layers": [n]}) for n in self.layers]

    def run(self, vm, ctx):
        from cnnvis.viz import grid

        results = [ctx.sub(s) for s in self.dream_specs()]
        dreams = [r.image() for r in results]
        photo = load_input(self.image)
        if self.cell is None:
            photo = photo.resize(dreams[0].size)  # the dreams were made at max_side
            cell = photo.size
        else:
            f = min(1.0, self.cell / max(photo.size))
            cell = max(1, round(photo.size[0] * f)), max(1, round(photo.size[1] * f))
        labels = [r.data["layers"][0] for r in results]
        row = grid([[photo] + dreams], col_labels=["photo"] + (labels if self.cell is not None else self.layers),
                   cell=cell)
        data = {"layers": list(self.layers), "labels": labels, "size": list(dreams[0].size),
                "dreams": [{"key": r.key, "layers": r.data["layers"], "size": r.data["size"]} for r in results],
                # each dream job's result as it was served when this row was made (`cnnvis dream --row --json`)
                "results": [r.to_dict() for r in results]}
        return data, {"row.png": png_bytes(row)}, "row.png"
