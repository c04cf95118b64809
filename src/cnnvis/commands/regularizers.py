"""`cnnvis regularizers`: class images under each classic regularizer, judged by a second net (issue 11 item 8)."""

from __future__ import annotations

import click

from cnnvis import defaults as D
from cnnvis.commands.common import cache_tag, check_out, emit, job_options, parse_names, run_job, seed_option, write_image
from cnnvis.study.regularizers import row_names  # torch-free: the rows' names for --help


@click.command("regularizers")
@job_options
@click.option("--judge", default=None, metavar="MODEL|PATH",
              help="A second classifier trained on the same classes (a checkpoint path for a small net, e.g. "
                   "runs/mnist2); it reads the saved images. Default: the other embedded model for ImageNet nets.")
@click.option("--steps", type=click.IntRange(1, 100000), default=D.RegularizerStudy.steps, show_default=True, help="Steps per row.")
@click.option("--size", type=int, default=None, help="Image size in pixels (default: the model's input size).")
@click.option("--targets", default=None, help="Comma-separated classes (default: every class of a <= 10-class net, "
                                              "else 5 spread over the labels).")
@click.option("--rows", default=None,
              help=f"Comma-separated rows among {', '.join(row_names())} (default: all of them).")
@click.option("--out", "-o", default=None, type=click.Path(), help="Write the panel (a row per regularizer) here.")
@seed_option
def regularizers_cmd(model, weights, device, cache, as_json, judge, steps, size, targets, rows, out, seed) -> None:
    """Class images of each class under each regularizer alone (L2 decay, blur, clipping of small-norm
    pixels, total variation, bounded range), all combined and the default recipe; for each row the
    second net's (the judge's) mean probability of the class and how many images it agrees on.

    Example: cnnvis regularizers --model runs/mnist --judge runs/mnist2 --out regularizers.png
    """
    out = check_out(out)
    res = run_job("regularizer_study", model=model, weights=weights, device=device, cache=cache, quiet=as_json,
                  flags={"regularizers": "--rows"}, judge=judge, steps=steps, size=size,
                  targets=parse_names(targets, "--targets"), regularizers=parse_names(rows, "--rows"), seed=seed)
    if out is not None:
        write_image(res, out)
    d = res.data
    lines = [f"{d['size']} px, {d['steps']} steps per row, judge {d['judge'] or 'none'}"
             + cache_tag(res),
             f"{'row':<8} {'judge mean p':>12} {'agrees':>7} {'own mean p':>10}  how"]
    for r in d["rows"]:
        jp = f"{r['judge_mean_prob']:.4f}" if r["judge_mean_prob"] is not None else "-"
        ag = f"{r['judge_agree']}/{r['n']}" if r["judge_agree"] is not None else "-"
        lines.append(f"{r['name']:<8} {jp:>12} {ag:>7} {r['own_mean_prob']:>10.4f}  {r['config']}")
    if out is not None:
        lines.append(f"saved {out}")
    emit(res, as_json, lines, **({"out": str(out)} if out is not None else {}))


COMMANDS = [regularizers_cmd]
