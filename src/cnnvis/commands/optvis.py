"""`cnnvis class` (class images, re-checked from the saved PNG) and `cnnvis filters` (filter grids)."""

from __future__ import annotations

import click

from cnnvis import defaults as D
from cnnvis.commands.common import (
    LazyChoice, cache_tag, check_out, emit, job_options, parse_ints, parse_names, preset_names, run_job, seed_option,
    write_file, write_image,
)


def _preset_option(fn):
    return click.option("--preset", type=LazyChoice(preset_names), default=None,
                        help="Recipe (default for class images: agree when made for an ensemble (lite0's default), else "
                             "witness; for filters, jitter only with a larger random start; see cnnvis.optvis.presets).")(fn)


def _check_animate(animate, out):
    """--animate: a .gif that is not --out (which it would overwrite)."""
    import os

    from cnnvis.errors import CnnvisError

    if animate is not None and out is not None and os.path.realpath(animate) == os.path.realpath(out):
        raise CnnvisError("--out and --animate name the same file; give two names")
    return check_out(animate, [str(out)], flag="--animate", suffixes=(".gif",))


def _animate_option(fn):
    return click.option("--animate", default=None, metavar="OUT.gif", type=click.Path(),
                        help="Also write the optimization as an animated GIF (a frame every few steps).")(fn)


@click.command("class")
@click.argument("target", metavar="CLASS")
@job_options
@_preset_option
@click.option("--steps", type=int, default=D.ClassImage.steps, show_default=True,
              help="Most steps to run (most images stop earlier, once the checks below pass).")
@click.option("--size", type=int, default=None,
              help="Image size in pixels (default: the model's input size, at most 224).")
@click.option("--until-prob", type=float, default=D.ClassImage.until_prob, show_default=True,
              help="Stop once the 8-bit image reaches this probability (0 = run all steps).")
@click.option("--robust-prob", type=float, default=D.ClassImage.robust_prob, show_default=True,
              help="...and this probability under each of the four perturbations (0 = do not require it).")
@click.option("--ensemble", default=None, metavar="MODELS",
              help="Comma-separated classifiers with the same labels whose logits are averaged with the model's: "
                   "the image is made for all of them (each gives a gradient), and a third model agrees more. "
                   "Default: efficientnet_lite1 for lite0, none for other models; 'none' = the model alone.")
@click.option("--judge", default=None, metavar="MODEL",
              help="A second classifier with the same labels that checks the saved PNG (a witness: it never gives "
                   "a gradient; not one of the ensemble). Default: the other embedded model (efficientnet_lite1 "
                   "for lite0) unless it is in the ensemble (then none); 'none' = no judge.")
@click.option("--judge-prob", type=float, default=D.ClassImage.judge_prob, show_default=True,
              help="...and stop only once the judge gives the PNG this probability (0 = report it, don't wait for it).")
@click.option("--min-steps", type=int, default=D.ClassImage.min_steps, show_default=True,
              help="Never stop before this many steps (early stops give pale, faint images).")
@click.option("--objective", type=click.Choice(["logit", "logprob"]), default=D.ClassImage.objective, show_default=True,
              help="Maximize the class logit (Lucid's choice: the most natural images) or its log-softmax (rival "
                   "classes pushed down too: greyer, but a way out when the logit also raises a rival class).")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output image (PNG keeps the checked bytes).")
