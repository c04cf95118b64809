"""Transformation robustness: random, differentiable image transforms applied before every forward pass.

A transform is any callable `t(x, gens) -> x` on a (B, C, H, W) tensor, where `gens` holds one
CPU torch.Generator per image (optvis.seeding) or one generator for all. Each image's random
parameters come from its own generator only, so an image is transformed the same way whatever
the batch it is in; the images of a batch are still transformed together (one grid_sample).

    t = RandomAffine(scale=(0.9, 1.1), degrees=10, translate=4, crop=4)
    y = t(x, image_generators(0, keys))

Sources: jitter (Mordvintsev et al. 2015, DeepDream), padding, scaling and rotation
(Olah et al. 2017, "Feature Visualization"; Lucid's `standard_transforms`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnvis.optvis.seeding import Generators, uniform

Transform = Callable[[Tensor, Generators], Tensor]


def _offsets(u: Tensor, d: int) -> Tensor:
    """Uniform [0, 1) -> integers in [0, d]."""
    return (u * (d + 1)).floor().clamp_(max=d).long()


def _gather(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Per-image pixel selection: out[b, :, i, j] = x[b, :, rows[b, i], cols[b, j]] (exact copies)."""
    b = x.shape[0]
    if b == 1 or (bool((rows == rows[:1]).all()) and bool((cols == cols[:1]).all())):
        r, c = rows[0], cols[0]
        if bool((r[1:] - r[:-1] == 1).all()) and bool((c[1:] - c[:-1] == 1).all()):
            return x[..., int(r[0]):int(r[-1]) + 1, int(c[0]):int(c[-1]) + 1]  # a plain crop: a view
        return x[:, :, r][..., c]
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    out = x[bi, :, rows.to(x.device).unsqueeze(2), cols.to(x.device).unsqueeze(1)]  # (B, h, w, C)
    return out.permute(0, 3, 1, 2)


class Jitter:
    """Random crop that removes `d` pixels in total from each side pair: (H, W) -> (H-d, W-d)."""

    def __init__(self, d: int):
        self.d = int(d)

    def __call__(self, x: Tensor, gens: Generators) -> Tensor:
        if self.d <= 0:
            return x
        b, _, h, w = x.shape
        o = _offsets(uniform(gens, 2, b), self.d)
        rows = o[:, :1] + torch.arange(h - self.d)
        cols = o[:, 1:] + torch.arange(w - self.d)
        return _gather(x, rows, cols)

    def __repr__(self):
        return f"Jitter({self.d})"


class Roll:
    """Random circular shift by up to `d` pixels in each direction (same size; DeepDream's tiling shift)."""

    def __init__(self, d: int):
        self.d = int(d)

    def shifts(self, gens: Generators, b: int) -> Tensor:
        """(b, 2) integer shifts (dy, dx) in [-d, d]."""
        return _offsets(uniform(gens, 2, b), 2 * self.d) - self.d

    def __call__(self, x: Tensor, gens: Generators) -> Tensor:
        b, _, h, w = x.shape
        s = self.shifts(gens, b)
        if b == 1:
            return torch.roll(x, (int(s[0, 0]), int(s[0, 1])), dims=(-2, -1))
        rows = (torch.arange(h) - s[:, :1]) % h
        cols = (torch.arange(w) - s[:, 1:]) % w
        return _gather(x, rows, cols)

    def __repr__(self):
        return f"Roll({self.d})"


class Pad:
    """Pad `p` pixels on every side: mode 'constant' (grey `value`), 'reflect' or 'replicate'."""

    def __init__(self, p: int, mode: str = "constant", value: float = 0.5):
        self.p, self.mode, self.value = int(p), mode, value

    def __call__(self, x: Tensor, gens: Generators) -> Tensor:
        if self.p <= 0:
            return x
        p = (self.p,) * 4
        return F.pad(x, p, mode=self.mode, value=self.value) if self.mode == "constant" else F.pad(x, p, mode=self.mode)

    def __repr__(self):
        return f"Pad({self.p}, {self.mode})"


