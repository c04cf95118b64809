"""The render loop with the images in channels_last memory format vs contiguous (not a test).

    .venv/bin/python bench/channels_last.py [--threads 1,2] [--steps 40] [--rounds 3]

VisModel.channels_last (set by the zoo for EfficientNet-Lite and vgg16_hed) feeds the optimized images
to the model in channels_last format on the CPU: oneDNN's convolutions then skip the reorder of every
activation. Three renders, each run both ways on the same model object (dataclasses.replace), interleaved
rounds, ratio per round (channels_last / contiguous; < 1 = faster), and the largest pixel difference of
the two images (0 when the kernels sum in the same order; small rounding differences grow over the steps
of an optimization, so a nonzero value is a different sample of the same recipe, not an error):
  - a class image for lite0 + lite1 (the default `cnnvis class` on lite0), preset 'agree';
  - a class image for lite0 alone; a conv4_3 channel of vgg16_hed.

Measured (2 CPU cores, torch 2.14 CPU, quiet machine, 40 steps, median of 3 rounds):
  threads  lite0+lite1 class   lite0 class   vgg16_hed conv4_3
  1        0.85 (same image)   0.88 (same)   0.95 (max diff 0.58)
  2        0.87 (diff 0.97)    0.87 (0.85)   0.94 (0.58)
  again, with the objective's activations made contiguous (a user's .view works; a class objective reads
  the logits, where it is a no-op): 1 thread 0.90 / 0.88 / 0.91; 2 threads 0.86 / 0.82 / 0.94.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    from cnnvis.models import load
    from cnnvis.models.ensemble import ensemble
    from cnnvis.optvis import channel, class_logit, render

    lite0 = load("efficientnet_lite0")
    cases = {"lite0+lite1 class": (ensemble([lite0, load("efficientnet_lite1")]), class_logit("school bus")),
             "lite0 class": (lite0, class_logit("school bus")),
             "vgg16_hed conv4_3": (load("vgg16_hed"), channel("conv4_3", 5))}
    for threads in (int(t) for t in a.threads.split(",")):
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s), {a.steps} steps, preset 'agree', median of {a.rounds} interleaved rounds")
        for name, (vm, obj) in cases.items():
            ways = {"contiguous": replace(vm, channels_last=False), "channels_last": replace(vm, channels_last=True)}
            t: dict[str, list[float]] = {k: [] for k in ways}
            img = {}
            for r in range(a.rounds):
                for k, m in ways.items():
                    s = time.perf_counter()
                    img[k] = render(m, obj, "agree", steps=a.steps, seed=0, progress=False).images
                    t[k].append(time.perf_counter() - s)
                print(f"  {name} round {r + 1}", file=sys.stderr, flush=True)
            ratio = statistics.median(c / p for c, p in zip(t["channels_last"], t["contiguous"]))
            diff = float((img["channels_last"] - img["contiguous"]).abs().max())
            print(f"  {name:20s} contiguous {statistics.median(t['contiguous']):6.2f} s   channels_last / contiguous "
                  f"{ratio:.3f}   max pixel difference {diff:.2g}", flush=True)


if __name__ == "__main__":
    main()
