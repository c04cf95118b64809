"""Report section: one photo dreamed at three depths."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, esc


def render(ctx: ReportContext) -> str:
    name, ref = ctx.photos[0]
    # the full report: `cnnvis dream`'s own defaults (cnnvis.defaults.Dream) on the photo shrunk to 512 px;
    # --quick: fewer octaves and steps at 320 px, larger steps (said so below the picture)
    kw = dict(octaves=3, steps=6, step_size=0.03, max_side=320) if ctx.quick else dict(max_side=512)
    res = ctx.run("dream_row", image=ref, n=3, **kw)  # a dream job per layer (dream_layers), the photo first
    layers = res.data["layers"]
    rel = ctx.save_file(res, f"dream_{name}.png")
    used = {k: res.spec[k] for k in ("octaves", "steps", "step_size", "max_side")}
    ctx.data["dream"] = {"photo": name, "layers": layers, "size": res.data["size"], **used}
    flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in used.items() if k in kw)
    note = ("<p class='note'>Quick mode: 3 octaves x 6 steps of 0.03 at 320 px (full report: "
            "<code>cnnvis dream</code>'s defaults at 512 px).</p>" if ctx.quick else "")
    return (ctx.img_tag(rel, f"{esc(name)} dreamed at {', '.join(esc(x) for x in layers)} "
                             f"({used['octaves']} octaves x {used['steps']} steps)") + note +
            "<p>Shallow layers add strokes and textures; deeper layers add eyes, fur and object parts. "
            "Reproduce (the same dream jobs): <code>cnnvis dream PHOTO --layers " + esc(",".join(layers)) +
            esc(flags) + " --row row.png</code></p>")


SECTION = Section(
    "dream", "DeepDream at three depths", render, order=60,
    description="Gradient ascent on the squared activations of one layer, from the photo, with octaves and jitter "
                "(Mordvintsev et al. 2015).",
)
