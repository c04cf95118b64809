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
@seed_option
@json_option
def report_cmd(model, weights, device, cache, images, out, quick, sections, seed, as_json) -> None:
    """Write a static HTML report of what MODEL sees.

    Example: cnnvis report --quick --out demo-report --cache ~/.cache/cnnvis
    """
    from cnnvis.commands.common import apply_threads, no_progress, parse_names
    from cnnvis.images import find_images, load_image
    from cnnvis.jobs import Store
    from cnnvis.models import load
    from cnnvis.report import build_report, check_sections

    from cnnvis.utils import check_writable

    only = parse_names(sections)
    check_sections(only)  # fail fast on a typo, before any work
    check_writable(Path(out) / "index.html")  # and on a folder that cannot be written
    if images:
        photos = [(p.stem, str(p)) for p in find_images(images)]
        for _, p in photos:
            load_image(p)  # every photo checked before the model loads
    else:
        from cnnvis.images import SAMPLE_NAMES

        photos = [(n, f"sample:{n}") for n in SAMPLE_NAMES]
    store = Store(cache) if cache else None
    apply_threads()
    vm = load(model, weights=weights, device=device)
    page = build_report(vm, photos, out, quick=quick, only=only, device=device if device != "auto" else None,
                        seed=seed, progress=None if no_progress() else True, store=store, weights=weights,
                        model=model)
    if as_json:
        import json

        from cnnvis.commands.common import echo_json

        d = json.loads((Path(out) / "report.json").read_text())["sections"]
        echo_json({"page": str(page), "seconds": d.get("_timings_s"), "errors": d.get("_errors", {})})
    else:
        click.echo(f"wrote {page}")


COMMANDS = [report_cmd]
