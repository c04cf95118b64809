"""`create_app(models, cache)`: the FastAPI app (JSON API under /api, pages, /static).

Every computation is a job spec run by `cnnvis.jobs.run` into `cnnvis.jobs.Store(cache)`; files
are served only from the store's result folders (a 64-hex key and one of that result's own file
names). Uploads are decoded by PIL under limits, re-encoded to PNG in `<cache>/uploads/<sha>.png`
and referred to as `upload:<sha>`; nothing is written outside the cache.

State for the pages (`request.app.state`): `models` (mid -> ServedModel), `default_mid`, `store`,
`jobs` (JobManager), `cache` (Path), `max_upload_mb`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import mimetypes
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Body, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel

from cnnvis.errors import CnnvisError
from cnnvis.web.jobs import Job, JobManager, one_line

log = logging.getLogger("cnnvis.web")

KEY_RE = re.compile(r"^[0-9a-f]{64}$")
UPLOAD_RE = re.compile(r"^upload:([0-9a-f]{64})$")
UPLOAD_PIXELS = 50_000_000  # decoded pixels an upload may declare (a 12 MP photo is fine)
UPLOAD_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "MPO")  # never EPS/PDF (Ghostscript)
UPLOAD_TYPES = ("image/", "application/octet-stream")
DATA_KINDS_FIELD = "data"
BODY_LIMIT = 2**20  # bytes of any other request body (a job spec is a few hundred)


@dataclass
class ServedModel:
    """A model named on the command line: its URL id, how it was named (ref), the loaded VisModel."""

    mid: str
    ref: str
    vm: Any
    default: bool = False
    data: str | None = None  # dataset for top examples / the study (given, or the run's training data)
    layers: list[dict] = field(default_factory=list)

    def info(self) -> dict:
        vm = self.vm
        return {"id": self.mid, "name": vm.name, "task": vm.task, "input_shape": list(vm.input_shape),
                "n_classes": len(vm.labels) if vm.labels is not None else None, "default": self.default,
                "data": self.data, "description": getattr(vm, "description", "") or ""}


# ---------------------------------------------------------------------- pydantic response models (OpenAPI)
class ModelInfo(BaseModel):
    id: str
    name: str
    task: str
    input_shape: list[int]
    n_classes: int | None
    default: bool
    data: str | None = None
    description: str = ""


class LayerOut(BaseModel):
    name: str
    alias: str
    type: str
    shape: list[int] | None
    stage: str


class ClassOut(BaseModel):
    index: int
    label: str


class PhotoOut(BaseModel):
    ref: str
    name: str
    url: str


class UploadOut(BaseModel):
    ref: str
    width: int
    height: int


class Pred(BaseModel):
    index: int
    label: str
    prob: float


class ClassifyOut(BaseModel):
    model: str
    top: list[Pred]
    ref: str


class Progress(BaseModel):
    done: int
    total: int | None
    desc: str


class ResultOut(BaseModel):
    key: str
    kind: str
    data: dict
    files: dict[str, str]
    main: str | None


class JobOut(BaseModel):
    id: str
    kind: str | None
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: Progress
    error: str | None
    result: ResultOut | None


# ---------------------------------------------------------------------- helpers
def _mid_for(ref: str, taken: set[str]) -> str:
    from cnnvis.models.registry import _REGISTRY

    if ref in _REGISTRY:
        base = ref
    else:
        p = Path(ref)
        base = (p if p.is_dir() else p.parent).name if p.suffix.lower() in (".json", ".safetensors") or p.is_dir() \
            else p.stem
        base = base or "model"
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "model"
    mid, i = base, 2
    while mid in taken:
        mid, i = f"{base}-{i}", i + 1
    return mid


def _training_data(ref: str) -> str | None:
    from cnnvis.models.checkpoint import looks_like_checkpoint, read_metadata
    from cnnvis.models.registry import _REGISTRY

    if ref in _REGISTRY or not looks_like_checkpoint(ref):
        return None
    try:
        t = read_metadata(ref).get("training")
    except Exception:  # noqa: BLE001 - no training block: no data
        return None
    d = t.get("data") if isinstance(t, dict) else None
    return d if isinstance(d, str) else None


def _embedded(name: str) -> bool:
    """A registry model whose weights ship inside the installed packages (no file path, no download)."""
    from cnnvis.models import model_info
    from cnnvis.models.registry import _REGISTRY

    return name in _REGISTRY and model_info(name).default_weights == "embedded"


def _layer_rows(infos) -> list[dict]:
    return [{"name": i.name, "alias": i.alias, "type": i.kind, "shape": list(i.shape) if i.shape else None,
             "stage": i.name.split(".")[0]} for i in infos]


def job_body_schema(model_ids: list[str]) -> dict:
    """The OpenAPI schema of a job request body: 'kind', 'model' and every field any kind has, each with
    the JSON types some kind accepts for it (GET /api/kinds has each kind's exact schema)."""
    from cnnvis.jobs import KINDS

    types: dict[str, set[str]] = {}
    for cls in KINDS.values():
        for name, prop in cls.model_json_schema().get("properties", {}).items():
            alts = prop.get("anyOf", [prop])
            types.setdefault(name, set()).update(a.get("type", "string") for a in alts)  # enums/$refs: strings
    props: dict[str, dict] = {name: {"type": sorted(t) if len(t) > 1 else next(iter(t))}
                              for name, t in sorted(types.items()) if name not in ("model", "weights")}
    props["kind"] = {"type": "string", "enum": sorted(KINDS)}
    props["model"] = {"type": ["string", "null"], "enum": [*model_ids, None]}
    props["weights"] = {"type": "null", "description": "not settable here: the server runs only its own models"}
    return {"type": "object", "required": ["kind"], "additionalProperties": True,
            "description": "A job spec: 'kind', 'model' (a model id; default: the first model) and the kind's "
                           "fields (GET /api/kinds). Photo fields take 'upload:<sha256>' (POST /api/uploads) or "
                           "'sample:NAME'.",
            "properties": props}


def decode_upload(blob: bytes, filename: str, max_pixels: int = UPLOAD_PIXELS):
    """Bytes of an uploaded file -> PIL RGB image; CnnvisError (one line) for anything that is not a
    whole, reasonably sized image in a plain raster format."""
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    from cnnvis.images import to_rgb

    name = filename or "the upload"
    if not blob:
        raise CnnvisError(f"{name!r} is empty (0 bytes); choose a photo")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()
            img = Image.open(io.BytesIO(blob), formats=[f for f in UPLOAD_FORMATS if f in Image.OPEN])
            w, h = img.size
            if w * h > max_pixels:
                raise CnnvisError(f"{name!r} declares {w}x{h} = {w * h / 1e6:.0f} megapixels, over the limit of "
                                  f"{max_pixels / 1e6:.0f}; refused as a possible decompression bomb (shrink it first)")
            if w == 0 or h == 0:
                raise CnnvisError(f"{name!r} has zero size")
            img.load()
            img = ImageOps.exif_transpose(img)
    except CnnvisError:
        raise
    except UnidentifiedImageError:
        raise CnnvisError(f"{name!r} is not an image (or not one of {', '.join(UPLOAD_FORMATS)}); "
                          "upload a JPEG or PNG photo") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise CnnvisError(f"{name!r} is too large when decoded; refused as a possible decompression bomb") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise CnnvisError(f"{name!r} could not be decoded ({one_line(e)}); is it truncated or corrupt?") from None
    return to_rgb(img)


def json_type(v) -> str:
    """The JSON name of a decoded JSON value's type ('array', 'object', 'number', ...)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _need_string(body: dict, name: str, what: str) -> None:
    """CnnvisError (-> 400) when body[name] is given but is not a JSON string (a list, object, number)."""
    v = body.get(name)
    if v is not None and not isinstance(v, str):
        raise CnnvisError(f"field {name!r} must be a string ({what}), not {json_type(v)} {json.dumps(v)[:60]}")


def _check_json_types(cls, body: dict) -> None:
    """CnnvisError when a top-level field's JSON type is not one its kind's schema takes (pydantic's lax mode
    would read `true` as 1 and `"3"` as 3); unknown fields and values inside arrays are left to the spec."""
    props = cls.model_json_schema().get("properties", {})
    for name, v in body.items():
        prop = props.get(name)
        if prop is None or v is None and name == "model":
            continue
        alts = prop.get("anyOf", [prop])
        if any("type" not in a for a in alts):
            continue
        allowed = {a["type"] for a in alts}
        t = json_type(v)
        if t == "number" and isinstance(v, int) or isinstance(v, float) and v.is_integer():
            t = "integer" if "integer" in allowed else t
        if t not in allowed and not (t == "integer" and "number" in allowed):
            want = " or ".join(sorted(allowed))
            raise CnnvisError(f"bad {cls.kind} spec: field {name!r} must be {want}, not {t} {json.dumps(v)[:60]}")


class _TooLarge(Exception):
    pass


class UploadLimit:
    """ASGI middleware: bodies of POST /api/uploads and /api/classify over `limit` bytes -> 413, from the
    Content-Length header when given and by counting the bytes as they arrive (chunked bodies)."""

    PATHS = ("/api/uploads", "/api/classify")

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope.get("path") in self.PATHS:
            limit, what = self.limit + 64 * 1024, -self.limit  # + the multipart envelope; < 0: an upload
        else:
            limit = what = BODY_LIMIT  # a job spec is a few hundred bytes
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = -1
                if n > limit:
                    return await self._send_413(send, what)
        seen = 0
        state = {"over": False, "replaced": False, "started": False}

        async def counting_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    state["over"] = True
                    raise _TooLarge
            return msg

        async def guarded_send(msg):
            # the body parser may turn _TooLarge into its own 400: whatever the app answers, it is a 413
            if state["replaced"]:
                return
            if msg["type"] == "http.response.start" and state["over"]:
                state["replaced"] = True
                return await self._send_413(send, what)
            state["started"] = True
            await send(msg)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            if not state["started"] and not state["replaced"]:
                await self._send_413(send, what)

    async def _send_413(self, send, what: int):
        mb = abs(what) / 2**20
        msg = f"the upload is larger than {mb:.0f} MB; choose a smaller photo" if what < 0 else \
            f"the request body is larger than {mb:.0f} MB"
        body = json.dumps({"detail": msg}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------- the app
def create_app(models: list[str], cache: str | os.PathLike, *, data: str | None = None, device: str = "cpu",
               max_upload_mb: int = 20, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The web app over `models` (registry names or checkpoint paths; the first is the default),
    keeping every result in the store at `cache`. `data`: a dataset ref for top examples and the study
    (checkpoints of `cnnvis train` use their training data when none is given). `allowed_hosts`: the
    only Host headers answered (400 otherwise; `cnnvis serve` on loopback: localhost names only, so a
    web page elsewhere cannot reach it by DNS rebinding); None: any."""
    from cnnvis.jobs import ModelPool, Store
    from cnnvis.layers import list_layers
    from cnnvis.web import specs

    if not models:
        raise CnnvisError("give at least one model to serve (--model NAME|PATH)")
    store = Store(cache)
    store.clean_tmp()
    cache = store.root
    (cache / "uploads").mkdir(exist_ok=True)
    dev = None if device in (None, "auto") else device
    from cnnvis.jobs import default_pool

    pool = default_pool(dev)  # the jobs' models (specs' quick sizes read the same ones)
    fast_pool = ModelPool(dev)  # classify requests: their own model copies, never waiting behind a render
    served: dict[str, ServedModel] = {}
    for i, ref in enumerate(models):
        ref = specs.canonical_ref(str(ref))
        if any(s.ref == ref for s in served.values()):
            continue
        vm = pool.get(ref)
        with pool.lock(vm):
            infos = list_layers(vm)
        mid = _mid_for(ref, set(served))
        specs.remember(ref, vm, infos, mid=mid)
        served[mid] = ServedModel(mid, ref, vm, default=(i == 0), data=data or _training_data(ref),
                                  layers=_layer_rows(infos))
    default_mid = next(iter(served))
    by_ref = {s.ref: s for s in served.values()}
    jobs = JobManager(store, pool, dev)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        jobs.stop()

    app = FastAPI(title="cnnvis microscope", version=_version(), lifespan=lifespan,
                  description="Feature visualization, attribution and dataset study of the served models; every "
                              "result is a job of cnnvis.jobs, kept in the cache.")
    app.state.models, app.state.default_mid, app.state.store, app.state.jobs = served, default_mid, store, jobs
    app.state.cache, app.state.max_upload_mb, app.state.data = cache, max_upload_mb, data
    app.state.fast_pool = fast_pool
    app.add_middleware(UploadLimit, limit=max_upload_mb * 2**20)
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    from starlette.formparsers import MultiPartParser

    # uploads stay in memory (<= max_upload_mb each) instead of spooling to the system's temp folder:
    # nothing of a request is written outside the cache
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_upload_mb * 2**20 + 1)

    # ------------------------------------------------------------------ errors: one readable line
    @app.exception_handler(CnnvisError)
    async def _cnnvis_error(request: Request, exc: CnnvisError):
        return JSONResponse({"detail": one_line(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "form"))
            parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
        return JSONResponse({"detail": "bad request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}; see the server log"}, status_code=500)

    api = APIRouter(prefix="/api")

    def model_of(mid: str | None) -> ServedModel:
        if mid is None or mid == "":
            return served[default_mid]
        if mid in served:
            return served[mid]
        if mid in by_ref:  # a served model's ref as named on the command line (specs.layer_page_spec uses refs)
            return by_ref[mid]
        raise HTTPException(404, f"unknown model {mid!r}; served models: {', '.join(served)}")

    # ------------------------------------------------------------------ models
    @api.get("/models", response_model=list[ModelInfo])
    def get_models():
        return [s.info() for s in served.values()]

    @api.get("/models/{mid}/layers", response_model=list[LayerOut])
    def get_layers(mid: str):
        return model_of(mid).layers

    @api.get("/models/{mid}/classes", response_model=list[ClassOut])
    def get_classes(mid: str, q: str = Query("", max_length=200)):
        vm = model_of(mid).vm
        labels = list(vm.labels) if vm.labels is not None else []
        ql = q.strip().lower()
        hits = [{"index": i, "label": str(lab)} for i, lab in enumerate(labels)
                if not ql or ql in str(lab).lower() or ql == str(i)]
        return hits[:50]

    # ------------------------------------------------------------------ photos
    @api.get("/photos", response_model=list[PhotoOut])
    def get_photos():
        from cnnvis.images import SAMPLE_NAMES

        return [{"ref": f"sample:{n}", "name": n, "url": f"/api/photos/{n}.png"} for n in SAMPLE_NAMES]

    _photo_png: dict[str, bytes] = {}

    @api.get("/photos/{name}.png", response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "unknown photo"}})
    def get_photo(name: str):
        from cnnvis.images import SAMPLE_NAMES, sample_photo

        if name not in SAMPLE_NAMES:
            raise HTTPException(404, f"no bundled photo {name!r}; one of {', '.join(SAMPLE_NAMES)}")
        if name not in _photo_png:
            buf = io.BytesIO()
            sample_photo(name).save(buf, format="PNG")
            _photo_png[name] = buf.getvalue()
        return Response(_photo_png[name], media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    async def save_upload(file: UploadFile) -> tuple[str, int, int]:
        ctype = (file.content_type or "").lower()
        if not ctype.startswith(UPLOAD_TYPES):
            raise HTTPException(415, f"{file.filename or 'the upload'!r} was sent as {ctype or 'no type'}, not an "
                                     "image; upload a JPEG or PNG photo")
        limit = max_upload_mb * 2**20
        chunks, n = [], 0
        while True:
            chunk = await file.read(1 << 20)
            if not chunk:
                break
            n += len(chunk)
            if n > limit:
                raise HTTPException(413, f"the upload is larger than {max_upload_mb} MB; choose a smaller photo")
            chunks.append(chunk)
        blob = b"".join(chunks)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(_store_upload, blob, file.filename or "")

    def _store_upload(blob: bytes, filename: str) -> tuple[str, int, int]:
        from cnnvis.utils import atomic_write

        img = decode_upload(blob, filename)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        png = buf.getvalue()
        sha = hashlib.sha256(png).hexdigest()
        path = cache / "uploads" / f"{sha}.png"
        if not path.exists():
            with atomic_write(path) as f:
                f.write(png)
        return sha, img.size[0], img.size[1]

    @api.post("/uploads", response_model=UploadOut, status_code=201,
              responses={400: {"description": "not a readable image"}, 413: {"description": "too large"},
                         415: {"description": "not an image type"}})
    async def post_upload(file: UploadFile = File(...)):
        sha, w, h = await save_upload(file)
        return {"ref": f"upload:{sha}", "width": w, "height": h}

    @api.post("/classify", response_model=ClassifyOut,
              responses={400: {"description": "not a readable image"}, 413: {"description": "too large"},
                         415: {"description": "not an image type"}})
    async def post_classify(file: UploadFile = File(...), model: str | None = Form(None),
                            top: int = Form(5, ge=1, le=1000)):
        m = model_of(model)
        if m.vm.task != "classification":
            raise HTTPException(400, f"model {m.mid!r} is not a classifier ({m.vm.task})")
        sha, _, _ = await save_upload(file)
        from starlette.concurrency import run_in_threadpool

        from cnnvis.jobs import run

        spec = {"kind": "classify", "model": m.ref, "images": [str(cache / "uploads" / f"{sha}.png")], "top": top}
        res = await run_in_threadpool(run, spec, store=store, pool=fast_pool)
        return {"model": m.mid, "top": res.data["predictions"][0]["top"], "ref": f"upload:{sha}"}

    # ------------------------------------------------------------------ jobs
    def build_spec(body: dict):
        """A request body -> a validated Spec the server is willing to run (served models, its photos and
        datasets only)."""
        from cnnvis.images import SAMPLE_NAMES
        from cnnvis.jobs import KINDS, parse_spec
        from cnnvis.errors import unknown_name

        body = dict(body)
        kind = body.get("kind")
        if kind is None:
            raise CnnvisError(f"the job spec has no 'kind'; one of: {', '.join(sorted(KINDS))}")
        _need_string(body, "kind", f"a job kind: one of {', '.join(sorted(KINDS))}")
        if kind not in KINDS:
            raise unknown_name("job kind", str(kind), sorted(KINDS))
        _need_string(body, "model", f"a model id: one of {', '.join(served)}")
        _need_string(body, "judge", f"'none' or a model id: one of {', '.join(served)}")
        _need_string(body, DATA_KINDS_FIELD, "a dataset name; leave it out for the model's own dataset")
        m = model_of(body.get("model"))
        body["model"] = m.ref
        if body.get("weights") is not None:
            raise CnnvisError("the field 'weights' cannot be set here: the server runs only the models named on its "
                              "command line; leave it out")
        fields = KINDS[kind].model_fields
        _check_json_types(KINDS[kind], body)

        def photo(v):
            if isinstance(v, str):
                mt = UPLOAD_RE.match(v)
                if mt:
                    p = cache / "uploads" / f"{mt.group(1)}.png"
                    if not p.is_file() or p.is_symlink():
                        raise CnnvisError(f"no uploaded photo {v!r}; upload it first (POST /api/uploads)")
                    return str(p)
            if isinstance(v, list):
                return [photo(x) for x in v]
            return v

        for k in list(body):
            if k not in ("kind", "model"):
                body[k] = photo(body[k])
        if DATA_KINDS_FIELD in fields:
            allowed = {d for d in (m.data, data) if d}
            given = body.get(DATA_KINDS_FIELD)
            if given is None and fields[DATA_KINDS_FIELD].is_required():
                if not m.data:
                    raise CnnvisError(f"no dataset is known for model {m.mid!r}; start the server with --data")
                body[DATA_KINDS_FIELD] = m.data
            elif given is not None and given not in allowed:
                raise CnnvisError(f"dataset {given!r} is not served here; use {m.data!r}" if m.data else
                                  "no dataset is served here; start the server with --data")
        judge = body.get("judge")
        if isinstance(judge, str) and judge != "none":
            body["judge"] = model_of(judge).ref if (judge in served or judge in by_ref) else judge
        spec = parse_spec(body)
        uploads = (cache / "uploads").resolve()
        for p in spec.inputs():
            p = str(p)
            if p.startswith("sample:"):
                if p.split(":", 1)[1] not in SAMPLE_NAMES:
                    raise unknown_name("sample photo", p.split(":", 1)[1], SAMPLE_NAMES)
                continue
            q = Path(p)
            if q.parent.resolve() != uploads or not UPLOAD_RE.match("upload:" + q.stem) or q.suffix != ".png" \
                    or q.is_symlink() or not q.is_file():
                raise CnnvisError(f"photo {p!r} is not served here; give 'upload:<sha256>' (POST /api/uploads) "
                                  f"or 'sample:NAME'")
        for mname in spec.extra_models():  # a judge: a served model or one embedded in the package, never a
            if mname not in by_ref and not _embedded(mname):  # path or a download
                raise CnnvisError(f"model {mname!r} is not served here; use one of {', '.join(served)} or 'none'")
        return spec

    upload_dir = str(cache / "uploads") + os.sep

    def public(v):
        """Result data as the client named things: an uploaded photo's cache path -> 'upload:<sha>'."""
        if isinstance(v, str) and v.startswith(upload_dir) and v.endswith(".png"):
            return "upload:" + v[len(upload_dir):-4]
        if isinstance(v, list):
            return [public(x) for x in v]
        if isinstance(v, dict):
            return {k: public(x) for k, x in v.items()}
        if isinstance(v, float) and not math.isfinite(v):
            return None  # JSON has no NaN/inf: a non-finite number is shown as null, never a 500
        return v

    def job_out(job: Job) -> dict:
        out = {"id": job.id, "kind": job.spec.kind if job.spec is not None else None, "status": job.status,
               "progress": {"done": job.done, "total": job.total, "desc": job.desc}, "error": job.error,
               "result": None}
        if job.status == "done" and job.result_key:
            res = store.get(job.result_key)
            if res is None:  # the folder went away: ask again to recompute
                out["status"], out["error"] = "failed", "the stored result is gone; start the job again"
            else:
                out["kind"] = res.kind
                files = {n: f"/api/results/{res.key}/{n}" for n in sorted(res.files)}
                out["result"] = {"key": res.key, "kind": res.kind, "data": public(res.data), "files": files,
                                 "main": files.get(res.main) if res.main else None}
                if out["progress"]["total"] is None:
                    out["progress"] = {"done": 1, "total": 1, "desc": "done"}
        return out

    job_body = job_body_schema(list(served))

    @api.post("/jobs", response_model=JobOut, responses={400: {"description": "bad spec"},
                                                         404: {"description": "unknown model"}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": job_body}}}})
    def post_job(body: dict[str, Any] = Body(...)):
        spec = build_spec(body)
        return job_out(jobs.submit(spec))

    @api.get("/jobs/{job_id}", response_model=JobOut, responses={404: {"description": "no such job"}})
    def get_job(job_id: str):
        job = jobs.get(job_id) if KEY_RE.match(job_id) else None
        if job is None:
            raise HTTPException(404, f"no job {job_id[:70]!r}")
        return job_out(job)

    @api.delete("/jobs/{job_id}", response_model=JobOut, responses={404: {"description": "no such job"}})
    def delete_job(job_id: str):
        job = jobs.cancel(job_id) if KEY_RE.match(job_id) else None
        if job is None:
            job = jobs.get(job_id) if KEY_RE.match(job_id) else None
        if job is None:
            raise HTTPException(404, f"no job {job_id[:70]!r}")
        return job_out(job)

    @api.get("/health")
    def get_health() -> dict[str, Any]:
        """Liveness and the job counts: `runs` = jobs computed by the worker since start (joined requests
        and store hits add none)."""
        counts: dict[str, int] = {}
        for j in jobs.jobs():
            counts[j.status] = counts.get(j.status, 0) + 1
        return {"ok": True, "models": list(served), "runs": jobs.runs, "jobs": counts}

    @api.get("/kinds")
    def get_kinds() -> dict[str, dict]:
        from cnnvis.jobs import KINDS

        return {k: {"title": c.title, "doc": (c.__doc__ or "").strip(), "schema": c.model_json_schema()}
                for k, c in sorted(KINDS.items())}

    # ------------------------------------------------------------------ dataset images (the t-SNE hover)
    opened: dict[tuple[str, str | None], Any] = {}
    opened_lock = threading.Lock()

    @api.get("/models/{mid}/data/{index}.png", response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such dataset image"}})
    def get_data_image(mid: str, index: int, split: str | None = Query(None, max_length=40)):
        """Image `index` of the model's served dataset (positions as in an embed job's `points.index`)."""
        from cnnvis.data import open_dataset
        from cnnvis.jobs.result import png_bytes
        from cnnvis.viz import to_pil

        sm = model_of(mid)
        if not sm.data:
            raise HTTPException(404, f"no dataset is served for {mid!r}; start cnnvis serve with --data DATA")
        key = (sm.data, split)
        with opened_lock:
            ds = opened.get(key)
            if ds is None:
                try:
                    ds = opened[key] = open_dataset(sm.data, split=split)
                except CnnvisError as e:  # includes a split that is not a plain name (never a path)
                    raise HTTPException(404, str(e)) from None
                except (OSError, ValueError) as e:
                    raise HTTPException(404, f"cannot read {mid!r}'s dataset: {e}") from None
        if not 0 <= index < len(ds):
            raise HTTPException(404, f"{mid!r}'s dataset has {len(ds)} images; index {index} is out of range")
        x, _ = ds[index]
        return Response(png_bytes(to_pil(x)), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})

    # ------------------------------------------------------------------ result files
    @api.get("/results/{key}/{name}", response_class=Response,
             responses={200: {"content": {"image/png": {}, "application/octet-stream": {}}},
                        404: {"description": "no such result file"}})
    def get_result_file(key: str, name: str):
        blob, ctype = read_result_file(store, key, name)
        return Response(blob, media_type=ctype, headers={"X-Content-Type-Options": "nosniff",
                                                         "Cache-Control": "max-age=31536000, immutable"})

    app.include_router(api)

    # ------------------------------------------------------------------ pages and static files
    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static", check_dir=False), name="static")
    try:
        from cnnvis.web import pages
    except ImportError:
        pages = None
    if pages is not None and getattr(pages, "router", None) is not None:
        app.include_router(pages.router)
    if not any(getattr(r, "path", None) == "/" for r in app.routes):
        @app.get("/", include_in_schema=False)
        def root():
            return RedirectResponse(f"/m/{default_mid}")

    return app


def read_result_file(store, key: str, name: str) -> tuple[bytes, str]:
    """Bytes + content type of file `name` of the stored result `key`; 404 unless `key` is 64 hex chars,
    the result is in the store's index and `name` is one of its files (a plain file inside its folder,
    no symlink)."""
    nf = HTTPException(404, "no such result file")
    if not KEY_RE.match(key) or not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise nf
    folder = store.folder(key)
    if folder is None:
        raise nf
    objects = (store.root / "objects").resolve()
    try:
        if folder.is_symlink() or folder.resolve().parent.parent != objects:
            raise nf
        meta = json.loads((folder / "result.json").read_text())
        if name not in meta.get("files", ()) or name == "result.json":
            raise nf
        fd = os.open(folder / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            blob = f.read()
    except (OSError, ValueError, TypeError):
        raise nf from None
    ctype = {".npy": "application/octet-stream", ".json": "application/json"}.get(
        Path(name).suffix.lower()) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return blob, ctype


def _version() -> str:
    from cnnvis import __version__

    return __version__
