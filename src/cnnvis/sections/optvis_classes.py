"""Report section: class images of the reference classes, each re-checked from its saved PNG."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, classifier_only, esc

CLASSES = ["pelican", "magpie", "sea snake", "flamingo", "golden retriever"]


def _prob_table(d: dict) -> str:
    rows = [("PNG re-read from disk", d["prob_png"])] + [(d["perturbations"][k], v) for k, v in d["robustness"].items()]
    red = ' style="color:#b00"'
    return "<table>" + "".join(
        f"<tr><td>{esc(n)}</td><td class='num'{red if v < 0.9 else ''}>{v:.3f}</td></tr>"
        for n, v in rows) + "</table>"


def _numbers(d: dict) -> dict:
    return {"png": round(d["prob_png"], 4), **{k: round(v, 4) for k, v in d["robustness"].items()}}


def render(ctx: ReportContext) -> str:
    steps, min_steps = (256, 192) if ctx.quick else (512, 448)
    html, data = [], {}
    note = (f"<p class='note'>Quick mode: {min_steps} to {steps} steps per class (full report: 448 to 512), and "
            f"the preset comparison uses 48 steps.</p>") if ctx.quick else ""
    first = None
    for name in CLASSES:
        res = ctx.run("class_image", target=name, steps=steps, min_steps=min_steps, until_prob=0.99, robust_prob=0.95)
        d = res.data
        first = first or d
        rel = ctx.save_file(res, f"class_{name.replace(' ', '_')}.png")
        data[name] = {"index": d["class"]["index"], "steps": d["steps"], "seconds": d["seconds"], **_numbers(d)}
        html.append(ctx.img_tag(rel, f"<b>{esc(name)}</b> ({d['steps']} steps, {d['seconds']:.0f} s)" + _prob_table(d),
                                width=224))
    head = (note + f"<p>Preset <b>{esc(first['preset'])}</b>, 224 px, seed {ctx.seed}; after at least {min_steps} "
            "steps each render stops once the 8-bit image reaches probability 0.99 and at least 0.95 under each "
            "perturbation. Numbers are the model's probability for the class, measured on the PNG file as saved.</p>")
    # the same class with every preset: plain pixel ascent is adversarial noise
    cmp_steps = 48 if ctx.quick else 256
    presets = ["chollet2016", "lucid2017"] if ctx.quick else ["chollet2016", "yosinski2015", "lucid2017", "robust"]
    html.append(f"<h3>Presets compared (pelican, {cmp_steps} steps, no early stop)</h3>")
    data["_presets"] = {}
    for p in presets:
        res = ctx.run("class_image", target="pelican", preset=p, steps=cmp_steps, min_steps=0, until_prob=0)
        rel = ctx.save_file(res, f"class_pelican_{p}.png")
        data["_presets"][p] = _numbers(res.data)
        html.append(ctx.img_tag(rel, f"<b>{p}</b>" + _prob_table(res.data), width=224))
    ctx.data["optvis_classes"] = data
    return head + "".join(html)


SECTION = Section(
    "optvis_classes", "Activation maximization: what the model thinks a class looks like", render, order=20,
    applies=classifier_only,
    description="Images optimized to maximize one class logit (Fourier parameterization, decorrelated colour, "
                "random jitter/scale/rotation). Each is re-classified from its saved PNG, and after a 1-px blur, "
                "2x down/up-scaling, an 8-px shift and a resize/crop: adversarial noise would fail those.",
)
