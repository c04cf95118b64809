"""Feature maps of a photo, first-layer weights as images, maximal activation maps.

    layer = default_map_layer(vm)                  # small nets: the first conv's nonlinearity
    acts = layer_output(vm, x, layer)              # (B, C, h, w) under no_grad
    norm = normalize_maps(acts[0])                 # (C, h, w), each map to its own min..max
    tiles, info = weight_tiles(vm)                 # (out, 3 or 1, kh, kw) in [0, 1], one shared scale
    rows = max_maps(vm, xs, layer)                 # per image: strongest channel, its value, deconv projection

Default layer (`default_map_layer`): a small net (at most SMALL_NET conv layers, e.g. the MNIST
and CIFAR nets) shows its first conv block's output after the nonlinearity (relu1 of mnist_cnn:
32 maps of 28x28, still image-like); `deep=True` (maximal activation maps) the last conv
block's nonlinearity instead. A big net (EfficientNet-Lite0, VGG16) shows the middle one of
its classic layers (`cnnvis.layers.default_layers`: lite0's stage3, 80 maps of 14x14 at 224 px).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnnvis.errors import CnnvisError

SMALL_NET = 8  # conv layers: at most this many is a 'small net' for the default layer


# ---------------------------------------------------------------------- layers
def _leaf_order(vm) -> list:
    from cnnvis.layers import list_layers

    return list_layers(vm, leaves_only=True)


def default_map_layer(vm, *, deep: bool = False) -> str:
    """Dotted name of the default layer for feature maps (see the module doc)."""
    from cnnvis.attribution.modified_relu import RELU_LIKE
    from cnnvis.layers import conv_layers, default_layers

    convs = conv_layers(vm)
    if not convs:
        raise CnnvisError(f"model {vm.name!r} has no conv layers: there are no feature maps to show")
    if len(convs) > SMALL_NET:
        from cnnvis.layers import resolve_layer

        cands = default_layers(vm)
        return resolve_layer(vm, cands[(len(cands) - 1) // 2])
    infos = [i for i in _leaf_order(vm) if i.shape is not None]
    names = [i.name for i in infos]
    conv = convs[-1] if deep else convs[0]
    if conv not in names:
        return conv
    j = names.index(conv)
    for info in infos[j + 1:]:
        m = vm.model.get_submodule(info.name)
        if isinstance(m, nn.Conv2d) or not info.spatial:
            break
        if isinstance(m, RELU_LIKE):
            return info.name
    return conv


def spatial_layers(vm) -> list[str]:
    """Names (alias where there is one) of layers with (C, h, w) outputs, for error messages."""
    infos = _leaf_order(vm)
    rev = {n: a for a, n in vm.aliases.items()}
    alias_ok = [a for a, n in vm.aliases.items() if any(i.name == n and i.spatial for i in infos)]
    if alias_ok:
        return alias_ok
    return [rev.get(i.name, i.name) for i in infos if i.spatial]


def require_spatial(vm, layer: str, shape: Sequence[int]) -> None:
    """CnnvisError naming layers that do work unless `shape` (B, C, h, w) is a feature-map batch."""
    if len(shape) == 4:
        return
    ok = spatial_layers(vm)
    shown = ", ".join(ok[:12]) + (f", ... ({len(ok)} in all; see `cnnvis layers`)" if len(ok) > 12 else "")
    raise CnnvisError(f"layer {layer!r} has no spatial extent (output shape {tuple(shape[1:])}, not channels x "
                      f"height x width); give a layer with feature maps: {shown}")


def layer_output(vm, x: Tensor, layer: str) -> Tensor:
    """(B, C, H, W) images in [0, 1] -> the layer's output (detached), the forward stopped there.
    A size the net cannot take is a CnnvisError; the model's flags and hooks are restored."""
    from cnnvis.hooks import capture
    from cnnvis.utils import model_guard

    vm.check_input(x)
    if min(x.shape[-2:]) < vm.min_size:
        raise CnnvisError(f"{x.shape[-2]}x{x.shape[-1]} images are too small for {vm.name}: it takes at least "
                          f"{vm.min_size} px a side; give a larger size")
    with model_guard(vm.model), torch.no_grad(), capture(vm, [layer]) as cap:
        try:
            cap.run(x)
        except (RuntimeError, ValueError) as e:
            line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CnnvisError(f"{vm.name} cannot take {x.shape[-2]}x{x.shape[-1]} images ({line[:160]}); "
                              f"give the size it was made for, {vm.input_shape[1]}x{vm.input_shape[2]}") from None
        out = cap[layer]
    if not torch.is_tensor(out):
        raise CnnvisError(f"layer {layer!r} does not output a tensor; pick another layer")
    return out.detach()


