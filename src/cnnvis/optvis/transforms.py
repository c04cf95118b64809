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

    def scaled(self, f: float) -> "RandomAffine":
        """The same transform with its pixel amounts (translate, grow, crop) times `f` (rounded), for
        images `f` times the size the recipe was made for (zoom, angle and soften are relative already)."""
        return RandomAffine(self.scale, self.degrees, self.translate * f, self.soften, round(self.crop * f),
                            round(self.grow * f), self.padding)

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
    # inverse map in pixel units: src = M (P - c_view) + c_in + shift, M = rotation(angle) / scale;
    # A maps a view pixel (Px, Py, 1) to normalized source coordinates (align_corners=False)
    cos, sin = torch.cos(prm["angle"]) / prm["scale"], torch.sin(prm["angle"]) / prm["scale"]
    cvx, cvy, cix, ciy = (fw - 1) / 2, (fh - 1) / 2, (w - 1) / 2, (h - 1) / 2
    sx, sy = prm["shift"][:, 0], prm["shift"][:, 1]
    A = torch.stack([
        torch.stack([2 * cos / w, -2 * sin / w, (2 * (-cos * cvx + sin * cvy + cix + sx) + 1) / w - 1], 1),
        torch.stack([2 * sin / h, 2 * cos / h, (2 * (-sin * cvx - cos * cvy + ciy + sy) + 1) / h - 1], 1),
    ], 1)  # (B, 2, 3), float64
    off = prm["offset"].double()
    src = x - 0.5 if padding == "grey" else x
    mode = "zeros" if padding == "grey" else padding
    dev, dt = x.device, x.dtype

    def grid(theta: Tensor, size: tuple[int, int]) -> Tensor:
        return _affine_grid(theta.to(dev, dt), size)

    out = []
    plain = (~soft).nonzero().flatten()
    if len(plain):
        one = torch.ones(len(plain), dtype=torch.float64)
        theta = A[plain] @ _lattice(off[plain, 0], off[plain, 1], one, one, (oh, ow))
        xs = src if len(plain) == b else src[plain.to(dev)]
        out.append((plain, _grid_sample(xs, grid(theta, (oh, ow)), mode)))
    sft = soft.nonzero().flatten()
    if len(sft):
        n, k = len(sft), prm["factor"][sft]
        hc, wc = (fh / k).round().clamp(min=1), (fw / k).round().clamp(min=1)
        hmax, wmax = int(hc.max()), int(wc.max())
        zero = torch.zeros(n, dtype=torch.float64)
        # coarse lattice over the same view: coarse pixel q sits at view position (q + 0.5) * f / n - 0.5
        theta = A[sft] @ _lattice(zero, zero, fw / wc, fh / hc, (hmax, wmax))
        xs = src if n == b else src[sft.to(dev)]
        coarse = _grid_sample(xs, grid(theta, (hmax, wmax)), mode)
        if n == 1:  # one image: F.interpolate and a crop (cheaper than a second grid_sample)
            up = F.interpolate(coarse, size=(fh, fw), mode="bilinear", align_corners=False)
            ox, oy = int(off[sft[0], 0]), int(off[sft[0], 1])
            out.append((sft, up[..., oy:oy + oh, ox:ox + ow]))
            return _merge(out, dev, padding)
        # upsample back as F.interpolate does (coarse coordinate (P + 0.5) * n / f - 0.5, clamped to
        # [0, n - 1]) and crop; in the coarse tensor's normalized units
        L = _lattice(off[sft, 0] * wc / fw, off[sft, 1] * hc / fh, wc / fw, hc / fh, (oh, ow))
        norm = torch.zeros(n, 2, 3, dtype=torch.float64)
        norm[:, 0, 0], norm[:, 0, 2], norm[:, 1, 1], norm[:, 1, 2] = 2 / wmax, 1 / wmax - 1, 2 / hmax, 1 / hmax - 1
        g = grid(norm @ L, (oh, ow))
        lo = torch.tensor([1 / wmax - 1, 1 / hmax - 1], dtype=torch.float64)
        hi = torch.stack([(2 * wc - 1) / wmax - 1, (2 * hc - 1) / hmax - 1], 1)  # coarse pixel n - 1
        g = torch.minimum(torch.maximum(g, lo.to(dev, dt)), hi.to(dev, dt).view(n, 1, 1, 2))
        out.append((sft, _grid_sample(coarse, g, "border")))
    return _merge(out, dev, padding)


def _grid_sample(x: Tensor, grid: Tensor, padding: str) -> Tensor:
    """F.grid_sample (bilinear, align_corners=False). The CPU kernel runs the images of a batch in
    parallel, not the rows of one image: a batch smaller than the thread count is split into row
    blocks (the image repeated per block), so one image uses every thread too. Same values."""
    b, oh = x.shape[0], grid.shape[1]
    k = torch.get_num_threads() // b if x.device.type == "cpu" and oh >= 64 else 1
    while k > 1 and oh % k:
        k -= 1
    if k < 2:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    c, h, w = x.shape[1:]
    xs = x.unsqueeze(1).expand(b, k, c, h, w).reshape(b * k, c, h, w)
    y = F.grid_sample(xs, grid.reshape(b * k, oh // k, *grid.shape[2:]), mode="bilinear", padding_mode=padding,
                      align_corners=False)
    return y.view(b, k, c, oh // k, -1).transpose(1, 2).reshape(b, c, oh, -1)


def _merge(out: list, dev, padding: str) -> Tensor:
    """[(image indices, images)] -> the batch in its original order."""
    if len(out) == 1:
        y = out[0][1]
    else:
        order = torch.cat([i for i, _ in out])
        y = torch.cat([t for _, t in out])[torch.argsort(order).to(dev)]
    return y + 0.5 if padding == "grey" else y


def _affine_grid(theta: Tensor, size: tuple[int, int]) -> Tensor:
    """F.affine_grid(theta, (n, 1, h, w), align_corners=False) as one broadcast add: the grid is
    theta[:, :, 0] u + theta[:, :, 1] v + theta[:, :, 2] over the normalized pixel centres u, v
    (affine_grid's (h*w, 3) @ (3, 2) matmul is slow for such thin matrices)."""
    (h, w), n = size, theta.shape[0]
    u = (torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1
    v = (torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1
    xu = (theta[:, :, 0, None] * u).transpose(1, 2)                         # (n, w, 2)
    yv = (theta[:, :, 1, None] * v + theta[:, :, 2, None]).transpose(1, 2)  # (n, h, 2)
    return xu.unsqueeze(1) + yv.unsqueeze(2)                                # (n, h, w, 2)


def _lattice(ox: Tensor, oy: Tensor, sx: Tensor, sy: Tensor, size: tuple[int, int]) -> Tensor:
    """(n, 3, 3): affine_grid's normalized output coordinates of `size` -> view pixels
    P = o + s * (q + 0.5) - 0.5 for output pixel q (per image offset o and spacing s)."""
    hh, ww = size
    L = torch.zeros(len(ox), 3, 3, dtype=torch.float64)
    L[:, 0, 0], L[:, 0, 2] = sx * ww / 2, ox + sx * ww / 2 - 0.5
    L[:, 1, 1], L[:, 1, 2] = sy * hh / 2, oy + sy * hh / 2 - 0.5
    L[:, 2, 2] = 1
    return L


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
