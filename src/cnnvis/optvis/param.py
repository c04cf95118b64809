"""Image parameterizations: nn.Modules whose forward() returns a (B, C, H, W) image in [0, 1].

    PixelImage(1, 224, 224)                 # plain pixels (Erhan 2009, Simonyan 2013, Chollet 2016)
    PixelImage.from_image(photo)            # start from a photo (DeepDream), any C x H x W
    FourierImage(16, 224, 224)              # Fourier spectrum + decorrelated colour + sigmoid (Olah et al. 2017)
    FourierImage(1, 28, 28, channels=1)     # grey: plain per-channel spectrum (no colour decorrelation)
    FourierImage.from_image(photo)          # exact inverse: forward() returns the photo

Every parameterization has `shape` (B, C, H, W), `from_image(x, **kw)` and `resized(h, w)`
(the same image, resampled, as a new parameterization: used by octaves). Colour decorrelation
applies only where C = 3. Random initialisation takes an explicit CPU torch.Generator, or a list
of one generator per image (optvis.seeding) so that each image's start is its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# square root of the ImageNet colour correlation matrix (Lucid), columns scaled to max norm 1
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                            [0.27, 0.00, -0.05],
                            [0.27, -0.09, 0.03]])
COLOR_CORRELATION = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


def _randn(shape, sd: float, generator) -> Tensor:
    """(B, *rest) normal noise of std sd; with a list of generators, image b's slice from generator b only."""
    if isinstance(generator, (list, tuple)):
        from cnnvis.optvis.seeding import normal

        return normal(generator, shape[1:], shape[0]) * sd
    return torch.randn(*shape, generator=generator) * sd


class ImageParam(nn.Module):
    """Base class: `forward() -> (B, C, H, W)` in [0, 1] (PixelImage may leave it between steps)."""

    shape: tuple[int, int, int, int]

    @classmethod
    def from_image(cls, x: Tensor, **kw) -> "ImageParam":  # pragma: no cover - abstract
        raise NotImplementedError

    def resized(self, h: int, w: int) -> "ImageParam":
        """The current image resampled to h x w (bilinear), as a new parameterization of the same kind."""
        with torch.no_grad():
            x = self().detach()
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=h < x.shape[2])
        return type(self).from_image(x.clamp(0, 1), **self._kw())

    def _kw(self) -> dict:
        return {}


class PixelImage(ImageParam):
    """Plain pixels (B, C, H, W) in [0, 1], starting at grey 0.5 + noise of std `sd`.

    The image is not squashed: keep it in range with the BoundedRange regularizer (a projection).
    """

    def __init__(self, batch: int = 1, h: int = 224, w: int | None = None, *, channels: int = 3, sd: float = 0.01,
                 mean: float = 0.5, generator=None, init: Tensor | None = None, device=None, copy: bool = True):
        super().__init__()
        w = h if w is None else w
        if init is None:
            init = mean + _randn((batch, channels, h, w), sd, generator)
        init = init.detach()
        if copy or init.dtype != torch.float32 or (device is not None and init.device != torch.device(device)):
            init = init.clone().float().to(device)
        self.pixels = nn.Parameter(init)
        self.shape = tuple(self.pixels.shape)

    @classmethod
    def from_image(cls, x: Tensor, *, copy: bool = True, **kw) -> "PixelImage":
        """(B, C, H, W) or (C, H, W) in [0, 1] -> a PixelImage starting exactly there.

        copy=False optimizes x's own memory in place (no second full-size copy; DeepDream)."""
        x = x if x.dim() == 4 else x.unsqueeze(0)
        return cls(x.shape[0], x.shape[2], x.shape[3], channels=x.shape[1], init=x, device=x.device, copy=copy)

    def forward(self) -> Tensor:
        return self.pixels


