"""`cnnvis evaluate`: a classifier's accuracy on a labelled dataset."""

from __future__ import annotations

import click

from cnnvis.commands.common import (check_out, check_out_of_data, emit, job_options, run_job, seed_option, skipped_line,
                                    write_image)


@click.command("evaluate")
@click.argument("data")
@job_options
@click.option("--split", default=None, help="Split of DATA (e.g. test; default: the images the model was not trained on: "
                                           "a run's own held-out set, else the test split where DATA has one).")
@click.option("--held-out", "held_out", default=None, type=float,
              help="Only the fraction `cnnvis train` held out of a dataset without a test split (e.g. 0.2).")
@click.option("--limit", default=None, type=click.IntRange(1), help="At most this many images (a seeded subset).")
@click.option("--out", "-o", default=None, type=click.Path(), help="Write the confusion matrix here (PNG).")
@seed_option
def evaluate_cmd(data, model, weights, device, cache, as_json, split, held_out, limit, out, seed) -> None:
    """Accuracy of MODEL on the labelled dataset DATA, per class, with the confusion matrix.

    Example: cnnvis evaluate --model runs/cifar10 ../shared/data/cifar10-jpeg.zip --split test
    """
    check_out_of_data(out, [data])
    out_path = check_out(out)
    res = run_job("evaluate", model=model, weights=weights, device=device, cache=cache, data=data, split=split,
                  held_out=held_out, limit=limit, seed=seed, flags={"held_out": "--held-out"})
    if out_path:
        write_image(res, out_path)
    d = res.data
    worst = sorted(d["per_class"].items(), key=lambda kv: kv[1])[:3]
    which = d.get("which")
    emit(res, as_json, [f"accuracy {d['accuracy']:.4f} on {d['n']} images of {data}"
                        + (f" ({d['split']})" if d.get("split") and not d.get("held_out") else "")
                        + (f" (held out: {d['held_out']:.0%} of {d.get('split') or 'it'})" if d.get("held_out") else "")
                        + (f": {which}" if which and which != "as asked" else ""),
                        "weakest classes: " + ", ".join(f"{k} {v:.3f}" for k, v in worst)]
         + [line for line in [skipped_line(d.get("skipped", 0), d.get("skipped_names", []), "not scored")] if line]
         + ([f"wrote {out_path}"] if out_path else []))

COMMANDS = [evaluate_cmd]
