"""Benchmark of cnnvis.optvis.render (not a test). All ratios are measured within one run.

    .venv/bin/python bench/render.py [--steps 48] [--threads 2] [--quick]

(a) render steps/s vs the raw forward+backward steps/s of the same truncated network
    (input -> deepest layer the objective reads, gradient to the input), same batch and size;
    efficiency = render / raw (target >= 0.85). Measured without transforms (pure loop overhead:
    parameterization, objective, optimizer, checks) and with the default preset's transforms
    (whose extra resampling is real work the raw loop does not do).
(b) 16 channels of one layer in one batch vs the same 16 renders one at a time.
(c) vs torch-lucent (if installed) on the same channel objective, size and steps.
"""

from __future__ import annotations

import argparse
import time

import torch


def timed(fn, reps: int) -> float:
    """Seconds per call (one warm-up call first)."""
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def raw_truncated(vm, layer: str, batch: int, size: int, steps: int) -> float:
    """Seconds per step of: normalize -> truncated forward to `layer` -> channel mean -> backward to input."""
    from cnnvis.hooks import capture
    from cnnvis.utils import model_guard

    x = torch.rand(batch, 3, size, size, requires_grad=True)
    with model_guard(vm.model), capture(vm, [layer]) as cap:
        def step():
            x.grad = None
            cap.run(x)
            cap[layer][:, 0].mean().backward()

        return timed(lambda: [step() for _ in range(steps)], 1) / steps


def ours(vm, obj, steps: int, **kw) -> float:
    from cnnvis.optvis import render

    render(vm, obj, steps=2, **kw)  # warm-up
    t = time.perf_counter()
    render(vm, obj, steps=steps, **kw)
    return (time.perf_counter() - t) / steps


def lucent_time(vm, layer_module: str, n: int, size: int, steps: int) -> float | None:
    import sys
    import types

    if "IPython" not in sys.modules:  # lucent imports IPython.display only to show images in notebooks
        try:
            import IPython  # noqa: F401
        except ImportError:
            ip = types.ModuleType("IPython")
            ip.display = types.ModuleType("IPython.display")
            sys.modules["IPython"], sys.modules["IPython.display"] = ip, ip.display
    try:
        import kornia

        if not hasattr(kornia, "get_rotation_matrix2d"):  # lucent 0.1.8 uses kornia<0.5's top-level name
            from kornia.geometry.transform import get_rotation_matrix2d, warp_affine

            kornia.get_rotation_matrix2d, kornia.warp_affine = get_rotation_matrix2d, warp_affine
        from lucent.optvis import objectives, param, render as lrender
    except ImportError:
        return None
    model = vm.model.eval()
    obj = objectives.channel(layer_module.replace(".", "_"), n)

    def run():
        lrender.render_vis(model, obj, param_f=lambda: param.image(size), thresholds=(steps,), show_image=False,
                           progress=False, fixed_image_size=size, preprocess=False)

    t = time.perf_counter()
    run()
    return (time.perf_counter() - t) / steps


def main() -> None:
    from cnnvis.utils import tune_malloc

    tune_malloc()  # as the CLI does: glibc keeps freed buffers (ours and the baselines alike)
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer steps for (b)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from cnnvis.models import load
    from cnnvis.layers import resolve_layer
    from cnnvis.optvis import DEFAULT_PRESET, channel, class_logit

    vm = load("efficientnet_lite0")
    print(f"torch {torch.__version__}, {a.threads} threads, efficientnet_lite0, {a.size}px, {a.steps} steps; "
          f"default preset {DEFAULT_PRESET}")

    print("\n(a) efficiency: render steps/s divided by raw truncated forward+backward steps/s "
          f"(best of {a.rounds} interleaved rounds)")
    for layer, batch in (("stage3", 1), ("stage5", 1), ("stage6", 4)):
        ch = list(range(batch)) if batch > 1 else 0
        raw = loop = full = float("inf")
        for _ in range(a.rounds):  # interleaved, best of: the machine is shared
            raw = min(raw, raw_truncated(vm, layer, batch, a.size, a.steps))
            loop = min(loop, ours(vm, channel(layer, ch), a.steps, size=a.size, transforms="none"))
            full = min(full, ours(vm, channel(layer, ch), a.steps, size=a.size))
        print(f"  {layer} batch {batch}: raw {1 / raw:6.1f} steps/s | render, no transforms {1 / loop:6.1f} "
              f"steps/s = {raw / loop:.2f} | with {DEFAULT_PRESET} transforms {1 / full:6.1f} steps/s = {raw / full:.2f}")
    raw = timed(lambda: _full_fb(vm, a.size), 3)
    t = time.perf_counter()
    res = render_class(vm, class_logit("pelican"))
    dt = time.perf_counter() - t
    print(f"  class render (whole network): raw {1 / raw:.1f} steps/s; 'cnnvis class pelican' stopped after "
          f"{res.steps} steps in {dt:.1f} s ({res.message or 'ran all steps'})")

    print("\n(b) batching: 16 channels of stage4 in one batch vs 16 renders one at a time")
    steps_b = max(8, a.steps // (4 if a.quick else 2))
    t = time.perf_counter()
    ours(vm, channel("stage4", list(range(16))), steps_b, size=128)
    tb = time.perf_counter() - t
    t = time.perf_counter()
    for c in range(16):
        ours(vm, channel("stage4", c), steps_b, size=128)
    ts = time.perf_counter() - t
    print(f"  {steps_b} steps at 128px: batched {tb:.1f} s, one at a time {ts:.1f} s -> {ts / tb:.2f}x faster batched")

    print("\n(c) vs torch-lucent (same channel objective, size, steps)")
    raw = raw_truncated(vm, "stage5", 1, a.size, a.steps)
    mine = ours(vm, channel("stage5", 0), a.steps, size=a.size, preset="lucid2017")  # before lucent: it leaves hooks
    try:
        lt = lucent_time(vm, resolve_layer(vm, "stage5"), 0, a.size, a.steps)
    except Exception as e:  # lucent's own dependencies (kornia versions) vary
        print(f"  torch-lucent failed to run here ({type(e).__name__}: {e}); skipped")
        return
    if lt is None:
        print("  torch-lucent is not installed: skipped (pip install torch-lucent --no-deps)")
    else:
        print(f"  stage5 ch 0, {a.steps} steps: lucent {1 / lt:.1f} steps/s ({lt / raw:.2f}x the truncated raw time), "
              f"cnnvis lucid2017 {1 / mine:.1f} steps/s ({mine / raw:.2f}x) -> cnnvis {lt / mine:.2f}x faster")
        t = time.perf_counter()
        lucent_class(vm, 512)
        print(f"  lucent 512-step class render (pelican logit, whole network): {time.perf_counter() - t:.1f} s")


def lucent_class(vm, steps):
    from lucent.optvis import objectives, param, render as lrender

    obj = objectives.channel("classifier", 144)  # lucent's channel on a (B, C) output = the logit
    lrender.render_vis(vm.model, obj, param_f=lambda: param.image(224), thresholds=(steps,), show_image=False,
                       progress=False, fixed_image_size=224, preprocess=False)


def _full_fb(vm, size):
    x = torch.rand(1, 3, size, size, requires_grad=True)
    from cnnvis.utils import model_guard

    with model_guard(vm.model):
        vm(x)[0, 144].backward()


def render_class(vm, obj):
    from cnnvis.optvis import render

    from cnnvis.optvis import UntilProb

    return render(vm, obj, steps=512, stop=UntilProb(0.99, robust=0.95))


if __name__ == "__main__":
    main()
