"""The activation-maximization loop.

    res = render(vm, class_logit("pelican"), until_prob=0.99)       # default preset
    res.images            # (B, 3, H, W) in [0, 1], CPU
    res.probs, res.top5   # target probability and top-5 of the 8-bit image (class objectives)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cnnvis.errors import CnnvisError
from cnnvis.models.registry import as_vismodel  # the one adapter; re-exported for old callers
from cnnvis.optvis.objectives import LOGITS, Objective, as_objective
from cnnvis.optvis.param import ImageParam, make_param
from cnnvis.optvis.presets import Preset, get_preset
from cnnvis.optvis.regularizers import Regularizer
from cnnvis.optvis.tiling import tiled_backward
from cnnvis.utils import Progress, model_guard, progress_iter


@dataclass
class RenderResult:
    """What a render returns. All tensors are detached and on the CPU.

    images: (B, 3, H, W) in [0, 1]; values: (steps, B) objective value per step and image
    (without penalties); steps: steps run; stopped: None (ran all steps), 'until_prob' or
    'non-finite'; message: a sentence for the user when stopped; targets/probs/top5: for
    class objectives, the class per image, its softmax probability on the 8-bit image, top-5.
    """

    images: Tensor
    values: Tensor
    steps: int
    stopped: str | None = None
    message: str = ""
    targets: list[int] | None = None
    probs: Tensor | None = None
    top5: list | None = None
    seconds: float = 0.0
    param: ImageParam | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.stopped != "non-finite"

    @property
    def final_values(self) -> Tensor:
        """(B,) objective value of the last step run."""
        return self.values[-1] if len(self.values) else torch.zeros(self.images.shape[0])


def quantize(x: Tensor) -> Tensor:
    """[0, 1] image -> the same values an 8-bit PNG stores (round to 1/255)."""
    return (x.clamp(0, 1) * 255).round() / 255


def _sizes(size, octaves: int, scale: float, min_size: int) -> list[tuple[int, int]]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    out = []
    for i in range(octaves):
        f = scale ** (octaves - 1 - i)
        out.append((max(min_size, round(h / f)), max(min_size, round(w / f))))
    return out


def render(
    model,
    objective,
    *,
    preset: str | Preset | None = None,
    param: ImageParam | None = None,
    size: int | tuple[int, int] = 224,
    batch: int | None = None,
    steps: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    transforms: Callable | None | str = "preset",
    regularizers: Sequence[Regularizer] | None = None,
    copies: int | None = None,
    octaves: int | None = None,
    until_prob: float | None = None,
    until_robust: float | None = None,
    min_steps: int = 0,
    check_every: int = 16,
    seed: int = 0,
    generator: torch.Generator | None = None,
    progress: Progress = None,
    desc: str = "render",
    tile: int | None = None,
) -> RenderResult:
    """Optimize an image so that `objective` is maximal; the model comes back unchanged.

    model: a VisModel (images are normalized by its preprocessing) or any nn.Module (fed the
      [0, 1] image as is). Its parameters never get gradients; flags and hooks are restored,
      also when this raises.
    objective: an Objective (see optvis.objectives) or 'layer:channel'. Only the layers it reads
      are hooked, and the forward pass stops after the deepest one unless it reads 'logits'.
    preset: 'robust' (default), 'lucid2017', 'yosinski2015', 'chollet2016' or a Preset; the
      keyword arguments below override its fields.
    param: a parameterization to optimize in place of a new one, e.g. PixelImage.from_image(photo)
      (DeepDream: any B x 3 x H x W; `size` and `batch` then come from it). Otherwise a new
      preset.param image of (batch, 3, size, size) is made from the generator.
    transforms: a callable (x, generator) -> x applied to the image before each forward
      (see optvis.transforms; None = no transforms; default: the preset's).
    regularizers: list of optvis.regularizers objects (default: the preset's).
    copies: transformed copies of each image per step, objective averaged (expectation over
      transformations). octaves: n sizes from size/1.4**(n-1) up to size, steps split evenly.
    until_prob: for class objectives, stop once every image's target probability on its 8-bit
      version reaches this (checked every `check_every` steps).
    tile: images larger than `tile` pixels get their objective gradient tile by tile (memory: one
      tile's activations; see optvis.tiling). The objective should be a spatial mean (DeepDream).
    A non-finite objective or image stops the render and keeps the last finite image
    (stopped='non-finite', message says so). seed/generator: all randomness (initial image,
    transforms) comes from this CPU generator: same seed, same machine -> same image.
    """
    t0 = time.perf_counter()
    vm = as_vismodel(model)
    pre = get_preset(preset)
    objective = as_objective(objective)
    steps = pre.steps if steps is None else steps
    lr = pre.lr if lr is None else lr
    optimizer = optimizer or pre.optimizer
    copies = pre.copies if copies is None else copies
    octaves = pre.octaves if octaves is None else octaves
    tf = pre.transforms() if isinstance(transforms, str) and transforms == "preset" else transforms
    regs = list(pre.regularizers() if regularizers is None else regularizers)
    _validate(steps, lr, optimizer, copies, octaves, until_prob, check_every)
    if tile is not None and (not isinstance(tile, int) or tile < vm.min_size or copies > 1):
        raise CnnvisError(f"tile must be an integer >= {vm.min_size} and needs copies=1, got tile={tile!r}")
    if until_robust is not None:
        _validate(steps, lr, optimizer, copies, octaves, until_robust, check_every)
        if until_prob is None:
            until_prob = until_robust

    objective.setup(vm)
    targets = objective.class_targets()
    if until_prob is not None and targets is None:
        raise CnnvisError("until_prob needs a class objective (class_logit)")
    device = vm.device
    g = generator if generator is not None else torch.Generator().manual_seed(int(seed))

    if param is not None:
        b, _, h, w = param.shape
        if batch is not None and batch != b:
            raise CnnvisError(f"batch={batch} but the given parameterization holds {b} images")
        if objective.batch and b % objective.batch:
            raise CnnvisError(f"the objective is for {objective.batch} images but the image batch has {b}")
        param = param.to(device)
        sizes = _sizes((h, w), octaves, pre.octave_scale, 1)
        if octaves > 1:
            raise CnnvisError("octaves need a new image (param=None); for a given image use its own resizing")
    else:
        b = objective.batch or batch or 1
        if batch is not None and objective.batch and batch != objective.batch:
            raise CnnvisError(f"batch={batch} but the objective is for {objective.batch} images (one per channel/class)")
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if min(hw) < vm.min_size:
            raise CnnvisError(f"size {size} is too small for {vm.name}; use at least {vm.min_size} pixels")
        sizes = _sizes(hw, octaves, pre.octave_scale, vm.min_size)
        param = make_param(pre.param, b, *sizes[0], generator=g, device=device, **pre.param_kw)
    for r in regs:
        r.check(param)

    from cnnvis.hooks import capture
    from cnnvis.layers import resolve_layer

    layers = [n for n in objective.layers if n != LOGITS]
    resolved = {n: resolve_layer(vm, n) for n in layers}
    needs_out = LOGITS in objective.layers
    normalize = vm.preprocess.normalize
    bounds = [round(steps * (i + 1) / octaves) for i in range(octaves)]

    def make_opt(p):
        ps = list(p.parameters())
        return torch.optim.Adam(ps, lr=lr) if optimizer == "adam" else torch.optim.SGD(ps, lr=lr)

    history: list[Tensor] = []
    stopped, message = None, ""
    with torch.no_grad():
        last_good = param().detach().clone()
    opt = make_opt(param)
    octave = 0
    n_run = good_step = 0
    with model_guard(vm.model), capture(vm.model, list(resolved.values()), stop=not needs_out) as cap:

        def forward(x: Tensor) -> dict[str, Tensor]:
            out = cap.run(normalize(x))
            acts = {n: cap.outputs[r] for n, r in resolved.items()}
            if needs_out:
                acts[LOGITS] = out
            return acts

        tgt = torch.as_tensor(targets, device=device) if targets is not None else None
        for i in progress_iter(range(steps), total=steps, desc=desc, progress=progress):
            if i >= bounds[octave]:
                octave += 1
                param = param.resized(*sizes[octave])
                for r in regs:
                    r.check(param)
                opt = make_opt(param)
            opt.zero_grad(set_to_none=True)
            x = param()
            xt = x.repeat(copies, 1, 1, 1) if copies > 1 else x
            if tf is not None:
                xt = tf(xt, g)
            if tile is not None and max(xt.shape[-2:]) > tile:
                # large images: objective gradient tile by tile (bounded memory), penalties on the whole
                vals = tiled_backward(lambda t: _per_image(objective(forward(t)), t.shape[0]), xt, tile)
                pens = [p for r in regs if (p := r.penalty(x)) is not None]
                if pens:
                    torch.stack([p.sum() for p in pens]).sum().backward()
            else:
                vals = _per_image(objective(forward(xt)), xt.shape[0])
                if copies > 1:
                    vals = vals.view(copies, -1).mean(0)
                total = vals
                for r in regs:
                    pen = r.penalty(x)
                    if pen is not None:
                        total = total - pen
                (-total.sum()).backward()
            for r in regs:
                r.on_grad(param)
            opt.step()
            if regs:
                with torch.no_grad():
                    for r in regs:
                        r.after_step(param, i)
            history.append(vals.detach())
            n_run = i + 1
            if n_run % check_every == 0 or n_run == steps:
                with torch.no_grad():
                    img = param()
                    recent = torch.stack(history[-check_every:])
                    ok_rows = torch.isfinite(recent).flatten(1).all(1)
                    if not bool(ok_rows.all()) or not bool(torch.isfinite(img).all()):
                        bad = n_run - len(recent) + (int((~ok_rows).nonzero()[0]) if not bool(ok_rows.all())
                                                     else len(recent) - 1)
                        stopped = "non-finite"
                        message = (f"the objective or the image became NaN/inf at step {bad + 1}; stopped there and "
                                   f"kept the last finite image (from step {good_step})")
                        break
                    if last_good.shape == img.shape:  # reuse the buffer: no second full-size copy
                        last_good.copy_(img)
                    else:
                        last_good = img.detach().clone()
                    good_step = n_run
                    if until_prob is not None and n_run >= min_steps and img.shape[-2:] == sizes[-1]:
                        if _reached(cap, normalize, img, tgt, until_prob, until_robust):
                            stopped = "until_prob"
                            message = f"reached probability {until_prob} at step {n_run}" + (
                                f" (>= {until_robust} under each perturbation)" if until_robust else "")
                            break
    images = last_good.float().cpu().clamp_(0, 1)
    values = torch.stack(history).float().cpu() if history else torch.zeros(0, b)
    res = RenderResult(images, values, n_run, stopped, message, targets, seconds=0.0, param=param)
    if targets is not None and vm.task == "classification":
        from cnnvis.classify import predict_probs, topk

        probs = predict_probs(vm, quantize(images))
        t = torch.as_tensor(targets * (images.shape[0] // len(targets)))
        res.probs = probs[torch.arange(images.shape[0]), t]
        res.top5 = topk(probs, vm, 5)
    res.seconds = time.perf_counter() - t0
    return res


def _reached(cap, normalize, img: Tensor, tgt: Tensor, p_min: float, robust_min: float | None) -> bool:
    """True when every image's target probability on its 8-bit version is >= p_min (and, with
    robust_min, >= robust_min under each of the four perturbations)."""
    from cnnvis.optvis.robustness import perturb

    q = quantize(img)
    xs = [q] + (list(perturb(q).values()) if robust_min is not None else [])
    out = cap.run(normalize(torch.cat(xs)))
    b = img.shape[0]
    n = len(xs)
    t = tgt.repeat(n * b // tgt.numel())
    p = torch.softmax(out.float(), 1)[torch.arange(n * b, device=out.device), t].view(n, b)
    if not bool((p[0] >= p_min).all()):
        return False
    return robust_min is None or bool((p[1:] >= robust_min).all())


def _per_image(vals: Tensor, b: int) -> Tensor:
    return vals.expand(b) if vals.dim() == 0 else vals


def _validate(steps, lr, optimizer, copies, octaves, until_prob, check_every) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise CnnvisError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise CnnvisError(f"learning rate must be a positive finite number, got {lr!r}")
    if optimizer not in ("adam", "sgd"):
        raise CnnvisError(f"unknown optimizer {optimizer!r}; use 'adam' or 'sgd'")
    if not isinstance(copies, int) or copies < 1:
        raise CnnvisError(f"copies must be a positive integer, got {copies!r}")
    if not isinstance(octaves, int) or not 1 <= octaves <= steps:
        raise CnnvisError(f"octaves must be between 1 and steps ({steps}), got {octaves!r}")
    if until_prob is not None and not (isinstance(until_prob, (int, float)) and 0 < until_prob <= 1):
        raise CnnvisError(f"until_prob must be in (0, 1], got {until_prob!r}")
    if not isinstance(check_every, int) or check_every < 1:
        raise CnnvisError(f"check_every must be a positive integer, got {check_every!r}")
