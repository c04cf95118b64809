"""Keras Sequential CNNs by path: `load('net.h5')` / `cnnvis classify --model net.keras digit.png`.

What is read (no TensorFlow or Keras needed, only h5py):

- a Keras-2 full model, `model.save('net.h5')`: the architecture in the root attribute
  `model_config`, the weights under `model_weights/<layer>/...` (`layer_names`/`weight_names`);
- a Keras-3 archive, `model.save('net.keras')`: a zip of `config.json` + `model.weights.h5`
  (`layers/<snake_case class name>[_n]/vars/0..n`, or `layers/<layer name>/vars` as Keras 2.13 wrote);
- weights only (`model.save_weights('net.weights.h5')` in Keras 3, or a Keras-2 `save_weights`
  .h5) when the architecture lies beside it as `model.to_json()` output: `net.json`
  (for `net.weights.h5` also `net.weights.json`), or `config.json` in the same folder.

The architecture must be a `Sequential` of Conv2D (strides, dilation, groups, 'valid'/'same'
padding), MaxPooling2D, AveragePooling2D, GlobalAverage/MaxPooling2D, ZeroPadding2D, Dense,
Flatten, Dropout, SpatialDropout2D, BatchNormalization, Activation, ReLU, LeakyReLU, Softmax
and InputLayer, with activations relu, relu6, sigmoid, tanh, softmax, linear, elu, selu,
softplus, softsign, swish/silu; data format channels_last or channels_first (all spatial layers
alike). Anything else is one CnnvisError
naming the layer and what is supported.

The torch net is an `nn.Sequential` (a `KerasSequential`) whose modules carry the Keras layer
names: `conv2d` (the convolution), `conv2d_relu` (its activation), `conv2d_pad` (the asymmetric
zero padding TF's 'same' needs with a stride or an even kernel), `flatten`, `dense`, ...; aliases
conv1.., relu1.., pool1.., fc1.. as for cnnvis' own `mnist_cnn`. Kernels go HWIO -> OIHW, Dense
(in, out) -> (out, in), and the first Dense after a Flatten gets its input rows permuted from
Keras' HWC flatten order to PyTorch's CHW order. A final softmax (or sigmoid) is dropped, so the
net outputs logits, and recorded in `net.final_activation`. Before a Flatten sits an
`nn.AdaptiveAvgPool2d` to the map size of the native input (`flatten_fit`, the exact identity at
that size, as in cnnvis' `mnist_cnn`), so methods that render at other sizes still get logits.

The VisModel: name = the file name without suffixes; input shape (C, H, W) from the config;
preprocessing none (the net gets the [0, 1] image as is, as Keras nets trained on x/255 want);
labels '0'..'n-1' from the last Dense's units. A sidecar `<name>.classes.txt` (one label a line)
or `<name>.cnnvis.json` ({"classes": [...], "mean": [...], "std": [...], "description": ...},
mean/std per channel in [0, 1] units) overrides those.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cnnvis.errors import CnnvisError

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

SUPPORTED_LAYERS = ("InputLayer", "Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
                    "GlobalMaxPooling2D", "ZeroPadding2D", "Dense", "Flatten", "Dropout", "SpatialDropout2D",
                    "BatchNormalization", "Activation", "ReLU", "LeakyReLU", "Softmax")
_ALIASES = {"Convolution2D": "Conv2D", "MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D",
            "GlobalAvgPool2D": "GlobalAveragePooling2D", "GlobalMaxPool2D": "GlobalMaxPooling2D"}
_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "elu": nn.ELU,
                "selu": nn.SELU, "softplus": nn.Softplus, "softsign": nn.Softsign, "swish": nn.SiLU,
                "silu": nn.SiLU, "softmax": lambda: nn.Softmax(dim=1)}
_SUPPORTED_TEXT = (f"cnnvis imports Keras Sequential nets of {', '.join(SUPPORTED_LAYERS)} "
                   f"(activations {', '.join(['linear', *_ACTIVATIONS])})")


class KerasSequential(nn.Sequential):
    """An `nn.Sequential` built from a Keras Sequential config: modules named after the Keras
    layers; `final_activation` is the output activation dropped so the net gives logits
    ('softmax', 'sigmoid' or None); `keras_layers` lists (Keras name, class name) in order."""

    final_activation: str | None = None
    keras_layers: tuple = ()


# ----------------------------------------------------------------------------- files

def is_keras_path(path) -> bool:
    """Does `path` name a Keras file (.h5/.hdf5/.keras), existing or not?"""
    return str(path).lower().endswith(KERAS_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".weights.h5", ".h5", ".hdf5", ".keras"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _architecture_sidecars(path: Path) -> list[Path]:
    stem = _stem(path)
    cands = [path.with_name(stem + ".json"), path.parent / "config.json"]
    if path.name.lower().endswith(".weights.h5"):
        cands.insert(1, path.with_name(path.name[: -len(".h5")] + ".json"))
    return cands


def _label_sidecars(path: Path) -> list[Path]:
    stem = _stem(path)
    return [path.with_name(stem + ".classes.txt"), path.with_name(stem + ".cnnvis.json")]


def keras_model_files(path) -> list[Path]:
    """The files whose bytes make up the model loaded from `path`: it and its existing sidecars
    (architecture JSON, labels), for cache keys."""
    p = Path(path)
    if not p.is_file():
        raise CnnvisError(f"Keras file {str(p)!r} does not exist")
    return [p] + [q for q in _architecture_sidecars(p) + _label_sidecars(p) if q.is_file()]


@dataclass
class KerasFile:
    """A Keras file's content: `config` is the model config ({'class_name', 'config'}) or None
    for weights only; `weights` maps a group path ('model_weights/conv2d' in Keras 2,
    'layers/conv2d' in Keras 3) to its arrays in Keras order; `layout` is 'keras2' or 'keras3'."""

    path: Path
    layout: str
    config: dict | None
    weights: "OrderedDict[str, list[np.ndarray]]" = field(default_factory=OrderedDict)
    order: list[str] = field(default_factory=list)  # Keras 2: the layer_names in model order


def read_keras_file(path) -> KerasFile:
    """Read a Keras-2 .h5, a Keras-3 .keras archive or a weights-only .h5 (any CnnvisError names the file)."""
    import h5py

    p = Path(path)
    src = str(p)
    if not p.is_file():
        raise CnnvisError(f"Keras file {src!r} does not exist")
    with open(p, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(p) as z:
                names = set(z.namelist())
                if "config.json" not in names or "model.weights.h5" not in names:
                    raise CnnvisError(f"Keras file {src!r} is a zip without config.json and model.weights.h5; "
                                      f"save the model with Keras 3's model.save('net.keras')")
                config = _parse_json(z.read("config.json"), f"{src}:config.json")
                blob = z.read("model.weights.h5")
        except zipfile.BadZipFile as e:
            raise CnnvisError(f"Keras file {src!r} is a damaged zip archive ({e}); save it again") from None
        try:
            h5 = h5py.File(io.BytesIO(blob), "r")
        except OSError as e:
            raise CnnvisError(f"Keras file {src!r}: its model.weights.h5 is not readable HDF5 ({e})") from None
        with h5:
            kf = _read_weights(h5, p)
        kf.config = config
        return kf
    if not head.startswith(HDF5_MAGIC):
        raise CnnvisError(f"Keras file {src!r} is neither HDF5 (Keras 2 model.save('net.h5'), save_weights) "
                          f"nor a .keras zip (it starts with bytes {head.hex(' ')}); save the model again with Keras")
    try:
        h5 = h5py.File(p, "r")
    except OSError as e:
        raise CnnvisError(f"Keras file {src!r} is not readable HDF5 ({e}); save it again with Keras") from None
    with h5:
        kf = _read_weights(h5, p)
        raw = h5.attrs.get("model_config")
        if raw is not None:
            kf.config = _parse_json(raw, src)
    return kf


def _parse_json(raw, src: str):
    if isinstance(raw, np.ndarray):
        raw = raw.item() if raw.size == 1 else raw.tobytes()
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise CnnvisError(f"Keras model config in {src!r} is not valid JSON ({e.msg}); save the model again") from None
    except RecursionError:
        raise CnnvisError(f"Keras model config in {src!r} is nested too deeply to be a model; save the model "
                          "again") from None


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _read_weights(h5, path: Path) -> KerasFile:
    """Weights of an open h5py.File in either layout -> KerasFile (config None)."""
    import h5py

    root = h5["model_weights"] if "model_weights" in h5 else h5
    if "layer_names" in root.attrs:  # Keras 2
        kf = KerasFile(path, "keras2", None)
        for lname in (_text(n) for n in root.attrs["layer_names"]):
            kf.order.append(lname)
            g = root[lname] if lname in root else None
            names = [_text(n) for n in g.attrs.get("weight_names", [])] if g is not None else []
            kf.weights[lname] = [np.asarray(g[n][()]) for n in names]
        return kf
    kf = KerasFile(path, "keras3", None)

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and name.split("/")[-1] == "vars" and len(obj):
            keys = sorted(obj.keys(), key=lambda s: int(s) if s.isdigit() else 10**9)
            kf.weights[name[: -len("/vars")] if "/" in name else ""] = [np.asarray(obj[k][()]) for k in keys]

    h5.visititems(visit)
    return kf


def _model_config(kf: KerasFile) -> tuple[dict, str]:
    """(The model config of `kf`, the file it came from): the Keras file or its sidecar JSON."""
    if kf.config is not None:
        return kf.config, str(kf.path)
    for side in _architecture_sidecars(kf.path):
        if side.is_file():
            try:
                return _parse_json(side.read_bytes(), str(side)), str(side)
            except OSError as e:
                raise CnnvisError(f"architecture file {str(side)!r} could not be read ({e})") from None
    want = " or ".join(repr(str(s)) for s in _architecture_sidecars(kf.path))
    raise CnnvisError(f"Keras file {str(kf.path)!r} holds weights only, no architecture; save the whole model "
                      f"(model.save('net.keras') or Keras 2 model.save('net.h5')), or write model.to_json() to {want}")


# ----------------------------------------------------------------------------- config -> layers

def _sequential_layers(cfg: dict, src: str) -> tuple[list[dict], tuple[int, int, int]]:
    """A model config -> (its layer configs [{'class_name', 'config'}], the input shape without the
    batch: (H, W, C), or (C, H, W) for a channels_first net)."""
    if not isinstance(cfg, dict):
        raise CnnvisError(f"Keras model config in {src!r} is not a JSON object; save the model again")
    cls = cfg.get("class_name")
    if cls is None:
        raise CnnvisError(f"{src!r} is not a Keras model config (no 'class_name'); give the JSON of Keras' "
                          f"model.to_json(), or save the whole model (model.save('net.keras'))")
    if cls != "Sequential":
        hint = (" (for Keras VGG16 weights use --model vgg16 --weights FILE)" if cls in ("Functional", "Model") else "")
        raise CnnvisError(f"Keras model in {src!r} is a {cls!r} model, not a Sequential one; {_SUPPORTED_TEXT}; "
                          f"rebuild it as keras.Sequential([...]) and save it again{hint}")
    inner = cfg.get("config")
    layers = inner if isinstance(inner, list) else (inner or {}).get("layers")  # Keras <= 2.2: a bare list
    if not isinstance(layers, list) or not layers:
        raise CnnvisError(f"Keras Sequential in {src!r} has no layers in its config; save the model again")
    shape = None
    cands = [inner.get("build_input_shape")] if isinstance(inner, dict) else []
    cands += [(cfg.get("build_config") or {}).get("input_shape")]
    first = layers[0].get("config", {}) if isinstance(layers[0], dict) else {}
    cands = [first.get("batch_input_shape"), first.get("batch_shape"),
             ([None, *first["input_shape"]] if isinstance(first.get("input_shape"), list) else None)] + cands
    for c in cands:
        if isinstance(c, list) and len(c) == 4:
            shape = tuple(c[1:])
            break
        if isinstance(c, list) and len(c) == 3 and c and c[0] is not None:
            shape = tuple(c)
            break
    if shape is None or any(not isinstance(v, int) or v < 1 for v in shape):
        raise CnnvisError(f"Keras Sequential in {src!r} gives no image input shape (H, W, C) "
                          f"(batch_input_shape/batch_shape {shape}); build it with keras.Input((H, W, C)) and save again")
    return layers, shape


_SPATIAL = ("Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
            "ZeroPadding2D", "SpatialDropout2D")


def _layout(layers: list[dict], src: str) -> str:
    """'channels_last' or 'channels_first': the data_format every spatial layer agrees on."""
    found = {(ly.get("config") or {}).get("data_format") or "channels_last" for ly in layers
             if isinstance(ly, dict) and _ALIASES.get(ly.get("class_name"), ly.get("class_name")) in _SPATIAL}
    bad = found - {"channels_last", "channels_first"}
    if bad or len(found) > 1:
        raise CnnvisError(f"Keras Sequential in {src!r} uses data_format {sorted(found)}; cnnvis imports nets whose "
                          f"layers are all channels_last or all channels_first")
    return found.pop() if found else "channels_last"


def _snake(name: str) -> str:
    """Keras 3's container naming: 'MaxPooling2D' -> 'max_pooling2d'."""
    name = re.sub(r"\W+", "", name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _pair(v, what: str, lname: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(t, int) for t in v):
        return int(v[0]), int(v[1])
    raise CnnvisError(f"Keras layer {lname!r}: {what} {v!r} is not an int or a pair of ints")


def _act_name(v) -> str:
    if v is None:
        return "linear"
    if isinstance(v, dict):  # Keras 3 may serialize {'class_name': 'function', 'config': 'relu', ...}
        v = v.get("config") if isinstance(v.get("config"), str) else v.get("class_name")
    return str(v).lower()


def _same_pads(size: int, k: int, s: int) -> tuple[int, int, int]:
    """TF 'same': (output size, pad before, pad after) for one axis of `size`, kernel k, stride s."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


def _valid_out(size: int, k: int, s: int, lname: str) -> int:
    out = (size - k) // s + 1
    if out < 1:
        raise CnnvisError(f"Keras layer {lname!r}: a {size}-pixel input is smaller than its {k}-pixel window; "
                          f"the config's input shape does not fit this net")
    return out


class AvgPoolSame(nn.Module):
    """TF average pooling with asymmetric 'same' padding: the mean over the in-image pixels only.
    (B, C, H, W) -> (B, C, H', W')."""

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], pads: tuple[int, int, int, int]):
        super().__init__()
        self.kernel, self.stride, self.pads = kernel, stride, pads  # pads: (left, right, top, bottom)

    def forward(self, x: Tensor) -> Tensor:
        f = nn.functional
        ones = torch.ones_like(x[:1, :1])
        s = f.avg_pool2d(f.pad(x, self.pads), self.kernel, self.stride)
        n = f.avg_pool2d(f.pad(ones, self.pads), self.kernel, self.stride)
        return s / n

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel}, stride={self.stride}, pads={self.pads}"


@dataclass
class _Weighted:
    """A Keras layer with weights: how many arrays, their shapes, and where they go."""

    index: int
    name: str
    cls: str
    shapes: list[tuple[int, ...]]
    assign: object  # fn(list[np.ndarray]) -> None


class _Builder:
    def __init__(self, layers: list[dict], shape: tuple[int, int, int], src: str, layout: str = "channels_last"):
        self.layers, self.src, self.layout = layers, src, layout
        self.shape: tuple[int, ...] = shape  # Keras side, no batch: (H, W, C) or (N,)
        self.perm: np.ndarray | None = None  # flat vectors: torch index -> Keras index
        self.mods: "OrderedDict[str, nn.Module]" = OrderedDict()
        self.weighted: list[_Weighted] = []
        self.final: str | None = None

    def add(self, name: str, mod: nn.Module) -> str:
        base = re.sub(r"\W", "_", name) or "layer"
        key, i = base, 1
        while key in self.mods:
            key, i = f"{base}_{i}", i + 1
        self.mods[key] = mod
        return key

    def spatial(self, lname: str, cls: str) -> tuple[int, int, int]:
        if len(self.shape) != 3:
            raise CnnvisError(f"Keras layer {lname!r} ({cls}) follows a flat vector of {self.shape[0]} "
                              f"features; {cls} needs an (H, W, C) map: is the layer order right?")
        return self.shape  # type: ignore[return-value]

    def activation(self, lname: str, act: str) -> None:
        if act == "linear":
            return
        if act == "softmax" and len(self.shape) == 3 and self.layout == "channels_first":
            raise CnnvisError(f"Keras layer {lname!r}: a softmax over the last axis of a channels_first map (its "
                              f"width) is not supported")
        if act not in _ACTIVATIONS:
            raise CnnvisError(f"Keras layer {lname!r} in {self.src!r}: activation {act!r} is not supported; "
                              f"{_SUPPORTED_TEXT}")
        self.add(f"{lname}_{act}", _ACTIVATIONS[act]())

    def build(self) -> KerasSequential:
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, dict):
                raise CnnvisError(f"Keras config in {self.src!r}: layer {i} is not an object; save the model again")
            cls = _ALIASES.get(layer.get("class_name"), layer.get("class_name"))
            cfg = layer.get("config") or {}
            lname = str(cfg.get("name") or f"{_snake(str(cls))}_{i}")
            if cls not in SUPPORTED_LAYERS:
                raise CnnvisError(f"Keras layer {lname!r} in {self.src!r} is a {cls}, which cnnvis cannot import; "
                                  f"{_SUPPORTED_TEXT}")
            getattr(self, f"_{cls}")(i, lname, cfg, cls)
        net = KerasSequential(self.mods)
        net.final_activation = self.final
        net.keras_layers = tuple((str((ly.get("config") or {}).get("name")), ly.get("class_name")) for ly in self.layers)
        return net

    # --- layers (Keras tensors are (H, W, C); torch ones (C, H, W))
    def _InputLayer(self, i, lname, cfg, cls):
        if i != 0:
            raise CnnvisError(f"Keras layer {lname!r} in {self.src!r}: an InputLayer after the first layer; "
                              f"nested models are not supported; {_SUPPORTED_TEXT}")

    def _Conv2D(self, i, lname, cfg, cls):
        h, w, c = self.spatial(lname, cls)
        kh, kw = _pair(cfg.get("kernel_size"), "kernel_size", lname)
        sh, sw = _pair(cfg.get("strides", 1), "strides", lname)
        dh, dw = _pair(cfg.get("dilation_rate", 1), "dilation_rate", lname)
        groups, filters = int(cfg.get("groups", 1) or 1), int(cfg["filters"])
        bias = bool(cfg.get("use_bias", True))
        if c % groups or filters % groups:
            raise CnnvisError(f"Keras layer {lname!r}: {c} input channels and {filters} filters do not split "
                              f"into {groups} groups; the config is inconsistent")
        if (sh > 1 or sw > 1) and (dh > 1 or dw > 1):
            raise CnnvisError(f"Keras layer {lname!r}: strides > 1 with dilation_rate > 1 is not supported")
        ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
        pad = str(cfg.get("padding", "valid")).lower()
        if pad == "same":
            (oh, t, b), (ow, le, r) = _same_pads(h, ekh, sh), _same_pads(w, ekw, sw)
            if (t, le) == (b, r):
                sym = (t, le)
            else:
                self.add(f"{lname}_pad", nn.ZeroPad2d((le, r, t, b)))
                sym = (0, 0)
        elif pad == "valid":
            oh, ow, sym = _valid_out(h, ekh, sh, lname), _valid_out(w, ekw, sw, lname), (0, 0)
        else:
            raise CnnvisError(f"Keras layer {lname!r}: padding {pad!r} is not supported ('valid', 'same')")
        conv = nn.Conv2d(c, filters, (kh, kw), (sh, sw), sym, (dh, dw), groups, bias)
        self.add(lname, conv)
        shapes = [(kh, kw, c // groups, filters)] + ([(filters,)] if bias else [])

        def assign(arrs, conv=conv, bias=bias):
            conv.weight.copy_(torch.from_numpy(arrs[0]).permute(3, 2, 0, 1))  # HWIO -> OIHW
            if bias:
                conv.bias.copy_(torch.from_numpy(arrs[1]))

        self.weighted.append(_Weighted(i, lname, cls, shapes, assign))
        self.shape = (oh, ow, filters)
        self.activation(lname, _act_name(cfg.get("activation")))

    def _pool(self, i, lname, cfg, cls, kind):
        h, w, c = self.spatial(lname, cls)
        kh, kw = _pair(cfg.get("pool_size", 2), "pool_size", lname)
        strides = cfg.get("strides")
        sh, sw = _pair(strides if strides is not None else (kh, kw), "strides", lname)
        pad = str(cfg.get("padding", "valid")).lower()
        if pad == "valid":
            oh, ow = _valid_out(h, kh, sh, lname), _valid_out(w, kw, sw, lname)
            mod = nn.MaxPool2d((kh, kw), (sh, sw)) if kind == "max" else nn.AvgPool2d((kh, kw), (sh, sw))
        elif pad == "same":
            (oh, t, b), (ow, le, r) = _same_pads(h, kh, sh), _same_pads(w, kw, sw)
            if (t, le) == (b, r):
                mod = nn.MaxPool2d((kh, kw), (sh, sw), (t, le)) if kind == "max" else \
                    nn.AvgPool2d((kh, kw), (sh, sw), (t, le), count_include_pad=False)
            elif kind == "max":  # the padding never wins the max
                self.add(f"{lname}_pad", nn.ConstantPad2d((le, r, t, b), float("-inf")))
                mod = nn.MaxPool2d((kh, kw), (sh, sw))
            else:
                mod = AvgPoolSame((kh, kw), (sh, sw), (le, r, t, b))
        else:
            raise CnnvisError(f"Keras layer {lname!r}: padding {pad!r} is not supported ('valid', 'same')")
        self.add(lname, mod)
        self.shape = (oh, ow, c)

    def _MaxPooling2D(self, i, lname, cfg, cls):
        self._pool(i, lname, cfg, cls, "max")

    def _AveragePooling2D(self, i, lname, cfg, cls):
        self._pool(i, lname, cfg, cls, "avg")

    def _global(self, i, lname, cfg, cls, mod):
        h, w, c = self.spatial(lname, cls)
        self.add(lname, mod)
        if cfg.get("keepdims"):
            self.shape = (1, 1, c)
        else:
            self.add(f"{lname}_flatten", nn.Flatten())
            self.shape, self.perm = (c,), None

    def _GlobalAveragePooling2D(self, i, lname, cfg, cls):
        self._global(i, lname, cfg, cls, nn.AdaptiveAvgPool2d(1))

    def _GlobalMaxPooling2D(self, i, lname, cfg, cls):
        self._global(i, lname, cfg, cls, nn.AdaptiveMaxPool2d(1))

    def _ZeroPadding2D(self, i, lname, cfg, cls):
        h, w, c = self.spatial(lname, cls)
        p = cfg.get("padding", 1)
        if isinstance(p, int):
            t = b = le = r = p
        elif isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, int) for v in p):
            (t, b), (le, r) = (p[0], p[0]), (p[1], p[1])
        elif isinstance(p, (list, tuple)) and len(p) == 2:
            (t, b), (le, r) = _pair(p[0], "padding", lname), _pair(p[1], "padding", lname)
        else:
            raise CnnvisError(f"Keras layer {lname!r}: padding {p!r} is not an int, a pair or a pair of pairs")
        self.add(lname, nn.ZeroPad2d((le, r, t, b)))
        self.shape = (h + t + b, w + le + r, c)

    def _Flatten(self, i, lname, cfg, cls):
        if len(self.shape) == 3:
            h, w, c = self.shape
            fdf = cfg.get("data_format") or "channels_last"
            if fdf == self.layout:  # Keras flattens (H, W, C) (a channels_first Flatten moves C last first)
                perm = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)  # torch: (C, H, W)
                self.perm = None if np.array_equal(perm, np.arange(perm.size)) else perm
            elif fdf == "channels_last":  # a channels_last Flatten of a channels_first map: (C, H, W) as torch
                self.perm = None
            else:
                raise CnnvisError(f"Keras layer {lname!r}: a channels_first Flatten of a channels_last map is not "
                                  f"supported")
            self.shape = (h * w * c,)
            self.add(f"{lname}_fit", nn.AdaptiveAvgPool2d((h, w)))  # the identity at the native size
        self.add(lname, nn.Flatten())

    def _Dense(self, i, lname, cfg, cls):
        if len(self.shape) != 1:
            raise CnnvisError(f"Keras layer {lname!r} (Dense) gets an {self.shape} map, not a vector; cnnvis imports "
                              f"Dense layers after Flatten or global pooling only")
        n_in, units, bias = self.shape[0], int(cfg["units"]), bool(cfg.get("use_bias", True))
        lin = nn.Linear(n_in, units, bias)
        self.add(lname, lin)
        perm = self.perm

        def assign(arrs, lin=lin, perm=perm, bias=bias):
            k = arrs[0][perm] if perm is not None else arrs[0]  # rows in torch's (C, H, W) order
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(k.T)))
            if bias:
                lin.bias.copy_(torch.from_numpy(arrs[1]))

        self.weighted.append(_Weighted(i, lname, cls, [(n_in, units)] + ([(units,)] if bias else []), assign))
        self.shape, self.perm = (units,), None
        self.activation(lname, _act_name(cfg.get("activation")))

    def _Dropout(self, i, lname, cfg, cls):
        self.add(lname, nn.Dropout(float(cfg.get("rate", 0.5))))

    def _SpatialDropout2D(self, i, lname, cfg, cls):
        self.spatial(lname, cls)
        self.add(lname, nn.Dropout2d(float(cfg.get("rate", 0.5))))

    def _Activation(self, i, lname, cfg, cls):
        act = _act_name(cfg.get("activation"))
        if act == "linear":
            self.add(lname, nn.Identity())
            return
        if act not in _ACTIVATIONS:
            self.activation(lname, act)  # raises
        self.add(lname, _ACTIVATIONS[act]())

    def _ReLU(self, i, lname, cfg, cls):
        mx, slope, thr = cfg.get("max_value"), float(cfg.get("negative_slope", 0) or 0), float(cfg.get("threshold", 0) or 0)
        if thr != 0 or (mx is not None and float(mx) != 6.0) or (slope and mx is not None):
            raise CnnvisError(f"Keras layer {lname!r}: ReLU(max_value={mx}, negative_slope={slope}, threshold={thr}) "
                              f"is not supported; plain ReLU, ReLU(6) and ReLU(negative_slope=a) are")
        self.add(lname, nn.ReLU6() if mx is not None else nn.LeakyReLU(slope) if slope else nn.ReLU())

    def _LeakyReLU(self, i, lname, cfg, cls):
        slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
        self.add(lname, nn.LeakyReLU(float(slope)))

    def _Softmax(self, i, lname, cfg, cls):
        axis = cfg.get("axis", -1)
        if len(self.shape) == 3 and self.layout == "channels_first":
            axis = None  # the last axis is the width
        if axis not in (-1, [-1], len(self.shape), [len(self.shape)]):
            raise CnnvisError(f"Keras layer {lname!r}: Softmax over axis {axis} is not supported (only the last axis)")
        self.add(lname, nn.Softmax(dim=1))

    def _BatchNormalization(self, i, lname, cfg, cls):
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        chan = (-1, 1) if len(self.shape) == 1 else (1,) if self.layout == "channels_first" else (-1, 3)
        if axis not in chan:
            raise CnnvisError(f"Keras layer {lname!r}: BatchNormalization over axis {axis} is not supported "
                              f"(only the channel axis, {chan[-1]})")
        n = self.shape[-1]
        eps = float(cfg.get("epsilon", 1e-3))
        bn = nn.BatchNorm2d(n, eps) if len(self.shape) == 3 else nn.BatchNorm1d(n, eps)
        scale, center = bool(cfg.get("scale", True)), bool(cfg.get("center", True))
        self.add(lname, bn)
        perm = self.perm if len(self.shape) == 1 else None

        def assign(arrs, bn=bn, perm=perm, scale=scale, center=center):
            arrs = [a[perm] if perm is not None else a for a in arrs]
            it = iter(arrs)
            bn.weight.copy_(torch.from_numpy(next(it)) if scale else torch.ones(n))
            bn.bias.copy_(torch.from_numpy(next(it)) if center else torch.zeros(n))
            bn.running_mean.copy_(torch.from_numpy(next(it)))
            bn.running_var.copy_(torch.from_numpy(next(it)))

        self.weighted.append(_Weighted(i, lname, cls, [(n,)] * (2 + scale + center), assign))


def build_sequential(config: dict, src: str = "Keras model") -> tuple[KerasSequential, tuple[int, int, int], list[_Weighted]]:
    """A Keras Sequential config -> (random-weight KerasSequential, (C, H, W) input, its weighted layers)."""
    layers, shape = _sequential_layers(config, src)
    layout = _layout(layers, src)
    h, w, c = shape if layout == "channels_last" else (shape[1], shape[2], shape[0])
    b = _Builder(layers, (h, w, c), src, layout)
    net = b.build()
    # the output activation goes: the net gives logits (trailing dropouts are no-ops in eval)
    names = list(net._modules)
    j = len(names) - 1
    while j >= 0 and isinstance(net._modules[names[j]], (nn.Dropout, nn.Identity)):
        j -= 1
    if j > 0 and isinstance(net._modules[names[j]], (nn.Softmax, nn.Sigmoid)):
        net.final_activation = "softmax" if isinstance(net._modules[names[j]], nn.Softmax) else "sigmoid"
        del net._modules[names[j]]
    return net, (c, h, w), b.weighted


# ----------------------------------------------------------------------------- weights

def _find_layer_weights(kf: KerasFile, weighted: list[_Weighted], layers: list[dict]) -> list[list[np.ndarray]]:
    """For each weighted layer, its arrays in `kf` (by Keras 3 container name, by layer name, else by order)."""
    found: list[list[np.ndarray] | None] = []
    if kf.layout == "keras3":
        counts: dict[str, int] = {}
        paths = {}
        for i, ly in enumerate(layers):
            base = _snake(str(ly.get("class_name")))
            n = counts.get(base, -1) + 1
            counts[base] = n
            paths[i] = f"layers/{base}" + (f"_{n}" if n else "")
        for wl in weighted:
            arrs = kf.weights.get(paths[wl.index])
            if arrs is None:
                arrs = kf.weights.get(f"layers/{wl.name}")
            found.append(arrs)
    else:
        for wl in weighted:
            found.append(kf.weights.get(wl.name) or None)
    if all(a is not None for a in found):
        return found  # type: ignore[return-value]
    nonempty = [a for a in kf.weights.values() if a]  # Keras 2: layer_names are in model order
    if kf.layout == "keras2" and len(nonempty) == len(weighted):
        return nonempty
    miss = next(wl for wl, a in zip(weighted, found) if a is None)
    raise CnnvisError(f"Keras weights {str(kf.path)!r} have no weights for layer {miss.name!r} ({miss.cls}), and "
                      f"{len(nonempty)} weighted layers where the architecture has {len(weighted)}; are they for "
                      f"another architecture?")


def load_keras_weights(net: KerasSequential, weighted: list[_Weighted], layers: list[dict], kf: KerasFile) -> None:
    """Copy `kf`'s arrays into `net`, checking every count and shape against the architecture."""
    src = str(kf.path)
    arrays = _find_layer_weights(kf, weighted, layers)
    with torch.no_grad():
        for wl, arrs in zip(weighted, arrays):
            got = [tuple(a.shape) for a in arrs]
            if got != wl.shapes:
                raise CnnvisError(f"Keras weights {src!r} do not match the architecture: layer {wl.name!r} "
                                  f"({wl.cls}) has arrays of shapes {got}, the config wants {wl.shapes}; are they "
                                  f"for another architecture or input size?")
            wl.assign([np.asarray(a, dtype=np.float32) for a in arrs])


# ----------------------------------------------------------------------------- VisModel

def _labels_and_input(path: Path, n_out: int, channels: int) -> tuple[list[str], dict]:
    labels, extra = [str(i) for i in range(n_out)], {}
    txt, js = _label_sidecars(path)
    if txt.is_file():
        lines = [ln.strip() for ln in txt.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        if len(lines) != n_out:
            raise CnnvisError(f"labels file {str(txt)!r} has {len(lines)} names but the net has {n_out} outputs; "
                              f"give one class name a line")
        labels = lines
    if js.is_file():
        extra = _parse_json(js.read_bytes(), str(js))
        if not isinstance(extra, dict):
            raise CnnvisError(f"{str(js)!r} must hold a JSON object ({{'classes': [...], 'mean': [...], 'std': [...]}})")
        cl = extra.get("classes")
        if cl is not None:
            if not isinstance(cl, list) or len(cl) != n_out:
                raise CnnvisError(f"{str(js)!r}: 'classes' must list {n_out} names (the net's outputs), "
                                  f"got {json.dumps(cl)[:60]}")
            labels = [str(c) for c in cl]
        for k, d in (("mean", 0.0), ("std", 1.0)):
            v = extra.get(k, [d] * channels)
            if not (isinstance(v, list) and len(v) == channels and all(isinstance(t, (int, float)) for t in v)) \
                    or (k == "std" and 0 in v):
                raise CnnvisError(f"{str(js)!r}: {k!r} must be a list of {channels} numbers in [0, 1] units "
                                  f"(one per channel{', non-zero' if k == 'std' else ''})")
            extra[k] = [float(t) for t in v]
    return labels, extra


def _aliases(net: nn.Module) -> dict[str, str]:
    """conv1.., relu1.. (the conv's activation), pool1.., fc1.. over the Sequential's modules."""
    out, counts, last = {}, {"conv": 0, "pool": 0, "fc": 0}, None
    pools = (nn.MaxPool2d, nn.AvgPool2d, AvgPoolSame)
    for name, m in net.named_children():
        kind = "conv" if isinstance(m, nn.Conv2d) else "pool" if isinstance(m, pools) else \
            "fc" if isinstance(m, nn.Linear) else None
        if kind:
            counts[kind] += 1
            out[f"{kind}{counts[kind]}"] = name
            last = kind
        elif isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU)) and last == "conv":
            out.setdefault(f"relu{counts['conv']}", name)
    return out


