"""The explicit batched deconvnet sweep's speed paths equal the per-channel loop, for both rules:
channels-last transposed convs, upsample x switch-mask unpooling (and the scatter fallback for
overlapping / ceil-mode pools), the ReLU rule applied before unpooling (the masked rule's forward
mask folded into the switch mask), BN scale in place, and the CPU block budget that cuts the batch
into blocks of rows carried down depth first."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import cnnvis.deconv as D
from cnnvis.attribution import IntegratedGradients
from deconv_reference import deconvnet_loop

warnings.filterwarnings("ignore", category=UserWarning)


def _rel(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


def _nets():
    torch.manual_seed(0)
    return {
        "overlap": nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
                                 nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        "ceil_bn": nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                                 nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)),
        "strided": nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU6(), nn.MaxPool2d(2),
                                 nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
    }


@pytest.mark.parametrize("name", ["overlap", "ceil_bn", "strided"])
@pytest.mark.parametrize("size", [32, 33, 17])
@pytest.mark.parametrize("budget", [D._CPU_BLOCK_NUMEL, 100, 1])
@pytest.mark.parametrize("rule", ["fired", "masked", "zf"])
def test_chain_sweep_equals_loop(name, size, budget, rule, monkeypatch):
    net = _nets()[name].eval()
    if name == "ceil_bn":
        with torch.no_grad():
            net[4].running_var.uniform_(0.5, 2.0)
            net[4].weight.uniform_(-1.0, 1.0)
    monkeypatch.setattr(D, "_CPU_BLOCK_NUMEL", budget)  # 100 / 1: every block splits, seeds wait on the stack
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    layers = [str(i) for i in range(len(net))]
    one = D.deconvnet(net, x, layers, top=3, rule=rule, seed="map")
    loop = deconvnet_loop(net, x, layers, top=3, rule=rule, seed="map")
    assert one.engine == "chain" and one.rule == rule
    for a, b, ca, cb in zip(one.reconstructions, loop.reconstructions, one.channels, loop.channels):
        assert torch.equal(ca, cb)
        assert a.shape == b.shape and a.is_contiguous()
        assert _rel(a, b) < 1e-5


def test_unpool_mask_equals_scatter():
    torch.manual_seed(0)
    for H, W in [(8, 8), (9, 7)]:
        inp = torch.randn(1, 4, H, W)
        up = D._Unpool2d(nn.MaxPool2d(2), inp)
        assert up.mask is not None
        g = torch.randn(5, 4, H // 2, W // 2)
        _, sw = torch.nn.functional.max_pool2d(inp, 2, 2, return_indices=True)
        ref = torch.nn.functional.max_unpool2d(g, sw.expand(5, -1, -1, -1), 2, 2, output_size=(H, W))
        torch.testing.assert_close(up(g), ref, rtol=0, atol=0)


def test_ig_delta_and_chunking():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).eval()
    x = torch.rand(2, 3, 8, 8)
    one = IntegratedGradients(net, steps=7, batch_size=64)
    many = IntegratedGradients(net, steps=7, batch_size=6)   # 3 steps per batch of 2 images
    (a, da), (b, db) = one.attribute(x, [0, 2], return_delta=True), many.attribute(x, [0, 2], return_delta=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        fx = net(x)[[0, 1], [0, 2]]
        f0 = net(torch.zeros_like(x))[[0, 1], [0, 2]]
    exp = a.reshape(2, -1).sum(1) - (fx - f0)
    torch.testing.assert_close(da, exp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(db, exp, rtol=1e-5, atol=1e-6)
