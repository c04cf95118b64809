"""capture(model, layers): record layer outputs and stop the forward pass after the last one.

    with capture(vm, ["conv4_3", "features.29"]) as cap:
        out = cap.run(x)            # x: (B, 3, H, W) in [0, 1] for a VisModel, raw input for a Module
        acts = cap["conv4_3"]       # (B, C, h, w), still attached to the autograd graph

Hooks are removed when the block exits, also after an exception.

A captured tensor is what the layer really produced, even when the model's own forward later
writes into it in place (torchvision's BasicBlock: `out += identity` after `bn2`): the hook hands
the rest of the network a copy (`clone`, which stays in the autograd graph, so gradients with
respect to the captured tensor are the true ones) and keeps the original. The layer that ends a
stopped forward is not copied: nothing runs after it. A copy costs one activation-sized memcpy
per captured layer and forward; detecting the write instead (`_version`) would need a second
forward once it has happened, so the copy is always made and `_version` only double-checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from cnnvis.errors import CnnvisError


class _StopForward(Exception):
    """Raised by the last hook to skip the rest of the network."""


class Capture:
    """Outputs of the requested layers; `run(x)` runs the (possibly truncated) forward."""

    def __init__(self, model: nn.Module, names: list[str], normalize=None, stop: bool = True):
        self.model, self.names, self.normalize, self.stop = model, names, normalize, stop
        from cnnvis.utils import module_dtype

        self.dtype = module_dtype(model)  # a model kept in float64 / bfloat16 gets its images in its own dtype
        self.outputs: dict[str, Tensor] = {}
        self.finished = False  # True when the forward ran to the end (not stopped early)

    def __getitem__(self, name: str) -> Tensor:
        return self.outputs[self._alias.get(name, name)]

    def run(self, x: Tensor) -> Tensor | None:
        """Forward `x`; returns the model output, or None when stopped after the last layer."""
        self.outputs = {}
        self._versions: dict[str, int] = {}
        self.finished = False
        if self.normalize is not None:
            x = self.normalize(x)
        if self.dtype is not None and x.dtype != self.dtype and x.is_floating_point():
            x = x.to(self.dtype)
        try:
            out = self.model(x)
        except _StopForward:
            out = None
        else:
            self.finished = True
            missing = [n for n in self.names if n not in self.outputs]
            if missing:
                raise CnnvisError(f"layer{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))} did not run in "
                                  f"the forward pass (defined in the model but not used on this input, e.g. a "
                                  f"dropped path or an unused head); pick another layer (see `cnnvis layers`)"
                                  + ("; a torch.compile'd model runs no hooks: pass the original module "
                                     "(model._orig_mod)" if hasattr(self.model, "_orig_mod") else ""))
        self._check_unchanged()
        return out

    def _check_unchanged(self) -> None:
        """Raise if a captured tensor was written in place although the network got a copy
        (the layer returned an alias of a tensor the model keeps, e.g. an Identity's input)."""
        for n, v in self._versions.items():
            if self.outputs[n]._version != v:
                raise CnnvisError(f"layer {n!r} returns a tensor that the model's forward later overwrites in place "
                                  f"(an alias such as an Identity's input); capture the layer that computes it")

    def _hook(self, name: str):
        def hook(module, inputs, output):
            first = output[0] if isinstance(output, (tuple, list)) else output
            if name in self.outputs:  # a module called twice: the first call counts
                return None
            self.outputs[name] = first
            if self.stop and len(self.outputs) == len(self.names):
                raise _StopForward
            if not torch.is_tensor(first):
                return None
            if not first.is_inference():
                self._versions[name] = first._version
            return _with_first(output, first.clone())  # later in-place ops write into the copy

        return hook


def _with_first(output, first: Tensor):
    """`output` (a tensor, or a tuple/list led by one) with its first tensor replaced by `first`."""
    if torch.is_tensor(output):
        return first
    if type(output) is tuple:
        return (first, *output[1:])
    if type(output) is list:
        return [first, *output[1:]]
    if hasattr(output, "_make"):  # a namedtuple
        return output._make((first, *output[1:]))
    return None  # an unknown container: keep the original output


@contextlib.contextmanager
def capture(model, layers: Sequence[str], *, stop: bool = True) -> Iterator[Capture]:
    """Hook `layers` of `model` (an nn.Module or a VisModel; names may be aliases).

    With stop=True the forward pass ends right after every requested layer has produced its
    output: nothing deeper is computed. Inside the block the model is in eval mode with in-place
    activations off (a train-mode model's BatchNorm statistics are not updated by a look); every
    flag is restored afterwards.
    """
    from cnnvis.layers import _parts, resolve_layer
    from cnnvis.utils import model_guard

    module, _, vm = _parts(model)
    normalize = vm.preprocess.normalize if vm is not None else None
    names = [resolve_layer(model, n) for n in layers]
    uniq = list(dict.fromkeys(names))
    cap = Capture(module, uniq, normalize, stop and bool(uniq))
    cap._alias = {a: r for a, r in zip(layers, names)}
    handles = []
    with model_guard(module, freeze=False):
        try:
            for n in uniq:
                handles.append(module.get_submodule(n).register_forward_hook(cap._hook(n)))
            yield cap
        finally:
            for h in handles:
                h.remove()


def hook_count(model: nn.Module) -> int:
    """Number of hooks of any kind on `model` and its submodules (tests use it to check for leaks)."""
    n = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            n += len(getattr(m, attr, {}) or {})
    return n
