"""DeepDream (Mordvintsev, Olah & Tyka 2015) on a user's photo, built on cnnvis.optvis.

    out = dream(vm, photo, layers=["stage4"])                 # PIL in -> PIL out, same size
    out = dream(vm, x, layers=["conv4_3"], channels=[12, 40])  # (1, C, H, W) in [0, 1] -> same shape

Gradient ascent on the mean squared activation ('l2', the Keras example) or the mean activation
('mean', the TensorFlow tutorial) of the chosen layers or channels, with the gradient divided by
its RMS each step, a random roll (jitter) each step, and octaves from small to full size; each
octave starts from the photo at that size plus the detail the previous octaves dreamed in.
Large photos are processed in tiles (`tile` pixels) so memory stays bounded; the random roll
moves the tile grid (not the image) every step, so seams do not show. The optimization is
optvis.render: no second loop here. Any channel count: a grey model dreams on a grey image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from cnnvis.errors import CnnvisError
from cnnvis.optvis.objectives import Objective
from cnnvis.utils import Progress


def dream_objective(layers: Sequence[str], channels: Sequence[int] | None = None, mode: str = "l2",
                    guide_feats: dict[str, Tensor] | None = None) -> Objective:
    """Sum over `layers` of the mean squared ('l2') or mean ('mean') activation, of all channels
    or only `channels`; with `guide_feats` {layer: (C, N) guide features}, each position's
    activation is dotted with its best-matching guide feature instead (Google's guided dream)."""
    if mode not in ("l2", "mean"):
        raise CnnvisError(f"unknown dream objective {mode!r}; use 'l2' or 'mean'")
    layers = list(layers)
    if not layers:
        raise CnnvisError("give at least one layer to dream at (e.g. layers=['stage4'])")
    chans = list(channels) if channels else None

    def fn(acts):
        total = 0
        for name in layers:
            a = acts[name]
            if a.dim() != 4:
                raise CnnvisError(f"layer {name!r} has no spatial output (shape {tuple(a.shape)}); dream at a conv layer")
            if chans is not None:
                bad = [c for c in chans if not 0 <= c < a.shape[1]]
                if bad:
                    raise CnnvisError(f"channel {bad[0]} is out of range for layer {name!r} (0..{a.shape[1] - 1})")
                a = a[:, chans]
            if guide_feats is not None:
                g = guide_feats[name].to(a.device, a.dtype)  # (C, N)
                f = a.flatten(2)  # (B, C, M)
                sim = torch.einsum("bcm,cn->bmn", f, g)
                best = g[:, sim.argmax(2)]  # (C, B, M)
                total = total + (f * best.permute(1, 0, 2)).sum(1).mean(1)
            elif mode == "l2":
                total = total + a.pow(2).flatten(1).mean(1)
            else:
                total = total + a.flatten(1).mean(1)
        return total

    return Objective(fn, layers, f"dream({','.join(layers)})")


def octave_sizes(h: int, w: int, octaves: int, scale: float, min_size: int) -> list[tuple[int, int]]:
    """Sizes from small to (h, w): each octave `scale` times the previous; octaves below
    `min_size` on the shorter side are dropped."""
    if octaves < 1:
        raise CnnvisError(f"octaves must be at least 1, got {octaves}")
    if not scale > 1:
        raise CnnvisError(f"octave_scale must be > 1, got {scale}")
    sizes = []
    for k in range(octaves - 1, -1, -1):
        f = scale ** k
        sh, sw = round(h / f), round(w / f)
        if min(sh, sw) >= min_size or k == 0:
            sizes.append((sh, sw))
    return sizes


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=size[0] < x.shape[-2])


