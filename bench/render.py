"""Benchmark of cnnvis.optvis.render (not a test). All ratios are measured within one run.

    .venv/bin/python bench/render.py [--steps 48] [--threads 2] [--quick]

(a) render steps/s vs the raw forward+backward steps/s of the same truncated network
    (input -> deepest layer the objective reads, gradient to the input), same batch and size;
    efficiency = render / raw (target >= 0.85). Measured without transforms (pure loop overhead:
    parameterization, objective, optimizer, checks) and with the default preset's transforms
    (whose extra resampling is real work the raw loop does not do).
(b) 16 channels of one layer in one batch vs the same 16 renders one at a time.
(c) vs torch-lucent (if installed) on the same channel objective, size and steps.
(d) the default `cnnvis class CLASS` on 15 classes x 3 seeds beside Lucent's 512-step render of
    the same class: steps, seconds, the model's own checks, an independent witness's
    (efficientnet_lite2: it neither makes nor stops either render; lite1 is a member of the default's
    ensemble) probability, colour saturation and contrast (--only-classes runs just this and (e)).
(e) --animate's extra time on a class render.

Measured (2 threads, quiet machine, this round's last run): (d) ours lite2 mean 0.972 (min 0.799), top-1
45/45, 192 steps, 11.8 s mean; Lucent-512 lite2 mean 0.233, top-1 5/15, 31.4 s; time ratio per class
(slowest seed) mean 0.39, max 0.43; saturation 0.496 vs 0.299, contrast 0.372 vs 0.252. (e) -2.8% (noise).
(f) 1 thread twice: identical; 1 vs 2 threads: correlation 0.508 (another sample of the same recipe).
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


def _lucent_shims() -> None:
    """torch-lucent 0.1.8 imports IPython.display (notebooks only) and kornia<0.5's top-level names."""
    import sys
    import types

    if "IPython" not in sys.modules:  # lucent imports IPython.display only to show images in notebooks
        try:
            import IPython  # noqa: F401
        except ImportError:
            ip = types.ModuleType("IPython")
            ip.display = types.ModuleType("IPython.display")
            sys.modules["IPython"], sys.modules["IPython.display"] = ip, ip.display
    import kornia

    if not hasattr(kornia, "get_rotation_matrix2d"):
        from kornia.geometry.transform import get_rotation_matrix2d, warp_affine

        kornia.get_rotation_matrix2d, kornia.warp_affine = get_rotation_matrix2d, warp_affine


def lucent_time(vm, layer_module: str, n: int, size: int, steps: int) -> float | None:
    try:
        _lucent_shims()
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
    ap.add_argument("--classes", type=int, default=15, help="(d): how many of the 15 classes")
    ap.add_argument("--seeds", type=int, default=3, help="(d): seeds per class")
    ap.add_argument("--no-classes", action="store_true", help="skip (d) and (e)")
    ap.add_argument("--only-classes", action="store_true", help="run only (d) and (e)")
    ap.add_argument("--save", default=None, help="(d): write every image (ours and Lucent's) into this folder")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from cnnvis.models import load
    from cnnvis.layers import resolve_layer
    from cnnvis.optvis import DEFAULT_PRESET, channel, class_logit

    vm = load("efficientnet_lite0")
    print(f"torch {torch.__version__}, {a.threads} threads, efficientnet_lite0, {a.size}px, {a.steps} steps; "
          f"default preset {DEFAULT_PRESET}")
    if a.only_classes:
        _lucent_shims()
        class_table(vm, a)
        return

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
    if not a.no_classes:
        class_table(vm, a)


class _Normalized(torch.nn.Module):
    """The model behind its own preprocessing, as a module Lucent can hook ('net_classifier')."""

    def __init__(self, vm):
        super().__init__()
        self.net, self.normalize = vm.model, vm.preprocess.normalize

    def forward(self, x):
        return self.net(self.normalize(x))


