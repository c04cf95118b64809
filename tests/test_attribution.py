"""Attribution: tiny hand-set nets with literal answers, agreement with Captum / pytorch-grad-cam,
no side effects, clear errors. Tolerances: atol 1e-6 (relative to each map's max) for Captum,
1e-5 for pytorch-grad-cam (min-max scaled maps, cv2 vs torch bilinear resize)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from cnnvis.attribution import (Deconvnet, GradCAM, GradientXInput, GuidedBackprop, GuidedGradCAM,
                                IntegratedGradients, LayerTarget, Saliency, SmoothGrad, method)
from cnnvis.errors import CnnvisError
from cnnvis.hooks import hook_count

warnings.filterwarnings("ignore", category=UserWarning)


def close(a, b, rel=1e-6):
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) <= rel * scale + 1e-12, float((a - b).abs().max()) / scale


# ----------------------------------------------------------------------------- tiny nets, literal maps

class Tiny(nn.Module):
    """y = w2 . act(w1 * x) on 1x1x2 'images' (2 pixels, 1 channel), 2 hidden units, 1 output."""

    def __init__(self, act=None):
        super().__init__()
        self.l1 = nn.Linear(2, 2, bias=False)
        self.act = act or nn.ReLU()
        self.l2 = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))
            self.l2.weight.copy_(torch.tensor([[1.0, -3.0], [0.5, 0.5]]))

    def forward(self, x):
        return self.l2(self.act(self.l1(x.flatten(1))))


X = torch.tensor([[[[1.0, 1.0]]]])  # (1, 1, 1, 2): hidden pre-activations (3, 0.0) -> make both positive below
X2 = torch.tensor([[[[1.0, 2.0]]]])  # hidden pre-activations: (5, 1), both active


def test_tiny_literal_maps():
    net = Tiny()
    # class 0: d/dx = w2[0] * mask @ w1 = [1, -3] @ [[1, 2], [-1, 1]] = [4, -1]
    torch.testing.assert_close(Saliency(net).attribute(X2, 0), torch.tensor([[[[4.0, -1.0]]]]))
    torch.testing.assert_close(GradientXInput(net).attribute(X2, 0), torch.tensor([[[[4.0, -2.0]]]]))
    # guided: relu(grad at hidden) = [1, 0] -> [1, 2]; deconvnet the same here (both units active)
    torch.testing.assert_close(GuidedBackprop(net).attribute(X2, 0), torch.tensor([[[[1.0, 2.0]]]]))
    torch.testing.assert_close(Deconvnet(net).attribute(X2, 0), torch.tensor([[[[1.0, 2.0]]]]))
    # input with a dead unit: hidden pre-activations (-1+..): x = (1, -1) -> (-1, -2), both dead
    xd = torch.tensor([[[[1.0, -1.0]]]])
    torch.testing.assert_close(GuidedBackprop(net).attribute(xd, 1), torch.zeros(1, 1, 1, 2))
    # deconvnet ignores the forward mask: relu([0.5, 0.5]) @ w1 = [0, 1.5]
    torch.testing.assert_close(Deconvnet(net).attribute(xd, 1), torch.tensor([[[[0.0, 1.5]]]]))
    # IG on a piecewise-linear net from 0 with many steps: completeness is exact
    ig = IntegratedGradients(net, steps=64)
    a = ig.attribute(X2, 0)
    assert abs(float(a.sum()) - float(net(X2)[0, 0] - net(torch.zeros_like(X2))[0, 0])) < 1e-4
    assert abs(float(ig.delta[0])) < 1e-4


def test_relu6_gets_the_rule_too():
    net = Tiny(nn.ReLU6())
    xd = torch.tensor([[[[1.0, -1.0]]]])
    torch.testing.assert_close(Deconvnet(net).attribute(xd, 1), torch.tensor([[[[0.0, 1.5]]]]))
    # saturated unit (pre-activation 15 > 6): plain gradient and guided are 0 through it
    xs = torch.tensor([[[[5.0, 5.0]]]])  # pre-activations (15, 0)
    torch.testing.assert_close(GuidedBackprop(net).attribute(xs, 0), torch.zeros(1, 1, 1, 2))


def test_layer_target_channel_unit():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))
    x = torch.rand(1, 1, 3, 3)
    g = Saliency(net).attribute(x, LayerTarget("0", channel=1))
    torch.testing.assert_close(g, torch.full_like(x, -2.0))
    g = Saliency(net).attribute(x, LayerTarget("0", channel=0, unit=(1, 2)))
    exp = torch.zeros_like(x)
    exp[0, 0, 1, 2] = 1
    torch.testing.assert_close(g, exp)
    torch.testing.assert_close(Saliency(net).attribute(x, LayerTarget("0")), torch.full_like(x, -1.0))


def test_smoothgrad_noise_zero_is_saliency_and_seeded():
    net = Tiny()
    torch.testing.assert_close(SmoothGrad(net, samples=3, noise=0.0).attribute(X2, 0), Saliency(net).attribute(X2, 0))
    a = SmoothGrad(net, samples=5, seed=3).attribute(X2 + 0.1, 0)
    b = SmoothGrad(net, samples=5, seed=3).attribute(X2 + 0.1, 0)
    torch.testing.assert_close(a, b)


def test_gradcam_literal():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 1.0]).view(2, 1, 1, 1))
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, -1.0]]))
    net = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin)
    x = torch.arange(4.0).view(1, 1, 2, 2)
    # weights = (2, -1) / 4 per channel; cam = relu(0.25 * x) = x / 4
    torch.testing.assert_close(GradCAM(net, "0").attribute(x, 0), x / 4)


# ----------------------------------------------------------------------------- side effects

def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            hook_count(model), {k: v.clone() for k, v in model.state_dict().items()},
            [getattr(m, "inplace", None) for m in model.modules()])


@pytest.mark.parametrize("name", ["saliency", "gradxinput", "smoothgrad", "ig", "guided", "deconvnet", "gradcam",
                                  "guided_gradcam"])
def test_model_and_input_untouched(name):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    net.train()
    net[0].weight.requires_grad_(False)
    before = _state(net)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    x.grad = torch.ones_like(x)
    x0 = x.detach().clone()
    opts = {"steps": 4} if name == "ig" else {"samples": 2} if name == "smoothgrad" else {}
    a = method(name, net, **opts).attribute(x, 1)
    assert a.shape[0] == 2 and a.shape[-2:] == (8, 8) and not a.requires_grad
    after = _state(net)
    assert before[:3] == after[:3] and before[4] == after[4]
    assert all(torch.equal(before[3][k], after[3][k]) for k in before[3])
    assert torch.equal(x.detach(), x0) and torch.equal(x.grad, torch.ones_like(x))
    assert all(p.grad is None for p in net.parameters())


def test_model_restored_after_error_midway():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Boom())
    net.train()
    before = _state(net)
    for name in ("saliency", "guided", "deconvnet", "gradcam"):
        with pytest.raises(RuntimeError, match="boom"):
            method(name, net, **({"layer": "0"} if name == "gradcam" else {})).attribute(torch.rand(1, 3, 8, 8))
        after = _state(net)
        assert before[:3] == after[:3] and before[4] == after[4]


# ----------------------------------------------------------------------------- errors

def test_errors_are_clear():
    net = Tiny()
    with pytest.raises(CnnvisError, match="out of range"):
        Saliency(net).attribute(X2, 7)
    with pytest.raises(CnnvisError, match="targets for"):
        Saliency(net).attribute(X2, [0, 1, 0])
    with pytest.raises(CnnvisError, match="no spatial maps|spatial maps"):
        GradCAM(net, "l2").attribute(X2, 0)
    gelu = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.GELU(), nn.Linear(2, 2))
    with pytest.raises(CnnvisError, match="ReLU-like.*GELU"):
        GuidedBackprop(gelu).attribute(X2, 0)
    with pytest.raises(CnnvisError, match="unknown layer"):
        GradCAM(net, "nope")
    with pytest.raises(CnnvisError, match="unknown attribution method"):
        method("gradcamm", net)
    with pytest.raises(CnnvisError, match="image batch"):
        Saliency(net).attribute(torch.rand(2, 2), 0)
    with pytest.raises(CnnvisError, match="channel 5 is out of range"):
        Saliency(nn.Sequential(nn.Conv2d(3, 2, 1))).attribute(torch.rand(1, 3, 4, 4), LayerTarget("0", 5))


# ----------------------------------------------------------------------------- agreement with Captum / grad-cam

def _captum_seq(vm):
    return nn.Sequential(vm.preprocess.module(), vm.model).eval()


class _ReLU6AsReLU(nn.ReLU):
    """An nn.ReLU subclass that computes ReLU6, so Captum's hooks see it."""

    def forward(self, x):
        return torch.clamp(x, 0, 6)


