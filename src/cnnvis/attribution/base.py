"""The shared part of every attribution method: inputs, targets, one forward + gradient.

    sal = Saliency(vm)                       # vm: a VisModel (inputs in [0, 1]) or any nn.Module
    a = sal.attribute(x, target='pelican')   # x (B, C, H, W) -> (B, C, H, W) signed attribution
    m = sal.map(x)                           # (B, H, W) >= 0: max |a| over the channels

C is the model's input channels (`as_vismodel(model).channels`): 3 (RGB) or 1 (grey), checked
(`cnnvis.models.check_channels`).

Targets (as Captum): None (top-1 class per image; for non-classifiers the sum of the outputs),
a class index or name, a tuple of indices into the output (`(0, 1)` = `output[:, 0, 1]`; any
dims left are summed), a list / 1-D tensor with one index (or tuple) per image, a callable
`output -> (B,)` score, or `LayerTarget(layer, channel, unit)` for the gradient of an
intermediate activation. Checked against the caller's batch once, in the public verb.
The model comes back unchanged (flags, requires_grad, no hooks) and the caller's `x` and
`x.grad` are never touched: gradients are taken with `torch.autograd.grad` on a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

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
            if a.dim() < 2 or not 0 <= self.channel < a.shape[1]:
                raise CnnvisError(f"channel {self.channel} is out of range for layer {self.layer!r} "
                                  f"with {a.shape[1] if a.dim() > 1 else 0} channels (valid: 0..{a.shape[1] - 1})")
        if self.unit is not None:
            if a.dim() != 4:
                raise CnnvisError(f"layer {self.layer!r} has no spatial maps (output shape {tuple(a.shape[1:])}); "
                                  f"drop unit")
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
    from cnnvis.images import check_pixels

    check_pixels(x, "the input image", in_range=False)
    if model is not None:  # a model kept in float64 / bfloat16 gets the image in its dtype (prepare gives float32)
        from cnnvis.layers import _parts
        from cnnvis.utils import module_dtype

        return x.detach().to(device, module_dtype(_parts(model)[0]) or x.dtype).clone()
    return x.detach().to(device).clone()


class Attribution:
    """Base class: `attribute(x, target) -> (B, 3, H, W)`, `map(x, target) -> (B, H, W)`.

    Subclasses implement `_attribute(x, target)`; it runs with the model in eval mode, its
    parameters frozen and in-place activations off (all restored afterwards, also on error).
    A registered method (`cnnvis.attribution.registry.register_method`) declares what it is and
    can do in class attributes; every list of methods is derived from them.
    """

    name: str = "attribution"  # registry key (CLI --method, a job's `method`), a class attribute of its own
    title: ClassVar[str] = ""  # menu / report label ("Grad-CAM", "integrated gradients")
    takes_layer: ClassVar[bool] = False  # its `layer` option is where the map is computed (the CAM family)
    inputs: ClassVar[frozenset[str]] = frozenset({"class", "activation"})  # explains a class score / a LayerTarget
    returns_delta: ClassVar[bool] = False  # attribute(x, t, return_delta=True) -> (attribution, delta (B,))
    seeded: ClassVar[bool] = False  # takes `seed=` (draws random numbers)
    report: ClassVar[tuple[str, ...]] = ("maps",)  # the report grids it is drawn in ('maps', 'cams')
    caption: ClassVar[str] = ""  # how the report's figure captions name it ('': its title)
    caption_notes: ClassVar[dict[str, str]] = {}  # per report grid: what its caption adds in parentheses
    option_defaults: ClassVar[dict] = {}  # defaults a job writes into its spec (a changed default = new key)
    signed = True  # does `attribute` return signed values?

    @classmethod
    def caption_for(cls, grid: str) -> str:
        """Its words in the caption of report grid `grid` ('maps', 'cams'): 'Grad-CAM (last conv block)'."""
        note = cls.caption_notes.get(grid)
        return (cls.caption or cls.title or cls.name) + (f" ({note})" if note else "")

    @classmethod
    def has_convergence_delta(cls) -> bool:
        """Whether `attribute(..., return_delta=True)` also returns a (B,) completeness error (as Captum)."""
        return cls.returns_delta

    def __init__(self, model) -> None:
        self.model = model
        self.module, self.normalize, self.vm = model_parts(model)

    # ------------------------------------------------------------------ public verbs
    def attribute(self, x: Tensor, target=None) -> Tensor:
        """Attribution for images `x` ((B, 3, H, W), in [0, 1] for a VisModel) and `target`."""
        return self.run(self._attribute, x, target)

    def run(self, fn, x: Tensor, target):
        """The frame of every public verb: check `x`, check `target` against x's batch (-> an
        (B, k) index tensor, a callable, a LayerTarget or None), then `fn(x, target)` with the
        model guarded (eval, frozen, in-place off; restored also on error). Detached result(s)."""
        from cnnvis.utils import model_guard

        x = check_input(x, self.device, self.model)
        target = self.prepare_target(target, x.shape[0])
        with model_guard(self.module), torch.enable_grad():
            try:
                out = fn(x, target)
            except RuntimeError as e:
                from cnnvis.errors import too_small

                small = too_small(e, f"the {x.shape[-2]}x{x.shape[-1]} input image")
                if small is None:
                    raise
                raise small from None
        return tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach()

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
    def forward_score(self, x: Tensor, target, layers: Sequence[str] = (), *, check: bool = True
                      ) -> tuple[Tensor, dict[str, Tensor]]:
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
        return self.score_output(out, target, check), acts

    def prepare_target(self, target, B: int):
        """User target -> None | LayerTarget | callable | (B, k) long tensor of output indices."""
        if target is None or isinstance(target, LayerTarget):
            return target
        if callable(target) and not torch.is_tensor(target):
            return target
        if isinstance(target, str):
            target = self.class_index(target)
        if isinstance(target, tuple):  # one index into a multi-dim output, for every image
            idx = self._indices(target).reshape(1, -1)
        elif isinstance(target, list):  # one entry per image
            rows = [self._indices(self.class_index(t) if isinstance(t, str) else t).reshape(-1) for t in target]
            if not rows or len({r.numel() for r in rows}) != 1:
                raise CnnvisError(f"target: a list needs one class index (or index tuple) per image, all alike; "
                                  f"got {target!r}")
            idx = torch.stack(rows)
        else:
            idx = self._indices(target)
            if idx.dim() == 0:
                idx = idx.reshape(1, 1)
            elif idx.dim() == 1:
                idx = idx.reshape(-1, 1)
            elif idx.dim() != 2:
                raise CnnvisError(f"target: a tensor of indices must be (B,) or (B, k), got shape {tuple(idx.shape)}")
        if idx.shape[0] not in (1, B):
            raise CnnvisError(f"target: got {idx.shape[0]} targets for {B} image{'s' if B > 1 else ''}; "
                              f"give one per image, or one for all")
        return idx.expand(B, -1).to(self.device)

    def class_index(self, name: str) -> int:
        if self.vm is None:
            raise CnnvisError(f"class name {name!r} needs a model with labels; give a class index")
        return self.vm.class_index(name)

    @staticmethod
    def _indices(t) -> Tensor:
        try:
            idx = torch.as_tensor(t)
        except (TypeError, ValueError, RuntimeError):
            idx = None
        if idx is None or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise CnnvisError(f"target must be a class index or name, a tuple of indices, a list (one per image), "
                              f"a callable or a LayerTarget; got {t!r}")
        return idx.long()

    def score_output(self, out, target, check: bool = True) -> Tensor:
        """Model output (N, ...) + prepared target -> (N,) score: the indexed output (the
        target class's logit), summed over any dims the index leaves; None = top-1 class.
        check=False skips the index range check (a GPU sync) for targets already checked."""
        if isinstance(out, (tuple, list)):
            out = out[0]
        if callable(target) and not torch.is_tensor(target):  # it gets the output as the model returns it (a dict)
            s = target(out)
            N = out.shape[0] if torch.is_tensor(out) else (s.shape[0] if torch.is_tensor(s) and s.dim() == 1 else -1)
            if not torch.is_tensor(s) or s.shape != (N,):
                raise CnnvisError(f"a callable target must return one score per image, shape (batch,); "
                                  f"got {tuple(s.shape) if torch.is_tensor(s) else type(s).__name__}")
            return s
        if not torch.is_tensor(out):
            raise CnnvisError(f"the model returned {type(out).__name__}, not a tensor; pass a callable target that "
                              f"takes it and returns one score per image, e.g. lambda o: o['logits'][:, 2]")
        N = out.shape[0]
        if target is None:
            if out.dim() != 2:  # edge maps, segmentation: the sum of the outputs
                return out.reshape(N, -1).sum(1)
            target = out.detach().argmax(1, keepdim=True)
        idx = target.to(out.device)
        k = idx.shape[1]
        if idx.shape[0] != N:  # an internal expansion bug, never the user's
            raise RuntimeError(f"{idx.shape[0]} prepared targets for a batch of {N}")
        if k > out.dim() - 1:
            raise CnnvisError(f"target has {k} indices but the model's output has shape {tuple(out.shape[1:])}; "
                              f"give at most {out.dim() - 1}")
        for j in range(k if check else 0):
            n = out.shape[1 + j]
            bad = (idx[:, j] < 0) | (idx[:, j] >= n)
            if bad.any():
                what = "class" if out.dim() == 2 else f"index {j} of"
                raise CnnvisError(f"target {what} {int(idx[:, j][bad][0])} is out of range: the model's output "
                                  f"has {n} {'classes' if out.dim() == 2 else 'entries there'} (0..{n - 1})")
        sel = out[(torch.arange(N, device=out.device), *idx.unbind(1))]
        return sel.reshape(N, -1).sum(1)

    def fixed_target(self, x: Tensor, target):
        """For methods that run on changed inputs (IG, SmoothGrad): None -> the top-1 class of
        `x` as a (B, 1) index tensor (None stays None for non-classifiers)."""
        from cnnvis.utils import model_guard

        if target is not None:
            return target
        with model_guard(self.module), torch.no_grad():  # eval mode: no BatchNorm statistics updated
            out = self.model(x) if self.vm is not None else self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if torch.is_tensor(out) and out.dim() == 2:
            return out.argmax(1, keepdim=True)
        return None

    def input_grad(self, x: Tensor, target) -> Tensor:
        """d score / d x for a batch: (B, 3, H, W)."""
        xg = x.detach().requires_grad_(True)
        score, _ = self.forward_score(xg, target)
        (g,) = torch.autograd.grad(score.sum(), xg, allow_unused=True)
        return torch.zeros_like(x) if g is None else g


def repeat_target(target, r: int):
    """A prepared target for B images -> the same for r stacked copies of the batch (r*B images)."""
    return target.repeat(r, 1) if torch.is_tensor(target) else target
