"""Where a unit of a layer looks in the input: receptive field size, stride and offset.

    rf = receptive_field(vm, "conv2", (28, 28))   # RF(size=14, stride=2, start=1.5) for mnist_cnn
    rf.box(y, x, (28, 28))                         # (top, left, bottom, right), inclusive, clipped

The field is traced through the Conv2d / max- and average-pool modules that run before the
layer (execution order, leaf modules), with the padding each really used: timm's 'same'
convolutions (Conv2dSame) pad by an amount that depends on the input size, read from the
input the module got. Per module: start += ((k - 1) * d / 2 - pad) * stride_so_far;
size += (k - 1) * d * stride_so_far; stride_so_far *= s. The centre of output unit (y, x) is
at input pixel start + y * stride (pixel indices). On a chain (VGG, the MNIST net) this is
exact; a residual block's skip path sees less than its main path, so the main path's field is
the union (EfficientNet). `cnnvis.optvis.filters.receptive_fields` gives the same sizes (it
plans filter renders and needs no offsets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cnnvis.errors import CnnvisError


@dataclass(frozen=True)
class RF:
    """Receptive field of a layer's units: `size` px a side, `stride` px between neighbouring
    units, `start` = centre (pixel index, may be fractional) of unit (0, 0)."""

    size: float
    stride: float
    start: float

    def box(self, y: int, x: int, hw: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) input pixels (inclusive) seen by unit (y, x), clipped to `hw` if given."""
        half = (self.size - 1) / 2
        cy, cx = self.start + y * self.stride, self.start + x * self.stride
        t, b = math.floor(cy - half + 1e-9), math.ceil(cy + half - 1e-9)
        l_, r = math.floor(cx - half + 1e-9), math.ceil(cx + half - 1e-9)
        if hw is not None:
            t, l_ = max(0, t), max(0, l_)
            b, r = min(hw[0] - 1, b), min(hw[1] - 1, r)
        return int(t), int(l_), int(b), int(r)

    def to_dict(self) -> dict:
        return {"size": self.size, "stride": self.stride, "start": self.start}


def _two(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _same_pad(n: int, k: int, s: int, d: int) -> int:
    """Total 'same' padding of one side length (TensorFlow's rule); the top/left gets half, rounded down."""
    return max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)


def receptive_field(vm, layer: str, hw: tuple[int, int] | None = None) -> RF:
    """RF of `layer`'s output units (vertical axis; our nets are square) for (H, W) = `hw` inputs
    (default: the model's input size). One probe forward under no_grad; hooks removed after."""
    from cnnvis.layers import resolve_layer
    from cnnvis.utils import model_guard

    target = resolve_layer(vm, layer)
    c = vm.input_shape[0]
    h, w = hw or vm.input_shape[1:]
    steps: list[tuple[nn.Module, tuple]] = []
    handles = []
    module = vm.model

    def record(mod, inp, out):
        x = inp[0] if inp else None
        steps.append((mod, tuple(x.shape[-2:]) if torch.is_tensor(x) and x.dim() == 4 else None))

    class _Stop(Exception):
        pass

    def stop(mod, inp, out):
        raise _Stop

    try:
        for name, m in module.named_modules():
            if not list(m.children()):
                handles.append(m.register_forward_hook(record))
        handles.append(module.get_submodule(target).register_forward_hook(stop))
        with model_guard(module), torch.no_grad():
            p = next(module.parameters(), None)
            x = torch.full((1, c, h, w), 0.5, device=p.device if p is not None else "cpu")
            try:
                module(vm.preprocess.normalize(x))
            except _Stop:
                pass
    finally:
        for hd in handles:
            hd.remove()
    size, stride, start = 1.0, 1.0, 0.0
    for m, in_hw in steps:
        if isinstance(m, nn.Conv2d):
            k, s, d = m.kernel_size[0], m.stride[0], m.dilation[0]
            if type(m).__name__ == "Conv2dSame":
                pad = _same_pad(in_hw[0], k, s, d) // 2 if in_hw else 0
            elif isinstance(m.padding, str):  # 'same' (stride 1) or 'valid'
                pad = (k - 1) * d // 2 if m.padding == "same" else 0
            else:
                pad = m.padding[0]
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            k, s = _two(m.kernel_size)[0], _two(m.stride or m.kernel_size)[0]
            d = _two(getattr(m, "dilation", 1))[0]
            pad = _two(m.padding)[0]
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and in_hw is not None:
            raise CnnvisError(f"layer {layer!r} comes after an adaptive pool: its units have no fixed receptive field")
        else:
            continue
        start += ((k - 1) * d / 2 - pad) * stride
        size += (k - 1) * d * stride
        stride *= s
    return RF(size, stride, start)
