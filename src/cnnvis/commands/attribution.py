"""`cnnvis saliency`, `cnnvis deconv`, `cnnvis sanity`."""

from __future__ import annotations

import click

from cnnvis.commands.common import echo_json, json_option, load_model, model_options, no_progress

_METHODS = ["saliency", "gradxinput", "smoothgrad", "ig", "guided", "deconvnet", "gradcam", "guided_gradcam"]


def _photo_options(fn):
    fn = click.option("--size", default=None, type=int, help="Input size in pixels (default: the model's).")(fn)
    fn = click.option("--target", "-t", default=None,
                      help="Class name or index (default: the top-1 class; edge models: the sum of the edge map).")(fn)
    return fn


def _method_options(fn):
    fn = click.option("--steps", default=50, show_default=True, type=click.IntRange(1, 10000), help="IG steps.")(fn)
    fn = click.option("--samples", default=25, show_default=True, type=click.IntRange(1, 10000),
                      help="SmoothGrad samples.")(fn)
    fn = click.option("--noise", default=0.15, show_default=True, type=click.FloatRange(0, 10),
                      help="SmoothGrad noise (fraction of the image's range).")(fn)
    fn = click.option("--baseline", default=0.0, show_default=True, type=float,
                      help="IG baseline grey level in [0, 1].")(fn)
    return fn


def _options_for(method: str, layer, steps, samples, noise, baseline, seed=0) -> dict:
    if method == "ig":
        return {"steps": steps, "baseline": baseline}
    if method == "smoothgrad":
        return {"samples": samples, "noise": noise, "seed": seed}
    if method in ("gradcam", "guided_gradcam"):
        return {"layer": layer}
    return {}


def _prepare(vm, photo_path: str, size: int | None):
    from cnnvis.errors import CnnvisError
    from cnnvis.images import load_image

    img = load_image(photo_path)
    if size is not None and size < vm.min_size:
        raise CnnvisError(f"--size {size} is too small for {vm.name}; use at least {vm.min_size}")
    return vm.preprocess.prepare(img, size=size).to(vm.device)


def _target(vm, target: str | None):
    if target is None:
        return None
    t = target.strip()
    if vm.task != "classification":
        from cnnvis.errors import CnnvisError

        raise CnnvisError(f"model {vm.name!r} is not a classifier ({vm.task}); drop --target (the map explains "
                          f"the sum of its output) or use --layer/--channel")
    return vm.class_index(int(t) if t.lstrip("-").isdigit() else t)


def _describe(vm, x, target) -> tuple[str, dict]:
    """Title text and JSON info: which class the map explains, with its probability."""
    import torch

    if vm.task != "classification":
        return f"{vm.name}: sum of the {vm.task} output", {"target": None}
    from cnnvis.classify import predict_probs

    probs = predict_probs(vm, x)[0]
    idx = int(probs.argmax()) if target is None else int(target)
    return (f"{vm.label(idx)} ({idx}), p={float(probs[idx]):.3f}",
            {"target": idx, "label": vm.label(idx), "prob": round(float(probs[idx]), 6),
             "top1": int(torch.argmax(probs))})


@click.command("saliency")
@click.argument("photo", type=click.Path())
@model_options
@click.option("--method", default="saliency", show_default=True, type=click.Choice(_METHODS))
@_photo_options
@click.option("--layer", "-l", default=None,
              help="Grad-CAM: the conv layer (default: the last one). Other methods: explain this layer's "
                   "activation instead of a class (with --channel/--unit).")
@click.option("--channel", default=None, type=int, help="With --layer: one channel of it.")
@click.option("--unit", default=None, help="With --layer: one position 'y,x' of its map.")
@_method_options
@click.option("--out", "-o", required=True, type=click.Path(), help="Output PNG: photo | map | overlay.")
@click.option("--raw", default=None, type=click.Path(), help="Also save the raw map (grey PNG) here.")
@json_option
def saliency_cmd(photo, model, weights, device, method, target, size, layer, channel, unit, steps, samples, noise,
                 baseline, out, raw, as_json) -> None:
    """Attribution map of PHOTO: which pixels drive the class score (or a layer's activation)."""
    from cnnvis.attribution import LayerTarget, method as make
    from cnnvis.viz.panels import map_panel
    from cnnvis.errors import CnnvisError
    from cnnvis.utils import check_output_path
    from cnnvis.viz import normalize_map, save_png

    check_output_path(out, [photo])
    if raw:
        check_output_path(raw, [photo])
    vm = load_model(model, weights, device)
    x = _prepare(vm, photo, size)
    cam = method in ("gradcam", "guided_gradcam")
    if (channel is not None or unit is not None) and (layer is None or cam):
        raise CnnvisError("--channel/--unit need --layer with a method other than gradcam")
    if not cam and layer is not None:
        if target is not None:
            raise CnnvisError("give either --target (a class) or --layer (an activation), not both")
        u = None
        if unit is not None:
            try:
                u = tuple(int(v) for v in unit.split(","))
                assert len(u) == 2
            except (ValueError, AssertionError):
                raise CnnvisError(f"--unit must be 'y,x', got {unit!r}") from None
        from cnnvis.layers import resolve_layer

        resolve_layer(vm, layer)
        tgt = LayerTarget(layer, channel, u)
        title, info = f"{vm.name}: {layer}" + (f" channel {channel}" if channel is not None else "") + \
            (f" unit {u}" if u else ""), {"layer": layer, "channel": channel, "unit": u}
    else:
        tgt = _target(vm, target)
        title, info = _describe(vm, x, tgt)
        if tgt is None and vm.task == "classification":
            tgt = info["target"]
    m = make(method, vm, **_options_for(method, layer, steps, samples, noise, baseline))
    heat = m.map(x, tgt)[0]
    save_png(map_panel(x, heat, f"{method}: {title}"), out)
    if raw:
        save_png(normalize_map(heat), raw)
    info.update({"method": method, "out": str(out)})
    if method == "ig":
        info["ig_completeness_delta"] = float(m.delta[0])
    if cam:
        info["layer"] = m.gradcam.layer if method == "guided_gradcam" else m.layer
    if as_json:
        echo_json(info)
    else:
        click.echo(f"wrote {out} ({method}, {title})")


