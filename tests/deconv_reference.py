"""The reference deconvnet the tests check `cnnvis.deconv.deconvnet` against: the same projections,
one forward + one backward per (layer, channel), through autograd with the modified ReLU rule (rule
'fired': the fired mask, and strided convs' gradients resized by `resized_strides`' pre-hooks, a
mechanism of its own, not the sweep's).

Slow on purpose and kept out of the product: nothing under src/ imports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import contextlib

import torch
from torch import Tensor

from cnnvis.attribution.base import check_input, model_parts
from cnnvis.attribution.modified_relu import RELU_LIKE, modified_relu, resized_strides
from cnnvis.deconv import DeconvResult, _seeds, check_args
from cnnvis.hooks import capture
from cnnvis.utils import model_guard, module_device

_RELU_RULE = {"fired": "fired", "masked": "guided", "zf": "deconvnet"}


def deconvnet_loop(model, x: Tensor, layers: Sequence[str] | None = None, top: int = 3, *, seed: str = "max",
                   rule: str = "masked") -> DeconvResult:
    """{layer: (k, C, H, W)} projections of the top-k channels, one autograd backward each."""
    module, _, _ = model_parts(model)
    labels, names = check_args(model, layers, top, seed, rule)
    x = check_input(x, module_device(module), model)
    chans, norms, maps, recons, units = [], [], [], [], []
    resize = resized_strides(module) if rule == "fired" else contextlib.nullcontext()
    with model_guard(module), torch.enable_grad(), modified_relu(module, _RELU_RULE[rule], RELU_LIKE), resize:
        for n in names:
            with capture(model, [n]) as cap:
                cap.run(x)
                picked = _seeds(cap[n], top, seed)
            rs = []
            for j in range(len(picked.channels)):
                xg = x.detach().requires_grad_(True)
                with capture(model, [n]) as cap:
                    cap.run(xg)
                    (g,) = torch.autograd.grad(cap[n], xg, picked.seeds[j])
                rs.append(g[0])
            chans.append(picked.channels.cpu()), norms.append(picked.norms.cpu()), maps.append(picked.maps.cpu())
            units.append(picked.units.cpu())
            recons.append(torch.stack(rs).cpu())
    return DeconvResult(names, labels, chans, norms, maps, recons, engine="loop", rule=rule, seed=seed, units=units)