def dream(
    model,
    image: Image.Image | Tensor,
    layers: Sequence[str] | None = None,
    channels: Sequence[int] | None = None,
    *,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps_per_octave: int = 10,
    step_size: float = 0.02,
    jitter: int = 32,
    tile: int = 512,
    objective: str = "l2",
    guide: Image.Image | Tensor | None = None,
    seed: int = 0,
    progress: Progress = None,
    watch=None,
) -> Tensor:
    """Dream on `image` (PIL, or (1, C, H, W) in [0, 1] with the model's C) -> (1, C, H, W) in [0, 1], CPU.

    Compute returns a tensor; `cnnvis.viz.to_pil` (or the `dream` job's PNG) makes the picture.

    step_size is in [0, 1] pixel units per step (the gradient is RMS-normalized); jitter is the
    largest random roll in pixels (it moves the tile grid, not the image); tile bounds the pixels
    per forward pass. Memory: about two copies of the image (the dream and its gradient) plus
    one tile's activations; the input tensor is not changed. watch: called as watch(step, image)
    after every step (step counts over all octaves; the image (1, C, h, w) is the octave's size).
    """
    from cnnvis.images import check_pixels, to_tensor
    from cnnvis.layers import dream_layers, resolve_layer
    from cnnvis.models.registry import as_vismodel
    from cnnvis.optvis import PixelImage, Roll, render
    from cnnvis.optvis.seeding import image_seed

    vm = as_vismodel(model)
    c = vm.input_shape[0]
    x0 = to_tensor(image, vm.preprocess.pil_mode or "RGB") if isinstance(image, Image.Image) else image
    if not torch.is_tensor(x0):
        raise CnnvisError(f"image must be a PIL image or a (1, {c}, H, W) tensor, got {type(image).__name__}")
    if x0.dim() == 3:
        x0 = x0.unsqueeze(0)
    if x0.dim() != 4 or x0.shape[0] != 1 or x0.shape[1] != c:
        raise CnnvisError(f"dream takes one image (1, {c}, H, W) for {vm.name} ({c} channel(s)) or a PIL image, "
                          f"got shape {tuple(x0.shape)}")
    check_pixels(x0, "the dream's image")
    h, w = x0.shape[-2:]
    if min(h, w) < vm.min_size:
        raise CnnvisError(f"image is {w}x{h} pixels, too small for {vm.name}; give at least {vm.min_size} pixels a side")
    for name, v in (("steps_per_octave", steps_per_octave), ("tile", tile), ("jitter", jitter + 1)):
        if not isinstance(v, int) or v < 1:
            raise CnnvisError(f"{name} must be a positive integer, got {v!r}")
    if tile < vm.min_size:
        raise CnnvisError(f"tile {tile} is smaller than the model's minimum input {vm.min_size}")
    if not step_size > 0:
        raise CnnvisError(f"step_size must be positive, got {step_size}")
    if layers is None:  # a layer about two thirds deep in this model (VGG: pool4; the embedded model: stage4)
        layers = dream_layers(vm, 1)
    for name in layers:
        resolve_layer(vm, name)  # unknown layers: clear error listing names, before any work
    device = vm.device
    x0 = x0.detach().to(device, torch.float32)  # no copy when it already is
    lo, hi = torch.aminmax(x0)
    if float(lo) < 0 or float(hi) > 1:
        x0 = x0.clamp(0, 1)
    sizes = octave_sizes(h, w, octaves, octave_scale, vm.min_size)

    guide_feats = _guide_features(vm, guide, layers, channels) if guide is not None else None
    obj = dream_objective(layers, channels, objective, guide_feats)
    # Memory: two full-size buffers made once, the dream and its gradient; every octave uses
    # their first pixels (so no later allocation is larger than a smaller octave's, and freed
    # memory is reused), and they swap roles between octaves (the upsampled dream lands in the
    # free one). Beyond them: the photo, one smaller-octave temporary, one tile's activations.
    n = c * h * w
    bufs = [torch.empty(n, device=device), torch.empty(n, device=device)]

    def view(i: int, size: tuple[int, int]) -> Tensor:
        return bufs[i][: c * size[0] * size[1]].view(1, c, *size)

    cur = 0
    img = view(cur, sizes[0])
    img.copy_(_resize(x0, sizes[0]))
    for k, size in enumerate(sizes):
        if k:  # next octave: upsample what the dream added into the free buffer, add the photo there
            nxt = view(1 - cur, size)
            torch.ops.aten.upsample_bilinear2d.out(img, list(size), False, None, None, out=nxt)
            cur, img = 1 - cur, nxt
            img.add_(_resize(x0, size)).clamp_(0, 1)
            _trim_heap()  # the resizing temporaries: gone before the larger octave's tiles
        param = PixelImage.from_image(img, copy=False)  # optimized in place
        param.pixels.grad = view(1 - cur, size).zero_()  # tiles add their gradients here
        res = render(
            vm, obj, "chollet2016", init=param, steps=steps_per_octave, lr=step_size, tile=tile,
            seed=image_seed(seed, f"octave {k}"), custom_transforms=Roll(jitter) if jitter else None,
            progress=progress, desc=f"octave {k + 1}/{len(sizes)} {size[1]}x{size[0]}",
            watch=(lambda n, im, k=k: watch(k * steps_per_octave + n, im)) if watch is not None else None,
            watch_every=1,
        )
        if res.stopped == "non-finite":
            raise CnnvisError(f"dream stopped: {res.message}")
        del param, res
        if k + 1 < len(sizes):
            _trim_heap()  # the tiles' activations are freed: give their pages back before the next octave
            img.sub_(_resize(x0, size))  # what the dream added at this octave, carried to the next
    del bufs
    return img.cpu()  # the last octave is the full-size dream, already in [0, 1]


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim; a no-op elsewhere). cnnvis.malloc's
    tune_malloc keeps freed memory for speed; between octaves, buffers of other sizes could not
    reuse it, so a large dream would otherwise hold every octave's temporaries at once."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import sys

        _LIBC = False
        if sys.platform.startswith("linux"):
            try:
                _LIBC = ctypes.CDLL("libc.so.6")
                _LIBC.malloc_trim  # noqa: B018  (glibc only)
            except (OSError, AttributeError):
                _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def _guide_features(vm, guide, layers, channels) -> dict[str, Tensor]:
    """(C, N) activations of the guide image (at the model's input size) for each layer."""
    from cnnvis.hooks import capture
    from cnnvis.utils import model_guard

    g = vm.preprocess.prepare(guide) if isinstance(guide, Image.Image) else guide
    feats = {}
    with model_guard(vm.model), capture(vm, list(layers)) as cap, torch.no_grad():
        cap.run(g.to(vm.device).float())
        for name in layers:
            a = cap[name][0]
            if a.dim() != 3:
                raise CnnvisError(f"layer {name!r} has no spatial output; a guided dream needs a conv layer")
            if channels:
                a = a[list(channels)]
            feats[name] = a.flatten(1).detach()
    return feats
