"""The activation-maximization loop.

    res = render(vm, class_logit("pelican"), stop=UntilProb(0.99))          # default preset 'robust'
    res = render(vm, channel("stage4", list(range(16))), RenderConfig(preset="lucid2017", size=128))
    res.images            # (B, C, H, W) in [0, 1], CPU
    res.probs, res.top5   # target probability and top-5 of the 8-bit image (class objectives)
    res.config            # the resolved RenderConfig: with the objective, it fixes every image

Each image has its own random generator, seeded from (config.seed, what the image shows), for
its random start and its random transforms: an image does not depend on the batch it is in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cnnvis.errors import CnnvisError
from cnnvis.models.registry import as_vismodel  # the one adapter; re-exported for old callers
from cnnvis.optvis.config import RenderConfig, UntilProb
from cnnvis.optvis.objectives import LOGITS, Objective, as_objective
from cnnvis.optvis.param import ImageParam, make_param
from cnnvis.optvis.presets import REGULARIZERS, transforms_for
from cnnvis.optvis.regularizers import Regularizer
from cnnvis.optvis.robustness import perturb, quantize
from cnnvis.optvis.seeding import image_generators
from cnnvis.optvis.tiling import tiled_backward
from cnnvis.optvis.transforms import Roll
from cnnvis.utils import Progress, model_guard, progress_iter

__all__ = ["RenderResult", "render", "quantize", "as_vismodel"]


@dataclass
class RenderResult:
    """What a render returns. All tensors are detached and on the CPU.

    images: (B, C, H, W) in [0, 1]; values: (steps, B) objective value per step and image
    (without penalties; an image that stopped early repeats its last value); steps: steps run;
    image_steps: steps each image ran (they stop one by one under `UntilProb`); stopped: None
    (ran all steps), 'until_prob' or 'non-finite'; message: a sentence for the user when
    stopped; targets/probs/top5: for class objectives, the class per image, its softmax
    probability on the 8-bit image, top-5; judge_probs/judge_top1: (B,) what the stop's judge says of
    the final 8-bit images (class probability, top-1 index); config: the resolved RenderConfig.
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
    image_steps: list[int] | None = None
    config: RenderConfig | None = None
    param: ImageParam | None = field(default=None, repr=False)
    judge_probs: Tensor | None = None
    judge_top1: Tensor | None = None

    @property
    def ok(self) -> bool:
        return self.stopped != "non-finite"

    @property
    def final_values(self) -> Tensor:
        """(B,) objective value of the last step run."""
        return self.values[-1] if len(self.values) else torch.zeros(self.images.shape[0])

    # ------------------------------------------------------------------ shown (Jupyter, the REPL)
    def __repr__(self) -> str:
        shape = "x".join(str(v) for v in self.images.shape)
        parts = [f"images {shape}", f"{self.steps} steps"]
        if self.probs is not None:
            parts.append("probability " + ", ".join(f"{float(p):.3f}" for p in self.probs[:8])
                         + (" ..." if len(self.probs) > 8 else ""))
        if self.stopped:
            parts.append(f"stopped: {self.stopped}")
        return f"RenderResult({'; '.join(parts)})"

    def _repr_png_(self) -> bytes:
        """The images side by side (8 bit, as saved): what a notebook shows."""
        return _png_strip(self.images)

    def _repr_html_(self) -> str:
        import base64
        import html

        img = base64.b64encode(self._repr_png_()).decode()
        line = html.escape(repr(self)[len("RenderResult("):-1] + (f"; {self.message}" if self.message else ""))
        return (f'<div><img src="data:image/png;base64,{img}" style="image-rendering:pixelated;max-width:100%">'
                f'<div style="font:12px system-ui,sans-serif">{line}</div></div>')


def _sizes(hw: tuple[int, int], octaves: int, scale: float, min_size: int) -> list[tuple[int, int]]:
    h, w = hw
    out = []
    for i in range(octaves):
        f = scale ** (octaves - 1 - i)
        out.append((max(min_size, round(h / f)), max(min_size, round(w / f))))
    return out


def image_keys(objective: Objective, b: int, canon: Callable[[str], str] = str) -> list[str]:
    """One key per batch image: what it shows, plus '#k' for the k-th repeat of the same thing."""
    n = objective.batch or 1
    return [objective.image_key(i % n, canon) + (f"#{i // n}" if i >= n else "") for i in range(b)]


