"""optvis on tiny nets with known answers: objectives, parameterizations, transforms, render loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnvis.errors import CnnvisError
from cnnvis.hooks import hook_count
from cnnvis.optvis import (
    LOGITS, BoundedRange, FourierImage, GradientRMS, Jitter, Pad, PixelImage, RandomAffine, RandomBlur, RandomRotate,
    RandomScale, RenderConfig, Roll, UntilProb, channel, class_logit, direction, diversity, layer_l2, neuron, render,
    standard_transforms,
)
from cnnvis.optvis.objectives import Objective


def colour_net() -> nn.Module:
    """conv '0' (1x1): channel 0 = R - B + 1, channel 1 = G, channel 2 = -G; then ReLU '1', pool, linear '4'.

    For images in [0, 1] the logits are: class 0 = mean(R - B) + 1, class 1 = mean(G), class 2 = 0.
    """
    conv = nn.Conv2d(3, 3, 1)
    lin = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0, -1], [0, 1, 0], [0, -1, 0]]).view(3, 3, 1, 1))
        conv.bias.copy_(torch.tensor([1.0, 0, 0]))
        lin.weight.copy_(torch.eye(3))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin)


PIXEL = dict(preset="chollet2016", size=16)


def test_channel_known_answer():
    """Maximizing R - B over images in [0, 1] has one answer: R = 1, B = 0 everywhere."""
    net = colour_net()
    res = render(net, channel("0", 0), steps=200, lr=0.05, **PIXEL)
    img = res.images[0]
    assert img[0].min() > 0.99 and img[2].max() < 0.01
    assert res.final_values[0] == pytest.approx(2.0, abs=0.01)


def test_class_logit_known_answer_and_top5():
    net = colour_net()
    res = render(net, class_logit(1), steps=150, lr=0.05, **PIXEL)
    assert res.images[0, 1].min() > 0.99  # green saturated
    assert res.targets == [1] and res.top5[0][0].index == 1
    assert res.probs.shape == (1,)


@pytest.mark.parametrize("preset", ["chollet2016", "yosinski2015", "lucid2017", "robust"])
def test_each_preset_improves_channel(tiny_cnn, preset):
    res = render(tiny_cnn, channel("4", [0, 1, 2]), preset=preset, size=32, steps=40,
                 lr=0.2 if preset in ("lucid2017", "robust") else None)
    assert res.values.shape == (40, 3)
    assert (res.values[-6:].mean(0) > res.values[:6].mean(0)).all()


@pytest.mark.parametrize("make", [
    lambda: channel("4", 3),
    lambda: neuron("4", 3),
    lambda: neuron("4", 2, x=1, y=2),
    lambda: class_logit(2),
    lambda: layer_l2("4"),
    lambda: direction("4", torch.linspace(-1, 1, 16)),
    lambda: channel("4", 3) - 0.5 * layer_l2("1") + 2 * neuron("4", 1),
])
def test_each_objective_improves(tiny_cnn, make):
    res = render(tiny_cnn, make(), preset="lucid2017", size=32, steps=30, lr=0.1, transforms="none")
    assert res.values[-3:].mean() > res.values[:3].mean()


def test_diversity_improves():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    res = render(net, diversity("1"), batch=3, preset="lucid2017", size=24, steps=40, lr=0.1, transforms="none")
    assert res.values.shape == (40, 3)
    assert res.values[-1].mean() > res.values[0].mean()


def test_objective_algebra_and_layers():
    a, b = channel("conv3_1", 1), layer_l2("stage4")
    o = a - 2 * b + 0.5 * class_logit("pelican")
    assert o.layers == ("conv3_1", "stage4", LOGITS)
    acts = {"conv3_1": torch.ones(2, 4, 3, 3), "stage4": torch.full((2, 5, 2, 2), 2.0)}
    assert torch.allclose((a - 2 * b)(acts), torch.tensor([1 - 8.0, 1 - 8.0]))
    assert torch.allclose((-a / 2 + 1)(acts), torch.tensor([0.5, 0.5]))
    assert sum([a, a])(acts).tolist() == [2.0, 2.0]
    with pytest.raises(CnnvisError):
        channel("x", [0, 1]) + channel("x", [0, 1, 2])


def test_batched_channel_picks_one_channel_per_image():
    acts = {"l": torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 2, 2)}
    v = channel("l", [2, 0])(acts)
    assert v.tolist() == [acts["l"][0, 2].mean().item(), acts["l"][1, 0].mean().item()]


def test_forward_stops_after_deepest_layer():
    ran = []
    net = colour_net()
    net[4].register_forward_hook(lambda *a: ran.append(1))
    render(net, channel("1", 0), steps=3, **PIXEL)
    assert ran == []  # the linear head never ran
    render(net, class_logit(0), steps=3, **PIXEL)
    assert len(ran) >= 3


def test_model_unchanged(tiny_cnn):
    tiny_cnn.train()
    tiny_cnn[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    flags = [m.training for m in tiny_cnn.modules()]
    grads = [p.requires_grad for p in tiny_cnn.parameters()]
    n_hooks = hook_count(tiny_cnn)
    render(tiny_cnn, channel("4", 1) + class_logit(0), size=32, steps=5, preset="robust")
    after = tiny_cnn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BN running stats
    assert [m.training for m in tiny_cnn.modules()] == flags
    assert [p.requires_grad for p in tiny_cnn.parameters()] == grads
    assert all(p.grad is None for p in tiny_cnn.parameters())
    assert hook_count(tiny_cnn) == n_hooks
    assert tiny_cnn[2].inplace is True


def test_model_unchanged_when_render_raises(tiny_cnn):
    tiny_cnn.train()
    flags = [m.training for m in tiny_cnn.modules()]
    grads = [p.requires_grad for p in tiny_cnn.parameters()]
    with pytest.raises(CnnvisError, match="out of range"):
        render(tiny_cnn, channel("4", 99), size=32, steps=5)  # raises inside the loop, hooks installed
    assert [m.training for m in tiny_cnn.modules()] == flags
    assert [p.requires_grad for p in tiny_cnn.parameters()] == grads
    assert hook_count(tiny_cnn) == 0


def test_seeded_reproducibility(tiny_cnn):
    kw = dict(size=32, steps=10, preset="robust")
    a = render(tiny_cnn, channel("4", [1, 2]), seed=3, **kw)
    b = render(tiny_cnn, channel("4", [1, 2]), seed=3, **kw)
    c = render(tiny_cnn, channel("4", [1, 2]), seed=4, **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.values, b.values)
    assert not torch.equal(a.images, c.images)
    assert a.config.seed == 3 and RenderConfig.from_dict(a.config.to_dict()) == a.config


# Batched convolutions on the CPU may round differently from single-image ones (other blocking,
# other summation order): ~1e-7 per step, which 24 Adam steps grow to ~1e-5 at most here. The
# transforms and random starts themselves are bit-identical per image (own generator each).
TOL = 1e-4


@pytest.mark.parametrize("preset", ["robust", "lucid2017", "yosinski2015"])
def test_channel_alone_equals_channel_in_a_batch_of_16(tiny_cnn, preset):
    kw = dict(preset=preset, size=40, steps=24, seed=5)
    alone = render(tiny_cnn, channel("4", 5), **kw)
    batch = render(tiny_cnn, channel("4", list(range(16))), **kw)
    assert batch.images.shape == (16, 3, 40, 40)
    assert (alone.images[0] - batch.images[5]).abs().max() < TOL
    assert torch.allclose(alone.values[:, 0], batch.values[:, 5], atol=TOL)
    assert (alone.images[0] - batch.images[4]).abs().max() > 0.01  # another channel: another image
    other = render(tiny_cnn, channel("4", list(range(15, -1, -1))), **kw)  # channel 5 at place 10
    assert (alone.images[0] - other.images[10]).abs().max() < TOL


def test_class_image_alone_equals_class_image_in_a_batch(tiny_cnn):
    kw = dict(size=40, steps=24, seed=2)
    alone = render(tiny_cnn, class_logit(3), **kw)
    batch = render(tiny_cnn, class_logit([0, 3, 1, 4]), **kw)
    assert (alone.images[0] - batch.images[1]).abs().max() < TOL
    assert float(alone.probs[0]) == pytest.approx(float(batch.probs[1]), abs=1e-3)
    # per-image stopping: a batch stops image by image, each at the step it would stop alone
    net, kw = colour_net(), dict(size=24, steps=300, stop=UntilProb(0.36, min_steps=4), check_every=4, seed=2)
    a = render(net, class_logit(1), **kw)
    b = render(net, class_logit([0, 1]), **kw)  # class 0 is easy: it stops long before class 1
    assert a.stopped == b.stopped == "until_prob" and b.image_steps[0] < b.image_steps[1] == a.image_steps[0] < 300
    assert (a.images[0] - b.images[1]).abs().max() < TOL
    assert b.values[-1, 0] == b.values[b.image_steps[0] - 1, 0]  # a stopped image keeps its value


def test_seed_key_is_what_the_image_shows(tiny_cnn):
    from cnnvis.optvis.render import image_keys
    from cnnvis.optvis.seeding import image_seed

    assert image_keys(channel("4", [2, 5]), 2) == ["channel(4,2)", "channel(4,5)"]
    assert image_keys(layer_l2("4"), 3) == ["l2(4)", "l2(4)#1", "l2(4)#2"]
    assert image_seed(0, "channel(4,5)") == image_seed(0, "channel(4,5)") != image_seed(1, "channel(4,5)")
    assert image_seed(0, "channel(4,5)") == 4114600097806597229  # stable across runs and machines


def test_bad_inputs(tiny_cnn):
    with pytest.raises(CnnvisError, match="out of range"):
        render(tiny_cnn, channel("4", 16), size=32, steps=2)
    with pytest.raises(CnnvisError, match="spatial"):
        render(tiny_cnn, neuron("8", 0), size=32, steps=2)  # Linear output (B, 5)
    with pytest.raises(CnnvisError, match="unknown layer"):
        render(tiny_cnn, channel("conv9", 0), size=32, steps=2)
    from cnnvis.models import wrap

    with pytest.raises(CnnvisError, match="too small"):
        render(wrap(tiny_cnn), channel("4", 0), size=16, steps=2)  # VisModel min_size 32
    for bad in (dict(steps=0), dict(lr=float("nan")), dict(lr=-1), dict(optimizer="lbfgs"),
                dict(preset="lucid2071")):
        with pytest.raises(CnnvisError):
            render(tiny_cnn, class_logit(0), size=32, **{"steps": 2, **bad})
    with pytest.raises(CnnvisError, match="prob"):
        UntilProb(1.5)
    with pytest.raises(CnnvisError, match="class objective"):
        render(tiny_cnn, channel("4", 0), size=32, steps=2, stop=UntilProb(0.9))
    with pytest.raises(CnnvisError, match="batch"):
        render(tiny_cnn, channel("4", [0, 1]), batch=3, size=32, steps=2)


class NaNAfter(nn.Module):
    """A conv whose output turns NaN after `n` forward calls."""

    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.n, self.calls = n, 0

    def forward(self, x):
        self.calls += 1
        out = self.conv._conv_forward(x, self.conv.weight, self.conv.bias)
        return out * float("nan") if self.calls > self.n else out


def nan_net(n: int) -> nn.Module:
    return nn.Sequential(NaNAfter(n), nn.ReLU())


def test_nan_stops_and_keeps_last_good_image():
    net = nan_net(20)
    res = render(net, channel("0", 0), size=16, steps=100, check_every=8, preset="lucid2017")
    assert res.stopped == "non-finite" and not res.ok
    assert "NaN" in res.message and "step 21" in res.message
    assert torch.isfinite(res.images).all()
    assert res.steps == 24 and hook_count(net) == 0


def test_until_prob_stops_early():
    net = colour_net()
    res = render(net, class_logit(0), steps=500, lr=0.05, stop=UntilProb(0.5), check_every=4, **PIXEL)
    assert res.stopped == "until_prob" and res.steps < 500
    assert res.probs[0] >= 0.5


def test_octaves_and_custom_photo_param(tiny_cnn):
    res = render(tiny_cnn, channel("4", 0), size=48, steps=12, octaves=3, preset="lucid2017")
    assert res.images.shape == (1, 3, 48, 48) and res.values.shape == (12, 1)
    photo = torch.rand(1, 3, 40, 56)
    p = PixelImage.from_image(photo)
    res = render(tiny_cnn, layer_l2("4"), init=p, steps=5, lr=0.01, custom_transforms=Roll(4),
                 custom_regularizers=[BoundedRange()])
    assert res.images.shape == (1, 3, 40, 56)
    assert (res.images - photo).abs().max() < 0.1 and not torch.equal(res.images, photo)


def test_fourier_param_round_trip_and_range():
    x = torch.rand(2, 3, 20, 33) * 0.9 + 0.05
    p = FourierImage.from_image(x)
    assert p().shape == (2, 3, 20, 33)
    assert (p() - x).abs().max() < 1e-4
    q = FourierImage(3, 24, 24, sd=5.0, generator=torch.Generator().manual_seed(0))
    y = q()
    assert y.min() >= 0 and y.max() <= 1
    r = q.resized(32, 40)
    assert r().shape == (3, 3, 32, 40)


def test_transforms_shapes_and_generator():
    x = torch.rand(2, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    assert Jitter(4)(x, g).shape == (2, 3, 28, 28)
    assert Pad(3)(x, g).shape == (2, 3, 38, 38)
    assert Roll(3)(x, g).shape == x.shape
    assert RandomRotate([0])(x, g) is x
    assert RandomScale([0.5])(x, g).shape == (2, 3, 32, 32)  # a zoom: same size
    assert RandomAffine(scale=(1, 1), degrees=0)(x, g).sub(x).abs().max() < 1e-5
    t = standard_transforms()
    a = t(x, torch.Generator().manual_seed(5))
    b = t(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # differentiable
    x.requires_grad_(True)
    RandomAffine(degrees=20, translate=3)(x, g).sum().backward()
    assert x.grad is not None and math.isfinite(float(x.grad.sum()))


@pytest.mark.parametrize("t", [
    RandomAffine(scale=(0.85, 1.2), degrees=10, translate=16, soften=(0.5, 2.0), crop=8),
    standard_transforms(), Jitter(6), Roll(5), RandomScale([0.9, 1.1]), RandomRotate([-5, 5]),
    RandomBlur(1.0, p=0.5),
])
def test_transforms_are_per_image(t):
    """Image i of a batch is transformed by its own generator only: the same as alone."""
    from cnnvis.optvis.seeding import image_generators

    x = torch.rand(6, 3, 40, 36, generator=torch.Generator().manual_seed(1))
    keys = [f"img{i}" for i in range(6)]
    batch = t(x, image_generators(3, keys))
    for i in range(6):
        alone = t(x[i:i + 1], image_generators(3, keys[i:i + 1]))
        assert alone.shape == batch[i:i + 1].shape
        assert (alone - batch[i:i + 1]).abs().max() < 1e-5, i
    other = t(x, image_generators(4, keys))
    assert not torch.allclose(other, batch)


def test_soften_matches_interpolate():
    """A softened image is sampled on a coarse grid and upsampled like F.interpolate, then cropped."""
    import torch.nn.functional as F

    from cnnvis.optvis.transforms import warp

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    b = 3
    prm = {"scale": torch.ones(b, dtype=torch.float64), "angle": torch.zeros(b, dtype=torch.float64),
           "shift": torch.zeros(b, 2, dtype=torch.float64), "offset": torch.tensor([[0, 0], [2, 1], [4, 4]]),
           "soft": torch.tensor([True, True, False]), "factor": torch.tensor([2.0, 1.6, 1.0], dtype=torch.float64)}
    y = warp(x, prm, crop=4)
    for i, (k, (ox, oy)) in enumerate(zip((2.0, 1.6), ((0, 0), (2, 1)))):
        n = round(32 / k)
        coarse = F.interpolate(x[i:i + 1], size=(n, n), mode="bilinear", align_corners=False)  # identity view
        ref = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)[..., oy:oy + 28, ox:ox + 28]
        assert (y[i:i + 1] - ref).abs().max() < 1e-5
    assert (y[2] - x[2, :, 4:32, 4:32]).abs().max() < 1e-5


def test_gradient_rms_normalizes():
    p = PixelImage(2, 8, 8)
    p.pixels.grad = torch.randn(2, 3, 8, 8) * torch.tensor([100.0, 0.01]).view(2, 1, 1, 1)
    GradientRMS().on_grad(p)
    rms = p.pixels.grad.pow(2).flatten(1).mean(1).sqrt()
    assert torch.allclose(rms, torch.ones(2), atol=1e-4)


def test_custom_objective():
    net = colour_net()
    obj = Objective(lambda acts: -acts["0"][:, 1].flatten(1).mean(1), ["0"], "less green")
    res = render(net, obj, steps=100, lr=0.05, **PIXEL)
    assert res.images[0, 1].max() < 0.01


def grey_net() -> nn.Module:
    """A bare 1-channel 28x28 classifier (no VisModel): conv '0', ReLU, conv '2', pool, linear '5'."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


