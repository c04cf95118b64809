"""Attribution: tiny hand-set nets with literal answers, agreement with Captum / pytorch-grad-cam,
no side effects, clear errors. Tolerances: atol 1e-6 (relative to each map's max) for Captum,
1e-5 for pytorch-grad-cam (min-max scaled maps, cv2 vs torch bilinear resize)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from cnnvis.attribution import (Deconvnet, EigenCAM, GradCAM, GradCAMPlusPlus, GradientXInput,
                                GuidedBackprop, GuidedGradCAM, IntegratedGradients, LayerCAM, LayerTarget,
                                NoiseTunnel, Saliency, ScoreCAM, SmoothGrad, VarGrad, XGradCAM, list_methods,
                                method)
from cnnvis.errors import CnnvisError
from cnnvis.hooks import hook_count
from conftest import sample

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
    # the pure deconvnet rule ignores the forward mask: relu([0.5, 0.5]) @ w1 = [0, 1.5]; the default
    # rule ('fired') passes the signal only where the unit fired: nothing here
    torch.testing.assert_close(Deconvnet(net, rule="zf").attribute(xd, 1), torch.tensor([[[[0.0, 1.5]]]]))
    torch.testing.assert_close(Deconvnet(net).attribute(xd, 1), torch.zeros(1, 1, 1, 2))
    # IG on a piecewise-linear net from 0 with many steps: completeness is exact
    ig = IntegratedGradients(net, steps=64)
    a, delta = ig.attribute(X2, 0, return_delta=True)
    assert abs(float(a.sum()) - float(net(X2)[0, 0] - net(torch.zeros_like(X2))[0, 0])) < 1e-4
    assert delta.shape == (1,) and abs(float(delta[0])) < 1e-4
    torch.testing.assert_close(ig.attribute(X2, 0), a)
    assert not hasattr(ig, "delta")  # no state left on the method object
    # without the input factor: the path-mean gradient; the line 0 -> X2 has both units active: [4, -1]
    torch.testing.assert_close(IntegratedGradients(net, steps=64, multiply_by_inputs=False).attribute(X2, 0),
                               torch.tensor([[[[4.0, -1.0]]]]))


def test_relu6_gets_the_rule_too():
    net = Tiny(nn.ReLU6())
    xd = torch.tensor([[[[1.0, -1.0]]]])
    torch.testing.assert_close(Deconvnet(net, rule="zf").attribute(xd, 1), torch.tensor([[[[0.0, 1.5]]]]))
    # saturated unit (pre-activation 15 > 6): plain gradient and guided are 0 through it; it fired
    # (output 6 > 0), so the deconvnet's 'fired' rule passes relu([1, -3]) * [1, 0] @ w1 = [1, 2]
    xs = torch.tensor([[[[5.0, 5.0]]]])  # pre-activations (15, 0)
    torch.testing.assert_close(GuidedBackprop(net).attribute(xs, 0), torch.zeros(1, 1, 1, 2))
    torch.testing.assert_close(Deconvnet(net).attribute(xs, 0), torch.tensor([[[[1.0, 2.0]]]]))
    with pytest.raises(CnnvisError, match="deconvnet rule must be 'fired'"):
        Deconvnet(net, rule="guided")


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


def _inplace_cam_net():
    """conv 1x1 (weights 1, -1) -> ReLU(inplace) -> mean -> linear (2, -1): score = 2 mean relu(x) - mean relu(-x)."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        lin.weight.copy_(torch.tensor([[2.0, -1.0]]))
    return nn.Sequential(conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin)


