"""Layer names: dotted `named_modules()` names, classic aliases, output shapes.

    list_layers(vm)                 -> [LayerInfo(name='features.0', alias='conv1_1', kind='Conv2d', shape=(64, 224, 224)), ...]
    resolve_layer(vm, 'conv5_3')    -> 'features.28'
    channel_points(vm, ['features.0'])  -> {'features.0': ChannelPoint(layer, norm='features.1', act='features.2', ...)}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnvis.errors import unknown_name


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str
    shape: tuple[int, ...] | None  # output shape without the batch dim, for the probed input size
    alias: str = ""
    params: int = 0

    @property
    def spatial(self) -> bool:
        return self.shape is not None and len(self.shape) == 3


def _parts(model):
    """VisModel or nn.Module -> (module, aliases, VisModel) via `cnnvis.models.as_vismodel`."""
    from cnnvis.models.registry import as_vismodel

    vm = as_vismodel(model)
    return vm.model, vm.aliases, vm


def resolve_layer(model, name: str) -> str:
    """Alias or dotted name -> dotted module name; unknown names raise with close matches."""
    module, aliases, _ = _parts(model)
    name = str(name).strip()
    if name in aliases:
        return aliases[name]
    names = [n for n, _ in module.named_modules() if n]
    if name in names:
        return name
    raise unknown_name("layer", name, list(aliases) + names, hint="see `cnnvis layers MODEL`")


def conv_layers(model) -> list[str]:
    """Dotted names of all Conv2d modules, in definition order."""
    module, _, _ = _parts(model)
    return [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]


def list_layers(model, input_size: int | tuple[int, int] | None = None, *, leaves_only: bool = False) -> list[LayerInfo]:
    """All named modules in execution order, with output shapes for a (1, C, H, W) probe input.

    C, H, W come from the model's `input_shape` (a bare nn.Module: C = its first Conv2d's
    `in_channels`, H = W = 224; say otherwise with `wrap(module, input_shape=(1, 28, 28))`).
    `input_size` (an int or (H, W)) overrides H, W.
    """
    from cnnvis.utils import model_guard

    module, aliases, vm = _parts(model)
    c, h, w = vm.input_shape
    if input_size:
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    rev = {}
    for a, n in aliases.items():
        rev.setdefault(n, a)
    shapes: dict[str, tuple[int, ...] | None] = {}
    order: list[str] = []
    handles = []

    def hook(name):
        def fn(mod, inp, out):
            if name not in shapes:
                order.append(name)
                t = out[0] if isinstance(out, (tuple, list)) and out else out
                shapes[name] = tuple(t.shape[1:]) if torch.is_tensor(t) else None

        return fn

    named = [(n, m) for n, m in module.named_modules() if n]
    if leaves_only:
        named = [(n, m) for n, m in named if not list(m.children())]
    try:
        for n, m in named:
            handles.append(m.register_forward_hook(hook(n)))
        with model_guard(module), torch.no_grad():
            x = torch.full((1, c, h, w), 0.5, device=vm.device)
            module(vm.preprocess.normalize(x))
    finally:
        for hd in handles:
            hd.remove()
    mods = dict(named)
    ran = [n for n in order]
    ran += [n for n, _ in named if n not in shapes]  # modules that did not run (e.g. dropped aux heads)
    return [
        LayerInfo(n, type(mods[n]).__name__, shapes.get(n), rev.get(n, ""),
                  sum(p.numel() for p in mods[n].parameters(recurse=False)))
        for n in ran
    ]


def default_layers(model) -> list[str]:
    """The layers a grid or panel shows by default: VGG conv1_1..conv5_3, else the stage aliases
    (stage0..stage6), else every Conv2d. One chooser for filters, the deconvnet and DeepDream."""
    import re

    _, aliases, _ = _parts(model)
    for pattern in (r"conv\d+_\d+", r"stage\d+"):
        found = [a for a in aliases if re.fullmatch(pattern, a)]
        if found:
            return found
    return conv_layers(model)


def dream_layers(model, n: int = 3) -> list[str]:
    """`n` layers of increasing depth for DeepDream: VGG's pools (pool3..pool5), else spread over
    `default_layers` from about a third of the depth to the last (n=1: about two thirds deep)."""
    _, aliases, _ = _parts(model)
    pools = [p for p in ("pool3", "pool4", "pool5") if p in aliases]
    if len(pools) == 3:
        return ["pool4"] if n == 1 else pools[-n:] if n < 3 else pools
    cands = default_layers(model)
    if not cands:
        from cnnvis.errors import CnnvisError

        raise CnnvisError("this model has no conv layers to dream at; give layers")
    if n == 1:
        return [cands[min(len(cands) - 1, (2 * len(cands)) // 3)]]
    lo = len(cands) // 3
    idx = [round(lo + (len(cands) - 1 - lo) * i / (n - 1)) for i in range(n)]
    return [cands[i] for i in dict.fromkeys(idx)]


# ---------------------------------------------------------------------------- where a channel is used
# activation modules that act on each value alone (a Softmax mixes channels: not one of them)
_NOT_ELEMENTWISE = {"Softmax", "Softmin", "LogSoftmax", "Softmax2d", "MultiheadAttention", "GLU"}


def is_activation(m: nn.Module) -> bool:
    """True for an elementwise activation module (torch's ReLU, ReLU6, SiLU, GELU..., timm's own)."""
    mod = type(m).__module__.rsplit(".", 1)[-1]
    return mod.startswith("activation") and type(m).__name__ not in _NOT_ELEMENTWISE


def _batchnorm_affine(m: nn.Module, channels: int):
    """(scale (C,), shift (C,)) of an eval-mode BatchNorm over `channels` channels, or None when `m`
    is not one (or keeps no running statistics: its output then depends on the batch)."""
    mean, var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
    if not (torch.is_tensor(mean) and torch.is_tensor(var) and mean.numel() == channels == var.numel()):
        return None
    w, b = getattr(m, "weight", None), getattr(m, "bias", None)
    scale = (var.detach().float() + float(getattr(m, "eps", 1e-5))).rsqrt()
    if torch.is_tensor(w):
        scale = scale * w.detach().float()
    shift = -mean.detach().float() * scale
    if torch.is_tensor(b):
        shift = shift + b.detach().float()
    return scale, shift


@dataclass(frozen=True)
class ChannelPoint:
    """Where a layer's channels are used. layer: the module asked for; norm: the BatchNorm that takes
    its output (None: none does), with affine = its eval-mode (scale (C,), shift (C,)); act: the module
    whose output is the channel after its activation (a ReLU after the BatchNorm, or timm's
    BatchNormAct2d itself); live: where the next layers get it (act, else norm, else layer)."""

    layer: str
    norm: str | None = None
    act: str | None = None
    affine: tuple | None = None

    @property
    def live(self) -> str:
        return self.act or self.norm or self.layer


def channel_points(model, layers) -> dict[str, ChannelPoint]:
    """For each layer (alias or dotted name): the BatchNorm and the activation that take its output,
    found by following its output tensor through one forward pass of a grey image (eval mode, in-place
    activations off; the model comes back unchanged). A channel read after a BatchNorm is the
    BatchNorm's affine map of it; a layer whose output feeds an activation module is used after it."""
    from cnnvis.utils import model_guard

    module, _, vm = _parts(model)
    names = {n: resolve_layer(model, n) for n in layers}
    events: list[tuple[str, str, object]] = []  # ('in' | 'out', module name, first input / output)
    handles = []

    def first(t):
        return t[0] if isinstance(t, (tuple, list)) and t else t

    named = dict(module.named_modules())
    try:
        for n, m in named.items():
            if not n:
                continue
            handles.append(m.register_forward_pre_hook(lambda mod, inp, n=n: events.append(("in", n, first(inp)))))
            handles.append(m.register_forward_hook(lambda mod, inp, out, n=n: events.append(("out", n, first(out)))))
        with model_guard(module), torch.no_grad():
            c, h, w = vm.input_shape
            module(vm.preprocess.normalize(torch.full((1, c, h, w), 0.5, device=vm.device)))
    finally:
        for hd in handles:
            hd.remove()

    def output(name, after=0):
        for i in range(after, len(events)):
            kind, n, t = events[i]
            if kind == "out" and n == name:
                return i, t
        return None, None

    def consumer(t, after):
        """The first module called after event `after` whose input is the tensor t itself."""
        if not torch.is_tensor(t):
            return None
        for kind, n, x in events[after + 1:]:
            if kind == "in" and x is t:
                return n
        return None

    out = {}
    for asked, name in names.items():
        i, t = output(name)
        norm = act = affine = None
        nxt = consumer(t, i) if i is not None else None
        if nxt is not None and torch.is_tensor(t) and t.dim() >= 2:
            m = named[nxt]
            affine = _batchnorm_affine(m, t.shape[1])
            if affine is not None:
                norm = nxt
                if any(is_activation(s) for s in m.modules() if s is not m):  # timm's BatchNormAct2d
                    act = nxt
                else:
                    j, u = output(nxt, i)
                    after = consumer(u, j) if j is not None else None
                    act = after if after is not None and is_activation(named[after]) else None
            elif is_activation(m):
                act = nxt
        out[asked] = ChannelPoint(name, norm, act, affine)
    return out
