"""`cnnvis report`: the static HTML gallery."""

from __future__ import annotations

import click

from cnnvis.commands.common import load_model, model_options, seed_option


@click.command("report")
@model_options
@click.option("--images", type=click.Path(), default=None,
              help="Folder of photos (default: scikit-image's sample photos).")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output folder (index.html + img/).")
@click.option("--quick", is_flag=True, help="Demo mode: fewer steps, channels and layers (about 5 min on 2 CPU cores).")
@click.option("--sections", default=None, help="Comma-separated section names to build (default: all).")
@seed_option
def report_cmd(model, weights, device, images, out, quick, sections, seed) -> None:
    """Write a static HTML report of what MODEL sees."""
    from cnnvis.images import find_images, load_image, sample_photos
    from cnnvis.report import build_report, sections as all_sections
    from cnnvis.utils import resolve_device

    only = [s.strip() for s in sections.split(",") if s.strip()] if sections else None
    if only:  # fail fast on a typo, before any work
        names = [s.name for s in all_sections()]
        from cnnvis.errors import unknown_name

        for n in only:
            if n not in names:
                raise unknown_name("report section", n, names)
    photos = [(p.stem, load_image(p)) for p in find_images(images)] if images else sample_photos()
    vm = load_model(model, weights, device)
    page = build_report(vm, photos, out, quick=quick, only=only, device=resolve_device(device), seed=seed, progress=True)
    click.echo(f"wrote {page}")


COMMANDS = [report_cmd]
