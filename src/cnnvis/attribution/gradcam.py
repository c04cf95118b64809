"""The CAM family at any layer with spatial maps: Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM,
Score-CAM, Eigen-CAM, and Guided Grad-CAM.

    GradCAM(vm, layer='conv5_3').attribute(x, 'pelican')   # (B, 1, H, W) >= 0, input size
    ScoreCAM(vm).cam(x)                # (B, 1, h, w) at the layer's own resolution
    LayerCAM(vm, 'layer3', use_input=True)   # the CAM of the layer's input instead of its output

Every CAM is cam = relu(sum_k w_k * A_k) over the channels k of the layer's activation A
(B, C, h, w) (Eigen-CAM: A minus its spatial mean); a method only says what its weights w are (`CAM.weights`, one override point,
as pytorch-grad-cam's `get_cam_weights`): (B, C, 1, 1) per channel or (B, C, h, w) per place.
`attribute` upsamples bilinearly (half-pixel centres, as OpenCV) to the input size; not
min-max scaled (pytorch-grad-cam scales every map to [0, 1]; `map` leaves that to display).
Default layer: `default_cam_layer`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnvis.attribution.base import Attribution
from cnnvis.attribution.modified_relu import GuidedBackprop
from cnnvis.attribution.registry import register_method
from cnnvis.errors import CnnvisError

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def default_cam_layer(model, input_size: int | tuple[int, int] | None = None, *, x: Tensor | None = None) -> str:
    """The last spatial map before the model pools it away, as the module that returns it.

    From the last conv with more than one output channel, follow the modules that end after it
    while the map keeps its height and width (norm, activation, residual add, concatenation,
    channels-last steps inside a block) until it is pooled or flattened;
    the last such map is the CAM layer's output. Of the modules that return that very tensor
    (once per forward), the outermost, except that a plain container or a pass-through
    (Sequential, Identity) gives way to the module inside it: VGG16 relu5_3 (features.29, not
    the max-pool), ResNet layer4.1 (the last block after its residual add, what pytorch-grad-cam
    users pass as `layer4[-1]`), EfficientNet bn2, DenseNet features.norm5. Found by one probe
    forward of `x` (one image in [0, 1]) or of a grey image of the model's input shape.
    """
    from cnnvis.attribution.base import model_parts
    from cnnvis.utils import model_guard

    module, normalize, vm = model_parts(model)
    if x is None:
        from cnnvis.models import as_vismodel

        c, h, w = as_vismodel(model).input_shape
        if input_size:
            h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        p = next(module.parameters(), None)
        x = torch.full((1, c, h, w), 0.5, device=p.device if p is not None else "cpu")
    events: list[tuple[str, Tensor, bool]] = []  # (name, output, output is its input) as modules return
    calls: dict[str, int] = {}

    def hook(name):
        def fn(mod, inp, out):
            calls[name] = calls.get(name, 0) + 1
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            if torch.is_tensor(t):
                events.append((name, t, bool(inp) and inp[0] is t))
        return fn

    handles = []
    try:
        for n, m in module.named_modules():
            if n:
                handles.append(m.register_forward_hook(hook(n)))
        with model_guard(module), torch.no_grad():
            module(normalize(x[:1]) if normalize is not None else x[:1])
    finally:
        for hd in handles:
            hd.remove()
    convs = [i for i, (n, t, _) in enumerate(events) if isinstance(module.get_submodule(n), nn.Conv2d)
             and t.dim() == 4 and t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1]
    if not convs:
        raise CnnvisError("CAM methods need a conv layer with spatial maps; this model has none (pass layer=...)")
    j = convs[-1]
    hw = events[j][1].shape[-2:]
    last = j
    for i in range(j + 1, len(events)):
        t = events[i][1]
        if t.dim() == 4 and t.shape[-2:] == hw:
            last = i
        elif not (t.dim() == 4 and t.shape[1:3] == hw):  # channels-last inside a block (ConvNeXt) goes on
            break
    final = events[last][1]
    # a module called twice (a ReLU reused inside a block) would be captured at its first call
    cands = [i for i in range(j, last + 1) if events[i][1] is final and calls[events[i][0]] == 1]
    if not cands:
        return events[j][0]
    k = len(cands) - 1
    while k > 0 and (events[cands[k]][2] or type(module.get_submodule(events[cands[k]][0])) in _CONTAINERS):
        k -= 1
    return events[cands[k]][0]


def upsample(cam: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """(B, 1, h, w) -> (B, 1, H, W); bilinear with half-pixel centres (= cv2.resize INTER_LINEAR)
    or nearest (= Captum's `LayerAttribution.interpolate` default)."""
    if tuple(cam.shape[-2:]) == tuple(size):
        return cam
    if mode == "nearest":
        return F.interpolate(cam, size=size, mode="nearest")
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)


