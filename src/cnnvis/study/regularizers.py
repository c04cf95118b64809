"""The regularizer study's rows and their computation (issue 11 item 8); torch-free at import.

    row_names()                    -> ('none', 'decay', 'blur', 'clip', 'tv', 'range', 'all', 'default')
    regularizers_for('tv', center) -> [TotalVariation(50.0)]   (fresh objects)
    r = render_row(vm, 'tv', [0, 1], steps=128, side=28, seed=0, center=[0.13], default_preset='witness')
    r.images, r.raw, r.config      # (B, C, H, W) in [0, 1]; before clipping; one line: how it was made

Rows: 'none' (plain normalized gradient ascent), each registered regularizer alone, 'all' of them
together, and 'default' (a class-image preset, `default_preset`). A new row is one function:

    @register_row("jitter", doc="...")
    def _jitter(center): return [MyRegularizer(...)]

The pixel rows share everything else: pixels starting at the model's mean input (`center`: its
dataset mean, a digit net's dark background) plus noise, gradient ascent on the class logit with the
gradient divided by its RMS (Chollet 2016), no random transforms, so that a row differs from 'none'
by its regularizer alone. Decay, clipping and the range penalty pull towards that same mean (Yosinski
et al. 2015 work in mean-subtracted pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from cnnvis.errors import CnnvisError
from cnnvis.progress import Progress

PIXEL_LR = 0.008  # per step, in [0, 1] pixel units (the gradient is RMS-normalized)
INIT_SD = 0.05


@dataclass(frozen=True)
class RowEntry:
    """A registered row: `make(center) -> list[Regularizer]` (fresh objects each call), a short doc and how the
    report's captions name it ('': its name)."""

    name: str
    make: Callable[[list[float]], list]
    doc: str
    caption: str = ""


_ROWS: dict[str, RowEntry] = {}  # registration order = the rows' order
_FIXED = ("none", "all", "default")


def register_row(name: str, *, doc: str, caption: str = "") -> Callable:
    """Decorator: register `make(center) -> list[Regularizer]` as the row `name` (after the earlier ones);
    `caption`: its words in the report's captions (default: `name`)."""

    def deco(make):
        if name in _ROWS or name in _FIXED:
            raise ValueError(f"regularizer row {name!r} is registered already")
        _ROWS[name] = RowEntry(name, make, doc, caption)
        return make

    return deco


def unregister_row(name: str) -> None:
    """Remove a registered row (tests)."""
    del _ROWS[name]


def alone_rows() -> tuple[str, ...]:
    """The registered rows (each regularizer alone), in order."""
    return tuple(_ROWS)


def row_names() -> tuple[str, ...]:
    """Every row in order: 'none', the registered ones, 'all', 'default'."""
    return ("none", *_ROWS, "all", "default")


def row_caption(name: str) -> str:
    """How the report's captions name a registered row ('clipping of weak pixels')."""
    return _ROWS[name].caption or name


def row_doc(name: str) -> str:
    """One line: what the row adds to plain ascent."""
    fixed = {"none": "no regularizer (plain normalized gradient ascent)", "all": "every registered row together",
             "default": "the class image's own recipe (a preset)"}
    return fixed[name] if name in fixed else _ROWS[name].doc


@register_row("decay", doc="L2 decay: 1% towards the mean every step")
def _decay(center) -> list:
    from cnnvis.optvis import regularizers as R

    return [R.L2Decay(0.01, center=center)]


@register_row("blur", doc="a Gaussian blur (sigma 0.5) every 4 steps")
def _blur(center) -> list:
    from cnnvis.optvis import regularizers as R

    return [R.GaussianBlur(0.5, every=4)]


@register_row("clip", doc="the weaker half of the pixels set to the mean every 4 steps",
              caption="clipping of weak pixels")
def _clip(center) -> list:
    from cnnvis.optvis import regularizers as R

    return [R.ClipSmallNorm(50, every=4, center=center)]


@register_row("tv", doc="a total variation penalty (weight 50)", caption="total variation")
def _tv(center) -> list:
    from cnnvis.optvis import regularizers as R

    return [R.TotalVariation(50.0)]


@register_row("range", doc="a penalty on values outside [0, 1]", caption="bounded range")
def _range(center) -> list:
    from cnnvis.optvis import regularizers as R

    return [R.BoundedRange(0.0, 1.0, alpha=6.0, weight=1.0, center=center)]


def regularizers_for(name: str, center) -> list:
    """Fresh regularizers of pixel row `name` ('none', a registered row, or 'all'); `center`: the neutral image."""
    if name == "none":
        return []
    if name == "all":
        return [r for k in _ROWS for r in _ROWS[k].make(center)]
    return _ROWS[name].make(center)


def default_targets(vm) -> list[int]:
    """Every class for a net of at most 10 classes, else 5 spread over the label list."""
    n = vm.num_classes or 1
    return list(range(n)) if n <= 10 else sorted({round(i * n / 5) for i in range(5)})


class RowImages(NamedTuple):
    """A rendered row: images (B, C, H, W) in [0, 1] on the CPU (before the 8-bit file), raw (B, C, H, W)
    float before they were clipped to [0, 1], config: one line saying how the row was rendered."""

    images: Any
    raw: Any
    config: str


