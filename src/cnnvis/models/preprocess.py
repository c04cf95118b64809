"""Preprocessing: how a model wants its pixels. Images live in [0, 1] everywhere in cnnvis
(RGB for 3-channel models, grey for 1-channel ones); `Preprocess.normalize` maps them to the
model's input, differentiably. The channel count C is `len(mean)`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from PIL import Image
from torch import Tensor, nn

from cnnvis.errors import CnnvisError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Input convention of a model with C = len(mean) channels.

    mean/std: one value per channel, in [0, 1] units (RGB order for C = 3); the model gets
    (x - mean) / std. `bgr=True` feeds 3 channels in BGR order (Caffe/Keras VGG). `resize` is
    the shorter side before a centre crop of `crop` pixels. See also `Preprocess.scale_offset`.
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    bgr: bool = False
    resize: int = 256
    crop: int = 224

    def __post_init__(self) -> None:
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if not mean or len(mean) != len(std):
            raise CnnvisError(f"Preprocess needs one mean and one std per channel, got mean={mean} and std={std}")
        if any(v == 0 for v in std):
            raise CnnvisError(f"Preprocess std must not hold zeros, got std={std}")
        if self.bgr and len(mean) != 3:
            raise CnnvisError(f"Preprocess bgr=True needs 3 channels, got {len(mean)}")

    @property
    def channels(self) -> int:
        """C, the number of input channels."""
        return len(self.mean)

    @property
    def pil_mode(self) -> str:
        """PIL mode images are converted to: 'L' (C=1), 'RGB' (C=3), 'RGBA' (C=4)."""
        return _PIL_MODES.get(self.channels, "")

    @classmethod
    def identity(cls, channels: int = 3, *, resize: int = 256, crop: int = 224) -> "Preprocess":
        """No normalization: the model gets the [0, 1] image as is."""
        return cls(mean=(0.0,) * channels, std=(1.0,) * channels, resize=resize, crop=crop)

    @classmethod
    def scale_offset(cls, scale, offset, **kw) -> "Preprocess":
        """Model input = x * scale + offset per channel (x in [0, 1]); e.g. scale=(2,), offset=(-1,)."""
        scale, offset = tuple(scale), tuple(offset)
        if len(scale) != len(offset) or any(v == 0 for v in scale):
            raise CnnvisError(f"scale_offset needs one non-zero scale and one offset per channel, got {scale}, {offset}")
        return cls(mean=tuple(-o / s for s, o in zip(scale, offset)), std=tuple(1 / s for s in scale), **kw)

    @classmethod
    def tf_lite(cls, resize: int = 256, crop: int = 224) -> "Preprocess":
        """TF-Lite scaling (pixel - 127) / 128 of the EfficientNet-Lite models."""
        return cls(mean=(127 / 255,) * 3, std=(128 / 255,) * 3, resize=resize, crop=crop)

    @classmethod
    def caffe_bgr(cls, mean_bgr_255=(104.00698793, 116.66876762, 122.67891434), **kw) -> "Preprocess":
        """Caffe VGG/HED: BGR order, minus the per-channel mean in 0-255 units, no scaling."""
        b, g, r = mean_bgr_255
        return cls(mean=(r / 255, g / 255, b / 255), std=(1 / 255,) * 3, bgr=True, **kw)

    def check(self, x: Tensor, what: str = "input") -> None:
        """Raise a CnnvisError unless `x` is (B, C, H, W) with this model's C channels."""
        c = self.channels
        if x.dim() != 4 or x.shape[1] != c:
            got = f"{x.shape[1]} channel(s)" if x.dim() == 4 else f"{x.dim()} dimensions"
            if c == 3 and x.dim() == 4 and x.shape[1] == 1:
                fix = "pass a 3-channel RGB image (PIL: img.convert('RGB'); tensor: x.expand(-1, 3, -1, -1))"
            elif c == 1 and x.dim() == 4 and x.shape[1] == 3:
                fix = "pass a 1-channel grey image (PIL: img.convert('L'); tensor: x.mean(1, keepdim=True))"
            else:
                fix = f"pass a (B, {c}, H, W) tensor"
            raise CnnvisError(f"{what} has shape {tuple(x.shape)} ({got}), but the model takes "
                              f"(B, {c}, H, W) images with {c} channel(s); {fix}")

    def normalize(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> the model's input (B, C, H, W); another C raises a CnnvisError
        (never a silent broadcast). No normalization (mean 0, std 1): x as is, any shape."""
        if _is_identity(self.mean, self.std) and not self.bgr:
            return x  # nothing to broadcast: the module gets exactly x (and checks it itself)
        if x.dim() != 4 or x.shape[1] != len(self.mean):
            self.check(x)
        mean, inv = _constants(self.mean, self.std, x.device, x.dtype)
        y = (x - mean) * inv
        return y.flip(1) if self.bgr else y

    def denormalize(self, y: Tensor) -> Tensor:
        """Inverse of `normalize`: model input -> RGB in [0, 1] (not clamped)."""
        if self.bgr:
            y = y.flip(1)
        c = len(self.mean)
        mean = torch.tensor(self.mean, device=y.device, dtype=y.dtype).view(1, c, 1, 1)
        std = torch.tensor(self.std, device=y.device, dtype=y.dtype).view(1, c, 1, 1)
        return y * std + mean

    def module(self) -> nn.Module:
        """`normalize` as an nn.Module (for nn.Sequential(prep.module(), model))."""
        return _Normalize(self)

    def prepare(self, img: Image.Image, size: int | None = None) -> Tensor:
        """PIL image -> (1, C, crop, crop) in [0, 1]: shorter side to `resize`, centre crop.

        The image is converted to grey ('L') for a 1-channel model, to RGB for a 3-channel one.
        With `size`, resize the shorter side to size * resize / crop and crop `size`."""
        from cnnvis.images import resize_center_crop

        if not self.pil_mode:
            raise CnnvisError(f"a PIL image cannot feed a {self.channels}-channel model; pass a (1, {self.channels}, H, W) tensor")
        crop = size or self.crop
        resize = round(crop * self.resize / self.crop)
        return resize_center_crop(img, resize, crop, mode=self.pil_mode)


_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


@lru_cache(maxsize=64)
def _is_identity(mean, std) -> bool:
    return all(m == 0.0 for m in mean) and all(s == 1.0 for s in std)


@lru_cache(maxsize=64)
def _constants(mean, std, device, dtype) -> tuple[Tensor, Tensor]:
    """(mean, 1/std) as (1, C, 1, 1) tensors, built once per device and dtype (hot loops call normalize)."""
    c = len(mean)
    m = torch.tensor(mean, dtype=torch.float64).view(1, c, 1, 1)
    inv = 1.0 / torch.tensor(std, dtype=torch.float64).view(1, c, 1, 1)
    return m.to(device, dtype), inv.to(device, dtype)


class _Normalize(nn.Module):
    def __init__(self, prep: Preprocess):
        super().__init__()
        self.prep = prep

    def forward(self, x: Tensor) -> Tensor:
        return self.prep.normalize(x)
