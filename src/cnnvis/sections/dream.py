"""Report section: one photo dreamed at three depths."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, esc


def _layers(vm) -> list[str]:
    """Three layers of increasing depth: VGG pools, the embedded model's stages, else convs."""
    if "pool3" in vm.aliases:
        return ["pool3", "pool4", "pool5"]
    stages = sorted(a for a in vm.aliases if a.startswith("stage"))
    if len(stages) >= 5:
        return [stages[2], stages[4], stages[-1]]
    from cnnvis.layers import conv_layers

    convs = conv_layers(vm)
    return [convs[len(convs) // 4], convs[len(convs) // 2], convs[-1]]


def render(ctx: ReportContext) -> str:
    from cnnvis.dream import dream
    from cnnvis.viz import grid

    vm = ctx.vm
    name, photo = ctx.photos[0]
    side = 320 if ctx.quick else 512
    s = side / max(photo.size)
    if s < 1:
        photo = photo.resize((round(photo.size[0] * s), round(photo.size[1] * s)))
    kw = dict(octaves=3 if ctx.quick else 4, steps_per_octave=6 if ctx.quick else 12, step_size=0.03, seed=ctx.seed)
    layers = _layers(vm)
    dreams = [dream(vm, photo, [layer], **kw) for layer in layers]
    row = grid([[photo] + dreams], col_labels=["photo"] + layers, cell=photo.size)
    rel = ctx.save(row, f"dream_{name}.png")
    ctx.data["dream"] = {"photo": name, "layers": layers, "size": list(photo.size), **kw}
    return (ctx.img_tag(rel, f"{esc(name)} dreamed at {', '.join(esc(x) for x in layers)} "
                             f"({kw['octaves']} octaves x {kw['steps_per_octave']} steps)") +
            "<p>Shallow layers add strokes and textures; deeper layers add eyes, fur and object parts. "
            "Reproduce: <code>cnnvis dream PHOTO --layers " + esc(",".join(layers)) + " --row row.png</code></p>")


SECTION = Section(
    "dream", "DeepDream at three depths", render, order=60,
    description="Gradient ascent on the squared activations of one layer, from the photo, with octaves and jitter "
                "(Mordvintsev et al. 2015).",
)