@contextlib.contextmanager
def _layer_input(module: nn.Module):
    """Record the first input of `module`'s first call: yields a list that gets it."""
    got: list[Tensor] = []

    def pre(mod, inputs):
        if not got and inputs and torch.is_tensor(inputs[0]):
            got.append(inputs[0])

    h = module.register_forward_pre_hook(pre)
    try:
        yield got
    finally:
        h.remove()


class CAM(Attribution):
    """cam = relu(sum_k w_k A_k) at `layer` (alias or dotted name; default `default_cam_layer`).

    use_input=True: A = the layer's input instead of its output. Subclasses override `weights`.
    `cam(x, t)` -> (B, 1, h, w) at the layer's resolution; `attribute` -> (B, 1, H, W).
    """

    name = "cam"
    takes_layer, inputs, report = True, frozenset({"class"}), ("cams",)
    signed = False
    needs_grad = True  # False: the weights need no backward pass (Score-CAM, Eigen-CAM)
    center = False  # True: the weights apply to A minus its spatial mean (Eigen-CAM's PCA)

    def __init__(self, model, layer: str | None = None, *, use_input: bool = False) -> None:
        super().__init__(model)
        from cnnvis.layers import resolve_layer

        self.layer = resolve_layer(model, layer) if layer is not None else None
        self.use_input = use_input

    def weights(self, a: Tensor, g: Tensor | None, x: Tensor, target) -> Tensor:
        """Activation a (B, C, h, w), its gradient g (or None), input x, target -> weights
        (B, C, 1, 1) or (B, C, h, w)."""
        raise NotImplementedError

    def cam(self, x: Tensor, target=None) -> Tensor:
        """(B, 1, h, w) CAM at the layer's own resolution (not upsampled, not scaled)."""
        return self.run(self._cam, x, target)

    def map(self, x: Tensor, target=None) -> Tensor:
        return self.attribute(x, target)[:, 0]

    def _attribute(self, x: Tensor, target) -> Tensor:
        return upsample(self._cam(x, target), tuple(x.shape[-2:]))

    def activation(self, x: Tensor, target) -> tuple[Tensor, Tensor | None]:
        """The layer's activation (B, C, h, w) for x and, if `needs_grad`, d score / d activation."""
        if self.layer is None:
            self.layer = default_cam_layer(self.model, x=x[:1])
        with torch.set_grad_enabled(self.needs_grad):
            xg = x.detach().requires_grad_(self.needs_grad)
            if self.use_input:
                with _layer_input(self.module.get_submodule(self.layer)) as got:
                    score, _ = self.forward_score(xg, target)
                if not got:
                    raise CnnvisError(f"layer {self.layer!r} did not run (or got no tensor input) in the forward pass")
                a = got[0]
            else:
                score, acts = self.forward_score(xg, target, [self.layer])
                a = acts[self.layer]
            if a.dim() != 4 or a.shape[-2] * a.shape[-1] < 2:
                where = "input" if self.use_input else "output"
                raise CnnvisError(
                    f"{type(self).__name__} needs a layer with spatial maps; {self.layer!r}'s {where} has shape "
                    f"{tuple(a.shape[1:])}. Pick a conv layer (see `cnnvis layers`)")
            g = None
            if self.needs_grad:
                (g,) = torch.autograd.grad(score.sum(), a, allow_unused=True)
                g = torch.zeros_like(a) if g is None else g.detach()
        return a.detach(), g

    def _cam(self, x: Tensor, target) -> Tensor:
        a, g = self.activation(x, target)
        w = self.weights(a, g, x, target)
        if self.center:
            a = a - a.mean((2, 3), keepdim=True)
        return torch.relu((w * a).sum(1, keepdim=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer!r}{', use_input=True' if self.use_input else ''})"


