"""The web UI's pages: server-rendered HTML (Jinja, templates/web/) whose small scripts (static/app.js)
use only the JSON API. The same templates make the static atlas (`cnnvis export-site`): links go
through `urls` (LiveUrls here, StaticUrls there), and what the store already holds is rendered into
the page (model thumbnails, a stored layer page's tiles, a channel's seeds).

    /                                   -> redirect to /m/{default model id}
    /m/{mid}                            model: layers with output shapes, grouped by stage, thumbnails
    /m/{mid}/layer/{layer}?page=1       layer: 16 channels' feature visualizations from one filters job (1-based)
    /m/{mid}/layer/{layer}/channel/{c}  channel: 3 seeds, neighbours, top dataset examples, first-layer weights
    /m/{mid}/photo                      photo: top-5, feature maps, attributions, DeepDream, deconvnet
    /m/{mid}/class                      class image with its probabilities, robustness and judge
    /m/{mid}/study                      small nets with data: accuracy, t-SNE scatter, neighbours
    /m/{mid}/occlusion, /inversion, /compare, /evolution   the lenses (cnnvis.web.lenses)

Job specs the cache must share with `cnnvis render-all` come from `cnnvis.web.specs` and are
embedded in the page as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from cnnvis.errors import whole_number

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "web"
templates = Jinja2Templates(directory=str(TEMPLATES))
PER_PAGE = 16
NAV = [("model", "Model", ""), ("photo", "Photo", "/photo"), ("class", "Class", "/class"), ("study", "Study", "/study")]
THUMBS = 4  # channel pictures a layer shows on the model page (from a stored first page)

router = APIRouter(include_in_schema=False)


# ---------------------------------------------------------------------- links: live server or static atlas
def _q(s) -> str:
    return quote(str(s), safe="")


class LiveUrls:
    """Links of the live server (absolute paths)."""

    static = False

    def home(self) -> str:
        return "/"

    def model(self, mid: str) -> str:
        return f"/m/{_q(mid)}"

    def nav(self, mid: str, suffix: str) -> str:
        return f"/m/{_q(mid)}{suffix}"

    def layer(self, mid: str, layer: str, page: int = 1) -> str:
        return f"/m/{_q(mid)}/layer/{_q(layer)}" + (f"?page={page}" if page > 1 else "")

    def channel(self, mid: str, layer: str, c: int) -> str:
        return f"/m/{_q(mid)}/layer/{_q(layer)}/channel/{c}"

    def asset(self, name: str) -> str:
        return f"/static/{name}"

    def file(self, key: str, name: str) -> str:
        return f"/api/results/{key}/{name}"


class StaticUrls(LiveUrls):
    """Links of the static atlas: relative, from a page `depth` folders below the site's root."""

    static = True

    def __init__(self, depth: int) -> None:
        self.up = "../" * depth

    def home(self) -> str:
        return f"{self.up}index.html"

    def model(self, mid: str) -> str:
        return f"{self.up}m/{_q(mid)}/index.html"

    def nav(self, mid: str, suffix: str) -> str:
        return self.model(mid) if not suffix else f"{self.up}m/{_q(mid)}/{suffix.strip('/')}.html"

    def layer(self, mid: str, layer: str, page: int = 1) -> str:
        return f"{self.up}m/{_q(mid)}/layer/{_q(layer)}/page-{page}.html"

    def channel(self, mid: str, layer: str, c: int) -> str:
        return f"{self.up}m/{_q(mid)}/layer/{_q(layer)}/channel/{c}.html"

    def asset(self, name: str) -> str:
        return f"{self.up}static/{name}"

    def file(self, key: str, name: str) -> str:
        return f"{self.up}files/{key}/{name}"


def render(name: str, **ctx) -> str:
    """A page template rendered to text (the static atlas; the live server uses `_page`)."""
    return templates.env.get_template(f"{name}.html").render(**ctx)


# ---------------------------------------------------------------------- the live pages
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


