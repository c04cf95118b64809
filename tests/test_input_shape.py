"""Any input shape: the model's input contract (C, H, W) + per-channel normalization, the one
"VisModel or nn.Module" adapter, checkpoints by path, and a 1-channel 28x28 net through every method."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnvis.errors import CnnvisError
from cnnvis.models import (
    Preprocess, VisModel, as_vismodel, build_arch, check_channels, load, save_checkpoint, wrap,
)


# ----------------------------------------------------------------------------- contract

def test_preprocess_takes_c_channels():
    p = Preprocess(mean=(0.5,), std=(0.25,), resize=28, crop=28)
    assert p.channels == 1 and p.pil_mode == "L"
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    assert torch.allclose(p.normalize(x), torch.tensor([-2.0, 0.0, 2.0]).view(1, 1, 1, 3))
    assert torch.allclose(p.denormalize(p.normalize(x)), x)
    so = Preprocess.scale_offset((2.0, 1.0), (-1.0, 0.0))  # x * scale + offset
    y = so.normalize(torch.full((1, 2, 1, 1), 0.25))
    assert torch.allclose(y.flatten(), torch.tensor([-0.5, 0.25]))
    with pytest.raises(CnnvisError, match="one mean and one std per channel"):
        Preprocess(mean=(0.5, 0.5), std=(0.2,))
    with pytest.raises(CnnvisError, match="bgr=True needs 3 channels"):
        Preprocess(mean=(0.5,), std=(0.2,), bgr=True)


def test_grey_tensor_to_rgb_model_is_refused_not_broadcast(tiny_cnn):
    vm = wrap(tiny_cnn)  # ImageNet mean/std, 3 channels
    assert vm.input_shape == (3, 224, 224) and vm.channels == 3
    with pytest.raises(CnnvisError, match=r"shape \(1, 1, 16, 16\).*3 channel.*convert\('RGB'\)"):
        vm(torch.rand(1, 1, 16, 16))
    from cnnvis.attribution import method

    with pytest.raises(CnnvisError, match=r"input image x has shape \(1, 1, 16, 16\).*3 channel"):
        method("saliency", vm).attribute(torch.rand(1, 1, 16, 16))


def test_pil_image_follows_the_model_channels():
    rgb = Image.fromarray(np.stack([np.full((30, 40), v, np.uint8) for v in (200, 100, 50)], -1))
    grey = Preprocess(mean=(0.0,), std=(1.0,), resize=28, crop=28).prepare(rgb)
    want = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255  # PIL's 'L' conversion
    assert grey.shape == (1, 1, 28, 28) and torch.allclose(grey, torch.full_like(grey, want), atol=1 / 255)
    col = Preprocess(resize=28, crop=28).prepare(rgb.convert("L"))
    assert col.shape == (1, 3, 28, 28) and torch.allclose(col[0, 0], col[0, 2])


def test_wrap_and_bare_modules_carry_an_input_shape():
    from cnnvis.layers import list_layers

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
    vm = wrap(net, input_shape=(1, 28, 28))
    assert vm.input_shape == (1, 28, 28) and vm.preprocess.mean == (0.0,) and vm.min_size == 28
    assert wrap(net).min_size == 32
    assert {i.name: i.shape for i in list_layers(vm)}["2"] == (4, 13, 13)
    # a bare module: C from its first Conv2d, H = W = 224 (documented)
    assert {i.name: i.shape for i in list_layers(net)}["0"] == (4, 222, 222)
    assert as_vismodel(nn.Sequential(nn.Flatten())).channels == 3  # a guess, so not enforced:
    check_channels(nn.Sequential(nn.Flatten()), torch.rand(1, 1, 2, 2))
    with pytest.raises(CnnvisError, match=r"\(1, 3, 5, 5\).*1 channel"):
        check_channels(net, torch.rand(1, 3, 5, 5))
    with pytest.raises(CnnvisError, match="input_shape must be"):
        wrap(net, input_shape=(28, 28))
    with pytest.raises(CnnvisError, match="1 channel.*normalizes 3"):
        wrap(net, input_shape=(1, 28, 28), preprocess=Preprocess())


def test_one_adapter_everywhere(tiny_cnn):
    from cnnvis.attribution.base import model_parts
    from cnnvis.layers import _parts
    render_mod = importlib.import_module("cnnvis.optvis.render")  # the module, not the function

    vm = wrap(tiny_cnn)
    assert as_vismodel(vm) is vm and _parts(vm)[2] is vm and model_parts(vm)[2] is vm
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    tiny_cnn.train()
    bare = as_vismodel(tiny_cnn)
    assert isinstance(bare, VisModel) and bare.model is tiny_cnn and bare.min_size == 1
    assert bare.input_shape == (3, 224, 224) and bare.preprocess.mean == (0.0,) * 3
    assert render_mod.as_vismodel is as_vismodel
    assert _parts(tiny_cnn)[2].input_shape == bare.input_shape and model_parts(tiny_cnn)[0] is tiny_cnn
    x = torch.rand(2, 3, 8, 8)
    tiny_cnn.eval()
    assert torch.equal(bare(x), tiny_cnn(x))  # fed as is
    tiny_cnn.train()
    assert tiny_cnn.training and all(torch.equal(v, before[k]) for k, v in tiny_cnn.state_dict().items())
    with pytest.raises(CnnvisError, match="expected a cnnvis VisModel or a torch.nn.Module"):
        as_vismodel("resnet18")


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip(mnist_ckpt, tmp_path):
    net, meta_path = mnist_ckpt.net, mnist_ckpt.json
    meta = json.loads(meta_path.read_text())
    assert meta["architecture"] == "mnist_cnn" and meta["input"] == {
        "shape": [1, 28, 28], "mean": [0.1307], "std": [0.3081], "resize": 28, "bgr": False}
    assert meta["classes"] == [str(i) for i in range(10)] and meta["training"] == {"steps": 0}
    x = torch.rand(3, 1, 28, 28)
    want = net((x - 0.1307) / 0.3081)
    for p in (meta_path.parent, meta_path, meta_path.with_suffix(".safetensors"), str(meta_path.parent)):
        vm = load(p)
        assert vm.name == "mnist" and vm.input_shape == (1, 28, 28) and vm.labels[3] == "3"
        assert torch.allclose(vm(x), want, atol=1e-5)
        assert vm.input_config() == meta["input"]
    # a VisModel keeps its own contract when saved
    vm2 = load(save_checkpoint(tmp_path / "again.safetensors", vm, architecture="mnist_cnn"))
    assert vm2.name == "again" and vm2.preprocess == vm.preprocess and torch.allclose(vm2(x), want, atol=1e-5)
    assert not load(meta_path.parent, weights="random")(x).allclose(want)


def test_checkpoint_of_a_torchvision_net_keeps_bgr_and_classes(tmp_path):
    from torchvision.models import squeezenet1_1

    torch.manual_seed(0)
    vm = wrap(squeezenet1_1(num_classes=4), preprocess=Preprocess.caffe_bgr(resize=80, crop=64), labels=list("abcd"))
    path = save_checkpoint(tmp_path / "sq", vm, architecture="torchvision:squeezenet1_1")
    back = load(path)
    assert back.preprocess == vm.preprocess and back.labels == list("abcd") and back.input_shape == (3, 64, 64)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(back(x), vm.model.eval()(vm.preprocess.normalize(x)), atol=1e-5)


def test_save_checkpoint_refuses_bad_arguments(tmp_path):
    net = build_arch("mnist_cnn")
    with pytest.raises(CnnvisError, match=r"save_checkpoint: .*'input.mean' must be a list of 1 numbers.*fix the arguments"):
        save_checkpoint(tmp_path / "m", net, architecture="mnist_cnn", mean=(0.5, 0.5, 0.5))
    assert not (tmp_path / "m").exists()  # nothing written


def _rewrite(meta_path, **changes):
    meta = json.loads(meta_path.read_text())
    meta.pop("weights_sha256", None)
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("change, message", [
    ({"classes": ["a", "b", "c"]}, r"wrong shape \(e.g. classifier.4.weight: file \(10, 1024\), model \(3, 1024\)\).*fix the JSON"),
    ({"architecture": "mnist_cnm"}, "unknown architecture 'mnist_cnm'; did you mean: mnist_cnn"),
    ({"architecture": "resnet18", "input": {"shape": [3, 28, 28]}}, r"keys .*missing.*model\.json.*fix the JSON"),
    ({"architecture": None}, "has no 'architecture'"),
    ({"input": {"shape": [1, 28]}}, r"'input.shape' must be \[C, H, W\]"),
    ({"input": {"shape": [1, 28, 28], "mean": [0.5, 0.5]}}, r"'input.mean' must be a list of 1 numbers"),
])
def test_checkpoint_metadata_that_disagrees(mnist_ckpt, change, message):
    meta_path = mnist_ckpt.json
    _rewrite(meta_path, **change)
    with pytest.raises(CnnvisError, match=message) as e:
        load(meta_path.parent)
    assert str(meta_path) in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_files_missing_or_corrupt(mnist_ckpt):
    meta_path = mnist_ckpt.json
    weights = meta_path.with_suffix(".safetensors")
    meta_path.write_text('{"architecture": "mnist_cnn",')
    with pytest.raises(CnnvisError, match=r"model.json' is not valid JSON .*line 1"):
        load(meta_path.parent)
    meta_path.unlink()
    with pytest.raises(CnnvisError, match="has no metadata 'model.json'"):
        load(meta_path.parent)
    with pytest.raises(CnnvisError, match=r"has no metadata: expected .*model.json' beside it"):
        load(weights)
    with pytest.raises(CnnvisError, match="neither a registered model name"):
        load(str(meta_path.parent / "nothere"))


def test_checkpoint_weights_changed_after_the_json(mnist_ckpt):
    meta_path = mnist_ckpt.json
    w = meta_path.with_suffix(".safetensors")
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(CnnvisError, match="do not match the sha256"):
        load(meta_path)


def test_cli_model_path(mnist_ckpt, tmp_path, capsys):
    from cnnvis.cli import main

    meta_path = mnist_ckpt.json
    img = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8), "L").save(img)
    code = main(["classify", str(img), "--model", str(meta_path.parent), "--json", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    top = json.loads(out.out)
    top = top[0]["top"] if isinstance(top, list) else top["images"][0]["top"]
    vm = load(meta_path.parent)
    with torch.no_grad():
        probs = torch.softmax(vm(vm.preprocess.prepare(Image.open(img))), 1)[0]
    assert top[0]["index"] == int(probs.argmax()) and abs(top[0]["prob"] - float(probs.max())) < 1e-4
    _rewrite(meta_path, classes=["a", "b"])
    code = main(["classify", str(img), "--model", str(meta_path.parent), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "model.json" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- 1-channel net, every method

@pytest.fixture(scope="module")
def mnist_wrapped():
    torch.manual_seed(1)
    net = build_arch("mnist_cnn")
    return wrap(net, name="mnist", preprocess=Preprocess((0.1307,), (0.3081,), resize=28, crop=28),
                labels=[str(i) for i in range(10)], aliases={"conv1": "features.0", "conv2": "features.3"},
                min_size=4)


@pytest.fixture(scope="module")
def digit():
    rng = np.random.default_rng(0)
    a = np.zeros((28, 28), np.uint8)
    a[6:22, 12:16] = 255  # a "1"
    a = np.clip(a + rng.integers(0, 30, a.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(a, "L")


def test_mnist_layers_and_classify(mnist_wrapped, digit):
    from cnnvis.classify import classify
    from cnnvis.layers import list_layers

    shapes = {i.name: i.shape for i in list_layers(mnist_wrapped)}
    assert shapes["features.0"] == (32, 28, 28) and shapes["features.5"] == (64, 7, 7) and shapes["classifier.4"] == (10,)
    (preds,) = classify(mnist_wrapped, [digit.convert("RGB")], top=3)  # an RGB file is converted to L
    x = torch.from_numpy(np.asarray(digit, np.float32) / 255).view(1, 1, 28, 28)
    with torch.no_grad():
        p = torch.softmax(mnist_wrapped.model.eval()((x - 0.1307) / 0.3081), 1)[0]
    assert preds[0].index == int(p.argmax()) and abs(preds[0].prob - float(p.max())) < 1e-5


def test_mnist_every_attribution_method(mnist_wrapped, digit):
    from cnnvis.attribution import list_methods, method

    x = mnist_wrapped.preprocess.prepare(digit)
    for name in list_methods():
        a = method(name, mnist_wrapped).attribute(x, target=3)
        assert a.shape in ((1, 1, 28, 28),), name
        assert torch.isfinite(a).all() and a.abs().sum() > 0, name
    # saliency is the input gradient through the normalization
    xg = x.clone().requires_grad_(True)
    mnist_wrapped.model.eval()((xg - 0.1307) / 0.3081)[0, 3].backward()
    assert torch.allclose(method("saliency", mnist_wrapped).attribute(x, target=3).abs(), xg.grad.abs(), atol=1e-6)
    with pytest.raises(CnnvisError, match=r"\(1, 3, 28, 28\).*1 channel.*convert\('L'\)"):
        method("saliency", mnist_wrapped).attribute(x.expand(-1, 3, -1, -1))


def test_mnist_deconvnet(mnist_wrapped, digit):
    from deconv_reference import deconvnet_loop

    from cnnvis.deconv import deconvnet

    x = mnist_wrapped.preprocess.prepare(digit)
    for rule in ("fired", "masked", "zf"):
        res = deconvnet(mnist_wrapped, x, layers=["conv1", "conv2"], top=2, rule=rule, seed="map")
        ref = deconvnet_loop(mnist_wrapped, x, layers=["conv1", "conv2"], top=2, rule=rule, seed="map")
        for r, q in zip(res.reconstructions, ref.reconstructions):
            assert r.shape == (2, 1, 28, 28) and r.abs().sum() > 0
            assert torch.allclose(r, q, atol=1e-4 * float(q.abs().max()))
    with pytest.raises(CnnvisError, match="1 channel"):
        deconvnet(mnist_wrapped, torch.rand(1, 3, 28, 28), layers=["conv1"])


def test_mnist_render_and_dream(mnist_wrapped, digit):
    """Needs the optvis side (C-channel PixelImage/FourierImage, 1-channel dream)."""
    from cnnvis.dream import dream
    from cnnvis.optvis import class_logit, render

    res = render(mnist_wrapped, "conv2:5", size=28, steps=16, seed=0)
    assert res.images.shape == (1, 1, 28, 28) and res.values[-1, 0] > res.values[0, 0]
    cls = render(mnist_wrapped, class_logit(3), size=28, steps=16, seed=0)
    assert cls.images.shape == (1, 1, 28, 28) and cls.values[-1, 0] > cls.values[0, 0]
    out = dream(mnist_wrapped, digit.resize((56, 56)), layers=["conv2"], octaves=2, steps_per_octave=4, jitter=2)
    assert out.shape == (1, 1, 56, 56)
    from cnnvis.viz import to_pil

    assert np.abs(np.asarray(to_pil(out).convert("L"), np.float32) - np.asarray(digit.resize((56, 56)), np.float32)).mean() > 0.5