@register_method
class GradCAM(CAM):
    """Selvaraju et al. 2017: w_k = mean over space of d score / d A_k."""

    name, title, report = "gradcam", "Grad-CAM", ("maps", "cams")
    caption_notes = {"maps": "last conv block"}  # the maps grid has one CAM; the CAM grid's heading says where

    def weights(self, a, g, x, target):
        return g.mean((2, 3), keepdim=True)


@register_method
class GuidedGradCAM(Attribution):
    """Guided backprop x Grad-CAM upsampled to the input: (B, 3, H, W).

    interpolate: 'bilinear' (default: the paper's choice, and the smooth map pytorch-grad-cam
    shows) or 'nearest' (Captum's GuidedGradCam default, blocky; equal to Captum's result).
    """

    name, title = "guided_gradcam", "guided Grad-CAM"
    takes_layer, inputs = True, frozenset({"class"})

    def __init__(self, model, layer: str | None = None, *, interpolate: str = "bilinear",
                 use_input: bool = False) -> None:
        super().__init__(model)
        if interpolate not in ("bilinear", "nearest"):
            from cnnvis.errors import unknown_name

            raise unknown_name("interpolate mode", interpolate, ("bilinear", "nearest"))
        self.gradcam = GradCAM(model, layer, use_input=use_input)
        self.guided = GuidedBackprop(model)
        self.interpolate = interpolate

    @property
    def layer(self) -> str | None:
        return self.gradcam.layer

    def _attribute(self, x: Tensor, target) -> Tensor:
        target = self.fixed_target(x, target)
        cam = upsample(self.gradcam._cam(x, target), tuple(x.shape[-2:]), self.interpolate)
        return self.guided._attribute(x, target) * cam


