"""Plain-gradient methods: saliency, gradient x input, SmoothGrad, integrated gradients.

All take x (B, 3, H, W) and return (B, 3, H, W). A `LayerTarget` as target gives the gradient
of an intermediate activation (whole layer, one channel or one unit) instead of a class score.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from cnnvis.attribution.base import Attribution
from cnnvis.errors import CnnvisError


class Saliency(Attribution):
    """Simonyan et al. 2013: d score / d x (signed); `map` = max |grad| over colour channels."""

    name = "saliency"

    def _attribute(self, x: Tensor, target) -> Tensor:
        return self.input_grad(x, target)


class GradientXInput(Attribution):
    """x * d score / d x (Shrikumar et al. 2016), with x the [0, 1] image for a VisModel."""

    name = "gradxinput"

    def _attribute(self, x: Tensor, target) -> Tensor:
        return x * self.input_grad(x, target)


class SmoothGrad(Attribution):
    """Smilkov et al. 2017: mean gradient over `samples` noisy copies of x.

    noise: std of the Gaussian noise as a fraction of each image's value range (0.15 = 15 %).
    magnitude: average squared gradients (SmoothGrad-squared) instead of gradients.
    Noise comes from an explicit generator seeded with `seed`: same call, same map.
    """

    name = "smoothgrad"

    def __init__(self, model, *, samples: int = 25, noise: float = 0.15, batch_size: int = 16,
                 magnitude: bool = False, seed: int = 0) -> None:
        super().__init__(model)
        if samples < 1:
            raise CnnvisError(f"SmoothGrad needs at least 1 sample, got {samples}")
        if noise < 0:
            raise CnnvisError(f"SmoothGrad noise must be >= 0, got {noise}")
        self.samples, self.noise, self.batch_size = samples, noise, max(1, batch_size)
        self.magnitude, self.seed = magnitude, seed

    def _attribute(self, x: Tensor, target) -> Tensor:
        target = self.fixed_target(x, target)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        B = x.shape[0]
        span = (x.reshape(B, -1).amax(1) - x.reshape(B, -1).amin(1)).clamp_min(1e-8).view(B, 1, 1, 1)
        total = torch.zeros_like(x)
        reps = max(1, self.batch_size // B)
        done = 0
        while done < self.samples:
            r = min(reps, self.samples - done)
            noise = torch.randn((r, *x.shape), generator=gen).to(x) * (self.noise * span)
            xs = (x.unsqueeze(0) + noise).reshape(r * B, *x.shape[1:])
            g = self.input_grad(xs, _repeat_target(target, r, B)).reshape(r, *x.shape)
            total += (g * g).sum(0) if self.magnitude else g.sum(0)
            done += r
        return total / self.samples


class IntegratedGradients(Attribution):
    """Sundararajan et al. 2017: (x - baseline) * integral of the gradient along the straight path.

    baseline: 0.0 (black), any float (grey = 0.5), or a tensor broadcastable to x.
    batch_size: path images per forward+backward (default: 10 on a CPU, 64 on a GPU).
    steps / method: 'gausslegendre' (default, as Captum) or 'riemann_left|right|middle|trapezoid'.
    After a call, `self.delta` (B,) = sum(attribution) - (f(x) - f(baseline)) (completeness check).
    """

    name = "ig"

    def __init__(self, model, *, steps: int = 50, baseline: float | Tensor = 0.0, method: str = "gausslegendre",
                 batch_size: int | None = None) -> None:
        super().__init__(model)
        if steps < 1:
            raise CnnvisError(f"integrated gradients needs at least 1 step, got {steps}")
        valid = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
        if method not in valid:
            from cnnvis.errors import unknown_name

            raise unknown_name("integration method", method, valid)
        self.steps, self.baseline, self.method = steps, baseline, method
        self.batch_size = None if batch_size is None else max(1, batch_size)
        self.delta: Tensor | None = None

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
            score, _ = self.forward_score(xg, _repeat_target(target, r + 2 * last, B))
            (g,) = torch.autograd.grad(score[:r * B].sum(), xg, allow_unused=True)
            if g is not None:
                total += torch.tensordot(weights[i:i + per], g[:r * B].reshape(r, -1), 1).view_as(x)
            if last:
                s1, s0 = score[r * B:(r + 1) * B].detach(), score[(r + 1) * B:].detach()
        attr = diff * total
        self.delta = (attr.reshape(B, -1).sum(1) - (s1 - s0)).detach()
        return attr


def _repeat_target(target, r: int, B: int):
    """Per-image targets for a batch of r stacked copies of B images."""
    if torch.is_tensor(target) and target.numel() == B and B > 1:
        return target.reshape(1, B).expand(r, B).reshape(-1)
    if isinstance(target, (list, tuple)) and len(target) == B and B > 1:
        return torch.as_tensor(target).reshape(1, B).expand(r, B).reshape(-1)
    return target
