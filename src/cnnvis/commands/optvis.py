"""`cnnvis class` (class images, re-checked from the saved PNG) and `cnnvis filters` (filter grids)."""

from __future__ import annotations

import click

from cnnvis.commands.common import (
    echo_json, json_option, load_model, model_options, no_progress, parse_ints, seed_option,
)

_PRESETS = ["robust", "lucid2017", "yosinski2015", "chollet2016"]


def _preset_option(fn):
    return click.option("--preset", type=click.Choice(_PRESETS), default=None,
                        help="Recipe (default: robust; see cnnvis.optvis.presets).")(fn)


def _split_model(args: tuple[str, ...], model: str, what: str) -> tuple[str, list[str]]:
    """`cnnvis class [MODEL] CLASS`: a leading registered model name is the model."""
    from cnnvis.models import list_models

    args = list(args)
    if len(args) >= 2 and args[0] in list_models():
        return args[0], args[1:]
    return model, args


@click.command("class")
@click.argument("args", nargs=-1, required=True, metavar="[MODEL] CLASS")
@model_options
@_preset_option
@click.option("--steps", type=click.IntRange(1, 100000), default=512, show_default=True, help="Most steps to run.")
@click.option("--size", type=int, default=224, show_default=True, help="Image size in pixels.")
@click.option("--until-prob", type=float, default=0.99, show_default=True,
              help="Stop once the 8-bit image reaches this probability (0 = run all steps).")
@click.option("--robust-prob", type=float, default=0.95, show_default=True,
              help="...and this probability under each of the four perturbations (0 = do not require it).")
@click.option("--min-steps", type=click.IntRange(0, 100000), default=128, show_default=True,
              help="Never stop before this many steps (early stops give faint images).")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output PNG.")
@seed_option
@json_option
def class_cmd(args, model, weights, device, preset, steps, size, until_prob, robust_prob, min_steps, out, seed,
              as_json) -> None:
    """Render an image the model sees as CLASS (name or index), save it, and check it.

    Prints the probability the model gives the saved PNG re-read from disk, its top-5, and the
    probability after four perturbations (blur, 2x down/up, 8-px shift, resize/crop): a real
    picture survives them, adversarial noise does not.
    """
    from cnnvis.classify import predict_probs, topk
    from cnnvis.errors import CnnvisError
    from cnnvis.images import load_image, to_tensor
    from cnnvis.optvis import PERTURBATIONS, class_logit, get_preset, render, robustness
    from cnnvis.utils import check_output_path
    from cnnvis.viz import save_png

    model, targets = _split_model(args, model, "class")
    if len(targets) != 1:
        raise CnnvisError(f"give one class (name or index), got {len(targets)}: {' '.join(targets)}")
    out = check_output_path(out)
    if not 0 <= until_prob <= 1 or not 0 <= robust_prob <= 1:
        raise CnnvisError("--until-prob and --robust-prob must be between 0 and 1")
    pre = get_preset(preset)
    vm = load_model(model, weights, device)
    target = vm.class_index(targets[0])
    res = render(vm, class_logit(target), preset=pre, steps=steps, size=size,
                 until_prob=until_prob or None, until_robust=(robust_prob or None) if until_prob else None,
                 min_steps=min_steps, seed=seed, progress=not no_progress() and not as_json, desc=f"class {vm.label(target)}")
    save_png(res.images, out)
    x = to_tensor(load_image(out))  # the 8-bit file, as a user would feed it back
    probs = predict_probs(vm, x)
    top = topk(probs, vm, 5)[0]
    rob = {k: float(v[0]) for k, v in robustness(vm, x, target).items()}
    if as_json:
        echo_json({
            "out": str(out), "model": vm.name, "class": {"index": target, "label": vm.label(target)},
            "preset": pre.name, "steps": res.steps, "seconds": round(res.seconds, 2), "stopped": res.stopped,
            "message": res.message, "prob_png": round(float(probs[0, target]), 6),
            "top5": [{"index": q.index, "label": q.label, "prob": round(q.prob, 6)} for q in top],
            "robustness": {k: round(v, 6) for k, v in rob.items() if k != "png"},
        })
    else:
        click.echo(f"saved {out} ({size}x{size}, preset {pre.name}, {res.steps} steps, {res.seconds:.1f} s"
                   + (f"; {res.message}" if res.message else "") + ")")
        click.echo(f"{vm.label(target)} ({target}): probability {float(probs[0, target]):.4f} "
                   f"for the PNG re-read from disk")
        click.echo("top-5:")
        for q in top:
            click.echo(f"  {q.label.replace(' ', '_'):<28} {q.prob:.4f}  ({q.index})")
        click.echo("robustness (probability of the class after each perturbation):")
        for k, desc in PERTURBATIONS.items():
            flag = "" if rob[k] >= 0.9 else "   <- below 0.9: adversarial noise rather than a picture?"
            click.echo(f"  {desc:<48} {rob[k]:.4f}{flag}")
    if not res.ok:
        raise CnnvisError(f"{res.message}; that image was saved to {out}")