def lucent_class(vm, target: int, steps: int = 512, seed: int = 0):
    """Lucent's render_vis of the class logit (its defaults: Fourier image, Adam 0.05, standard
    transforms), on the model behind its own normalization -> ((3, H, W) image, seconds)."""
    from lucent.optvis import objectives, param, render as lrender

    torch.manual_seed(seed)
    t = time.perf_counter()
    imgs = lrender.render_vis(_Normalized(vm).eval(), objectives.channel("net_classifier", target),
                              param_f=lambda: param.image(224), thresholds=(steps,), show_image=False,
                              progress=False, fixed_image_size=224, preprocess=False)
    return torch.from_numpy(imgs[-1][0]).permute(2, 0, 1), time.perf_counter() - t


CLASSES = ["pelican", "magpie", "sea snake", "flamingo", "golden retriever",  # the report's five
           "goldfinch", "jaguar", "ambulance", "orangutan", "great white shark",
           "tabby", "lemon", "volcano", "monarch", "strawberry"]


def _judge_png(vm, judge, img, t):
    """The five numbers of `cnnvis class` and the judge's probability, all from the 8-bit PNG."""
    import io

    from PIL import Image

    from cnnvis.images import to_tensor
    from cnnvis.jobs.kinds_optvis import image_stats
    from cnnvis.jobs.result import png_bytes
    from cnnvis.optvis import robustness
    from cnnvis.optvis.robustness import witness_probs

    x = to_tensor(Image.open(io.BytesIO(png_bytes(img))))
    own = {k: float(v[0]) for k, v in robustness(vm, x, t).items()}
    p = witness_probs(judge, x)[0]
    return own, float(p[t]), int(p.argmax()) == t, image_stats(img)


