"""Transformation robustness: random, differentiable image transforms applied before every forward pass.

A transform is any callable `t(x, generator) -> x` on a (B, 3, H, W) tensor; the output may
have another size. Randomness comes only from the explicit CPU `torch.Generator`, so a seed
reproduces a render bit for bit; the tensors stay on x's device.

    t = Compose([Pad(12), Jitter(8), RandomAffine(scale=(0.9, 1.1), degrees=10), Jitter(4)])
    y = t(x, torch.Generator().manual_seed(0))

Sources: jitter (Mordvintsev et al. 2015, DeepDream), padding, scaling and rotation
(Olah et al. 2017, "Feature Visualization"; Lucid's `standard_transforms`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Transform = Callable[[Tensor, torch.Generator], Tensor]


def _randint(lo: int, hi: int, g: torch.Generator) -> int:
    """Uniform integer in [lo, hi] (CPU generator: no device sync)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


class Jitter:
    """Random crop that removes `d` pixels in total from each side pair: (H, W) -> (H-d, W-d)."""

    def __init__(self, d: int):
        self.d = int(d)

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        if self.d <= 0:
            return x
        dy, dx = _randint(0, self.d, g), _randint(0, self.d, g)
        h, w = x.shape[-2:]
        return x[..., dy:h - self.d + dy, dx:w - self.d + dx]

    def __repr__(self):
        return f"Jitter({self.d})"


class Roll:
    """Random circular shift by up to `d` pixels in each direction (same size; DeepDream's tiling shift)."""

    def __init__(self, d: int):
        self.d = int(d)

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        dy, dx = _randint(-self.d, self.d, g), _randint(-self.d, self.d, g)
        return torch.roll(x, (dy, dx), dims=(-2, -1))

    def __repr__(self):
        return f"Roll({self.d})"


class Pad:
    """Pad `p` pixels on every side: mode 'constant' (grey `value`), 'reflect' or 'replicate'."""

    def __init__(self, p: int, mode: str = "constant", value: float = 0.5):
        self.p, self.mode, self.value = int(p), mode, value

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        if self.p <= 0:
            return x
        p = (self.p,) * 4
        return F.pad(x, p, mode=self.mode, value=self.value) if self.mode == "constant" else F.pad(x, p, mode=self.mode)

    def __repr__(self):
        return f"Pad({self.p}, {self.mode})"


class RandomScale:
    """Resize by a factor drawn from `scales` (bilinear): (H, W) -> (round(H*s), round(W*s))."""

    def __init__(self, scales: Sequence[float]):
        self.scales = list(scales)

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        s = self.scales[_randint(0, len(self.scales) - 1, g)]
        if s == 1:
            return x
        h, w = x.shape[-2:]
        return F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                             align_corners=False)

    def __repr__(self):
        return f"RandomScale({self.scales})"


class RandomRotate:
    """Rotate by an angle (degrees) drawn from `angles`, same size, border pixels reflected."""

    def __init__(self, angles: Sequence[float]):
        self.angles = list(angles)

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        a = self.angles[_randint(0, len(self.angles) - 1, g)]
        if a == 0:
            return x
        return _affine(x, torch.full((x.shape[0],), math.radians(a)), torch.ones(x.shape[0]),
                       torch.zeros(x.shape[0], 2))

    def __repr__(self):
        return f"RandomRotate({self.angles})"


class RandomAffine:
    """Scale, rotation and translation in ONE bilinear resampling, drawn independently per image.

    scale: (lo, hi) zoom factor range; degrees: max |angle|; translate: max shift in pixels.
    soften: (p, f) with probability p the batch is resampled on a grid up to f times coarser and
    bilinearly upsampled back: a random loss of fine detail (like a blur or a rescale) at no extra
    cost. Same output size; pixels pulled from outside are reflected.
    """

    def __init__(self, scale: tuple[float, float] = (0.95, 1.05), degrees: float = 5.0, translate: float = 0.0,
                 soften: tuple[float, float] = (0.0, 1.0)):
        self.scale, self.degrees, self.translate = scale, float(degrees), float(translate)
        self.soften = (float(soften[0]), float(soften[1]))

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        b, _, h, w = x.shape
        u = torch.rand(b, 4, generator=g)
        lo, hi = self.scale
        s = lo + (hi - lo) * u[:, 0]
        ang = (2 * u[:, 1] - 1) * math.radians(self.degrees)
        t = (2 * u[:, 2:] - 1) * self.translate * 2 / torch.tensor([w, h], dtype=torch.float32)
        p, f = self.soften
        if p > 0:
            v = torch.rand(2, generator=g)
            if float(v[0]) < p:
                k = 1 + float(v[1]) * (f - 1)
                y = _affine(x, ang, s, t, size=(max(1, round(h / k)), max(1, round(w / k))))
                return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return _affine(x, ang, s, t)

    def __repr__(self):
        return (f"RandomAffine(scale={self.scale}, degrees={self.degrees}, translate={self.translate}, "
                f"soften={self.soften})")


def _affine(x: Tensor, angle: Tensor, scale: Tensor, shift: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Per-image rotation (radians), zoom and shift (normalized units) via one grid_sample. CPU params in.

    size: output (h, w) (default: x's); a smaller size samples the same view more coarsely."""
    b, _, h, w = x.shape
    oh, ow = size or (h, w)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    ar = w / h  # rotate in pixel space, not in the unit square
    theta = torch.stack([
        torch.stack([cos, -sin / ar, shift[:, 0]], 1),
        torch.stack([sin * ar, cos, shift[:, 1]], 1)], 1).to(device=x.device, dtype=x.dtype, non_blocking=True)
    grid = F.affine_grid(theta, [b, x.shape[1], oh, ow], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        for t in self.transforms:
            x = t(x, g)
        return x

    def __repr__(self):
        return f"Compose({self.transforms})"


def standard_transforms() -> Compose:
    """Lucid's `standard_transforms`: pad 12, jitter 8, scale 0.9..1.1, rotate -10..10 degrees, jitter 4."""
    return Compose([
        Pad(12),
        Jitter(8),
        RandomScale([1 + (i - 5) / 50 for i in range(11)]),
        RandomRotate(list(range(-10, 11)) + [0] * 5),
        Jitter(4),
    ])


class RandomBlur:
    """Gaussian blur with sigma drawn uniformly from [0, max_sigma] (px); with probability `p`, else identity.

    Asks the objective to survive the loss of the finest detail (as after a rescale or blur)."""

    def __init__(self, max_sigma: float = 1.0, p: float = 0.5):
        self.max_sigma, self.p = float(max_sigma), float(p)

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        from cnnvis.optvis.regularizers import gaussian_blur

        u = torch.rand(2, generator=g)
        if float(u[0]) >= self.p:
            return x
        return gaussian_blur(x, max(0.05, float(u[1]) * self.max_sigma))

    def __repr__(self):
        return f"RandomBlur({self.max_sigma}, p={self.p})"