def render(
    model,
    objective,
    config: RenderConfig | str | None = None,
    *,
    init: ImageParam | None = None,
    custom_transforms: Callable | None = None,
    custom_regularizers: Sequence[Regularizer] | None = None,
    progress: Progress = None,
    desc: str = "render",
    watch: Callable[[int, Tensor], None] | None = None,
    watch_every: int = 8,
    judge=None,
    **overrides,
) -> RenderResult:
    """Optimize images so that `objective` is maximal; the model comes back unchanged.

    model: a VisModel (images are normalized by its preprocessing) or any nn.Module (fed the
      [0, 1] image as is); images have the model's input channels C, and by default its input
      size. Its parameters never get gradients; flags and hooks are restored, also on error.
    objective: an Objective (see optvis.objectives) or 'layer:channel'. Only the layers it reads
      are hooked, and the forward pass stops after the deepest one unless it reads 'logits'.
    config: a RenderConfig, a preset name, or None (RenderConfig()). `overrides` are its field
      names (render(vm, obj, steps=64, size=128)); unknown names raise a CnnvisError.
    init: a parameterization to optimize instead of a new one, e.g. PixelImage.from_image(photo)
      (DeepDream: any B x C x H x W; size and batch then come from it).
    custom_transforms: a callable (x, generators) -> x used instead of config.transforms;
    custom_regularizers: a list used instead of config.regularizers. Neither is part of the
      config (a job spec cannot hold them): results are then reproducible only with them.
    judge: the loaded VisModel that config.stop.judge names (else it is loaded by name); it only
      looks at the images, and the result's `judge_probs` hold what it says of the final ones.
    watch: called as watch(step, images) after step 1 and every `watch_every` steps (or at the steps
      of a set `watch_every`), with the current
      (B, C, H, W) images in [0, 1] on the CPU (frames of an animation; it cannot change the render).
    A non-finite objective or image stops that image and keeps its last finite version
    (stopped='non-finite', message says so). Same config, objective and machine -> same images.
    """
    t0 = time.perf_counter()
    vm = as_vismodel(model)
    cfg = _resolve(config, overrides)
    objective = as_objective(objective)
    tf = custom_transforms if custom_transforms is not None else transforms_for(cfg.transforms, vm.input_shape)
    regs = list(custom_regularizers if custom_regularizers is not None else REGULARIZERS[cfg.regularizers]())
    watch_every, watch_steps = _check_watch(watch, watch_every)
    if cfg.tile is not None and (cfg.tile < vm.min_size or cfg.copies > 1):
        raise CnnvisError(f"tile must be >= {vm.min_size} (the model's smallest input) and needs copies=1, "
                          f"got tile={cfg.tile}, copies={cfg.copies}")

    objective.setup(vm)
    targets = objective.class_targets()
    judge = _judge_for(vm, cfg.stop, targets, judge)
    start = _start(vm, objective, cfg, init, regs)
    tf, roll = _split_roll(tf, cfg.tile is not None)

    from cnnvis.hooks import capture

    run = _Run(vm, objective, cfg, start, tf, roll, regs, targets, judge, watch, watch_every, watch_steps)
    with model_guard(vm.model), capture(vm.model, list(start.resolved.values()), stop=not run.needs_out) as cap:
        run.attach(cap)
        try:
            for i in progress_iter(range(cfg.steps), total=cfg.steps, desc=desc, progress=progress):
                if i >= run.bounds[run.octave]:
                    run.next_octave()
                if not run.step(i):
                    break  # a tiled image went non-finite
                if run.tiled:
                    continue
                if run.n_run % cfg.check_every == 0 or run.n_run == cfg.steps:
                    run.check()
                    if bool(run.done.all()):
                        break
        except RuntimeError as e:
            from cnnvis.errors import too_small

            size = getattr(cfg, "size", None)
            small = too_small(e, f"the {size}x{size} image" if isinstance(size, int) else "the image")
            if small is None:
                raise
            raise small from None
    res = _finish(run)
    if targets is not None and vm.task == "classification":
        _score(res, vm, run.fit, judge, targets)
    res.seconds = time.perf_counter() - t0
    return res


