"""Objectives for activation maximization: small callables that compose with + - and scalar *.

    obj = channel("stage4", 7) - 0.5 * diversity("stage4")
    obj = class_logit("pelican")                      # reads the model output ('logits')
    obj = channel("conv3_1", list(range(16)))         # a batch of 16 images, one channel each

An objective maps the captured activations to one value per batch image, shape (B,); the
renderer maximizes their sum. Every objective declares the layers it reads (`obj.layers`), so
the renderer hooks only those and stops the forward pass after the deepest one. The special
layer name LOGITS ('logits') is the model's output; reading it runs the whole network.
Names may be aliases (conv5_3, stage4) or dotted module names.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from cnnvis.errors import CnnvisError

LOGITS = "logits"

Acts = dict[str, Tensor]


class Objective:
    """value(acts) -> (B,) per-image values to maximize (a scalar is broadcast to the batch).

    layers: the layer names it reads. batch: the batch size it implies (None = any).
    setup(vm) resolves names against a model before rendering (class names, shapes) and
    raises CnnvisError for bad input.
    """

    def __init__(self, fn: Callable[[Acts], Tensor], layers: Sequence[str] = (), name: str = "objective",
                 batch: int | None = None, setup: Callable | None = None, children: Sequence["Objective"] = (),
                 key: Callable[[int, Callable[[str], str]], str] | None = None):
        self.fn = fn
        self._key = key
        self.layers = tuple(dict.fromkeys(layers))
        self.name = name
        self.batch = batch
        self._setup = setup
        self.children = tuple(children)
        self.targets: list[int] | None = None  # class indices for class objectives (after setup)

    def __call__(self, acts: Acts) -> Tensor:
        return self.fn(acts)

    def setup(self, vm) -> "Objective":
        for c in self.children:
            c.setup(vm)
        if self._setup is not None:
            self._setup(vm)
        return self

    def image_key(self, i: int, canon: Callable[[str], str] = str) -> str:
        """What image i of the batch shows, as a string (seeds its random generator): e.g.
        'channel(features.4,5)' for channel 5 whatever its place in a batch. `canon` maps a layer
        name to its canonical (dotted) name."""
        return self._key(i, canon) if self._key is not None else self.name

    def class_targets(self) -> list[int] | None:
        """Class indices (one per batch image) of the first class objective inside, if any."""
        if self.targets is not None:
            return self.targets
        for c in self.children:
            t = c.class_targets()
            if t is not None:
                return t
        return None

    # ---- arithmetic
    @staticmethod
    def _combine(a: "Objective", b: "Objective", op, sym: str) -> "Objective":
        if a.batch and b.batch and a.batch != b.batch:
            raise CnnvisError(f"cannot combine objectives for batches of {a.batch} and {b.batch} images")
        return Objective(lambda acts: op(a(acts), b(acts)), a.layers + b.layers, f"{a.name} {sym} {b.name}",
                         a.batch or b.batch, children=(a, b),
                         key=lambda i, c: f"({a.image_key(i, c)} {sym} {b.image_key(i, c)})")

    def __add__(self, other):
        if isinstance(other, numbers.Number):
            return Objective(lambda acts: self(acts) + other, self.layers, f"{self.name} + {other}", self.batch,
                             children=(self,), key=lambda i, c: f"({self.image_key(i, c)} + {other!r})")
        return Objective._combine(self, _as_obj(other), torch.add, "+")

    __radd__ = __add__  # sum([...]) starts from 0

    def __sub__(self, other):
        if isinstance(other, numbers.Number):
            return self + (-other)
        return Objective._combine(self, _as_obj(other), torch.sub, "-")

    def __rsub__(self, other):
        return (-self) + other

    def __neg__(self):
        return -1 * self

    def __mul__(self, k):
        if not isinstance(k, numbers.Number):
            raise TypeError("objectives can only be multiplied by numbers")
        return Objective(lambda acts: k * self(acts), self.layers, f"{k}*{self.name}", self.batch, children=(self,),
                         key=lambda i, c: f"{k!r}*{self.image_key(i, c)}")

    __rmul__ = __mul__

    def __truediv__(self, k):
        return self * (1.0 / k)

    def __repr__(self) -> str:
        return f"Objective({self.name}, layers={list(self.layers)})"


def _as_obj(x) -> Objective:
    if not isinstance(x, Objective):
        raise TypeError(f"cannot combine an objective with {type(x).__name__}")
    return x


def _index_list(n, what: str) -> tuple[list[int] | None, int | None]:
    """int -> (None, None) (same for every image); list -> (list, batch)."""
    if isinstance(n, (list, tuple, range)) or (torch.is_tensor(n) and n.dim() == 1):
        idx = [int(i) for i in n]
        if not idx:
            raise CnnvisError(f"empty list of {what}s")
        return idx, len(idx)
    return None, None


def _check_range(act: Tensor, layer: str, idx: Sequence[int], what: str = "channel") -> None:
    c = act.shape[1]
    bad = [i for i in idx if not -c <= i < c] if what == "channel" else []
    if bad:
        raise CnnvisError(f"{what} {bad[0]} is out of range for layer {layer!r}, which has {c} channels (0..{c - 1})")


def _per_image(act: Tensor, n: int, idx: list[int] | None) -> Tensor:
    """(B, C, ...) -> (B, ...) picking channel idx[b] (or n) for each image b."""
    if idx is None:
        return act[:, n]
    if act.shape[0] % len(idx):
        raise CnnvisError(f"objective is for {len(idx)} images, the batch has {act.shape[0]}")
    sel = torch.as_tensor(idx * (act.shape[0] // len(idx)), device=act.device)
    return act[torch.arange(act.shape[0], device=act.device), sel]


def channel(layer: str, n: int | Sequence[int], *, leak: float | None = None,
            affine: tuple[Tensor, Tensor] | None = None) -> Objective:
    """Mean activation of channel `n` of `layer` ((B, C, h, w) or (B, C)).

    n may be a list: image b of the batch maximizes channel n[b] (batched filter rendering).
    leak: if given (0 < leak <= 1), the mean of leaky_relu(activation, leak) instead: negative
    values count `leak` times. Meant for pre-ReLU layers (conv outputs): the gradient never
    vanishes (unlike the post-ReLU mean, which is flat where the channel is off), yet a channel
    that fires strongly on part of the image is not outvoted by its negative rest (the plain
    pre-ReLU mean of a sparse channel stays negative and its image grey).
    affine: (scale (C,), shift (C,)): the channel as a following eval-mode BatchNorm makes it
    (scale * value + shift, before the leak; `cnnvis.layers.channel_points` finds it). A negative
    scale turns the channel over: maximizing the conv output would drive what the next layer gets down.
    """
    idx, batch = _index_list(n, "channel")
    if leak is not None and not (isinstance(leak, numbers.Real) and 0 < leak <= 1):
        raise CnnvisError(f"leak must be a number in (0, 1], got {leak!r}")
    leak = None if leak == 1 else leak
    checked = []
    cache: dict = {}

    def fn(acts):
        a = acts[layer]
        if not checked:
            _check_range(a, layer, idx if idx is not None else [int(n)])
            if affine is not None and not all(t.numel() == a.shape[1] for t in affine):
                raise CnnvisError(f"affine has {affine[0].numel()} entries but layer {layer!r} has "
                                  f"{a.shape[1]} channels")
            checked.append(True)
        v = _per_image(a, int(n) if idx is None else 0, idx)
        if affine is not None:  # each image's own channel's scale and shift, (B, 1, ...)
            key = (a.device, a.shape[0])
            ab = cache.get(key)
            if ab is None:
                sel = torch.as_tensor([int(n)] * a.shape[0] if idx is None else idx * (a.shape[0] // len(idx)))
                shape = (-1, *([1] * (v.dim() - 1)))
                ab = cache[key] = tuple(t.detach().float()[sel].to(a.device, a.dtype).view(shape) for t in affine)
            v = v * ab[0] + ab[1]
        if leak is not None:
            v = torch.nn.functional.leaky_relu(v, leak)
        return v.flatten(1).mean(1) if v.dim() > 1 else v

    tag = "" if leak is None else f",leak={leak!r}"
    if affine is not None:
        raw = b"".join(torch.as_tensor(t, dtype=torch.float32).cpu().numpy().tobytes() for t in affine)
        tag += f",affine={hashlib.blake2b(raw, digest_size=8).hexdigest()}"
    return Objective(fn, [layer], f"channel({layer},{n if idx is None else f'{len(idx)} channels'}{tag})", batch,
                     key=lambda i, c: f"channel({c(layer)},{int(n) if idx is None else idx[i % len(idx)]}{tag})")


def neuron(layer: str, n: int | Sequence[int], x: int | None = None, y: int | None = None) -> Objective:
    """Activation of channel `n` at one spatial position (default: the centre) of a (B, C, h, w) layer."""
    idx, batch = _index_list(n, "channel")
    checked = []

    def fn(acts):
        a = acts[layer]
        if not checked:
            if a.dim() != 4:
                raise CnnvisError(f"neuron objective needs a spatial layer (B, C, h, w); {layer!r} has output shape "
                                  f"{tuple(a.shape)}; use channel({layer!r}, n) instead")
            _check_range(a, layer, idx if idx is not None else [int(n)])
            h, w = a.shape[2:]
            if (x is not None and not 0 <= x < w) or (y is not None and not 0 <= y < h):
                raise CnnvisError(f"neuron position ({x}, {y}) is outside layer {layer!r} of size {w}x{h}")
            checked.append(True)
        h, w = a.shape[2:]
        v = _per_image(a, int(n) if idx is None else 0, idx)
        return v[:, h // 2 if y is None else y, w // 2 if x is None else x]

    return Objective(fn, [layer], f"neuron({layer},{n})", batch,
                     key=lambda i, c: f"neuron({c(layer)},{int(n) if idx is None else idx[i % len(idx)]},{x},{y})")


def class_logit(target: int | str | Sequence[int | str]) -> Objective:
    """Pre-softmax logit of class `target` (index or name); a list gives one class per image."""
    return _class_objective(target, "class_logit")


def class_logprob(target: int | str | Sequence[int | str]) -> Objective:
    """Log-softmax of class `target`: its logit minus the logsumexp of all, so rival classes are pushed
    down too (on a 10-class net, raising the logit of 9 alone also raised 7's and drew a 7)."""
    return _class_objective(target, "class_logprob")


def _class_objective(target, what: str) -> Objective:
    if isinstance(target, (list, tuple, range)):
        names, batch = list(target), len(target)
        if not names:
            raise CnnvisError("empty list of classes")
    else:
        names, batch = [target], None
    obj: Objective

    def setup(vm):
        if getattr(vm, "task", "classification") != "classification":
            raise CnnvisError(f"model {vm.name!r} is not a classifier ({vm.task}); a class objective needs class logits")
        if hasattr(vm, "class_index"):
            obj.targets = [vm.class_index(t) for t in names]
        else:
            obj.targets = [int(t) for t in names]
        obj._sel = None

    def fn(acts):
        out = acts[LOGITS]
        if out.dim() != 2:
            raise CnnvisError(f"class objective expects logits of shape (B, classes), got {tuple(out.shape)}")
        t = obj.targets
        if t is None:
            raise CnnvisError("class objective used before setup(vm)")
        if max(t) >= out.shape[1]:
            raise CnnvisError(f"class {max(t)} is out of range; the model has {out.shape[1]} classes")
        if obj._sel is None or obj._sel[0].device != out.device or obj._sel[0].shape[0] != out.shape[0]:
            reps = out.shape[0] // len(t)
            obj._sel = (torch.arange(out.shape[0], device=out.device), torch.as_tensor(t * reps, device=out.device))
        if what == "class_logprob":
            out = torch.log_softmax(out, 1)
        return out[obj._sel]

    def key(i, c):
        t = obj.targets if obj.targets is not None else names
        return f"{what}({t[i % len(t)]})"

    obj = Objective(fn, [LOGITS], f"{what}({target})", batch, setup, key=key)
    obj._sel = None
    return obj


def layer_l2(layer: str) -> Objective:
    """Mean squared activation of `layer` (DeepDream's objective, Mordvintsev et al. 2015)."""
    return Objective(lambda acts: acts[layer].pow(2).flatten(1).mean(1), [layer], f"l2({layer})",
                     key=lambda i, c: f"l2({c(layer)})")


def direction(layer: str, vec: Tensor | Sequence[float]) -> Objective:
    """Mean over positions of the dot product of `layer`'s channel vector with unit `vec` (C,)."""
    v = torch.as_tensor(vec, dtype=torch.float32).flatten()
    v = v / v.norm().clamp_min(1e-12)
    cache = {}

    def fn(acts):
        a = acts[layer]
        if a.shape[1] != v.numel():
            raise CnnvisError(f"direction has {v.numel()} entries but layer {layer!r} has {a.shape[1]} channels")
        vv = cache.get(a.device)
        if vv is None:
            vv = cache[a.device] = v.to(a.device, a.dtype).view(1, -1, *([1] * (a.dim() - 2)))
        return (a * vv).sum(1).flatten(1).mean(1) if a.dim() > 2 else (a * vv).sum(1)

    digest = hashlib.blake2b(v.numpy().tobytes(), digest_size=8).hexdigest()
    return Objective(fn, [layer], f"direction({layer})", key=lambda i, c: f"direction({c(layer)},{digest})")


def diversity(layer: str) -> Objective:
    """Negative mean cosine similarity of each image's Gram matrix to the others' (Olah et al. 2017).

    Adding it with a weight makes a batch of images of the same channel differ from each other.
    """

    def fn(acts):
        a = acts[layer]
        b, c = a.shape[:2]
        if b < 2:
            return a.new_zeros(b)
        f = a.reshape(b, c, -1)
        gram = torch.bmm(f, f.transpose(1, 2)).reshape(b, -1)
        gram = gram / gram.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sim = gram @ gram.t()
        return -(sim.sum(1) - sim.diagonal()) / (b - 1)

    return Objective(fn, [layer], f"diversity({layer})", key=lambda i, c: f"diversity({c(layer)})")


def as_objective(spec) -> Objective:
    """Objective or a 'layer:channel' string -> Objective."""
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, str) and ":" in spec:
        from cnnvis.errors import whole_number

        layer, n = spec.rsplit(":", 1)
        c = whole_number(n, signed=False)
        if layer.strip() and c is not None:
            return channel(layer.strip(), c)
    raise CnnvisError(f"cannot make an objective from {spec!r}; use e.g. channel('conv3_1', 5) or 'conv3_1:5'")
