"""Job layer costs, measured in one run: a store hit vs computing the job; CLI start-up vs importing torch.

    python bench/jobs.py [--device cpu|cuda] [--rounds 5]

Prints (a) the median time of a cache hit (spec -> hash -> SQLite -> files) against the
compute time of the same job (Grad-CAM and a 64-step class image on the embedded model), and
(b) `cnnvis --help` wall time against `python -c "import torch"` (what a command that needs
torch pays anyway), each the median of interleaved rounds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from cnnvis.jobs import Store, make_spec, run
    from cnnvis.malloc import tune_malloc
    from cnnvis.models import load

    tune_malloc()
    photo = "sample:chelsea"
    vm = load("efficientnet_lite0", device=args.device)
    specs = {"gradcam": make_spec("attribution", image=photo, method="gradcam"),
             "class_image_64": make_spec("class_image", target="pelican", steps=64, min_steps=64, until_prob=0)}
    print(f"device {args.device}; {args.rounds} rounds; medians", file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:
        for name, spec in specs.items():
            compute, hit = [], []
            for r in range(args.rounds):
                store = Store(Path(d) / f"{name}{r}")
                t = time.perf_counter()
                run(spec, store=store, vm=vm)
                compute.append(time.perf_counter() - t)
                fresh = Store(Path(d) / f"{name}{r}")  # a new process's view: new connection, no memo
                t = time.perf_counter()
                res = run(spec, store=fresh)
                hit.append(time.perf_counter() - t)
                assert res.cached
            c, h = statistics.median(compute), statistics.median(hit)
            print(f"{name:<16} compute {c * 1000:8.1f} ms   store hit {h * 1000:6.2f} ms   ratio {c / h:8.0f}x")
    cli = [sys.executable, "-m", "cnnvis.cli", "--help"]
    torch_only = [sys.executable, "-c", "import torch"]
    a, b = [], []
    for _ in range(args.rounds):
        a.append(_wall(cli))
        b.append(_wall(torch_only))
    print(f"cnnvis --help   {statistics.median(a) * 1000:8.0f} ms   python -c 'import torch' "
          f"{statistics.median(b) * 1000:6.0f} ms   ratio {statistics.median(a) / statistics.median(b):.2f}")


if __name__ == "__main__":
    main()