def _resolve(config, overrides: dict) -> RenderConfig:
    """A RenderConfig, a preset name or None, with `overrides` (field names) -> the resolved config."""
    if config is None or isinstance(config, str):
        config = RenderConfig(preset=config) if config else RenderConfig()
    elif not isinstance(config, RenderConfig):
        raise CnnvisError(f"config must be a RenderConfig or a preset name, got {type(config).__name__}")
    return config.with_(**overrides).resolved() if overrides else config.resolved()


def _check_watch(watch, watch_every) -> tuple[int | frozenset[int], bool]:
    """-> (watch_every, whether it is a set of steps); a CnnvisError for a bad one."""
    if isinstance(watch_every, (set, frozenset, list, tuple)):
        return frozenset(int(v) for v in watch_every), True
    if watch is not None and (not isinstance(watch_every, int) or isinstance(watch_every, bool) or watch_every < 1):
        raise CnnvisError(f"watch_every must be a positive integer or a set of steps, got {watch_every!r}")
    return watch_every, False


def _judge_for(vm, stop: UntilProb | None, targets, judge):
    """The judge a stop names (the one given, else loaded by name), checked against the model; None without
    one. A stop needs a class objective; `judge=` needs a stop that names one."""
    if stop is not None and targets is None:
        raise CnnvisError("stop=UntilProb(...) needs a class objective (class_logit)")
    if stop is not None and stop.judge is not None:
        from cnnvis.optvis.robustness import check_judge

        if judge is None:
            from cnnvis.models import load

            judge = load(stop.judge, device=vm.device)
        check_judge(vm, judge)
    elif judge is not None:
        raise CnnvisError("judge= is for a class render that stops on it: give stop=UntilProb(..., judge=NAME)")
    return judge


@dataclass
class _Start:
    """Where a render starts: the parameterization (B images), the octaves' sizes [(H, W)], a generator
    per image (`gens`) and per transformed copy (`tgens`), and the objective's layers resolved."""

    param: ImageParam
    b: int
    sizes: list[tuple[int, int]]
    gens: list[torch.Generator]
    tgens: list[torch.Generator]
    resolved: dict[str, str]


def _start(vm, objective: Objective, cfg: RenderConfig, init: ImageParam | None, regs) -> _Start:
    """The batch, sizes and generators, and the image: `init` (checked) or a new seeded one."""
    c_in = vm.input_shape[0]
    if init is not None:
        param = init
        b, c, h, w = param.shape
        if c != c_in:
            raise CnnvisError(f"init has {c} channel(s) but {vm.name} takes {c_in}")
        if cfg.batch is not None and cfg.batch != b:
            raise CnnvisError(f"batch={cfg.batch} but the given init holds {b} images")
        if objective.batch and b % objective.batch:
            raise CnnvisError(f"the objective is for {objective.batch} images but init holds {b}")
        if cfg.octaves > 1:
            raise CnnvisError("octaves need a new image (init=None); for a given image use its own resizing")
        param = param.to(vm.device)
        sizes = [(h, w)]
    else:
        b = objective.batch or cfg.batch or 1
        if cfg.batch is not None and objective.batch and cfg.batch != objective.batch:
            raise CnnvisError(f"batch={cfg.batch} but the objective is for {objective.batch} images "
                              "(one per channel/class)")
        size = cfg.size if cfg.size is not None else tuple(vm.input_shape[1:])
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if min(hw) < vm.min_size:
            raise CnnvisError(f"size {size} is too small for {vm.name}; use at least {vm.min_size} pixels")
        sizes = _sizes(hw, cfg.octaves, cfg.octave_scale, vm.min_size)
    if cfg.tile is not None and b > 1:
        raise CnnvisError(f"tile is for one large image (DeepDream); got a batch of {b}")

    from cnnvis.layers import resolve_layer

    layers = [n for n in objective.layers if n != LOGITS]
    resolved = {n: resolve_layer(vm, n) for n in layers}
    canon = lambda n: n if n == LOGITS else resolve_layer(vm, n)  # noqa: E731
    gens = image_generators(cfg.seed, image_keys(objective, b, canon))
    if init is None:
        extra = {"decay_power": cfg.decay_power} if cfg.image == "fourier" and cfg.decay_power is not None else {}
        param = make_param(cfg.image, b, *sizes[0], generator=gens, device=vm.device, channels=c_in, sd=cfg.init_sd,
                           **extra)
    for r in regs:
        r.check(param)
    tgens = [g for _ in range(cfg.copies) for g in gens]  # copy k of image i draws from image i's generator
    return _Start(param, b, sizes, gens, tgens, resolved)


