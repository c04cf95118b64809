"""Report section: one photo dreamed at three depths."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, esc


def render(ctx: ReportContext) -> str:
    from cnnvis.layers import dream_layers
    from cnnvis.viz import grid

    name, photo = ctx.photo(0)
    side = 320 if ctx.quick else 512
    kw = dict(octaves=3 if ctx.quick else 4, steps=6 if ctx.quick else 12, step_size=0.03, max_side=side)
    layers = dream_layers(ctx.vm, 3)
    results = [ctx.run("dream", image=ctx.photos[0][1], layers=[layer], **kw) for layer in layers]
    dreams = [r.image() for r in results]
    photo = photo.resize(dreams[0].size)  # the dreams were made at max_side
    row = grid([[photo] + dreams], col_labels=["photo"] + layers, cell=photo.size)
    rel = ctx.save(row, f"dream_{name}.png")
    ctx.data["dream"] = {"photo": name, "layers": layers, "size": list(photo.size), **kw}
    return (ctx.img_tag(rel, f"{esc(name)} dreamed at {', '.join(esc(x) for x in layers)} "
                             f"({kw['octaves']} octaves x {kw['steps']} steps)") +
            "<p>Shallow layers add strokes and textures; deeper layers add eyes, fur and object parts. "
            "Reproduce: <code>cnnvis dream PHOTO --layers " + esc(",".join(layers)) + " --row row.png</code></p>")


SECTION = Section(
    "dream", "DeepDream at three depths", render, order=60,
    description="Gradient ascent on the squared activations of one layer, from the photo, with octaves and jitter "
                "(Mordvintsev et al. 2015).",
)
