"""Report section: filter grids (VGG16's 13 conv layers; the embedded model's stages)."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, esc


def render(ctx: ReportContext) -> str:
    out, data = [], {}
    n, steps, size = (5, 48, 64) if ctx.quick else (10, "auto", "auto")
    if ctx.quick:
        out.append("<p class='note'>Quick mode: 5 filters per layer, 48 steps at 64 px "
                   "(full report: 10 filters, size and steps per layer from its receptive field).</p>")
    from cnnvis.report import small_net, with_vgg16

    for model_name in with_vgg16(ctx.vm):
        # a small net's filters at its own input size (a 28-px net's features tile an 80-px image)
        side = min(ctx.vm.input_shape[1:]) if model_name == ctx.vm.name and small_net(ctx.vm) is None else size
        try:
            res = ctx.run("filters", model=model_name, first=n, steps=steps, size=side)
        except ImportError as e:  # a missing optional weights package must not kill the section
            out.append(f"<p>{esc(model_name)}: not available ({esc(str(e))}).</p>")
            continue
        rel = ctx.save_file(res, f"filters_{model_name}.png")
        rows = res.data["layers"]
        data[model_name] = {"steps": steps, "size": side, "values": {r["layer"]: r["values"] for r in rows},
                            "plan": {r["layer"]: [r.get("size"), r.get("steps")] for r in rows},
                            "dead": res.data.get("dead"), "grey": res.data.get("grey")}
        how = (f"{steps} steps, {side} px" if steps != "auto" else
               "steps and size per layer (auto)" if side == "auto" else f"{side} px, steps per layer (auto)")
        counts = (f"; {res.data['dead']} channels constant on the sample photos after their BatchNorm and "
                  f"activation (tiles marked dead), "
                  f"{res.data['grey']} flat tiles") if "dead" in res.data else ""
        out.append(ctx.img_tag(rel, f"{esc(model_name)}: {len(rows)} layers x {n} filters, preset "
                                    f"{esc(res.spec['preset'] or 'filter default (jitter)')}, {how}{counts}"))
    ctx.data["optvis_filters"] = data
    return "".join(out)


SECTION = Section(
    "optvis_filters", "Activation maximization: what each filter responds to", render, order=22,
    description="One row per layer, one column per filter: the image that maximizes the filter's mean activation "
                "(all filters of a layer rendered together in one batch). Early layers respond to colours and "
                "edges, deeper ones to textures, parts and objects.",
)