def render_row(vm, name: str, targets: list[int], *, steps: int, side: int, seed: int, center: list[float],
               default_preset: str, progress: Progress = None) -> RowImages:
    """The class images of `targets` (one per class) under row `name`; 'default' renders the preset
    `default_preset`, every other row plain pixels with its regularizers (see the module doc).
    A render that went non-finite is a CnnvisError naming the row."""
    import torch

    from cnnvis.optvis import class_logit, render
    from cnnvis.optvis.config import RenderConfig
    from cnnvis.optvis.param import PixelImage
    from cnnvis.optvis.regularizers import GradientRMS
    from cnnvis.optvis.seeding import image_generators

    b, c = len(targets), vm.input_shape[0]
    obj = class_logit(targets)
    if name == "default":
        cfg = RenderConfig(preset=default_preset, steps=steps, size=side, seed=seed)
        res = render(vm, obj, cfg, progress=progress, desc=name)
        raw = res.images
        regs_desc = f"preset {default_preset} (the class image's recipe, no early stop)"
    else:
        regs = regularizers_for(name, center)
        cfg = RenderConfig(preset="yosinski2015", steps=steps, lr=PIXEL_LR, optimizer="sgd",
                           image="pixel", transforms="none", size=side, seed=seed)
        gens = image_generators(seed, [f"class:{t}" for t in targets])
        init = PixelImage(b, side, side, channels=c, sd=INIT_SD, generator=gens,
                          mean=torch.tensor(center).view(1, c, 1, 1))
        res = render(vm, obj, cfg, init=init.to(vm.device), custom_regularizers=[GradientRMS(), *regs],
                     progress=progress, desc=name)
        raw = res.param.pixels.detach().float().cpu()
        regs_desc = "; ".join(repr(r) for r in regs) or "no regularizer"
    if not res.ok:
        raise CnnvisError(f"row {name!r}: {res.message}")
    return RowImages(res.images, raw, summary(name, cfg.resolved(), regs_desc))


def row_numbers(vm, judge, x, raw, targets: list[int], center) -> dict:
    """What the model (`own_*`) and the judge (`judge_*`; None without one) say of the row's images as saved,
    x (B, C, H, W) in [0, 1] (read back from the 8-bit file), and `image_stats` of them:
    {n, own_mean_prob, own_probs, judge_mean_prob, judge_agree, judge_probs, judge_top1, stats}."""
    import torch

    from cnnvis.classify import predict_probs
    from cnnvis.optvis.robustness import witness_probs

    b = len(targets)
    t_idx = torch.arange(b)
    own = predict_probs(vm, x.to(vm.device)).cpu()[t_idx, targets]
    row = {"n": b, "own_mean_prob": round(float(own.mean()), 6), "own_probs": [round(float(v), 6) for v in own],
           "judge_mean_prob": None, "judge_agree": None, "judge_probs": None, "judge_top1": None,
           "stats": image_stats(x, raw, center)}
    if judge is not None:
        jp = witness_probs(judge, x).cpu()
        p = jp[t_idx, targets]
        top1 = jp.argmax(1)
        row.update({"judge_mean_prob": round(float(p.mean()), 6),
                    "judge_agree": int((top1 == torch.as_tensor(targets)).sum()),
                    "judge_probs": [round(float(v), 6) for v in p], "judge_top1": top1.tolist()})
    return row


def image_stats(x, raw, center) -> dict:
    """What each regularizer acts on, measured on the saved 8-bit images x (B, C, H, W) in [0, 1] and the
    raw ones: total variation (tv), mean squared distance from the centre (l2), high-frequency energy (hf:
    mean squared difference from a 1-px Gaussian blur), share of pixels exactly at the centre's 8-bit value
    (background), share of raw values outside [0, 1] (out_of_range)."""
    import torch

    from cnnvis.optvis.regularizers import _center, gaussian_blur, total_variation

    c = _center(center, x)
    c8 = torch.round(torch.as_tensor(c) * 255) / 255
    bg = (x - c8).abs() < 0.5 / 255
    return {"tv": round(float(total_variation(x).mean()), 6), "l2": round(float((x - c).pow(2).mean()), 6),
            "hf": round(float((x - gaussian_blur(x, 1.0)).pow(2).mean()), 6),
            "background": round(float(bg.all(1).float().mean()), 4),
            "out_of_range": round(float(((raw < 0) | (raw > 1)).float().mean()), 4)}


def row_image(x):
    """(B, C, H, W) -> (C, H, B*W): the images side by side, no gaps (a saved row re-reads exactly)."""
    b, c, h, w = x.shape
    return x.permute(1, 2, 0, 3).reshape(c, h, b * w)


def read_row(png: bytes, n: int):
    """A row_NAME.png's bytes -> (n, C, H, W) in [0, 1] (the images as the judge read them)."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32) / 255
    t = torch.from_numpy(a if a.ndim == 3 else a[:, :, None]).permute(2, 0, 1)
    c, h, bw = t.shape
    return t.view(c, h, n, bw // n).permute(2, 0, 1, 3).contiguous()


def summary(name: str, cfg, regs_desc: str) -> str:
    """One line: how a row was rendered (cfg: its resolved RenderConfig)."""
    if name == "default":
        return f"{regs_desc}: {cfg.image} image, {cfg.optimizer} lr {cfg.lr}, transforms {cfg.transforms}, " \
               f"ema {cfg.ema}, {cfg.steps} steps"
    return f"pixels from the mean + noise {INIT_SD}, sgd lr {cfg.lr} on the RMS-normalized gradient, no transforms, " \
           f"{cfg.steps} steps; {regs_desc}"
