"""Report section: class images of the reference classes, each re-checked from its saved PNG."""

from __future__ import annotations

from cnnvis.jobs.helpers import compared_presets
from cnnvis.report import ReportContext, Section, classifier_only, esc

CLASSES = ["pelican", "magpie", "sea snake", "flamingo", "golden retriever"]


def _prob_table(d: dict) -> str:
    rows = [("PNG re-read from disk", d["prob_png"])] + [(d["perturbations"][k], v) for k, v in d["robustness"].items()]
    rows += [(f"{e['model']} (made also for it)", e["prob"]) for e in d.get("ensemble") or []]
    j = d.get("judge")
    if j:
        rows.append((f"judge {j['model']} (a second model)", j["prob"]))
    red = ' style="color:#b00"'
    return "<table>" + "".join(
        f"<tr><td>{esc(n)}</td><td class='num'{red if v < 0.9 else ''}>{v:.3f}</td></tr>"
        for n, v in rows) + "</table>" + (
        f"<p class='note' style='color:#b00'>the judge's top-1: {esc(j['top1']['label'])}</p>"
        if j and not j["agrees"] else "")


def _numbers(d: dict) -> dict:
    out = {"png": round(d["prob_png"], 4), **{k: round(v, 4) for k, v in d["robustness"].items()}}
    if d.get("judge"):
        out["judge"] = round(d["judge"]["prob"], 4)
    return out


def render(ctx: ReportContext) -> str:
    from cnnvis.report import small_net

    small = small_net(ctx.vm) is None
    html, data = [], {}
    first = None
    extra = {"judge": ctx.judge or "none"} if small else {}
    for name in (list(ctx.vm.labels)[:10] if small else CLASSES):
        res = ctx.run("class_image", target=name, **extra)  # what `cnnvis class NAME` does
        d = res.data
        first = first or (d, res.spec)
        rel = ctx.save_file(res, f"class_{name.replace(' ', '_')}.png")
        data[name] = {"index": d["class"]["index"], "steps": d["steps"], "seconds": d["seconds"], **_numbers(d),
                      "saturation": d["saturation"], "contrast": d["contrast"]}
        html.append(ctx.img_tag(rel, f"<b>{esc(name)}</b> ({d['steps']} steps, {d['seconds']:.0f} s)" + _prob_table(d),
                                width=112 if small else 224))
    d0, spec = first
    if small:  # the regularizer study compares the recipes on a small net
        ctx.data["optvis_classes"] = data
        return (f"<p>What <code>cnnvis class NAME</code> makes on {esc(ctx.vm.name)} (preset "
                f"<b>{esc(d0['preset'])}</b>, seed {ctx.seed}); numbers are probabilities measured on the PNG as "
                "saved" + (f", and by the judge <code>{esc(ctx.judge)}</code>" if ctx.judge else "") + ".</p>"
                + "".join(html))
    judge = spec.get("judge") or "none"
    ens = spec.get("ensemble") or []
    head = (f"<p>What <code>cnnvis class NAME</code> makes: preset <b>{esc(d0['preset'])}</b>, 224 px, seed "
            f"{ctx.seed}" + (f", made for the mean logits of {esc(ctx.vm.name)} and {esc(', '.join(ens))} (an "
                             "image two separately trained models agree on convinces a third)" if ens else "")
            + f". After at least {spec['min_steps']} steps (at most {spec['steps']}) each render stops once "
            f"the 8-bit image reaches probability {spec['until_prob']}, at least {spec['robust_prob']} under each "
            "perturbation" + (f", and the judge <b>{esc(judge)}</b> (a second, separately trained model that "
                              f"never gives a gradient) gives it at least {spec['judge_prob']}" if judge != "none"
                              else "") +
            ". Numbers are probabilities of the class, measured on the PNG file as saved.</p>")
    # the same class with every preset, on the model alone: plain pixel ascent is adversarial noise
    cmp_steps = 48 if ctx.quick else 256
    presets = compared_presets(quick=ctx.quick)  # each preset declares whether it is drawn here
    html.append(f"<h3>Presets compared (pelican, {esc(ctx.vm.name)} alone, {cmp_steps} steps, no early stop)</h3>")
    data["_presets"] = {}
    for p in presets:
        res = ctx.run("class_image", target="pelican", preset=p, steps=cmp_steps, min_steps=0, until_prob=0,
                      judge_prob=0, ensemble=["none"])
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
                "2x down/up-scaling, an 8-px shift and a resize/crop: adversarial noise would fail those. The "
                "model's own numbers saturate at 1.0; a second model's (the judge) do not.",
)