def class_table(vm, a):
    """(d) The default `cnnvis class CLASS` (job layer: made for lite0 + lite1) on 15 classes x seeds,
    beside Lucent's 512-step render of the same class in the same run: steps, seconds, the
    embedded model's five numbers (min shown), an independent witness's probability (efficientnet_lite2:
    it neither makes nor stops either render), saturation, contrast."""
    import sys

    import numpy as np

    from cnnvis.images import to_tensor
    from cnnvis.jobs import run
    from cnnvis.models import load
    from cnnvis.optvis.robustness import witness_probs

    judge = load("efficientnet_lite2")  # lite1 is a member of the default's ensemble: not a witness
    classes = CLASSES[:a.classes]
    seeds = list(range(a.seeds))
    print(f"\n(d) default `cnnvis class` (witness efficientnet_lite2) vs Lucent 512 steps; {len(classes)} classes x "
          f"{len(seeds)} seeds; own = the embedded model's PNG prob / min over the 4 perturbations")
    print(f"  {'class':18} {'seed':>4} {'steps':>5} {'sec':>5} {'own':>11} {'lite2':>6} {'sat':>5} {'con':>5} | "
          f"{'lucent sec':>10} {'own':>11} {'lite2':>6} {'sat':>5} {'con':>5}  ratio")
    rows, lrows = [], []
    for c in classes:
        t = vm.class_index(c)
        luc = None
        try:
            img, lsec = lucent_class(vm, t, 512)
            own, wp, ok, st = _judge_png(vm, judge, img, t)
            luc = dict(sec=lsec, own=own, wit=wp, ok=ok, **st)
            if a.save:
                from cnnvis.viz import save_png

                save_png(img, f"{a.save}/lucent_{c.replace(' ', '_')}.png")
            lrows.append(luc)
        except Exception as e:  # lucent's own dependencies vary
            print(f"  lucent failed on {c}: {type(e).__name__}: {e}", file=sys.stderr)
        for s in seeds:
            t0 = time.perf_counter()
            res = run({"kind": "class_image", "target": c, "seed": s})  # the command's defaults
            sec = time.perf_counter() - t0
            d = res.data
            wp = witness_probs(judge, to_tensor(res.image()))[0]
            if a.save:
                res.image().save(f"{a.save}/ours_{c.replace(' ', '_')}_{s}.png")
            own_min = min(d["robustness"].values())
            r = dict(c=c, s=s, steps=d["steps"], sec=sec, png=d["prob_png"], rob=own_min, wit=float(wp[t]),
                     ok=int(wp.argmax()) == t, sat=d["saturation"], con=d["contrast"])
            rows.append(r)
            lt = (f"{luc['sec']:10.1f} {luc['own']['png']:.3f}/{min(luc['own'].values()):.3f} {luc['wit']:6.3f} "
                  f"{luc['saturation']:5.2f} {luc['contrast']:5.2f}  {sec / luc['sec']:.2f}" if luc else "")
            print(f"  {c:18} {s:4d} {r['steps']:5d} {sec:5.1f} {r['png']:.3f}/{own_min:.3f} {r['wit']:6.3f}"
                  f"{'' if r['ok'] else '!'} {r['sat']:5.2f} {r['con']:5.2f} | {lt}", flush=True)
    w = np.array([r["wit"] for r in rows])
    print(f"  ours: lite2 mean {w.mean():.3f} (min {w.min():.3f}), lite2 top-1 = class for {sum(r['ok'] for r in rows)}"
          f"/{len(rows)}; own PNG prob min {min(r['png'] for r in rows):.3f}, own perturbed min "
          f"{min(r['rob'] for r in rows):.3f}; steps mean {np.mean([r['steps'] for r in rows]):.0f}; seconds mean "
          f"{np.mean([r['sec'] for r in rows]):.1f}, max {max(r['sec'] for r in rows):.1f}; saturation "
          f"{np.mean([r['sat'] for r in rows]):.3f}, contrast {np.mean([r['con'] for r in rows]):.3f}")
    if lrows:
        lw = np.array([r["wit"] for r in lrows])
        print(f"  lucent 512: lite2 mean {lw.mean():.3f} (min {lw.min():.3f}), top-1 {sum(r['ok'] for r in lrows)}"
              f"/{len(lrows)}; seconds mean {np.mean([r['sec'] for r in lrows]):.1f}; saturation "
              f"{np.mean([r['saturation'] for r in lrows]):.3f}, contrast {np.mean([r['contrast'] for r in lrows]):.3f}")
        per = {}
        for r in rows:
            per.setdefault(r["c"], []).append(r["sec"])
        ratios = [max(per[c]) / l["sec"] for c, l in zip(classes, lrows)]
        print(f"  time ratio ours / lucent per class (slowest seed): max {max(ratios):.2f}, mean "
              f"{np.mean(ratios):.2f} (goal <= 0.5)")
    # (e) watching costs little: the same render with --animate
    spec = {"kind": "class_image", "target": "pelican", "until_prob": 0, "steps": 128, "judge": "none"}
    t0 = time.perf_counter()
    run(spec)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = run({**spec, "animate": True})
    anim = time.perf_counter() - t0
    print(f"\n(e) --animate: 128-step class render {plain:.1f} s, with a {res.data['frames']}-frame GIF "
          f"{anim:.1f} s -> {100 * (anim / plain - 1):+.1f}% (goal <= +10%)")
    # (f) what reproduces: the same spec at the same and at another thread count
    import numpy as np

    def pixels(threads):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return np.asarray(run(spec).image(), dtype=np.float64).ravel()
        finally:
            torch.set_num_threads(old)

    a1, a1b, a2 = pixels(1), pixels(1), pixels(2)
    print(f"(f) same seed, 128 steps: 1 thread twice -> correlation {np.corrcoef(a1, a1b)[0, 1]:.3f} "
          f"(identical: {bool((a1 == a1b).all())}); 1 vs 2 threads -> correlation {np.corrcoef(a1, a2)[0, 1]:.3f}")


def _full_fb(vm, size):
    x = torch.rand(1, 3, size, size, requires_grad=True)
    from cnnvis.utils import model_guard

    with model_guard(vm.model):
        vm(x)[0, 144].backward()


def render_class(vm, obj):
    """What `cnnvis class pelican` renders (its defaults, judge included)."""
    from cnnvis.optvis import UntilProb, render

    return render(vm, obj, "witness", stop=UntilProb(0.99, robust=0.95, min_steps=128, judge="efficientnet_lite1"))


if __name__ == "__main__":
    main()
