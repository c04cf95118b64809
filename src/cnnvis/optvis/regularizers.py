"""Regularizers for activation maximization, each from the paper that introduced it.

A regularizer acts at one or more points of a render step:
  penalty(x) -> (B,)    subtracted from the objective (x: the un-transformed image (B, 3, H, W))
  on_grad(param)        edits the parameter gradients after backward (before the optimizer step)
  after_step(param, i)  edits the image after the optimizer step (pixel images only)

    L2Decay(0.01)                 Yosinski et al. 2015 (decay towards grey after each step)
    GaussianBlur(1.0, every=4)    Yosinski et al. 2015 (periodic blur)
    ClipSmallNorm(50)             Yosinski et al. 2015 (grey out the weakest pixels by norm)
    ClipSmallContribution(50)     Yosinski et al. 2015 (grey out pixels of small |x * grad|)
    TotalVariation(1e-3, beta=2)  Mahendran & Vedaldi 2016 (V^beta penalty)
    BoundedRange(alpha=6, ...)    Mahendran & Vedaldi 2016 (alpha-norm penalty + clamp to [0, 1])
    GradientRMS()                 Chollet 2016 (gradient divided by its root mean square)
`center` (L2Decay, the clippings, BoundedRange's penalty): the neutral image the regularizer pulls
towards, a value or one per channel (default grey 0.5; Yosinski et al. work in mean-subtracted
pixels, so theirs is the data mean: a digit net's is its dark background, 0.13).
Multi-scale octaves (render small, upscale, continue; Mordvintsev 2015, Øygard 2015) are the
`octaves=` option of `render`. Penalty weights are relative to the objective's scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnvis.errors import CnnvisError

GREY = 0.5


class Regularizer:
    """Base: every hook is a no-op. Subclasses override what they need."""

    def penalty(self, x: Tensor) -> Tensor | None:
        return None

    def on_grad(self, param) -> None:
        return None

    def after_step(self, param, step: int) -> None:
        return None

    def check(self, param) -> None:
        """Raise CnnvisError if this regularizer cannot work with `param`."""

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _pixels(param, who: str) -> Tensor:
    p = getattr(param, "pixels", None)
    if p is None:
        raise CnnvisError(f"{who} edits pixels directly and needs a pixel parameterization (param='pixel'), "
                          f"not {type(param).__name__}")
    return p


def _center(center, x: Tensor) -> "Tensor | float":
    """A value, or one per channel -> something to subtract from (B, C, H, W) x."""
    if isinstance(center, (int, float)):
        return float(center)
    c = torch.as_tensor(center, dtype=x.dtype, device=x.device).flatten()
    if c.numel() == 1:
        return float(c)
    if c.numel() != x.shape[1]:
        raise CnnvisError(f"center has {c.numel()} values but the image has {x.shape[1]} channels")
    return c.view(1, -1, 1, 1)


def _per_image_threshold(v: Tensor, percentile: float) -> Tensor:
    """(B, H, W) -> (B, 1, 1): the per-image `percentile` (0-100) of v."""
    flat = v.flatten(1)
    k = max(1, min(flat.shape[1], int(round(percentile / 100 * flat.shape[1]))))
    return flat.kthvalue(k, dim=1).values.view(-1, 1, 1)


def gaussian_kernel(sigma: float, device=None, dtype=torch.float32) -> Tensor:
    """1-D Gaussian (2r+1,), r = ceil(3 sigma), summing to 1."""
    r = max(1, int(torch.tensor(3.0 * sigma).ceil()))
    t = torch.arange(-r, r + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W), reflect padding, same size."""
    if sigma <= 0:
        return x
    k = gaussian_kernel(sigma, x.device, x.dtype)
    r, c = k.numel() // 2, x.shape[1]
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    k = k[k.numel() // 2 - r: k.numel() // 2 + r + 1]
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class L2Decay(Regularizer):
    """x <- center + (1 - decay) (x - center) after every step (Yosinski et al. 2015, "L2 decay").

    On a non-pixel parameterization it acts as the penalty decay * mean((x - center)^2) instead.
    """

    def __init__(self, decay: float = 0.01, center=GREY):
        self.decay, self.center = float(decay), center
        self._penalty_mode = False

    def check(self, param) -> None:
        self._penalty_mode = getattr(param, "pixels", None) is None

    def penalty(self, x):
        if self._penalty_mode and self.decay:
            return self.decay * (x - _center(self.center, x)).pow(2).flatten(1).mean(1)
        return None

    def after_step(self, param, step):
        if not self._penalty_mode and self.decay:
            p = param.pixels
            c = _center(self.center, p)
            p.sub_(c).mul_(1 - self.decay).add_(c)


class GaussianBlur(Regularizer):
    """Blur the image with a Gaussian of `sigma` px every `every` steps (Yosinski et al. 2015)."""

    def __init__(self, sigma: float = 1.0, every: int = 4):
        self.sigma, self.every = float(sigma), max(1, int(every))

    def check(self, param):
        _pixels(param, "GaussianBlur")

    def after_step(self, param, step):
        if (step + 1) % self.every == 0:
            p = param.pixels
            p.copy_(gaussian_blur(p, self.sigma))


class ClipSmallNorm(Regularizer):
    """Set to `center` the pixels whose colour norm |x - center| is below the `percentile` of the image
    (Yosinski et al. 2015, "clipping pixels with small norm")."""

    def __init__(self, percentile: float = 50, every: int = 1, center=GREY):
        self.percentile, self.every, self.center = float(percentile), max(1, int(every)), center

    def check(self, param):
        _pixels(param, "ClipSmallNorm")

    def after_step(self, param, step):
        if self.percentile <= 0 or (step + 1) % self.every:
            return
        p = param.pixels
        c = _center(self.center, p)
        norm = (p - c).norm(dim=1)
        keep = (norm > _per_image_threshold(norm, self.percentile)).unsqueeze(1)
        p.copy_(torch.where(keep, p, torch.zeros_like(p) + c))


class ClipSmallContribution(Regularizer):
    """Set to `center` the pixels whose contribution sum_c |(x - center) * dL/dx| is below the
    `percentile` (Yosinski et al. 2015, "clipping pixels with small contribution")."""

    def __init__(self, percentile: float = 50, every: int = 1, center=GREY):
        self.percentile, self.every, self.center = float(percentile), max(1, int(every)), center
        self._grad = None

    def check(self, param):
        _pixels(param, "ClipSmallContribution")

    def on_grad(self, param):
        g = param.pixels.grad
        self._grad = None if g is None else g.detach().clone()

    def after_step(self, param, step):
        if self.percentile <= 0 or self._grad is None or (step + 1) % self.every:
            return
        p = param.pixels
        c = _center(self.center, p)
        contrib = ((p - c) * self._grad).abs().sum(1)
        keep = (contrib > _per_image_threshold(contrib, self.percentile)).unsqueeze(1)
        p.copy_(torch.where(keep, p, torch.zeros_like(p) + c))


def total_variation(x: Tensor, beta: float = 2.0) -> Tensor:
    """(B, C, H, W) -> (B,): mean over pixels of ((dx^2 + dy^2))^(beta/2) (Mahendran & Vedaldi 2016)."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    v = (dx * dx + dy * dy).sum(1)
    if beta != 2:
        v = (v + 1e-8).pow(beta / 2)
    return v.flatten(1).mean(1)


class TotalVariation(Regularizer):
    """Penalty weight * TV^beta of the image; beta < 2 allows sharper edges (Mahendran & Vedaldi 2016)."""

    def __init__(self, weight: float = 1.0, beta: float = 2.0):
        self.weight, self.beta = float(weight), float(beta)

    def penalty(self, x):
        return self.weight * total_variation(x, self.beta)


class BoundedRange(Regularizer):
    """Keep pixels in [lo, hi]: clamp after each step (pixel images; Fourier images are already
    in range), plus the optional penalty weight * mean(|x - center|^alpha) of Mahendran & Vedaldi 2016."""

    def __init__(self, lo: float = 0.0, hi: float = 1.0, alpha: float = 6.0, weight: float = 0.0, center=GREY):
        if lo >= hi:
            raise CnnvisError(f"BoundedRange needs lo < hi, got {lo} and {hi}")
        self.lo, self.hi, self.alpha, self.weight = float(lo), float(hi), float(alpha), float(weight)
        self.center = center

    def penalty(self, x):
        if self.weight:
            return self.weight * (x - _center(self.center, x)).abs().pow(self.alpha).flatten(1).mean(1)
        return None

    def after_step(self, param, step):
        p = getattr(param, "pixels", None)
        if p is not None:
            p.clamp_(self.lo, self.hi)


class GradientRMS(Regularizer):
    """Divide each image's gradient by its root mean square (Chollet 2016, "normalized gradient
    ascent"): every step then moves the image by about the learning rate, whatever the layer's scale."""

    def __init__(self, eps: float = 1e-8):
        self.eps = float(eps)

    def on_grad(self, param):
        for p in param.parameters():
            if p.grad is not None:
                g = p.grad
                n = g[0].numel()  # vector_norm needs no full-size temporary (large DeepDream images)
                rms = torch.linalg.vector_norm(g.flatten(1), dim=1).div_(n ** 0.5).add_(self.eps)
                g.div_(rms.view(-1, *([1] * (g.dim() - 1))))