def test_gradcam_cam_is_guarded():
    # conv1 activations (x, -x), x = [[-1, 2], [3, -4]]; gradients 2/4 [x > 0] and -1/4 [x < 0]; weights 0.25 and
    # -0.125 -> cam = relu(0.25 x + 0.125 x) = relu(0.375 x). The post-ReLU CAM (in-place ReLU left on) would be
    # relu(0.25 relu(x) - 0.125 relu(-x)) = [[0, 0.5], [0.75, 0]].
    net = _inplace_cam_net()
    x = torch.tensor([[[[-1.0, 2.0], [3.0, -4.0]]]])
    exp = torch.tensor([[[[0.0, 0.75], [1.125, 0.0]]]])
    torch.testing.assert_close(GradCAM(net, "0").cam(x, 0), exp)
    torch.testing.assert_close(GradCAM(net, "0").attribute(x, 0), exp)
    assert net[1].inplace and hook_count(net) == 0
    # the layer's input instead: the image itself (1 channel, gradient (2 [x>0] + [x<0]) / 4, mean 6/16)
    torch.testing.assert_close(GradCAM(net, "1", use_input=True).cam(x, 0), GradCAM(net, "0").cam(x, 0))
    torch.testing.assert_close(GradCAM(net, "0", use_input=True).cam(x, 0), torch.relu(x * 6 / 16))


def test_cam_family_literal():
    net = _inplace_cam_net()
    x = torch.tensor([[[[-1.0, 2.0], [3.0, -4.0]]]])
    a = torch.cat([x, -x], 1)
    g = torch.cat([0.5 * (x > 0), -0.25 * (x < 0)], 1)
    # LayerCAM: relu(g) * A, summed over channels: 0.5 relu(x)
    torch.testing.assert_close(LayerCAM(net, "0").cam(x, 0), 0.5 * torch.relu(x))
    # XGrad-CAM: w_k = sum(g A_k) / sum(A_k): (0.5 * 5 / 0, ...) -> sum(A_k) = 0: eps 1e-7 keeps it finite
    w = (g * a).sum((2, 3), keepdim=True) / (a.sum((2, 3), keepdim=True) + 1e-7)
    torch.testing.assert_close(XGradCAM(net, "0").cam(x, 0), torch.relu((w * a).sum(1, keepdim=True)))
    # Grad-CAM++ with sum(A_k) = 0: alpha = g^2 / (2 g^2) = 1/2 where g != 0; w = sum relu(g) / 2 = (0.5, 0)
    torch.testing.assert_close(GradCAMPlusPlus(net, "0").cam(x, 0), torch.relu(0.5 * x))
    # Score-CAM: masks min-max scaled A_k; scores 2 mean relu(x m) - mean relu(-x m) per mask
    m0 = (x + 4) / 7
    m1 = (-x + 3) / 7
    s = torch.stack([2 * (x * m).relu().mean() - (-x * m).relu().mean() for m in (m0, m1)]).softmax(0)
    torch.testing.assert_close(ScoreCAM(net, "0").cam(x, 0), torch.relu(s[0] * x - s[1] * x))
    # Eigen-CAM: A = (x, -x) (mean 0); first principal direction +-(1, -1)/sqrt 2 -> projection +-sqrt(2) x; the sign
    # makes the largest magnitude positive: |-4| > |3| -> -sqrt(2) x
    exp = torch.relu(-(2 ** 0.5) * x)
    torch.testing.assert_close(EigenCAM(net, "0").cam(x), exp)


# ----------------------------------------------------------------------------- targets

class Grid(nn.Module):
    """Tiny with its 2 outputs laid out as a (1, 2) grid per image: output[:, 0, j] = Tiny class j."""

    def __init__(self):
        super().__init__()
        self.tiny = Tiny()

    def forward(self, x):
        return self.tiny(x).view(-1, 1, 2)