@pytest.mark.parametrize("preset", ["robust", "lucid2017", "chollet2016"])
def test_one_channel_model_renders_a_channel_and_a_class(preset):
    from cnnvis.models import wrap

    net = grey_net()
    res = render(net, channel("2", 3), preset, size=28, steps=30, lr=0.1 if preset != "chollet2016" else None)
    assert res.images.shape == (1, 1, 28, 28) and res.values[-5:].mean() > res.values[:5].mean()
    vm = wrap(net, input_shape=(1, 28, 28))
    cls = render(vm, class_logit(7), preset, steps=30)  # size from the model's input shape
    assert cls.images.shape == (1, 1, 28, 28) and cls.values[-1, 0] > cls.values[0, 0]
    assert cls.probs.shape == (1,) and cls.targets == [7]
    assert FourierImage(2, 28, 28, channels=1).decorrelate is False


def test_one_channel_dream():
    from cnnvis.dream import dream

    net = grey_net()
    x = torch.rand(1, 1, 40, 36, generator=torch.Generator().manual_seed(0))
    out = dream(net, x, ["2"], octaves=2, steps_per_octave=3, jitter=2, tile=32)  # tiled, rolled grid
    assert out.shape == (1, 1, 40, 36) and (out - x).abs().mean() > 1e-3 and 0 <= out.min() and out.max() <= 1
    with pytest.raises(CnnvisError, match="1 channel"):
        dream(net, torch.rand(1, 3, 40, 36), ["2"])


