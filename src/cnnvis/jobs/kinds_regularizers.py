"""The regularizer study (issue 11 item 8): class images under each classic regularizer, judged by a second net.

    run({"kind": "regularizer_study", "model": "runs/mnist", "judge": "runs/mnist2"})
    -> data["rows"]: [{name, config, judge_mean_prob, judge_agree, n, own_mean_prob, stats}, ...]
       files: panel.png (a row per regularizer, labelled with its numbers), row_NAME.png (the row's
       images side by side at their own size, 8 bit: what the judge read), raw_NAME.npy (float16
       (B, C, H, W): the images before they were clipped to [0, 1] and saved)

Rows: 'none' (plain normalized gradient ascent), each regularizer alone ('decay', 'blur', 'clip',
'tv', 'range'), 'all' of them together, and 'default' (the class image's own recipe, CLASS_PRESET).
The pixel rows share everything else: pixels starting at the model's mean input (its dataset mean:
a digit net's dark background) plus noise, gradient ascent on the class logit with the gradient divided
by its RMS (Chollet 2016), no random transforms, so that a row differs from 'none' by its
regularizer alone. Decay, clipping and the range penalty pull towards that same mean (Yosinski et
al. 2015 work in mean-subtracted pixels). The judge only reads the saved 8-bit rows.
"""

from __future__ import annotations

from pydantic import Field

from cnnvis.errors import CnnvisError
from cnnvis.jobs.kinds import CLASS_PRESET, Side, _class_target, default_judge, load_judge
from cnnvis.jobs.result import npy_bytes, png_bytes
from cnnvis.jobs.spec import Spec, register

ROWS = ("none", "decay", "blur", "clip", "tv", "range", "all", "default")
ALONE = ("decay", "blur", "clip", "tv", "range")
PIXEL_LR = 0.008  # per step, in [0, 1] pixel units (the gradient is RMS-normalized)
INIT_SD = 0.05


def regularizers_for(name: str, center) -> list:
    """Fresh regularizers of pixel row `name` ('none', one of ALONE, or 'all'); `center`: the neutral image."""
    from cnnvis.optvis import regularizers as R

    one = {
        "decay": lambda: [R.L2Decay(0.01, center=center)],  # 1% towards the mean every step
        "blur": lambda: [R.GaussianBlur(0.5, every=4)],
        "clip": lambda: [R.ClipSmallNorm(50, every=4, center=center)],  # the weaker half of the pixels
        "tv": lambda: [R.TotalVariation(50.0)],
        "range": lambda: [R.BoundedRange(0.0, 1.0, alpha=6.0, weight=1.0, center=center)],
    }
    if name == "none":
        return []
    if name == "all":
        return [r for k in ALONE for r in one[k]()]
    return one[name]()


def default_targets(vm) -> list[int]:
    """Every class for a net of at most 10 classes, else 5 spread over the label list."""
    n = vm.num_classes or 1
    return list(range(n)) if n <= 10 else sorted({round(i * n / 5) for i in range(5)})


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


