"""`cnnvis dream`: DeepDream on a photo, or a row of the photo dreamed at several layers."""

from __future__ import annotations

from pathlib import Path

import click

from cnnvis.commands.common import load_model, model_options, parse_ints, seed_option

OUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _check_out(path: str | None, photo: str, flag: str) -> Path | None:
    from cnnvis.errors import CnnvisError
    from cnnvis.utils import check_output_path

    if path is None:
        return None
    out = check_output_path(path, [photo])
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise CnnvisError(f"{flag} {path!r}: unknown image format {out.suffix or '(none)'!r}; use one of {', '.join(OUT_SUFFIXES)}")
    return out


def _thumb(size: tuple[int, int], longest: int) -> tuple[int, int]:
    f = min(1.0, longest / max(size))
    return max(1, round(size[0] * f)), max(1, round(size[1] * f))


@click.command("dream")
@click.argument("photo", type=click.Path())
@model_options
@click.option("--layers", "-l", default="stage4", show_default=True,
              help="Comma-separated layers (aliases such as pool4, stage4, or dotted names).")
@click.option("--channels", default=None, help="Comma-separated channel indices (default: all channels).")
@click.option("--octaves", default=4, show_default=True, type=click.IntRange(1, 12))
@click.option("--octave-scale", default=1.4, show_default=True, type=click.FloatRange(1.01, 4))
@click.option("--steps", default=10, show_default=True, type=click.IntRange(1, 10000), help="Steps per octave.")
@click.option("--step-size", default=0.02, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Step in [0,1] pixel units (gradient is RMS-normalized).")
@click.option("--jitter", default=32, show_default=True, type=click.IntRange(0, 512), help="Largest random roll, pixels.")
@click.option("--tile", default=512, show_default=True, type=click.IntRange(32, 8192), help="Tile size for large photos.")
@click.option("--objective", type=click.Choice(["l2", "mean"]), default="l2", show_default=True)
@click.option("--guide", type=click.Path(), default=None, help="Guide image whose features steer the dream.")
@click.option("--out", "-o", default=None, type=click.Path(), help="Output image (format from the extension).")
@click.option("--row", default=None, type=click.Path(),
              help="Write a row: the photo dreamed at each of --layers separately, labelled.")
@seed_option
def dream_cmd(photo, model, weights, device, layers, channels, octaves, octave_scale, steps, step_size, jitter, tile,
              objective, guide, out, row, seed) -> None:
    """DeepDream on PHOTO at the chosen layers (output is the photo's size)."""
    from cnnvis.dream import dream
    from cnnvis.errors import CnnvisError
    from cnnvis.images import load_image
    from cnnvis.layers import resolve_layer
    from cnnvis.viz import grid, save_png

    if out is None and row is None:
        raise CnnvisError("give --out FILE (the dream) and/or --row FILE (one dream per layer)")
    out_p, row_p = _check_out(out, photo, "--out"), _check_out(row, photo, "--row")
    if out_p is not None and row_p is not None and out_p.resolve() == row_p.resolve():
        raise CnnvisError("--out and --row name the same file; give two names")
    names = [s.strip() for s in layers.split(",") if s.strip()]
    chans = parse_ints(channels, "--channels")
    img = load_image(photo)
    guide_img = load_image(guide) if guide else None
    vm = load_model(model, weights, device)
    for n in names:
        resolve_layer(vm, n)
    kw = dict(channels=chans, octaves=octaves, octave_scale=octave_scale, steps_per_octave=steps, step_size=step_size,
              jitter=jitter, tile=tile, objective=objective, guide=guide_img, seed=seed, progress=True)
    if out_p is not None:
        res = dream(vm, img, names, **kw)
        save_png(res, out_p)
        click.echo(f"wrote {out_p} ({res.size[0]}x{res.size[1]}, layers {', '.join(names)})")
    if row_p is not None:
        thumbs = [img] + [dream(vm, img, [n], **kw) for n in names]
        pic = grid([thumbs], col_labels=["photo"] + names, cell=_thumb(img.size, 384))
        save_png(pic, row_p)
        click.echo(f"wrote {row_p} (photo + {len(names)} layers)")


COMMANDS = [dream_cmd]