def _page(request: Request, name: str, mid: str, active: str, title: str, server: dict | None = None,
          status: int = 200, **ctx) -> HTMLResponse:
    """A page: template `name` with `ctx` (also in the page's boot JSON) and `server` (template only)."""
    served = _served(request)
    if served and mid not in served:
        name, status = "missing", 404
        ctx["message"] = f"No model {mid!r} is served here; pick one of: {', '.join(served)}."
    boot = {"mid": mid, "page": active, **ctx}
    return templates.TemplateResponse(request, f"{name}.html", {
        "mid": mid, "active": active, "title": title, "nav": nav_of(request, mid), "boot_json": _script_json(boot),
        "urls": LiveUrls(), **(server or {}), **ctx}, status_code=status)


def nav_of(request: Request, mid: str) -> list[tuple[str, str, str]]:
    """The header's links for model `mid`: NAV with the lens pages that apply to it after the photo page
    (occlusion, inversion; compare with a second comparable model; evolution for a run with snapshots)."""
    from cnnvis.web.lenses import lens_nav

    ctx = getattr(request.app.state, "ctx", None)
    m = _served(request).get(mid)
    if ctx is None or m is None:
        return NAV
    lens = lens_nav(ctx, m)
    by_photo = [n for n in lens if n[0] in ("occlusion", "inversion")]
    return NAV[:2] + by_photo + NAV[2:] + [n for n in lens if n not in by_photo]


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """A readable HTML page for an error on a page address (the API answers JSON instead)."""
    mid = getattr(request.app.state, "default_mid", "") or ""
    title = {404: "Not found", 405: "Not allowed"}.get(status, "Bad address" if status < 500 else "Server error")
    return templates.TemplateResponse(request, "missing.html", {
        "mid": mid, "active": "", "title": title, "heading": title, "nav": NAV, "message": message,
        "urls": LiveUrls(), "boot_json": _script_json({"mid": mid, "page": "error", "message": message})},
        status_code=status)


@router.get("/", response_class=HTMLResponse)
def index(request: Request):
    mid = getattr(request.app.state, "default_mid", None)
    if mid:
        return RedirectResponse(f"/m/{mid}", status_code=307)
    return _page(request, "index", "", "model", "cnnvis")


def model_view(m, store, urls, thumbs: bool = True) -> dict:
    """The model page's content: stages of layer rows, each map layer with its stored first-page thumbnails."""
    from cnnvis.web import atlas

    stages: dict[str, list[dict]] = {}
    for row in m.layers:
        r = dict(row)
        r["maps"] = isinstance(r.get("shape"), list) and len(r["shape"]) == 3
        r["thumbs"] = []
        if thumbs and r["maps"] and store is not None:
            res = atlas.page_result(store, m.ref, r["name"], 0)
            r["thumbs"] = [t for t in atlas.tiles(res, urls.file) if t["src"]][:THUMBS]
        stages.setdefault(r["stage"] or "(top)", []).append(r)
    out = []
    for stage, rows in stages.items():
        big = len(rows) > 24  # a timm net's 'blocks': its blocks and named layers first, every module on demand
        main = [r for r in rows if r["alias"] or len(r["name"].split(".")) <= 2] if big else rows
        out.append({"stage": stage, "rows": rows, "main": main, "rest": big and len(main) < len(rows)})
    return {"stages": out}


@router.get("/m/{mid}", response_class=HTMLResponse)
def model_page(request: Request, mid: str):
    m = _served(request).get(mid)
    server = model_view(m, request.app.state.store, LiveUrls()) if m is not None else None
    return _page(request, "model", mid, "model", f"{mid}: layers", server=server)


