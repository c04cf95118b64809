"""capture(): what a layer really produced, even when the model's own forward later writes into
that tensor in place (torchvision BasicBlock's `out += identity`)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cnnvis.attribution import GradCAM
from cnnvis.errors import CnnvisError
from cnnvis.hooks import capture, hook_count

tv_resnet = pytest.importorskip("torchvision.models.resnet")


class _OutOfPlaceBlock(tv_resnet.BasicBlock):
    """torchvision's BasicBlock with `out = out + identity` instead of `out += identity`."""

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


@pytest.fixture(scope="module")
def resnets():
    """(real torchvision resnet18 with random weights and BN statistics, the same with out-of-place adds)."""
    torch.manual_seed(0)
    net = tv_resnet.resnet18(weights=None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.eval()
    ref = copy.deepcopy(net)
    for m in ref.modules():
        if type(m) is tv_resnet.BasicBlock:
            m.__class__ = _OutOfPlaceBlock
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(net(x), ref(x))  # the same function
    return net, ref, x


def test_multi_layer_capture_is_what_the_layer_produced(resnets):
    net, ref, x = resnets
    layers = ["layer4.1.bn2", "layer3.0.bn2", "layer4.1.conv2", "fc"]
    for stop in (True, False):
        with torch.no_grad(), capture(net, layers, stop=stop) as cap, capture(ref, layers, stop=stop) as rcap:
            out, rout = cap.run(x), rcap.run(x)
            for n in layers:
                torch.testing.assert_close(cap[n], rcap[n], rtol=0, atol=1e-6, msg=n)
        if not stop:
            torch.testing.assert_close(out, rout)
    # the true output of the BN, computed by hand from the conv it follows
    with torch.no_grad(), capture(net, ["layer4.1.conv2", "layer4.1.bn2", "fc"]) as cap:
        cap.run(x)
        torch.testing.assert_close(cap["layer4.1.bn2"], net.layer4[1].bn2(cap["layer4.1.conv2"]), rtol=0, atol=1e-6)
    assert hook_count(net) == 0


def test_gradcam_at_bn_before_the_residual_add(resnets):
    net, ref, x = resnets
    a = GradCAM(net, "layer4.1.bn2").attribute(x, [3, 7])
    b = GradCAM(ref, "layer4.1.bn2").attribute(x, [3, 7])
    assert float(b.amax()) > 0
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.amax()))


def test_gradient_flows_through_the_captured_tensor(resnets):
    """The captured tensor stays on the path to the output: d out / d act is the true gradient."""
    net, ref, x = resnets
    grads = []
    for m in (net, ref):
        with torch.enable_grad(), capture(m, ["layer4.1.bn2", "fc"], stop=False) as cap:
            out = cap.run(x)
            (g,) = torch.autograd.grad(out[:, 5].sum(), cap["layer4.1.bn2"])
        grads.append(g)
    assert float(grads[1].abs().amax()) > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)


def test_copy_only_where_the_forward_goes_on():
    """The last requested layer ends a stopped forward: nothing can overwrite it, so it is not copied.
    Any other captured layer hands the network a copy and keeps the original."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    x = torch.rand(1, 3, 8, 8)
    seen = {}
    net[0].register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))  # runs before capture's hook
    net[1].register_forward_pre_hook(lambda m, i: seen.__setitem__("next_in", i[0]))
    with torch.no_grad(), capture(net, ["0"]) as cap:
        assert cap.run(x) is None
        assert cap["0"] is seen["out"] and "next_in" not in seen
    with torch.no_grad(), capture(net, ["0", "2"]) as cap:
        cap.run(x)
        assert cap["0"] is seen["out"] and seen["next_in"] is not cap["0"]
        torch.testing.assert_close(seen["next_in"], cap["0"], rtol=0, atol=0)
        torch.testing.assert_close(cap["2"], net[2](net[1](cap["0"])), rtol=0, atol=0)
    with torch.inference_mode(), capture(net, ["0", "1"], stop=False) as cap:  # no version counter there
        out = cap.run(x)
        torch.testing.assert_close(out, net(x), rtol=0, atol=0)


def test_tuple_outputs_and_aliases():
    class Split(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.split, self.same = Split(), nn.Identity()

        def forward(self, x):
            a, b = self.split(x)
            a += b                 # writes into the split's first output
            y = x * 1
            z = self.same(y)       # an alias of y ...
            y += 1                 # ... that the forward then overwrites: cannot be recovered, so it is an error
            return a + z

    net, x = Net(), torch.rand(1, 3, 3, 3)
    with torch.no_grad(), capture(net, ["split"], stop=False) as cap:
        cap.run(x)
        torch.testing.assert_close(cap["split"], x * 2, rtol=0, atol=0)
    with torch.no_grad(), capture(net, ["same"], stop=False) as cap, pytest.raises(CnnvisError, match="overwrites in place"):
        cap.run(x)
    assert hook_count(net) == 0
