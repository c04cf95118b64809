"""Job kinds of activation maximization: class images (checked by a judge) and filter grids."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from cnnvis import defaults as D
from cnnvis.errors import CnnvisError
from cnnvis.jobs.helpers import Side, chosen_layers, class_target, layer_label, preset_name, resolve_layers
from cnnvis.jobs.judge import (
    CLASS_PRESET, CLASS_SIDE, ENSEMBLE_PRESET, class_judge, default_ensemble, load_judge, load_members,
)
from cnnvis.jobs.result import png_bytes
from cnnvis.jobs.spec import Spec, register


# ---------------------------------------------------------------------- class image
@register
class ClassImageSpec(Spec):
    """An image the model sees as `target`, re-checked from its 8-bit PNG, under four perturbations
    and by a second classifier (the judge: a witness, never a gradient). With an ensemble, the image is
    made for the mean logits of the model and the ensemble's members (each gives a gradient); a member
    cannot be the judge."""

    kind = "class_image"
    example = {"target": 1, "steps": 4, "min_steps": 0, "size": 64, "judge": "none"}
    title = "class image (activation maximization of a class logit)"
    target: int | str
    preset: str | None = None  # default: CLASS_PRESET, ENSEMBLE_PRESET with an ensemble
    steps: int = Field(D.ClassImage.steps, ge=1, le=100000)
    size: Side | None = None  # default: the model's input side, at most CLASS_SIDE (MNIST 28, CIFAR 32, ImageNet 224)
    until_prob: float = Field(D.ClassImage.until_prob, ge=0, le=1)
    robust_prob: float = Field(D.ClassImage.robust_prob, ge=0, le=1)
    min_steps: int = Field(D.ClassImage.min_steps, ge=0, le=100000)
    judge: str | None = None  # a second classifier with the same labels; None = default_judge(model); 'none' = none
    judge_prob: float = Field(D.ClassImage.judge_prob, ge=0, le=1)  # stop only once the judge gives the 8-bit file this (0 = don't)
    animate: bool = False  # also store the optimization as an animated GIF (animation.gif)
    # what is maximized: 'logit' (pre-softmax, Lucid's choice: the most natural images) or 'logprob'
    # (log-softmax: rival classes pushed down too; greyer images, yet a way out when a class's logit also
    # raises a rival's, as an MNIST net's 9 did its 7)
    objective: Literal["logit", "logprob"] = D.ClassImage.objective
    # models of the same labels whose logits are averaged with the model's for the gradient (an image two
    # models agree on convinces a third); None = default_ensemble(model) (lite1 for lite0); [] = the model alone.
    # Not in the identity when empty (a model alone keeps its job keys).
    ensemble: list[str] | None = None

    def normalized(self, vm):
        ens = list(self.ensemble) if self.ensemble is not None else default_ensemble(vm)
        ens = [] if ens == ["none"] else ens
        if self.model in ens and self.weights is None:
            raise CnnvisError(f"the ensemble lists {self.model!r}, the model itself; give the other models, "
                              "e.g. --ensemble efficientnet_lite1, or --ensemble none")
        if len(set(ens)) < len(ens) or "none" in ens:
            raise CnnvisError(f"the ensemble must name different models (or only 'none'), got {', '.join(ens)}")
        judge = self.judge if self.judge is not None else class_judge(vm, ens)
        if judge in ens:
            raise CnnvisError(f"the judge {judge!r} is in the ensemble: its view is what the render optimized; "
                              "give a model outside it, or --judge none")
        if judge != "none" and judge == self.model and self.weights is None:
            raise CnnvisError(f"the judge must be a second model, not {self.model!r} itself: its own view is what the "
                              "render optimized; give another classifier with the same labels, or --judge none")
        size = self.size if self.size is not None else min(CLASS_SIDE, *vm.input_shape[1:])
        return self.model_copy(update={"target": class_target(vm, self.target), "size": size,
                                       "preset": preset_name(self.preset or (ENSEMBLE_PRESET if ens else CLASS_PRESET)),
                                       "judge": judge,
                                       "ensemble": ens})

    def to_dict(self) -> dict:
        d = super().to_dict()
        if not d.get("ensemble"):
            d.pop("ensemble", None)
        return d

    def extra_models(self) -> list[str]:
        judge = [self.judge] if self.judge not in (None, "none") else []
        return [*(m for m in self.ensemble or [] if m != "none"), *judge]

    def run(self, vm, ctx):
        import io

        from PIL import Image

        from cnnvis.classify import predict_probs, topk
        from cnnvis.images import to_tensor
        from cnnvis.optvis import PERTURBATIONS, class_logit, class_logprob, render, robustness
        from cnnvis.optvis.config import RenderConfig, UntilProb
        from cnnvis.optvis.robustness import witness_probs
        from cnnvis.viz.animate import Animation, frame_every

        if self.size < vm.min_size:
            raise CnnvisError(f"size {self.size} is too small for {vm.name}; use at least {vm.min_size}")
        judge = load_judge(vm, ctx, self.judge)
        members = load_members(vm, ctx, self.ensemble or [])
        made_for = vm
        if members:
            from cnnvis.models.ensemble import ensemble

            made_for = ensemble([vm, *members])
        t = int(self.target)
        stop = None
        if self.until_prob:
            stop = UntilProb(self.until_prob, robust=self.robust_prob or None, min_steps=self.min_steps,
                             judge=self.judge if judge is not None and self.judge_prob else None,
                             judge_prob=self.judge_prob if judge is not None and self.judge_prob else None)
        cfg = RenderConfig(preset=self.preset, steps=self.steps, size=self.size, seed=self.seed, stop=stop)
        anim = Animation(every=frame_every(self.steps)) if self.animate else None
        obj = class_logprob(t) if self.objective == "logprob" else class_logit(t)
        res = render(made_for, obj, cfg, progress=ctx.bar, desc=f"class {vm.label(t)}",
                     judge=judge if stop is not None and stop.judge else None,
                     watch=anim.add if anim else None, watch_every=anim.every if anim else 8)
        png = png_bytes(res.images[0])
        # the 8-bit file, as a user would feed it back
        x = to_tensor(Image.open(io.BytesIO(png)), mode=vm.preprocess.pil_mode or "RGB").to(vm.device)
        probs = predict_probs(vm, x)
        rob = {k: round(float(v[0]), 6) for k, v in robustness(vm, x, t).items()}
        data = {"class": {"index": t, "label": vm.label(t)}, "preset": self.preset, "objective": self.objective,
                "steps": res.steps,
                "seconds": round(res.seconds, 2), "stopped": res.stopped, "message": res.message, "ok": res.ok,
                "prob_png": round(float(probs[0, t]), 6),
                "top5": [{"index": q.index, "label": q.label, "prob": round(q.prob, 6)} for q in topk(probs, vm, 5)[0]],
                "robustness": {k: v for k, v in rob.items() if k != "png"}, "perturbations": dict(PERTURBATIONS),
                "judge": None}
        data.update(image_stats(res.images[0]))
        if members:  # what each other member (it gave gradients) says of the PNG
            data["ensemble"] = [{"model": m.name, "prob": round(float(witness_probs(m, x)[0][t]), 6)}
                                for m in members]
        if judge is not None:
            jp = witness_probs(judge, x)[0]
            top = int(jp.argmax())
            data["judge"] = {"model": judge.name, "prob": round(float(jp[t]), 6), "agrees": top == t,
                             "top1": {"index": top, "label": judge.label(top), "prob": round(float(jp[top]), 6)}}
        files = {"image.png": png}
        if anim is not None:
            anim.add(res.steps, res.images, final=True)
            files["animation.gif"] = anim.gif()
            data["frames"] = len(anim.frames)
        return data, files, "image.png"



def image_stats(img) -> dict:
    """Colour saturation (mean HSV saturation) and contrast (pixel standard deviation) of a (C, H, W)
    image in [0, 1]: class images that are pale and flat have both low."""
    x = img.detach().float().clamp(0, 1)
    sat = 0.0
    if x.shape[0] == 3:
        mx, mn = x.max(0).values, x.min(0).values
        sat = float(((mx - mn) / mx.clamp_min(1e-8)).mean())  # where mx = 0, mx - mn = 0 too
    return {"saturation": round(sat, 4), "contrast": round(float(x.std()), 4)}


# ---------------------------------------------------------------------- filter grid
def _auto_none(v):
    return None if v == "auto" else v


@register
class FiltersSpec(Spec):
    """Feature visualizations of the first N (or chosen) channels of each layer, as a grid."""

    kind = "filters"
    example = {"first": 2, "steps": 3, "size": 48}
    title = "filter grid (activation maximization of channels)"
    layers: list[str] | None = None  # default: the model's classic layers (conv1_1.., stage0..)
    all_conv: bool = False  # instead of layers: every Conv2d of the model
    channels: list[int] | None = None
    first: int = Field(D.Filters.first, ge=1, le=4096)
    preset: str | None = None
    # None (or 'auto'): per layer, from its receptive field (optvis.filters.layer_plan); an int: that for every layer
    steps: Annotated[Annotated[int, Field(ge=1, le=100000)] | None, BeforeValidator(_auto_none)] = None
    size: Annotated[Side | None, BeforeValidator(_auto_none)] = None
    batch: int = Field(D.Filters.batch, ge=1, le=256, exclude=True)  # speed only: not part of the result's identity
    animate: bool = False  # also store the grid forming as an animated GIF (animation.gif), 24 frames
    # set by normalized(): layer -> the BatchNorm after it whose output its channels are optimized at
    # (cnnvis.layers.channel_points); in the identity only when there is one (a net without BN keeps its keys)
    after_norm: dict[str, str] | None = None

    def normalized(self, vm):
        from cnnvis.layers import channel_points

        layers = chosen_layers(vm, self.layers, self.all_conv)
        if not layers:
            raise CnnvisError(f"model {vm.name!r} has no conv layers; give layers")
        chans = self.channels if self.channels is not None else list(range(self.first))
        dotted = resolve_layers(vm, layers)
        norms = {n: p.norm for n, p in channel_points(vm, dotted).items() if p.norm is not None}
        return self.model_copy(update={"layers": dotted, "channels": chans, "all_conv": False,
                                       "first": len(chans), "after_norm": norms or None,
                                       # None: the filter grid's own recipe (optvis.filters.FILTER_DEFAULTS)
                                       "preset": preset_name(self.preset) if self.preset else None})

    def to_dict(self) -> dict:
        d = super().to_dict()
        if d.get("after_norm") is None:
            d.pop("after_norm", None)
        return d

    def run(self, vm, ctx):
        from cnnvis.optvis.filters import render_filters
        from cnnvis.viz import to_pil
        from cnnvis.viz.filters import filters_grid

        if self.size is not None and self.size < vm.min_size:
            raise CnnvisError(f"size {self.size} is too small for {vm.name}; use at least {vm.min_size}")
        n_frames = 24 if self.animate else None
        rows = render_filters(vm, self.layers, self.channels, preset=self.preset, steps=self.steps, size=self.size,
                              seed=self.seed, batch=self.batch, progress=ctx.bar, log=ctx.log, frames=n_frames)
        labels = [layer_label(vm, r[0]) for r in rows]
        title = f"{vm.name}: {len(rows[0][1])} filters per layer"
        img = filters_grid(vm, rows, row_labels=labels, title=title)
        data = {"layers": [{"layer": lab, "module": r[0], "channels": list(r[1]),
                            "values": [None if v != v else round(float(v), 5) for v in r[3]],
                            "size": r.size, "steps": r.steps, "receptive_field": r.rf, "dead": r.dead,
                            "grey": r.grey, "rendered_again": r.retried, "flat_score": r.flat,
                            "after_norm": r.norm, "dead_at": r.live,
                            "seconds": round(r.seconds, 2)}
                           for lab, r in zip(labels, rows)]}
        data["dead"] = sum(len(r.dead) for r in rows)
        data["grey"] = sum(len(r.grey) for r in rows)
        files = {"grid.png": png_bytes(img)}
        for i, r in enumerate(rows):  # each channel's own image (the web's layer and channel pages show them)
            for ch, im in zip(r[1], r[2]):
                if ch not in r.dead:
                    files[f"tile_{i}_{ch}.png"] = png_bytes(to_pil(im))
        if n_frames:  # every layer at the same share of its steps in each frame
            from cnnvis.optvis.filters import FilterRow
            from cnnvis.viz.animate import Animation

            anim = Animation(max_side=1024)
            for f in range(n_frames):
                part = [FilterRow(r[0], r[1], r.frames[f].float() / 255, r[3],
                                  **{k: v for k, v in r.__dict__.items() if k != "frames"}) for r in rows]
                frame = img if f == n_frames - 1 else filters_grid(vm, part, row_labels=labels, title=title)
                anim.add_image(f + 1, frame)
            files["animation.gif"] = anim.gif()
            data["frames"] = len(anim.frames)
        return data, files, "grid.png"
