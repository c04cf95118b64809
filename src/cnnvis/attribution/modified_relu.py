"""Guided backprop and deconvnet: one modified ReLU backward, switched by `rule`.

For an activation y = act(x) with incoming gradient g = d score / d y:
    plain      d/dx = g * act'(x)
    guided     d/dx = relu(g) * act'(x)      (Springenberg et al. 2014)
    deconvnet  d/dx = relu(g)                (Zeiler & Fergus 2014: the forward mask is ignored)
    fired      d/dx = relu(g) * [y > 0]      (the mask of the units that fired; = guided for nn.ReLU,
                                              but a ReLU6 unit saturated at 6 passes the signal on)
For nn.ReLU this is exactly Captum's rule; it also covers ReLU6, LeakyReLU, PReLU, ELU, ...
(ReLU6 is what the embedded EfficientNet-Lite0 uses; Captum hooks only nn.ReLU).

Rule 'fired' also takes strided convolutions back by nearest resize (`resized_strides`): each
unit's signal is held over the s x s cell its stride steps over instead of landing on one pixel in
s^2 (zero insertion; Odena et al. 2016's checkerboard). Without it, EfficientNet's five stride-2
convs leave a lattice in every map.

Implemented with forward hooks registered for the duration of a `with modified_relu(...)`
block and removed in `finally`; modules are never swapped. Activations called as functions
inside `forward()` (F.relu) cannot be hooked and keep their plain gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnvis.attribution.base import Attribution
from cnnvis.attribution.registry import register_method
from cnnvis.errors import CnnvisError

RELU_LIKE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU,
)
RULES = ("guided", "deconvnet", "fired")


class _DeconvGrad(torch.autograd.Function):
    """y' = y in the forward; in the backward, relu(g) goes straight to x (vmap-able)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, y: Tensor) -> Tensor:
        return y.view_as(y)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, g: Tensor):
        return g.clamp(min=0), None


class _FiredGrad(torch.autograd.Function):
    """y' = y in the forward; in the backward relu(g) * mask, mask = [y > 0] (the units that fired)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        return y.view_as(y)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[2])

    @staticmethod
    def backward(ctx, g: Tensor):
        (mask,) = ctx.saved_tensors
        return g.clamp(min=0) * mask, None, None


def _clamp_grad(g: Tensor) -> Tensor:
    return g.clamp(min=0)


def _guided_hook(module, inputs, output):
    if torch.is_tensor(output) and output.requires_grad:
        output.register_hook(_clamp_grad)  # relu(g), then the module's own backward multiplies by act'(x)
    return None


def _routed_input(inputs, output) -> Tensor | None:
    """The activation's tensor input when a gradient flows through it (else None: leave the module as is)."""
    if not torch.is_tensor(output) or not inputs or not torch.is_tensor(inputs[0]):
        return None
    x = inputs[0]
    return x if x.requires_grad or output.requires_grad else None


def _deconv_hook(module, inputs, output):
    x = _routed_input(inputs, output)
    return None if x is None else _DeconvGrad.apply(x, output)


def _fired_hook(module, inputs, output):
    x = _routed_input(inputs, output)
    return None if x is None else _FiredGrad.apply(x, output, (output.detach() > 0).to(output.dtype))


def unstride(g: Tensor, stride) -> Tensor:
    """(n, C, H, W) gradient at a strided conv's input -> the same with each pixel averaged with its next
    s - 1 neighbours along each strided axis (a box of width s; the sum is kept, zero past the far border).
    Transposed conv then this box = nearest-neighbour upsampling of the signal, then the stride-1
    transpose (Odena et al. 2016's resize-convolution, run backward) instead of zero insertion."""
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    C = g.shape[1]
    w = g.new_full((C, 1, sh, sw), 1.0 / (sh * sw))
    out = F.conv2d(F.pad(g, (0, sw - 1, 0, sh - 1)), w, groups=C)
    return out.contiguous(memory_format=torch.channels_last) if g.is_contiguous(memory_format=torch.channels_last) \
        and not g.is_contiguous() else out


