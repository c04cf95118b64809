"""`cnnvis saliency`, `cnnvis deconv`, `cnnvis sanity`."""

from __future__ import annotations

import click

from cnnvis import defaults as D
from cnnvis.commands.common import (
    LazyChoice, attribution_methods, cache_tag, check_out, emit, job_options, parse_names, run_job, write_image,
)

_FLAGS = {"image": "PHOTO", "options": "--option"}


def _photo_options(fn):
    fn = click.option("--size", default=None, type=int, help="Input size in pixels (default: the model's).")(fn)
    fn = click.option("--target", "-t", default=None,
                      help="Class name or index (default: the top-1 class; edge models: the sum of the edge map).")(fn)
    return fn


def _method_options(fn):
    fn = click.option("--option", "extra", multiple=True, metavar="KEY=VALUE",
                      help="Any other option of the method, e.g. --option multiply_by_inputs=false "
                           "(see the method's docstring).")(fn)
    fn = click.option("--steps", default=None, type=int, help="IG: path steps (default 50).")(fn)
    fn = click.option("--samples", default=None, type=int, help="SmoothGrad/VarGrad: noisy samples (default 25).")(fn)
    fn = click.option("--noise", default=None, type=float,
                      help="SmoothGrad/VarGrad: noise, a fraction of the image's range (default 0.15).")(fn)
    fn = click.option("--baseline", default=None, type=float, help="IG: baseline grey level in [0, 1] (default 0).")(fn)
    return fn


