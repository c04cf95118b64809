"""capture(model, layers): record layer outputs and stop the forward pass after the last one.

    with capture(vm, ["conv4_3", "features.29"]) as cap:
        out = cap.run(x)            # x: (B, 3, H, W) in [0, 1] for a VisModel, raw input for a Module
        acts = cap["conv4_3"]       # (B, C, h, w), still attached to the autograd graph

Hooks are removed when the block exits, also after an exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import Tensor, nn


class _StopForward(Exception):
    """Raised by the last hook to skip the rest of the network."""


class Capture:
    """Outputs of the requested layers; `run(x)` runs the (possibly truncated) forward."""

    def __init__(self, model: nn.Module, names: list[str], normalize=None, stop: bool = True):
        self.model, self.names, self.normalize, self.stop = model, names, normalize, stop
        self.outputs: dict[str, Tensor] = {}
        self.finished = False  # True when the forward ran to the end (not stopped early)

    def __getitem__(self, name: str) -> Tensor:
        return self.outputs[self._alias.get(name, name)]

    def run(self, x: Tensor) -> Tensor | None:
        """Forward `x`; returns the model output, or None when stopped after the last layer."""
        self.outputs = {}
        self.finished = False
        if self.normalize is not None:
            x = self.normalize(x)
        try:
            out = self.model(x)
        except _StopForward:
            return None
        self.finished = True
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the forward pass")
        return out

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            if name not in self.outputs:
                self.outputs[name] = output
            if self.stop and len(self.outputs) == len(self.names):
                raise _StopForward

        return hook


@contextlib.contextmanager
def capture(model, layers: Sequence[str], *, stop: bool = True) -> Iterator[Capture]:
    """Hook `layers` of `model` (an nn.Module or a VisModel; names may be aliases).

    With stop=True the forward pass ends right after every requested layer has produced its
    output: nothing deeper is computed.
    """
    from cnnvis.layers import _parts, resolve_layer

    module, _, vm = _parts(model)
    normalize = vm.preprocess.normalize if vm is not None else None
    names = [resolve_layer(model, n) for n in layers]
    uniq = list(dict.fromkeys(names))
    cap = Capture(module, uniq, normalize, stop and bool(uniq))
    cap._alias = {a: r for a, r in zip(layers, names)}
    handles = []
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
