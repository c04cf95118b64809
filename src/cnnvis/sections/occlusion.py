"""Report section: Zeiler & Fergus occlusion sensitivity (their Fig. 7) on the report's photos."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, classifier_only, esc, small_net


def render(ctx: ReportContext) -> str:
    small = small_net(ctx.vm) is None
    photos = ctx.photos[:2] if ctx.quick else ctx.photos[:4]
    # quick: a 160-px input, a 32-px patch every 16 px (9 x 9 positions); full: the model's input,
    # the default patch (a fifth of the side) every quarter patch
    # (a small net: a patch a third of the digit, every 2 px)
    side = min(ctx.vm.input_shape[1:])
    kw = {"window": max(1, side // 3), "stride": max(1, side // 14)} if small else \
        {"size": 160, "window": 32, "stride": 16} if ctx.quick else {}
    html, data = [], {}
    for name, ref in photos:
        res = ctx.run("occlusion", image=ref, **kw)
        d = res.data
        data[name] = {k: d.get(k) for k in ("target", "label", "window", "stride", "positions", "base_prob",
                                             "min_prob", "worst_position", "layer", "channel")}
        data[name]["top1_classes"] = (d.get("top1_classes") or [])[:4]
        rel = ctx.save_file(res, f"occlusion_{name}.png")
        html.append(ctx.img_tag(rel, f"{esc(name)}: {esc(str(d.get('label')))} with probability "
                                     f"{d['base_prob']:.3f}; a {d['window'][0]}-px grey patch every "
                                     f"{d['stride'][0]} px lowers it to {d['min_prob']:.3f} at its worst. "
                                     f"Panels: the patch there; the total activation of {esc(str(d['layer']))} "
                                     f"channel {d['channel']} (its strongest on the photo); the probability; "
                                     f"the most probable class."))
    ctx.data["occlusion"] = data
    return ("".join(html) + "<p>As in Zeiler &amp; Fergus (2014, Fig. 7): where the patch covers the object, the "
            "probability of its class drops and the strongest feature map goes quiet, so the model looks at the "
            "object, not its surroundings. Reproduce: <code>cnnvis occlusion PHOTO --out occlusion.png</code></p>")


SECTION = Section(
    "occlusion", "Occlusion sensitivity (Zeiler & Fergus)", render, order=43, applies=classifier_only,
    description="A grey patch slid over the photo: at each position the class probability, the most probable "
                "class and the total activation of the strongest feature map (one forward per position, batched).",
)