def _split_roll(tf, tiled: bool) -> tuple[Callable | None, Roll | None]:
    """-> (transforms, roll): a tiled render's only transform is a Roll, whose shift moves the tile grid."""
    if tiled and tf is not None:
        if not isinstance(tf, Roll):
            raise CnnvisError("with tile, the only transform is a Roll (its shift moves the tile grid)")
        return None, tf
    return tf, None


def _make_opt(p: ImageParam, cfg: RenderConfig) -> torch.optim.Optimizer:
    ps = list(p.parameters())
    if cfg.optimizer == "adam":  # the fused kernel: one pass over the parameters (CPU and CUDA)
        fused = all(q.device.type in ("cpu", "cuda") and q.dtype == torch.float32 for q in ps)
        return torch.optim.Adam(ps, lr=cfg.lr, fused=fused or None)
    return torch.optim.SGD(ps, lr=cfg.lr, foreach=False)  # in place: no full-size temporaries


class _Run:
    """The optimization loop's state, one step at a time.

    history: (B,) objective values per step; done: (B,) stopped images (reached, or non-finite); reached,
    bad: (B,) bool; best / best_p: with a judge, the checked image it liked best so far per image (kept if
    the image never reaches); image_steps: steps each image ran; keep: the last finite version of each
    image (large tiled images: the parameter itself, checked before each step, so no second full-size
    copy is made); avg: with ema, the exponential moving average of the parameters (Polyak averaging:
    the optimized image still moves every step with its random transforms; the average holds still);
    view: what is shown (avg, else the parameter)."""

    def __init__(self, vm, objective: Objective, cfg: RenderConfig, start: _Start, tf, roll, regs, targets,
                 judge, watch, watch_every, watch_steps: bool) -> None:
        self.vm, self.objective, self.cfg, self.tf, self.roll, self.regs = vm, objective, cfg, tf, roll, regs
        self.targets, self.judge, self.stop = targets, judge, cfg.stop
        self.watch, self.watch_every, self.watch_steps = watch, watch_every, watch_steps
        self.b, self.sizes, self.gens, self.tgens, self.resolved = start.b, start.sizes, start.gens, start.tgens, \
            start.resolved
        self.param = start.param
        self.tiled = cfg.tile is not None
        self.needs_out = LOGITS in objective.layers
        self.normalize = vm.preprocess.normalize
        self.bounds = [round(cfg.steps * (i + 1) / cfg.octaves) for i in range(cfg.octaves)]
        b = self.b
        self.history: list[Tensor] = []
        self.done = torch.zeros(b, dtype=torch.bool)
        self.reached = torch.zeros(b, dtype=torch.bool)
        self.best_p = torch.full((b,), -1.0)
        self.best: dict[int, tuple[int, Tensor]] = {}
        self.bad = torch.zeros(b, dtype=torch.bool)
        self.image_steps = [0] * b
        self.bad_step: int | None = None
        self.keep: Tensor | None = None
        if not self.tiled:
            with torch.no_grad():
                self.keep = self.param().detach().clone()  # the start image (the average starts there too)
        self.opt = _make_opt(self.param, cfg)
        self.ema = cfg.ema or 0.0
        self.avg = _copy_param(self.param) if self.ema and not self.tiled else None
        self.view = self.avg if self.avg is not None else self.param
        self.octave = 0
        self.n_run = 0
        self.fit = _FixedInput(vm.input_shape)
        self.tgt = torch.as_tensor(targets, device=vm.device) if targets is not None else None

    def attach(self, cap) -> None:
        """The model's forward through the hooks of `capture` (which live while the loop runs)."""
        self.cap = cap
        fit, normalize = self.fit, self.normalize
        # the zoo's models that take it get channels_last images on the CPU (VisModel.channels_last)
        self.channels_last = self.vm.channels_last and self.vm.device.type == "cpu"
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model_run = lambda t: fit(  # noqa: E731
            lambda u: cap.run(normalize(u).contiguous(memory_format=layout)), t)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(N, C, H, W) images -> the objective's activations {layer or 'logits': tensor}."""
        out = self.model_run(x)
        acts = {n: self.cap.outputs[r] for n, r in self.resolved.items()}
        if self.channels_last:  # an objective sees contiguous activations, as without it (a user's .view works)
            acts = {n: a.contiguous() for n, a in acts.items()}
        if self.needs_out:
            acts[LOGITS] = out
        return acts

    def next_octave(self) -> None:
        """Go on at the next octave's size, from the shown image, with a new optimizer (and average)."""
        self.octave += 1
        self.param = (self.avg if self.avg is not None else self.param).resized(*self.sizes[self.octave])
        for r in self.regs:
            r.check(self.param)
        self.opt = _make_opt(self.param, self.cfg)
        if self.avg is not None:
            self.avg = _copy_param(self.param)
        self.view = self.avg if self.avg is not None else self.param
        self.keep = None

    def step(self, i: int) -> bool:
        """Step i (0-based): gradients, the optimizer step, the average, the history, `watch`. False (and
        nothing changed) when a tiled image's values or gradients are not finite."""
        param, regs = self.param, self.regs
        self.opt.zero_grad(set_to_none=not self.tiled)
        x = param()
        vals = self._backward_tiled(x) if self.tiled else self._backward(x)
        for r in regs:
            r.on_grad(param)
        if self.tiled and not (_finite(vals) and all(_finite(p.grad) for p in param.parameters()
                                                     if p.grad is not None)):
            self.bad[:] = True  # checked before the step: the parameter still holds the last finite image
            self.bad_step = i
            self.n_run = i
            return False
        self.opt.step()
        if regs:
            with torch.no_grad():
                for r in regs:
                    r.after_step(param, i)
        if self.avg is not None:
            with torch.no_grad():
                for a, q in zip(self.avg.parameters(), param.parameters()):
                    a.lerp_(q, 1 - self.ema)
        self.history.append(vals.detach())
        self.n_run = n_run = i + 1
        watch = self.watch
        if watch is not None and (n_run in self.watch_every if self.watch_steps
                                  else n_run == 1 or n_run % self.watch_every == 0):
            with torch.no_grad():
                watch(n_run, self.view().detach().float().cpu().clamp_(0, 1))
        return True

    def _backward(self, x: Tensor) -> Tensor:
        """Objective minus penalties on the (transformed copies of the) images, backpropagated -> (B,) values."""
        copies = self.cfg.copies
        xt = x.repeat(copies, 1, 1, 1) if copies > 1 else x
        if self.tf is not None:
            xt = self.tf(xt, self.tgens)
        vals = _per_image(self.objective(self.forward(xt)), xt.shape[0])
        if copies > 1:
            vals = vals.view(copies, -1).mean(0)
        total = vals
        for r in self.regs:
            pen = r.penalty(x)
            if pen is not None:
                total = total - pen
        (-total.sum()).backward()
        return vals

    def _backward_tiled(self, x: Tensor) -> Tensor:
        """One large image, tile by tile (the roll's shift moves the grid), then the penalties -> (1,) values."""
        roll, objective, forward = self.roll, self.objective, self.forward
        shift = tuple(int(v) for v in roll.shifts(self.gens, 1)[0]) if roll is not None else (0, 0)
        vals = tiled_backward(lambda t: _per_image(objective(forward(t)), t.shape[0]), x, self.cfg.tile, shift)
        pens = [p for r in self.regs if (p := r.penalty(x)) is not None]
        if pens:
            torch.stack([p.sum() for p in pens]).sum().backward()
        return vals

    @torch.no_grad()
    def check(self) -> None:
        """Every check_every steps (and at the last): stop the images that went non-finite, keep the finite
        ones, and with a stop, mark those that reach it (a judge's best image is kept)."""
        cfg, done, stop, n_run = self.cfg, self.done, self.stop, self.n_run
        img = self.view()
        recent = torch.stack(self.history[-cfg.check_every:]).cpu()
        ok_rows = torch.isfinite(recent)
        ok = ok_rows.all(0) & torch.isfinite(img).flatten(1).all(1).cpu()
        newly_bad = ~ok & ~done
        if bool(newly_bad.any()):
            first = int((~ok_rows[:, newly_bad]).any(1).float().argmax()) if not bool(ok_rows.all()) \
                else len(recent) - 1
            step_bad = n_run - len(recent) + first
            self.bad_step = step_bad if self.bad_step is None else min(self.bad_step, step_bad)
            self.bad |= newly_bad
            done |= newly_bad
        keep = self.keep
        if keep is None or keep.shape != img.shape:
            self.keep = img.detach().clone()
            live = ok
        else:
            live = ok & ~done
            if bool(live.all()):
                keep.copy_(img)  # reuse the buffer: no second full-size copy
            elif bool(live.any()):
                idx = live.nonzero().flatten().to(img.device)
                keep[idx] = img[idx]
        for k in live.nonzero().flatten().tolist():
            self.image_steps[k] = n_run
        if stop is not None and n_run >= stop.min_steps and img.shape[-2:] == self.sizes[-1]:
            now, jp, own_ok = _reached(self.model_run, img, self.tgt, stop, self.judge, live & ~done)
            now &= ~done
            self.reached |= now
            if jp is not None:  # the judge's probability, checks that pass the own ones first
                score = jp + own_ok.float()
                for k in (live & ~done & (score > self.best_p)).nonzero().flatten().tolist():
                    self.best_p[k] = score[k]
                    self.best[k] = (n_run, img[k].detach().clone())
            done |= now