@register
class RegularizerStudySpec(Spec):
    """Class images under each classic regularizer alone, all combined and the default recipe, each row
    judged by a second classifier with the same classes (mean probability, how many it agrees on)."""

    kind = "regularizer_study"
    example = {"judge": "none", "targets": [0, 1], "steps": 4, "regularizers": ["none", "tv", "default"]}
    title = "regularizer comparison of class images, judged by a second net"
    judge: str | None = None  # a second checkpoint with the same classes (required for small nets); 'none' = none
    targets: list[int | str] | None = None  # default: every class (<= 10 classes), else 5 spread over them
    steps: int = Field(128, ge=1, le=100000)
    size: Side | None = None  # default: the model's input size
    regularizers: list[str] | None = None  # rows, a subset of ROWS (default: all, in that order)

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
        rows = list(self.regularizers) if self.regularizers is not None else list(ROWS)
        bad = [r for r in rows if r not in ROWS]
        if bad or not rows or len(set(rows)) != len(rows):
            raise CnnvisError(f"unknown or repeated row {(bad or rows)[0]!r} (--rows, regularizers); use some of "
                              f"{', '.join(ROWS)}, each once")
        targets = self.targets if self.targets is not None else default_targets(vm)
        if not targets:
            raise CnnvisError("targets is empty; give class names or indices, or leave it out for the default")
        return self.model_copy(update={"judge": judge, "regularizers": rows,
                                       "targets": [_class_target(vm, t) for t in targets]})

    def extra_models(self) -> list[str]:
        return [self.judge] if self.judge not in (None, "none") else []

    def run(self, vm, ctx):
        import torch

        from cnnvis.classify import predict_probs
        from cnnvis.optvis import class_logit, render
        from cnnvis.optvis.config import RenderConfig
        from cnnvis.optvis.param import PixelImage
        from cnnvis.optvis.regularizers import GradientRMS
        from cnnvis.optvis.robustness import witness_probs
        from cnnvis.optvis.seeding import image_generators

        judge = load_judge(vm, ctx, self.judge)
        side = self.size if self.size is not None else min(vm.input_shape[1:])
        if side < vm.min_size:
            raise CnnvisError(f"size {side} is too small for {vm.name}; use at least {vm.min_size}")
        targets = [int(t) for t in self.targets]
        b, c = len(targets), vm.input_shape[0]
        center = [float(v) for v in vm.preprocess.mean]
        t_idx = torch.arange(b)
        rows, files, shown = [], {}, []
        for name in self.regularizers:
            obj = class_logit(targets)
            if name == "default":
                cfg = RenderConfig(preset=CLASS_PRESET, steps=self.steps, size=side, seed=self.seed)
                res = render(vm, obj, cfg, progress=ctx.bar, desc=name)
                raw = res.images
                regs_desc = f"preset {CLASS_PRESET} (the class image's recipe, no early stop)"
            else:
                regs = regularizers_for(name, center)
                cfg = RenderConfig(preset="yosinski2015", steps=self.steps, lr=PIXEL_LR, optimizer="sgd",
                                   image="pixel", transforms="none", size=side, seed=self.seed)
                gens = image_generators(self.seed, [f"class:{t}" for t in targets])
                init = PixelImage(b, side, side, channels=c, sd=INIT_SD, generator=gens,
                                  mean=torch.tensor(center).view(1, c, 1, 1))
                res = render(vm, obj, cfg, init=init.to(vm.device), custom_regularizers=[GradientRMS(), *regs],
                             progress=ctx.bar, desc=name)
                raw = res.param.pixels.detach().float().cpu()
                regs_desc = "; ".join(repr(r) for r in regs) or "no regularizer"
            if not res.ok:
                raise CnnvisError(f"row {name!r}: {res.message}")
            png = png_bytes(row_image(res.images))
            x = read_row(png, b)  # what the saved file holds: every number below is of it
            own = predict_probs(vm, x.to(vm.device)).cpu()[t_idx, targets]
            row = {"name": name, "config": summary(name, cfg.resolved(), regs_desc), "n": b,
                   "own_mean_prob": round(float(own.mean()), 6), "own_probs": [round(float(v), 6) for v in own],
                   "judge_mean_prob": None, "judge_agree": None, "judge_probs": None, "judge_top1": None,
                   "stats": image_stats(x, raw, center)}
            if judge is not None:
                jp = witness_probs(judge, x).cpu()
                p = jp[t_idx, targets]
                top1 = jp.argmax(1)
                row.update({"judge_mean_prob": round(float(p.mean()), 6),
                            "judge_agree": int((top1 == torch.as_tensor(targets)).sum()),
                            "judge_probs": [round(float(v), 6) for v in p], "judge_top1": top1.tolist()})
            rows.append(row)
            files[f"row_{name}.png"] = png
            files[f"raw_{name}.npy"] = npy_bytes(raw.half())
            shown.append(x)
        files["panel.png"] = png_bytes(study_panel(vm, rows, shown, targets, judge))
        return ({"targets": targets, "labels": [vm.label(t) for t in targets], "size": side, "steps": self.steps,
                 "judge": judge.name if judge is not None else None, "center": center, "rows": rows},
                files, "panel.png")


def summary(name: str, cfg, regs_desc: str) -> str:
    """One line: how a row was rendered."""
    if name == "default":
        return f"{regs_desc}: {cfg.image} image, {cfg.optimizer} lr {cfg.lr}, transforms {cfg.transforms}, " \
               f"ema {cfg.ema}, {cfg.steps} steps"
    return f"pixels from the mean + noise {INIT_SD}, sgd lr {cfg.lr} on the RMS-normalized gradient, no transforms, " \
           f"{cfg.steps} steps; {regs_desc}"


def study_panel(vm, rows: list[dict], images: list, targets: list[int], judge):
    """A row of images per regularizer (nearest-neighbour upscaled), labelled with the judge's numbers."""
    from cnnvis.viz import grid, to_pil
    from cnnvis.viz.tiles import grey_to_rgb, upscale

    side = images[0].shape[-1]
    f = max(1, 72 // side)
    cells = [[to_pil(grey_to_rgb(upscale(im, f))) for im in x] for x in images]
    labels = []
    for r in rows:
        j = f"judge {r['judge_mean_prob']:.3f} ({r['judge_agree']}/{r['n']})" if r["judge_mean_prob"] is not None \
            else "no judge"
        labels.append(f"{r['name']}: {j}, own {r['own_mean_prob']:.3f}")
    title = f"{vm.name}: class images per regularizer" + (f", judged by {judge.name}" if judge is not None else "")
    return grid(cells, row_labels=labels, col_labels=[vm.label(t) for t in targets], cell=side * f, title=title)
