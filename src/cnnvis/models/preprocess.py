"""Preprocessing: how a model wants its pixels. Images live in [0, 1] RGB everywhere in cnnvis;
`Preprocess.normalize` maps them to the model's input, differentiably."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from PIL import Image
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Input convention of a model.

    mean/std are in [0, 1] units and RGB order; `bgr=True` feeds channels in BGR order
    (Caffe/Keras VGG). `resize` is the shorter side before a centre crop of `crop` pixels.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    bgr: bool = False
    resize: int = 256
    crop: int = 224

    @classmethod
    def tf_lite(cls, resize: int = 256, crop: int = 224) -> "Preprocess":
        """TF-Lite scaling (pixel - 127) / 128 of the EfficientNet-Lite models."""
        return cls(mean=(127 / 255,) * 3, std=(128 / 255,) * 3, resize=resize, crop=crop)

    @classmethod
    def caffe_bgr(cls, mean_bgr_255=(104.00698793, 116.66876762, 122.67891434), **kw) -> "Preprocess":
        """Caffe VGG/HED: BGR order, minus the per-channel mean in 0-255 units, no scaling."""
        b, g, r = mean_bgr_255
        return cls(mean=(r / 255, g / 255, b / 255), std=(1 / 255,) * 3, bgr=True, **kw)

    def normalize(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> the model's input (B, 3, H, W)."""
        if self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0) and not self.bgr:
            return x
        mean, inv = _constants(self.mean, self.std, x.device, x.dtype)
        y = (x - mean) * inv
        return y.flip(1) if self.bgr else y

    def denormalize(self, y: Tensor) -> Tensor:
        """Inverse of `normalize`: model input -> RGB in [0, 1] (not clamped)."""
        if self.bgr:
            y = y.flip(1)
        mean = torch.tensor(self.mean, device=y.device, dtype=y.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=y.device, dtype=y.dtype).view(1, 3, 1, 1)
        return y * std + mean

    def module(self) -> nn.Module:
        """`normalize` as an nn.Module (for nn.Sequential(prep.module(), model))."""
        return _Normalize(self)

    def prepare(self, img: Image.Image, size: int | None = None) -> Tensor:
        """PIL image -> (1, 3, crop, crop) in [0, 1]: shorter side to `resize`, centre crop.

        With `size`, resize the shorter side to size * resize / crop and crop `size`."""
        from cnnvis.images import resize_center_crop

        crop = size or self.crop
        resize = round(crop * self.resize / self.crop)
        return resize_center_crop(img, resize, crop)


@lru_cache(maxsize=64)
def _constants(mean, std, device, dtype) -> tuple[Tensor, Tensor]:
    """(mean, 1/std) as (1, 3, 1, 1) tensors, built once per device and dtype (hot loops call normalize)."""
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    inv = 1.0 / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    return m.to(device, dtype), inv.to(device, dtype)


class _Normalize(nn.Module):
    def __init__(self, prep: Preprocess):
        super().__init__()
        self.prep = prep

    def forward(self, x: Tensor) -> Tensor:
        return self.prep.normalize(x)