def page_number(raw: str | None, n_pages: int | None) -> tuple[int, str | None]:
    """`?page=` as the user sees it (1-based) -> (0-based index, None) or (0, a one-line reason)."""
    if raw is None or raw == "":
        return 0, None
    txt = raw.strip()
    p = whole_number(txt)
    if p is None:
        return 0, f"page {raw[:40]!r} is not a page number" + (f"; pages are 1 to {n_pages}" if n_pages else "")
    if p < 1 or (n_pages is not None and p > n_pages):
        return 0, f"page {p} does not exist" + (f"; this layer has pages 1 to {n_pages}" if n_pages else "")
    return p - 1, None


def layer_info(m, layer: str) -> dict | None:
    """The layer row (name, alias, type, shape) of `layer` (a dotted name or an alias)."""
    rows = m.layers if m is not None else []
    return next((r for r in rows if r["name"] == layer), None) or next((r for r in rows if r["alias"] == layer), None)


def _eta(request: Request, m, spec: dict, layer: str, info: dict | None) -> dict:
    """Is this page stored; what a channel of its layer costs here (measured); the command filling it ahead."""
    import shlex

    from cnnvis.jobs import job_key, parse_spec

    ctx = request.app.state.ctx
    stored = ctx.store.resolve(job_key(parse_spec(spec))) is not None
    per = ctx.costs.per_channel(m.ref, spec["layers"][0]) if ctx.costs is not None else None
    name = (info or {}).get("alias") or layer
    cmd = f"cnnvis render-all --model {shlex.quote(m.ref)} --layers {shlex.quote(name)} --cache " \
          f"{shlex.quote(str(ctx.cache))}"
    return {"stored": stored, "per_channel": round(per, 2) if per else None, "channels": len(spec["channels"]),
            "command": cmd}


@router.get("/m/{mid}/layer/{layer}", response_class=HTMLResponse)
def layer_page(request: Request, mid: str, layer: str, page: str | None = None):
    """One page of a layer's channels: ?page=N, 1-based as on screen."""
    from cnnvis.errors import CnnvisError
    from cnnvis.web import specs

    spec, err, n_pages, index, info, eta = None, None, None, 0, None, None
    m = _served(request).get(mid)
    if m is not None:
        info = layer_info(m, layer)
        try:
            n_pages = specs.n_pages(m.ref, layer, per_page=PER_PAGE)
        except CnnvisError as e:
            err = str(e)
        if err is None:
            index, err = page_number(page, n_pages)
        if err is None:
            spec, err = _spec("layer_page_spec", m.ref, layer, index, per_page=PER_PAGE)
        if spec is not None:
            eta = _eta(request, m, spec, layer, info)
    return _page(request, "layer", mid, "model", f"{mid}: {layer}", status=404 if err else 200, layer=layer,
                 page_no=index,
                 per_page=PER_PAGE, spec=spec, spec_error=err, n_pages=n_pages, info=info, eta=eta)


