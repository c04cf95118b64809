"""`cnnvis models`, `cnnvis layers`, `cnnvis classify`."""

from __future__ import annotations

import click

from cnnvis.commands.common import echo_json, json_option, load_model, model_options


@click.command("models")
@click.option("--filter", "pattern", default="", help="Glob pattern, e.g. 'vgg*'.")
@json_option
def models_cmd(pattern: str, as_json: bool) -> None:
    """List the registered models."""
    from cnnvis.models import list_models, model_info

    rows = [model_info(n) for n in list_models(pattern)]
    if as_json:
        echo_json([{"name": r.name, "family": r.family, "weights": r.default_weights, "description": r.description} for r in rows])
        return
    w = max((len(r.name) for r in rows), default=10)
    for r in rows:
        click.echo(f"{r.name:<{w}}  {r.default_weights:<8}  {r.description}")


@click.command("layers")
@click.argument("model", default="efficientnet_lite0")
@click.option("--weights", default="random", show_default=True, metavar="PATH|random|pretrained",
              help="Weights do not change layer shapes; 'random' avoids loading or downloading them.")
@click.option("--size", default=None, type=int, help="Input size in pixels (default: the model's).")
@click.option("--all", "show_all", is_flag=True, help="Also list containers, not only leaf modules.")
@json_option
def layers_cmd(model: str, weights: str, size: int | None, show_all: bool, as_json: bool) -> None:
    """List a model's layers: dotted name, alias, type and output shape."""
    from cnnvis.errors import CnnvisError
    from cnnvis.layers import list_layers

    vm = load_model(model, weights, "cpu")
    if size is not None and size < vm.min_size:
        raise CnnvisError(f"--size {size} is too small for {model}; use at least {vm.min_size}")
    infos = list_layers(vm, size, leaves_only=not show_all)
    if as_json:
        echo_json([{"name": i.name, "alias": i.alias, "type": i.kind, "shape": i.shape, "params": i.params} for i in infos])
        return
    w = max(len(i.name) for i in infos)
    a = max((len(i.alias) for i in infos), default=0)
    for i in infos:
        shape = "x".join(map(str, i.shape)) if i.shape else "-"
        click.echo(f"{i.name:<{w}}  {i.alias:<{a}}  {i.kind:<18} {shape}")


@click.command("classify")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@model_options
@click.option("--top", default=5, show_default=True, type=click.IntRange(1, 1000), help="How many classes to show.")
@json_option
def classify_cmd(images, model, weights, device, top, as_json) -> None:
    """Top-k classes of each IMAGE (files or folders of images), with probabilities."""
    from pathlib import Path

    from cnnvis.classify import classify
    from cnnvis.images import find_images, load_image

    images = [str(f) for p in images for f in (find_images(p) if Path(p).is_dir() else [p])]
    photos = [load_image(p) for p in images]  # all read (and checked) before the model loads
    vm = load_model(model, weights, device)
    preds = classify(vm, photos, top=top, progress=True)
    if as_json:
        echo_json([{"image": p, "top": [{"index": q.index, "label": q.label, "prob": round(q.prob, 6)} for q in pr]}
                   for p, pr in zip(images, preds)])
        return
    for path, pr in zip(images, preds):
        click.echo(path)
        for q in pr:
            click.echo(f"  {q.label.replace(' ', '_'):<28} {q.prob:.4f}  ({q.index})")


COMMANDS = [models_cmd, layers_cmd, classify_cmd]