def _relu6_to_relu(model):
    m = copy.deepcopy(model)
    for name, mod in list(m.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(mod, cname, _ReLU6AsReLU())
    return m


@pytest.fixture(scope="module")
def random_vgg():
    from cnnvis.models import load

    torch.manual_seed(0)
    return load("vgg16", weights="random")


@pytest.fixture(scope="module")
def lite0():
    from cnnvis.models import load

    return load("efficientnet_lite0")


def _agree(vm, x, t, guided_model=None):
    from captum.attr import Deconvolution, GuidedBackprop as CGB, InputXGradient
    from captum.attr import IntegratedGradients as CIG, Saliency as CS

    seq = _captum_seq(vm)
    close(Saliency(vm).attribute(x, t).abs(), CS(seq).attribute(x.clone(), target=t))
    close(GradientXInput(vm).attribute(x, t), InputXGradient(seq).attribute(x.clone(), target=t))
    close(IntegratedGradients(vm, steps=8).attribute(x, t), CIG(seq).attribute(x.clone(), target=t, n_steps=8),
          rel=1e-5)
    gseq = guided_model if guided_model is not None else seq
    close(GuidedBackprop(vm).attribute(x, t), CGB(gseq).attribute(x.clone(), target=t))
    close(Deconvnet(vm).attribute(x, t), Deconvolution(gseq).attribute(x.clone(), target=t))


def _gradcam_ref(seq, layer_module, x, t):
    from pytorch_grad_cam import GradCAM as GC
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GC(seq, [layer_module]) as g:
        return torch.tensor(g(x.clone(), targets=[ClassifierOutputTarget(t)]))


def _scaled(cam):
    c = cam - cam.amin((1, 2), keepdim=True)
    return c / c.amax((1, 2), keepdim=True).clamp_min(1e-7)


def test_agreement_random_vgg16(random_vgg):
    vm = random_vgg
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    _agree(vm, x, 3)
    seq = _captum_seq(vm)
    for layer, mod in (("relu5_3", vm.model.features[29]), ("conv4_1", vm.model.features[17])):
        ours = _scaled(GradCAM(vm, layer).attribute(x, 3)[:, 0])
        close(ours, _gradcam_ref(seq, mod, x, 3), rel=1e-5)


def test_agreement_embedded_relu6(lite0):
    vm = lite0
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    t = int(vm(x).argmax())
    twin = nn.Sequential(vm.preprocess.module(), _relu6_to_relu(vm.model)).eval()
    _agree(vm, x, t, guided_model=twin)
    # Captum on the real model silently gives the plain gradient (ReLU6 is not nn.ReLU); ours does not
    plain = Saliency(vm).attribute(x, t)
    for cls in (GuidedBackprop, Deconvnet):
        ours = cls(vm).attribute(x, t)
        assert float((ours - plain).abs().max()) > 0.1 * float(plain.abs().max())
    ours = _scaled(GradCAM(vm, "bn2").attribute(x, t)[:, 0])
    close(ours, _gradcam_ref(_captum_seq(vm), vm.model.bn2, x, t), rel=1e-5)
    assert hook_count(vm.model) == 0


def test_guided_gradcam_is_product(random_vgg):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ggc = GuidedGradCAM(random_vgg, "conv5_3").attribute(x, 1)
    exp = GuidedBackprop(random_vgg).attribute(x, 1) * GradCAM(random_vgg, "conv5_3").attribute(x, 1)
    close(ggc, exp)


@pytest.mark.slow
def test_real_photo_end_to_end(lite0):
    from PIL import Image

    from cnnvis.attribution import default_cam_layer

    import pathlib

    p = pathlib.Path(__file__).resolve().parents[2] / "shared/data/imagenet-samples/n02051845_pelican.JPEG"
    if not p.exists():
        pytest.skip("shared photos not available")
    img = Image.open(p)
    x = lite0.preprocess.prepare(img, size=160)
    assert default_cam_layer(lite0) == "bn2"
    cam = GradCAM(lite0).map(x, "pelican")
    assert cam.shape == (1, 160, 160) and float(cam.max()) > 0
    sal = Saliency(lite0).map(x)
    assert sal.shape == (1, 160, 160) and float(sal.max()) > 0
