"""Deconvnet (Z&F): one batched sweep == per-channel loop == Captum Deconvolution; literal tiny net;
sanity check. (Their command lines: tests/test_cli.py.)"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cnnvis.deconv import deconvnet
from cnnvis.errors import CnnvisError
from cnnvis.hooks import hook_count
from cnnvis.sanity import sanity_check, spearman
from deconv_reference import deconvnet_loop

warnings.filterwarnings("ignore", category=UserWarning)


def _rel(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


def test_tiny_literal_unpool_relu_convT():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(2.0)
    net = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))
    x = torch.tensor([[[[1.0, 3.0], [2.0, 0.0]]]])
    res = deconvnet(net, x, ["2"], top=1, seed="max")
    # pool output 6 at switch (0, 1); seed = 6 -> unpool -> relu -> conv^T (x2) = 12 at (0, 1)
    exp = torch.zeros(1, 1, 2, 2)
    exp[0, 0, 0, 1] = 12.0
    torch.testing.assert_close(res.reconstructions[0], exp)
    assert res.max_pools == 1 and res.engine == "chain"
    # the default seed 'sum': 1 where the channel fired (6 > 0) -> 1 x 2 = 2 at the same place
    torch.testing.assert_close(deconvnet(net, x, ["2"], top=1).reconstructions[0], exp / 6)


class _Normalized(nn.Module):
    """A VisModel's normalization then its network, as one module (what Captum hooks)."""

    def __init__(self, vm):
        super().__init__()
        self.net, self.norm = vm.model, vm.preprocess.normalize

    def forward(self, z):
        return self.net(self.norm(z))


@pytest.mark.parametrize("rule", ["fired", "masked", "zf"])
def test_one_pass_equals_loop_and_captum_neuron_random_vgg(rule):
    """The sweep == the per-channel loop == Captum's NeuronGuidedBackprop (masked; and fired, the same rule on
    VGG: nn.ReLU's fired units are its derivative's, no strided convs) / NeuronDeconvolution (zf),
    seeded with every unit that fired, weighted 1 (seed='sum', the default), with the rectified map
    (seed='map') and with the strongest unit only (seed='max', also the extra rows of also_units)."""
    from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop

    from cnnvis.models import load

    torch.manual_seed(0)
    vm = load("vgg16", weights="random")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    layers = ["conv1_2", "pool2", "conv3_3", "relu4_1", "conv5_3"]
    peer = {"fired": NeuronGuidedBackprop, "masked": NeuronGuidedBackprop, "zf": NeuronDeconvolution}[rule]
    units = deconvnet_loop(vm, x, layers, top=2, rule=rule, seed="max").reconstructions
    for seed in ("sum", "map", "max"):
        one = deconvnet(vm, x, layers, top=2, rule=rule, seed=seed, also_units=seed == "sum")
        loop = deconvnet_loop(vm, x, layers, top=2, rule=rule, seed=seed)
        assert one.engine == "chain" and one.max_pools == 4 and (one.rule, one.seed) == (rule, seed)
        for a, b, ca, cb in zip(one.reconstructions, loop.reconstructions, one.channels, loop.channels):
            assert torch.equal(ca, cb)
            assert _rel(a, b) < 1e-5
        if seed == "sum":  # the strongest units' rows of the same sweep == seed 'max' on its own
            assert all(_rel(a, b) < 1e-5 for a, b in zip(one.unit_reconstructions, units))
            assert _rel(one.reconstructions[2], units[2]) > 0.1  # and the default's rows differ from them
        i = layers.index("conv3_3")
        c, (uy, ux) = int(one.channels[i][0]), one.units[i][0].tolist()
        act = one.activations[i][0]
        assert float(act[uy, ux]) == float(act.max()) > 0  # the strongest unit
        sel = {"map": act, "sum": (act > 0).float(),
               "max": torch.zeros_like(act).index_put_((torch.tensor(uy), torch.tensor(ux)), act.max())}[seed]
        ref = peer(_Normalized(vm), vm.model.features[14]).attribute(
            x.clone(), neuron_selector=lambda out: (out[:, c] * sel).sum((1, 2)))
        assert _rel(one.reconstructions[i][0:1], ref) < 1e-5
        if seed == "max":  # zero outside the unit's receptive field (conv3_3: 40 px, stride 4)
            from cnnvis.study.receptive import receptive_field

            t, left, b, r = receptive_field(vm, "conv3_3", (64, 64)).box(uy, ux, (64, 64))
            inside = torch.zeros(64, 64, dtype=torch.bool)
            inside[t:b + 1, left:r + 1] = True
            reach = one.reconstructions[i][0].abs().sum(0) > 0
            assert reach.any() and not (reach & ~inside).any()
    assert hook_count(vm.model) == 0