class RandomAffine:
    """Zoom, rotation, shift and a random crop in ONE bilinear resampling, drawn per image.

    scale: (lo, hi) zoom range; degrees: max |angle|; translate: max shift in pixels.
    grow: the view is `grow` pixels larger than the input (pixels from outside come from
    `padding`: 'reflection', 'border' or 'grey'); crop: then a random (H+grow-crop, W+grow-crop)
    window of it. soften: (p, f): with probability p an image is sampled on a grid up to f times
    coarser and bilinearly upsampled back, a random loss of fine detail at little cost.
    Output (B, C, H + grow - crop, W + grow - crop). Eight random numbers per image per call.
    """

    def __init__(self, scale: tuple[float, float] = (0.95, 1.05), degrees: float = 5.0, translate: float = 0.0,
                 soften: tuple[float, float] = (0.0, 1.0), crop: int = 0, grow: int = 0, padding: str = "reflection"):
        if padding not in ("reflection", "border", "grey"):
            raise ValueError(f"padding must be 'reflection', 'border' or 'grey', got {padding!r}")
        self.scale, self.degrees, self.translate = (float(scale[0]), float(scale[1])), float(degrees), float(translate)
        self.soften = (float(soften[0]), float(soften[1]))
        self.crop, self.grow, self.padding = int(crop), int(grow), padding

    def params(self, gens: Generators, b: int) -> dict[str, Tensor]:
        """Per-image parameters (CPU): scale (B,), angle (B,) radians, shift (B, 2) px (x, y),
        offset (B, 2) crop offsets (x, y), soft (B,) bool, factor (B,) coarsening >= 1."""
        u = uniform(gens, 8, b).double()
        lo, hi = self.scale
        p, f = self.soften
        return {"scale": lo + (hi - lo) * u[:, 0], "angle": (2 * u[:, 1] - 1) * math.radians(self.degrees),
                "shift": (2 * u[:, 2:4] - 1) * self.translate, "offset": _offsets(u[:, 4:6], self.crop),
                "soft": (u[:, 6] < p) & (f > 1), "factor": 1 + u[:, 7] * (f - 1)}

    def __call__(self, x: Tensor, gens: Generators) -> Tensor:
        b, _, h, w = x.shape
        return warp(x, self.params(gens, b), grow=self.grow, crop=self.crop, padding=self.padding)

    def __repr__(self):
        return (f"RandomAffine(scale={self.scale}, degrees={self.degrees}, translate={self.translate}, "
                f"soften={self.soften}, crop={self.crop}, grow={self.grow}, padding={self.padding!r})")


def warp(x: Tensor, prm: dict[str, Tensor], *, grow: int = 0, crop: int = 0, padding: str = "reflection") -> Tensor:
    """Apply per-image affine parameters (see RandomAffine.params) with at most three grid_samples
    per batch: one for the plain images, two (coarse grid, then upsampling) for the softened ones."""
    b, _, h, w = x.shape
    fh, fw = h + grow, w + grow        # the full view
    oh, ow = fh - crop, fw - crop      # the output window
    soft = prm["soft"]
    # inverse map, pixel units: src = M (P - c_view) + c_in + shift, M = rotation(angle) / scale
    cos, sin = torch.cos(prm["angle"]) / prm["scale"], torch.sin(prm["angle"]) / prm["scale"]
    cvx, cvy, cix, ciy = (fw - 1) / 2, (fh - 1) / 2, (w - 1) / 2, (h - 1) / 2
    # normalized source coordinates (align_corners=False): n = (2 src + 1) / size - 1
    ax = torch.stack([2 * cos / w, -2 * sin / w,
                      (2 * (-cos * cvx + sin * cvy + cix + prm["shift"][:, 0]) + 1) / w - 1], 1)
    ay = torch.stack([2 * sin / h, 2 * cos / h,
                      (2 * (-sin * cvx - cos * cvy + ciy + prm["shift"][:, 1]) + 1) / h - 1], 1)
    src = x - 0.5 if padding == "grey" else x
    mode = "zeros" if padding == "grey" else padding
    off = prm["offset"].double()
    dev, dt = x.device, x.dtype

    def sample(idx: Tensor, px: Tensor, py: Tensor) -> Tensor:
        """grid_sample of images idx at view positions px (n, W'), py (n, H')."""
        gx = _plane(ax[idx], px, py, dev, dt)
        gy = _plane(ay[idx], px, py, dev, dt)
        xs = src if len(idx) == b else src[idx.to(dev)]
        return F.grid_sample(xs, torch.stack([gx, gy], -1), mode="bilinear", padding_mode=mode, align_corners=False)

    out = []
    plain = (~soft).nonzero().flatten()
    if len(plain):
        px = off[plain, :1] + torch.arange(ow, dtype=torch.float64)
        py = off[plain, 1:] + torch.arange(oh, dtype=torch.float64)
        out.append((plain, sample(plain, px, py)))
    sft = soft.nonzero().flatten()
    if len(sft):
        k = prm["factor"][sft]
        hc = (fh / k).round().clamp(min=1)
        wc = (fw / k).round().clamp(min=1)
        hmax, wmax = int(hc.max()), int(wc.max())
        # coarse lattice over the same view: coarse pixel q sits at view position (q + 0.5) * f / n - 0.5
        qx = (torch.arange(wmax, dtype=torch.float64) + 0.5) * (fw / wc).unsqueeze(1) - 0.5
        qy = (torch.arange(hmax, dtype=torch.float64) + 0.5) * (fh / hc).unsqueeze(1) - 0.5
        coarse = sample(sft, qx, qy)
        # upsample back (bilinear, like F.interpolate) and crop: view pixel P -> coarse coordinate
        ux = ((off[sft, :1] + torch.arange(ow, dtype=torch.float64) + 0.5) * (wc / fw).unsqueeze(1) - 0.5)
        uy = ((off[sft, 1:] + torch.arange(oh, dtype=torch.float64) + 0.5) * (hc / fh).unsqueeze(1) - 0.5)
        ux = torch.minimum(ux.clamp(min=0), (wc - 1).unsqueeze(1))
        uy = torch.minimum(uy.clamp(min=0), (hc - 1).unsqueeze(1))
        gx = ((2 * ux + 1) / wmax - 1).to(dev, dt)
        gy = ((2 * uy + 1) / hmax - 1).to(dev, dt)
        n = len(sft)
        grid = torch.stack([gx.unsqueeze(1).expand(n, oh, ow), gy.unsqueeze(2).expand(n, oh, ow)], -1)
        out.append((sft, F.grid_sample(coarse, grid, mode="bilinear", padding_mode="border", align_corners=False)))
    if len(out) == 1:
        y = out[0][1]
    else:
        order = torch.cat([i for i, _ in out])
        y = torch.cat([t for _, t in out])[torch.argsort(order).to(dev)]
    return y + 0.5 if padding == "grey" else y


