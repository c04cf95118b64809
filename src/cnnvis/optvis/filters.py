"""Filter grids: render the first N (or chosen) channels of several layers, one batch per layer.

    rows = render_filters(vm, cnnvis.layers.default_layers(vm), 10, steps=128, size=128)
    # [(layer, [0..9], images (10, 3, 128, 128), final objective values (10,)), ...]
"""

from __future__ import annotations


def render_filters(vm, layers, channels, *, preset=None, steps=None, size=128, seed=0, batch=16, progress=None):
    """Render `channels` (list, or an int = first n) of each layer; returns [(layer, chans, images (n,C,H,W), values (n,))].

    Each filter's image depends on (seed, layer, channel, settings) only, not on `batch`."""
    import torch

    from cnnvis.errors import CnnvisError
    from cnnvis.layers import list_layers, resolve_layer
    from cnnvis.optvis import channel, render
    from cnnvis.utils import progress_iter

    shapes = {i.name: i.shape for i in list_layers(vm, size)}
    plan = []
    for layer in layers:
        name = resolve_layer(vm, layer)
        shape = shapes.get(name)
        if not shape:
            raise CnnvisError(f"layer {layer!r} did not produce a tensor output for a {size}px input")
        c = shape[0]
        chans = list(range(min(channels, c))) if isinstance(channels, int) else list(channels)
        bad = [k for k in chans if not 0 <= k < c]
        if bad:
            raise CnnvisError(f"channel {bad[0]} is out of range for layer {layer!r}, which has {c} channels (0..{c - 1})")
        plan.append((layer, chans))
    rows = []
    for layer, chans in progress_iter(plan, total=len(plan), desc="layers", progress=progress):
        imgs, vals = [], []
        for k in range(0, len(chans), batch):
            part = chans[k:k + batch]
            res = render(vm, channel(layer, part), preset, steps=steps, size=size, seed=seed,
                         progress=progress, desc=f"{layer}")
            imgs.append(res.images)
            vals.append(res.final_values)
        rows.append((layer, chans, torch.cat(imgs), torch.cat(vals)))
    return rows
