"""Compare two models on the same images: linear CKA between every pair of layers, and for two nets of
the same architecture the best-matching channel of B for each channel of A.

    res = compare_models(vm_a, vm_b, pairs, ["conv1", "conv2"], ["conv1", "conv2"], match_layer="relu2")
    res.cka            # (La, Lb) linear CKA of layer i of A with layer j of B on the same images
    res.match.best     # (C,) for each channel of A at match_layer, B's channel of highest correlation

Linear CKA (Kornblith et al. 2019) of centred features X (n, p) and Y (n, q) of the same n images:
    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
It is 1 for X = Y and unchanged when X is rotated (X Q, Q orthogonal) or scaled (a X).

Streamed in feature space: one pass over the data accumulates, per model, the running sum of the
features and the cross-products sum_k x_k y_k^T (every layer of A against every layer of B) and
sum_k x_k x_k^T (each layer with itself); centring is applied at the end (X_c^T Y_c = sum x y^T -
n mean_x mean_y^T, with the first batch's mean subtracted beforehand so that no large numbers cancel).
That is exactly linear CKA of the n images (float64 sums), with memory set by the feature sizes
(P x Q numbers for P, Q features of all layers of A, B), not by n. Minibatch CKA (Nguyen et al. 2021)
instead averages an unbiased HSIC estimate over batches of m images (memory m^2, any feature size): a
different estimator whose value depends on m and on how the images fall into batches; it tends to
the population CKA, but it is not the CKA of these n images. So we keep the feature-space sums, and
keep the features small: a conv layer's (C, h, w) maps are average-pooled to a `grid` x `grid` grid
(C * grid^2 numbers an image; grid=1 is global average pooling), a vector layer is taken as is.

Channel matching (Li et al. 2016, "Convergent learning"): at one layer of two nets of the same
architecture, every (image, position) is a sample; the Pearson correlation of channel i of A with
channel j of B over all samples, from the same kind of streamed sums. best[i] = argmax_j corr[i, j].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnvis.errors import CnnvisError

MAX_BYTES = 1 << 30  # the P x Q cross-product matrix, float64: refused above 1 GiB (give a smaller grid)


# ---------------------------------------------------------------------- the formula, in memory
def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of features x (n, p) and y (n, q) of the same n examples (all in memory, float64)."""
    x = x.double().flatten(1)
    y = y.double().flatten(1)
    if x.shape[0] != y.shape[0]:
        raise CnnvisError(f"CKA needs the same examples on both sides, got {x.shape[0]} and {y.shape[0]}")
    x = x - x.mean(0)
    y = y - y.mean(0)
    num = (y.T @ x).pow(2).sum()
    den = (x.T @ x).norm() * (y.T @ y).norm()
    return float(num / den) if den > 0 else float("nan")


def pooled(act: Tensor, grid: int) -> Tensor:
    """A layer's output (n, C, h, w) -> (n, C * g * g) averaged over a g x g grid (g = min(grid, h, w));
    (n, D) stays; other shapes are flattened."""
    if act.dim() == 4:
        g = (min(grid, act.shape[2]), min(grid, act.shape[3]))
        return F.adaptive_avg_pool2d(act.float(), g).flatten(1)
    return act.float().flatten(1)


