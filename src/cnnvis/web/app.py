"""`create_app(models, cache)`: the FastAPI app (JSON API under /api, pages, /static).

Every computation is a job spec run by `cnnvis.jobs.run` into `cnnvis.jobs.Store(cache)`; files
are served only from the store's result folders (a 64-hex key and one of that result's own file
names). Uploads are decoded by PIL under limits, re-encoded to PNG in `<cache>/uploads/<sha>.png`
and referred to as `upload:<sha>`; nothing is written outside the cache.

The parts: `context` (WebContext: the app's state, passed to routes explicitly), `schemas` (the
API's JSON shapes), `uploads`, `policy` (what the server runs), `routers/` (the API by page family),
`pages` (the HTML pages). State for the pages (`request.app.state`): `ctx` (WebContext) and, as
before, `models` (mid -> ServedModel), `default_mid`, `store`, `jobs` (JobManager), `cache` (Path),
`max_upload_mb`, `data`, `fast_pool`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnnvis.errors import CnnvisError
from cnnvis.web.context import ServedModel, WebContext, layer_rows, mid_for, training_data
from cnnvis.web.jobs import JobManager, one_line
from cnnvis.web.policy import json_type  # noqa: F401  (re-exported)
from cnnvis.web.routers.jobs import KEY_RE, read_result_file  # noqa: F401  (re-exported)
from cnnvis.web.schemas import job_body_schema
from cnnvis.web.uploads import UPLOAD_RE, UploadLimit, decode_upload  # noqa: F401  (re-exported)

log = logging.getLogger("cnnvis.web")

__all__ = ["create_app", "ServedModel", "WebContext", "decode_upload", "read_result_file", "UploadLimit"]


# ---------------------------------------------------------------------- errors: one readable line
async def _cnnvis_error(request: Request, exc: CnnvisError):
    if _is_page(request):
        from cnnvis.web.pages import error_page

        return error_page(request, 400, one_line(exc))
    return JSONResponse({"detail": one_line(exc)}, status_code=400)


def _is_page(request: Request) -> bool:
    """A page address (answered in HTML), not the JSON API or its schema."""
    p = request.url.path
    return not (p == "/api" or p.startswith("/api/") or p in ("/openapi.json", "/docs", "/redoc")
                or p.startswith("/docs/"))


async def _validation_error(request: Request, exc: RequestValidationError):
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "form"))
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    ctype = request.headers.get("content-type", "")
    if request.method == "POST" and any(tuple(e.get("loc", ())) == ("body",) for e in exc.errors()) \
            and ctype and "json" not in ctype and "multipart" not in ctype:
        parts.append(f"the body was sent as {ctype.split(';')[0]}; send the JSON object with Content-Type: "
                     f"application/json")
    if _is_page(request):
        from cnnvis.web.pages import error_page

        return error_page(request, 400, f"This address has a bad part ({'; '.join(parts)}).")
    return JSONResponse({"detail": "bad request: " + "; ".join(parts)}, status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException):
    """HTTP errors: JSON under /api (as FastAPI answers), a readable HTML page for page addresses."""
    if _is_page(request):
        from cnnvis.web.pages import error_page

        if exc.status_code == 404:
            msg = exc.detail if isinstance(exc.detail, str) and exc.detail != "Not Found" else \
                "There is no page at this address. Pages are /m/MODEL (its layers), " \
                "/m/MODEL/photo, /m/MODEL/class, /m/MODEL/study and the lenses /m/MODEL/occlusion, /inversion, " \
                "/compare, /evolution; the JSON API is under /api."
        else:
            msg = f"{request.method} is not how this address is used ({exc.detail})" if exc.status_code == 405 \
                else str(exc.detail)
        return error_page(request, exc.status_code, msg)
    detail = exc.detail
    if exc.status_code == 400 and detail == "There was an error parsing the body":  # FastAPI's words for a body
        detail = ("the request body could not be read as JSON (nested too deeply, or a number of over 4300 "  # json
                  "digits); send a flat JSON object such as {\"kind\": \"classify\", ...}")  # cannot decode
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _internal(request: Request, exc: Exception):
    # one line here: Starlette re-raises the exception after this handler, and the server logs its traceback
    log.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, one_line(exc))
    msg = f"internal error: {type(exc).__name__}; see the server log"
    if _is_page(request):
        from cnnvis.web.pages import error_page

        return error_page(request, 500, f"Something went wrong on the server ({msg}).")
    return JSONResponse({"detail": msg}, status_code=500)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    app.state.ctx.jobs.stop()


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, with the served model ids as the job body's 'model' values."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        body = schema["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["model"] = job_body_schema(list(app.state.ctx.served))["properties"]["model"]
    return app.openapi_schema


# ---------------------------------------------------------------------- the app
def serve_models(models: list[str], pool, data=None) -> dict[str, ServedModel]:
    """Load each model once (a ref named twice is served once), list its layers, give it a URL id and
    its dataset (`datasets.assign`: 'REF=DATA', `data` for it or for all where it fits, or its own)."""
    from cnnvis.web import specs
    from cnnvis.web.datasets import assign, split_model_arg

    served: dict[str, ServedModel] = {}
    for i, arg in enumerate(models):
        given, own_data = split_model_arg(str(arg))
        ref = specs.canonical_ref(given)
        if any(s.ref == ref for s in served.values()):
            continue
        vm = pool.get(ref)
        infos = specs.model_layers(pool, ref, vm)
        mid = mid_for(ref, set(served))
        specs.remember(ref, vm, infos, mid=mid)
        served[mid] = ServedModel(mid, ref, vm, default=(i == 0), data=own_data, layers=layer_rows(infos))
    assign(served, data, training_data)
    return served


def create_app(models: list[str], cache: str | os.PathLike, *, data=None, device: str = "cpu",
               max_upload_mb: int = 20, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The web app over `models` (registry names or checkpoint paths, each optionally 'REF=DATA'; the
    first is the default), keeping every result in the store at `cache`. `data`: datasets for top
    examples and the study: 'DATA' for every model it fits, 'MODEL=DATA' for one (a list of these, or a
    dict); a model with none uses its checkpoint's training data, and a page offers only what fits
    (cnnvis.web.datasets). `allowed_hosts`: the
    only Host headers answered (400 otherwise; `cnnvis serve` on loopback: localhost names only, so a
    web page elsewhere cannot reach it by DNS rebinding); None: any."""
    from cnnvis.jobs import ModelPool, Store, default_pool
    from cnnvis.web import pages
    from cnnvis.web.routers import api_router

    if not models:
        raise CnnvisError("give at least one model to serve (--model NAME|PATH)")
    store = Store(cache)
    store.clean_tmp()
    (store.root / "uploads").mkdir(exist_ok=True)
    dev = None if device in (None, "auto") else device
    pool = default_pool(dev)  # the jobs' models (specs' quick sizes read the same ones)
    served = serve_models(models, pool, data)
    from cnnvis.web.costs import CostBook

    fast_pool = ModelPool(dev)  # interactive jobs and classify requests: their own model copies
    costs = CostBook(store)
    jobs = JobManager(store, pool, dev, interactive_pool=fast_pool, on_done=costs.on_done)
    ctx = WebContext(served=served, store=store, jobs=jobs, cache=store.root, fast_pool=fast_pool, data=data,
                     max_upload_mb=max_upload_mb, costs=costs)

    app = FastAPI(title="cnnvis microscope", version=_version(), lifespan=_lifespan,
                  description="Feature visualization, attribution and dataset study of the served models; every "
                              "result is a job of cnnvis.jobs, kept in the cache.")
    app.openapi = lambda: _openapi(app)
    st = app.state
    st.ctx = ctx
    st.models, st.default_mid, st.store, st.jobs = ctx.served, ctx.default_mid, ctx.store, ctx.jobs
    st.cache, st.max_upload_mb, st.data, st.fast_pool = ctx.cache, max_upload_mb, data, ctx.fast_pool
    app.add_middleware(UploadLimit, limit=max_upload_mb * 2**20)
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    from starlette.formparsers import MultiPartParser

    # uploads stay in memory (<= max_upload_mb each) instead of spooling to the system's temp folder:
    # nothing of a request is written outside the cache
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_upload_mb * 2**20 + 1)

    app.add_exception_handler(CnnvisError, _cnnvis_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)
    app.include_router(api_router())

    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static", check_dir=False), name="static")
    app.include_router(pages.router)
    from cnnvis.web.lenses import router as lens_router

    app.include_router(lens_router)
    return app


def _version() -> str:
    from cnnvis import __version__

    return __version__
