"""Attribution benchmark (not a test): ratios measured in one run, interleaved, medians of rounds.

    .venv/bin/python bench/attribution.py [--size 224] [--rounds 3] [--skip-deconv] [--skip-methods] [--skip-cams]

The machine may be shared (noisy): every contender is timed once per round, in turn, for
`--rounds` rounds; the report gives the median time of each and the median of the per-round
ratios (each ratio taken between runs made seconds apart, under the same load).

1. Deconvnet, all 13 conv layers x top-3 of a random torchvision vgg16:
   the pure rule (rule="zf", seed="map"; bench/deconv_depth.py times both rules against Captum's neuron
   classes): ours (one forward + one batched sweep) vs a loop of 39 Captum `Deconvolution` calls vs
   one forward + 39 separate backward passes (`retain_graph`), and the floor = one forward + the
   sum of the backward costs from each layer (each of the 39 backward passes timed on its own,
   Python overhead between them left out).
2. Every method vs one forward+backward of the embedded model (the physical limit); IG and
   SmoothGrad vs the same number of batched forward+backward passes, with the same chunking
   (batch size) the method uses, on the same image size: e.g. IG(50 steps, batch_size=50) vs
   one forward+backward of a batch of 50. (On a CPU a batch of 50 is 2-5x slower than 5 batches
   of 10 in absolute terms -- page faults on fresh activation buffers -- hence IG's CPU default.)
3. The CAM family vs pytorch-grad-cam on the embedded model (efficientnet_lite0, default layer
   bn2, 1280 channels), same input, layer and target; ratio ours / peer per round (goal <= 1).
   Score-CAM: both with the same batch of masked images (ours' default). Then Score-CAM's batch
   size on this machine: ours at `--scorecam-layer` (fewer channels, same cost per masked image)
   with batches 1..64, interleaved; the default (16 on a CPU) should be at or near the fastest.
   OPENBLAS_NUM_THREADS defaults to 1 here: numpy's OpenBLAS threads (pytorch-grad-cam's SVD)
   otherwise spin after each call and slow whichever contender runs next -- measured on a 16-core
   machine: Eigen-CAM ours 156 -> 16 ms, pytorch-grad-cam's 156 -> 111 ms.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads (see above)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

warnings.filterwarnings("ignore")


def interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Time every fn once per round, in turn. A fn may return its own measured time (float)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            r = fn()
            times[k].append(r if isinstance(r, float) else time.perf_counter() - t)
    return times


def med(v: list[float]) -> float:
    return statistics.median(v)


def ratio(times, a: str, b: str) -> float:
    """Median over rounds of times[a] / times[b]."""
    return med([x / y for x, y in zip(times[a], times[b])])


def deconv_bench(size: int, rounds: int) -> None:
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
    res = deconvnet(vm, x, layers, 3, rule="zf", seed="map")  # warm-up; also gives the seeds the others use
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

    def floor():
        with model_guard(vm.model), modified_relu(vm.model, "deconvnet"):
            xg = x.clone().requires_grad_(True)
            t = time.perf_counter()
            with capture(vm, res.layers) as cap:
                cap.run(xg)
                outs = {n: cap[n] for n in res.layers}
            total = time.perf_counter() - t
            for l, c, a in seeds:  # one backward per (layer, channel), each timed on its own
                s = torch.zeros_like(outs[l])
                s[0, c] = a
                t = time.perf_counter()
                torch.autograd.grad(outs[l], xg, s, retain_graph=True)
                total += time.perf_counter() - t
            return total

    t = interleaved({"ours": lambda: deconvnet(vm, x, layers, 3, rule="zf", seed="map"), "loop": captum_loop,
                     "many": fwd_many_bwd, "floor": floor}, rounds)
    print(f"deconvnet vgg16 13 convs x top-3, {size}px, {torch.get_num_threads()} threads, "
          f"median of {rounds} interleaved rounds (per-round times in brackets)")
    fmt = lambda k: f"{med(t[k]):7.2f} s  [{' '.join(f'{v:.2f}' for v in t[k])}]"  # noqa: E731
    print(f"  ours, one batched sweep      {fmt('ours')}")
    print(f"  39 Captum Deconvolution      {fmt('loop')}   speed-up {ratio(t, 'loop', 'ours'):5.2f}x (goal >= 1.8x)")
    print(f"  1 forward + 39 backward      {fmt('many')}   speed-up {ratio(t, 'many', 'ours'):5.2f}x")
    print(f"  floor (fwd + sum of bwd)     {fmt('floor')}   ours / floor {ratio(t, 'ours', 'floor'):5.2f} "
          f"(goal <= 1.15)")


def methods_bench(size: int, rounds: int) -> None:
    from cnnvis.attribution import method
    from cnnvis.models import load
    from cnnvis.utils import model_guard

    vm = load("efficientnet_lite0")
    x = torch.rand(1, 3, size, size)

    def passes(total: int, chunk: int):
        """`total` images' forward+backward, in batches of `chunk` (the method's own chunking)."""
        def run():
            with model_guard(vm.model):
                for i in range(0, total, chunk):
                    xg = x.repeat(min(chunk, total - i), 1, 1, 1).requires_grad_(True)
                    torch.autograd.grad(vm(xg)[:, 0].sum(), xg)
        return run

    print(f"\nmethods on efficientnet_lite0, {size}px, median of {rounds} interleaved rounds "
          f"(method, then its limit, in turn)")
    for name, opts, n, chunk in [("saliency", {}, 1, 1), ("gradxinput", {}, 1, 1), ("guided", {}, 1, 1),
                                 ("deconvnet", {}, 1, 1), ("gradcam", {}, 1, 1), ("guided_gradcam", {}, 1, 1),
                                 ("smoothgrad", {"samples": 25, "batch_size": 25}, 25, 25),
                                 ("ig", {"steps": 50, "batch_size": 50}, 50, 50),
                                 ("ig", {"steps": 50, "batch_size": 10}, 50, 10)]:  # 10: the CPU default
        m = method(name, vm, **opts)
        lim = passes(n, chunk)
        m.attribute(x, 1), lim()  # warm-up
        t = interleaved({"m": lambda: m.attribute(x, 1), "lim": lim}, rounds)
        what = "1 forward+backward" if n == 1 else \
            f"{n} images' forward+backward in {-(-n // chunk)} batch(es) of {chunk}"
        label = name if n == 1 else f"{name}({n}, batch {chunk})"
        print(f"  {label:<22} {med(t['m']) * 1000:8.0f} ms   {ratio(t, 'm', 'lim'):5.2f}x of {what} "
              f"({med(t['lim']) * 1000:.0f} ms)")


CAM_PEERS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
             "eigencam": "EigenCAM", "scorecam": "ScoreCAM"}


def cams_bench(size: int, rounds: int, scorecam_rounds: int, batch_layer: str, names: list[str] | None = None) -> None:
    import contextlib
    import io

    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cnnvis.attribution import ScoreCAM, default_cam_layer, method
    from cnnvis.models import load

    from PIL import Image
    from skimage.data import chelsea

    vm = load("efficientnet_lite0")
    seq = nn.Sequential(vm.preprocess.module(), vm.model).eval()
    x = vm.preprocess.prepare(Image.fromarray(chelsea()), size=size)  # a real photo (a cat): real ReLU sparsity
    t = int(vm(x).argmax())
    layer = default_cam_layer(vm)
    print(f"\nCAM family vs pytorch-grad-cam on efficientnet_lite0 at {layer} (chelsea, {size}px, target {t}), "
          f"median of interleaved rounds; ratio = median of per-round ours / peer")
    for name, peer in CAM_PEERS.items():
        if names and name not in names:
            continue
        ours = method(name, vm, layer=layer)
        cam = getattr(pytorch_grad_cam, peer)(seq, [vm.model.get_submodule(layer)])
        if name == "scorecam":
            cam.batch_size = ours.batch_size or 16

        def theirs():
            with contextlib.redirect_stderr(io.StringIO()):  # Score-CAM's tqdm bars
                cam(x.clone(), targets=[ClassifierOutputTarget(t)])

        n = scorecam_rounds if name == "scorecam" else rounds
        ours.attribute(x, t), theirs()  # warm-up
        tm = interleaved({"ours": lambda: ours.attribute(x, t), "peer": theirs}, n)
        cam.activations_and_grads.release()
        print(f"  {name:<10} ours {med(tm['ours']) * 1000:8.0f} ms   pytorch-grad-cam {med(tm['peer']) * 1000:8.0f} ms"
              f"   ratio {ratio(tm, 'ours', 'peer'):5.2f} ({n} rounds)")
    sizes = (1, 4, 8, 16, 32, 64)
    ms = {bs: ScoreCAM(vm, batch_layer, batch_size=bs) for bs in sizes}
    for m in ms.values():
        m.cam(x, t)  # warm-up
    tm = interleaved({bs: (lambda m=m: m.cam(x, t)) for bs, m in ms.items()}, rounds)
    best = min(sizes, key=lambda b: med(tm[b]))
    print(f"  Score-CAM batch size at {batch_layer} ({size}px): " +
          ", ".join(f"{bs}: {med(tm[bs]) * 1000:.0f} ms" for bs in sizes) +
          f"; fastest {best}, default 16 is {med(tm[16]) / med(tm[best]):.2f}x of it")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-deconv", action="store_true")
    ap.add_argument("--skip-methods", action="store_true")
    ap.add_argument("--skip-cams", action="store_true")
    ap.add_argument("--scorecam-rounds", type=int, default=None, help="Score-CAM rounds (default: --rounds)")
    ap.add_argument("--scorecam-layer", default="blocks.3", help="layer for the Score-CAM batch-size sweep")
    ap.add_argument("--cams", default=None, help="comma-separated CAM methods to time (default: all)")
    a = ap.parse_args()
    from cnnvis.utils import tune_malloc

    tune_malloc()  # as the CLI does: glibc keeps freed buffers (ours and the baselines alike)
    if not a.skip_deconv:
        deconv_bench(a.size, a.rounds)
    if not a.skip_methods:
        methods_bench(a.size, a.rounds)
    if not a.skip_cams:
        cams_bench(a.size, a.rounds, a.scorecam_rounds or a.rounds, a.scorecam_layer,
                   a.cams.split(",") if a.cams else None)