@router.get("/m/{mid}/layer/{layer}/channel/{channel}", response_class=HTMLResponse)
def channel_page(request: Request, mid: str, layer: str, channel: str):
    seeds, err, n, info = [], None, None, None
    c = whole_number(channel, signed=False)
    m = _served(request).get(mid)
    if m is not None:
        info = layer_info(m, layer)
        if c is None:
            err = f"channel {channel[:40]!r} is not a channel number"
        else:
            for s in range(3):
                spec, err = _spec("channel_spec", m.ref, layer, c, seed=s)
                seeds.append(spec)
        if c is not None and info and isinstance(info.get("shape"), list) and len(info["shape"]) == 3:
            n = info["shape"][0]
    return _page(request, "channel", mid, "model", f"{mid}: {layer} channel {channel}", status=404 if err else 200,
                 layer=layer,
                 channel=c if c is not None else channel, specs=seeds if seeds and all(seeds) else None,
                 spec_error=err, page_no=max(0, c or 0) // PER_PAGE, n_channels=n, info=info)


@router.get("/m/{mid}/photo", response_class=HTMLResponse)
def photo_page(request: Request, mid: str):
    from cnnvis.attribution import list_methods, method_class

    from cnnvis import defaults as D
    from cnnvis.jobs import KINDS
    from cnnvis.web.specs import PHOTO_DREAM_QUICK

    methods = [{"name": n, "title": method_class(n).title} for n in list_methods()]  # the picker: every method
    full = {"octaves": D.Dream.octaves, "steps": D.Dream.steps}  # what `cnnvis dream` does without options
    return _page(request, "photo", mid, "photo", f"{mid}: photo", server={"methods": methods, "dream_full": full},
                 dream_quick=PHOTO_DREAM_QUICK, deconv=KINDS["deconv"].menus())  # the deconvnet panel's menus


def class_spec(ctx, m, q: dict) -> dict | None:
    """The `class_image` spec of the class page's view `q` (class, steps, judge, objective): only what the
    user chose; every other field (steps, judge, objective, preset...) is the spec class's default, so the
    page asks the job `cnnvis class` asks for the same class. None before a class is asked for."""
    from cnnvis.errors import CnnvisError
    from cnnvis.web.lenses import _int, _target

    if "class" not in q:
        return None
    t = (q.get("class") or "").strip()
    if not t:
        raise CnnvisError("type a class name or index first")
    spec: dict = {"kind": "class_image", "target": _target(m, t)}
    steps = _int(q, "steps", "optimization steps", 1, 100000)
    if steps is not None:
        spec["steps"] = steps
    judge = (q.get("judge") or "").strip()
    if judge:
        offered = [j for j, _ in class_judges(ctx, m)]
        if judge not in offered:
            from cnnvis.errors import unknown_name

            raise unknown_name("judge", judge, offered)
        spec["judge"] = judge
    obj = (q.get("objective") or "").strip()
    if obj:
        if obj not in ("logit", "logprob"):
            raise CnnvisError(f"objective {obj[:40]!r} is not one of: logit, logprob")
        spec["objective"] = obj
    return spec


def class_judges(ctx, m) -> list[tuple[str, str]]:
    """The judges the class page offers: those of `judge_choices` outside the default ensemble (a model the
    image is made for gives gradients: it cannot judge it; lite1 for lite0)."""
    from cnnvis.jobs.judge import default_ensemble
    from cnnvis.web.lenses import judge_choices

    members = set(default_ensemble(m.vm))
    return [(j, label) for j, label in judge_choices(ctx, m) if j not in members]


def class_form(ctx, m, q: dict) -> dict:
    """The class page's form: the values asked in `q`, the spec class's defaults, the judges offered."""
    from cnnvis.jobs import KINDS
    from cnnvis.jobs.judge import class_judge

    f = KINDS["class_image"].model_fields
    return {"q": {k: q.get(k) or "" for k in ("class", "steps", "judge", "objective")},
            "defaults": {"steps": f["steps"].default, "objective": f["objective"].default,
                         "judge": class_judge(m.vm)},
            "judges": class_judges(ctx, m)}


@router.get("/m/{mid}/class", response_class=HTMLResponse)
def class_page(request: Request, mid: str):
    from cnnvis.errors import CnnvisError

    m = _served(request).get(mid)
    spec, err, form = None, None, None
    if m is not None:
        ctx = request.app.state.ctx
        form = class_form(ctx, m, dict(request.query_params))
        try:
            spec = class_spec(ctx, m, dict(request.query_params))
        except CnnvisError as e:
            err = str(e)
    return _page(request, "class", mid, "class", f"{mid}: class image", status=400 if err else 200, spec=spec,
                 spec_error=err, form=form)


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
    from cnnvis import defaults as D
    from cnnvis.web.specs import STUDY_EMBED_LIMIT

    return _page(request, "study", mid, "study", f"{mid}: dataset study", training=_training(request, mid),
                 embed_limit=STUDY_EMBED_LIMIT, embed_full=D.Embed.limit)


def _script_json(obj) -> str:
    """JSON safe inside a <script> element: '<', '>' and '&' escaped (no '</script>' from a name)."""
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
