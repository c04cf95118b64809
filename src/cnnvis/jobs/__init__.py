"""The job layer: every capability as a typed spec, one `run`, results that keep and show themselves.

    from cnnvis.jobs import run, make_spec, Store, KINDS
    spec = make_spec("attribution", image="cat.jpg", method="gradcam", target="tabby")
    res = run(spec, store=Store("cache/"))     # a second identical call is served from the store
    res.save("out/"); res.to_dict(); res      # (in Jupyter: the picture)

The CLI, the report, the web app and Ray workers build specs and call `run`; nothing else.
"""

from cnnvis.jobs import kinds_model as _kinds_model  # noqa: F401  (registers the job kinds: classify)
from cnnvis.jobs import kinds_optvis as _kinds_optvis  # noqa: F401  (class image, filters)
from cnnvis.jobs import kinds_dream as _kinds_dream  # noqa: F401
from cnnvis.jobs import kinds_attribution as _kinds_attribution  # noqa: F401  (attribution, deconv, sanity)
from cnnvis.jobs import kinds_regularizers as _kinds_regularizers  # noqa: F401  (the regularizer study)
from cnnvis.jobs import kinds_embed as _kinds_embed  # noqa: F401
from cnnvis.jobs import kinds_study as _kinds_study  # noqa: F401  (feature maps, weights, max maps, top examples)
from cnnvis.jobs import kinds_eval as _kinds_eval  # noqa: F401
from cnnvis.jobs import kinds_evolution as _kinds_evolution  # noqa: F401  (features across training)
from cnnvis.jobs import kinds_lenses as _kinds_lenses  # noqa: F401  (occlusion, feature inversion, model comparison)
from cnnvis.jobs.result import Result
from cnnvis.jobs.runner import (
    CacheWarning, Cancelled, JobContext, ModelPool, default_pool, file_hash, job_key, run, store_result,
)
from cnnvis.jobs.spec import KINDS, Spec, make_spec, parse_spec, register
from cnnvis.jobs.store import Store

__all__ = ["KINDS", "Spec", "Result", "Store", "ModelPool", "JobContext", "Cancelled", "CacheWarning", "run",
           "store_result", "make_spec", "parse_spec", "register", "job_key", "file_hash", "default_pool"]
