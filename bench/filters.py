"""Benchmark of the classic VGG16 filter grid (not a test): `cnnvis filters --model vgg16_hed --first 10`.

    .venv/bin/python bench/filters.py [--threads 2] [--first 10] [--layers conv1_1,conv5_3] [--out grid.png]
    .venv/bin/python bench/filters.py --before      # the settings before issue 10 (128 px, 128 steps,
                                                    # preset robust, plain channel mean, dead rendered)

Prints one line per layer (seconds, size, steps, dead and grey tiles), then the totals: minutes for
the whole grid (goal: <= 6 on a 2-core CPU), channels that never fire on the sample photos
('dead', drawn as such) and rendered tiles that are flat (flat_score < GREY_STD: 'grey'). A dead
channel rendered anyway (--before) that comes out flat counts as grey there, as it did on the grid.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--first", type=int, default=10)
    ap.add_argument("--layers", default=None, help="comma-separated (default: conv1_1..conv5_3)")
    ap.add_argument("--before", action="store_true", help="the pre-issue-10 settings, for comparison")
    ap.add_argument("--out", default="bench_filters_grid.png")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cnnvis.layers import default_layers
    from cnnvis.models import load
    from cnnvis.optvis.filters import GREY_STD, dead_channels, render_filters
    from cnnvis.viz.filters import filters_grid

    vm = load("vgg16_hed")
    layers = args.layers.split(",") if args.layers else default_layers(vm)
    kw = dict(steps=128, size=128, preset="robust", leak=None, skip_dead=False, retry=False) if args.before else {}
    t0 = time.perf_counter()
    rows = render_filters(vm, layers, args.first, log=lambda s: print(s, file=sys.stderr, flush=True), **kw)
    total = time.perf_counter() - t0
    never = dead_channels(vm, layers) if args.before else {r[0]: r.dead for r in rows}
    filters_grid(vm, rows, title=f"vgg16_hed: {args.first} filters per layer").save(args.out)
    print(f"{'layer':<8} {'rf':>4} {'size':>4} {'steps':>5} {'s':>7}  dead  grey (channels)")
    n_dead = n_grey = n_grey_live = 0
    for r in rows:
        dead = [c for c in r[1] if c in set(never.get(r[0], ()))]
        grey = r.grey
        live_grey = [c for c in grey if c not in dead]
        n_dead += len(dead)
        n_grey += len(grey)
        n_grey_live += len(live_grey)
        print(f"{r[0]:<8} {r.rf:>4} {r.size:>4} {r.steps:>5} {r.seconds:>7.1f}  {len(dead):>4}  {len(grey):>4} "
              f"dead={dead} grey={grey} rendered again={getattr(r, 'retried', [])}")
    n = sum(len(r[1]) for r in rows)
    print(f"total: {total / 60:.2f} min for {len(rows)} layers x {args.first} filters ({n} tiles) at "
          f"{torch.get_num_threads()} thread(s); {n_dead} dead (never fire on the sample photos), "
          f"{n_grey} grey tiles (flat_score < {GREY_STD}), {n_grey_live} of them channels that fire on photos; "
          f"grid: {args.out}")


if __name__ == "__main__":
    main()
