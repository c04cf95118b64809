"""Plain-gradient methods: saliency, gradient x input, integrated gradients; the noise tunnel
(SmoothGrad, SmoothGrad-squared, VarGrad) over any method.

All take x (B, 3, H, W) and return (B, 3, H, W). A `LayerTarget` as target gives the gradient
of an intermediate activation (whole layer, one channel or one unit) instead of a class score.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from cnnvis.attribution.base import Attribution, repeat_target
from cnnvis.attribution.registry import register_method
from cnnvis.errors import CnnvisError


@register_method
class Saliency(Attribution):
    """Simonyan et al. 2013: d score / d x (signed); `map` = max |grad| over colour channels."""

    name, title = "saliency", "saliency"

    def _attribute(self, x: Tensor, target) -> Tensor:
        return self.input_grad(x, target)


@register_method
class GradientXInput(Attribution):
    """x * d score / d x (Shrikumar et al. 2016), with x the [0, 1] image for a VisModel."""

    name, title, caption = "gradxinput", "gradient × input", "gradient x input"

    def _attribute(self, x: Tensor, target) -> Tensor:
        return x * self.input_grad(x, target)


class NoiseTunnel(Attribution):
    """SmoothGrad / SmoothGrad-squared / VarGrad over any method (as Captum's NoiseTunnel).

        NoiseTunnel(GuidedBackprop(vm), kind='vargrad', samples=16, stdev=0.1).attribute(x, t)

    The wrapped method runs on `samples` noisy copies x + N(0, s^2) of each image, `batch_size`
    images per call; the result has the wrapped method's shape:
    kind 'smoothgrad' = mean, 'smoothgrad_sq' = mean of squares, 'vargrad' = variance
    (mean of squares - squared mean). s = `stdev` (absolute, Captum's `stdevs`) or, when
    stdev is None, `noise` x each image's value range (Smilkov et al.: 0.15 = 15 %).
    A target of None is fixed to x's top-1 class first (the noise must not change the class).
    Noise comes from a generator seeded with `seed`: same call, same map.
    """

    KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")

    def __init__(self, method: Attribution, *, kind: str = "smoothgrad", samples: int = 25, stdev: float | None = None,
                 noise: float = 0.15, batch_size: int = 16, seed: int = 0) -> None:
        if not isinstance(method, Attribution):
            raise CnnvisError(f"NoiseTunnel wraps an attribution method, e.g. NoiseTunnel(GuidedBackprop(vm)); "
                              f"got {type(method).__name__}")
        if kind not in self.KINDS:
            from cnnvis.errors import unknown_name

            raise unknown_name("noise tunnel kind", kind, self.KINDS)
        if samples < 1:
            raise CnnvisError(f"samples must be >= 1, got {samples}")
        level = stdev if stdev is not None else noise
        if not (isinstance(level, (int, float)) and math.isfinite(level) and level >= 0):
            raise CnnvisError(f"the noise level must be a finite number >= 0 (a fraction of the image's range, e.g. "
                              f"0.15), got stdev={stdev}, noise={noise}")
        super().__init__(method.model)
        self.method, self.kind, self.samples, self.stdev, self.noise = method, kind, samples, stdev, noise
        self.batch_size, self.seed = max(1, batch_size), seed
        self.signed = method.signed and kind == "smoothgrad"
        self.name = f"{kind}({method.name})"

    def draw(self, gen: torch.Generator, shape: tuple[int, ...], std: Tensor) -> Tensor:
        """(r, B, C, H, W) noise for r copies of the batch; `std` is (B, 1, 1, 1)."""
        return torch.randn(shape, generator=gen).to(std) * std

    def _attribute(self, x: Tensor, target) -> Tensor:
        target = self.method.fixed_target(x, target)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        B = x.shape[0]
        if self.stdev is not None:
            std = torch.full((B, 1, 1, 1), float(self.stdev), dtype=x.dtype, device=x.device)
        else:
            flat = x.reshape(B, -1)
            std = self.noise * (flat.amax(1) - flat.amin(1)).clamp_min(1e-8).view(B, 1, 1, 1)
        s1 = s2 = None
        reps = max(1, self.batch_size // B)
        for done in range(0, self.samples, reps):
            r = min(reps, self.samples - done)
            xs = (x.unsqueeze(0) + self.draw(gen, (r, *x.shape), std)).reshape(r * B, *x.shape[1:])
            a = self.method._attribute(xs, repeat_target(target, r))
            a = a.reshape(r, B, *a.shape[1:])
            s1 = a.sum(0) if s1 is None else s1 + a.sum(0)
            s2 = (a * a).sum(0) if s2 is None else s2 + (a * a).sum(0)
        m1, m2 = s1 / self.samples, s2 / self.samples
        return {"smoothgrad": m1, "smoothgrad_sq": m2, "vargrad": m2 - m1 * m1}[self.kind]

    def __repr__(self) -> str:
        return f"NoiseTunnel({self.method!r}, kind={self.kind!r}, samples={self.samples})"


@register_method
class SmoothGrad(NoiseTunnel):
    """Smilkov et al. 2017: the mean of `method` (a METHODS name, default plain gradients; other
    keyword options go to it, e.g. layer='conv5_3') over `samples` noisy copies of x;
    magnitude=True: mean of squares (SmoothGrad-squared). Noise options: see NoiseTunnel."""

    name, title, seeded = "smoothgrad", "SmoothGrad", True
    kind = "smoothgrad"

    def __init__(self, model, *, method: str = "saliency", samples: int = 25, noise: float = 0.15,
                 stdev: float | None = None, batch_size: int = 16, magnitude: bool = False, seed: int = 0,
                 **options) -> None:
        from cnnvis.attribution import method as make

        kind = "smoothgrad_sq" if magnitude else self.kind
        try:
            inner = make(method, model, **options)
        except CnnvisError as e:  # name the outer method too: the option may have been meant for it
            raise CnnvisError(f"{self.kind}: {e}") from None
        super().__init__(inner, kind=kind, samples=samples, stdev=stdev, noise=noise,
                         batch_size=batch_size, seed=seed)
        self.name = "smoothgrad" if method == "saliency" else self.name


@register_method
class VarGrad(SmoothGrad):
    """Adebayo et al. 2018: the variance of `method` (default plain gradients) over noisy copies of x.
    Options: see SmoothGrad."""

    name, title, report = "vargrad", "VarGrad", ()
    kind = "vargrad"

    def __init__(self, model, *, method: str = "saliency", samples: int = 25, noise: float = 0.15,
                 stdev: float | None = None, batch_size: int = 16, seed: int = 0, **options) -> None:
        super().__init__(model, method=method, samples=samples, noise=noise, stdev=stdev, batch_size=batch_size,
                         seed=seed, **options)
        self.name = "vargrad" if method == "saliency" else self.name


@register_method
class IntegratedGradients(Attribution):
    """Sundararajan et al. 2017: (x - baseline) * integral of the gradient along the straight path.

    baseline: 0.0 (black), any float (grey = 0.5), or a tensor broadcastable to x.
    batch_size: path images per forward+backward (default: 10 on a CPU, 64 on a GPU).
    steps / method: 'gausslegendre' (default, as Captum) or 'riemann_left|right|middle|trapezoid'.
    multiply_by_inputs=False: return the path-averaged gradient alone (Captum's option of that name).
    `attribute(x, t, return_delta=True)` -> (attribution, delta (B,)) with delta =
    sum((x - baseline) * mean gradient) - (f(x) - f(baseline)), the completeness error.
    """

    name, title, returns_delta = "ig", "integrated gradients", True

    def __init__(self, model, *, steps: int = 50, baseline: float | Tensor = 0.0, method: str = "gausslegendre",
                 batch_size: int | None = None, multiply_by_inputs: bool = True) -> None:
        super().__init__(model)
        if steps < 1:
            raise CnnvisError(f"integrated gradients needs at least 1 step, got {steps}")
        valid = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
        if method not in valid:
            from cnnvis.errors import unknown_name

            raise unknown_name("integration method", method, valid)
        if isinstance(baseline, Tensor):
            if not bool(torch.isfinite(baseline).all()):
                raise CnnvisError("the IG baseline image holds NaN or infinite values; give pixels in [0, 1]")
        elif not (isinstance(baseline, (int, float)) and math.isfinite(baseline) and 0 <= baseline <= 1):
            raise CnnvisError(f"the IG baseline must be a grey level in [0, 1] (0 black, 0.5 grey), got {baseline!r}")
        self.steps, self.baseline, self.method = steps, baseline, method
        self.batch_size = None if batch_size is None else max(1, batch_size)
        self.multiply_by_inputs = multiply_by_inputs

    def attribute(self, x: Tensor, target=None, *, return_delta: bool = False):
        """(B, 3, H, W) attribution, or (attribution, delta (B,)) with return_delta=True."""
        attr, delta = self.run(self._attribute_delta, x, target)
        return (attr, delta) if return_delta else attr

    def alphas(self) -> tuple[Tensor, Tensor]:
        """Path positions (steps,) in [0, 1] and their quadrature weights (steps,)."""
        n = self.steps
        if self.method == "gausslegendre":
            a, w = np.polynomial.legendre.leggauss(n)
            return torch.tensor(0.5 * (a + 1)), torch.tensor(0.5 * w)
        if self.method == "riemann_trapezoid":
            if n < 2:
                raise CnnvisError("riemann_trapezoid needs at least 2 steps")
            a = torch.linspace(0, 1, n, dtype=torch.float64)
            w = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
            w[0] = w[-1] = 0.5 / (n - 1)
            return a, w
        k = torch.arange(n, dtype=torch.float64)
        off = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[self.method]
        return (k + off) / n, torch.full((n,), 1 / n, dtype=torch.float64)

    def _attribute(self, x: Tensor, target) -> Tensor:
        return self._attribute_delta(x, target)[0]

    def _attribute_delta(self, x: Tensor, target) -> tuple[Tensor, Tensor]:
        target = self.fixed_target(x, target)
        base = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        try:
            base = base.expand_as(x)
        except RuntimeError:
            raise CnnvisError(f"IG baseline of shape {tuple(base.shape)} does not fit the input {tuple(x.shape)}") from None
        alphas, weights = (t.to(x) for t in self.alphas())
        B = x.shape[0]
        diff = x - base
        total = torch.zeros_like(x)
        # default chunk: 10 path images per batch on a CPU (measured 2-5x faster than all 50 at once:
        # fresh big activation buffers cost a page fault per 4 KiB), 64 on a GPU
        bs = self.batch_size or (10 if x.device.type == "cpu" else 64)
        per = max(1, bs // B)
        for i in range(0, self.steps, per):
            a = alphas[i:i + per]
            r = a.shape[0]
            xs = torch.addcmul(base.unsqueeze(0), a.view(-1, 1, 1, 1, 1), diff.unsqueeze(0)).reshape(r * B, *x.shape[1:])
            last = i + per >= self.steps
            if last:  # the path's two ends ride along in the last batch (for the completeness check):
                xs = torch.cat([xs, x, base])  # no extra forward passes, 2 more images in one batch
            xg = xs.requires_grad_(True)
            score, _ = self.forward_score(xg, repeat_target(target, r + 2 * last))
            (g,) = torch.autograd.grad(score[:r * B].sum(), xg, allow_unused=True)
            if g is not None:
                total += torch.tensordot(weights[i:i + per], g[:r * B].reshape(r, -1), 1).view_as(x)
            if last:
                s1, s0 = score[r * B:(r + 1) * B].detach(), score[(r + 1) * B:].detach()
        attr = diff * total
        delta = attr.reshape(B, -1).sum(1) - (s1 - s0)
        return (attr if self.multiply_by_inputs else total), delta
