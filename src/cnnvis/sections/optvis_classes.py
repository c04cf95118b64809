"""Report section: class images of the reference classes, each re-checked from its saved PNG."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, esc

CLASSES = ["pelican", "magpie", "sea snake", "flamingo", "golden retriever"]


def _prob_table(rob: dict) -> str:
    from cnnvis.optvis import PERTURBATIONS

    rows = [("PNG re-read from disk", rob["png"])] + [(PERTURBATIONS[k], rob[k]) for k in PERTURBATIONS]
    red = ' style="color:#b00"'
    return "<table>" + "".join(
        f"<tr><td>{esc(n)}</td><td class='num'{red if v < 0.9 else ''}>{v:.3f}</td></tr>"
        for n, v in rows) + "</table>"


def _check(ctx: ReportContext, rel: str, target: int) -> dict:
    from cnnvis.images import load_image, to_tensor
    from cnnvis.optvis import robustness

    x = to_tensor(load_image(ctx.out / rel))
    return {k: round(float(v[0]), 4) for k, v in robustness(ctx.vm, x, target).items()}


def render(ctx: ReportContext) -> str:
    from cnnvis.optvis import DEFAULT_PRESET, class_logit
    from cnnvis.optvis import render as optimize

    vm = ctx.vm
    if vm.task != "classification":
        return f"<p>{esc(vm.name)} is not a classifier ({esc(vm.task)}); no class images.</p>"
    steps, min_steps = (256, 192) if ctx.quick else (512, 448)
    html, data = [], {}
    note = (f"<p class='note'>Quick mode: {min_steps} to {steps} steps per class (full report: 448 to 512), and "
            f"the preset comparison uses 48 steps.</p>") if ctx.quick else ""
    html.append(note + f"<p>Preset <b>{DEFAULT_PRESET}</b>, 224 px, seed {ctx.seed}; after at least {min_steps} "
                "steps each render stops once the 8-bit image reaches probability 0.99 and at least 0.95 under each "
                "perturbation. Numbers are the model's probability for the class, measured on the PNG file as "
                "saved.</p>")
    for name in CLASSES:
        t = vm.class_index(name)
        res = optimize(vm, class_logit(t), steps=steps, until_prob=0.99, until_robust=0.95, min_steps=min_steps,
                       seed=ctx.seed,
                       progress=ctx.progress, desc=f"class {name}")
        rel = ctx.save(res.images, f"class_{name.replace(' ', '_')}.png")
        rob = _check(ctx, rel, t)
        data[name] = {"index": t, "steps": res.steps, "seconds": round(res.seconds, 1), **rob}
        html.append(ctx.img_tag(rel, f"<b>{esc(name)}</b> ({res.steps} steps, {res.seconds:.0f} s)"
                                + _prob_table(rob), width=224))
    # the same class with every preset: plain pixel ascent is adversarial noise
    cmp_steps = 48 if ctx.quick else 256
    presets = ["chollet2016", "lucid2017"] if ctx.quick else ["chollet2016", "yosinski2015", "lucid2017", "robust"]
    html.append(f"<h3>Presets compared (pelican, {cmp_steps} steps, no early stop)</h3>")
    data["_presets"] = {}
    for p in presets:
        res = optimize(vm, class_logit("pelican"), preset=p, steps=cmp_steps, seed=ctx.seed, progress=ctx.progress,
                       desc=f"pelican {p}")
        rel = ctx.save(res.images, f"class_pelican_{p}.png")
        rob = _check(ctx, rel, vm.class_index("pelican"))
        data["_presets"][p] = rob
        html.append(ctx.img_tag(rel, f"<b>{p}</b>" + _prob_table(rob), width=224))
    ctx.data["optvis_classes"] = data
    return "".join(html)


SECTION = Section(
    "optvis_classes", "Activation maximization: what the model thinks a class looks like", render, order=20,
    description="Images optimized to maximize one class logit (Fourier parameterization, decorrelated colour, "
                "random jitter/scale/rotation). Each is re-classified from its saved PNG, and after a 1-px blur, "
                "2x down/up-scaling, an 8-px shift and a resize/crop: adversarial noise would fail those.",
)
