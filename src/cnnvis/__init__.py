"""cnnvis: see what convolutional neural networks learn.

    import cnnvis
    vm = cnnvis.load("efficientnet_lite0")                    # or cnnvis.wrap(any_module)
    res = cnnvis.render(vm, cnnvis.class_logit("pelican"))    # activation maximization
    a = cnnvis.attribute(vm, x, "gradcam", target="pelican")  # (B, 1, H, W)
    r = cnnvis.run({"kind": "class_image", "target": "pelican"}, store="cache/")  # a job -> Result

Attributes are imported on first use, so `import cnnvis` (and `cnnvis --help`) stays fast.
`cnnvis.classify` and `cnnvis.dream` are the functions, also after their modules were imported
(`from cnnvis.classify import classify` still imports from the module).
"""

__version__ = "0.2.0"
DEFAULT_MODEL = "efficientnet_lite0"  # the embedded ImageNet classifier (offline)

from cnnvis.errors import CnnvisError  # noqa: E402

_LAZY = {
    # models and layers
    "load": "cnnvis.models", "wrap": "cnnvis.models", "list_models": "cnnvis.models",
    "list_layers": "cnnvis.layers", "capture": "cnnvis.hooks",
    # methods
    "render": "cnnvis.optvis", "class_logit": "cnnvis.optvis", "channel": "cnnvis.optvis",
    "dream": "cnnvis.dream", "deconvnet": "cnnvis.deconv", "sanity_check": "cnnvis.sanity",
    "classify": "cnnvis.classify",
    # jobs
    "run": "cnnvis.jobs", "make_spec": "cnnvis.jobs", "Store": "cnnvis.jobs", "Result": "cnnvis.jobs",
}

__all__ = ["CnnvisError", "DEFAULT_MODEL", "attribute", "__version__", *_LAZY]


def attribute(model, x, method: str = "saliency", target=None, **options):
    """Attribution of images `x` ((B, C, H, W) in [0, 1]) by `method` (see cnnvis.attribution.METHODS).

    Returns (B, C, H, W) (CAM methods: (B, 1, H, W)). `options` go to the method (layer, steps, ...).
    """
    from cnnvis.attribution import method as make

    return make(method, model, **options).attribute(x, target)


class _Package(type(__import__("sys"))):
    """The `cnnvis` module's type: a lazy name is always its function. Importing a submodule of the same
    name (`from cnnvis.classify import classify`, or any job that imports cnnvis.dream) makes Python set
    `cnnvis.classify` to the submodule; here that assignment keeps the function instead."""

    def __setattr__(self, name: str, value) -> None:
        if name in _LAZY and getattr(value, "__name__", None) == _LAZY[name] and hasattr(value, name):
            value = getattr(value, name)  # the submodule cnnvis.<name> -> its function cnnvis.<name>.<name>
        super().__setattr__(name, value)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnvis' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


__import__("sys").modules[__name__].__class__ = _Package
