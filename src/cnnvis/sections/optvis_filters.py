"""Report section: filter grids (VGG16's 13 conv layers; the embedded model's stages)."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, esc


def render(ctx: ReportContext) -> str:
    out, data = [], {}
    n, steps, size = (5, 48, 80) if ctx.quick else (10, 128, 112)
    if ctx.quick:
        out.append("<p class='note'>Quick mode: 5 filters per layer, 48 steps at 80 px "
                   "(full report: 10 filters, 128 steps at 112 px).</p>")
    for model_name in dict.fromkeys(["vgg16_hed", ctx.vm.name]):
        try:
            res = ctx.run("filters", model=model_name, first=n, steps=steps, size=size)
        except ImportError as e:  # a missing optional weights package must not kill the section
            out.append(f"<p>{esc(model_name)}: not available ({esc(str(e))}).</p>")
            continue
        rel = ctx.save_file(res, f"filters_{model_name}.png")
        rows = res.data["layers"]
        data[model_name] = {"steps": steps, "size": size, "values": {r["layer"]: r["values"] for r in rows}}
        out.append(ctx.img_tag(rel, f"{esc(model_name)}: {len(rows)} layers x {n} filters, preset "
                                    f"{esc(res.spec['preset'])}, {steps} steps, {size} px"))
    ctx.data["optvis_filters"] = data
    return "".join(out)


SECTION = Section(
    "optvis_filters", "Activation maximization: what each filter responds to", render, order=22,
    description="One row per layer, one column per filter: the image that maximizes the filter's mean activation "
                "(all filters of a layer rendered together in one batch). Early layers respond to colours and "
                "edges, deeper ones to textures, parts and objects.",
)
