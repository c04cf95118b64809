"""The microscope: a local web UI (FastAPI + uvicorn) over every job kind.

    from cnnvis.web.app import create_app
    app = create_app(["efficientnet_lite0", "runs/mnist"], cache="~/.cache/cnnvis/web")
    # or: cnnvis serve --model efficientnet_lite0 --model runs/mnist

The pages and the JSON API (`/api`, described at `/openapi.json`) compute only through
`cnnvis.jobs.run` and keep results only in `cnnvis.jobs.Store` (the cache folder).
"""