def load_keras(path: str | os.PathLike, weights: str | os.PathLike | None = None):
    """A Keras Sequential file -> VisModel (CPU, eval mode). `weights`: None = the file's own,
    'random' = untrained, or another Keras file (.h5/.keras/.weights.h5) or .pth/.safetensors
    state_dict of the same architecture."""
    from cnnvis.models.preprocess import Preprocess
    from cnnvis.models.registry import VisModel

    p = Path(path)
    src = str(p)
    kf = read_keras_file(p)
    config, csrc = _model_config(kf)
    layers, _ = _sequential_layers(config, csrc)
    net, (c, h, w), weighted = build_sequential(config, csrc)
    if weights in (None, "pretrained", "DEFAULT"):
        load_keras_weights(net, weighted, layers, kf)
    elif weights != "random":
        wp = Path(weights)
        if is_keras_path(wp) or _starts_hdf5(wp):
            load_keras_weights(net, weighted, layers, read_keras_file(wp))
        else:
            from cnnvis.models.weights import apply_state_dict, read_state_dict

            apply_state_dict(net, read_state_dict(wp), source=f"weights {str(wp)!r}")
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    n_out = linears[-1].out_features if linears else None
    if n_out is None:
        raise CnnvisError(f"Keras Sequential in {src!r} has no Dense layer, so no classes; cnnvis imports classifiers "
                          f"ending in Dense(n)")
    labels, extra = _labels_and_input(p, n_out, c)
    prep = Preprocess(tuple(extra.get("mean", [0.0] * c)), tuple(extra.get("std", [1.0] * c)), resize=h, crop=h)
    fmt = {"keras2": "Keras 2 .h5", "keras3": "Keras 3"}[kf.layout]
    desc = extra.get("description") or (
        f"Keras Sequential from {p.name} ({fmt}; {len(layers)} layers"
        + (f"; its final {net.final_activation} dropped: outputs are logits" if net.final_activation else "") + ")")
    net.eval()
    return VisModel(str(extra.get("name") or _stem(p)), net, prep, labels, "classification", _aliases(net),
                    min_size=_min_size(net, c, min(h, w)), description=desc, input_shape=(c, h, w))


def _min_size(net: nn.Module, c: int, native: int) -> int:
    """The smallest square side the net (in eval mode) takes, by bisection over [1, native]."""
    def runs(side: int) -> bool:
        try:
            with torch.no_grad():
                net(torch.zeros(1, c, side, side))
            return True
        except (RuntimeError, ValueError):
            return False

    lo, hi = 1, native  # hi runs (the native size); find the first side that does
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if runs(mid) else (mid + 1, hi)
    return hi


def _starts_hdf5(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(8) == HDF5_MAGIC
    except OSError:
        return False
