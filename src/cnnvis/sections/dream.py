"""Report section: one photo dreamed at three depths."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, esc


def render(ctx: ReportContext) -> str:
    name, ref = ctx.photos[0]
    side = 320 if ctx.quick else 512
    kw = dict(octaves=3 if ctx.quick else 4, steps=6 if ctx.quick else 12, step_size=0.03, max_side=side)
    res = ctx.run("dream_row", image=ref, n=3, **kw)  # a dream job per layer (dream_layers), the photo first
    layers = res.data["layers"]
    rel = ctx.save_file(res, f"dream_{name}.png")
    ctx.data["dream"] = {"photo": name, "layers": layers, "size": res.data["size"], **kw}
    return (ctx.img_tag(rel, f"{esc(name)} dreamed at {', '.join(esc(x) for x in layers)} "
                             f"({kw['octaves']} octaves x {kw['steps']} steps)") +
            "<p>Shallow layers add strokes and textures; deeper layers add eyes, fur and object parts. "
            "Reproduce: <code>cnnvis dream PHOTO --layers " + esc(",".join(layers)) + " --row row.png</code></p>")


SECTION = Section(
    "dream", "DeepDream at three depths", render, order=60,
    description="Gradient ascent on the squared activations of one layer, from the photo, with octaves and jitter "
                "(Mordvintsev et al. 2015).",
)
