"""The user's model and tensors come back unchanged from every public attribution entry point,
also for train-mode models with BatchNorm (a forward in train mode would update the running
statistics) and also when the call raises.

Checked after each call: every parameter and buffer bit-identical (state_dict, including
`num_batches_tracked`), each module's `training` and `inplace` flags, each parameter's
`requires_grad` and `.grad`, no hooks left; the caller's input tensor and its `.grad` untouched.
The attribution methods are taken from the registry (`list_methods()`, each class saying what it can
do): a new method is tested by being registered.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cnnvis.attribution import GradCAM, list_methods, method, method_class
from cnnvis.errors import CnnvisError
from cnnvis.hooks import hook_count

warnings.filterwarnings("ignore", category=UserWarning)

def fast_options(name: str, net: nn.Module) -> dict:
    """Cheap options for any registered method: few samples/steps; on ResNet-18 the CAM
    methods look at layer2.1 (128 channels: Score-CAM runs one forward per channel)."""
    import inspect

    params = inspect.signature(method_class(name).__init__).parameters
    opts = {k: v for k, v in (("samples", 2), ("steps", 3)) if k in params}
    if method_class(name).takes_layer and not isinstance(net, nn.Sequential):
        opts["layer"] = "layer2.1"
    return opts


class Boom(nn.Module):
    """Identity until armed; then raises, after the layers before it (a BatchNorm) have run."""

    armed = False

    def forward(self, x):
        if self.armed:
            raise RuntimeError("boom")
        return x


def bn_net() -> nn.Module:
    """Conv-BN-ReLU(inplace) x2 + linear head, 5 classes, train mode, one frozen parameter."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), Boom(), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    net[0].bias.requires_grad_(False)
    return net.train()


def resnet18() -> nn.Module:
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    return tv.resnet18(weights=None, num_classes=10).train()


MODELS = {"bn_net": (bn_net, 16), "resnet18": (resnet18, 64)}


def snapshot(module: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()},
        "training": [m.training for m in module.modules()],
        "inplace": [getattr(m, "inplace", None) for m in module.modules()],
        "requires_grad": [p.requires_grad for p in module.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in module.parameters()],
        "hooks": hook_count(module),
    }


