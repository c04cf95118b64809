"""`cnnvis models`, `cnnvis layers`, `cnnvis classify`, `cnnvis run` (any job spec as JSON)."""

from __future__ import annotations

import click

from cnnvis import defaults as D
from cnnvis.commands.common import (
    cache_option, echo_json, emit, job_options, json_option, model_options, run_job,
)


@click.command("models")
@click.option("--filter", "pattern", default="", help="Glob pattern, e.g. 'vgg*'.")
@json_option
def models_cmd(pattern: str, as_json: bool) -> None:
    """List the registered models.

    Example: cnnvis models --filter 'vgg*'
    """
    from cnnvis.models import list_models, model_info

    rows = [model_info(n) for n in list_models(pattern)]
    if as_json:
        echo_json([{"name": r.name, "family": r.family, "weights": r.default_weights, "description": r.description}
                   for r in rows])
        return
    w = max((len(r.name) for r in rows), default=10)
    for r in rows:
        click.echo(f"{r.name:<{w}}  {r.default_weights:<8}  {r.description}")


@click.command("layers")
@click.option("--model", "-m", default=None, metavar="NAME|PATH", help="Model (default: the embedded one).")
@click.option("--weights", default="random", show_default=True, metavar="PATH|random|pretrained",
              help="Weights do not change layer shapes; 'random' avoids loading or downloading them.")
@click.option("--size", default=None, type=click.IntRange(1, 4096), help="Input size in pixels (default: the model's).")
@click.option("--all", "show_all", is_flag=True, help="Also list containers, not only leaf modules.")
@json_option
def layers_cmd(model: str | None, weights: str, size: int | None, show_all: bool, as_json: bool) -> None:
    """List a model's layers: dotted name, alias, type and output shape.

    Example: cnnvis layers --model vgg16_hed
    """
    from cnnvis import DEFAULT_MODEL
    from cnnvis.errors import CnnvisError

    try:
        res = run_job("layers", model=model or DEFAULT_MODEL, weights=weights, device="cpu", cache=None, quiet=True,
                      size=size, leaves_only=not show_all)
    except CnnvisError as e:
        msg = str(e)
        raise CnnvisError(f"--{msg}" if msg.startswith("size ") else msg) from None
    infos = res.data["layers"]
    if as_json:
        echo_json([{k: i[k] for k in ("name", "alias", "type", "shape", "params")} for i in infos])
        return
    w = max(len(i["name"]) for i in infos)
    a = max((len(i["alias"]) for i in infos), default=0)
    for i in infos:
        shape = "x".join(map(str, i["shape"])) if i["shape"] else "-"
        click.echo(f"{i['name']:<{w}}  {i['alias']:<{a}}  {i['type']:<18} {shape}")


@click.command("classify")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@job_options
@click.option("--top", default=D.Classify.top, show_default=True, type=click.IntRange(1, 1000), help="How many classes to show.")
def classify_cmd(images, model, weights, device, cache, as_json, top) -> None:
    """Top-k classes of each IMAGE (files or folders of images), with probabilities.

    Example: cnnvis classify photos/ cat.jpg --top 3
    """
    from pathlib import Path

    from cnnvis.images import find_images, load_image

    images = [str(f) for p in images for f in (find_images(p) if Path(p).is_dir() else [p])]
    for p in images:  # all read (and checked) before the model loads
        load_image(p)
    res = run_job("classify", model=model, weights=weights, device=device, cache=cache, images=images, top=top)
    if as_json:
        echo_json(res.data["predictions"])
        return
    lines = []
    for pred in res.data["predictions"]:
        lines.append(pred["image"])
        lines += [f"  {q['label'].replace(' ', '_'):<28} {q['prob']:.4f}  ({q['index']})" for q in pred["top"]]
    emit(res, False, lines)


@click.command("run")
@click.argument("spec_file", type=click.Path())
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@cache_option
@click.option("--out", "-o", default=None, type=click.Path(), help="Folder for the result's files and result.json.")
@json_option
def run_cmd(spec_file, device, cache, out, as_json) -> None:
    """Run a job spec (JSON: {"kind": ..., fields}; '-' reads stdin). Kinds: `cnnvis kinds`.

    Example: echo '{"kind": "class_image", "target": "pelican"}' | cnnvis run - --out pelican/ --cache ~/.cache/cnnvis
    """
    import sys

    from cnnvis.commands.common import cache_tag, no_progress, run_spec
    from cnnvis.errors import CnnvisError
    from cnnvis.jobs import parse_spec

    try:
        text = sys.stdin.read() if spec_file == "-" else open(spec_file, encoding="utf-8").read()
    except OSError as e:
        raise CnnvisError(f"cannot read the spec {spec_file!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CnnvisError(f"the spec {spec_file!r} is not UTF-8 text; give a JSON file") from None
    spec = parse_spec(text)  # JSON text: its fields' JSON types checked too
    if out:
        from pathlib import Path

        from cnnvis.utils import check_writable

        check_writable(Path(out) / "result.json")  # before the work, not after it
    res = run_spec(spec, cache, device, None if no_progress() else True)
    if out:
        from pathlib import Path

        from cnnvis.utils import check_output_path

        for name in [*res.files, "result.json"]:  # a photo called input.png in --out is kept
            check_output_path(Path(out) / name, [i for i in spec.inputs() if not str(i).startswith("sample:")])
        res.save(out)
    emit(res, as_json, [f"{res.kind} {res.key[:12]}" + (cache_tag(res) if res.cached else f" ({res.seconds:.1f} s)")]
         + ([f"wrote {out}/ ({', '.join(sorted(res.files))}, result.json)"] if out else []))


@click.command("kinds")
@json_option
def kinds_cmd(as_json) -> None:
    """List the job kinds and their fields (the JSON schema of each with --json).

    Example: cnnvis kinds --json
    """
    from cnnvis.jobs import KINDS

    if as_json:
        echo_json({k: cls.model_json_schema() for k, cls in sorted(KINDS.items())})
        return
    for k, cls in sorted(KINDS.items()):
        click.echo(f"{k:<12} {cls.title}")
        click.echo(f"{'':<12} fields: {', '.join(f for f in cls.model_fields)}")


COMMANDS = [models_cmd, layers_cmd, classify_cmd, run_cmd, kinds_cmd]