def test_tuple_list_callable_targets():
    net = Grid()
    # d class0 / dx = [4, -1], d class1 / dx = [0, 1.5] at X2
    torch.testing.assert_close(Saliency(net).attribute(X2, (0, 1)), torch.tensor([[[[0.0, 1.5]]]]))
    torch.testing.assert_close(Saliency(net).attribute(X2, (0,)), torch.tensor([[[[4.0, 0.5]]]]))  # rest summed
    torch.testing.assert_close(Saliency(net).attribute(X2, lambda o: o[:, 0, 0] * 2), torch.tensor([[[[8.0, -2.0]]]]))
    x = torch.cat([X2, X2])
    exp = torch.tensor([[[[4.0, -1.0]]], [[[0.0, 1.5]]]])
    torch.testing.assert_close(Saliency(net).attribute(x, [(0, 0), (0, 1)]), exp)
    torch.testing.assert_close(Saliency(net).attribute(x, torch.tensor([[0, 0], [0, 1]])), exp)
    torch.testing.assert_close(Saliency(Tiny()).attribute(x, [0, 1]), exp)
    torch.testing.assert_close(Saliency(Tiny()).attribute(x, torch.tensor([0, 1])), exp)
    # per-image targets survive the internal expansion (IG's path batches, the noise tunnel's copies)
    ig = IntegratedGradients(Tiny(), steps=8, batch_size=6, multiply_by_inputs=False)
    torch.testing.assert_close(ig.attribute(x, [0, 1]), exp)
    torch.testing.assert_close(SmoothGrad(Tiny(), samples=5, noise=0.0, batch_size=4).attribute(x, [0, 1]), exp)
    torch.testing.assert_close(VarGrad(Tiny(), samples=3, noise=0.0).attribute(x, [0, 1]), torch.zeros_like(exp))
    # Captum agrees on a tuple target
    from captum.attr import InputXGradient

    close(GradientXInput(net).attribute(X2, (0, 1)), InputXGradient(net).attribute(X2.clone(), target=(0, 1)))


def test_targets_checked_against_the_callers_batch():
    net = Tiny()
    with pytest.raises(CnnvisError, match="got 12 targets for 1 image;"):
        IntegratedGradients(net, steps=10, batch_size=12).attribute(X2, list(range(2)) * 6)
    with pytest.raises(CnnvisError, match="got 16 targets for 1 image;"):
        SmoothGrad(net, samples=16).attribute(X2, [0] * 16)
    with pytest.raises(CnnvisError, match="got 16 targets for 1 image;"):
        NoiseTunnel(GuidedBackprop(net), samples=16).attribute(X2, torch.zeros(16, dtype=torch.long))
    x4 = X2.expand(4, -1, -1, -1)
    with pytest.raises(CnnvisError, match="got 20 targets for 4 images;"):
        IntegratedGradients(net, steps=4, batch_size=8).attribute(x4, [0] * 20)
    with pytest.raises(CnnvisError, match="got 2 targets for 4 images;"):
        net2 = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten(), nn.Linear(8, 2))
        ScoreCAM(net2, "0").cam(torch.rand(4, 3, 2, 2), [0, 1])
    with pytest.raises(CnnvisError, match="target class 2 is out of range"):
        Saliency(net).attribute(x4, [0, 1, 2, 0])
    with pytest.raises(CnnvisError, match="2 indices but the model's output has shape"):
        Saliency(net).attribute(X2, (0, 1))
    for bad in (True, 0.5, [0.5], object()):
        with pytest.raises(CnnvisError, match="target must be"):
            Saliency(net).attribute(X2, bad)
    with pytest.raises(CnnvisError, match="one class index .* per image, all alike"):
        Saliency(Grid()).attribute(torch.cat([X2, X2]), [(0, 0), 1])


# ----------------------------------------------------------------------------- side effects

def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            hook_count(model), {k: v.clone() for k, v in model.state_dict().items()},
            [getattr(m, "inplace", None) for m in model.modules()])


