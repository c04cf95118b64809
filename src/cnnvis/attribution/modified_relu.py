"""Guided backprop and deconvnet: one modified ReLU backward, switched by `rule`.

For an activation y = act(x) with incoming gradient g = d score / d y:
    plain      d/dx = g * act'(x)
    guided     d/dx = relu(g) * act'(x)      (Springenberg et al. 2014)
    deconvnet  d/dx = relu(g)                (Zeiler & Fergus 2014: the forward mask is ignored)
For nn.ReLU this is exactly Captum's rule; it also covers ReLU6, LeakyReLU, PReLU, ELU, ...
(ReLU6 is what the embedded EfficientNet-Lite0 uses; Captum hooks only nn.ReLU).

Implemented with forward hooks registered for the duration of a `with modified_relu(...)`
block and removed in `finally`; modules are never swapped. Activations called as functions
inside `forward()` (F.relu) cannot be hooked and keep their plain gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from cnnvis.attribution.base import Attribution
from cnnvis.attribution.registry import register_method
from cnnvis.errors import CnnvisError

RELU_LIKE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU,
)
RULES = ("guided", "deconvnet")


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


def _clamp_grad(g: Tensor) -> Tensor:
    return g.clamp(min=0)


def _guided_hook(module, inputs, output):
    if torch.is_tensor(output) and output.requires_grad:
        output.register_hook(_clamp_grad)  # relu(g), then the module's own backward multiplies by act'(x)
    return None


def _deconv_hook(module, inputs, output):
    if not torch.is_tensor(output) or not inputs or not torch.is_tensor(inputs[0]):
        return None
    x = inputs[0]
    if not (x.requires_grad or output.requires_grad):
        return None
    return _DeconvGrad.apply(x, output)


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
    hook = _guided_hook if rule == "guided" else _deconv_hook
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
        with modified_relu(self.module, self.rule, self.types):
            return self.input_grad(x, target)


@register_method
class GuidedBackprop(ModifiedReLU):
    """Springenberg et al. 2014: only positive gradients pass back through each ReLU."""

    name, title = "guided", "guided backprop"
    rule = "guided"


@register_method
class Deconvnet(ModifiedReLU):
    """Zeiler & Fergus 2014 as an attribution: ReLU backward = relu(grad), forward mask ignored."""

    name, title = "deconvnet", "deconvnet"
    rule = "deconvnet"
