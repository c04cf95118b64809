"""The web UI's pages: server-rendered shells whose small scripts (static/app.js) use only the JSON API.

    /                                   -> redirect to /m/{default model id}
    /m/{mid}                            model: layers with output shapes, grouped by stage
    /m/{mid}/layer/{layer}?page=0       layer: 16 channels' feature visualizations from one filters job
    /m/{mid}/layer/{layer}/channel/{c}  channel: 3 seeds, top dataset examples, first-layer weights
    /m/{mid}/photo                      photo: top-5, feature maps, attributions, DeepDream, deconvnet
    /m/{mid}/class                      class image with its probabilities, robustness and judge
    /m/{mid}/study                      small nets with data: accuracy, t-SNE scatter, neighbours

A page knows only its model id (`mid`), layer and channel from the URL; everything else it asks
the API for. Job specs the cache must share with `cnnvis render-all` come from `cnnvis.web.specs`
and are embedded in the page as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "web"
templates = Jinja2Templates(directory=str(TEMPLATES))
PER_PAGE = 16
NAV = [("model", "Model", ""), ("photo", "Photo", "/photo"), ("class", "Class", "/class"), ("study", "Study", "/study")]

router = APIRouter(include_in_schema=False)


def _served(request: Request) -> dict:
    """mid -> ServedModel (create_app keeps them in app.state.models)."""
    return getattr(request.app.state, "models", None) or {}


def _ref(request: Request, mid: str) -> str:
    """The model ref (registry name or checkpoint path) the specs name for `mid`."""
    m = _served(request).get(mid)
    return getattr(m, "ref", mid)


def _spec(fn_name: str, *args, **kw) -> tuple[dict | None, str | None]:
    """(spec dict from cnnvis.web.specs, None) or (None, the one-line reason it was refused)."""
    from cnnvis.errors import CnnvisError
    from cnnvis.web import specs

    try:
        s = getattr(specs, fn_name)(*args, **kw)
    except CnnvisError as e:
        return None, str(e)
    return (s.to_dict() if hasattr(s, "to_dict") else dict(s)), None


def _page(request: Request, name: str, mid: str, active: str, title: str, **ctx) -> HTMLResponse:
    served = _served(request)
    status = 200
    if served and mid not in served:
        name, status = "missing", 404
        ctx["message"] = f"No model {mid!r} is served here; pick one of: {', '.join(served)}."
    boot = {"mid": mid, "page": active, **ctx}
    return templates.TemplateResponse(request, f"{name}.html", {
        "mid": mid, "active": active, "title": title, "nav": NAV, "boot_json": _script_json(boot), **ctx},
        status_code=status)


@router.get("/", response_class=HTMLResponse)
def index(request: Request):
    mid = getattr(request.app.state, "default_mid", None)
    if mid:
        return RedirectResponse(f"/m/{mid}", status_code=307)
    return _page(request, "index", "", "model", "cnnvis")


@router.get("/m/{mid}", response_class=HTMLResponse)
def model_page(request: Request, mid: str):
    return _page(request, "model", mid, "model", f"{mid}: layers")


@router.get("/m/{mid}/layer/{layer}", response_class=HTMLResponse)
def layer_page(request: Request, mid: str, layer: str, page: int = 0):
    page = max(0, page)
    spec, err = (None, None) if mid not in _served(request) else \
        _spec("layer_page_spec", _ref(request, mid), layer, page, per_page=PER_PAGE)
    return _page(request, "layer", mid, "model", f"{mid}: {layer}", layer=layer, page_no=page,
                 per_page=PER_PAGE, spec=spec, spec_error=err)


@router.get("/m/{mid}/layer/{layer}/channel/{channel}", response_class=HTMLResponse)
def channel_page(request: Request, mid: str, layer: str, channel: int):
    seeds, err = [], None
    if mid in _served(request):
        for s in range(3):
            spec, err = _spec("channel_spec", _ref(request, mid), layer, channel, seed=s)
            seeds.append(spec)
    return _page(request, "channel", mid, "model", f"{mid}: {layer} channel {channel}", layer=layer,
                 channel=channel, specs=seeds if seeds and all(seeds) else None, spec_error=err,
                 page_no=max(0, channel) // PER_PAGE)


@router.get("/m/{mid}/photo", response_class=HTMLResponse)
def photo_page(request: Request, mid: str):
    return _page(request, "photo", mid, "photo", f"{mid}: photo")


@router.get("/m/{mid}/class", response_class=HTMLResponse)
def class_page(request: Request, mid: str):
    return _page(request, "class", mid, "class", f"{mid}: class image")


def _training(request: Request, mid: str) -> dict | None:
    """A `cnnvis train` checkpoint's training block (data, held-out share and accuracy), when it is
    evaluated on its own training data: the study page then scores only the held-out images."""
    from cnnvis.web.context import training_block

    m = _served(request).get(mid)
    if m is None or not getattr(m, "ref", None):
        return None
    t = training_block(m.ref)
    if not isinstance(t, dict) or t.get("data") != getattr(m, "data", None):
        return None
    return {k: t.get(k) for k in ("data", "split", "held_out", "held_out_accuracy", "epochs", "seed")}


@router.get("/m/{mid}/study", response_class=HTMLResponse)
def study_page(request: Request, mid: str):
    return _page(request, "study", mid, "study", f"{mid}: dataset study", training=_training(request, mid))


def _script_json(obj) -> str:
    """JSON safe inside a <script> element: '<', '>' and '&' escaped (no '</script>' from a name)."""
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
