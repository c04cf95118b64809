"""Tiled gradients: the gradient of a spatially averaged objective over a large image, one tile at a time.

    vals = tiled_backward(lambda t: objective(forward(t)), xt, tile=512)

Memory is the image plus one tile's activations, whatever the image size: each tile's graph is
built, back-propagated and freed before the next. A random roll of the image before tiling
(optvis.transforms.Roll) moves the seams every step so they do not show (DeepDream).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def tile_starts(n: int, tile: int) -> list[int]:
    """Start offsets covering 0..n with tiles of `tile` (the last tile is flush with the end)."""
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, tile))
    return starts + [n - tile]


def _new_pixels(starts: list[int], n: int, tile: int) -> list[int]:
    """Pixels each tile adds that the previous tiles did not cover (the last tile may overlap)."""
    if len(starts) == 1:
        return [n]
    return [tile] * (len(starts) - 1) + [n - (starts[-2] + tile)]


def tiled_backward(value_fn: Callable[[Tensor], Tensor], x: Tensor, tile: int) -> Tensor:
    """Back-propagate -sum(value) of every tile of `x` (B, 3, H, W) into x's graph; returns (B,) values.

    Each tile's values are weighted by its share of the image's pixels (overlapping last tiles are
    weighted by their new pixels only), so for a spatial-mean objective the total approximates
    the whole-image value. The caller then steps the optimizer as after a normal backward.
    """
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        vals = value_fn(x)
        (-vals.sum()).backward()
        return vals.detach()
    base = x.detach()
    grad = torch.zeros_like(base)  # the only full-size buffer: tiles add their gradients in place
    total = None
    ys, xs = tile_starts(h, tile), tile_starts(w, tile)
    covered_y, covered_x = _new_pixels(ys, h, tile), _new_pixels(xs, w, tile)
    for y0, cy in zip(ys, covered_y):
        for x0, cx in zip(xs, covered_x):
            region = (..., slice(y0, y0 + min(tile, h)), slice(x0, x0 + min(tile, w)))
            t = base[region].requires_grad_(True)  # a view: no copy, and no full-size gradient per tile
            weight = (cy * cx) / float(h * w)
            v = value_fn(t) * weight
            (-v.sum()).backward()
            grad[region] += t.grad
            v = v.detach()
            total = v if total is None else total + v
    if x.requires_grad:
        x.backward(grad)
    return total
