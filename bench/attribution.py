"""Attribution benchmark (not a test): ratios measured in one run.

    .venv/bin/python bench/attribution.py [--size 224] [--quick]

1. Deconvnet, all 13 conv layers x top-3 of a random torchvision vgg16:
   ours (one forward + one batched sweep) vs a loop of 39 Captum `Deconvolution` calls vs
   one forward + 39 separate backward passes (`retain_graph`), and the floor = one forward + the
   sum of each layer's backward cost (measured: one backward per layer, times k).
2. Every method vs one forward+backward of the embedded model (the physical limit); IG(50) and
   SmoothGrad(25) vs 50 / 25 batched passes.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore")


def best(fn, reps: int = 2) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def deconv_bench(size: int, reps: int) -> None:
    from captum.attr import Deconvolution

    from cnnvis.attribution.modified_relu import modified_relu
    from cnnvis.deconv import deconvnet
    from cnnvis.hooks import capture
    from cnnvis.models import load
    from cnnvis.utils import model_guard

    torch.manual_seed(0)
    vm = load("vgg16", weights="random")
    x = torch.rand(1, 3, size, size)
    layers = [f"conv{b}_{i}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for i in range(1, n + 1)]
    res = deconvnet(vm, x, layers, 3)
    seeds = [(l, int(c), a) for l, ch, acts in zip(res.layers, res.channels, res.activations) for c, a in zip(ch, acts)]
    feats = vm.model.features

    class Head(nn.Module):
        def __init__(self, upto, c, seed):
            super().__init__()
            self.trunk, self.c, self.seed = feats[:upto + 1], c, seed

        def forward(self, z):
            return (self.trunk(vm.preprocess.normalize(z))[:, self.c] * self.seed).sum((1, 2))[:, None]

    def captum_loop():
        for l, c, a in seeds:
            Deconvolution(Head(int(l.split(".")[1]), c, a)).attribute(x.clone(), target=0)

    def fwd_many_bwd():
        with model_guard(vm.model), modified_relu(vm.model, "deconvnet"):
            xg = x.clone().requires_grad_(True)
            with capture(vm, res.layers) as cap:
                cap.run(xg)
                outs = {n: cap[n] for n in res.layers}
            for l, c, a in seeds:
                s = torch.zeros_like(outs[l])
                s[0, c] = a
                torch.autograd.grad(outs[l], xg, s, retain_graph=True)

    def floor_parts():
        with model_guard(vm.model), modified_relu(vm.model, "deconvnet"):
            xg = x.clone().requires_grad_(True)
            t = time.perf_counter()
            with capture(vm, res.layers) as cap:
                cap.run(xg)
                outs = {n: cap[n] for n in res.layers}
            fwd = time.perf_counter() - t
            bwd = 0.0
            for l in res.layers:  # one backward per layer, batched over its 3 seeds (what batching can reach)
                s = torch.zeros((3, *outs[l].shape))
                for j, (_, c, a) in enumerate([q for q in seeds if q[0] == l]):
                    s[j, 0, c] = a
                t = time.perf_counter()
                for j in range(3):
                    torch.autograd.grad(outs[l], xg, s[j], retain_graph=True)
                bwd += time.perf_counter() - t
            return fwd + bwd

    ours = best(lambda: deconvnet(vm, x, layers, 3), reps)
    loop = best(captum_loop, 1)
    many = best(fwd_many_bwd, reps)
    floor = min(floor_parts() for _ in range(reps))
    print(f"deconvnet vgg16 13 convs x top-3, {size}px, {torch.get_num_threads()} threads")
    print(f"  ours, one batched sweep      {ours:7.2f} s")
    print(f"  39 Captum Deconvolution      {loop:7.2f} s   speed-up {loop / ours:5.2f}x (goal >= 1.8x)")
    print(f"  1 forward + 39 backward      {many:7.2f} s   speed-up {many / ours:5.2f}x")
    print(f"  floor (fwd + sum of bwd)     {floor:7.2f} s   ours / floor {ours / floor:5.2f} (goal <= 1.15)")


def methods_bench(size: int, reps: int) -> None:
    from cnnvis.attribution import method
    from cnnvis.models import load
    from cnnvis.utils import model_guard

    vm = load("efficientnet_lite0")
    x = torch.rand(1, 3, size, size)

    def fb(batch=1):
        with model_guard(vm.model):
            xg = x.repeat(batch, 1, 1, 1).requires_grad_(True)
            torch.autograd.grad(vm(xg)[:, 0].sum(), xg)

    one = best(fb, reps + 1)
    print(f"\nmethods on efficientnet_lite0, {size}px; one forward+backward = {one * 1000:.0f} ms")
    for name, opts, limit_batch in [("saliency", {}, 1), ("gradxinput", {}, 1), ("guided", {}, 1),
                                    ("deconvnet", {}, 1), ("gradcam", {}, 1), ("guided_gradcam", {}, 1),
                                    ("smoothgrad", {"samples": 25, "batch_size": 25}, 25),
                                    ("ig", {"steps": 50, "batch_size": 50}, 50)]:
        m = method(name, vm, **opts)
        t = best(lambda: m.attribute(x, 1), reps)
        lim = one if limit_batch == 1 else best(lambda: fb(limit_batch), reps)
        what = "1 pass" if limit_batch == 1 else f"{limit_batch} batched passes"
        print(f"  {name:<15} {t * 1000:8.0f} ms   {t / lim:5.2f}x of {what}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--skip-deconv", action="store_true")
    a = ap.parse_args()
    if not a.skip_deconv:
        deconv_bench(a.size, a.reps)
    methods_bench(a.size, a.reps)
