"""The photo page: bundled photos, uploads, and the quick classify of an upload (its own model copies:
never waiting behind a render)."""

from __future__ import annotations

import io

from fastapi import APIRouter, Depends, File, Form, HTTPException, Response, UploadFile

from cnnvis import defaults as D
from cnnvis.web.context import WebContext, get_ctx
from cnnvis.web.schemas import ClassifyOut, PhotoOut, UploadOut
from cnnvis.web.uploads import UPLOAD_RE, read_upload, save_upload

router = APIRouter()
_PHOTO_PNG: dict[str, bytes] = {}  # bundled photo name -> PNG bytes (package data: the same for every app)


@router.get("/photos", response_model=list[PhotoOut])
def get_photos():
    from cnnvis.images import SAMPLE_NAMES

    return [{"ref": f"sample:{n}", "name": n, "url": f"/api/photos/{n}.png"} for n in SAMPLE_NAMES]


@router.get("/photos/{name}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {"description": "unknown photo"}})
def get_photo(name: str):
    from cnnvis.images import SAMPLE_NAMES, sample_photo

    if name not in SAMPLE_NAMES:
        raise HTTPException(404, f"no bundled photo {name!r}; one of {', '.join(SAMPLE_NAMES)}")
    if name not in _PHOTO_PNG:
        buf = io.BytesIO()
        sample_photo(name).save(buf, format="PNG")
        _PHOTO_PNG[name] = buf.getvalue()
    return Response(_PHOTO_PNG[name], media_type="image/png", headers={"Cache-Control": "max-age=86400"})


@router.post("/uploads", response_model=UploadOut, status_code=201,
             responses={400: {"description": "not a readable image"}, 413: {"description": "too large"},
                        415: {"description": "not an image type"}})
async def post_upload(file: UploadFile = File(...), ctx: WebContext = Depends(get_ctx)):
    sha, w, h = await save_upload(ctx, file)
    return {"ref": f"upload:{sha}", "width": w, "height": h}


@router.get("/uploads/{sha}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such upload"}})
def get_upload(sha: str, ctx: WebContext = Depends(get_ctx)):
    """An uploaded photo by its content key (the sha256 of its PNG): a photo page's URL names it so."""
    if not UPLOAD_RE.match(f"upload:{sha}"):
        raise HTTPException(404, "no such upload; an upload is named by the 64 hex digits of its sha256")
    blob = read_upload(ctx.uploads / f"{sha}.png", sha)
    if blob is None:  # missing, or damaged on disk (its bytes no longer hash to its name)
        raise HTTPException(404, f"no uploaded photo {sha[:12]}… (missing or damaged); upload it again")
    return Response(blob, media_type="image/png", headers={"Cache-Control": "max-age=31536000, immutable",
                                                           "X-Content-Type-Options": "nosniff"})


@router.post("/classify", response_model=ClassifyOut,
             responses={400: {"description": "not a readable image"}, 413: {"description": "too large"},
                        415: {"description": "not an image type"}})
async def post_classify(file: UploadFile = File(...), model: str | None = Form(None),
                        top: int = Form(D.Classify.top, ge=1, le=1000), ctx: WebContext = Depends(get_ctx)):
    m = ctx.model_of(model)
    if m.vm.task != "classification":
        raise HTTPException(400, f"model {m.mid!r} is not a classifier ({m.vm.task})")
    sha, _, _ = await save_upload(ctx, file)
    from starlette.concurrency import run_in_threadpool

    from cnnvis.jobs import run

    spec = {"kind": "classify", "model": m.ref, "images": [str(ctx.uploads / f"{sha}.png")], "top": top}
    res = await run_in_threadpool(run, spec, store=ctx.store, pool=ctx.fast_pool)
    return {"model": m.mid, "top": res.data["predictions"][0]["top"], "ref": f"upload:{sha}"}