# ---------------------------------------------------------------------- feature maps
def normalize_maps(acts: Tensor) -> Tensor:
    """(C, h, w) -> (C, h, w) in [0, 1]: each map scaled from its own min to its own max (flat maps: 0)."""
    a = acts.detach().float()
    lo = a.flatten(1).min(1).values.view(-1, 1, 1)
    hi = a.flatten(1).max(1).values.view(-1, 1, 1)
    span = hi - lo
    return torch.where(span > 0, (a - lo) / span.clamp_min(1e-30), torch.zeros_like(a))


def tile_scale(h: int, target: int = 48, most: int = 8) -> int:
    """Nearest-neighbour upscaling factor so an h-pixel tile is about `target` px (1..most)."""
    return max(1, min(most, -(-target // max(1, h))))


# ---------------------------------------------------------------------- weights
def weight_tiles(vm, layer: str | None = None) -> tuple[Tensor, dict]:
    """A conv layer's filters as images -> (tiles (out, 3 or 1, kh, kw) in [0, 1], info).

    One symmetric scale for all filters: tile = 0.5 + w / (2 s), s = max |w| over the whole
    layer, so 0 is mid-grey and colours/contrasts compare across filters. in = 3: RGB tiles (BGR
    models' filters flipped to RGB); in = 1: grey; any other in: each filter's mean over its input
    channels, grey, on the same kind of shared scale (s = max |mean|).
    """
    from cnnvis.layers import conv_layers, resolve_layer

    if layer is None:
        convs = conv_layers(vm)
        if not convs:
            raise CnnvisError(f"model {vm.name!r} has no Conv2d layer; there are no filters to show")
        name = convs[0]
    else:
        name = resolve_layer(vm, layer)
    m = vm.model.get_submodule(name)
    if not isinstance(m, nn.Conv2d):
        convs = conv_layers(vm)
        raise CnnvisError(f"layer {layer!r} is a {type(m).__name__}, not a Conv2d: it has no filters to show; "
                          f"give a conv layer ({', '.join(convs[:8])}{', ...' if len(convs) > 8 else ''})")
    w = m.weight.detach().float().cpu()  # (out, in/groups, kh, kw)
    cin = w.shape[1]
    if cin == 3:
        mode = "rgb"
        if vm.preprocess.bgr and cin == vm.channels:
            w = w.flip(1)
            mode = "rgb (BGR filters flipped)"
    elif cin == 1:
        mode = "grey"
    else:
        w = w.mean(1, keepdim=True)
        mode = f"grey: mean over {cin} input channels"
    s = float(w.abs().max())
    tiles = 0.5 + w / (2 * s) if s > 0 else torch.full_like(w, 0.5)
    return tiles, {"module": name, "shape": list(m.weight.shape), "mode": mode, "scale": s}


# ---------------------------------------------------------------------- maximal activation maps
def strongest_channels(acts: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(B, C, h, w) -> per image: channel with the highest spatial max (B,), that max (B,), and its
    position y (B,), x (B,). Ties: the lowest channel, the first position (row-major)."""
    B, C, h, w = acts.shape
    per = acts.flatten(2).max(2)                     # values (B, C), positions (B, C)
    val, ch = per.values.max(1)
    pos = per.indices.gather(1, ch[:, None])[:, 0]
    return ch, val, pos // w, pos % w


def max_maps(vm, xs: Sequence[Tensor], layer: str, project: str = "max", progress=None) -> list[dict]:
    """For each (1, C, H, W) image: its strongest channel at `layer` and the deconvnet projection of
    it (`project`='max': only the channel's strongest unit; 'map': the whole rectified map).
    Returns dicts {channel, value, y, x, recon (C, H, W)}."""
    from cnnvis.deconv import deconvnet

    out = []
    it = progress(list(xs), total=len(xs), desc="max maps") if progress else xs
    for x in it:
        acts = layer_output(vm, x, layer)
        require_spatial(vm, layer, acts.shape)
        ch, val, y, xx = strongest_channels(acts)
        res = deconvnet(vm, x, [layer], 1, seed=project, channels=[int(ch[0])])
        out.append({"channel": int(ch[0]), "value": float(val[0]), "y": int(y[0]), "x": int(xx[0]),
                    "recon": res.reconstructions[0][0]})
    return out
