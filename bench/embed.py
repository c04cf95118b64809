"""Benchmark of `cnnvis embed` (issue 11 item 7; not a test).

    .venv/bin/python bench/embed.py [--model runs/cifar10] [--data ../shared/data/cifar10-jpeg.zip] [--threads 2]

(a) feature extraction (penultimate features through a hook, `batch_features`) in images/s against
    the model's raw batched forward (normalize + the whole net, no hooks) on the same pre-decoded
    batches: the ratio's goal is >= 0.9; also the streamed rate from the data with decoding.
(b) neighbour purity on the CIFAR-10 test images: each image's k nearest others (Euclidean) in
    feature space and in pixel space, the share with its class; the feature space must win.
(c) t-SNE of 10,000 points (the features of (b)): seconds, the library and its version.

The model: --model, default runs/cifar10 (made by `cnnvis train cifar10-jpeg.zip --out runs/cifar10`);
when it does not exist the bench says so and trains a quick one (--quick-epochs, default 2) into
--out, unless --no-train. Check it runs: --limit 300 --tsne-n 300 --quick-epochs 1 --train-limit 500.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _default_data() -> str:
    for cand in (ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip", ROOT.parent.parent / "shared" / "data" /
                 "cifar10-jpeg.zip"):
        if cand.is_file():
            return str(cand)
    return "cifar10"


def _model(args) -> str:
    if Path(args.model).exists():
        return args.model
    print(f"model {args.model} is missing (train it: cnnvis train {args.data} --out {args.model})", flush=True)
    if args.no_train:
        sys.exit(1)
    from cnnvis.train import train

    out = Path(args.out) / "cifar10-quick"
    print(f"training a quick one instead: {args.quick_epochs} epoch(s) into {out}", flush=True)
    t0 = time.perf_counter()
    res = train(args.data, out=out, epochs=args.quick_epochs, limit=args.train_limit, overwrite=True,
                progress=False)
    acc = getattr(res, "held_out_accuracy", None) or getattr(res, "accuracy", None)
    print(f"  trained in {time.perf_counter() - t0:.0f} s; held-out accuracy {acc}", flush=True)
    return str(out)


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "runs" / "cifar10"))
    ap.add_argument("--data", default=_default_data())
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=10000, help="images for (b) and (c)")
    ap.add_argument("--tsne-n", type=int, default=10000, help="points for (c)")
    ap.add_argument("--a-images", type=int, default=4096, help="pre-decoded images for (a)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick-epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=None, help="training images of the quick net (default: all)")
    ap.add_argument("--no-train", action="store_true", help="stop when --model is missing")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench-embed"), help="folder for the quick net and the scatter")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cnnvis.data import open_dataset
    from cnnvis.models import load
    from cnnvis.study.embed import (
        batch_features, describe_layer, features, neighbours, pixels, sample_subset, tsne,
        tsne_library,
    )
    from cnnvis.utils import model_guard

    vm = load(_model(args), device="cpu")
    ds = open_dataset(args.data, split=args.split)
    print(f"model {vm.name} ({'x'.join(map(str, vm.input_shape))}), data {ds!r}, {torch.get_num_threads()} "
          f"thread(s), torch {torch.__version__}; features: {describe_layer(vm)}", flush=True)

    # (a) --------------------------------------------------------------------------------------
    n_a = min(args.a_images, len(ds))
    batches = list(ds.subset(np.arange(n_a)).batches(args.batch, with_index=True))
    if batches[0][0].shape[1] != vm.channels:
        sys.exit(f"{args.data} has {batches[0][0].shape[1]}-channel images, {vm.name} takes {vm.channels}")
    hw = tuple(vm.input_shape[1:])
    if tuple(batches[0][0].shape[-2:]) != hw:  # the raw forward gets the same resized input features makes
        batches = [(torch.nn.functional.interpolate(x, size=hw, mode="bilinear", antialias=True), y, p)
                   for x, y, p in batches]

    def raw():
        with model_guard(vm.model), torch.no_grad():
            for x, _, _ in batches:
                vm.model(vm.preprocess.normalize(x))

    def feats():
        batch_features(vm, batches)

    raw(), feats()  # warm-up
    t_raw, t_feat = _best(raw, args.repeats), _best(feats, args.repeats)
    t0 = time.perf_counter()
    features(vm, ds.subset(np.arange(n_a)), batch_size=args.batch)
    t_stream = time.perf_counter() - t0
    print(f"(a) {n_a} images, batch {args.batch}: features {n_a / t_feat:.0f} img/s, raw forward "
          f"{n_a / t_raw:.0f} img/s, ratio {t_raw / t_feat:.3f} (goal >= 0.9); streamed from {ds.name} with "
          f"decoding: {n_a / t_stream:.0f} img/s", flush=True)

    # (b) --------------------------------------------------------------------------------------
    sub = ds.subset(sample_subset(ds.labels, args.limit, seed=0))  # all, or a seeded class-stratified part
    t0 = time.perf_counter()
    F, labels, pos = features(vm, sub, batch_size=args.batch)
    t_f = time.perf_counter() - t0
    P, ppos = pixels(sub)
    assert (ppos == pos).all()
    t0 = time.perf_counter()
    nb = neighbours(F, P, labels, np.arange(len(F)), args.k)
    t_nb = time.perf_counter() - t0
    win = ("feature space wins" if nb.feature_purity > nb.pixel_purity else
           "a tie" if nb.feature_purity == nb.pixel_purity else "PIXEL SPACE WINS (unexpected)")
    print(f"(b) {len(F)} {ds.split} images of {ds.name}, k={args.k}, Euclidean: feature purity "
          f"{nb.feature_purity:.4f} ({F.shape[1]} dims), pixel purity {nb.pixel_purity:.4f} ({P.shape[1]} dims): "
          f"{win}  [features {t_f:.1f} s, neighbours {t_nb:.1f} s]", flush=True)

    # (c) --------------------------------------------------------------------------------------
    n_c = min(args.tsne_n, len(F))
    if n_c < args.tsne_n:
        print(f"(c) only {n_c} images available, not {args.tsne_n}", flush=True)
    lib = tsne_library()
    t0 = time.perf_counter()
    Y = tsne(F[:n_c], seed=0, perplexity=30, n_jobs=torch.get_num_threads())
    t_c = time.perf_counter() - t0
    method = "FFT-interpolated gradients" if n_c >= 10000 else "Barnes-Hut gradients"
    print(f"(c) t-SNE of {n_c} points ({F.shape[1]} dims, perplexity 30, 750 iterations, {method}): {t_c:.1f} s "
          f"with {lib['library']} {lib['version']} on {torch.get_num_threads()} thread(s)", flush=True)

    from cnnvis.viz.embed import scatter

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scatter(Y, labels[:n_c], ds.classes, title=f"{vm.name}: t-SNE of {n_c} {ds.name} images").save(
        out / "scatter.png")
    print(f"scatter: {out / 'scatter.png'}")


if __name__ == "__main__":
    main()
