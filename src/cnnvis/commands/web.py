"""`cnnvis serve` (the local web UI) and `cnnvis render-all` (fill its cache from the command line)."""

from __future__ import annotations

import sys

import click

from cnnvis import DEFAULT_MODEL
from cnnvis.commands.common import _threads_cb, apply_threads, parse_names

DEFAULT_CACHE = "~/.cache/cnnvis/web"


def _threads(fn):
    return click.option("--threads", type=int, default=None, expose_value=False, callback=_threads_cb, metavar="N",
                        help="CPU threads for torch (default: torch's choice).")(fn)


@click.command("serve")
@click.option("--model", "-m", "models", multiple=True, metavar="NAME|PATH",
              help=f"A model to serve (repeat for several; the first is the default) [default: {DEFAULT_MODEL}]. "
                   "Only these models' weights are ever loaded.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the default is this machine only. 0.0.0.0 exposes it to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--cache", default=DEFAULT_CACHE, show_default=True, metavar="DIR", envvar="CNNVIS_CACHE",
              help="Result store (the same one `cnnvis render-all` fills); uploads are kept in DIR/uploads.")
@click.option("--data", default=None, metavar="DATA",
              help="Dataset for top examples and the study pages (default: a trained checkpoint's own data).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--max-upload-mb", default=20, show_default=True, type=click.IntRange(1, 1024))
@_threads
def serve_cmd(models, host, port, cache, data, device, max_upload_mb) -> None:
    """Serve the microscope: pages + JSON API (/docs, /openapi.json) over the given models.

    Example: cnnvis serve --model efficientnet_lite0 --model runs/mnist --port 8000
    """
    import uvicorn

    from cnnvis.web.app import create_app

    apply_threads()
    app = create_app(list(models) or [DEFAULT_MODEL], cache, data=data, device=device, max_upload_mb=max_upload_mb)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    click.echo(f"cnnvis microscope on http://{shown}:{port}/ (models: {', '.join(app.state.models)}; cache "
               f"{app.state.cache})", err=False)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: bound to {host}: anyone who can reach this machine can use the server (and its "
                   "CPU); there is no login", err=True)
    sys.stdout.flush()
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)


@click.command("render-all")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, metavar="NAME|PATH")
@click.option("--layers", default=None, metavar="L1,L2",
              help="Layers to render (aliases or dotted names; default: the model's classic layers).")
@click.option("--first", default=None, type=click.IntRange(1), metavar="N",
              help="Only the pages holding each layer's first N channels (default: every channel).")
@click.option("--cache", default=DEFAULT_CACHE, show_default=True, metavar="DIR", envvar="CNNVIS_CACHE")
@click.option("--device", default="cpu", show_default=True)
@_threads
def render_all_cmd(model, layers, first, cache, device) -> None:
    """Render every layer page of the web UI into its cache (the exact jobs the pages ask for).

    Example: cnnvis render-all --model efficientnet_lite0 --layers stage1,stage2 --first 32 --cache web-cache
    """
    import math

    from cnnvis.jobs import Store, default_pool, run
    from cnnvis.layers import default_layers
    from cnnvis.web import specs

    apply_threads()
    store = Store(cache)
    ref = specs.canonical_ref(model)
    dev = None if device == "auto" else device
    vm = default_pool(dev).get(ref)
    from cnnvis.layers import list_layers

    specs.remember(ref, vm, list_layers(vm))
    names = parse_names(layers) or default_layers(vm)
    plan = []
    for layer in names:
        _, n = specs.layer_channels(ref, layer)  # every layer checked before the first render
        pages = math.ceil(min(n, first or n) / specs.PER_PAGE)
        plan += [(layer, p) for p in range(pages)]
    done = cached = 0
    for i, (layer, p) in enumerate(plan):
        spec = specs.layer_page_spec(ref, layer, p)
        click.echo(f"[{i + 1}/{len(plan)}] {layer} page {p} (channels {spec['channels'][0]}-"
                   f"{spec['channels'][-1]})", err=True)
        res = run(spec, store=store, progress=True, device=dev)
        cached += res.cached
        done += 1
    click.echo(f"{done} pages in {str(store.root)!r} ({cached} were already there)")


COMMANDS = [serve_cmd, render_all_cmd]
