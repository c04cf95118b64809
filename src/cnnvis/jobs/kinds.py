"""The registered job kinds: one spec class per capability, each with its `run(vm, ctx)`.

Every kind returns (data, files, main): JSON-able numbers, encoded files (PNG/NPY) and the
name of the file that shows the result. Pictures come from `cnnvis.viz`; compute from the
method modules. The faces (CLI, report, web, Ray) build specs and call `jobs.run`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from cnnvis.errors import CnnvisError
from cnnvis.jobs.result import npy_bytes, png_bytes
from cnnvis.jobs.spec import Spec, register

# Pixels a side of any image a job puts through the network (photo inputs, renders, dream tiles).
# Measured: the activations one image keeps for the backward pass take 6.5 GiB (efficientnet_lite0)
# to 13 GiB (VGG16) at 2048 px, 26-52 GiB at 4096 px; larger sizes are refused up front.
MAX_SIDE = 2048


def _side(v: int | None, info: ValidationInfo) -> int | None:
    if v is not None and v > MAX_SIDE:
        raise PydanticCustomError(
            "too_large", "{value} pixels is too large: the limit is {limit} pixels a side (larger images need "
            "tens of GB of memory); give field '{field}' of at most {limit}",
            {"value": v, "limit": MAX_SIDE, "field": info.field_name})
    return v


Side = Annotated[int, Field(ge=8, json_schema_extra={"maximum": MAX_SIDE}), AfterValidator(_side)]  # 8..MAX_SIDE px


def load_input(ref: str):
    """'path/to/photo.jpg' or 'sample:NAME' (scikit-image's photos) -> PIL image (RGB)."""
    from cnnvis.images import load_image, sample_photo

    if ref.startswith("sample:"):
        return sample_photo(ref.split(":", 1)[1])
    return load_image(ref)


def prepare(vm, ref: str, size: int | None):
    """Photo ref -> (1, C, H, W) in [0, 1] on the model's device, resized/cropped as the model expects."""
    if size is not None and size < vm.min_size:
        raise CnnvisError(f"size {size} is too small for {vm.name}; use at least {vm.min_size}")
    return vm.preprocess.prepare(load_input(ref), size=size).to(vm.device)


def preset_name(preset: str | None) -> str:
    """None -> the default preset's name; an unknown name lists the presets."""
    from cnnvis.optvis.config import DEFAULT_PRESET, get_preset

    return get_preset(preset or DEFAULT_PRESET).preset


def _target_and_layer(vm, target, layer) -> dict:
    """Spec updates for a class target (-> index) and an optional layer (-> dotted name)."""
    upd = {"target": _class_target(vm, target)}
    if layer is not None:
        upd["layer"] = _resolve_layers(vm, [layer])[0]
    return upd


def _chosen_layers(vm, layers, all_conv: bool) -> list[str]:
    """`layers` as given, every Conv2d (all_conv) or the model's default layers."""
    from cnnvis.layers import conv_layers, default_layers

    if all_conv and layers is not None:
        raise CnnvisError("give layers or all_conv, not both")
    return conv_layers(vm) if all_conv else layers if layers is not None else default_layers(vm)


def _layer_label(vm, dotted: str) -> str:
    for a, n in vm.aliases.items():
        if n == dotted:
            return a
    return dotted


def _resolve_layers(vm, layers):
    from cnnvis.layers import resolve_layer

    return [resolve_layer(vm, n) for n in layers] if layers is not None else None


def _class_target(vm, target):
    """Class name / index / None -> index or None; CnnvisError for a non-classifier given a class."""
    if target is None:
        return None
    if vm.task != "classification":
        raise CnnvisError(f"model {vm.name!r} is not a classifier ({vm.task}); give no target")
    t = target.strip() if isinstance(target, str) else target
    if isinstance(t, str) and t.lstrip("-").isdigit():
        t = int(t)
    return vm.class_index(t)


class _PhotoSpec(Spec):
    image: str  # a path, or 'sample:chelsea' for scikit-image's photos
    size: Side | None = None  # input size in pixels (default: the model's)

    def inputs(self) -> list[str]:
        return [self.image]


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


# ---------------------------------------------------------------------- class image
@register
class ClassImageSpec(Spec):
    """An image the model sees as `target`, re-checked from its 8-bit PNG, under four perturbations
    and by a second classifier (the judge: a witness, never a gradient)."""

    kind = "class_image"
    example = {"target": 1, "steps": 4, "min_steps": 0, "size": 64, "judge": "none"}
    title = "class image (activation maximization of a class logit)"
    target: int | str
    preset: str | None = None  # default: CLASS_PRESET
    steps: int = Field(320, ge=1, le=100000)
    size: Side | None = None  # default: the model's input side, at most CLASS_SIDE (MNIST 28, CIFAR 32, ImageNet 224)
    until_prob: float = Field(0.99, ge=0, le=1)
    robust_prob: float = Field(0.95, ge=0, le=1)
    min_steps: int = Field(192, ge=0, le=100000)
    judge: str | None = None  # a second classifier with the same labels; None = default_judge(model); 'none' = none
    judge_prob: float = Field(0.97, ge=0, le=1)  # stop only once the judge gives the 8-bit file this (0 = don't)
    animate: bool = False  # also store the optimization as an animated GIF (animation.gif)
    # what is maximized: 'logit' (pre-softmax, Lucid's choice: the most natural images) or 'logprob'
    # (log-softmax: rival classes pushed down too; greyer images, yet a way out when a class's logit also
    # raises a rival's, as an MNIST net's 9 did its 7)
    objective: Literal["logit", "logprob"] = "logit"

    def normalized(self, vm):
        judge = self.judge if self.judge is not None else default_judge(vm)
        if judge != "none" and judge == self.model and self.weights is None:
            raise CnnvisError(f"the judge must be a second model, not {self.model!r} itself: its own view is what the "
                              "render optimized; give another classifier with the same labels, or --judge none")
        size = self.size if self.size is not None else min(CLASS_SIDE, *vm.input_shape[1:])
        return self.model_copy(update={"target": _class_target(vm, self.target), "size": size,
                                       "preset": preset_name(self.preset or CLASS_PRESET), "judge": judge})

    def extra_models(self) -> list[str]:
        return [self.judge] if self.judge not in (None, "none") else []

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
        t = int(self.target)
        stop = None
        if self.until_prob:
            stop = UntilProb(self.until_prob, robust=self.robust_prob or None, min_steps=self.min_steps,
                             judge=self.judge if judge is not None and self.judge_prob else None,
                             judge_prob=self.judge_prob if judge is not None and self.judge_prob else None)
        cfg = RenderConfig(preset=self.preset, steps=self.steps, size=self.size, seed=self.seed, stop=stop)
        anim = Animation(every=frame_every(self.steps)) if self.animate else None
        obj = class_logprob(t) if self.objective == "logprob" else class_logit(t)
        res = render(vm, obj, cfg, progress=ctx.bar, desc=f"class {vm.label(t)}",
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


CLASS_PRESET = "witness"  # the class image's default recipe (see optvis.presets)
CLASS_SIDE = 224  # the largest default class image side (a net made for 28-px digits gets 28-px images)


def load_judge(vm, ctx, name: str | None):
    """The judge model `name` (None/'none': no judge), as the runner loaded it (ctx.models) or loaded
    here; checked against `vm` (a classifier of the same classes, not `vm` itself)."""
    from cnnvis.optvis.robustness import check_judge

    if name in (None, "none"):
        return None
    judge = ctx.models.get(name)
    if judge is None:  # run outside the runner
        from cnnvis.models import load

        judge = load(name, device=vm.device)
    check_judge(vm, judge)
    return judge


def default_judge(vm) -> str:
    """The witness of a model's class images: the other embedded EfficientNet-Lite for an ImageNet
    classifier (lite1 for lite0, else lite0); 'none' for other label sets."""
    from cnnvis.models.labels import imagenet_labels

    if vm.task != "classification":
        return "none"
    if vm.name == "efficientnet_lite0":
        return "efficientnet_lite1"
    if vm.labels is not None and list(vm.labels) == list(imagenet_labels()):
        return "efficientnet_lite0"
    return "none"


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
    first: int = Field(10, ge=1, le=4096)
    preset: str | None = None
    # None (or 'auto'): per layer, from its receptive field (optvis.filters.layer_plan); an int: that for every layer
    steps: Annotated[Annotated[int, Field(ge=1, le=100000)] | None, BeforeValidator(_auto_none)] = None
    size: Annotated[Side | None, BeforeValidator(_auto_none)] = None
    batch: int = Field(16, ge=1, le=256, exclude=True)  # speed only: not part of the result's identity
    animate: bool = False  # also store the grid forming as an animated GIF (animation.gif), 24 frames
    # set by normalized(): layer -> the BatchNorm after it whose output its channels are optimized at
    # (cnnvis.layers.channel_points); in the identity only when there is one (a net without BN keeps its keys)
    after_norm: dict[str, str] | None = None

    def normalized(self, vm):
        from cnnvis.layers import channel_points

        layers = _chosen_layers(vm, self.layers, self.all_conv)
        if not layers:
            raise CnnvisError(f"model {vm.name!r} has no conv layers; give layers")
        chans = self.channels if self.channels is not None else list(range(self.first))
        dotted = _resolve_layers(vm, layers)
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
        from cnnvis.optvis.filters import filters_grid, layer_log, render_filters
        from cnnvis.viz import to_pil

        if self.size is not None and self.size < vm.min_size:
            raise CnnvisError(f"size {self.size} is too small for {vm.name}; use at least {vm.min_size}")
        n_frames = 24 if self.animate else None
        rows = render_filters(vm, self.layers, self.channels, preset=self.preset, steps=self.steps, size=self.size,
                              seed=self.seed, batch=self.batch, progress=ctx.bar, log=layer_log(ctx), frames=n_frames)
        labels = [_layer_label(vm, r[0]) for r in rows]
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


# ---------------------------------------------------------------------- DeepDream
@register
class DreamSpec(_PhotoSpec):
    """DeepDream of a photo at some layers (output: the photo's size, or `max_side`)."""

    kind = "dream"
    example = {"image": "sample:chelsea", "octaves": 1, "steps": 2, "max_side": 64}
    title = "DeepDream"
    layers: list[str] | None = None  # default: one layer about two thirds deep
    channels: list[int] | None = None
    octaves: int = Field(4, ge=1, le=12)
    octave_scale: float = Field(1.4, ge=1.01, le=4)
    steps: int = Field(10, ge=1, le=10000)  # per octave
    step_size: float = Field(0.02, gt=0, le=1)
    jitter: int = Field(32, ge=0, le=512)
    tile: Annotated[Side, Field(ge=32)] = 512
    objective: Literal["l2", "mean"] = "l2"
    guide: str | None = None
    max_side: int | None = Field(None, ge=8, le=100000)  # shrink the photo first so its longest side is this
    animate: bool = False  # also store the optimization as an animated GIF (animation.gif), a frame per step

    def inputs(self) -> list[str]:
        return [self.image] + ([self.guide] if self.guide else [])

    def normalized(self, vm):
        from cnnvis.layers import dream_layers

        layers = self.layers if self.layers is not None else dream_layers(vm, 1)
        return self.model_copy(update={"layers": _resolve_layers(vm, layers)})

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
        return ({"size": [out.shape[-1], out.shape[-2]], "layers": [_layer_label(vm, n) for n in self.layers],
                 "frames": len(anim.frames) if anim is not None else 0}, files, "dream.png")


# ---------------------------------------------------------------------- attribution
def _attribution_methods() -> list[str]:
    from cnnvis.attribution import list_methods

    return list_methods()


def _with_seed(method: str, options: dict, seed: int) -> dict:
    """Pass the spec's seed to methods that draw random numbers (`seeded`: SmoothGrad, VarGrad, ...)."""
    from cnnvis.attribution import method_class

    if method_class(method).seeded and "seed" not in options:
        return {**options, "seed": seed}
    return dict(options)


@register
class AttributionSpec(_PhotoSpec):
    """An attribution map (saliency, IG, Grad-CAM, ...) of a photo for a class or a layer's activation."""

    kind = "attribution"
    example = {"image": "sample:chelsea", "method": "gradcam"}
    title = "attribution map"
    method: str = "saliency"
    target: int | str | None = None  # class (default: top-1); or use layer/channel/unit
    layer: str | None = None  # CAM methods: the layer the map is computed at; others: explain this activation
    channel: int | None = None
    unit: tuple[int, int] | None = None
    options: dict[str, float | int | str | bool | None] = Field(default_factory=dict)  # method options (steps, ...)
    # under the panel (and in the JSON) of a method whose picture needs a word
    CAPTIONS: ClassVar[dict[str, str]] = {
        "deconvnet": "deconvnet = the pure Zeiler & Fergus rule (the ReLU of the signal, the forward mask ignored): "
                     "through strided convolutions (EfficientNet) or deep VGG layers it spreads the signal into a "
                     "regular checkerboard, not the photo. Method 'guided' adds the forward mask and keeps the "
                     "photo's structure."}

    @field_validator("method")
    @classmethod
    def _known(cls, v):
        methods = _attribution_methods()
        if v not in methods:
            raise ValueError(f"unknown method {v!r}; one of {', '.join(methods)}")
        return v

    def normalized(self, vm):
        from cnnvis.attribution import method_class

        cls = method_class(self.method)
        cam, explains_activation = cls.takes_layer, "activation" in cls.inputs
        if (self.channel is not None or self.unit is not None) and (self.layer is None or not explains_activation):
            raise CnnvisError("channel/unit need a layer, with a method that is not a CAM method")
        if not cam and self.layer is not None and self.target is not None:
            raise CnnvisError("give either a target (a class) or a layer (an activation), not both")
        return self.model_copy(update=_target_and_layer(vm, self.target, self.layer))

    def run(self, vm, ctx):
        from cnnvis.attribution import LayerTarget, method as make, method_class
        from cnnvis.viz import attribution_panel

        x = prepare(vm, self.image, self.size)
        cls = method_class(self.method)
        cam = cls.takes_layer
        opts = _with_seed(self.method, self.options, self.seed)
        if cam:
            opts["layer"] = self.layer
        info: dict = {"method": self.method}
        if not cam and self.layer is not None:
            tgt = LayerTarget(self.layer, self.channel, self.unit)
            lab = _layer_label(vm, self.layer)
            title = f"{vm.name}: {lab}" + (f" channel {self.channel}" if self.channel is not None else "") + \
                (f" unit {self.unit}" if self.unit else "")
            info.update({"layer": lab, "channel": self.channel, "unit": self.unit})
        else:
            tgt, (title, more) = self.target, describe(vm, x, self.target)
            info.update(more)
            if tgt is None and vm.task == "classification":
                tgt = more["target"]
        m = make(self.method, vm, **opts)
        if cls.returns_delta:
            a, delta = m.attribute(x, tgt, return_delta=True)
            info[f"{cls.name}_completeness_delta"] = float(delta[0])
        else:
            a = m.attribute(x, tgt)
        heat = a.abs().amax(1)[0] if a.shape[1] > 1 else a[0, 0]
        if cam:
            info["layer"] = getattr(m, "layer", None)
        caption = self.CAPTIONS.get(self.method, "")
        if caption:
            info["caption"] = caption
        files = {"panel.png": png_bytes(attribution_panel(x, heat, f"{self.method}: {title}", caption=caption)),
                 "map.npy": npy_bytes(heat.float()), "attribution.npy": npy_bytes(a[0].float()),
                 "input.png": png_bytes(x[0])}
        return info, files, "panel.png"


def describe(vm, x, target) -> tuple[str, dict]:
    """Title text and JSON info: which class a map explains, with its probability."""
    if vm.task != "classification":
        return f"{vm.name}: sum of the {vm.task} output", {"target": None}
    from cnnvis.classify import predict_probs

    probs = predict_probs(vm, x)[0]
    idx = int(probs.argmax()) if target is None else int(target)
    return (f"{vm.label(idx)} ({idx}), p={float(probs[idx]):.3f}",
            {"target": idx, "label": vm.label(idx), "prob": round(float(probs[idx]), 6), "top1": int(probs.argmax())})


# ---------------------------------------------------------------------- deconvnet
@register
class DeconvSpec(_PhotoSpec):
    """Zeiler & Fergus deconvnet: the top channels of each layer projected back to pixels.

    Default: the masked rule (Z&F + the forward ReLU mask), each top channel seeded with every unit
    where it fired ('sum'), drawn full size with its strongest unit's box, beside Z&F Fig. 2's
    pair (the photo patch in that box and the strongest unit's own projection there, one sweep).
    rule 'zf' is the pure rule; project 'max' the Fig. 2 pairs alone, 'map' the rectified map."""

    kind = "deconv"
    example = {"image": "sample:chelsea", "top": 1}
    title = "deconvnet (Zeiler & Fergus)"
    layers: list[str] | None = None  # default: the model's classic layers
    all_conv: bool = False  # instead of layers: every Conv2d
    top: int = Field(3, ge=1, le=64)
    # every unit where the channel fired (1 each), its strongest unit (Z&F Fig. 2), or its rectified map
    project: Literal["sum", "max", "map"] = "sum"
    rule: Literal["masked", "zf"] = "masked"  # Z&F + the forward ReLU mask (guided backprop), or pure Z&F

    def normalized(self, vm):
        layers = _chosen_layers(vm, self.layers, self.all_conv)
        return self.model_copy(update={"layers": [_layer_label(vm, n) for n in _resolve_layers(vm, layers)],
                                       "all_conv": False})

    def run(self, vm, ctx):
        from cnnvis.deconv import deconvnet
        from cnnvis.study.receptive import receptive_field
        from cnnvis.viz import deconv_panel
        from cnnvis.viz.panels import crop_pairs

        x = prepare(vm, self.image, self.size)
        res = deconvnet(vm, x, self.layers, self.top, seed=self.project, rule=self.rule, also_units=True)
        hw = tuple(x.shape[-2:])
        fields, boxes = [], []
        for n, units in zip(res.layers, res.units):
            try:  # the field of each channel's strongest unit, in input pixels
                rf = receptive_field(vm, n, hw)
                fields.append(round(rf.size, 2))
                boxes.append([list(rf.box(int(y), int(xx), hw)) for y, xx in units.tolist()])
            except CnnvisError:  # no fixed field (after an adaptive pool): the whole photo
                fields.append(None)
                boxes.append(None)
        img = deconv_panel(x, res, boxes, title=f"{vm.name} deconvnet", captions=res.notes)
        crops = [[list(c) for c, _, _ in row] for row in crop_pairs(x, res, boxes)]
        data = {"max_pools": res.max_pools, "notes": res.notes, "engine": res.engine, "rule": res.rule,
                "rule_text": res.rule_text, "project": res.seed, "seed_text": res.seed_text,
                "layers": [{"layer": lab, "module": n, "channels": c.tolist(), "norms": [round(float(v), 4) for v in k],
                            "units": u.tolist(), "field": f, "boxes": b, "crops": cr}
                           for lab, n, c, k, u, f, b, cr in zip(res.labels, res.layers, res.channels, res.norms,
                                                                res.units, fields, boxes, crops)]}
        return data, {"panel.png": png_bytes(img)}, "panel.png"


# ---------------------------------------------------------------------- sanity check
@register
class SanitySpec(_PhotoSpec):
    """Adebayo et al. cascading randomization: how much each method's map depends on the weights."""

    kind = "sanity"
    example = {"image": "sample:chelsea", "max_steps": 2}
    title = "sanity check (cascading randomization)"
    methods: list[str] = Field(default_factory=lambda: ["saliency"], min_length=1)
    target: int | str | None = None
    layer: str | None = None  # CAM methods' layer
    max_steps: int = Field(16, ge=1, le=1000)
    options: dict[str, float | int | str | bool | None] = Field(default_factory=dict)

    @field_validator("methods")
    @classmethod
    def _known(cls, v):
        methods = _attribution_methods()
        bad = [m for m in v if m not in methods]
        if bad:
            raise ValueError(f"unknown method {bad[0]!r}; one of {', '.join(methods)}")
        return v

    def normalized(self, vm):
        return self.model_copy(update=_target_and_layer(vm, self.target, self.layer))

    def run(self, vm, ctx):
        from cnnvis.attribution import method_class
        from cnnvis.sanity import sanity_check
        from cnnvis.viz import colormap, curve, grid, stack, to_pil

        x = prepare(vm, self.image, self.size)
        results = []
        for n in self.methods:
            opts = dict(self.options)
            if method_class(n).takes_layer:
                opts["layer"] = self.layer
            results.append(sanity_check(vm, x, n, self.target, max_steps=self.max_steps, seed=self.seed,
                                        progress=ctx.bar, **opts))
        steps = results[0].steps
        img = curve(steps, {r.method: r.spearman for r in results})
        rows = [[to_pil(x)] + [colormap(m) for m in r.maps] for r in results]
        strip = grid(rows, row_labels=[r.method for r in results], col_labels=["photo"] + [s[:10] for s in steps],
                     cell=72)
        data = {"target": results[0].target, "steps": steps,
                "spearman": {r.method: [round(v, 4) for v in r.spearman] for r in results}}
        files = {"panel.png": png_bytes(stack([img, strip])), "curve.png": png_bytes(img)}
        return data, files, "panel.png"
