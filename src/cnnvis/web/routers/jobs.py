"""Jobs and their results: every page's computations (POST a spec, poll, cancel), the stored result
files, health and the kinds' schemas."""

from __future__ import annotations

import json
import mimetypes
import os
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Response

from cnnvis.web.context import WebContext, alias_text, get_ctx
from cnnvis.web.jobs import Job
from cnnvis.web.policy import build_spec, public, public_text
from cnnvis.web.schemas import JobOut, job_body_schema

KEY_RE = re.compile(r"^[0-9a-f]{64}$")

router = APIRouter()


def job_out(ctx: WebContext, job: Job) -> dict:
    """A job's status as the API shows it, with its stored result's data and file URLs once done."""
    m = ctx.by_ref.get(job.spec.model) if job.spec is not None else None
    out = {"id": job.id, "kind": job.spec.kind if job.spec is not None else None, "status": job.status,
           "progress": {"done": job.done, "total": job.total, "desc": alias_text(m, job.desc)},
           "error": public_text(ctx, alias_text(m, job.error)) if job.error else job.error, "result": None,
           "lane": job.lane if job.spec is not None else None, "created": job.created, "started": job.started,
           "ended": job.ended, "waiting": None}
    if job.status == "queued":
        n = ctx.jobs.ahead(job)
        what = "page render" if job.lane == "render" else "quick job"
        out["waiting"] = f"waiting: {n} {what}{'s' if n != 1 else ''} ahead" if n else "starting…"
    if job.status == "done" and job.result_key:
        res = ctx.store.get(job.result_key)
        if res is None:  # the folder went away: ask again to recompute
            out["status"], out["error"] = "failed", "the stored result is gone; start the job again"
        else:
            out["kind"] = res.kind
            files = {n: f"/api/results/{res.key}/{n}" for n in sorted(res.files)}
            out["result"] = {"key": res.key, "kind": res.kind, "data": public(ctx, res.data), "files": files,
                             "main": files.get(res.main) if res.main else None}
            if out["progress"]["total"] is None:
                out["progress"] = {"done": 1, "total": 1, "desc": "done"}
    return out


# the documented body; the served model ids are filled into 'model' by the app's openapi()
JOB_BODY_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": job_body_schema([])}}}}


@router.post("/jobs", response_model=JobOut, responses={400: {"description": "bad spec"},
                                                        404: {"description": "unknown model"}},
             openapi_extra=JOB_BODY_DOC)
def post_job(body: dict[str, Any] = Body(...), watch: str | None = Query(None, max_length=64),
             ctx: WebContext = Depends(get_ctx)):
    """Start (or join, or fetch from the store) a job. watch=PAGE_ID: a page shows it; it is cancelled
    when every such page was left (POST /api/jobs/{id}/leave) or none polls it for a minute."""
    spec = build_spec(ctx, body)
    return job_out(ctx, ctx.jobs.submit(spec, watch=watch))


@router.get("/jobs/{job_id}", response_model=JobOut, responses={404: {"description": "no such job"}})
def get_job(job_id: str, watch: str | None = Query(None, max_length=64), ctx: WebContext = Depends(get_ctx)):
    """A job's status. watch=PAGE_ID (the pages' polls): that page still shows it."""
    job = ctx.jobs.get(job_id) if KEY_RE.match(job_id) else None
    if job is None:
        raise HTTPException(404, f"no job {job_id[:70]!r}")
    if watch:
        ctx.jobs.seen(job_id, watch)
    return job_out(ctx, job)


@router.post("/jobs/{job_id}/leave", response_model=JobOut, responses={404: {"description": "no such job"}})
def leave_job(job_id: str, watch: str | None = Query(None, max_length=64), ctx: WebContext = Depends(get_ctx)):
    """Page `watch` (default: every page) showing this job was left: once no page watches it, a watched
    job is cancelled unless a page asks for it within 2 s (pages send this on pagehide)."""
    job = ctx.jobs.leave(job_id, watch) if KEY_RE.match(job_id) else None
    if job is None:
        job = ctx.jobs.get(job_id) if KEY_RE.match(job_id) else None
    if job is None:
        raise HTTPException(404, f"no job {job_id[:70]!r}")
    return job_out(ctx, job)


@router.delete("/jobs/{job_id}", response_model=JobOut, responses={404: {"description": "no such job"}})
def delete_job(job_id: str, ctx: WebContext = Depends(get_ctx)):
    job = ctx.jobs.cancel(job_id) if KEY_RE.match(job_id) else None
    if job is None:
        job = ctx.jobs.get(job_id) if KEY_RE.match(job_id) else None
    if job is None:
        raise HTTPException(404, f"no job {job_id[:70]!r}")
    return job_out(ctx, job)


@router.get("/health")
def get_health(ctx: WebContext = Depends(get_ctx)) -> dict[str, Any]:
    """Liveness and the job counts: `runs` = jobs computed by the worker since start (joined requests
    and store hits add none)."""
    counts: dict[str, int] = {}
    for j in ctx.jobs.jobs():
        counts[j.status] = counts.get(j.status, 0) + 1
    return {"ok": True, "models": list(ctx.served), "runs": ctx.jobs.runs, "jobs": counts}


@router.get("/kinds")
def get_kinds() -> dict[str, dict]:
    from cnnvis.jobs import KINDS

    return {k: {"title": c.title, "doc": (c.__doc__ or "").strip(), "schema": c.model_json_schema()}
            for k, c in sorted(KINDS.items())}


@router.get("/results/{key}/{name}", response_class=Response,
            responses={200: {"content": {"image/png": {}, "application/octet-stream": {}}},
                       404: {"description": "no such result file"}})
def get_result_file(key: str, name: str, ctx: WebContext = Depends(get_ctx)):
    blob, ctype = read_result_file(ctx.store, key, name)
    return Response(blob, media_type=ctype, headers={"X-Content-Type-Options": "nosniff",
                                                     "Cache-Control": "max-age=31536000, immutable"})


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
