"""Deconvnet (Z&F): one batched sweep == per-channel loop == Captum Deconvolution; literal tiny net;
sanity check; CLI exit codes."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cnnvis.deconv import deconvnet, deconvnet_loop
from cnnvis.errors import CnnvisError
from cnnvis.hooks import hook_count
from cnnvis.sanity import sanity_check, spearman

warnings.filterwarnings("ignore", category=UserWarning)


def _rel(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


def test_tiny_literal_unpool_relu_convT():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(2.0)
    net = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))
    x = torch.tensor([[[[1.0, 3.0], [2.0, 0.0]]]])
    res = deconvnet(net, x, ["2"], top=1)
    # pool output 6 at switch (0, 1); seed = 6 -> unpool -> relu -> conv^T (x2) = 12 at (0, 1)
    exp = torch.zeros(1, 1, 2, 2)
    exp[0, 0, 0, 1] = 12.0
    torch.testing.assert_close(res.reconstructions[0], exp)
    assert res.max_pools == 1 and res.engine == "chain"


def test_one_pass_equals_loop_and_captum_random_vgg():
    from captum.attr import Deconvolution

    from cnnvis.models import load

    torch.manual_seed(0)
    vm = load("vgg16", weights="random")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    layers = ["conv1_2", "pool2", "conv3_3", "relu4_1", "conv5_3"]
    one = deconvnet(vm, x, layers, top=2)
    loop = deconvnet_loop(vm, x, layers, top=2)
    assert one.engine == "chain" and one.max_pools == 4
    for a, b, ca, cb in zip(one.reconstructions, loop.reconstructions, one.channels, loop.channels):
        assert torch.equal(ca, cb)
        assert _rel(a, b) < 1e-5
    # Captum's Deconvolution on a model that ends at conv3_3 and scores <seed, activation>
    i = layers.index("conv3_3")
    seed = one.activations[i][0]
    c = int(one.channels[i][0])

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = vm.model.features[:15]  # a submodule, so Captum hooks its ReLUs

        def forward(self, z):
            a = self.trunk(vm.preprocess.normalize(z))
            return (a[:, c] * seed).sum((1, 2))[:, None]

    ref = Deconvolution(Head()).attribute(x.clone(), target=0)
    assert _rel(one.reconstructions[i][0:1], ref) < 1e-5
    assert hook_count(vm.model) == 0


def test_one_pass_equals_loop_embedded_with_skips():
    from cnnvis.models import load

    vm = load("efficientnet_lite0")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    layers = ["blocks.1.0.bn1", "blocks.2.1.conv_pw", "stage3", "stage5"]  # skips jump over conv_pw
    one = deconvnet(vm, x, layers, top=2)
    loop = deconvnet_loop(vm, x, layers, top=2)
    assert one.engine == "autograd" and one.max_pools == 0 and "no max-pool" in one.notes[0]
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


# ----------------------------------------------------------------------------- CLI

@pytest.fixture()
def photo(tmp_path):
    from PIL import Image

    p = tmp_path / "p.png"
    Image.new("LA", (50, 37), (128, 200)).save(p)  # odd mode and size
    return p


def test_cli_bad_input_exit_2(tmp_path, photo, capsys):
    from cnnvis.cli import main

    out = str(tmp_path / "o.png")
    assert main(["saliency", str(photo), "--target", "5000", "--size", "64", "--out", out]) == 2
    assert main(["saliency", str(photo), "--method", "gradcam", "--layer", "classifier", "--size", "64",
                 "--out", out]) == 2
    assert main(["saliency", str(tmp_path / "missing.jpg"), "--out", out]) == 2
    assert main(["saliency", str(photo), "--out", str(photo)]) == 2
    assert main(["deconv", str(photo), "--layers", "nope", "--out", out]) == 2
    assert main(["sanity", str(photo), "--method", "foo", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 6


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, photo, monkeypatch):
    from PIL import Image

    from cnnvis.cli import main

    monkeypatch.setenv("CNNVIS_NO_PROGRESS", "1")
    for m in ("saliency", "gradcam", "guided"):
        out = tmp_path / f"{m}.png"
        assert main(["saliency", str(photo), "--method", m, "--size", "64", "--out", str(out)]) == 0
        assert Image.open(out).size[0] > 64
    out = tmp_path / "d.png"
    assert main(["deconv", str(photo), "-m", "vgg16_hed", "--size", "64", "--layers", "conv1_2,pool2",
                 "--top", "2", "--out", str(out)]) == 0
    assert out.exists()
    out = tmp_path / "s.png"
    assert main(["sanity", str(photo), "--method", "saliency", "--size", "64", "--max-steps", "4",
                 "--out", str(out)]) == 0
    assert out.exists()
