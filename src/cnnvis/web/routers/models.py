"""Models and their layers: the model page, the layer page and every page's header."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from cnnvis.web.context import WebContext, get_ctx
from cnnvis.web.schemas import LayerOut, ModelInfo

router = APIRouter()


@router.get("/models", response_model=list[ModelInfo])
def get_models(ctx: WebContext = Depends(get_ctx)):
    return [s.info() for s in ctx.served.values()]


@router.get("/models/{mid}/layers", response_model=list[LayerOut])
def get_layers(mid: str, ctx: WebContext = Depends(get_ctx)):
    return ctx.model_of(mid).layers