def test_render_config_json_overrides_and_canonical_form(tiny_cnn):
    import json

    from cnnvis.optvis import PRESETS, get_preset

    cfg = RenderConfig(preset="lucid2017", steps=64, size=[40, 48], stop=UntilProb(0.9, robust=0.8, min_steps=8))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert RenderConfig.from_dict(d) == cfg and cfg.size == (40, 48)
    assert d["stop"] == {"kind": "until_prob", "prob": 0.9, "robust": 0.8, "min_steps": 8, "judge": None,
                         "judge_prob": None}
    # the same job asked two ways resolves to one canonical form
    assert RenderConfig(steps=512).resolved() == RenderConfig().resolved() == PRESETS["robust"]
    assert RenderConfig(preset=None) == RenderConfig() and get_preset().name == "robust"
    with pytest.raises(CnnvisError, match=r"unknown render setting 'stepz'.*fields: preset, steps"):
        render(tiny_cnn, channel("4", 0), stepz=3)
    with pytest.raises(CnnvisError, match=r"until_prob.*stop=UntilProb"):
        render(tiny_cnn, class_logit(0), until_prob=0.9)
    with pytest.raises(CnnvisError, match="unknown render setting"):
        RenderConfig.from_dict({"steps": 3, "lr2": 1})
    for bad in ({"steps": 2.5}, {"size": "big"}, {"transforms": "wobble"}, {"seed": "x"}, {"lr": 0},
                {"stop": {"kind": "until_loss"}}):
        with pytest.raises(CnnvisError):
            RenderConfig.from_dict(bad)
    res = render(tiny_cnn, channel("4", 0), "lucid2017", steps=3, size=32, transforms="none")
    assert res.config.preset == "lucid2017" and res.config.transforms == "none" and res.config.lr == 0.05


