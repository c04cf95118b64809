"""Embeddings of a dataset: penultimate features -> t-SNE map; nearest neighbours in feature
space versus pixel space, with their class purity.

    F, labels, pos = features(vm, ds)          # (N, D) float32, (N,) int64, (N,) positions in ds
    Y = tsne(F, seed=0, perplexity=30)         # (N, 2) float32
    P, _ = pixels(ds)                          # (N, C*H*W) float32 in [0, 1]
    nb = neighbours(F, P, labels, np.arange(len(F)), k=8)
    nb.feature_purity, nb.pixel_purity         # share of the k neighbours with the query's class

t-SNE is openTSNE's (Policar, Strazar, Zupan): Barnes-Hut gradients below 10,000 points,
FFT-interpolated ones (FIt-SNE) from there on, approximate nearest neighbours (Annoy), multi-
threaded, seeded, maintained. scikit-learn's TSNE has exact and Barnes-Hut gradients only (no
FFT), so it grows slower with N; openTSNE also keeps the optimizer state between calls, which
lets `tsne` run in chunks that report progress and can be cancelled.

Distances are Euclidean in both spaces (the same metric, so that the comparison is about the
representation, not about the metric); a query is never its own neighbour (excluded by
index, so an exact duplicate elsewhere in the set still counts).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn

from cnnvis.errors import CnnvisError


class _Stop(Exception):
    """Raised by the capturing hook: nothing after the captured layer is computed."""


def last_linear(module: nn.Module) -> str:
    """Dotted name of the last nn.Linear (the classifier); its INPUT is the penultimate feature."""
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise CnnvisError("the model has no nn.Linear classifier, so no penultimate features; "
                          "give a layer (see `cnnvis layers --model M`)")
    return names[-1]


def feature_layer(vm, layer: str | None = None) -> tuple[str, str]:
    """(dotted module name, 'input' | 'output'): what `features` captures for `layer`.

    None: the input of the last nn.Linear (penultimate features; for efficientnet_lite0 the
    pooled 1280 features before the classifier). A named layer (alias or dotted): its output."""
    from cnnvis.layers import resolve_layer

    if layer is None:
        return last_linear(vm.model), "input"
    return resolve_layer(vm, layer), "output"


def describe_layer(vm, layer: str | None = None) -> str:
    name, where = feature_layer(vm, layer)
    return f"penultimate features: the input of {name}, the last Linear" if where == "input" else name


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C) by global average pooling; (B, ...) -> (B, prod)."""
    return t.mean(dim=(2, 3)) if t.dim() == 4 else t.flatten(1)


