"""Issue 20 item 3: a conv channel is what the next layers get after its BatchNorm and activation.
The filter grid optimizes it after the BatchNorm (the leaky objective before the nonlinearity) and
decides that it is dead after the activation, on a conv -> BN -> ReLU net whose answers are known, on
a Keras-built BN net and on the embedded efficientnet_lite0 (timm's BatchNormAct2d); vgg16_hed (no BN)
keeps its objective and its dead channels."""

from __future__ import annotations

import copy
import json

import numpy as np
import torch
from torch import nn

from cnnvis.hooks import capture
from cnnvis.images import sample_photos
from cnnvis.layers import channel_points, default_layers
from cnnvis.models import Preprocess, wrap
from cnnvis.optvis import channel, render
from cnnvis.optvis.filters import FILTER_DEFAULTS, LEAK, dead_channels, render_filters


def conv_bn_relu():
    """32-px RGB net: Conv2d(3, 4, 3) -> BatchNorm2d(4) -> ReLU -> pool -> Linear(4, 2), eval mode.
    Each conv channel is a 3x3 mean of one colour (+ a bias); the BatchNorm then
    ch 0: conv 1 + mean red > 0 everywhere, BN shift -10: <= 0 after BN (dead only after BN);
    ch 1: conv mean green - 10 < 0 everywhere, BN shift +20: > 0 after BN (negative only before it);
    ch 2: conv mean red, BN gamma -1 around 0.5 (+0.1): the used channel is 0.6 - red (negative gamma);
    ch 3: conv mean blue, plain BN."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        conv.weight.zero_()
        for ch, colour in enumerate((0, 1, 0, 2)):
            conv.weight[ch, colour] = 1 / 9
        conv.bias.copy_(torch.tensor([1.0, -10.0, 0.0, 0.0]))
        bn.running_mean.copy_(torch.tensor([0.0, 0.0, 0.5, 0.5]))
        bn.running_var.fill_(1.0)
        bn.weight.copy_(torch.tensor([1.0, 1.0, -1.0, 1.0]))
        bn.bias.copy_(torch.tensor([-10.0, 20.0, 0.1, 0.0]))
    net = nn.Sequential(conv, bn, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return wrap(net.eval(), name="cbr", labels=["a", "b"], preprocess=Preprocess.identity(3, resize=32, crop=32))


def _used(vm, x, at="2"):
    """(B, 4): the mean over positions of each channel after BN + ReLU."""
    with torch.no_grad(), capture(vm, [at]) as cap:
        cap.run(x)
        return cap[at].mean((2, 3))


def test_points_dead_channels_and_a_negative_gamma_on_conv_bn_relu():
    vm = conv_bn_relu()
    layers = default_layers(vm)
    assert layers == ["0"]  # the tool's choice: the Conv2d
    (p,) = channel_points(vm, layers).values()
    assert (p.layer, p.norm, p.act, p.live) == ("0", "1", "2", "2")
    # the old rule (conv output <= 0 on every photo) would have called ch 1 dead and ch 0 live
    photos = torch.stack([torch.from_numpy(np.array(im.convert("RGB").resize((32, 32)))).permute(2, 0, 1)
                          for _, im in sample_photos()]).float() / 255
    with torch.no_grad(), capture(vm, ["0"]) as cap:
        cap.run(photos)
        conv_max = cap["0"].amax((0, 2, 3))
    assert conv_max[0] > 1 and conv_max[1] < 0
    assert dead_channels(vm, layers) == {"0": [0]}
    used = _used(vm, photos)
    assert (used[:, 0] == 0).all() and (used[:, 1] > 9).all()
    state = copy.deepcopy(vm.model.state_dict())
    (row,) = render_filters(vm, layers, 4, steps=48, size=32)
    assert row.dead == [0] and row.norm == "1" and row.live == "2"
    assert all(torch.equal(v, state[k]) for k, v in vm.model.state_dict().items())
    grey = torch.full((1, 3, 32, 32), 0.5)
    g, r = _used(vm, grey)[0], _used(vm, row[2])
    # every rendered channel's used output rises above grey's, the negative-gamma one included
    # (maximizing its conv output, mean red, would have driven it to 0: 0.6 - red)
    for j, ch in enumerate(row[1]):
        if ch != 0:
            assert r[j, ch] > g[ch] + 0.1, (ch, float(r[j, ch]), float(g[ch]))
    assert r[2, 2] > g[2] + 0.15
    colour = row[2].mean((2, 3))
    assert colour[2].argmin() == 0 and colour[3].argmax() == 2  # ch 2: the least red; ch 3 (blue, gamma +1): blue
    # the conv output's objective (what the grid optimized before) drives ch 2's used output below grey's
    old = render(vm, channel("0", 2, leak=LEAK), steps=48, size=32, **FILTER_DEFAULTS)
    assert float(old.images[0, 0].mean()) > 0.55 and _used(vm, old.images)[0, 2] < g[2]
    # a user who names the BN or the ReLU gets that point
    pts = channel_points(vm, ["1", "2"])
    assert (pts["1"].norm, pts["1"].act, pts["1"].affine) == (None, "2", None)
    assert (pts["2"].norm, pts["2"].act, pts["2"].live) == (None, None, "2")


def test_keras_conv_bn_tanh_net(tmp_path):
    """A Keras Conv2D(linear) -> BatchNormalization -> Activation(tanh): the channel is read through the
    BN's affine map (equal to the BN module's output), decided dead after the tanh; a BN gamma of 0
    makes a channel constant (dead) whatever the conv does."""
    from test_keras_import import random_weights, small_rgb_net, write_keras2_h5

    from cnnvis.models import load

    net = small_rgb_net()
    w = random_weights(net, 5)
    w["bn"][0][3] = 0.0  # gamma of channel 3
    w["bn"][0][5] = -1.0  # a negative gamma
    path = tmp_path / "bnnet.h5"
    write_keras2_h5(path, net, w)
    vm = load(str(path))
    pts = channel_points(vm, ["conv2"])
    p = pts["conv2"]
    assert (p.layer, p.norm, p.act) == ("c2", "bn", "act")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), capture(vm, ["c2", "bn", "act"]) as cap:
        cap.run(x)
        conv, bn, act = cap["c2"], cap["bn"], cap["act"]
    scale, shift = p.affine
    assert torch.allclose(conv * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), bn, atol=1e-5)
    assert float(scale[5]) < 0 and float(scale[3]) == 0
    assert torch.allclose(torch.tanh(bn), act)
    assert dead_channels(vm, ["conv2"]) == {"conv2": [3]}
    (row,) = render_filters(vm, ["conv2"], [3, 5], steps=24, size=32)
    assert row.dead == [3] and row.norm == "bn" and row.live == "act"
    with torch.no_grad(), capture(vm, ["act"]) as cap:
        cap.run(torch.cat([row[2][1:], torch.full((1, 3, 32, 32), 0.5)]))
        used = cap["act"][:, 5].mean((1, 2))
    assert used[0] > used[1] + 0.05  # the negative-gamma channel rises after its BN and tanh


def test_embedded_lite0_bn_act_blocks(lite0):
    """timm's BatchNormAct2d (BN with its ReLU6 inside): a conv's channel is the BN's affine map of it,
    used (and decided dead) after the module; a projection conv (BN without activation) is used after
    its BN; the stage outputs (block outputs, already after their BN) are taken as named."""
    pts = channel_points(lite0, ["blocks.1.0.conv_pw", "blocks.1.0.conv_pwl", "stage3", "conv_stem"])
    pw, pwl, st, stem = pts.values()
    assert (pw.norm, pw.act) == ("blocks.1.0.bn1", "blocks.1.0.bn1")
    assert (pwl.norm, pwl.act, pwl.live) == ("blocks.1.0.bn3", None, "blocks.1.0.bn3")
    assert (st.norm, st.act, st.live, st.affine) == (None, None, "blocks.3", None)
    assert (stem.norm, stem.act) == ("bn1", "bn1")
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), capture(lite0, ["blocks.1.0.conv_pw", "blocks.1.0.bn1"]) as cap:
        cap.run(x)
        conv, used = cap["blocks.1.0.conv_pw"], cap["blocks.1.0.bn1"]
    scale, shift = pw.affine
    assert torch.allclose((conv * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).clamp(0, 6), used, atol=1e-4)
    assert not lite0.model.training and all(not m._forward_hooks and not m._forward_pre_hooks
                                            for m in lite0.model.modules())


def test_vgg16_hed_keeps_its_objective_and_dead_channels(hed):
    """No BatchNorm: the conv output is optimized (no affine) and dead is decided after its ReLU,
    which is the old rule (conv output <= 0 on every photo) exactly."""
    layers = ["conv2_1", "conv5_1"]
    pts = channel_points(hed, layers)
    assert [(p.norm, p.affine, p.act) for p in pts.values()] == [(None, None, "features.6"),
                                                                  (None, None, "features.25")]
    new = dead_channels(hed, layers)
    photos = torch.stack([torch.from_numpy(np.array(im.convert("RGB").resize((224, 224)))).permute(2, 0, 1)
                          for _, im in sample_photos()]).float() / 255
    with torch.no_grad(), capture(hed, layers) as cap:
        cap.run(photos)
        old = {n: [int(k) for k in (cap[n].amax((0, 2, 3)) <= 0).nonzero().flatten()] for n in layers}
    assert new == old and len(new["conv5_1"]) > 100 and 7 in new["conv2_1"]


def test_store_identity_names_the_batchnorm_only_where_there_is_one(hed, lite0):
    """A filters request on a BN net records the BatchNorm each layer is optimized after (so a grid
    cached before this rule is not served for it); vgg16_hed's canonical form, hence its key, is as before."""
    from cnnvis.jobs.spec import make_spec

    h = make_spec("filters", model="vgg16_hed", first=3).normalized(hed)
    assert h.after_norm is None and "after_norm" not in h.canonical_json()
    assert sorted(json.loads(h.canonical_json())) == ["all_conv", "animate", "channels", "first", "kind", "layers",
                                                      "model", "preset", "seed", "size", "steps", "weights"]
    s = make_spec("filters", layers=["blocks.1.0.conv_pw", "stage2"], first=3).normalized(lite0)
    assert s.after_norm == {"blocks.1.0.conv_pw": "blocks.1.0.bn1"}
    assert '"after_norm":{"blocks.1.0.conv_pw":"blocks.1.0.bn1"}' in s.canonical_json()