def _parse_value(v: str):
    low = v.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def method_options(steps, samples, noise, baseline, extra) -> dict:
    """The method options given on the command line (only those given: the method checks them)."""
    from cnnvis.errors import CnnvisError

    opts = {k: v for k, v in dict(steps=steps, samples=samples, noise=noise, baseline=baseline).items() if v is not None}
    for item in extra:
        if "=" not in item:
            raise CnnvisError(f"--option takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        opts[k.strip()] = _parse_value(v)
    return opts


@click.command("saliency")
@click.argument("photo", type=click.Path())
@job_options
@click.option("--method", default=D.Attribution.method, show_default=True, type=LazyChoice(attribution_methods))
@_photo_options
@click.option("--layer", "-l", default=None,
              help="CAM methods: the layer (default: the last spatial block). Other methods: explain this layer's "
                   "activation instead of a class (with --channel/--unit).")
@click.option("--channel", default=None, type=int, help="With --layer: one channel of it.")
@click.option("--unit", default=None, help="With --layer: one position 'y,x' of its map.")
@_method_options
@click.option("--out", "-o", required=True, type=click.Path(), help="Output image: photo | map | overlay.")
@click.option("--raw", default=None, type=click.Path(), help="Also save the raw map (8-bit grey, as computed) here.")
def saliency_cmd(photo, model, weights, device, cache, as_json, method, target, size, layer, channel, unit, steps,
                 samples, noise, baseline, extra, out, raw) -> None:
    """Attribution map of PHOTO: which pixels drive the class score (or a layer's activation).

    Example: cnnvis saliency cat.jpg --method gradcam --target tabby --out cam.png
    """
    from cnnvis.errors import CnnvisError

    out = check_out(out, [photo])
    raw_p = check_out(raw, [photo], "--raw")
    if raw_p is not None and raw_p.resolve() == out.resolve():
        raise CnnvisError("--out and --raw name the same file; give two names")
    u = None
    if unit is not None:
        try:
            u = tuple(int(v) for v in unit.split(","))
            assert len(u) == 2
        except (ValueError, AssertionError):
            raise CnnvisError(f"--unit must be 'y,x', got {unit!r}") from None
    res = run_job("attribution", model=model, weights=weights, device=device, cache=cache, flags=_FLAGS, quiet=as_json,
                  image=photo, method=method, target=target, size=size, layer=layer, channel=channel, unit=u,
                  options=method_options(steps, samples, noise, baseline, extra))
    write_image(res, out)
    if raw_p is not None:
        from cnnvis.viz import normalize_map, save_png

        import torch

        save_png(normalize_map(torch.from_numpy(res.array("map.npy"))), raw_p)
    d = res.data
    what = f"{d.get('label')} ({d.get('target')})" if d.get("label") else (d.get("layer") or "output")
    emit(res, as_json, f"wrote {out} ({method}, {what})" + cache_tag(res), out=str(out))


@click.command("deconv")
@click.argument("photo", type=click.Path())
@job_options
@click.option("--layers", default=None, help="Comma-separated layers (default: VGG conv1_1..conv5_3 / the stages).")
@click.option("--all", "all_convs", is_flag=True, help="Every Conv2d layer of the model.")
@click.option("--top", default=D.Deconv.top, show_default=True, type=int, help="Channels per layer.")
@click.option("--rule", default=None, type=click.Choice(["fired", "masked", "zf"]),
              help="fired (default): Z&F with the mask of the units that fired (output > 0, ReLU6's saturated "
                   "units too), strided convolutions undone by nearest resize, not zero insertion (no "
                   "checkerboard); on VGG the same as masked. masked: Z&F with the forward ReLU mask (= guided "
                   "backprop): only units that fired pass the signal on, so deep layers show the parts of the photo "
                   "that drove them. zf: the pure Z&F rule (forward mask ignored, = Captum's deconvolution): grey "
                   "lattices at VGG's conv3-5, a checkerboard through strided convolutions (EfficientNet).")
@click.option("--project", "seed_kind", default=None, type=click.Choice(["sum", "max", "map"]),
              help="What each channel sends down. sum (default): every unit where it fired, weighted 1 (its total "
                   "activation), drawn full size with its strongest unit's box, beside that unit's own projection "
                   "and the photo patch there (Z&F Fig. 2). max: the Fig. 2 pairs alone. map: the rectified map, "
                   "each unit weighted by its value.")
@click.option("--size", default=None, type=int, help="Input size in pixels (default: the model's).")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output image (rows = layers).")
def deconv_cmd(photo, model, weights, device, cache, as_json, layers, all_convs, top, rule, seed_kind, size,
               out) -> None:
    """Zeiler & Fergus deconvnet: the top channels of each layer projected back to pixels.

    Example: cnnvis deconv cat.jpg --model vgg16_hed --top 3 --out deconv.png
    """
    from cnnvis.errors import CnnvisError

    out = check_out(out, [photo])
    if layers and all_convs:
        raise CnnvisError("give --layers or --all, not both")
    given = {k: v for k, v in {"rule": rule, "project": seed_kind}.items() if v is not None}  # else the spec's
    res = run_job("deconv", model=model, weights=weights, device=device, cache=cache, flags=_FLAGS, quiet=as_json,
                  image=photo, layers=parse_names(layers, "--layers"), all_conv=all_convs, top=top, size=size, **given)
    write_image(res, out)
    d = res.data
    note = "; ".join(d["notes"])
    emit(res, as_json, f"wrote {out} ({len(d['layers'])} layers x top {top}, {d['rule_text']}, "
                       f"{d['seed_text']})"
                       + (f"; {note}" if note else ""), out=str(out))


@click.command("sanity")
@click.argument("photo", type=click.Path())
@job_options
@click.option("--method", "methods", default=",".join(D.Sanity.methods), show_default=True,
              help="Method, or several comma-separated (see `cnnvis saliency --help` for the names).")
@_photo_options
@click.option("--layer", "-l", default=None, help="CAM methods' layer.")
@_method_options
@click.option("--max-steps", default=D.Sanity.max_steps, show_default=True, type=int,
              help="At most this many randomization steps (layers are grouped to fit).")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output image: the correlation curve and the maps.")
def sanity_cmd(photo, model, weights, device, cache, as_json, methods, target, size, layer, steps, samples, noise,
               baseline, extra, max_steps, out) -> None:
    """Adebayo et al. sanity check: randomize weights from the top down, compare the maps.

    Example: cnnvis sanity cat.jpg --method saliency,guided,gradcam --out sanity.png
    """
    from cnnvis.errors import CnnvisError

    out = check_out(out, [photo])
    names = parse_names(methods, "--methods")
    if not names:
        raise CnnvisError("--method is empty")
    res = run_job("sanity", model=model, weights=weights, device=device, cache=cache, flags={**_FLAGS, "methods": "--method"},
                  quiet=as_json, image=photo, methods=names, target=target, size=size, layer=layer, max_steps=max_steps,
                  options=method_options(steps, samples, noise, baseline, extra))
    write_image(res, out)
    lines = [f"wrote {out}"] + [f"  {m:<14} " + " ".join(f"{v:+.2f}" for v in s)
                                for m, s in res.data["spearman"].items()]
    emit(res, as_json, lines, out=str(out))


COMMANDS = [saliency_cmd, deconv_cmd, sanity_cmd]
