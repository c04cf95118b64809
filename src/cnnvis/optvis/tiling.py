"""Tiled gradients: the gradient of a spatially averaged objective over a large image, one tile at a time.

    vals = tiled_backward(lambda t: objective(forward(t)), xt, tile=512)

Memory is the image, one gradient buffer and one tile's activations, whatever the image size:
each tile's graph is built, back-propagated and freed before the next. A random roll moves the
seams every step so they do not show (DeepDream): `shift` rolls the tile grid instead of the
image (the same values as tiling torch.roll(x, shift), without the rolled full-size copy).
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


def _segments(start: int, length: int, n: int) -> list[tuple[int, int, int]]:
    """Pieces (src, dst, len) of the index range start..start+length taken modulo n (at most two)."""
    start %= n
    if start + length <= n:
        return [(start, 0, length)]
    first = n - start
    return [(start, 0, first), (0, first, length - first)]


def tiled_backward(value_fn: Callable[[Tensor], Tensor], x: Tensor, tile: int,
                   shift: tuple[int, int] = (0, 0)) -> Tensor:
    """Back-propagate -sum(value) of every tile of roll(x, shift) (B, C, H, W) into x; returns (B,) values.

    Each tile's values are weighted by its share of the image's pixels (overlapping last tiles are
    weighted by their new pixels only), so for a spatial-mean objective the total approximates
    the whole-image value. A leaf x (a pixel parameter) gets its gradient added in x.grad, with
    no other full-size buffer; otherwise one buffer is back-propagated through x's graph. The
    caller then steps the optimizer as after a normal backward.
    """
    h, w = x.shape[-2:]
    dy, dx = int(shift[0]) % h, int(shift[1]) % w
    if h <= tile and w <= tile and dy == 0 and dx == 0:
        vals = value_fn(x)
        (-vals.sum()).backward()
        return vals.detach()
    base = x.detach()
    leaf = x.is_leaf and x.requires_grad
    if leaf:
        if x.grad is None:
            x.grad = torch.zeros_like(base)
        grad = x.grad  # tiles add into the parameter's own gradient: the only full-size buffer
    else:
        grad = torch.zeros_like(base)
    total = None
    ys, xs = tile_starts(h, tile), tile_starts(w, tile)
    covered_y, covered_x = _new_pixels(ys, h, tile), _new_pixels(xs, w, tile)
    th, tw = min(tile, h), min(tile, w)
    for y0, cy in zip(ys, covered_y):
        segs_y = _segments(y0 - dy, th, h)
        for x0, cx in zip(xs, covered_x):
            segs_x = _segments(x0 - dx, tw, w)
            if len(segs_y) == 1 and len(segs_x) == 1:
                t = base[..., segs_y[0][0]:segs_y[0][0] + th, segs_x[0][0]:segs_x[0][0] + tw]  # a view: no copy
            else:  # the tile crosses the roll's wrap-around: assemble it (one tile-sized copy)
                rows = torch.cat([base[..., sy:sy + n, :] for sy, _, n in segs_y], -2)
                t = torch.cat([rows[..., sx:sx + n] for sx, _, n in segs_x], -1)
            t.requires_grad_(True)
            weight = (cy * cx) / float(h * w)
            v = value_fn(t) * weight
            (-v.sum()).backward()
            for sy, ty, ny in segs_y:
                for sx, tx, nx in segs_x:
                    grad[..., sy:sy + ny, sx:sx + nx] += t.grad[..., ty:ty + ny, tx:tx + nx]
            v = v.detach()
            total = v if total is None else total + v
    if not leaf and x.requires_grad:
        x.backward(grad)
    return total
