"""The job specs the web pages ask for, shared with `cnnvis render-all` so both hit one cache.

    layer_page_spec("efficientnet_lite0", "stage3", page=0)   # filters job of channels 0..15
    channel_spec("runs/mnist", "conv1", c=5, seed=2)          # one channel at seed 2 (the layer's plan)

The layer pages' quick CPU settings: 48 steps; 80-px renders for nets made for large inputs, the
model's own side (28 for MNIST, 32 for CIFAR) for small nets. A channel page renders its channel with
the filters spec's defaults (the layer plan). The photo page's DeepDream is a quick preview too
(PHOTO_DREAM_QUICK, said so on the page); its deconvnet and attribution maps use the spec defaults.
"""

from __future__ import annotations

import math
import threading

from cnnvis.errors import CnnvisError

QUICK_STEPS = 48
QUICK_SIZE = 80  # px a side for ImageNet-sized models
PER_PAGE = 16
# The photo page's DeepDream preview: a panel the user waits for on a shared server, so fewer octaves and steps
# on a photo shrunk to 320 px, instead of the `dream` spec's defaults (cnnvis.defaults.Dream: 4 octaves x 10
# steps at the photo's own size, up to 2048 px). The page says so and shows the `cnnvis dream` line.
PHOTO_DREAM_QUICK = {"max_side": 320, "octaves": 3, "steps": 8}
# The study page's t-SNE map: 1000 images by default (the `embed` spec's own default, cnnvis.defaults.Embed,
# is 2000: t-SNE time grows faster than the image count); the form shows the number and takes another.
STUDY_EMBED_LIMIT = 1000

_LAYERS: dict[str, dict] = {}  # model ref -> {dotted name: LayerInfo}
_VMS: dict[str, object] = {}
_MIDS: dict[str, str] = {}  # the web app's model ids -> refs
_LOCK = threading.Lock()


def canonical_ref(model: str) -> str:
    """How a model is named in specs: a registry name as is, a checkpoint by its absolute path (so that
    `cnnvis serve` and `cnnvis render-all` started from different folders share results): `models.refs`."""
    from cnnvis.models.refs import canonical_ref as canonical

    return canonical(model)


def model_layers(pool, model_ref: str, vm) -> list:
    """Every module of the loaded `vm` (containers too) as `cnnvis.layers.LayerInfo` rows, from the `layers`
    job (run under the model's lock, through `pool`; no store)."""
    from cnnvis.jobs import make_spec, run
    from cnnvis.layers import LayerInfo

    res = run(make_spec("layers", model=model_ref, leaves_only=False), pool=pool, vm=vm)
    return [LayerInfo(d["name"], d["type"], tuple(d["shape"]) if d["shape"] is not None else None, d["alias"],
                      d["params"]) for d in res.data["layers"]]


def remember(model_ref: str, vm, layers, mid: str | None = None) -> None:
    """Known model + its `list_layers` (the app calls this at start, before any job runs: building the
    list hooks the model, which must never happen beside a running job). `mid`: its web id."""
    with _LOCK:
        _VMS[model_ref] = vm
        _LAYERS[model_ref] = {i.name: i for i in layers}
        if mid is not None:
            _MIDS[mid] = model_ref


def _ref(model: str) -> str:
    with _LOCK:
        if model in _MIDS:
            return _MIDS[model]
    return canonical_ref(model)


def _vm(model_ref: str):
    with _LOCK:
        if model_ref in _VMS:
            return _VMS[model_ref]
    from cnnvis.jobs import default_pool

    vm = default_pool().get(model_ref)
    remember(model_ref, vm, model_layers(default_pool(), model_ref, vm))
    return vm


def quick_size(model_ref: str) -> int:
    """Render side for `model_ref`: its own input side when smaller than QUICK_SIZE, else QUICK_SIZE."""
    vm = _vm(model_ref)
    side = min(vm.input_shape[1:])
    return max(side if side < QUICK_SIZE else QUICK_SIZE, vm.min_size)


def layer_channels(model_ref: str, layer: str) -> tuple[str, int]:
    """(dotted layer name, number of channels) of a spatial layer; CnnvisError for others."""
    from cnnvis.layers import resolve_layer

    vm = _vm(model_ref)
    dotted = resolve_layer(vm, layer)
    with _LOCK:
        info = _LAYERS[model_ref].get(dotted)
    if info is None or not info.spatial:
        raise CnnvisError(f"layer {layer!r} of {vm.name} has no (C, H, W) output to visualize; pick a conv layer")
    return dotted, int(info.shape[0])


def n_pages(model_ref: str, layer: str, per_page: int = PER_PAGE) -> int:
    return math.ceil(layer_channels(_ref(model_ref), layer)[1] / per_page)


def layer_page_spec(model_ref: str, layer: str, page: int, per_page: int = PER_PAGE, seed: int = 0,
                    steps: int | None = None, size: int | None = None) -> dict:
    """The `filters` job spec of one page of a layer's grid: channels page*per_page .. +per_page.
    `model_ref`: a registry name, a checkpoint path or a web model id. steps/size: other than the
    pages' quick settings (QUICK_STEPS, quick_size) - such results are not the ones the pages show."""
    model_ref = _ref(model_ref)
    dotted, n = layer_channels(model_ref, layer)
    pages = math.ceil(n / per_page)
    if not isinstance(page, int) or page < 0 or page >= pages:
        raise CnnvisError(f"page {page} of layer {layer!r} does not exist; it has pages 0..{pages - 1} "
                          f"({n} channels, {per_page} a page)")
    chans = list(range(page * per_page, min(n, (page + 1) * per_page)))
    return {"kind": "filters", "model": model_ref, "layers": [dotted], "channels": chans,
            "steps": steps or QUICK_STEPS, "size": size or quick_size(model_ref), "seed": seed}


def channel_spec(model_ref: str, layer: str, c: int, seed: int = 0) -> dict:
    """The `filters` job spec of one channel at one seed (the channel page shows seeds 0..2). Steps and
    size are the spec's defaults: the layer's own plan from its receptive field
    (`cnnvis.optvis.filters.layer_plan`), as `cnnvis filters --layers L --channels C` renders it; the
    layer page's 16-channel grids keep the quick settings."""
    model_ref = _ref(model_ref)
    dotted, n = layer_channels(model_ref, layer)
    if not isinstance(c, int) or c < 0 or c >= n:
        raise CnnvisError(f"channel {c} of layer {layer!r} does not exist; it has channels 0..{n - 1}")
    return {"kind": "filters", "model": model_ref, "layers": [dotted], "channels": [c], "seed": seed}
