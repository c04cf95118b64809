"""Report sections of the dataset study: a small net trained with `cnnvis train` (or any model
given --data) seen from every side. Each is skipped when the report has no dataset."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, classifier_only, esc, join_words, small_net


def _data(ctx: ReportContext) -> dict:
    return {"data": ctx.data_ref, "split": ctx.data_split}


def _skipped(d: dict) -> str:
    """A paragraph naming the dataset's unreadable images (none: empty)."""
    n = d.get("skipped") or 0
    if not n:
        return ""
    names = d.get("skipped_names") or []
    shown = ", ".join(f"<code>{esc(str(x))}</code>" for x in names[:3]) + (", ..." if n > 3 else "")
    return f"<p>{n} unreadable image(s) of the dataset were skipped: {shown}.</p>"


def _where(ctx: ReportContext) -> str:
    return f"<code>{esc(str(ctx.data_ref))}</code>" + (f" ({esc(ctx.data_split)} split)" if ctx.data_split else "")


# ---------------------------------------------------------------------- accuracy
def render_accuracy(ctx: ReportContext) -> str:
    html, data = [], {}
    t = ctx.training or {}
    if t:
        acc = t.get("held_out_accuracy")
        html.append(f"<p>Trained by <code>cnnvis train</code> on <code>{esc(str(t.get('data')))}</code>: "
                    f"held-out accuracy <b>{acc:.4f}</b> ({esc(str(t.get('held_out', '')))})"
                    if isinstance(acc, (int, float)) else "<p>Trained by <code>cnnvis train</code>")
        html.append(f", {t.get('epochs', '?')} epochs, seed {t.get('seed', '?')}.</p>")
        hist = t.get("history") or []
        if hist:
            keys = [k for k in ("epoch", "loss", "train_accuracy", "held_out_accuracy", "seconds") if k in hist[0]]
            rows = "".join("<tr>" + "".join(f"<td class='num'>{esc(_fmt(h.get(k)))}</td>" for k in keys) + "</tr>"
                           for h in hist)
            html.append("<table><tr>" + "".join(f"<th>{esc(k)}</th>" for k in keys) + "</tr>" + rows + "</table>")
        data["training"] = {k: t.get(k) for k in ("data", "held_out_accuracy", "epochs", "seed")}
    held = t.get("held_out") if isinstance(t.get("held_out"), float) and t.get("data") == ctx.data_ref else None
    res = ctx.run("evaluate", **_data(ctx), held_out=held, limit=2000 if ctx.quick else None)
    d = res.data
    data["evaluate"] = {"n": d["n"], "accuracy": d["accuracy"], "per_class": d["per_class"],
                        "skipped": d.get("skipped", 0)}
    part = f" (the {held:.0%} held out in training)" if held else ""
    html.append(f"<p>Re-measured here on {d['n']} images of {_where(ctx)}{part}: accuracy "
                f"<b>{d['accuracy']:.4f}</b>.</p>" + _skipped(d))
    html.append(ctx.img_tag(ctx.save_file(res, "study_confusion.png"), "Confusion matrix (rows: true class)"))
    if "mistakes.png" in res.files:
        html.append(ctx.img_tag(ctx.save_file(res, "study_mistakes.png", "mistakes.png"),
                                "The most confident mistakes: true > predicted, probability"))
    ctx.data["study_accuracy"] = data
    return "".join(html)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------- weights and feature maps
def render_weights(ctx: ReportContext) -> str:
    res = ctx.run("weights")
    ctx.data["study_weights"] = {k: v for k, v in res.data.items() if not isinstance(v, list) or len(v) < 64}
    return ctx.img_tag(ctx.save_file(res, "study_weights.png"),
                       f"First-layer filters of {esc(ctx.vm.name)} ({esc(str(res.data.get('layer', '')))}), "
                       "one tile each, on one scale around 0 (grey = 0).") + \
        "<p>Reproduce: <code>cnnvis weights --model MODEL</code></p>"


def render_maps(ctx: ReportContext) -> str:
    html, data = [], {}
    for name, ref in ctx.photos[:2]:
        res = ctx.run("feature_maps", image=ref)
        data[name] = {"layer": res.data.get("layer")}
        html.append(ctx.img_tag(ctx.save_file(res, f"study_maps_{name}.png"),
                                f"{esc(name)}: every channel of {esc(str(res.data.get('layer')))}, each map "
                                "normalized to its own range"))
    ctx.data["study_maps"] = data
    return "".join(html) + "<p>Reproduce: <code>cnnvis maps PHOTO --model MODEL [--layer L]</code></p>"


def render_maxmaps(ctx: ReportContext) -> str:
    res = ctx.run("max_maps", **_data(ctx), n=8 if ctx.quick else 16)
    ctx.data["study_maxmaps"] = {"layer": res.data.get("layer"), "skipped": res.data.get("skipped", 0)}
    return _skipped(res.data) + ctx.img_tag(ctx.save_file(res, "study_maxmaps.png"),
                       f"Images of {_where(ctx)}, each beside its strongest channel at "
                       f"{esc(str(res.data.get('layer')))} projected back to pixels by the deconvnet") + \
        "<p>Reproduce: <code>cnnvis maxmaps --model MODEL DATA</code></p>"