def test_decay_power_shapes_the_fourier_spectrum():
    """RenderConfig.decay_power reaches the Fourier image: its spectrum scale is 1/f**p / 4 (Lucid's p = 1
    for every older preset; 'broad' uses 1.5, so the lowest frequencies get 224**0.5 = 15x more weight
    relative to the highest at 224 px); pixel images ignore it; out-of-range values are refused."""
    from torch import nn

    from cnnvis.models import Preprocess, wrap
    from cnnvis.optvis import PRESETS, RenderConfig
    from cnnvis.optvis.param import FourierImage

    assert {k: v.decay_power for k, v in PRESETS.items()} == {
        "chollet2016": 1.0, "yosinski2015": 1.0, "lucid2017": 1.0, "robust": 1.0, "witness": 1.0, "broad": 1.5,
        "agree": 1.25}
    vm = wrap(nn.Sequential(nn.Conv2d(3, 2, 3)).eval(), preprocess=Preprocess.identity(3, resize=32, crop=32))
    a = render(vm, channel("0", 1), "broad", steps=2, size=32).param
    b = render(vm, channel("0", 1), "witness", steps=2, size=32).param
    assert isinstance(a, FourierImage) and (a.decay_power, b.decay_power) == (1.5, 1.0)
    # frequency (fy, fx) = (0, 1/32) sits at row 0, column 1 (real part at 2, imaginary at 3)
    assert float(a.scale[0, 0, 0, 2]) == pytest.approx(32 ** 1.5 / 4) and float(b.scale[0, 0, 0, 2]) == pytest.approx(8)
    px = render(vm, channel("0", 1), "broad", steps=2, size=32, image="pixel")
    assert px.config.decay_power == 1.5 and not isinstance(px.param, FourierImage)
    with pytest.raises(CnnvisError, match="decay_power must be a number in"):
        RenderConfig(decay_power=9)


