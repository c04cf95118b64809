"""Report section: the photos with the model's top-5."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, esc


def render(ctx: ReportContext) -> str:
    from cnnvis.classify import classify

    vm = ctx.vm
    if vm.task != "classification":
        return f"<p>{esc(vm.name)} is not a classifier ({esc(vm.task)}); no class predictions.</p>"
    preds = classify(vm, [im for _, im in ctx.photos], top=5)
    cells, data = [], {}
    for (name, im), pr in zip(ctx.photos, preds):
        x = vm.preprocess.prepare(im)
        rel = ctx.save(x, f"photo_{name}.png")
        rows = "".join(f"<tr><td>{esc(q.label)}</td><td class='num'>{q.prob:.3f}</td></tr>" for q in pr)
        cells.append(f"<figure><img src='{rel}' width='224' alt='{esc(name)}'><figcaption><b>{esc(name)}</b>"
                     f"<table>{rows}</table></figcaption></figure>")
        data[name] = [{"index": q.index, "label": q.label, "prob": round(q.prob, 4)} for q in pr]
    ctx.data["classification"] = data
    return "".join(cells)


SECTION = Section(
    "classification", "Top-5 classification", render, order=10,
    description="Each photo resized and centre-cropped as the model expects, with its five most likely classes.",
)