@pytest.mark.parametrize("name", list_methods())
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
    opts = {"steps": 4} if name == "ig" else {"samples": 2} if name in ("smoothgrad", "vargrad") else {}
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
    for name in ("saliency", "guided", "deconvnet", "gradcam", "scorecam", "vargrad"):
        m = method(name, net, **({"layer": "0"} if name in ("gradcam", "scorecam") else {}))
        with pytest.raises(RuntimeError, match="boom"):
            m.attribute(torch.rand(1, 3, 8, 8), 0)
        if name in ("gradcam", "scorecam"):
            with pytest.raises(RuntimeError, match="boom"):
                m.cam(torch.rand(1, 3, 8, 8), 0)
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
def random_vgg64():
    """random_vgg in float64: batch-size dependent float32 kernels (they differ by CPU) stay out of exact checks."""
    from cnnvis.models import load

    torch.manual_seed(0)
    vm = load("vgg16", weights="random")
    vm.model.double()
    return vm


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
    close(Deconvnet(vm, rule="zf").attribute(x, t), Deconvolution(gseq).attribute(x.clone(), target=t))


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

    img = Image.open(sample("pelican"))  # the shared photo (a missing one fails, never skips)
    x = lite0.preprocess.prepare(img, size=160)
    assert default_cam_layer(lite0) == "bn2"
    cam = GradCAM(lite0).map(x, "pelican")
    assert cam.shape == (1, 160, 160) and float(cam.max()) > 0
    sal = Saliency(lite0).map(x)
    assert sal.shape == (1, 160, 160) and float(sal.max()) > 0


# ----------------------------------------------------------------------------- the CAM family vs pytorch-grad-cam

def _peer_cam(cls, seq, layer_module, x, t):
    with cls(seq, [layer_module]) as g:
        g.batch_size = 16
        return torch.tensor(g(x.clone(), targets=[ClassifierOutputTarget(int(i)) for i in t]))


from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

CAM_PEERS = [("gradcam", "GradCAM"), ("gradcam++", "GradCAMPlusPlus"), ("xgradcam", "XGradCAM"),
             ("layercam", "LayerCAM")]


@pytest.mark.parametrize("name,peer", CAM_PEERS)
def test_cam_family_equals_pytorch_grad_cam(random_vgg, name, peer):
    """pytorch-grad-cam min-max scales the raw CAM and resizes it with cv2 (bilinear, half-pixel): scaling ours
    the same way after our (equal) bilinear upsampling gives the same map (min-max commutes with the resize)."""
    import pytorch_grad_cam

    vm = random_vgg
    seq = _captum_seq(vm)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    t = [3, 5]
    for layer, mod in (("relu5_3", vm.model.features[29]), ("conv4_1", vm.model.features[17])):
        ours = _scaled(method(name, vm, layer=layer).attribute(x, t)[:, 0])
        close(ours, _peer_cam(getattr(pytorch_grad_cam, peer), seq, mod, x, t), rel=1e-5)


def _small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(12, 5)).eval()


def test_scorecam_equals_pytorch_grad_cam():
    import pytorch_grad_cam

    net = _small_cnn()
    with torch.no_grad():
        net[0].bias[:3] = -100.0  # channels 0-2 dead after the ReLU: constant maps, mask 0, one shared forward
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    for layer in ("5", "2"):
        for bs in (None, 5):
            ours = _scaled(ScoreCAM(net, layer, batch_size=bs).attribute(x, [1, 4])[:, 0])
            close(ours, _peer_cam(pytorch_grad_cam.ScoreCAM, net, net.get_submodule(layer), x, [1, 4]), rel=1e-5)
    seen = []
    h = net[0].register_forward_hook(lambda m, i, o: seen.append(len(o)))
    try:
        ScoreCAM(net, "2", batch_size=4).cam(x, [1, 4])
    finally:
        h.remove()
    assert seen == [2, 1, 4, 1, 1, 4, 1]  # activations; per image: black image, live channels 3-7 in 4 + 1


