"""Report section: feature inversion (Mahendran & Vedaldi 2015), one photo at several depths."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, esc, small_net


def render(ctx: ReportContext) -> str:
    small = small_net(ctx.vm) is None
    name, ref = ctx.photos[0]
    fields: dict = {"image": ref}
    if small:
        fields.update(steps=200)
        if ctx.judge:
            fields["judge"] = ctx.judge
    elif ctx.quick:  # a 128-px photo, 96 steps a layer: the layout and colours, not every detail
        fields.update(size=128, steps=96)
    res = ctx.run("inversion", **fields)
    d = res.data
    rel = ctx.save_file(res, f"inversion_{name}.png")
    rows = d["layers"]
    table = "<table><tr><th>layer</th><th>relative distance</th><th>model's top-1</th><th>judge's top-1</th></tr>" + \
        "".join(f"<tr><td>{esc(r['layer'])}</td><td class='num'>{r['distance']:.3f}</td>"
                f"<td>{esc((r.get('model') or {}).get('label', '-'))}</td>"
                f"<td>{esc((r.get('judge') or {}).get('label', '-'))}</td></tr>" for r in rows) + "</table>"
    ctx.data["inversion"] = {"photo": name, "steps": res.spec["steps"], "size": d["input"][1:],
                             "judge": d.get("judge"), "layers": rows}
    pc = d.get("photo_class") or {}
    return (ctx.img_tag(rel, f"{esc(name)} ({esc(str(pc.get('label', '')))}) and, for each layer, an image "
                             f"optimized from noise until its representation there matches the photo's "
                             f"({res.spec['steps']} steps)") + table +
            "<p>Shallow layers keep the photo almost pixel for pixel; deeper ones keep the object's parts and "
            "textures but not their exact place and colour. The relative distance is ||phi(image) - phi(photo)|| / "
            "||phi(photo)|| at the layer; the judge, a second classifier that never gave a gradient, says what "
            "it sees in each image. Reproduce: <code>cnnvis invert PHOTO --out row.png</code></p>")


SECTION = Section(
    "inversion", "Feature inversion: what each layer keeps of a photo", render, order=26,
    description="Mahendran & Vedaldi (2015): the image whose representation at a layer matches the photo's, found "
                "with the render loop (Lucid's Fourier image, then pixels).",
)