def _finish(run: _Run) -> RenderResult:
    """The kept images (a judge's best where an image never reached), the values per step (an image that
    stopped early repeats its last), and why the run stopped."""
    b, stop, image_steps, bad, n_run = run.b, run.stop, run.image_steps, run.bad, run.n_run
    keep = run.keep
    if run.tiled:
        keep = run.param().detach()
        image_steps = run.image_steps = [n_run] * b
    kept_best = []
    for k, (step_k, img_k) in run.best.items():  # never reached the judge's bar: the check it liked best
        if not bool(run.reached[k]) and not bool(bad[k]) and step_k != image_steps[k]:
            keep[k] = img_k
            image_steps[k] = step_k
            kept_best.append(k)
    images = keep.float().cpu().clamp_(0, 1)
    history = run.history
    values = torch.stack(history).float().cpu() if history else torch.zeros(0, b)
    for k in range(b):  # an image that stopped early keeps its last value
        if 0 < image_steps[k] < len(values):
            values[image_steps[k]:, k] = values[image_steps[k] - 1, k]
    stopped = None
    message = ""
    if bool(bad.any()):
        stopped = "non-finite"
        which = "" if b == 1 else f" in {int(bad.sum())} of {b} images"
        kept = min(image_steps[k] for k in bad.nonzero().flatten().tolist())
        message = (f"the objective or the image became NaN/inf{which} at step {run.bad_step + 1}; stopped there and "
                   f"kept the last finite image (from step {kept})")
    elif stop is not None and bool(run.reached.all()):
        stopped = "until_prob"
        message = f"reached probability {stop.prob} at step {n_run}" + (
            f" (>= {stop.robust} under each perturbation)" if stop.robust else "") + (
            f", and {stop.judge_prob} for the judge {stop.judge}" if stop.judge else "")
    if kept_best and not message:
        which = "" if b == 1 else f" ({len(kept_best)} of {b} images)"
        steps_k = ", ".join(str(image_steps[k]) for k in kept_best)
        message = (f"the judge {stop.judge} never gave {stop.judge_prob} with the model's own checks passed{which}; "
                   f"kept the checked image it liked best (step {steps_k})")
    return RenderResult(images, values, n_run, stopped, message, run.targets, image_steps=image_steps,
                        config=run.cfg, param=run.param)