# ---------------------------------------------------------------------- top examples
def render_top(ctx: ReportContext) -> str:
    n = 4 if ctx.quick else 8
    res = ctx.run("top_examples", **_data(ctx), k=9, channels=list(range(n)),
                  limit=2000 if ctx.quick else None)
    html = []
    files = sorted(f for f in res.files if f.endswith(".png"))[:n]
    for f in files:
        html.append(ctx.img_tag(ctx.save_file(res, f"study_top_{f}", f), esc(f.rsplit(".", 1)[0]), width=320))
    ctx.data["study_top_examples"] = {"layer": res.data.get("layer"), "n_images": res.data.get("images"),
                                      "channels": len(files), "skipped": res.data.get("skipped", 0)}
    return (f"<p>For each channel of {esc(str(res.data.get('layer')))}, the 9 images of {_where(ctx)} that excite it "
            "most, with the receptive-field patch around the maximum (one pass over the data, a bounded top-k per "
            "channel).</p>" + _skipped(res.data) + "".join(html) +
            "<p>Reproduce: <code>cnnvis top-examples --model MODEL DATA --layer L --k 9 --out DIR</code></p>")


# ---------------------------------------------------------------------- embeddings
def render_embed(ctx: ReportContext) -> str:
    res = ctx.run("embed", **_data(ctx), limit=1000 if ctx.quick else 2000)
    d = res.data
    ctx.data["study_embed"] = {k: d.get(k) for k in ("n", "layer", "dim", "tsne", "feature_purity", "pixel_purity")}
    ctx.data["study_embed"]["skipped"] = (d.get("dataset") or {}).get("skipped", 0)
    t = d.get("tsne") or {}
    how = f"{t.get('library', '?')} {t.get('version', '')}, perplexity {t.get('perplexity', '?')}, seed {t.get('seed')}"
    html = [f"<p>{d.get('n')} images of {_where(ctx)}: penultimate features ({esc(str(d.get('layer')))}, "
            f"{d.get('dim')} numbers each) mapped to 2-D by t-SNE ({esc(how)}).</p>" + _skipped(d.get("dataset") or {})]
    for f, cap in (("scatter.png", "t-SNE of the features, coloured by class"),
                   ("atlas.png", "The same map as an image atlas: each cell shows, of the points inside it, the one "
                                "nearest its centre"),
                   ("neighbours.png", "Nearest neighbours of query images in feature space (left) and pixel "
                                      "space (right); green = same class")):
        if f in res.files:
            html.append(ctx.img_tag(ctx.save_file(res, f"study_{f}", f), cap))
    fp, pp = d.get("feature_purity"), d.get("pixel_purity")
    if fp is not None:
        html.append(f"<p>Neighbour purity (share of each image's {d.get('k')} nearest neighbours with its class, "
                    f"over all {d.get('n')} images): feature space <b>{fp:.3f}</b>, pixel space <b>{pp:.3f}</b>."
                    "</p>")
    return "".join(html) + "<p>Reproduce: <code>cnnvis embed --model MODEL DATA --out DIR</code></p>"


# ---------------------------------------------------------------------- regularizers
def regularizers_description() -> str:
    """The section's line: the registered rows as they name themselves (`row_caption`), in order."""
    from cnnvis.study.regularizers import alone_rows, row_caption

    names = join_words([row_caption(r) for r in alone_rows()])
    return (names[:1].upper() + names[1:] + ", each alone and together (Yosinski et al. 2015; Mahendran & "
            "Vedaldi 2015).")


def render_regularizers(ctx: ReportContext) -> str:
    if not ctx.judge:
        return ("<p>Needs a second net of the same classes as the judge: <code>cnnvis report --judge "
                "runs/mnist-2</code> (train it with another <code>--seed</code>).</p>")
    res = ctx.run("regularizer_study", judge=ctx.judge)
    rows = res.data.get("rows", [])
    ctx.data["study_regularizers"] = rows
    table = "<table><tr><th>regularizer</th><th>judge agrees</th><th>judge mean p</th><th>own mean p</th></tr>" + "".join(
        f"<tr><td>{esc(r['name'])}</td><td class='num'>{r['judge_agree']}</td>"
        f"<td class='num'>{r['judge_mean_prob']:.3f}</td><td class='num'>{r['own_mean_prob']:.3f}</td></tr>"
        for r in rows) + "</table>"
    return (ctx.img_tag(ctx.save_file(res, "study_regularizers.png"),
                        "One class image per class under each regularizer, classified by a second net") + table +
            f"<p>Judge: <code>{esc(str(ctx.judge))}</code>, a net of the same classes trained with another seed; "
            "it never gives a gradient. Reproduce: <code>cnnvis regularizers --model MODEL --judge JUDGE</code></p>")


SECTIONS = [
    Section("study_accuracy", "Accuracy", render_accuracy, order=5, applies=classifier_only, needs_data=True,
            description="The training run's held-out accuracy and a fresh measurement on the dataset."),
    Section("study_weights", "First-layer weights", render_weights, order=11,
            description="The filters the first convolution learned: edge, stroke and colour detectors."),
    Section("study_maps", "Feature maps", render_maps, order=12,
            description="Every channel's activation for a photo at one layer."),
    Section("study_maxmaps", "Maximal activation maps", render_maxmaps, order=13, needs_data=True,
            description="For each image, its strongest channel projected back to pixels (Zeiler & Fergus)."),
    Section("study_top_examples", "Top dataset examples per channel", render_top, order=14, needs_data=True,
            description="DeepVis / OpenAI Microscope style: the images and patches that excite each channel most."),
    Section("study_embed", "Embeddings: t-SNE atlas and nearest neighbours", render_embed, order=15,
            needs_data=True,
            description="Penultimate features of the dataset's images: a t-SNE map, an image atlas, and nearest "
                        "neighbours in feature space against pixel space."),
    Section("study_regularizers", "Class images under each regularizer, judged by a second net",
            render_regularizers, order=21, applies=small_net,
            description=regularizers_description),
]