def test_eigencam_equals_pytorch_grad_cam(random_vgg):
    """pytorch-grad-cam's EigenCAM leaves the SVD's sign to LAPACK; ours fixes it as its sign-corrected projection
    does: equal to that one exactly, and to the uncorrected one up to the sign."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection, get_2d_projection_with_sign_correction

    from cnnvis.hooks import capture

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    # (hw, C): (16, 512), (64, 512) on VGG16; (256, 8) on the small net (the other Gram matrix)
    for vm, layer, xi in ((random_vgg, "conv5_3", x), (random_vgg, "relu4_1", x), (_small_cnn(), "2", x[..., :16, :16])):
        ours = EigenCAM(vm, layer).cam(xi)[:, 0]
        with torch.no_grad(), capture(vm, [layer]) as cap:
            cap.run(xi)
            a = cap[layer].numpy()
        close(ours, torch.tensor(get_2d_projection_with_sign_correction(a)).relu(), rel=1e-5)
        raw = torch.tensor(get_2d_projection(a))
        for i in range(2):
            assert min(float((ours[i] - raw[i].relu()).abs().max()),
                       float((ours[i] - (-raw[i]).relu()).abs().max())) <= 1e-5 * float(ours[i].max())


def test_default_cam_layer_is_the_block_output(random_vgg, lite0, hed):
    import pytorch_grad_cam
    import torchvision

    from cnnvis.attribution import default_cam_layer

    torch.manual_seed(0)
    rn = torchvision.models.resnet18(weights=None).eval()
    assert default_cam_layer(rn) == "layer4.1"  # layer4[-1]: after the residual add and the block's ReLU
    assert default_cam_layer(random_vgg) == "features.29"  # relu5_3, before the last max-pool
    assert default_cam_layer(lite0) == "bn2"  # BN + ReLU6 after conv_head
    assert default_cam_layer(hed) == "features.29"  # the trunk's relu5_3, not a 1-channel side output
    assert default_cam_layer(torchvision.models.densenet121(weights=None), 64) == "features.norm5"
    assert hook_count(rn) == 0
    # Grad-CAM at the default layer = pytorch-grad-cam at target_layers=[model.layer4[-1]]
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    m = GradCAM(rn)
    ours = _scaled(m.attribute(x, [2])[:, 0])
    assert m.layer == "layer4.1"
    close(ours, _peer_cam(pytorch_grad_cam.GradCAM, rn, rn.layer4[-1], x, [2]), rel=1e-5)


def test_cam_of_layer_input_equals_captum(random_vgg):
    from captum.attr import LayerGradCam

    vm = random_vgg
    seq = _captum_seq(vm)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    ours = GradCAM(vm, "pool4", use_input=True).cam(x, 3)
    ref = LayerGradCam(seq, vm.model.features[23]).attribute(x.clone(), 3, attribute_to_layer_input=True,
                                                             relu_attributions=True)
    close(ours, ref)
    close(ours, GradCAM(vm, "relu4_3").cam(x, 3))  # pool4's input is relu4_3's output


# ----------------------------------------------------------------------------- Captum: Guided Grad-CAM, IG, noise

def test_guided_gradcam_nearest_equals_captum(random_vgg):
    from captum.attr import GuidedGradCam

    vm = random_vgg
    seq = _captum_seq(vm)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    for layer, mod in (("conv5_3", vm.model.features[28]), ("relu4_2", vm.model.features[20])):
        ref = GuidedGradCam(seq, mod).attribute(x.clone(), target=torch.tensor([1, 7]))
        near = GuidedGradCAM(vm, layer, interpolate="nearest").attribute(x, [1, 7])
        close(near, ref)
        bil = GuidedGradCAM(vm, layer).attribute(x, [1, 7])  # the default: bilinear
        assert float((bil - ref).abs().max()) > 1e-3 * float(ref.abs().max())
    with pytest.raises(CnnvisError, match="unknown interpolate mode"):
        GuidedGradCAM(vm, interpolate="bicubic")


def test_ig_options_equal_captum(random_vgg64):
    from captum.attr import IntegratedGradients as CIG

    vm = random_vgg64  # float64: ours runs batches of 4, Captum one batch of 12
    seq = _captum_seq(vm).double()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    t = [3, 8]
    ref = CIG(seq, multiply_by_inputs=False).attribute(x.clone(), target=t, n_steps=6, baselines=0.5)
    close(IntegratedGradients(vm, steps=6, baseline=0.5, multiply_by_inputs=False).attribute(x, t), ref, rel=1e-5)
    ref, ref_delta = CIG(seq).attribute(x.clone(), target=t, n_steps=6, return_convergence_delta=True)
    ours, delta = IntegratedGradients(vm, steps=6, batch_size=4).attribute(x, t, return_delta=True)
    close(ours, ref, rel=1e-5)
    assert delta.shape == (2,)
    torch.testing.assert_close(delta, ref_delta.to(delta.dtype), atol=1e-4 * float(seq(x).detach().abs().max()), rtol=0)


@pytest.mark.parametrize("inner,kind", [("guided", "vargrad"), ("gradxinput", "smoothgrad"),
                                        ("ig", "smoothgrad_sq"), ("deconvnet", "vargrad")])
def test_noise_tunnel_equals_captum(random_vgg, monkeypatch, inner, kind):
    """Same noise tensors: Captum's draws (torch.normal) are recorded, then replayed into ours."""
    from captum.attr import Deconvolution, GuidedBackprop as CGB, InputXGradient
    from captum.attr import IntegratedGradients as CIG, NoiseTunnel as CNT

    vm = random_vgg
    seq = _captum_seq(vm)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    t = [2, 6]
    peer = {"guided": CGB, "gradxinput": InputXGradient, "ig": CIG, "deconvnet": Deconvolution}[inner](seq)
    kw = {"n_steps": 3} if inner == "ig" else {}
    drawn = []
    normal = torch.normal

    def record(*a, **k):
        drawn.append(normal(*a, **k))
        return drawn[-1]

    monkeypatch.setattr(torch, "normal", record)
    ref = CNT(peer).attribute(x.clone(), nt_type=kind, nt_samples=5, nt_samples_batch_size=2, stdevs=0.2,
                              target=t, **kw)
    monkeypatch.setattr(torch, "normal", normal)
    assert len(drawn) == 3  # chunks of 2, 2, 1 samples

    class Replay(NoiseTunnel):
        def draw(self, gen, shape, std):
            n = drawn.pop(0)  # Captum: (B * r, ...) image-major (repeat_interleave); ours: (r, B, ...)
            return n.view(shape[1], shape[0], *shape[2:]).transpose(0, 1)

    opts = {"steps": 3} if inner == "ig" else {"rule": "zf"} if inner == "deconvnet" else {}
    ours = Replay(method(inner, vm, **opts), kind=kind, samples=5, stdev=0.2, batch_size=4).attribute(x, t)
    close(ours, ref, rel=1e-5)
    assert not drawn