def test_a_registered_preset_is_offered_and_compared_in_the_report(lite0, monkeypatch, tmp_path):
    """Each preset declares whether the report draws it beside the others ('quick': every report, 'full': the
    full one, None: not drawn); the CLI's --preset choices, the config's validation and the report's comparison
    are derived from that one registry. A throwaway preset registered here is accepted, drawn in the full
    report's comparison (after the built-in ones, in order) and left out of the quick one."""
    from types import SimpleNamespace

    import cnnvis.jobs
    from cnnvis.commands.common import preset_names
    from cnnvis.optvis import PRESETS, RenderConfig
    from cnnvis.optvis import config as C
    from cnnvis.report import ReportContext
    from cnnvis.sections import optvis_classes

    assert C.compared_presets(quick=True) == ["chollet2016", "lucid2017"]
    assert C.compared_presets() == ["chollet2016", "yosinski2015", "lucid2017", "robust", "witness"]
    with pytest.raises(ValueError, match="registered already"):
        C.register_preset("robust", note="again", base="robust")
    with pytest.raises(ValueError, match="leaves steps"):
        C.register_preset("zz_half", note="no steps", lr=0.1)
    with pytest.raises(ValueError, match="unknown base preset 'lucid'"):
        C.register_preset("zz_half", note="a typo", base="lucid")
    with pytest.raises(CnnvisError, match="unknown render setting 'stpes'"):
        C.register_preset("zz_half", note="a typo", base="lucid2017", stpes=3)
    assert "zz_half" not in PRESETS

    def compared(quick: bool) -> list[str]:
        asked = []

        def fake_run(spec, *a, **k):
            d = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
            asked.append(d)
            data = {"class": {"index": 144}, "steps": 1, "seconds": 0.0, "prob_png": 0.5, "robustness": {},
                    "perturbations": {}, "saturation": 0.0, "contrast": 0.0, "preset": d.get("preset") or "x"}
            full = {"judge": None, "ensemble": [], "min_steps": 1, "steps": 1, "until_prob": 0.99,
                    "robust_prob": 0.95, "judge_prob": 0.97}
            return SimpleNamespace(files={"m.png": b"\x89PNG"}, main="m.png", data=data, spec=full)

        monkeypatch.setattr(cnnvis.jobs, "run", fake_run)
        ctx = ReportContext(vm=lite0, photos=[], out=tmp_path / str(quick), quick=quick)
        html = optvis_classes.SECTION.render(ctx)
        return [d["preset"] for d in asked if d.get("steps") in (48, 256) and d.get("until_prob") == 0], html

    C.register_preset("zz_flat", note="a test's throwaway preset: lucid2017 with a flat spectrum",
                      compared="full", base="lucid2017", decay_power=0.0)
    try:
        assert "zz_flat" in preset_names() and RenderConfig("zz_flat").resolved().decay_power == 0.0
        full, html = compared(quick=False)
        assert full == ["chollet2016", "yosinski2015", "lucid2017", "robust", "witness", "zz_flat"]
        assert "<b>zz_flat</b>" in html and (tmp_path / "False" / "img" / "class_pelican_zz_flat.png").exists()
        assert compared(quick=True)[0] == ["chollet2016", "lucid2017"]
    finally:
        C.unregister_preset("zz_flat")
    assert "zz_flat" not in PRESETS and "zz_flat" not in preset_names()
    assert compared(quick=False)[0] == ["chollet2016", "yosinski2015", "lucid2017", "robust", "witness"]