@register_method
class GradCAMPlusPlus(CAM):
    """Chattopadhyay et al. 2018 (eq. 19): w_k = sum over space of relu(g) * alpha, with
    alpha = g^2 / (2 g^2 + sum(A_k) g^3) where g != 0 (the gradients stand in for exp-score
    derivatives, as in pytorch-grad-cam)."""

    name, title = "gradcam++", "Grad-CAM++"

    def weights(self, a, g, x, target):
        g2 = g * g
        alpha = g2 / (2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (torch.relu(g) * alpha).sum((2, 3), keepdim=True)


@register_method
class XGradCAM(CAM):
    """Fu et al. 2020: w_k = sum over space of g * A_k / sum(A_k)."""

    name, title = "xgradcam", "XGrad-CAM"

    def weights(self, a, g, x, target):
        return (g * a / (a.sum((2, 3), keepdim=True) + 1e-7)).sum((2, 3), keepdim=True)


@register_method
class LayerCAM(CAM):
    """Jiang et al. 2021: a weight per place, w_k(y, x) = relu(g_k(y, x)); good at early layers."""

    name, title = "layercam", "LayerCAM"

    def weights(self, a, g, x, target):
        return torch.relu(g)


@register_method
class ScoreCAM(CAM):
    """Wang et al. 2020: w = softmax over channels of the target score of x * mask_k, mask_k =
    A_k bilinearly upsampled (corner-aligned, as pytorch-grad-cam) and min-max scaled to [0, 1].
    One forward per channel, `batch_size` masked images at a time (default 16 on a CPU (see
    bench/attribution.py), 64 on a GPU); a constant channel (a dead ReLU's zeros: half of
    EfficientNet-Lite0's 1280 at bn2 on photos) has mask 0, and all of them share one forward of
    the black image. No backward pass."""

    name, title = "scorecam", "Score-CAM"
    caption_notes = {"cams": "gradient-free: each channel's map masks the photo"}
    needs_grad = False

    def __init__(self, model, layer: str | None = None, *, use_input: bool = False,
                 batch_size: int | None = None) -> None:
        super().__init__(model, layer, use_input=use_input)
        if batch_size is not None and batch_size < 1:
            raise CnnvisError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    def weights(self, a, g, x, target):
        target = self.fixed_target(x, target)
        B, C = a.shape[:2]
        bs = self.batch_size or (16 if x.device.type == "cpu" else 64)
        flat = a.flatten(2)
        const = flat.amax(2) == flat.amin(2)  # (B, C): mask 0, masked input = black
        scores = torch.empty(B, C, dtype=x.dtype, device=x.device)

        def score(xs, b):  # the target was checked by the activation's forward: no GPU sync per batch
            t = target[b:b + 1].expand(len(xs), -1) if torch.is_tensor(target) else target
            return self.forward_score(xs, t, check=False)[0]

        with torch.inference_mode():  # no autograd bookkeeping at all for the masked forwards
            for b in range(B):
                live = (~const[b]).nonzero().squeeze(1)
                if len(live) < C:
                    scores[b, const[b]] = score(torch.zeros_like(x[b:b + 1]), b)
                for i in range(0, len(live), bs):
                    ch = live[i:i + bs]
                    m = F.interpolate(a[b:b + 1, ch], size=x.shape[-2:], mode="bilinear", align_corners=True)[0]
                    lo, hi = m.amin((1, 2), keepdim=True), m.amax((1, 2), keepdim=True)
                    scores[b, ch] = score(x[b:b + 1] * ((m - lo) / (hi - lo + 1e-8)).unsqueeze(1), b)
        return scores.softmax(1).view(B, C, 1, 1)

    def __repr__(self) -> str:
        return f"ScoreCAM(layer={self.layer!r}, batch_size={self.batch_size})"


@register_method
class EigenCAM(CAM):
    """Muhammad & Yeasin 2020: the projection of the spatially centred activations on their first
    principal direction (no gradient, class-agnostic: the target is ignored). The SVD's sign is
    arbitrary; it is fixed so the map's largest magnitude is positive (Seg-Eigen-CAM's rule,
    pytorch-grad-cam's `get_2d_projection_with_sign_correction`; its EigenCAM leaves the sign to LAPACK)."""

    name, title = "eigencam", "Eigen-CAM"
    caption_notes = {"cams": "first principal component of the activations, class-agnostic"}
    needs_grad = False
    center = True

    def weights(self, a, g, x, target):
        B, C = a.shape[:2]
        m = a.reshape(B, C, -1).transpose(1, 2)  # (B, hw, C)
        m = m - m.mean(1, keepdim=True)
        # first right singular vector of m from the smaller Gram matrix, in float64 (an SVD of the
        # whole (hw, C) matrix costs ~10x more on a CPU for the same vector)
        md = m.double()
        if md.shape[1] <= C:
            u = torch.linalg.eigh(md @ md.transpose(1, 2)).eigenvectors[:, :, -1]  # (B, hw)
            v = (md.transpose(1, 2) @ u.unsqueeze(2)).squeeze(2)
        else:
            v = torch.linalg.eigh(md.transpose(1, 2) @ md).eigenvectors[:, :, -1]  # (B, C)
        v = (v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)).to(a.dtype)
        proj = (m @ v.unsqueeze(2)).squeeze(2)  # (B, hw)
        flip = proj.amin(1).abs() > proj.amax(1).abs()
        v = torch.where(flip.unsqueeze(1), -v, v)
        return v.view(B, C, 1, 1)