def batch_features(vm, batches: Iterable, layer: str | None = None, progress=None,
                   total: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of already-made batches (x (B, C, H, W) in [0, 1], y (B,), pos (B,)) -> (F, labels, pos).

    Images whose size differs from the model's input (H, W) are resized (bilinear, antialiased);
    then the model's own normalization; spatial outputs of a named layer are averaged over h, w.
    The model is put in eval mode without gradients and restored afterwards, hooks removed."""
    from cnnvis.utils import model_guard

    name, where = feature_layer(vm, layer)
    module = vm.model
    sub = module.get_submodule(name)
    got: list[torch.Tensor] = []

    def pre_hook(m, args):
        got.append(args[0])
        raise _Stop

    def post_hook(m, args, out):
        got.append(out[0] if isinstance(out, (tuple, list)) else out)
        raise _Stop

    hw = tuple(vm.input_shape[1:])
    feats, labs, poss = [], [], []
    it = batches if progress is None else progress(batches, total=total, desc="features")
    handle = sub.register_forward_pre_hook(pre_hook) if where == "input" else sub.register_forward_hook(post_hook)
    try:
        with model_guard(module), torch.no_grad():
            for x, y, pos in it:
                if x.shape[1] != vm.channels:
                    raise CnnvisError(f"the images have {x.shape[1]} channel(s) but {vm.name} takes {vm.channels}; "
                                      f"open the dataset with channels={vm.channels} to convert them")
                x = x.to(vm.device, torch.float32)
                if tuple(x.shape[-2:]) != hw:
                    x = TF.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
                got.clear()
                try:
                    module(vm.preprocess.normalize(x))
                except _Stop:
                    pass
                if not got:
                    raise CnnvisError(f"layer {name!r} did not run in {vm.name}'s forward pass; give another layer")
                feats.append(_flat(got[0]).float().cpu())
                labs.append(torch.as_tensor(y).cpu())
                poss.append(torch.as_tensor(pos).cpu())
    finally:
        handle.remove()
    if not feats:
        raise CnnvisError("no images to embed (the dataset is empty or every image is corrupt)")
    return (torch.cat(feats).numpy().astype(np.float32, copy=False), torch.cat(labs).numpy().astype(np.int64),
            torch.cat(poss).numpy().astype(np.int64))


def features(vm, dataset, layer: str | None = None, batch_size: int = 256, limit: int | None = None,
             progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Penultimate features of a Dataset -> (F (N, D) float32, labels (N,) int64, positions (N,) int64).

    Streams `dataset.batches` (decoding prefetched in a thread); `limit`: the first `limit` images.
    Corrupt images are skipped (N is then smaller; positions say which images the rows are)."""
    if dataset.channels != vm.channels:
        raise CnnvisError(f"{dataset.name} has {dataset.channels}-channel images but {vm.name} takes "
                          f"{vm.channels}-channel ones; open it with channels={vm.channels} to convert them")
    ds = dataset if limit is None or limit >= len(dataset) else dataset.subset(np.arange(limit))
    n_batches = -(-len(ds) // batch_size)
    return batch_features(vm, ds.batches(batch_size, with_index=True), layer, progress, total=n_batches)


def pixels(dataset, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's own pixels, flattened -> (P (N, C*H*W) float32 in [0, 1], positions (N,))."""
    rows, poss = [], []
    for x, _, pos in dataset.batches(batch_size, with_index=True):
        rows.append(x.flatten(1))
        poss.append(pos)
    if not rows:
        raise CnnvisError(f"{dataset.name}: no readable images")
    return torch.cat(rows).numpy(), torch.cat(poss).numpy()


def sample_subset(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of a seeded, class-stratified subset of `limit` items (all when fewer).

    Each class keeps about its share: items are ranked within their class in a random order and
    taken by rank / class size, so 2,000 of CIFAR-10's 10,000 test images are 200 per class."""
    n = len(labels)
    if limit >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    lab = np.asarray(labels)[perm]
    key = np.empty(n, np.float64)
    for c in np.unique(lab):
        m = np.flatnonzero(lab == c)
        key[m] = (np.arange(len(m)) + 0.5) / len(m)
    order = np.lexsort((rng.random(n), key))  # by rank share; ties (equal shares) broken at random
    return np.sort(perm[order[:limit]]).astype(np.int64)


def pick_queries(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` seeded query positions, cycling through the classes (one per class before any repeats)."""
    rng = np.random.default_rng(seed + 1)
    pools = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}
    out: list[int] = []
    while len(out) < min(n, len(labels)):
        for c in sorted(pools):
            if pools[c] and len(out) < n:
                out.append(int(pools[c].pop()))
    return np.asarray(out, np.int64)


# ------------------------------------------------------------------------------------- t-SNE
def tsne_library() -> dict:
    import openTSNE

    return {"library": "openTSNE", "version": openTSNE.__version__}


def check_tsne_size(n: int, perplexity: float) -> None:
    """t-SNE needs more than 3 * perplexity points (each point's neighbourhood is 3 * perplexity)."""
    if n <= 3 * perplexity:
        raise CnnvisError(f"t-SNE with perplexity {perplexity:g} needs more than {int(3 * perplexity)} images, "
                          f"there are {n}: give more images (--limit) or a lower --perplexity")


def tsne(F: np.ndarray, seed: int = 0, perplexity: float = 30, n_jobs: int = 1, progress=None) -> np.ndarray:
    """(N, D) features -> (N, 2) float32 t-SNE map (openTSNE: PCA start, 250 early-exaggeration
    iterations, then 500; the same seed and n_jobs give the same map). `progress` wraps the
    iteration chunks (the job's bar: also how a cancel stops it)."""
    from openTSNE import TSNE

    F = np.ascontiguousarray(F, dtype=np.float32)
    check_tsne_size(len(F), perplexity)
    t = TSNE(n_components=2, perplexity=perplexity, metric="euclidean", initialization="pca", random_state=seed,
             n_jobs=n_jobs, verbose=False)
    emb = t.prepare_initial(F)
    chunk = 50
    plan = [(t.early_exaggeration, t.initial_momentum)] * (t.early_exaggeration_iter // chunk) \
        + [(t.exaggeration, t.final_momentum)] * (t.n_iter // chunk)
    it = plan if progress is None else progress(plan, total=len(plan), desc="t-SNE")
    for exaggeration, momentum in it:
        emb = emb.optimize(n_iter=chunk, exaggeration=exaggeration, momentum=momentum, inplace=True,
                           propagate_exception=True)
    return np.asarray(emb, dtype=np.float32)


# ------------------------------------------------------------------------------------- neighbours
def knn(X: np.ndarray, queries: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean k nearest rows of X (N, D) for each query row -> (indices (Q, k), distances (Q, k)),
    nearest first; a query is never its own neighbour."""
    n = len(X)
    if not 1 <= k < n:
        raise CnnvisError(f"k = {k} neighbours needs between 1 and {n - 1} (the set has {n} images)")
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    Xt = Xt - Xt.mean(0, keepdim=True)  # centred: less cancellation in |a|^2 + |b|^2 - 2ab
    sq = (Xt * Xt).sum(1)
    q = torch.as_tensor(np.asarray(queries, np.int64))
    idx_out, dist_out = [], []
    for s in range(0, len(q), chunk):
        qi = q[s:s + chunk]
        d2 = sq[qi, None] + sq[None, :] - 2.0 * (Xt[qi] @ Xt.T)
        d2[torch.arange(len(qi)), qi] = float("inf")
        d, i = torch.topk(d2, k, dim=1, largest=False, sorted=True)
        idx_out.append(i)
        dist_out.append(d.clamp_min_(0).sqrt_())
    return torch.cat(idx_out).numpy(), torch.cat(dist_out).numpy()


@dataclass
class Neighbours:
    """k nearest neighbours of each query in feature and in pixel space, with class purities."""

    queries: np.ndarray  # (Q,) row indices
    feature: np.ndarray  # (Q, k) row indices, nearest first
    pixel: np.ndarray  # (Q, k)
    feature_dist: np.ndarray  # (Q, k) Euclidean
    pixel_dist: np.ndarray  # (Q, k)
    feature_purities: np.ndarray  # (Q,) share of each query's feature neighbours with its class
    pixel_purities: np.ndarray  # (Q,)

    @property
    def feature_purity(self) -> float:
        return float(self.feature_purities.mean())

    @property
    def pixel_purity(self) -> float:
        return float(self.pixel_purities.mean())

    def rows(self, which: np.ndarray) -> "Neighbours":
        """The same for a subset of the queries (positions in `queries`)."""
        return Neighbours(self.queries[which], self.feature[which], self.pixel[which], self.feature_dist[which],
                          self.pixel_dist[which], self.feature_purities[which], self.pixel_purities[which])


def neighbours(F: np.ndarray, P: np.ndarray, labels: np.ndarray, queries, k: int) -> Neighbours:
    """For each query row: its k nearest rows in feature space F (N, D) and in pixel space P (N, C*H*W),
    and the purity of each list (share of neighbours whose label is the query's)."""
    if len(F) != len(P) or len(F) != len(labels):
        raise ValueError(f"F, P and labels must have one row per image: {len(F)}, {len(P)}, {len(labels)}")
    q = np.asarray(queries, np.int64)
    labels = np.asarray(labels)
    fi, fd = knn(F, q, k)
    pi, pd = knn(P, q, k)
    own = labels[q][:, None]
    return Neighbours(q, fi, pi, fd, pd, (labels[fi] == own).mean(1), (labels[pi] == own).mean(1))


class Timer:
    """Seconds per stage: `with timer('features'): ...`; `timer.seconds` -> {stage: s}."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str):
        timer = self

        class _T:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[stage] = round(timer.seconds.get(stage, 0.0) + time.perf_counter() - self.t0, 3)

        return _T()



# ------------------------------------------------------------------------------------- atlas
def atlas_cells(Y: np.ndarray, grid: int) -> np.ndarray:
    """(N, 2) t-SNE points -> (grid, grid) int64 of row indices, -1 for an empty cell.

    The map is scaled per axis to the unit square (row = y, column = x, as in the scatter);
    cell (r, c) shows, among the points inside it, the one nearest its centre; a cell with no
    point stays empty (a thumbnail is never drawn away from where its point is)."""
    from cnnvis.utils import unit_scale

    if grid < 1:
        raise CnnvisError(f"the atlas grid needs at least 1 cell a side, not {grid}")
    U = unit_scale(Y)
    col = np.minimum((U[:, 0] * grid).astype(np.int64), grid - 1)
    row = np.minimum((U[:, 1] * grid).astype(np.int64), grid - 1)
    dist = np.hypot(U[:, 0] - (col + 0.5) / grid, U[:, 1] - (row + 0.5) / grid)
    cell = row * grid + col
    order = np.lexsort((np.arange(len(U)), dist, cell))  # by cell, then distance (then index, for ties)
    first = np.ones(len(order), bool)
    first[1:] = cell[order][1:] != cell[order][:-1]
    out = np.full(grid * grid, -1, np.int64)
    out[cell[order][first]] = order[first]
    return out.reshape(grid, grid)
