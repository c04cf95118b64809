"""Occlusion sensitivity (Zeiler & Fergus 2014, section 4.2): slide a grey patch over the photo and
record, at each position of the patch, the class probability, the most probable class and the total
activation of one feature map (the layer's strongest channel on the unoccluded photo).

    res = occlusion(vm, x, target="pelican", window=32, stride=8)   # x: (1, C, H, W) in [0, 1]
    res.probs          # (ny, nx) probability of the target with the patch at each position
    res.top1           # (ny, nx) most probable class there; res.activations: (ny, nx) the feature map's total
    res.attribution    # (H, W) Captum's Occlusion map: p(unoccluded) - p(occluded), averaged over the windows
                       #        that cover each pixel (equal to captum.attr.Occlusion with the same settings)

Positions follow Captum: the patch's top-left corner at 0, s, 2s, ... up to and including the first
one whose window reaches the image's edge (ceil((H - k) / s) + 1 positions a side); a window that
would run past the edge is cut there. Every pixel is covered at least once (stride <= window).
Occluded images go through the network `batch` at a time, one forward each, under no_grad; the
probability, the label and the feature map all come from that one forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnvis.errors import CnnvisError


@dataclass
class OcclusionResult:
    """What `occlusion` returns (tensors on the CPU).

    target: the class index (None for a model that is not a classifier: the score is then the mean
    of its output). window, stride: (h, w) in pixels; ys, xs: the patch's top-left corners.
    base_score: the score of the unoccluded image; scores: (ny, nx) the score with the patch at each
    position (the target's softmax probability for a classifier); top1, top1_probs: (ny, nx) the most
    probable class there and its probability (classifiers; else None). layer, channel: the feature map
    followed (None without a layer); base_activation and activations ((ny, nx)): its total activation
    (sum over its map) unoccluded and with the patch at each position. attribution: (H, W) the
    per-pixel map of Captum's Occlusion (see the module doc).
    """

    target: int | None
    window: tuple[int, int]
    stride: tuple[int, int]
    baseline: float
    ys: list[int]
    xs: list[int]
    base_score: float
    scores: Tensor
    attribution: Tensor
    top1: Tensor | None = None
    top1_probs: Tensor | None = None
    base_top1: int | None = None
    layer: str | None = None
    channel: int | None = None
    base_activation: float | None = None
    activations: Tensor | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return len(self.ys), len(self.xs)

    def worst(self) -> tuple[int, int]:
        """(y, x) top-left corner of the patch position that lowers the score most."""
        i = int(self.scores.flatten().argmin())
        return self.ys[i // len(self.xs)], self.xs[i % len(self.xs)]


def _pair(v, what: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in t):
        raise CnnvisError(f"the occlusion {what} must be a positive number of pixels (or a pair), got {v!r}")
    return int(t[0]), int(t[1])


def positions(size: int, window: int, stride: int) -> list[int]:
    """Top-left corners along one side, as Captum's Occlusion places them."""
    return [i * stride for i in range(math.ceil((size - window) / stride) + 1)]


def default_occlusion_layer(vm) -> str:
    """The feature map Zeiler & Fergus followed was in their last conv layer (layer 5): a big net's
    deepest classic layer (lite0's stage6, VGG's conv5_3); a small net's last conv nonlinearity."""
    from cnnvis.layers import conv_layers, default_layers, resolve_layer
    from cnnvis.study.maps import SMALL_NET, default_map_layer

    if len(conv_layers(vm)) > SMALL_NET:
        return resolve_layer(vm, default_layers(vm)[-1])
    return default_map_layer(vm, deep=True)


def occlusion(model, x: Tensor, target: int | str | None = None, *, window: int | tuple[int, int] = 32,
              stride: int | tuple[int, int] | None = None, baseline: float = 0.5, layer: str | None = None,
              channel: int | None = None, batch: int = 32, progress=None) -> OcclusionResult:
    """Slide a `window` patch of grey `baseline` (in [0, 1] image units, before the model's
    normalization) over x (1, C, H, W) in steps of `stride` (default: window / 4) and record the
    scores (see `OcclusionResult`). target: class index or name (default: the top-1 class of x).
    layer/channel: the feature map to follow (channel default: the layer's channel with the highest
    spatial max on x, Zeiler & Fergus's "strongest feature map"). The model is left as it was.
    """
    from cnnvis.attribution.base import check_input
    from cnnvis.hooks import capture
    from cnnvis.models.registry import as_vismodel
    from cnnvis.utils import model_guard, progress_iter

    vm = as_vismodel(model)
    x = check_input(x, vm.device, vm)
    if x.shape[0] != 1:
        raise CnnvisError(f"occlusion takes one image (1, C, H, W), got a batch of {x.shape[0]}")
    kh, kw = _pair(window, "window")
    sh, sw = _pair(stride if stride is not None else (max(1, kh // 4), max(1, kw // 4)), "stride")
    H, W = x.shape[-2:]
    if kh > H or kw > W:
        raise CnnvisError(f"the occlusion window {kh}x{kw} is larger than the {H}x{W} image; give a window of at "
                          f"most {min(H, W)} pixels")
    if (sh > kh and kh < H) or (sw > kw and kw < W):
        raise CnnvisError(f"the stride {sh}x{sw} is larger than the window {kh}x{kw}: pixels between two positions "
                          "would never be occluded; give a stride of at most the window")
    if not (isinstance(baseline, (int, float)) and math.isfinite(baseline)):
        raise CnnvisError(f"the occlusion baseline must be a grey level in [0, 1], got {baseline!r}")
    if batch < 1:
        raise CnnvisError(f"batch must be at least 1, got {batch}")
    classifier = vm.task == "classification"
    if target is not None and not classifier:
        raise CnnvisError(f"model {vm.name!r} is not a classifier ({vm.task}); give no target")
    ys, xs = positions(H, kh, sh), positions(W, kw, sw)
    ny, nx = len(ys), len(xs)
    dev = x.device
    y0 = torch.tensor(ys, device=dev).repeat_interleave(nx)
    x0 = torch.tensor(xs, device=dev).repeat(ny)
    rows, cols = torch.arange(H, device=dev), torch.arange(W, device=dev)
    lname = None
    if layer is not None:
        from cnnvis.layers import resolve_layer

        lname = resolve_layer(vm, layer)
    fill = torch.tensor(float(baseline), dtype=x.dtype, device=dev)

    def score(out: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        out = out.float()
        if not classifier:
            return out.flatten(1).mean(1), None, None
        p = torch.softmax(out, 1)
        top = p.max(1)
        return p[:, t], top.indices, top.values

    with model_guard(vm.model), torch.no_grad(), capture(vm, [lname] if lname else [], stop=False) as cap:
        out0 = cap.run(x)
        if classifier:
            t = int(out0.argmax(1)[0]) if target is None else vm.class_index(target)
            if not 0 <= t < out0.shape[1]:
                raise CnnvisError(f"class {t} is out of range; the model has {out0.shape[1]} classes")
        else:
            t = None
        s0, top0, _ = score(out0)
        ch, a0 = None, None
        if lname is not None:
            act = cap[lname]
            if act.dim() != 4:
                raise CnnvisError(f"layer {layer!r} has no feature maps (output shape {tuple(act.shape[1:])}); "
                                  f"give a conv layer (see `cnnvis layers`)")
            nch = act.shape[1]
            if channel is None:
                ch = int(act.flatten(2).amax(2)[0].argmax())
            else:
                if not -nch <= channel < nch:
                    raise CnnvisError(f"channel {channel} is out of range for layer {layer!r}, which has {nch} "
                                      f"channels (0..{nch - 1})")
                ch = channel % nch
            a0 = float(act[0, ch].sum())
        scores, tops, tprobs, acts = [], [], [], []
        starts = range(0, ny * nx, batch)
        for s in progress_iter(starts, total=len(starts), desc="occlusion", progress=progress):
            yy, xx = y0[s:s + batch], x0[s:s + batch]
            r = (rows >= yy[:, None]) & (rows < yy[:, None] + kh)  # (b, H)
            c = (cols >= xx[:, None]) & (cols < xx[:, None] + kw)  # (b, W)
            mask = (r[:, :, None] & c[:, None, :]).unsqueeze(1)    # (b, 1, H, W)
            sc, top, tp = score(cap.run(torch.where(mask, fill, x)))
            scores.append(sc.cpu())
            if top is not None:
                tops.append(top.cpu())
                tprobs.append(tp.cpu())
            if lname is not None:
                acts.append(cap[lname][:, ch].flatten(1).sum(1).float().cpu())
    scores_t = torch.cat(scores).view(ny, nx)
    base = float(s0[0])
    return OcclusionResult(
        target=t, window=(kh, kw), stride=(sh, sw), baseline=float(baseline), ys=ys, xs=xs, base_score=base,
        scores=scores_t, attribution=window_average(base - scores_t, (H, W), (kh, kw), (sh, sw)),
        top1=torch.cat(tops).view(ny, nx) if tops else None, top1_probs=torch.cat(tprobs).view(ny, nx) if tprobs else None,
        base_top1=int(top0[0]) if top0 is not None else None, layer=lname, channel=ch, base_activation=a0,
        activations=torch.cat(acts).view(ny, nx) if acts else None)


def window_average(values: Tensor, size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """(ny, nx) one value per patch position -> (H, W): at each pixel the mean of the values of the
    positions whose window covers it (Captum's Occlusion: the sum divided by the count)."""
    v = values.float()[None, None]
    ones = torch.ones(1, 1, *window, dtype=v.dtype)
    total = F.conv_transpose2d(v, ones, stride=stride)[0, 0, :size[0], :size[1]]
    count = F.conv_transpose2d(torch.ones_like(v), ones, stride=stride)[0, 0, :size[0], :size[1]]
    return total / count