class FourierImage(ImageParam):
    """Lucid's image: a (B, C, H, W//2+1) complex spectrum scaled by 1/frequency**decay_power, inverse
    FFT, decorrelated colour (ImageNet colour correlation; only when C = 3 and `decorrelate`), then
    a sigmoid into [0, 1].

    Gradient steps on this spectrum move low frequencies first and all colours together, which
    removes most of the high-frequency adversarial noise of pixel-space ascent (Olah et al. 2017).
    """

    def __init__(self, batch: int = 1, h: int = 224, w: int | None = None, *, channels: int = 3, sd: float = 0.01,
                 decay_power: float = 1.0, decorrelate: bool = True, generator=None, device=None):
        super().__init__()
        w = h if w is None else w
        self.shape = (batch, channels, h, w)
        self.decay_power, self.decorrelate = decay_power, decorrelate and channels == 3
        fy = torch.fft.fftfreq(h).view(-1, 1)
        fx = torch.fft.rfftfreq(w).view(1, -1)
        freqs = (fx * fx + fy * fy).sqrt()
        scale = 1.0 / freqs.clamp_min(1.0 / max(h, w)) ** decay_power
        # the 1/4 keeps Lucid's image statistics (its "magic" constant)
        # (1, 1, H, 2 * (W//2+1)): real and imaginary parts side by side, so the product with the
        # spectrum runs over a contiguous last dimension (vectorized), not a broadcast one of size 2
        self.register_buffer("scale", (scale / 4.0).repeat_interleave(2, 1).view(1, 1, h, -1).to(device),
                             persistent=False)
        self.register_buffer("color", COLOR_CORRELATION.t().contiguous().to(device), persistent=False)
        self.spectrum = nn.Parameter(_randn((batch, channels, h, w // 2 + 1, 2), sd, generator).to(device))

    def _kw(self) -> dict:
        return {"decay_power": self.decay_power, "decorrelate": self.decorrelate}

    def forward(self) -> Tensor:
        _, _, h, w = self.shape
        b, c = self.spectrum.shape[:2]
        spec = (self.spectrum.view(b, c, h, -1) * self.scale).view(self.spectrum.shape)
        x = torch.fft.irfft2(torch.view_as_complex(spec), s=(h, w), norm="ortho")
        if self.decorrelate:  # out[:, d] = sum_c color[c, d] x[:, c], as one matmul without copies
            x = torch.matmul(self.color.t(), x.view(b, c, -1)).view(b, c, h, w)
        return torch.sigmoid(x)

    @classmethod
    def from_image(cls, x: Tensor, *, decay_power: float = 1.0, decorrelate: bool = True, eps: float = 1e-3,
                   **kw) -> "FourierImage":
        """(B, C, H, W) in [0, 1] -> a FourierImage whose forward() returns x (clamped to [eps, 1-eps])."""
        x = (x if x.dim() == 4 else x.unsqueeze(0)).detach().float()
        b, c, h, w = x.shape
        p = cls(b, h, w, channels=c, sd=0.0, decay_power=decay_power, decorrelate=decorrelate, device=x.device)
        y = torch.logit(x.clamp(eps, 1 - eps))
        if p.decorrelate:
            y = torch.einsum("bdhw,dc->bchw", y, torch.linalg.inv(p.color))
        spec = torch.view_as_real(torch.fft.rfft2(y, norm="ortho")) / p.scale.view(1, 1, h, -1, 2)
        with torch.no_grad():
            p.spectrum.copy_(spec)
        return p


def make_param(kind: str, batch: int, h: int, w: int, generator=None, device=None, channels: int = 3,
               **kw) -> ImageParam:
    """'pixel' | 'fourier' -> a new (batch, channels, h, w) parameterization; generator: one, or one per image."""
    from cnnvis.errors import CnnvisError

    if kind == "pixel":
        return PixelImage(batch, h, w, channels=channels, generator=generator, device=device, **kw)
    if kind == "fourier":
        return FourierImage(batch, h, w, channels=channels, generator=generator, device=device, **kw)
    raise CnnvisError(f"unknown parameterization {kind!r}; use 'pixel' or 'fourier'")
