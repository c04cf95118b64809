"""Layer names and aliases, capture's early stop and hook hygiene, model_guard."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnvis.errors import CnnvisError
from cnnvis.hooks import capture, hook_count
from cnnvis.layers import conv_layers, list_layers, resolve_layer
from cnnvis.models import load, wrap
from cnnvis.utils import model_guard


def test_vgg_aliases_resolve_to_torchvision_indices():
    vm = load("vgg16", weights="random")
    expect = {"conv1_1": "features.0", "conv3_3": "features.14", "conv5_3": "features.28", "pool1": "features.4",
              "pool5": "features.30", "block4_pool": "features.23", "relu4_3": "features.22",
              "fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}
    for alias, name in expect.items():
        assert resolve_layer(vm, alias) == name
    assert resolve_layer(vm, "features.5") == "features.5"
    assert len(conv_layers(vm)) == 13


def test_unknown_layer_lists_close_matches():
    vm = load("vgg16", weights="random")
    with pytest.raises(CnnvisError, match=r"unknown layer 'conv5_4'.*conv5_3"):
        resolve_layer(vm, "conv5_4")
    with pytest.raises(CnnvisError, match="cnnvis layers"):
        resolve_layer(vm, "zzz")


def test_list_layers_reports_output_shapes(lite0):
    infos = {i.name: i for i in list_layers(lite0)}
    assert infos["conv_stem"].shape == (32, 112, 112)
    assert infos["blocks.3"].shape == (80, 14, 14) and infos["blocks.3"].alias == "stage3"
    assert infos["classifier"].shape == (1000,)
    small = {i.name: i for i in list_layers(lite0, 96)}
    assert small["blocks.6"].shape == (320, 3, 3)
    names = [i.name for i in list_layers(lite0, leaves_only=True) if i.shape]
    assert names[0] == "conv_stem" and names[-1] == "classifier"


def _count_runs(model):
    ran = []
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    handles = [m.register_forward_pre_hook(lambda mod, inp, n=n: ran.append(n)) for n, m in leaves]
    return ran, handles, len(leaves)


def test_capture_stops_after_the_deepest_requested_layer():
    vm = load("vgg16", weights="random")
    ran, handles, n_leaves = _count_runs(vm.model)
    try:
        x = torch.rand(1, 3, 64, 64)
        with capture(vm, ["conv2_1", "conv1_2"]) as cap:
            out = cap.run(x)
        assert out is None
        assert ran == [f"features.{i}" for i in range(6)]  # conv1_1 .. conv2_1, nothing after
        assert cap["conv1_2"].shape == (1, 64, 64, 64) and cap["features.5"].shape == (1, 128, 32, 32)
        ran.clear()
        with capture(vm, ["conv2_1"], stop=False) as cap:
            out = cap.run(x)
        assert out.shape == (1, 1000) and len(ran) == n_leaves
    finally:
        for h in handles:
            h.remove()
    assert hook_count(vm.model) == 0


def test_capture_outputs_carry_gradients_and_match_the_full_forward(lite0):
    x = torch.rand(1, 3, 96, 96, requires_grad=True)
    with model_guard(lite0.model), capture(lite0, ["stage2"]) as cap:
        cap.run(x)
        a = cap["stage2"]
        a.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    ref = {}
    h = lite0.model.blocks[2].register_forward_hook(lambda m, i, o: ref.setdefault("a", o))
    with torch.no_grad():
        lite0(x)
    h.remove()
    assert torch.allclose(a.detach(), ref["a"], atol=1e-5)


def test_hooks_are_removed_after_an_exception(tiny_cnn):
    with pytest.raises(ZeroDivisionError):
        with capture(tiny_cnn, ["3", "5"]):
            assert hook_count(tiny_cnn) == 2
            1 / 0
    assert hook_count(tiny_cnn) == 0


def test_capture_rejects_unknown_layers_without_leaving_hooks(tiny_cnn):
    with pytest.raises(CnnvisError, match="unknown layer"):
        with capture(tiny_cnn, ["0", "nope"]):
            pass
    assert hook_count(tiny_cnn) == 0


def test_model_guard_restores_every_flag_even_on_error(tiny_cnn):
    tiny_cnn.train()
    tiny_cnn[0].weight.requires_grad_(False)
    relu = tiny_cnn[2]
    assert relu.inplace
    with pytest.raises(RuntimeError):
        with model_guard(tiny_cnn):
            assert not tiny_cnn.training and not any(p.requires_grad for p in tiny_cnn.parameters())
            assert not relu.inplace
            raise RuntimeError("boom")
    assert tiny_cnn.training and all(m.training for m in tiny_cnn.modules())
    assert not tiny_cnn[0].weight.requires_grad and tiny_cnn[0].bias.requires_grad
    assert relu.inplace


def test_inplace_relu_does_not_corrupt_captured_preactivations(tiny_cnn):
    """A user model with ReLU(inplace=True): the captured conv output keeps its negative values."""
    x = torch.randn(2, 3, 16, 16)
    with model_guard(tiny_cnn), capture(tiny_cnn, ["1"], stop=False) as cap:
        cap.run(x)
        pre = cap["1"]
    assert (pre < 0).any()
    assert tiny_cnn[2].inplace


def test_wrap_resolves_vgg_aliases_for_user_vgg():
    from torchvision.models import vgg11

    vm = wrap(vgg11(weights=None))
    assert resolve_layer(vm, "conv4_2") == "features.13"
    plain = wrap(nn.Sequential(nn.Conv2d(3, 4, 3)))
    assert plain.aliases == {}