@_animate_option
@seed_option
def class_cmd(target, model, weights, device, cache, as_json, preset, steps, size, until_prob, robust_prob, ensemble,
              judge, judge_prob, min_steps, objective, out, animate, seed) -> None:
    """Render an image the model sees as CLASS (name or index), save it, and check it.

    Prints the probability the model gives the saved 8-bit PNG, its top-5, the probability
    after four perturbations (blur, 2x down/up, 8-px shift, resize/crop): a real picture
    survives them, adversarial noise does not; and what a second model (the judge) says of
    the PNG: the model's own numbers saturate at 1.0, a second opinion does not.

    Example: cnnvis class pelican --out pelican.png --animate pelican.gif
    """
    from cnnvis.errors import CnnvisError

    out = check_out(out)
    anim = _check_animate(animate, out)
    res = run_job("class_image", model=model, weights=weights, device=device, cache=cache, quiet=as_json,
                  target=target, preset=preset, steps=steps, size=size, until_prob=until_prob,
                  robust_prob=robust_prob, min_steps=min_steps, ensemble=parse_names(ensemble, "--ensemble"), judge=judge,
                  judge_prob=judge_prob,
                  objective=objective, animate=anim is not None, seed=seed)
    write_image(res, out)
    if anim is not None:
        write_file(res, anim, "animation.gif")
    d = res.data
    t, label = d["class"]["index"], d["class"]["label"]
    size = res.spec["size"]
    lines = [f"saved {out} ({size}x{size}, preset {d['preset']}, {d['steps']} steps, {d['seconds']:.1f} s"
             + (f"; {d['message']}" if d["message"] else "") + ")" + cache_tag(res),
             f"{label} ({t}): probability {d['prob_png']:.4f} for the PNG re-read from disk", "top-5:"]
    lines += [f"  {q['label'].replace(' ', '_'):<28} {q['prob']:.4f}  ({q['index']})" for q in d["top5"]]
    lines.append("robustness (probability of the class after each perturbation):")
    for k, desc in d["perturbations"].items():
        v = d["robustness"][k]
        flag = "" if v >= 0.9 else "   <- below 0.9: adversarial noise rather than a picture?"
        lines.append(f"  {desc:<48} {v:.4f}{flag}")
    for e in d.get("ensemble") or []:
        lines.append(f"made also for {e['model']} (mean logits with {res.spec['model']}; it gave gradients): "
                     f"probability {e['prob']:.4f} for the PNG")
    j = d.get("judge")
    if j:
        verdict = "agrees" if j["agrees"] else f"DISAGREES: its top-1 is {j['top1']['label']} ({j['top1']['prob']:.4f})"
        lines.append(f"judge {j['model']} (a second model; it gave no gradient): probability {j['prob']:.4f} "
                     f"for the PNG; it {verdict}")
    else:
        lines.append("judge: none (" + ("the ensemble's models gave gradients; --judge MODEL adds a witness outside it)"
                                        if d.get("ensemble") else
                                        "no second model with these labels; --judge MODEL adds one)"))
    lines.append(f"colour saturation {d['saturation']:.3f}, contrast (pixel std) {d['contrast']:.3f}")
    if anim is not None:
        lines.append(f"animation: {anim}")
    emit(res, as_json, lines, out=str(out), **({"animation": str(anim)} if anim else {}))
    if not d["ok"]:
        raise CnnvisError(f"{d['message']}; that image was saved to {out}")


class _IntOrAuto(click.ParamType):
    name = "N|auto"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, int):
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a whole number nor 'auto'", param, ctx)


_INT_OR_AUTO = _IntOrAuto()


@click.command("filters")
@job_options
@_preset_option
@click.option("--layers", default=None, help="Comma-separated layer names or aliases (default: conv1_1..conv5_3 "
              "for VGG, stage0..stage6 for the embedded model).")
@click.option("--all-conv", is_flag=True, help="Every Conv2d layer of the model.")
@click.option("--first", type=int, default=D.Filters.first, show_default=True, help="First N filters per layer.")
@click.option("--channels", default=None, help="Comma-separated filter indices (instead of --first), e.g. 0,5,9.")
@click.option("--steps", type=_INT_OR_AUTO, default="auto", show_default=True,
              help="Optimizer steps per filter; auto: per layer, more for deeper layers (48..80).")
@click.option("--size", type=_INT_OR_AUTO, default="auto", show_default=True,
              help="Size of each filter image in pixels; auto: per layer, from its receptive field (48..80).")
@click.option("--batch", type=int, default=D.Filters.batch, show_default=True,
              help="Filters rendered together in one batch (speed only: results do not depend on it).")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output image (the grid).")
@_animate_option
@seed_option
def filters_cmd(model, weights, device, cache, as_json, preset, layers, all_conv, first, channels, steps, size, batch,
                out, animate, seed) -> None:
    """Grid of filter visualizations: one row per layer, one column per filter.

    Without --preset: the robust preset's Fourier image with jitter only, the leaky pre-ReLU channel
    mean (after the BatchNorm that follows a conv, if one does), and per layer an image size and step
    count from its receptive field. Channels that are constant on the sample photos after their
    BatchNorm and activation (never fire) are not rendered; their tile says 'dead'. Without a terminal (or with
    --json) a line per layer goes to stderr.

    Example: cnnvis filters --model vgg16_hed --first 5 --out vgg_filters.png
    """
    from cnnvis.errors import CnnvisError

    if layers and all_conv:
        raise CnnvisError("give --layers or --all-conv, not both")
    chans = parse_ints(channels, "--channels")
    out = check_out(out)
    anim = _check_animate(animate, out)
    res = run_job("filters", model=model, weights=weights, device=device, cache=cache, quiet=as_json,
                  layers=parse_names(layers, "--layers"), all_conv=all_conv, animate=anim is not None,
                  channels=chans, first=first, preset=preset, steps=steps, size=size, batch=batch, seed=seed)
    write_image(res, out)
    if anim is not None:
        write_file(res, anim, "animation.gif")
    n_cols = max(len(r["channels"]) for r in res.data["layers"])
    d = res.data
    counts = (f"; {d['dead']} dead (constant on the sample photos after their BatchNorm and activation), "
              f"{d['grey']} grey") if "dead" in d else ""
    emit(res, as_json, f"saved {out}: {len(d['layers'])} layers x up to {n_cols} filters{counts}"
         + cache_tag(res) + (f"; animation {anim}" if anim else ""), out=str(out),
         **({"animation": str(anim)} if anim else {}))


COMMANDS = [class_cmd, filters_cmd]