@click.command("deconv")
@click.argument("photo", type=click.Path())
@model_options
@click.option("--layers", default=None, help="Comma-separated layers (default: VGG conv1_1..conv5_3 / the stages).")
@click.option("--all", "all_convs", is_flag=True, help="Every Conv2d layer of the model.")
@click.option("--top", default=3, show_default=True, type=click.IntRange(1, 64), help="Channels per layer.")
@click.option("--project", "seed_kind", default="map", show_default=True, type=click.Choice(["map", "max"]),
              help="Project the whole feature map, or only its strongest unit.")
@click.option("--size", default=None, type=int, help="Input size in pixels (default: the model's).")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output PNG (rows = layers).")
@json_option
def deconv_cmd(photo, model, weights, device, layers, all_convs, top, seed_kind, size, out, as_json) -> None:
    """Zeiler & Fergus deconvnet: the top channels of each layer projected back to pixels."""
    from cnnvis.viz.panels import deconv_panel
    from cnnvis.deconv import deconvnet
    from cnnvis.errors import CnnvisError
    from cnnvis.layers import conv_layers
    from cnnvis.utils import check_output_path
    from cnnvis.viz import save_png

    check_output_path(out, [photo])
    if layers and all_convs:
        raise CnnvisError("give --layers or --all, not both")
    vm = load_model(model, weights, device)
    x = _prepare(vm, photo, size)
    names = [s.strip() for s in layers.split(",") if s.strip()] if layers else (conv_layers(vm) if all_convs else None)
    res = deconvnet(vm, x, names, top, seed=seed_kind)
    note = "; ".join(res.notes)
    save_png(deconv_panel(x, res, title=f"{vm.name} deconvnet" + (f" ({note})" if note else "")), out)
    if as_json:
        echo_json({"out": str(out), "max_pools": res.max_pools, "notes": res.notes,
                   "layers": [{"layer": l, "module": n, "channels": c.tolist(), "norms": [round(float(v), 4) for v in k]}
                              for l, n, c, k in zip(res.labels, res.layers, res.channels, res.norms)]})
    else:
        click.echo(f"wrote {out} ({len(res.layers)} layers x top {top})" + (f"; {note}" if note else ""))


@click.command("sanity")
@click.argument("photo", type=click.Path())
@model_options
@click.option("--method", "methods", default="saliency", show_default=True,
              help=f"Method, or several comma-separated: {', '.join(_METHODS)}.")
@_photo_options
@click.option("--layer", "-l", default=None, help="Grad-CAM layer.")
@_method_options
@click.option("--max-steps", default=16, show_default=True, type=click.IntRange(1, 1000),
              help="At most this many randomization steps (layers are grouped to fit).")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output PNG: the correlation curve and the maps.")
@json_option
def sanity_cmd(photo, model, weights, device, methods, target, size, layer, steps, samples, noise, baseline, max_steps,
               out, as_json) -> None:
    """Adebayo et al. sanity check: randomize weights from the top down, compare the maps."""
    from cnnvis.viz.panels import curve, stack
    from cnnvis.errors import CnnvisError, unknown_name
    from cnnvis.sanity import sanity_check
    from cnnvis.utils import check_output_path
    from cnnvis.viz import colormap, grid, save_png, to_pil

    check_output_path(out, [photo])
    names = [s.strip() for s in methods.split(",") if s.strip()]
    if not names:
        raise CnnvisError("--method is empty")
    for n in names:
        if n not in _METHODS:
            raise unknown_name("attribution method", n, _METHODS)
    vm = load_model(model, weights, device)
    x = _prepare(vm, photo, size)
    tgt = _target(vm, target)
    results = [sanity_check(vm, x, n, tgt, max_steps=max_steps, progress=not no_progress(),
                            **_options_for(n, layer, steps, samples, noise, baseline)) for n in names]
    steps_ = results[0].steps
    img = curve(steps_, {r.method: r.spearman for r in results})
    rows = [[to_pil(x)] + [colormap(m) for m in r.maps] for r in results]
    strip = grid(rows, row_labels=[r.method for r in results], col_labels=["photo"] + [s[:10] for s in steps_], cell=72)
    save_png(stack([img, strip]), out)
    if as_json:
        echo_json({"out": str(out), "target": results[0].target,
                   "steps": steps_, "spearman": {r.method: [round(v, 4) for v in r.spearman] for r in results}})
    else:
        click.echo(f"wrote {out}")
        for r in results:
            click.echo(f"  {r.method:<14} " + " ".join(f"{v:+.2f}" for v in r.spearman))


COMMANDS = [saliency_cmd, deconv_cmd, sanity_cmd]
