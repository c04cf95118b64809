"""The study page: images of a model's served dataset (the t-SNE scatter's hover)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Response

from cnnvis.errors import CnnvisError
from cnnvis.web.context import WebContext, get_ctx

router = APIRouter()


@router.get("/models/{mid}/data/{index}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such dataset image"}})
def get_data_image(mid: str, index: int, split: str | None = Query(None, max_length=40),
                   ctx: WebContext = Depends(get_ctx)):
    """Image `index` of the model's served dataset (positions as in an embed job's `points.index`)."""
    from cnnvis.data import open_dataset
    from cnnvis.jobs.result import png_bytes
    from cnnvis.viz import to_pil

    sm = ctx.model_of(mid)
    if not sm.data:
        raise HTTPException(404, f"no dataset is served for {mid!r}; start cnnvis serve with --data DATA")
    key = (sm.data, split)
    with ctx.opened_lock:
        ds = ctx.opened.get(key)
        if ds is None:
            try:
                ds = ctx.opened[key] = open_dataset(sm.data, split=split)
            except CnnvisError as e:  # includes a split that is not a plain name (never a path)
                raise HTTPException(404, str(e)) from None
            except (OSError, ValueError) as e:
                raise HTTPException(404, f"cannot read {mid!r}'s dataset: {e}") from None
    if not 0 <= index < len(ds):
        raise HTTPException(404, f"{mid!r}'s dataset has {len(ds)} images; index {index} is out of range")
    x, _ = ds[index]
    return Response(png_bytes(to_pil(x)), media_type="image/png",
                    headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})