class StreamedCKA:
    """Linear CKA between every layer of A and every layer of B, from batches of features.

        s = StreamedCKA()
        for xs, ys in batches:       # xs: [(n, p_i) per layer of A], ys: [(n, q_j) per layer of B]
            s.update(xs, ys)
        s.result()                   # (La, Lb) float64
    """

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.n = 0
        self.max_bytes = max_bytes
        self._ready = False

    def _start(self, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
        self.pa = [int(x.shape[1]) for x in xs]
        self.pb = [int(y.shape[1]) for y in ys]
        P, Q = sum(self.pa), sum(self.pb)
        need = 8 * (P * Q + sum(p * p for p in self.pa) + sum(q * q for q in self.pb))
        if need > self.max_bytes:
            raise CnnvisError(f"the compared layers have {P} and {Q} features an image: their cross-products take "
                              f"{need / 2 ** 30:.1f} GiB; give a smaller grid or fewer layers")
        za, zb = torch.cat(xs, 1).double(), torch.cat(ys, 1).double()
        self.shift_a, self.shift_b = za.mean(0), zb.mean(0)  # centre roughly now, exactly at the end
        self.sum_a, self.sum_b = torch.zeros(P, dtype=torch.float64), torch.zeros(Q, dtype=torch.float64)
        self.cross = torch.zeros(P, Q, dtype=torch.float64)
        self.self_a = [torch.zeros(p, p, dtype=torch.float64) for p in self.pa]
        self.self_b = [torch.zeros(q, q, dtype=torch.float64) for q in self.pb]
        self._ready = True

    def update(self, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
        if not self._ready:
            self._start(xs, ys)
        if [int(x.shape[1]) for x in xs] != self.pa or [int(y.shape[1]) for y in ys] != self.pb:
            raise CnnvisError("the feature sizes changed between batches (images of another size?)")
        za = torch.cat([x.double().cpu() for x in xs], 1) - self.shift_a
        zb = torch.cat([y.double().cpu() for y in ys], 1) - self.shift_b
        self.n += za.shape[0]
        self.sum_a += za.sum(0)
        self.sum_b += zb.sum(0)
        self.cross.addmm_(za.T, zb)
        for blocks, z, dims in ((self.self_a, za, self.pa), (self.self_b, zb, self.pb)):
            o = 0
            for m, p in zip(blocks, dims):
                part = z[:, o:o + p]
                m.addmm_(part.T, part)
                o += p

    def result(self) -> Tensor:
        """(La, Lb) linear CKA; NaN where a layer is constant over the images (no variance)."""
        if self.n < 2:
            raise CnnvisError(f"CKA needs at least 2 images, got {self.n}")
        ma, mb = self.sum_a / self.n, self.sum_b / self.n
        cross = self.cross - self.n * torch.outer(ma, mb)
        oa, ob = _offsets(self.pa), _offsets(self.pb)
        na = [(m - self.n * torch.outer(ma[o:o + p], ma[o:o + p])).norm()
              for m, o, p in zip(self.self_a, oa, self.pa)]
        nb = [(m - self.n * torch.outer(mb[o:o + q], mb[o:o + q])).norm()
              for m, o, q in zip(self.self_b, ob, self.pb)]
        out = torch.full((len(self.pa), len(self.pb)), float("nan"), dtype=torch.float64)
        for i, (o, p) in enumerate(zip(oa, self.pa)):
            for j, (u, q) in enumerate(zip(ob, self.pb)):
                den = na[i] * nb[j]
                if den > 0:
                    out[i, j] = cross[o:o + p, u:u + q].pow(2).sum() / den
        return out


def _offsets(dims: Sequence[int]) -> list[int]:
    out, o = [], 0
    for d in dims:
        out.append(o)
        o += d
    return out


class StreamedCorrelation:
    """Pearson correlation of every channel of A with every channel of B over (image, position) samples:
    update with activations (n, C, h, w) (or (n, C)) of the same images at layers of the same shape."""

    def __init__(self) -> None:
        self.n = 0
        self._ready = False

    @staticmethod
    def _samples(a: Tensor) -> Tensor:
        return (a.flatten(2).transpose(1, 2).reshape(-1, a.shape[1]) if a.dim() > 2 else a).double().cpu()

    def update(self, a: Tensor, b: Tensor) -> None:
        if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
            raise CnnvisError(f"channel matching needs maps of the same size on both sides, got "
                              f"{tuple(a.shape[1:])} and {tuple(b.shape[1:])}")
        xa, xb = self._samples(a), self._samples(b)
        if not self._ready:
            self.shift_a, self.shift_b = xa.mean(0), xb.mean(0)
            ca, cb = xa.shape[1], xb.shape[1]
            self.sum_a, self.sum_b = torch.zeros(ca, dtype=torch.float64), torch.zeros(cb, dtype=torch.float64)
            self.sq_a, self.sq_b = torch.zeros_like(self.sum_a), torch.zeros_like(self.sum_b)
            self.cross = torch.zeros(ca, cb, dtype=torch.float64)
            self._ready = True
        xa, xb = xa - self.shift_a, xb - self.shift_b
        self.n += xa.shape[0]
        self.sum_a += xa.sum(0)
        self.sum_b += xb.sum(0)
        self.sq_a += xa.pow(2).sum(0)
        self.sq_b += xb.pow(2).sum(0)
        self.cross.addmm_(xa.T, xb)

    def result(self) -> Tensor:
        """(Ca, Cb) correlations; 0 where a channel never varies (a dead channel)."""
        if self.n < 2:
            raise CnnvisError(f"correlation needs at least 2 samples, got {self.n}")
        ma, mb = self.sum_a / self.n, self.sum_b / self.n
        cov = self.cross - self.n * torch.outer(ma, mb)
        va = (self.sq_a - self.n * ma * ma).clamp_min(0)
        vb = (self.sq_b - self.n * mb * mb).clamp_min(0)
        self.alive_a = va > 0
        den = torch.outer(va, vb).sqrt()
        return torch.where(den > 0, cov / den.clamp_min(1e-300), torch.zeros_like(cov))


# ---------------------------------------------------------------------- layers
def compare_layers(vm) -> list[str]:
    """The layers compared by default, in execution order: a small net's every Conv2d and Linear (MNIST:
    conv1, conv2, fc1, fc2); a big net's classic layers (lite0's stage0..stage6, VGG's conv1_1..conv5_3)
    and its last Linear (the logits)."""
    from torch import nn

    from cnnvis.layers import conv_layers, default_layers, list_layers, resolve_layer
    from cnnvis.study.maps import SMALL_NET

    order = [i.name for i in list_layers(vm, leaves_only=True) if i.shape is not None]
    kinds = {n: type(vm.model.get_submodule(n)) for n in order}
    linear = [n for n in order if issubclass(kinds[n], nn.Linear)]
    if len(conv_layers(vm)) <= SMALL_NET:
        return [n for n in order if issubclass(kinds[n], (nn.Conv2d, nn.Linear))]
    return [resolve_layer(vm, n) for n in default_layers(vm)] + linear[-1:]


def default_match_layer(vm) -> str:
    """Where channels are matched by default: the last conv block's output after its nonlinearity, as Li
    et al. (a small net's relu2; a big net's middle classic layer, `cnnvis.study.maps.default_map_layer`)."""
    from cnnvis.study.maps import default_map_layer

    return default_map_layer(vm, deep=True)


def same_architecture(vm_a, vm_b) -> bool:
    """The same modules (names and types) with the same output shapes on each model's own input."""
    from cnnvis.layers import list_layers

    if vm_a is vm_b:
        return True
    if tuple(vm_a.input_shape) != tuple(vm_b.input_shape):
        return False
    sig = lambda vm: [(i.name, i.kind, i.shape) for i in list_layers(vm)]  # noqa: E731
    return sig(vm_a) == sig(vm_b)


# ---------------------------------------------------------------------- two models over the data
@dataclass
class ChannelMatch:
    """At `layer`: corr (Ca, Cb) channel correlations; best (Ca,) B's best channel for each of A's (-1 for a
    channel of A that never varies on the data: dead, it matches nothing); best_corr (Ca,) its correlation;
    samples: (image, position) pairs seen."""

    layer: str
    corr: Tensor
    best: Tensor
    best_corr: Tensor
    samples: int


@dataclass
class CompareResult:
    """layers_a/b: dotted names; dims_a/b: features per image of each; cka (La, Lb); n images; match
    (None unless asked)."""

    layers_a: list[str]
    layers_b: list[str]
    dims_a: list[int]
    dims_b: list[int]
    cka: Tensor
    n: int
    grid: int
    match: ChannelMatch | None = None


def compare_models(vm_a, vm_b, pairs: Iterable[tuple[Tensor, Tensor]], layers_a: Sequence[str],
                   layers_b: Sequence[str], *, grid: int = 2, match_layer: str | None = None,
                   match_layer_b: str | None = None, total: int | None = None, progress=None,
                   max_bytes: int = MAX_BYTES) -> CompareResult:
    """Stream `pairs` of image batches ((n, C, H, W) in [0, 1] as model A takes them, the same n images as
    B takes them) through both models under no_grad; returns linear CKA of every layer pair and, with
    `match_layer` (in A; `match_layer_b` in B, default the same name), the channel correlations there.
    vm_b may be vm_a itself (CKA of a model with itself). Both models are left as they were."""
    from cnnvis.hooks import capture
    from cnnvis.layers import resolve_layer
    from cnnvis.utils import model_guard, progress_iter

    if grid < 1:
        raise CnnvisError(f"grid must be at least 1 (1 = global average pooling), got {grid}")
    la = [resolve_layer(vm_a, n) for n in layers_a]
    lb = [resolve_layer(vm_b, n) for n in layers_b]
    if not la or not lb:
        raise CnnvisError("give at least one layer of each model to compare")
    ma = resolve_layer(vm_a, match_layer) if match_layer else None
    mb = resolve_layer(vm_b, match_layer_b or match_layer) if match_layer else None
    same = vm_b is vm_a
    want_a = list(dict.fromkeys(la + ([ma] if ma else []) + (lb + ([mb] if mb else []) if same else [])))
    want_b = list(dict.fromkeys(lb + ([mb] if mb else [])))
    cka, corr = StreamedCKA(max_bytes), StreamedCorrelation() if ma else None
    n = 0
    with model_guard(vm_a.model), model_guard(vm_b.model), torch.no_grad():
        for xa, xb in progress_iter(pairs, total=total, desc="compare", progress=progress):
            with capture(vm_a, want_a) as cap:
                cap.run(xa.to(vm_a.device))
                acts_a = {k: cap.outputs[k] for k in want_a}
            if same:
                acts_b = acts_a if xb is xa else None
            if not same or acts_b is None:
                with capture(vm_b, want_b) as cap:
                    cap.run(xb.to(vm_b.device))
                    acts_b = {k: cap.outputs[k] for k in want_b}
            cka.update([pooled(acts_a[k], grid) for k in la], [pooled(acts_b[k], grid) for k in lb])
            if corr is not None:
                corr.update(acts_a[ma], acts_b[mb])
            n += xa.shape[0]
    match = None
    if corr is not None:
        c = corr.result()
        bc, best = c.max(1)
        best = torch.where(corr.alive_a, best, torch.full_like(best, -1))
        match = ChannelMatch(ma, c.float(), best, bc.float(), corr.n)
    return CompareResult(la, lb, list(cka.pa), list(cka.pb), cka.result(), n, grid, match)