def _plane(a: Tensor, px: Tensor, py: Tensor, dev, dt) -> Tensor:
    """(n, 3) coefficients, (n, W') and (n, H') positions -> (n, H', W') a0 * px + a1 * py + a2."""
    a = a.to(dev, dt)
    px, py = px.to(dev, dt), py.to(dev, dt)
    return (a[:, 0, None, None] * px[:, None, :] + (a[:, 1, None] * py + a[:, 2, None])[:, :, None])


def _no_soft(b: int) -> dict[str, Tensor]:
    return {"shift": torch.zeros(b, 2, dtype=torch.float64), "offset": torch.zeros(b, 2, dtype=torch.long),
            "soft": torch.zeros(b, dtype=torch.bool), "factor": torch.ones(b, dtype=torch.float64)}


class RandomScale:
    """Zoom by a factor drawn per image from `scales` (same size; pixels from outside are reflected)."""

    def __init__(self, scales: Sequence[float]):
        self.scales = [float(s) for s in scales]

    def __call__(self, x: Tensor, gens: Generators) -> Tensor:
        b = x.shape[0]
        i = _offsets(uniform(gens, 1, b)[:, 0], len(self.scales) - 1)
        s = torch.tensor(self.scales, dtype=torch.float64)[i]
        if bool((s == 1).all()):
            return x
        return warp(x, {"scale": s, "angle": torch.zeros(b, dtype=torch.float64), **_no_soft(b)})

    def __repr__(self):
        return f"RandomScale({self.scales})"


class RandomRotate:
    """Rotate by an angle (degrees) drawn per image from `angles`, same size, border pixels reflected."""

    def __init__(self, angles: Sequence[float]):
        self.angles = [float(a) for a in angles]

    def __call__(self, x: Tensor, gens: Generators) -> Tensor:
        b = x.shape[0]
        i = _offsets(uniform(gens, 1, b)[:, 0], len(self.angles) - 1)
        a = torch.tensor(self.angles, dtype=torch.float64)[i]
        if bool((a == 0).all()):
            return x
        return warp(x, {"scale": torch.ones(b, dtype=torch.float64), "angle": torch.deg2rad(a), **_no_soft(b)})

    def __repr__(self):
        return f"RandomRotate({self.angles})"


class Compose:
    """Apply transforms in order, all drawing from the same per-image generators."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x: Tensor, gens: Generators) -> Tensor:
        for t in self.transforms:
            x = t(x, gens)
        return x

    def __repr__(self):
        return f"Compose({self.transforms})"


def standard_transforms() -> RandomAffine:
    """Lucid's `standard_transforms` (pad 12 grey, jitter 8, scale 0.9..1.1, rotate +-10 degrees,
    jitter 4) as one resampling per image: the zoom keeps the size, output (H + 12, W + 12)."""
    return RandomAffine(scale=(0.9, 1.1), degrees=10, translate=4, grow=16, crop=4, padding="grey")


class RandomBlur:
    """Gaussian blur with sigma drawn per image from [0, max_sigma] (px), with probability `p`, else identity.

    Asks the objective to survive the loss of the finest detail (as after a rescale or blur).
    The batch is blurred in one grouped convolution with a kernel per image."""

    def __init__(self, max_sigma: float = 1.0, p: float = 0.5):
        self.max_sigma, self.p = float(max_sigma), float(p)

    def __call__(self, x: Tensor, gens: Generators) -> Tensor:
        b, c, h, w = x.shape
        u = uniform(gens, 2, b)
        on = u[:, 0] < self.p
        if not bool(on.any()) or self.max_sigma <= 0:
            return x
        sig = (u[:, 1] * self.max_sigma).clamp(min=0.05).double()
        r = max(1, min(math.ceil(3 * self.max_sigma), h - 1, w - 1))
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (t / sig[:, None]) ** 2)
        k = k / k.sum(1, keepdim=True)
        k[~on] = (t == 0).double()  # identity for the images not blurred
        k = k.to(x.device, x.dtype).repeat_interleave(c, 0)  # (B*C, 2r+1)
        y = x.reshape(1, b * c, h, w)
        y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
        return y.view(b, c, h, w)

    def __repr__(self):
        return f"RandomBlur({self.max_sigma}, p={self.p})"