def test_rules_differ_where_the_forward_mask_bites():
    """A unit that did not fire passes the zf signal on, not the masked one (a literal 1-D case)."""
    conv1 = nn.Conv2d(1, 2, 1, bias=False)
    conv2 = nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        conv1.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))  # unit 1 fires on -x: off for x > 0
        conv2.weight.copy_(torch.tensor([1.0, 1.0]).view(1, 2, 1, 1))
    net = nn.Sequential(conv1, nn.ReLU(), conv2)
    x = torch.full((1, 1, 1, 1), 2.0)
    zf = deconvnet(net, x, ["2"], top=1, rule="zf", seed="max").reconstructions[0]
    masked = deconvnet(net, x, ["2"], top=1, rule="masked", seed="max").reconstructions[0]
    # seed 2 -> conv2^T: [2, 2] -> zf: relu -> [2, 2] -> conv1^T: 2 - 2 = 0; masked: [2, 0] -> 2
    assert float(zf) == 0.0 and float(masked) == 2.0


@pytest.mark.parametrize("rule", ["fired", "masked", "zf"])
def test_one_pass_equals_loop_embedded_with_skips(rule):
    from cnnvis.models import load

    vm = load("efficientnet_lite0")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    layers = ["blocks.1.0.bn1", "blocks.2.1.conv_pw", "stage3", "stage5"]  # skips jump over conv_pw; stem + 4 stride-2 convs
    one = deconvnet(vm, x, layers, top=2, rule=rule, seed="map")
    loop = deconvnet_loop(vm, x, layers, top=2, rule=rule, seed="map")
    assert one.engine == "autograd" and one.max_pools == 0 and "no max-pool" in one.notes[0]
    assert one.strided == 5 and any("checkerboard" in n for n in one.notes) == (rule == "zf")
    for a, b in zip(one.reconstructions, loop.reconstructions):
        assert _rel(a, b) < 1e-5
    assert hook_count(vm.model) == 0


def test_deconv_errors():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(CnnvisError, match="no feature maps"):
        deconvnet(net, x, ["3"])
    with pytest.raises(CnnvisError, match="unknown layer"):
        deconvnet(net, x, ["nope"])
    with pytest.raises(CnnvisError, match="top"):
        deconvnet(net, x, ["0"], top=0)
    with pytest.raises(CnnvisError, match="rule must be 'fired'"):
        deconvnet(net, x, ["0"], rule="guided")
    with pytest.raises(CnnvisError, match="seed must be 'sum'"):
        deconvnet(net, x, ["0"], seed="all")
    with pytest.raises(CnnvisError, match="one image"):
        deconvnet(net, torch.rand(2, 3, 8, 8), ["0"])
    assert deconvnet(net, x, ["0"], top=5).channels[0].numel() == 2  # clipped to the channel count


def test_spearman_ties_and_sanity_leaves_model_untouched():
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    assert spearman(torch.tensor([0.0, 0, 1, 1]), torch.tensor([0.0, 0, 1, 1])) == pytest.approx(1.0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    res = sanity_check(net, torch.rand(1, 3, 12, 12), "guided")
    assert res.steps[0] == "(trained)" and len(res.steps) == 4 and res.spearman[0] == 1.0
    assert res.maps.shape == (4, 12, 12)
    assert all(torch.equal(sd[k], v) for k, v in net.state_dict().items())
    assert hook_count(net) == 0
