"""Report section: filter grids (VGG16's 13 conv layers; the embedded model's stages)."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, esc


def _grid(ctx: ReportContext, vm, layers, n, steps, size, name) -> tuple[str, dict]:
    from cnnvis.optvis.filters import render_filters
    from cnnvis.viz import grid

    rows = render_filters(vm, layers, n, steps=steps, size=size, seed=ctx.seed, progress=ctx.progress)
    img = grid([list(im) for _, _, im, _ in rows], row_labels=[r[0] for r in rows],
               col_labels=[str(c) for c in rows[0][1]], title=f"{vm.name}: first {n} filters per layer")
    rel = ctx.save(img, name)
    return rel, {layer: [round(float(v), 4) for v in vals] for layer, _, _, vals in rows}


def render(ctx: ReportContext) -> str:
    from cnnvis.optvis.filters import default_layers

    out, data = [], {}
    if ctx.quick:
        specs = [("vgg16_hed", None, 5, 48, 80), (ctx.vm.name, None, 5, 48, 80)]
        out.append("<p class='note'>Quick mode: 5 filters per layer, 48 steps at 80 px "
                   "(full report: 10 filters, 128 steps at 112 px).</p>")
    else:
        specs = [("vgg16_hed", None, 10, 128, 112), (ctx.vm.name, None, 10, 128, 112)]
    seen = set()
    for model_name, layers, n, steps, size in specs:
        if model_name in seen:
            continue
        seen.add(model_name)
        try:
            vm = ctx.model(model_name)
        except Exception as e:  # a missing optional weights package must not kill the report
            out.append(f"<p>{esc(model_name)}: not available ({esc(str(e))}).</p>")
            continue
        layers = layers or default_layers(vm)
        rel, d = _grid(ctx, vm, layers, n, steps, size, f"filters_{model_name}.png")
        data[model_name] = {"steps": steps, "size": size, "values": d}
        out.append(ctx.img_tag(rel, f"{esc(model_name)}: {len(layers)} layers x {n} filters, preset robust, "
                                    f"{steps} steps, {size} px"))
    ctx.data["optvis_filters"] = data
    return "".join(out)


SECTION = Section(
    "optvis_filters", "Activation maximization: what each filter responds to", render, order=22,
    description="One row per layer, one column per filter: the image that maximizes the filter's mean activation "
                "(all filters of a layer rendered together in one batch). Early layers respond to colours and "
                "edges, deeper ones to textures, parts and objects.",
)
