"""Filter grids: render the first N (or chosen) channels of several layers, one batch per layer.

    rows = render_filters(vm, cnnvis.layers.default_layers(vm), 10)
    # [FilterRow(layer, [0..9], images (10, 3, s, s), final objective values (10,)), ...]
    # each row also has .size, .steps (the layer's plan), .rf, .dead, .grey, .seconds,
    # .norm (the BatchNorm whose output was optimized, or None), .live (where .dead was decided)
    img = cnnvis.viz.filters.filters_grid(vm, rows)  # the picture (viz): dead channels as a 'dead' tile

Per-layer plan (`layer_plan`). A filter of an early layer sees a few pixels (VGG16 conv1_1: a
3 px receptive field, conv2_1: 10 px, conv5_3: 196 px), so it is rendered on a small image with
few steps and drawn enlarged in the grid; deeper layers get more pixels and steps. On vgg16_hed:
conv1_1..conv2_1 get 48 px and 48 steps, conv3_x 48-64 px and 80 steps, conv4_x/conv5_x 80 px
and 80 steps. The cost of a step grows with the pixels times the depth (conv5_3 at 96 px costs
~0.19 s per image and step on one CPU thread, conv2_1 at 48 px ~0.01 s), so the deep layers
set the time: the old uniform 128 px x 128 steps took 12.5 min for the 13 x 10 grid on 2 cores.
Deep layers' objectives still rise after 80 steps (conv4_3: x1.6 from step 64 to 128) but
their pictures are formed; sparse early channels need more steps, and get them only where
needed: a live channel whose tile is flat is rendered again with RETRY_STEPS times the steps.
Explicit `size` / `steps` override the plan for every layer.

Objective. The channel objective reads the conv output (VGG's conv1_1.. aliases name the Conv2d,
i.e. the pre-ReLU value; cnnvis.hooks.capture copies it before an in-place ReLU can touch it) and
takes the mean of leaky_relu(value, LEAK). The post-ReLU mean has no gradient where a channel is
off, so a channel that is off on a grey start image stays grey. The plain pre-ReLU mean (Lucid's
choice) has a gradient, but for a sparse channel (one that fires on 1-5 % of photo pixels, as many
of VGG16's conv1_2..conv3_3 channels do) its optimum is still negative: the image stays a flat
field, because from a uniform image a spatial mean only moves the mean colour. Counting negative
values at LEAK = 0.1 lets the optimizer grow a pattern that fires on part of the image. For conv1_1
(linear in the pixels) the plain mean depends only on the mean colour and gives flat blobs with
noisy borders; the leaky mean gives the oriented colour edges and gratings these filters encode.
Transforms: the 'robust' recipe's random 2x coarsening erases the high frequencies that early
filters detect, so the filter grid uses Yosinski's jitter and a larger random start (init_sd 0.1)
unless a preset is given.

Where a channel is used (`cnnvis.layers.channel_points`). A conv channel is what the next layers
get after its BatchNorm and activation. When a BatchNorm takes a layer's output (conv -> BN -> ReLU,
timm's BatchNormAct2d, a Keras Conv2D -> BatchNormalization), the objective is the leaky mean of the
BatchNorm's output (its eval-mode affine map of the conv output, before the activation): a negative
BN gamma turns the channel over, so maximizing the conv output would drive the used channel down.
A layer named past those (the BatchNorm, the ReLU) is optimized where it is named.

Dead channels (`dead_channels`): a channel that has the same value at every position of the
scikit-image sample photos (cnnvis.images.SAMPLE_NAMES, shipped with scikit-image: nothing is
downloaded) where the next layers get it, after its BatchNorm and activation (after a ReLU: one that
is never > 0 before it; decided on the Conv2d output, a BN shift could hide or make one) is not
rendered; its tile says 'dead'. Where no activation follows (a linear bottleneck), only a constant
channel is dead: a negative one still carries a signal. A rendered tile is 'grey' when `flat_score` (the mean over colours of the
pixel standard deviation in the tile's centre, borders cut by 1/8) is below GREY_STD.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

LEAK = 0.1
GREY_STD = 0.04  # flat_score below this: a flat (grey or single-colour) tile
FILTER_DEFAULTS = {"transforms": "jitter", "init_sd": 0.1}  # render settings when no preset is given
RETRY_STEPS = 3  # a flat tile of a channel that fires on photos is rendered again with this many times the steps
RETRY_SETTINGS = {"lr": 0.1}  # ... and these (no preset given): the robust preset's lr 0.05 doubled


class FilterRow(tuple):
    """(layer, channels, images (n, C, s, s), values (n,)) plus .size, .steps, .rf, .dead (channels
    constant on the sample photos where they are used; their images are blank and values NaN), .grey
    (rendered channels whose tile is flat), .seconds, .norm and .live (see `dead_channels`). Unpacks as the 4-tuple render_filters always gave."""

    def __new__(cls, layer, chans, images, values, **info):
        row = super().__new__(cls, (layer, chans, images, values))
        row.__dict__.update(info)
        return row


def receptive_fields(vm, layers: Sequence[str]) -> dict[str, int]:
    """Theoretical receptive field (pixels) of each layer's output, from the kernels, strides and
    dilations of the Conv2d / pooling modules that run before it (in execution order). For a
    network with branches this adds up every branch, an overestimate; plans clamp it anyway."""
    import torch
    from torch import nn

    from cnnvis.layers import resolve_layer

    names = {resolve_layer(vm, n): n for n in layers}
    order: list[tuple[str, nn.Module]] = []
    handles = []
    model = vm.model
    for name, m in model.named_modules():
        if not list(m.children()):
            handles.append(m.register_forward_hook(lambda mod, i, o, name=name: order.append((name, mod))))
    from cnnvis.utils import model_guard

    try:
        with model_guard(model), torch.no_grad():  # eval: a train-mode BatchNorm must not move its statistics
            p = next(model.parameters(), None)
            x = torch.full((1, *vm.input_shape), 0.5, device=p.device if p is not None else "cpu")
            model(vm.preprocess.normalize(x))
    finally:
        for h in handles:
            h.remove()
    out: dict[str, int] = {}
    rf, jump = 1.0, 1.0
    last_rf: dict[str, float] = {}
    for name, m in order:
        k = s_ = d = None
        if isinstance(m, nn.Conv2d):
            k, s_, d = m.kernel_size[0], m.stride[0], m.dilation[0]
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s_ = m.stride if isinstance(m.stride, int) else (m.stride[0] if m.stride else k)
            d = getattr(m, "dilation", 1)
            d = d if isinstance(d, int) else d[0]
        if k is not None:
            rf += (k - 1) * d * jump
            jump *= s_
        for target in names:
            if name == target or name.startswith(target + "."):
                last_rf[target] = rf
    for target, alias in names.items():
        out[alias] = int(round(last_rf.get(target, rf)))
    return out


MIN_SIZE, MAX_SIZE = 48, 80  # px: the plan's range of image sizes
MIN_STEPS, MAX_STEPS = 48, 80


def layer_plan(rf: int | None, min_size: int = 1, *, max_size: int = MAX_SIZE) -> tuple[int, int]:
    """(image size, steps) for a layer whose receptive field is `rf` pixels (None: unknown).

    size: the receptive field plus a 24 px margin (jitter and border), rounded up to 16, within
    [max(MIN_SIZE, min_size), max_size]. steps: 16 * log2(rf) rounded to 16, within [MIN_STEPS, MAX_STEPS]."""
    if rf is None:
        return int(max(min_size, max_size)), MAX_STEPS
    size = int(min(max(max_size, min_size), max(MIN_SIZE, min_size, 16 * math.ceil((rf + 24) / 16))))
    steps = int(min(MAX_STEPS, max(MIN_STEPS, 16 * round(math.log2(max(rf, 2))))))
    return size, steps


DEAD_TOL = 1e-6  # a channel varying less than this times its layer's largest |value| is constant


def dead_channels(vm, layers: Sequence[str], photos=None, *, size: int | None = None,
                  points: dict | None = None) -> dict[str, list[int]]:
    """Channels of each layer that are dead where the next layers get them (`cnnvis.layers.channel_points`:
    after the BatchNorm and the activation that follow it): the same value at every position of every
    photo (default: the scikit-image sample photos, resized to the model's input size or `size`). After
    a ReLU: never > 0 before it. One forward pass for all layers."""
    import numpy as np
    import torch

    from cnnvis.hooks import capture
    from cnnvis.layers import channel_points

    points = points if points is not None else channel_points(vm, layers)

    if photos is None:
        from cnnvis.images import sample_photos

        photos = [im for _, im in sample_photos()]
    p = next(vm.model.parameters(), None)
    dev = p.device if p is not None else "cpu"
    c, h, w = vm.input_shape if size is None else (vm.input_shape[0], size, size)
    mode = "L" if c == 1 else "RGB"
    xs = [torch.from_numpy(np.array(im.convert(mode).resize((w, h)))).reshape(h, w, -1).permute(2, 0, 1)
          for im in photos]
    x = (torch.stack(xs).float() / 255).to(dev)
    from cnnvis.utils import model_guard

    out = {}
    live = [points[layer].live for layer in layers]
    with model_guard(vm.model), torch.no_grad(), capture(vm, live) as cap:
        cap.run(x)
        for layer, at in zip(layers, live):
            a = cap[at].float().transpose(0, 1).flatten(1)  # (C, photos * positions)
            lo, hi = a.aminmax(dim=1)
            tol = DEAD_TOL * max(1.0, float(a.abs().max()))
            out[layer] = [int(k) for k in (hi - lo <= tol).nonzero().flatten()]
    return out


def flat_score(images):
    """(n, C, H, W) in [0, 1] -> (n,): mean over colours of the pixel std in the centre (1/8 cut)."""
    h, w = images.shape[-2:]
    mh, mw = max(1, h // 8), max(1, w // 8)
    return images[..., mh:h - mh, mw:w - mw].flatten(2).std(2).mean(1)


def render_filters(vm, layers, channels, *, preset=None, steps=None, size=None, seed=0, batch=16, progress=None,
                   leak: float | None = LEAK, skip_dead: bool = True, retry: bool = True,
                   log: Callable[[str], None] | None = None, frames: int | None = None):
    """Render `channels` (list, or an int = first n) of each layer; returns [FilterRow].

    steps / size: None (or 'auto') = the layer's plan (`layer_plan`), an int = that for every layer.
    preset: None = the filter defaults (jitter, init_sd 0.1), else that preset as is. leak: see the
    module docstring (None = the plain mean). skip_dead: do not render channels that never fire on
    the sample photos. retry: render a flat tile (flat_score < GREY_STD) of a live channel again with
    RETRY_STEPS times the steps (and RETRY_SETTINGS without a preset); the tile is grey only if it is
    still flat. log: called with one line per layer when it is done (e.g. stderr).
    frames: also keep `frames` snapshots of each row as it forms (row.frames: a list of (n, C, s, s)
    uint8 tensors at 1/frames, 2/frames, ... of the layer's steps; watching does not change the images).
    Each filter's image depends on (seed, layer, channel, settings) only, not on `batch`."""
    import torch

    from cnnvis.errors import CnnvisError
    from cnnvis.layers import list_layers, resolve_layer
    from cnnvis.optvis import channel, render
    from cnnvis.utils import progress_iter

    steps = None if steps == "auto" else steps
    size = None if size == "auto" else size
    infos = list_layers(vm)
    shapes = {i.name: i.shape for i in infos}
    alias = {i.name: i.alias for i in infos if i.alias}
    plan = []
    for layer in layers:
        name = resolve_layer(vm, layer)
        shape = shapes.get(name)
        if not shape:
            raise CnnvisError(f"layer {layer!r} did not produce a tensor output")
        c = shape[0]
        chans = list(range(min(channels, c))) if isinstance(channels, int) else list(channels)
        bad = [k for k in chans if not 0 <= k < c]
        if bad:
            raise CnnvisError(f"channel {bad[0]} is out of range for layer {layer!r}, which has {c} channels (0..{c - 1})")
        plan.append((layer, chans))
    try:
        rfs = receptive_fields(vm, [p[0] for p in plan])
    except Exception:  # a model whose forward needs more than a plain image: plan without it
        rfs = {}
    from cnnvis.layers import channel_points

    points = channel_points(vm, [p[0] for p in plan])
    dead = dead_channels(vm, [p[0] for p in plan], points=points) if skip_dead else {}
    extra = {} if preset else dict(FILTER_DEFAULTS)
    rows = []
    t_all = time.perf_counter()
    for li, (layer, chans) in enumerate(progress_iter(plan, total=len(plan), desc="layers", progress=progress)):
        t0 = time.perf_counter()
        auto_size, auto_steps = layer_plan(rfs.get(layer), vm.min_size)
        s = size if size is not None else auto_size
        n_steps = steps if steps is not None else auto_steps
        affine = points[layer].affine  # a BatchNorm follows: its output is the channel (before the activation)
        dead_here = [k for k in chans if k in set(dead.get(layer, ()))]
        live = [k for k in chans if k not in dead_here]
        imgs = torch.full((len(chans), vm.input_shape[0], s, s), 0.5)
        vals = torch.full((len(chans),), float("nan"))
        pos = {k: i for i, k in enumerate(chans)}
        snaps = None
        if frames:
            snaps = [torch.full(imgs.shape, 128, dtype=torch.uint8) for _ in range(frames)]
            marks = [max(1, round(n_steps * (f + 1) / frames)) for f in range(frames)]  # the step of each frame
        for k in range(0, len(live), batch):
            part = live[k:k + batch]
            idx = [pos[ch] for ch in part]

            def watch(step, images, idx=idx):
                for f, m in enumerate(marks):
                    if m == step:
                        snaps[f][idx] = (images * 255).round().to(torch.uint8)

            res = render(vm, channel(layer, part, leak=leak, affine=affine), preset, steps=n_steps, size=s, seed=seed,
                         progress=progress, desc=f"{layer}", **extra,
                         **({"watch": watch, "watch_every": set(marks)} if snaps is not None else {}))
            for j, ch in enumerate(part):
                imgs[pos[ch]] = res.images[j]
                vals[pos[ch]] = res.final_values[j]
        score = flat_score(imgs)
        retried = [k for k in live if float(score[pos[k]]) < GREY_STD] if retry else []
        for k in range(0, len(retried), batch):  # sparse channels: slower to grow a pattern
            part = retried[k:k + batch]
            res = render(vm, channel(layer, part, leak=leak, affine=affine), preset, steps=n_steps * RETRY_STEPS,
                         size=s, seed=seed,
                         progress=progress, desc=f"{layer} (again)", **extra, **({} if preset else RETRY_SETTINGS))
            for j, ch in enumerate(part):
                imgs[pos[ch]] = res.images[j]
                vals[pos[ch]] = res.final_values[j]
        if retried:
            score = flat_score(imgs)
        grey = [k for k in live if float(score[pos[k]]) < GREY_STD]
        secs = time.perf_counter() - t0
        if snaps is not None:  # the last frame is the row as it ends (re-rendered tiles included)
            snaps[-1] = (imgs * 255).round().to(torch.uint8)
        rows.append(FilterRow(layer, chans, imgs, vals, size=s, steps=n_steps, rf=rfs.get(layer), dead=dead_here,
                              grey=grey, retried=retried, seconds=secs, flat=[round(float(v), 4) for v in score],
                              frames=snaps, norm=points[layer].norm, live=points[layer].live))
        if log is not None:
            note = (f", dead {len(dead_here)}" if dead_here else "") + (f", grey {len(grey)}" if grey else "")
            shown = layer if layer != resolve_layer(vm, layer) else alias.get(layer, layer)
            log(f"filters: {shown} ({li + 1}/{len(plan)}) {secs:.1f} s ({s} px, {n_steps} steps{note}; "
                f"{time.perf_counter() - t_all:.0f} s so far)")
    return rows
