"""`cnnvis class` (class images, re-checked from the saved PNG) and `cnnvis filters` (filter grids)."""

from __future__ import annotations

import click

from cnnvis.commands.common import (
    LazyChoice, check_out, emit, job_options, parse_ints, parse_names, preset_names, run_job, seed_option, write_image,
)


def _preset_option(fn):
    return click.option("--preset", type=LazyChoice(preset_names), default=None,
                        help="Recipe (default: robust; see cnnvis.optvis.presets).")(fn)


@click.command("class")
@click.argument("target", metavar="CLASS")
@job_options
@_preset_option
@click.option("--steps", type=int, default=512, show_default=True, help="Most steps to run.")
@click.option("--size", type=int, default=224, show_default=True, help="Image size in pixels.")
@click.option("--until-prob", type=float, default=0.99, show_default=True,
              help="Stop once the 8-bit image reaches this probability (0 = run all steps).")
@click.option("--robust-prob", type=float, default=0.95, show_default=True,
              help="...and this probability under each of the four perturbations (0 = do not require it).")
@click.option("--min-steps", type=int, default=128, show_default=True,
              help="Never stop before this many steps (early stops give faint images).")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output image (PNG keeps the checked bytes).")
@seed_option
def class_cmd(target, model, weights, device, cache, as_json, preset, steps, size, until_prob, robust_prob, min_steps,
              out, seed) -> None:
    """Render an image the model sees as CLASS (name or index), save it, and check it.

    Prints the probability the model gives the saved 8-bit PNG, its top-5, and the probability
    after four perturbations (blur, 2x down/up, 8-px shift, resize/crop): a real picture
    survives them, adversarial noise does not.

    Example: cnnvis class pelican --out pelican.png
    """
    from cnnvis.errors import CnnvisError

    out = check_out(out)
    res = run_job("class_image", model=model, weights=weights, device=device, cache=cache, quiet=as_json,
                  target=target, preset=preset, steps=steps, size=size, until_prob=until_prob,
                  robust_prob=robust_prob, min_steps=min_steps, seed=seed)
    write_image(res, out)
    d = res.data
    t, label = d["class"]["index"], d["class"]["label"]
    lines = [f"saved {out} ({size}x{size}, preset {d['preset']}, {d['steps']} steps, {d['seconds']:.1f} s"
             + (f"; {d['message']}" if d["message"] else "") + ")" + (" [from the cache]" if res.cached else ""),
             f"{label} ({t}): probability {d['prob_png']:.4f} for the PNG re-read from disk", "top-5:"]
    lines += [f"  {q['label'].replace(' ', '_'):<28} {q['prob']:.4f}  ({q['index']})" for q in d["top5"]]
    lines.append("robustness (probability of the class after each perturbation):")
    for k, desc in d["perturbations"].items():
        v = d["robustness"][k]
        flag = "" if v >= 0.9 else "   <- below 0.9: adversarial noise rather than a picture?"
        lines.append(f"  {desc:<48} {v:.4f}{flag}")
    emit(res, as_json, lines, out=str(out))
    if not d["ok"]:
        raise CnnvisError(f"{d['message']}; that image was saved to {out}")


@click.command("filters")
@job_options
@_preset_option
@click.option("--layers", default=None, help="Comma-separated layer names or aliases (default: conv1_1..conv5_3 "
              "for VGG, stage0..stage6 for the embedded model).")
@click.option("--all-conv", is_flag=True, help="Every Conv2d layer of the model.")
@click.option("--first", type=int, default=10, show_default=True, help="First N filters per layer.")
@click.option("--channels", default=None, help="Comma-separated filter indices (instead of --first), e.g. 0,5,9.")
@click.option("--steps", type=int, default=128, show_default=True)
@click.option("--size", type=int, default=128, show_default=True, help="Size of each filter image in pixels.")
@click.option("--batch", type=int, default=16, show_default=True,
              help="Filters rendered together in one batch (speed only: results do not depend on it).")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output image (the grid).")
@seed_option
def filters_cmd(model, weights, device, cache, as_json, preset, layers, all_conv, first, channels, steps, size, batch,
                out, seed) -> None:
    """Grid of filter visualizations: one row per layer, one column per filter.

    Example: cnnvis filters --model vgg16_hed --first 5 --out vgg_filters.png
    """
    from cnnvis.errors import CnnvisError

    if layers and all_conv:
        raise CnnvisError("give --layers or --all-conv, not both")
    chans = parse_ints(channels, "--channels")
    out = check_out(out)
    res = run_job("filters", model=model, weights=weights, device=device, cache=cache, quiet=as_json,
                  layers=parse_names(layers), all_conv=all_conv,
                  channels=chans, first=first, preset=preset, steps=steps, size=size, batch=batch, seed=seed)
    write_image(res, out)
    n_cols = max(len(r["channels"]) for r in res.data["layers"])
    emit(res, as_json, f"saved {out}: {len(res.data['layers'])} layers x up to {n_cols} filters"
         + (" [from the cache]" if res.cached else ""), out=str(out))


COMMANDS = [class_cmd, filters_cmd]