class _Unstride(torch.autograd.Function):
    """Identity in the forward; in the backward `unstride` the gradient (vmap-able)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, stride) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.stride = inputs[1]

    @staticmethod
    def backward(ctx, g: Tensor):
        return unstride(g, ctx.stride), None


def _unstride_pre_hook(module, args):
    if not args or not torch.is_tensor(args[0]) or args[0].dim() != 4 or not args[0].requires_grad:
        return None
    return (_Unstride.apply(args[0], tuple(module.stride)), *args[1:])


@contextlib.contextmanager
def resized_strides(model: nn.Module) -> Iterator[int]:
    """Inside the block the gradient through every strided nn.Conv2d of `model` is `unstride`d (the
    transposed conv, then a box of width s). Yields how many convs were hooked; hooks removed in finally."""
    handles = []
    try:
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and max(m.stride) > 1:
                handles.append(m.register_forward_pre_hook(_unstride_pre_hook))
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


def relu_modules(model: nn.Module, types: tuple[type[nn.Module], ...] = RELU_LIKE) -> list[tuple[str, nn.Module]]:
    """(name, module) of every ReLU-like activation module in `model`."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, types)]


@contextlib.contextmanager
def modified_relu(model: nn.Module, rule: str = "guided", types: tuple[type[nn.Module], ...] = RELU_LIKE
                  ) -> Iterator[list[str]]:
    """Inside the block every ReLU-like module of `model` back-propagates with `rule`.

    Yields the hooked module names. Raises CnnvisError when the model has no such module.
    """
    if rule not in RULES:
        from cnnvis.errors import unknown_name

        raise unknown_name("modified-ReLU rule", rule, RULES)
    mods = relu_modules(model, types)
    if not mods:
        acts = sorted({type(m).__name__ for m in model.modules()
                       if type(m).__module__.startswith(("torch.nn.modules.activation", "timm.layers.activation"))})
        found = f" (activation modules found: {', '.join(acts)})" if acts else " (no activation modules found)"
        raise CnnvisError(
            f"{'guided backprop' if rule == 'guided' else 'deconvnet'} needs ReLU-like activation modules "
            f"(nn.ReLU, ReLU6, LeakyReLU, PReLU, ELU...), and this model has none{found}; "
            f"ReLUs called as functions inside forward() cannot be hooked. Use saliency, ig or gradcam instead")
    hook = {"guided": _guided_hook, "deconvnet": _deconv_hook, "fired": _fired_hook}[rule]
    handles = []
    try:
        for _, m in mods:
            handles.append(m.register_forward_hook(hook))
        yield [n for n, _ in mods]
    finally:
        for h in handles:
            h.remove()


class ModifiedReLU(Attribution):
    """Gradient w.r.t. x with the `rule` ('guided' or 'deconvnet') applied at every ReLU-like module."""

    rule = "guided"

    def __init__(self, model, *, rule: str | None = None,
                 types: tuple[type[nn.Module], ...] = RELU_LIKE) -> None:
        super().__init__(model)
        self.rule = rule or self.rule
        self.types = types
        if self.rule not in RULES:
            from cnnvis.errors import unknown_name

            raise unknown_name("modified-ReLU rule", self.rule, RULES)
        self.name = self.rule

    def _attribute(self, x: Tensor, target) -> Tensor:
        with modified_relu(self.module, self.rule, self.types), \
                (resized_strides(self.module) if self.rule == "fired" else contextlib.nullcontext()):
            return self.input_grad(x, target)


@register_method
class GuidedBackprop(ModifiedReLU):
    """Springenberg et al. 2014: only positive gradients pass back through each ReLU."""

    name, title = "guided", "guided backprop"
    rule = "guided"


@register_method
class Deconvnet(ModifiedReLU):
    """Zeiler & Fergus 2014 as an attribution, with the deconvnet's default rule (`cnnvis.deconv`):
    rule 'fired' (default): ReLU backward = relu(grad) where the unit fired (output > 0), strided convs
    back by nearest resize (`resized_strides`); rule 'zf': the pure rule, relu(grad), forward mask
    ignored (= Captum's Deconvolution; on EfficientNet a checkerboard with no photo in it)."""

    name, title = "deconvnet", "deconvnet"
    rule = "fired"
    option_defaults = {"rule": "fired"}  # so a map cached under the old default rule is not served

    def __init__(self, model, *, rule: str | None = None,
                 types: tuple[type[nn.Module], ...] = RELU_LIKE) -> None:
        if rule not in (None, "fired", "zf"):
            raise CnnvisError(f"deconvnet rule must be 'fired' (the units that fired, strided convs resized) or "
                              f"'zf' (the pure Zeiler & Fergus rule), got {rule!r}")
        super().__init__(model, rule="deconvnet" if rule == "zf" else rule, types=types)
        self.name = "deconvnet"
