"""`cnnvis dream`: DeepDream on a photo, or a row of the photo dreamed at several layers."""

from __future__ import annotations

import click

from cnnvis import defaults as D
from cnnvis.commands.common import cache_tag, check_out, emit, job_options, parse_ints, parse_names, run_job, seed_option


ROW_CELL = 384  # --row: the photo and each dream thumbnailed to this longest side


def _dream_results(row) -> list[dict]:
    """The `dream` results of a `dream_row` result, each as `Result.to_dict()`: as they were served when the
    row was made; a row from the store serves them from it too (cached, with the row's env check)."""
    out = []
    for d in row.data["results"]:
        d = dict(d)
        if row.cached:
            d.pop("notes", None)
            d.update({"cached": True, "env_differs": row.env_differs}, **({"notes": row.notes} if row.notes else {}))
        out.append(d)
    return out


@click.command("dream")
@click.argument("photo", type=click.Path())
@job_options
@click.option("--layers", "-l", default=None,
              help="Comma-separated layers (aliases such as pool4, stage4, or dotted names; default: one about "
                   "two thirds deep, e.g. stage4 or pool4).")
@click.option("--channels", default=None, help="Comma-separated channel indices (default: all channels).")
@click.option("--octaves", default=D.Dream.octaves, show_default=True, type=int)
@click.option("--octave-scale", default=D.Dream.octave_scale, show_default=True, type=float)
@click.option("--steps", default=D.Dream.steps, show_default=True, type=int, help="Steps per octave.")
@click.option("--step-size", default=D.Dream.step_size, show_default=True, type=float,
              help="Step in [0,1] pixel units (gradient is RMS-normalized).")
@click.option("--jitter", default=D.Dream.jitter, show_default=True, type=int, help="Largest random roll, pixels.")
@click.option("--tile", default=D.Dream.tile, show_default=True, type=int, help="Tile size for large photos.")
@click.option("--objective", type=click.Choice(["l2", "mean"]), default=D.Dream.objective, show_default=True)
@click.option("--guide", type=click.Path(), default=None, help="Guide image whose features steer the dream.")
@click.option("--max-side", type=int, default=None, metavar="PX",
              help="Shrink the photo first so that its longest side is PX (default: dream at the photo's size).")
@click.option("--out", "-o", default=None, type=click.Path(), help="Output image (format from the extension).")
@click.option("--row", default=None, type=click.Path(),
              help="Write a row: the photo dreamed at each of --layers separately, labelled.")
@click.option("--animate", default=None, metavar="OUT.gif", type=click.Path(),
              help="Also write the dream (--out) forming, one frame per step, as an animated GIF.")
@seed_option
def dream_cmd(photo, model, weights, device, cache, as_json, layers, channels, octaves, octave_scale, steps, step_size,
              jitter, tile, objective, guide, max_side, out, row, animate, seed) -> None:
    """DeepDream on PHOTO at the chosen layers (output is the photo's size).

    Example: cnnvis dream cat.jpg --layers stage3 --out dream.jpg
    """
    from cnnvis.errors import CnnvisError
    from cnnvis.images import load_image

    if out is None and row is None:
        raise CnnvisError("give --out FILE (the dream) and/or --row FILE (one dream per layer)")
    out_p, row_p = check_out(out, [photo, guide], "--out"), check_out(row, [photo, guide], "--row")
    if out_p is not None and row_p is not None and out_p.resolve() == row_p.resolve():
        raise CnnvisError("--out and --row name the same file; give two names")
    if animate is not None and out_p is None:
        raise CnnvisError("--animate shows the --out dream forming; give --out FILE too")
    anim_p = check_out(animate, [photo, guide, out, row], "--animate", suffixes=(".gif",))
    names = parse_names(layers, "--layers")
    fields = dict(image=photo, channels=parse_ints(channels, "--channels"), octaves=octaves, octave_scale=octave_scale,
                  steps=steps, step_size=step_size, jitter=jitter, tile=tile, objective=objective, guide=guide,
                  max_side=max_side, seed=seed)
    common = dict(model=model, weights=weights, device=device, cache=cache, quiet=as_json,
                  flags={"steps": "--steps", "image": "PHOTO", "max_side": "--max-side"})
    load_image(photo)  # fail fast on a bad photo, before the model loads
    report = {}
    lines = []
    if out_p is not None:
        res = run_job("dream", layers=names, animate=anim_p is not None, **common, **fields)
        from cnnvis.commands.common import write_file, write_image

        write_image(res, out_p)
        lines.append(f"wrote {out_p} ({res.data['size'][0]}x{res.data['size'][1]}, layers "
                     f"{', '.join(res.data['layers'])})" + cache_tag(res))
        if anim_p is not None:
            write_file(res, anim_p, "animation.gif")
            lines.append(f"wrote {anim_p} (the dream forming, {res.data['frames']} frames)")
        report["out"] = {"path": str(out_p), **res.to_dict()}
    if row_p is not None:
        from cnnvis.commands.common import write_image

        # one `dream` job per layer, composed by the `dream_row` kind (cells of the photo thumbnailed to 384 px)
        res = run_job("dream_row", layers=names, n=1, cell=ROW_CELL, **common, **fields)
        write_image(res, row_p)
        lines.append(f"wrote {row_p} (photo + {len(res.data['layers'])} layers)")
        report["row"] = {"path": str(row_p), "results": _dream_results(res)}
    if as_json:
        from cnnvis.commands.common import echo_json

        echo_json(report)
    else:
        emit(res, False, lines)


COMMANDS = [dream_cmd]