def assert_unchanged(module: nn.Module, before: dict) -> None:
    after = snapshot(module)
    changed = [k for k in before["state"] if not torch.equal(before["state"][k], after["state"][k])]
    assert not changed, f"{len(changed)} parameters/buffers changed, e.g. {changed[:3]}"
    for key in ("training", "inplace", "requires_grad", "hooks"):
        assert before[key] == after[key], key
    assert all((a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
               for a, b in zip(before["grad"], after["grad"])), "parameter .grad changed"


def user_input(b: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A caller's tensor with requires_grad and a .grad of its own, and copies of both."""
    x = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(3), requires_grad=True)
    x.grad = torch.full_like(x, 0.25)
    return x, x.detach().clone(), x.grad.clone()


def assert_input_unchanged(x, x0, g0) -> None:
    assert torch.equal(x.detach(), x0) and x.grad is not None and torch.equal(x.grad, g0)


@pytest.fixture(params=list(MODELS))
def model(request):
    build, size = MODELS[request.param]
    return build(), size


# ----------------------------------------------------------------------------- every registered method

@pytest.mark.parametrize("model_name, target", [("bn_net", None), ("bn_net", 1), ("resnet18", None)],
                         ids=["bn_net-top1", "bn_net-class1", "resnet18-top1"])
@pytest.mark.parametrize("name", list_methods())
def test_method_leaves_model_and_input_unchanged(name, model_name, target):
    build, size = MODELS[model_name]
    net = build()
    before = snapshot(net)
    x, x0, g0 = user_input(2, size)
    a = method(name, net, **fast_options(name, net)).attribute(x, target)
    assert a.shape[0] == 2 and a.shape[-2:] == (size, size) and not a.requires_grad
    assert torch.isfinite(a).all() and float(a.abs().amax()) > 0
    assert_unchanged(net, before)
    assert_input_unchanged(x, x0, g0)


@pytest.mark.parametrize("name", list_methods())
def test_method_leaves_model_unchanged_when_it_raises(name):
    net = bn_net()
    before = snapshot(net)
    x, x0, g0 = user_input(2, 16)
    m = method(name, net, **fast_options(name, net))
    with pytest.raises(CnnvisError, match="out of range"):  # the forward runs, then the target is refused
        m.attribute(x, 99)
    assert_unchanged(net, before)
    net[2].armed = True
    for target in (None, 1):  # None: the top-1 class is found by a forward of its own
        with pytest.raises(RuntimeError, match="boom"):
            m.attribute(x, target)
        assert_unchanged(net, before)
    assert_input_unchanged(x, x0, g0)


@pytest.mark.parametrize("name", list_methods())
def test_declared_capabilities_match_the_constructor(name):
    """What a class declares is what its constructor takes: `seeded` <=> a `seed` option (the job layer
    passes the spec's seed by it), `takes_layer` <=> a `layer` option."""
    import inspect

    cls = method_class(name)
    params = inspect.signature(cls.__init__).parameters
    assert cls.name == name and cls.title
    assert cls.seeded == ("seed" in params), name
    assert cls.takes_layer == ("layer" in params), name
    assert cls.has_convergence_delta() == cls.returns_delta
    assert cls.inputs and cls.inputs <= {"class", "activation"}


# ----------------------------------------------------------------------------- the other entry points

def test_gradcam_cam_leaves_model_and_input_unchanged(model):
    net, size = model
    layer = "4" if isinstance(net, nn.Sequential) else "layer4.1"
    before = snapshot(net)
    x, x0, g0 = user_input(2, size)
    cam = GradCAM(net, layer).cam(x, 1)
    assert cam.dim() == 4 and cam.shape[:2] == (2, 1) and float(cam.amax()) > 0
    assert_unchanged(net, before)
    assert_input_unchanged(x, x0, g0)
    if isinstance(net, nn.Sequential):
        net[2].armed = True
        with pytest.raises(RuntimeError, match="boom"):
            GradCAM(net, layer).cam(x, 1)
        assert_unchanged(net, before)


@pytest.mark.parametrize("name", ["saliency", "ig"])
def test_sanity_check_leaves_model_unchanged(name, model):
    from cnnvis.sanity import sanity_check

    net, size = model
    before = snapshot(net)
    x, x0, g0 = user_input(1, size)
    res = sanity_check(net, x, name, max_steps=2, **fast_options(name, net))
    assert res.spearman[0] == 1.0 and len(res.steps) == len(res.spearman) >= 2
    assert_unchanged(net, before)
    assert_input_unchanged(x, x0, g0)


def test_sanity_check_leaves_model_unchanged_when_it_raises():
    from cnnvis.sanity import sanity_check

    net = bn_net()
    before = snapshot(net)
    x, x0, g0 = user_input(1, 16)
    net[2].armed = True
    with pytest.raises(RuntimeError, match="boom"):
        sanity_check(net, x, "saliency", max_steps=2)
    assert_unchanged(net, before)
    assert_input_unchanged(x, x0, g0)


def test_sanity_check_embedded_model_in_train_mode(lite0):
    """The issue's case: 147 BatchNorm buffers of lite0 changed with the model in train mode."""
    from cnnvis.sanity import sanity_check

    lite0.model.train()
    try:
        before = snapshot(lite0.model)
        x, x0, g0 = user_input(1, 64)
        sanity_check(lite0, x, "saliency", max_steps=1)
        assert_unchanged(lite0.model, before)
        assert_input_unchanged(x, x0, g0)
    finally:
        lite0.model.eval()


def test_deconvnet_leaves_model_and_input_unchanged(model):
    from cnnvis.deconv import deconvnet

    net, size = model
    before = snapshot(net)
    x, x0, g0 = user_input(1, size)
    res = deconvnet(net, x, top=2)
    assert len(res.layers) >= 1 and float(res.reconstructions[0].abs().amax()) > 0
    assert_unchanged(net, before)
    assert_input_unchanged(x, x0, g0)
    if isinstance(net, nn.Sequential):
        net[2].armed = True
        with pytest.raises(RuntimeError, match="boom"):
            deconvnet(net, x, top=2)
        assert_unchanged(net, before)


def test_dream_leaves_model_and_input_unchanged(model):
    from cnnvis.dream import dream

    net, size = model
    layer = "5" if isinstance(net, nn.Sequential) else "layer3"
    before = snapshot(net)
    x, x0, g0 = user_input(1, size)
    out = dream(net, x, [layer], octaves=1, steps_per_octave=2, jitter=2)
    assert out.shape == x.shape and not torch.equal(out, x0)
    assert_unchanged(net, before)
    assert_input_unchanged(x, x0, g0)
    if isinstance(net, nn.Sequential):
        net[2].armed = True
        with pytest.raises(RuntimeError, match="boom"):
            dream(net, x, [layer], octaves=1, steps_per_octave=2)
        assert_unchanged(net, before)


def test_render_leaves_model_unchanged(model):
    from cnnvis.optvis import objectives as O
    from cnnvis.optvis.render import render

    net, size = model
    layer = "5" if isinstance(net, nn.Sequential) else "layer3"
    before = snapshot(net)
    for obj in (O.channel(layer, 1), O.channel(layer, 1) + O.class_logit(2)):
        res = render(net, obj, steps=2, size=size, seed=0)
        assert res.images.shape[-2:] == (size, size) and res.steps == 2
        assert_unchanged(net, before)
    if isinstance(net, nn.Sequential):
        net[2].armed = True
        with pytest.raises(RuntimeError, match="boom"):
            render(net, O.channel(layer, 1), steps=2, size=size)
        assert_unchanged(net, before)


# ----------------------------------------------------------------------------- every job kind

def bn_digits_net() -> nn.Module:
    """A 1x28x28 digit classifier with BatchNorm and dropout, in train mode, one frozen parameter: the
    MNIST data of the dataset kinds fits it, so every kind of `cnnvis.jobs.KINDS` can run on it."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    net[0].bias.requires_grad_(False)
    return net.train()


# kinds that cannot run on that model, with the reason (a new kind must run or be listed here); they must refuse
# with a CnnvisError and still leave the model unchanged
KIND_CANNOT_RUN: dict[str, str] = {
    "evolution": "reads the snapshots of a `cnnvis train` run folder; a wrapped module has none",
}
KIND_SIZES = {"class_image": {"size": 28}, "filters": {"size": 28}}  # the examples' sizes are for 3x224 models


@pytest.mark.parametrize("kind", sorted(__import__("cnnvis.jobs", fromlist=["KINDS"]).KINDS))
def test_every_job_kind_leaves_a_train_mode_model_unchanged(kind):
    """Each registered kind with its `example` fields through `cnnvis.run(spec, vm=wrap(model))`: the
    state_dict (BatchNorm running statistics and batch counts included), each module's training flag,
    requires_grad and hooks are bit-identical afterwards, and the job ran (no kind silently skipped)."""
    import cnnvis
    from cnnvis.jobs import KINDS

    net = bn_digits_net()
    before = snapshot(net)
    vm = cnnvis.wrap(net, input_shape=(1, 28, 28), labels=[str(i) for i in range(10)])
    spec = {"kind": kind, **KINDS[kind].example, **KIND_SIZES.get(kind, {})}
    if kind in KIND_CANNOT_RUN:
        with pytest.raises(CnnvisError):
            cnnvis.run(spec, vm=vm)
    else:
        res = cnnvis.run(spec, vm=vm)
        assert res.kind == kind and not res.cached and (res.files or res.data)
    assert_unchanged(net, before)
    assert all(m.training for m in net.modules())


def test_filters_job_on_a_train_mode_resnet_moves_no_statistics():
    """The issue's exact case: the filter grid moved 60 BatchNorm tensors of a train-mode ResNet-18."""
    import cnnvis

    net = resnet18()
    before = snapshot(net)
    res = cnnvis.run({"kind": "filters", "layers": ["layer2"], "first": 2, "steps": 3, "size": 48}, vm=cnnvis.wrap(net))
    assert [row["layer"] for row in res.data["layers"]] == ["layer2"]
    assert_unchanged(net, before)


def test_filter_functions_leave_a_train_mode_model_unchanged():
    """The compute functions behind the grid, called directly (no job layer around them)."""
    import cnnvis
    from cnnvis.optvis.filters import dead_channels, receptive_fields, render_filters

    net = resnet18()
    vm = cnnvis.wrap(net)
    before = snapshot(net)
    assert receptive_fields(vm, ["layer2"])["layer2"] > 10
    assert set(dead_channels(vm, ["layer2"], size=64)) == {"layer2"}
    rows = render_filters(vm, ["layer2"], 2, steps=2, size=48)
    assert rows[0][2].shape[0] == 2
    assert_unchanged(net, before)


# ---------------------------------------------------------------------- a practitioner's pass (sixth session)
def test_capture_leaves_a_train_mode_model_unchanged():
    """`cnnvis.capture` (the README's feature-map example) ran a train-mode model as it was: BatchNorm's
    running statistics moved and the maps were batch-statistics maps. Now eval inside, all restored."""
    import cnnvis

    net = bn_net()
    before = snapshot(net)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with cnnvis.capture(net, ["5"]) as cap:
        assert not net.training
        cap.run(x)
        got = cap["5"].clone()
    assert_unchanged(net, before)
    with torch.no_grad():
        want = net.eval()[:6](x)
    assert torch.equal(got, want)  # the eval-mode activation


def test_models_in_other_dtypes_inputs_out_of_range_and_dict_outputs():
    """A float64 / bfloat16 model took float32 images and raised torch's dtype error in every verb; a uint8 or
    0-255 photo was clamped to white by dream and inverted as is; a model returning a dict refused the callable
    target its own message asked for."""
    import cnnvis
    from cnnvis.optvis.inversion import invert

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10)).eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    want = cnnvis.attribute(ref, x, "saliency", target=1)
    wide = nn.Sequential(*[m for m in __import__("copy").deepcopy(ref)]).double()
    got = cnnvis.attribute(wide, x, "saliency", target=1)
    assert got.dtype == torch.float64 and torch.allclose(got.float(), want, rtol=1e-4, atol=1e-6)
    assert all(p.dtype == torch.float64 for p in wide.parameters())
    res = cnnvis.render(wide, cnnvis.class_logit(1), steps=2, size=32)
    assert res.images.dtype == torch.float32 and torch.isfinite(res.images).all() and res.probs is not None
    half = __import__("copy").deepcopy(ref).bfloat16()
    assert cnnvis.dream(half, x, layers=["1"], octaves=1, steps_per_octave=1).shape == x.shape

    for bad, words in [((x * 255).round().byte(), "uint8 tensor"), (x * 255, "divide by 255"),
                       (x * float("nan"), "NaN"), (torch.rand(1, 1, 32, 32), "channel")]:
        for fn in (lambda b: cnnvis.dream(ref, b, layers=["1"], octaves=1, steps_per_octave=1),
                   lambda b: invert(ref, b, "1", steps=2)):
            with pytest.raises(CnnvisError, match=words):
                fn(bad)

    class Dict(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return {"logits": self.body(x)}

    for name in ("saliency", "gradcam", "ig"):
        a = cnnvis.attribute(Dict(ref), x, name, target=lambda o: o["logits"][:, 1],
                             **({"layer": "body.0"} if name == "gradcam" else {}))
        b = cnnvis.attribute(ref, x, name, target=1, **({"layer": "0"} if name == "gradcam" else {}))
        assert torch.equal(a, b), name
    with pytest.raises(CnnvisError, match="callable target that takes it"):
        cnnvis.attribute(Dict(ref), x, "saliency", target=1)
    for opts, words in [({"baseline": float("nan")}, "grey level in"), ({"baseline": 5.0}, "got 5.0")]:
        with pytest.raises(CnnvisError, match=words):
            cnnvis.attribute(ref, x, "ig", target=1, **opts)
    with pytest.raises(CnnvisError, match="noise level must be a finite number"):
        cnnvis.attribute(ref, x, "smoothgrad", target=1, noise=float("nan"))
    with pytest.raises(CnnvisError, match="cannot make an objective from '0:zz'"):
        cnnvis.render(ref, "0:zz", steps=2, size=32)
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(CnnvisError, match="the 1x1 image is too small for this model"):
        cnnvis.render(tiny, cnnvis.class_logit(1), steps=2, size=1)
    with pytest.raises(CnnvisError, match="the 2x2 input image is too small for this model"):
        cnnvis.attribute(tiny, torch.rand(1, 3, 2, 2), "saliency", target=0)
    lazy = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(CnnvisError, match="uninitialized parameters"):
        cnnvis.attribute(lazy, x, "saliency", target=0)
