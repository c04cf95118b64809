"""The shared part of every attribution method: inputs, targets, one forward + gradient.

    sal = Saliency(vm)                       # vm: a VisModel (inputs in [0, 1]) or any nn.Module
    a = sal.attribute(x, target='pelican')   # x (B, C, H, W) -> (B, C, H, W) signed attribution
    m = sal.map(x)                           # (B, H, W) >= 0: max |a| over the channels

C is the model's input channels (`as_vismodel(model).channels`): 3 (RGB) or 1 (grey), checked
(`cnnvis.models.check_channels`).

Targets: None (top-1 class per image; for non-classifiers the sum of the outputs), a class
index or name, a list/tensor of indices (one per image), a callable `output -> (B,)` score, or
`LayerTarget(layer, channel, unit)` for the gradient of an intermediate activation.
The model comes back unchanged (flags, requires_grad, no hooks) and the caller's `x` and
`x.grad` are never touched: gradients are taken with `torch.autograd.grad` on a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnvis.errors import CnnvisError

TargetSpec = "int | str | Sequence[int] | Tensor | Callable[[Tensor], Tensor] | LayerTarget | None"


@dataclass(frozen=True)
class LayerTarget:
    """Score = an intermediate activation: the whole layer (sum), one channel (sum over space),
    or one unit (`unit=(y, x)`; with `channel=None` the sum over channels at that place)."""

    layer: str
    channel: int | None = None
    unit: tuple[int, int] | None = None

    def score(self, act: Tensor) -> Tensor:
        """(B, C, h, w) or (B, C) activation -> (B,) score; clear errors for bad indices."""
        a = act
        if self.channel is not None:
            if a.dim() < 2 or not -a.shape[1] <= self.channel < a.shape[1]:
                raise CnnvisError(f"channel {self.channel} is out of range for layer {self.layer!r} "
                                  f"with {a.shape[1] if a.dim() > 1 else 0} channels (valid: 0..{a.shape[1] - 1})")
        if self.unit is not None:
            if a.dim() != 4:
                raise CnnvisError(f"layer {self.layer!r} has no spatial maps (output shape {tuple(a.shape[1:])}); "
                                  f"drop --unit")
            y, x = self.unit
            h, w = a.shape[-2:]
            if not (0 <= y < h and 0 <= x < w):
                raise CnnvisError(f"unit ({y}, {x}) is outside layer {self.layer!r}'s {h}x{w} map")
            a = a[:, :, y, x]
        if self.channel is not None:
            a = a[:, self.channel]
        return a.reshape(a.shape[0], -1).sum(1)


def model_parts(model) -> tuple[nn.Module, Callable[[Tensor], Tensor] | None, object]:
    """VisModel or nn.Module -> (module, normalize or None, VisModel or None).

    A thin view of `cnnvis.models.as_vismodel` (the one adapter): a bare module has no
    normalization and no VisModel here; `as_vismodel(model)` gives its inferred contract.
    """
    from cnnvis.models.registry import VisModel, as_vismodel

    vm = as_vismodel(model)
    if isinstance(model, VisModel):
        return vm.model, vm.preprocess.normalize, vm
    return vm.model, None, None


def check_input(x: Tensor, device: torch.device, model=None) -> Tensor:
    """(B, C, H, W) or (C, H, W) float tensor -> detached float copy (B, C, H, W) on `device`.

    With `model` (a VisModel or nn.Module), C must be the model's input channels
    (`cnnvis.models.check_channels`: 3 for RGB models, 1 for grey ones such as MNIST nets).
    """
    if not torch.is_tensor(x):
        raise CnnvisError(f"expected an image tensor (B, C, H, W), got {type(x).__name__}; "
                          f"use vm.preprocess.prepare(pil_image) for a PIL image")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] == 0:
        raise CnnvisError(f"expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")
    if model is not None:
        from cnnvis.models.registry import check_channels

        check_channels(model, x, "the input image x")
    if not x.is_floating_point():
        raise CnnvisError(f"expected a float image tensor in [0, 1], got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise CnnvisError("the input image holds NaN or infinite values")
    return x.detach().to(device).clone()


class Attribution:
    """Base class: `attribute(x, target) -> (B, 3, H, W)`, `map(x, target) -> (B, H, W)`.

    Subclasses implement `_attribute(x, target)`; it runs with the model in eval mode, its
    parameters frozen and in-place activations off (all restored afterwards, also on error).
    """

    name = "attribution"
    signed = True  # does `attribute` return signed values?

    def __init__(self, model) -> None:
        self.model = model
        self.module, self.normalize, self.vm = model_parts(model)

    # ------------------------------------------------------------------ public verbs
    def attribute(self, x: Tensor, target=None) -> Tensor:
        """Attribution for images `x` ((B, 3, H, W), in [0, 1] for a VisModel) and `target`."""
        from cnnvis.utils import model_guard

        x = check_input(x, self.device, self.model)
        with model_guard(self.module), torch.enable_grad():
            out = self._attribute(x, target)
        return out.detach()

    def map(self, x: Tensor, target=None) -> Tensor:
        """(B, H, W) non-negative map: max |attribution| over channels."""
        return self.attribute(x, target).abs().amax(1)

    @property
    def device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        if p is None:
            p = next(self.module.buffers(), None)
        return p.device if p is not None else torch.device("cpu")

    def _attribute(self, x: Tensor, target) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ helpers for subclasses
    def forward_score(self, x: Tensor, target, layers: Sequence[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward `x` (already requiring grad) -> ((B,) score, {layer: activation}).

        Stops the forward at the target layer when the target is a LayerTarget.
        """
        from cnnvis.hooks import capture

        names = list(layers)
        lt = target if isinstance(target, LayerTarget) else None
        if lt is not None:
            names.append(lt.layer)
        with capture(self.model, names, stop=lt is not None) as cap:
            out = cap.run(x)
            acts = {n: cap[n] for n in names}
        if lt is not None:
            return lt.score(acts[lt.layer]), acts
        return self.score_output(out, target), acts

    def score_output(self, out, target) -> Tensor:
        """Model output + target -> (B,) score (the logit of the target class by default)."""
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not torch.is_tensor(out):
            raise CnnvisError(f"the model returned {type(out).__name__}, not a tensor; pass a callable target")
        B = out.shape[0]
        if callable(target) and not isinstance(target, (Tensor, LayerTarget)):
            s = target(out)
            if not torch.is_tensor(s) or s.shape != (B,):
                raise CnnvisError(f"a callable target must return one score per image, shape ({B},); "
                                  f"got {tuple(s.shape) if torch.is_tensor(s) else type(s).__name__}")
            return s
        if out.dim() != 2:  # edge maps, segmentation: the sum of the outputs
            if target is not None:
                raise CnnvisError(
                    f"the model's output has shape {tuple(out.shape[1:])}, not class scores; use no target "
                    f"(= sum of the outputs), a LayerTarget or a callable target")
            return out.reshape(B, -1).sum(1)
        idx = self.target_indices(target, out)
        return out.gather(1, idx.view(-1, 1)).squeeze(1)

    def target_indices(self, target, out: Tensor) -> Tensor:
        """Class target -> (B,) long indices; None = the top-1 class of each image."""
        B, n = out.shape
        if target is None:
            return out.detach().argmax(1)
        if isinstance(target, str) or (isinstance(target, int) and not isinstance(target, bool)):
            if isinstance(target, str) and self.vm is not None:
                i = self.vm.class_index(target)
            else:
                try:
                    i = int(target)
                except ValueError:
                    raise CnnvisError(f"class name {target!r} needs a model with labels; give a class index") from None
            idx = torch.full((B,), i, dtype=torch.long, device=out.device)
        else:
            idx = torch.as_tensor(target, device=out.device).long().reshape(-1)
            if idx.numel() == 1:
                idx = idx.expand(B)
            if idx.numel() != B:
                raise CnnvisError(f"got {idx.numel()} targets for {B} images")
        if ((idx < 0) | (idx >= n)).any():
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise CnnvisError(f"target class {bad} is out of range: the model has {n} classes (0..{n - 1})")
        return idx

    def fixed_target(self, x: Tensor, target):
        """For methods that run on changed inputs (IG, SmoothGrad): None -> the top-1 class of `x`."""
        from cnnvis.utils import model_guard

        if target is not None:
            return target
        with model_guard(self.module), torch.no_grad():  # eval mode: no BatchNorm statistics updated
            out = self.model(x) if self.vm is not None else self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if torch.is_tensor(out) and out.dim() == 2:
            return out.argmax(1)
        return None

    def input_grad(self, x: Tensor, target) -> Tensor:
        """d score / d x for a batch: (B, 3, H, W)."""
        xg = x.detach().requires_grad_(True)
        score, _ = self.forward_score(xg, target)
        (g,) = torch.autograd.grad(score.sum(), xg, allow_unused=True)
        return torch.zeros_like(x) if g is None else g
