"""DeepDream throughput and memory (not a test; prints ratios measured in this run).

1. Efficiency: dream steps on one tile vs the raw forward+backward of the same truncated network
   on the same pixels (the physical limit): must be >= 0.8.
2. Tiling overhead: a 1024x1024 image in 4 tiles of 512 vs in one pass.
3. Peak RSS of a whole `dream` for 1, 4 and 12 megapixel photos (separate processes): nearly flat.

    python bench/dream.py [--layer stage3] [--device cpu] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def raw_step_time(vm, layer: str, x: torch.Tensor, n: int) -> float:
    """Seconds per forward (stopped at `layer`) + backward of mean(a**2) w.r.t. the image."""
    from cnnvis.hooks import capture
    from cnnvis.utils import model_guard

    with model_guard(vm.model), capture(vm, [layer]) as cap:
        for i in range(n + 1):
            if i == 1:
                t0 = time.perf_counter()
            xx = x.detach().requires_grad_(True)
            cap.run(xx)
            cap[layer].pow(2).mean().backward()
        _sync(x)
    return (time.perf_counter() - t0) / n


def dream_step_time(vm, layer: str, x: torch.Tensor, n: int, tile: int) -> float:
    from cnnvis.dream import dream

    dream(vm, x, [layer], octaves=1, steps_per_octave=1, tile=tile)  # warm-up
    _sync(x)
    t0 = time.perf_counter()
    dream(vm, x, [layer], octaves=1, steps_per_octave=n, tile=tile)
    _sync(x)
    return (time.perf_counter() - t0) / n


def _sync(x):
    if x.is_cuda:
        torch.cuda.synchronize()


def _vm_mib(key: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process in MiB (fresh per exec, unlike ru_maxrss)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_child(mp: float, layer: str, device: str) -> None:
    """Run one dream on an mp-megapixel photo; print peak RSS (MiB) as JSON."""
    from cnnvis.dream import dream
    from cnnvis.models import load

    vm = load("efficientnet_lite0", device=device)
    side_w = int((mp * 1e6 * 4 / 3) ** 0.5)
    side_h = int(side_w * 3 / 4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, side_h, side_w, generator=g)
    base = _vm_mib("VmHWM")
    t0 = time.perf_counter()
    dream(vm, x, [layer], octaves=2, steps_per_octave=1, tile=512)
    peak = _vm_mib("VmHWM")
    img_mib = x.numel() * 4 / 2**20
    print(json.dumps({"mp": mp, "size": [side_w, side_h], "peak_rss_mib": round(peak), "before_mib": round(base),
                      "image_mib": round(img_mib, 1), "seconds": round(time.perf_counter() - t0, 1)}))


def main() -> None:
    from cnnvis.utils import tune_malloc

    tune_malloc()  # as the CLI does: glibc keeps freed buffers (ours and the baselines alike)
    ap = argparse.ArgumentParser()
    ap.add_argument("--layer", default="stage3")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--quick", action="store_true", help="skip the 12 MP memory run")
    ap.add_argument("--rss-child", type=float, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child is not None:
        rss_child(a.rss_child, a.layer, a.device)
        return
    from cnnvis.models import load

    vm = load("efficientnet_lite0", device=a.device)
    dev = vm.device
    print(f"device {dev}, torch threads {torch.get_num_threads()}, layer {a.layer}")
    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)).to(dev)
    raw = raw_step_time(vm, a.layer, x, a.steps)
    ours = dream_step_time(vm, a.layer, x, a.steps, tile=512)
    mp = x.shape[-1] * x.shape[-2] / 1e6
    print(f"one tile 512x512: raw fwd+bwd {mp / raw:.2f} MP-steps/s, dream {mp / ours:.2f} MP-steps/s, "
          f"efficiency {raw / ours:.2f} (target >= 0.8)")
    big = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1)).to(dev)
    untiled = dream_step_time(vm, a.layer, big, max(2, a.steps // 2), tile=1024)
    tiled = dream_step_time(vm, a.layer, big, max(2, a.steps // 2), tile=512)
    print(f"1024x1024: one pass {untiled:.3f} s/step, 4 tiles of 512 {tiled:.3f} s/step, "
          f"tiling overhead {tiled / untiled:.2f}x")
    sizes = [1, 4] if a.quick else [1, 4, 12]
    rows = []
    for mp in sizes:
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(mp), "--layer", a.layer, "--device", a.device],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{mp:>4} MP {r['size'][0]}x{r['size'][1]}: peak RSS {r['peak_rss_mib']} MiB "
              f"(process before dream {r['before_mib']} MiB, one image copy {r['image_mib']} MiB), {r['seconds']} s")
    grow = (rows[-1]["peak_rss_mib"] - rows[-1]["before_mib"]) / max(1, rows[-1]["image_mib"])
    print(f"peak RSS growth at {sizes[-1]} MP = {grow:.1f} image copies above the loaded model")


if __name__ == "__main__":
    main()