def _score(res: RenderResult, vm, fit: _FixedInput, judge, targets: list[int]) -> None:
    """A class render's result gets its target probabilities and top-5 on the 8-bit images (and the
    judge's view of them)."""
    from cnnvis.classify import predict_probs, topk

    images = res.images
    probs = fit(lambda t: predict_probs(vm, t), quantize(images))  # a fixed-size model: at its input size
    t = torch.as_tensor(targets * (images.shape[0] // len(targets)))
    res.probs = probs[torch.arange(images.shape[0]), t]
    res.top5 = topk(probs, vm, 5)
    if judge is not None:
        from cnnvis.optvis.robustness import witness_probs

        jp = witness_probs(judge, images)
        res.judge_probs, res.judge_top1 = jp[torch.arange(images.shape[0]), t], jp.argmax(1)


def _png_strip(images: Tensor, gap: int = 4, min_side: int = 96) -> bytes:
    """(B, C, H, W) in [0, 1] -> PNG bytes of the B images in a row on white, each enlarged (nearest) to at
    least `min_side` px (a 28-px digit stays visible). Encoding only: the pictures of cnnvis.viz are for
    the faces; a render result shows itself with this and nothing else."""
    import io

    import numpy as np
    from PIL import Image

    x = (images.detach().float().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    b, c, h, w = x.shape
    k = max(1, -(-min_side // max(h, w)))
    ims = [Image.fromarray(np.ascontiguousarray(t[:3].permute(1, 2, 0).numpy() if c >= 3 else t[0].numpy()))
           for t in x]
    ims = [im.resize((w * k, h * k), Image.NEAREST) if k > 1 else im for im in ims]
    canvas = Image.new("RGB", (b * (w * k + gap) - gap, h * k), "white")
    for i, im in enumerate(ims):
        canvas.paste(im.convert("RGB"), (i * (w * k + gap), 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _copy_param(param: ImageParam) -> ImageParam:
    """A copy of the parameterization whose parameters are plain (no-grad) tensors: the running average."""
    import copy

    out = copy.deepcopy(param)
    for q in out.parameters():
        q.requires_grad_(False)
    return out


def _finite(t: Tensor) -> bool:
    """All values finite, without a full-size temporary (min and max propagate NaN)."""
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


class _FixedInput:
    """Brings images back to the model's input size (C, H, W) when the model takes no other size (a
    Linear head after a flatten, as in a user's `wrap(net, input_shape=(1, 28, 28))`), so that the
    render's size and its transforms (zoom, crop) work on any model. The first forward at a new size
    tells: if it raises (mat1 and mat2 shapes cannot be multiplied, a view of the wrong size, ...) and
    the same images resized to the input size go through, that size is resized from then on; if both
    fail, the first error is raised. A model that takes any size pays nothing (no extra forward), and a
    channel objective on a conv layer, whose forward stops before the head, keeps its own size.
    Resizing is bilinear (antialiased when shrinking) and differentiable."""

    def __init__(self, input_shape) -> None:
        self.hw = (int(input_shape[1]), int(input_shape[2]))
        self.takes: dict[tuple[int, int], bool] = {self.hw: True}

    def resize(self, x: Tensor) -> Tensor:
        shrink = x.shape[-2] > self.hw[0] or x.shape[-1] > self.hw[1]
        return torch.nn.functional.interpolate(x, size=self.hw, mode="bilinear", align_corners=False,
                                               antialias=bool(shrink))

    def __call__(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """fn(x), or fn(x resized to the input size) for a size the model does not take."""
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        known = self.takes.get(hw)
        if known is not None:
            return fn(x) if known else fn(self.resize(x))
        try:
            out = fn(x)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as first:
            try:
                out = fn(self.resize(x))
            except Exception:
                raise first from None
            self.takes[hw] = False
            return out
        self.takes[hw] = True
        return out


def _reached(model_run, img: Tensor, tgt: Tensor, stop: UntilProb, judge=None,
             live: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
    """((B,) bool on the CPU, (B,) judge probabilities or None, (B,) the own checks alone): the image's
    target probability on its 8-bit version is >= stop.prob (and, with stop.robust, >= stop.robust under each of the four
    perturbations; with a judge, the judge's probability of the 8-bit file >= stop.judge_prob).
    The judge is asked about the `live` images only (the others get -1)."""
    q = quantize(img)
    xs = [q] + (list(perturb(q).values()) if stop.robust is not None else [])
    out = model_run(torch.cat(xs))
    b = img.shape[0]
    n = len(xs)
    t = tgt.repeat(n * b // tgt.numel())
    p = torch.softmax(out.float(), 1)[torch.arange(n * b, device=out.device), t].view(n, b).cpu()
    ok = p[0] >= stop.prob
    if stop.robust is not None:
        ok &= (p[1:] >= stop.robust).all(0)
    if judge is None:
        return ok, None, ok
    jp = torch.full((b,), -1.0)
    ask = live if live is not None else torch.ones(b, dtype=torch.bool)
    if bool(ask.any()):
        from cnnvis.optvis.robustness import witness_probs

        idx = ask.nonzero().flatten()
        tt = tgt.repeat(b // tgt.numel()).cpu()
        jp[idx] = witness_probs(judge, q[idx.to(q.device)])[torch.arange(len(idx)), tt[idx]].float()
    return ok & (jp >= stop.judge_prob), jp, ok


def _per_image(vals: Tensor, b: int) -> Tensor:
    return vals.expand(b) if vals.dim() == 0 else vals
