"""The JSON API under /api, one router per page family; each route gets the app's state as
`ctx: WebContext = Depends(get_ctx)` (cnnvis.web.context).

    models   GET /models, /models/{mid}/layers            (model and layer pages, every header)
    classes  GET /models/{mid}/classes                    (class page, photo page's "any class")
    photo    GET /photos, /photos/{name}.png; POST /uploads, /classify   (photo page)
    study    GET /models/{mid}/data/{index}.png           (study page: the t-SNE hover)
    jobs     POST/GET/DELETE /jobs, GET /health, /kinds, /results/{key}/{name}   (every page's jobs)
"""

from fastapi import APIRouter

from cnnvis.web.routers import classes, jobs, models, photo, study


def api_router() -> APIRouter:
    """Every API route under /api, in the order the OpenAPI schema lists them."""
    api = APIRouter(prefix="/api")
    for mod in (models, classes, photo, jobs, study):
        api.include_router(mod.router)
    return api
