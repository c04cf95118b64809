"""Report section: features across training (Zeiler & Fergus 2014, Fig. 4) for a run trained with
`cnnvis train --snapshots`."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, esc, small_net

QUICK = {"first": 4, "k": 3, "limit": 2000}  # the demo: 4 channels a layer, top examples of 2000 images
FULL = {"first": 6, "k": 3}


def _mean(v) -> float | None:
    v = [x for x in (v or []) if isinstance(x, (int, float))]
    return sum(v) / len(v) if v else None


def render(ctx: ReportContext) -> str:
    t = ctx.training or {}
    if not t.get("snapshots"):
        how = ("<code>cnnvis train DATA --out RUN --snapshots 0,1,2,4 --overwrite</code>" if t else
               "a run of <code>cnnvis train DATA --out RUN --snapshots 0,1,2,4</code>")
        return (f"<p>This model kept no snapshots of its training. To see its features form epoch by epoch, train "
                f"{how} and build the report of that run.</p>")
    # top examples from the run's own training data (as `cnnvis evolution` takes them), or the report's other data
    own = ctx.data_ref is None or ctx.data_ref == t.get("data")
    res = ctx.run("evolution", data=None if own else ctx.data_ref, split=None if own else ctx.data_split,
                  **(QUICK if ctx.quick else FULL))
    d = res.data
    eps = [s["epoch"] for s in d["snapshots"]]
    rows, summary = [], {}
    for lay in d["layers"]:
        corr = {s["epoch"]: _mean(s["weight_corr_to_last"]) for s in lay["snapshots"]}
        ov = {s["epoch"]: _mean(s["top_overlap_with_last"]) for s in lay["snapshots"]}
        summary[lay["layer"]] = {"weight_corr_to_last": corr, "top_overlap_with_last": ov}
        cells = "".join(f"<td class='num'>{'' if corr[e] is None else f'{corr[e]:.2f}'}"
                        f"{'' if ov[e] is None else f' / {ov[e]:.2f}'}</td>" for e in eps)
        rows.append(f"<tr><td>{esc(lay['layer'])}</td>{cells}</tr>")
    table = ("<table><tr><th>layer</th>" + "".join(f"<th>epoch {e}</th>" for e in eps) + "</tr>" + "".join(rows)
             + "</table>")
    top = d.get("top_examples")
    src = (f"beside each, its top {top['k']} patches of <code>{esc(str(top['data']))}</code> ({top['images']} "
           "images) at that epoch" if top else esc(d.get("note") or "no top examples"))
    ctx.data["evolution"] = {"epochs": eps, "channels": d["channels"], "layers": summary,
                             "top_examples": top, "seconds": round(res.seconds, 2)}
    return (ctx.img_tag(ctx.save_file(res, "evolution.png"),
                        f"The same {len(d['channels'])} channels of each layer (rows) at epochs "
                        f"{', '.join(map(str, eps))} (columns): the feature visualization (same seed for every "
                        f"epoch) and {src}") +
            "<p>Per layer and epoch: the correlation of the channels' filter weights with the last snapshot's, "
            "and the share of their top examples already those of the last snapshot (means over the channels shown)."
            "</p>" + table +
            "<p>Reproduce: <code>cnnvis evolution --model RUN --out evolution.png</code></p>")


SECTION = Section(
    "evolution", "Features across training (Zeiler & Fergus 2014, Fig. 4)", render, order=23, applies=small_net,
    description="A run trained with --snapshots keeps some epochs' weights; the same channels rendered at each of "
                "them, with the dataset patches that excite them most, show when each layer's features form.",
)
