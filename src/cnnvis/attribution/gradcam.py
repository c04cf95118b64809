"""Grad-CAM (Selvaraju et al. 2017) and Guided Grad-CAM at any layer with spatial maps.

    cam = GradCAM(vm, layer='conv5_3').attribute(x, 'pelican')   # (B, 1, H, W) >= 0, input size
    GradCAM(vm).attribute(x)        # default layer: the last conv's output (after its BN/ReLU)

cam = relu(sum_k w_k A_k) with w_k = mean over space of d score / d A_k, bilinearly upsampled
(half-pixel centres, as OpenCV) to the input size. Not min-max scaled: `map` is, for display.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnvis.attribution.base import Attribution
from cnnvis.attribution.modified_relu import RELU_LIKE, GuidedBackprop
from cnnvis.errors import CnnvisError

_PASS_THROUGH = (nn.BatchNorm2d, nn.Identity, nn.Dropout, nn.Dropout2d, *RELU_LIKE)


def default_cam_layer(model, input_size: int = 224) -> str:
    """The last Conv2d with more than one output channel, followed through the norm/activation
    modules that come right after it with the same output shape (VGG: relu5_3; EfficientNet: bn2)."""
    from cnnvis.layers import list_layers
    from cnnvis.attribution.base import model_parts

    module = model_parts(model)[0]
    infos = list_layers(model, input_size, leaves_only=True)
    convs = [i for i, info in enumerate(infos)
             if info.kind in ("Conv2d", "Conv2dSame") and isinstance(module.get_submodule(info.name), nn.Conv2d)
             and info.spatial and info.shape[0] > 1]
    if not convs:
        raise CnnvisError("Grad-CAM needs a conv layer with spatial maps; this model has none (pass --layer)")
    j = convs[-1]
    best = infos[j].name
    for info in infos[j + 1:]:
        m = module.get_submodule(info.name)
        if not isinstance(m, _PASS_THROUGH) or info.shape != infos[j].shape:
            break
        best = info.name
    # a module like timm's BatchNormAct2d wraps its activation: prefer the wrapper
    parent = best.rsplit(".", 1)[0] if "." in best else ""
    if parent and isinstance(module.get_submodule(parent), nn.BatchNorm2d):
        best = parent
    return best


def upsample(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, 1, h, w) -> (B, 1, H, W) bilinear with half-pixel centres (= cv2.resize INTER_LINEAR)."""
    if tuple(cam.shape[-2:]) == tuple(size):
        return cam
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)


class GradCAM(Attribution):
    """Grad-CAM at `layer` (alias or dotted name; default: `default_cam_layer`). Returns (B, 1, H, W)."""

    name = "gradcam"
    signed = False

    def __init__(self, model, layer: str | None = None) -> None:
        super().__init__(model)
        from cnnvis.layers import resolve_layer

        self.layer = resolve_layer(model, layer) if layer is not None else None

    def cam(self, x: Tensor, target) -> Tensor:
        """(B, 1, h, w) Grad-CAM at the layer's own resolution."""
        if self.layer is None:
            self.layer = default_cam_layer(self.model, x.shape[-1])
        xg = x.detach().requires_grad_(True)
        score, acts = self.forward_score(xg, target, [self.layer])
        a = acts[self.layer]
        if a.dim() != 4 or a.shape[-2] * a.shape[-1] < 2:
            raise CnnvisError(
                f"Grad-CAM needs a layer with spatial maps; {self.layer!r} outputs shape {tuple(a.shape[1:])}. "
                f"Pick a conv layer (see `cnnvis layers`)")
        (g,) = torch.autograd.grad(score.sum(), a, allow_unused=True)
        if g is None:
            g = torch.zeros_like(a)
        w = g.mean((2, 3), keepdim=True)
        return torch.relu((w * a).sum(1, keepdim=True))

    def _attribute(self, x: Tensor, target) -> Tensor:
        return upsample(self.cam(x, target), tuple(x.shape[-2:]))

    def map(self, x: Tensor, target=None) -> Tensor:
        return self.attribute(x, target)[:, 0]


class GuidedGradCAM(Attribution):
    """Guided backprop x Grad-CAM (upsampled): (B, 3, H, W)."""

    name = "guided_gradcam"

    def __init__(self, model, layer: str | None = None) -> None:
        super().__init__(model)
        self.gradcam = GradCAM(model, layer)
        self.guided = GuidedBackprop(model)

    def _attribute(self, x: Tensor, target) -> Tensor:
        target = self.fixed_target(x, target)
        cam = self.gradcam._attribute(x, target)
        return self.guided._attribute(x, target) * cam