def test_noise_tunnel_over_cam_and_errors(random_vgg64):
    vm = random_vgg64  # float64: a batch of 3 vs a batch of 1
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    nt = NoiseTunnel(GradCAM(vm, "conv4_3"), kind="smoothgrad", samples=3, stdev=0.0)
    close(nt.attribute(x, 3), GradCAM(vm, "conv4_3").attribute(x, 3))
    assert nt.map(x, 3).shape == (1, 32, 32)
    sg = method("smoothgrad", vm, method="gradcam", layer="conv4_3", samples=2, noise=0.0)  # options go to the inner
    close(sg.attribute(x, 3), GradCAM(vm, "conv4_3").attribute(x, 3))
    a = NoiseTunnel(GuidedBackprop(vm), kind="vargrad", samples=4, stdev=0.1, seed=1).attribute(x, 3)
    assert float(a.min()) >= -1e-12 and float(a.max()) > 0
    with pytest.raises(CnnvisError, match="unknown noise tunnel kind"):
        NoiseTunnel(Saliency(vm), kind="var")
    with pytest.raises(CnnvisError, match="wraps an attribution method"):
        NoiseTunnel(vm)
    with pytest.raises(CnnvisError, match="samples must be >= 1"):
        NoiseTunnel(Saliency(vm), samples=0)
    with pytest.raises(CnnvisError, match="vargrad: bad option for method 'saliency'.*'kind'"):
        method("vargrad", vm, kind="smoothgrad")
