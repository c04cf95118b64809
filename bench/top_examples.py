"""Benchmark of `cnnvis top-examples` (issue 11 item 6; not a test).

    .venv/bin/python bench/top_examples.py [--model runs/cifar10] [--data ../shared/data/cifar10-jpeg.zip] [--threads 2]
    check it runs: .venv/bin/python bench/top_examples.py --limit 300 --threads 1

(a) top examples (k=9, every channel of --layer) over the 10,000 CIFAR-10 test images and over all
    60,000 (split 'all'): images/s and peak RSS. Each setting runs in its own process, started by a
    fresh middle process that reads resource.getrusage(RUSAGE_CHILDREN).ru_maxrss of that one child
    (so one setting's peak never counts for another). Memory must not grow with the dataset: the
    kept structure is k entries per channel; the goal is both peaks within 10 % of each other.
(b) feature extraction (the streamed top-examples pass: decoding in Dataset.batches' prefetch
    thread, the forward up to the layer, the per-batch top-k merge) in images/s against the model's
    raw batched forward up to the same layer on the same batches, decoded beforehand. Goal: >= 0.9.

The model: --model (a checkpoint folder or file); default: a cifar_cnn with RANDOM weights (seed 0)
saved to out/bench-top-examples/ (speed and memory do not depend on the weights; give
--model runs/cifar10 for the trained net). Results: printed, and out/bench-top-examples/result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "bench-top-examples"


def _default_data() -> str:
    for cand in (ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip",
                 ROOT.parent.parent / "shared" / "data" / "cifar10-jpeg.zip"):
        if cand.is_file():
            return str(cand)
    return "cifar10"


def _model(args) -> str:
    if args.model:
        return args.model
    import torch

    from cnnvis.models import save_checkpoint
    from cnnvis.models.archs import build_arch

    d = OUT / "random-cifar_cnn"
    if not (d / "model.json").is_file():
        torch.manual_seed(0)
        classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        save_checkpoint(d, build_arch("cifar_cnn", num_classes=10), architecture="cifar_cnn", name="random-cifar_cnn",
                        classes=classes)
    return str(d)


# ---------------------------------------------------------------------- one setting (child process)
def _child(a) -> None:
    """Run top examples once; print {"images", "seconds"} as the last line."""
    import torch

    torch.set_num_threads(a.threads)
    from cnnvis.jobs import run

    spec = {"kind": "top_examples", "model": a.model, "data": a.data, "split": a.split, "layer": a.layer, "k": a.k,
            "batch_size": a.batch_size, "limit": a.limit}
    t0 = time.perf_counter()
    res = run(spec)
    sec = time.perf_counter() - t0
    # seconds: the whole call (model load, one pass, the channel grids); job_seconds: without the model load
    print(json.dumps({"images": res.data["seen"], "seconds": sec, "job_seconds": res.seconds,
                      "channels": len(res.data["channels"]), "files": len(res.files)}))


def _middle(argv: list[str]) -> None:
    """Start the one child, wait, report its peak RSS (RUSAGE_CHILDREN: only this child) with its numbers."""
    p = subprocess.run([sys.executable, __file__, "--_child", *argv], capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        sys.exit(p.returncode)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps(out))


def setting(args, split: str) -> dict:
    argv = ["--model", args.model, "--data", args.data, "--split", split, "--layer", args.layer, "--k", str(args.k),
            "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    if args.limit:
        argv += ["--limit", str(args.limit)]
    env = {**os.environ, "CNNVIS_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(args.threads)}
    p = subprocess.run([sys.executable, __file__, "--_middle", *argv], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"setting {split} failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["images_per_s"] = r["images"] / r["seconds"]
    return r


# ---------------------------------------------------------------------- (b) extraction vs raw forward
def extraction_vs_raw(args) -> dict:
    import torch

    from cnnvis.hooks import capture
    from cnnvis.models import load
    from cnnvis.study.dataref import open_for_model
    from cnnvis.study.top_examples import top_examples
    from cnnvis.utils import model_guard

    torch.set_num_threads(args.threads)
    vm = load(args.model)
    from cnnvis.layers import resolve_layer

    layer = resolve_layer(vm, args.layer)
    n = args.limit or args.raw_n
    ds = open_for_model(vm, args.data, "test", model_ref=args.model, limit=n)
    batches = [xb for xb, _ in ds.batches(args.batch_size, prefetch=0)]  # decoded beforehand

    def raw():
        with model_guard(vm.model), torch.no_grad(), capture(vm, [layer]) as cap:
            for xb in batches:
                cap.run(xb)

    def streamed():
        top_examples(vm, ds, layer, args.k, batch_size=args.batch_size)

    raw()  # warm-up (allocator, oneDNN kernels)
    best = {}
    for name, fn in (("raw", raw), ("streamed", streamed)):
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        best[name] = len(ds) / min(ts)
    return {"images": len(ds), "raw_forward_images_per_s": best["raw"], "extraction_images_per_s": best["streamed"],
            "ratio": best["streamed"] / best["raw"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=_default_data())
    ap.add_argument("--split", default="test")
    ap.add_argument("--layer", default="conv2", help="Layer of the top examples (default conv2).")
    ap.add_argument("--k", type=int, default=9)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="Only the first N images of every setting (a quick check).")
    ap.add_argument("--raw-n", type=int, default=2560, help="Images of the extraction-vs-raw comparison.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_middle", action="store_true", help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args._child:
        return _child(args)
    if args._middle:
        return _middle(sys.argv[2:])
    args.model = _model(args)
    print(f"model {args.model}, layer {args.layer}, k {args.k}, batch {args.batch_size}, {args.threads} thread(s), "
          f"data {args.data}" + (f", first {args.limit} images only" if args.limit else ""), flush=True)
    res = {"model": args.model, "layer": args.layer, "k": args.k, "threads": args.threads, "limit": args.limit}
    for split in ("test", "all"):
        r = setting(args, split)
        res[f"top_examples_{split}"] = r
        print(f"(a) top examples, split {split:4s}: {r['images']:6d} images in {r['seconds']:7.1f} s = "
              f"{r['images_per_s']:7.0f} images/s; peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True)
    a, b = res["top_examples_test"]["peak_rss_mb"], res["top_examples_all"]["peak_rss_mb"]
    res["rss_ratio_all_vs_test"] = b / a
    print(f"    peak RSS all / test = {b / a:.3f} (goal: within 10 %, 0.9..1.1)")
    e = extraction_vs_raw(args)
    res["extraction"] = e
    print(f"(b) {e['images']} images: extraction {e['extraction_images_per_s']:.0f} images/s, raw forward "
          f"{e['raw_forward_images_per_s']:.0f} images/s: ratio {e['ratio']:.3f} (goal >= 0.9)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "result.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {OUT / 'result.json'}")


if __name__ == "__main__":
    main()
