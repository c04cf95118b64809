"""Class search: the class page's and the photo page's "any class" boxes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from cnnvis.web.context import WebContext, get_ctx
from cnnvis.web.schemas import ClassOut

router = APIRouter()


@router.get("/models/{mid}/classes", response_model=list[ClassOut])
def get_classes(mid: str, q: str = Query("", max_length=200), ctx: WebContext = Depends(get_ctx)):
    vm = ctx.model_of(mid).vm
    labels = list(vm.labels) if vm.labels is not None else []
    ql = q.strip().lower()
    hits = [{"index": i, "label": str(lab)} for i, lab in enumerate(labels)
            if not ql or ql in str(lab).lower() or ql == str(i)]
    return hits[:50]