@click.command("filters")
@click.argument("args", nargs=-1, metavar="[MODEL]")
@model_options
@_preset_option
@click.option("--layers", default=None, help="Comma-separated layer names or aliases (default: conv1_1..conv5_3 "
              "for VGG, stage0..stage6 for the embedded model).")
@click.option("--all-conv", is_flag=True, help="Every Conv2d layer of the model.")
@click.option("--first", type=click.IntRange(1, 4096), default=10, show_default=True, help="First N filters per layer.")
@click.option("--channels", default=None, help="Comma-separated filter indices (instead of --first), e.g. 0,5,9.")
@click.option("--steps", type=click.IntRange(1, 100000), default=128, show_default=True)
@click.option("--size", type=int, default=128, show_default=True, help="Size of each filter image in pixels.")
@click.option("--batch", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Filters rendered together in one batch.")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output PNG (the grid).")
@seed_option
@json_option
def filters_cmd(args, model, weights, device, preset, layers, all_conv, first, channels, steps, size, batch, out,
                seed, as_json) -> None:
    """Grid of filter visualizations: one row per layer, one column per filter."""
    from cnnvis.errors import CnnvisError
    from cnnvis.optvis.filters import all_conv_layers, default_layers, render_filters
    from cnnvis.utils import check_output_path
    from cnnvis.viz import grid, save_png

    if args:
        if len(args) > 1:
            raise CnnvisError(f"give at most one MODEL, got {' '.join(args)}")
        model = args[0]
    if layers and all_conv:
        raise CnnvisError("give --layers or --all-conv, not both")
    chans = parse_ints(channels, "--channels")
    out = check_output_path(out)
    vm = load_model(model, weights, device)
    if size < vm.min_size:
        raise CnnvisError(f"--size {size} is too small for {vm.name}; use at least {vm.min_size}")
    names = ([s.strip() for s in layers.split(",") if s.strip()] if layers
             else all_conv_layers(vm) if all_conv else default_layers(vm))
    if not names:
        raise CnnvisError(f"model {vm.name!r} has no conv layers; pass --layers")
    rows = render_filters(vm, names, chans if chans is not None else first, preset=preset, steps=steps, size=size,
                          seed=seed, batch=batch, progress=not no_progress() and not as_json)
    n_cols = max(len(c) for _, c, _, _ in rows)
    col_labels = [str(c) for c in rows[0][1]] if all(r[1] == rows[0][1] for r in rows) else None
    img = grid([list(im) for _, _, im, _ in rows], row_labels=[r[0] for r in rows], col_labels=col_labels,
               title=f"{vm.name}: {n_cols} filters per layer")
    save_png(img, out)
    if as_json:
        echo_json({"out": str(out), "model": vm.name, "layers": [
            {"layer": layer, "channels": c, "values": [round(float(v), 5) for v in vals]} for layer, c, _, vals in rows]})
    else:
        click.echo(f"saved {out}: {len(rows)} layers x up to {n_cols} filters")


COMMANDS = [class_cmd, filters_cmd]