class _ViewNet(nn.Module):
    """conv -> ReLU -> x.view(B, -1) -> linear: a user's forward that needs contiguous conv outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 3)
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


def test_channels_last_only_for_the_zoo_models_that_take_it_and_the_same_image():
    """The zoo's lite and HED models are fed channels_last images on the CPU (faster convs); a wrapped
    module is not (its forward may `.view` a conv output, which channels_last breaks); the layout does
    not change what the render computes."""
    from dataclasses import replace

    from cnnvis.models import load, wrap
    from cnnvis.models.ensemble import ensemble

    lite0, lite1 = load("efficientnet_lite0"), load("efficientnet_lite1")
    assert lite0.channels_last and load("vgg16_hed").channels_last and ensemble([lite0, lite1]).channels_last
    net = _ViewNet()
    vm = wrap(net, input_shape=(3, 8, 8))
    assert not vm.channels_last
    res = render(vm, class_logit(1), preset="chollet2016", size=8, steps=3, seed=0, progress=False)
    assert net.seen and not any(net.seen)  # a plain module: contiguous images, its .view works
    cl = replace(vm, channels_last=True)
    with pytest.raises(RuntimeError, match="view"):
        render(cl, class_logit(1), preset="chollet2016", size=8, steps=3, seed=0, progress=False)
    assert net.seen[-1]  # the opted-in model got channels_last images (so the view failed)
    conv_net = colour_net()
    a = render(wrap(conv_net, input_shape=(3, 16, 16)), class_logit(0), seed=0, steps=6, progress=False, **PIXEL)
    b = render(replace(wrap(conv_net, input_shape=(3, 16, 16)), channels_last=True), class_logit(0), seed=0, steps=6,
               progress=False, **PIXEL)
    torch.testing.assert_close(a.images, b.images, atol=1e-5, rtol=0)
    assert res.images.shape == (1, 3, 8, 8)
    # a user's objective that .views an activation of an opted-in model still works (it sees contiguous ones)
    seen = []

    def flat_mean(acts):
        a = acts["blocks.2"]
        seen.append(a.is_contiguous())
        return a.view(a.shape[0], -1).mean(1)

    render(lite0, Objective(flat_mean, ["blocks.2"]), preset="chollet2016", size=64, steps=2, seed=0,
           progress=False)
    assert seen == [True, True]
