"""Report section: the report's model beside its second net (--judge): linear CKA between their layers
and the best-matching channels (Kornblith et al. 2019; Li et al. 2016)."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, esc


def render(ctx: ReportContext) -> str:
    if not ctx.judge:
        return ("<p>Needs a second net of the same classes: <code>cnnvis report --judge runs/mnist-2</code> "
                "(train it with another <code>--seed</code>).</p>")
    res = ctx.run("compare", other=ctx.judge, data=ctx.data_ref, split=ctx.data_split,
                  limit=1000 if ctx.quick else 2000, steps=48 if ctx.quick else 96)
    d = res.data
    diag = [row[i] for i, row in enumerate(d["cka"]) if i < len(row)]
    ctx.data["compare"] = {k: d.get(k) for k in ("other", "n", "grid", "layers", "other_layers", "cka")}
    html = [ctx.img_tag(ctx.save_file(res, "compare_cka.png"),
                        f"Linear CKA between every layer of {esc(ctx.vm.name)} (rows) and of {esc(str(d['other']))} "
                        f"(columns) on {d['n']} images; the diagonal (same layer) is "
                        + ", ".join(f"{v:.2f}" for v in diag if v is not None))]
    m = d.get("match")
    if m:
        ctx.data["compare"]["match"] = {k: m.get(k) for k in ("layer", "mean_best_corr", "dead", "shown")}
        html.append(ctx.img_tag(ctx.save_file(res, "compare_matches.png", "matches.png"),
                                f"{esc(m['layer'])}: the 8 best-matched channels of the first net beside their match "
                                f"in the second (activation correlation r; mean best r "
                                f"{m['mean_best_corr'] or 0:.2f} over the {len(m['best']) - m['dead']} channels that "
                                f"vary on the data, {m['dead']} never do)"))
    return ("".join(html) + "<p>Two nets trained from different seeds learn the same representations layer by "
            "layer (a bright diagonal) though not the same channels: some have a near copy in the other net, "
            "others none. Reproduce: <code>cnnvis compare --model A --model B DATA --out cka.png --matches "
            "m.png</code></p>")


SECTION = Section(
    "compare", "Two nets compared: CKA between layers, matching channels", render, order=16, needs_data=True,
    description="Linear CKA (Kornblith et al. 2019) between every pair of layers on the same images, streamed; for "
                "two nets of the same architecture each channel's best match in the other (Li et al. 2016).",
)
