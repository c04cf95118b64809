"""Report section: the photos with the model's top-5."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, classifier_only, esc


def render(ctx: ReportContext) -> str:
    from PIL import ImageOps

    res = ctx.run("classify", images=[ref for _, ref in ctx.photos], top=5)
    cells, data = [], {}
    for i, ((name, _), pred) in enumerate(zip(ctx.photos, res.data["predictions"])):
        _, im = ctx.photo(i)
        rel = ctx.save(ImageOps.fit(im, (224, 224)), f"photo_{name}.png")
        rows = "".join(f"<tr><td>{esc(q['label'])}</td><td class='num'>{q['prob']:.3f}</td></tr>" for q in pred["top"])
        cells.append(f"<figure><img src='{esc(rel)}' width='224' alt='{esc(name)}'><figcaption><b>{esc(name)}</b>"
                     f"<table>{rows}</table></figcaption></figure>")
        data[name] = [{"index": q["index"], "label": q["label"], "prob": round(q["prob"], 4)} for q in pred["top"]]
    ctx.data["classification"] = data
    return "".join(cells)


SECTION = Section(
    "classification", "Top-5 classification", render, order=10, applies=classifier_only,
    description="Each photo with its five most likely classes (resized and centre-cropped as the model expects).",
)
