"""Architectures by name: small reference nets a checkpoint's metadata can name.

    list_archs()                                   -> ['mnist_cnn', 'cifar_cnn']
    build_arch('mnist_cnn', num_classes=10)        -> nn.Module, random weights
    arch_info('mnist_cnn').input_shape             -> (1, 28, 28); .mean, .std: its normalization
    arch_info('mnist_cnn').recipe                  -> Recipe(epochs=8, batch_size=64, lr=0.05, ...)
    default_arch((1, 28, 28))                      -> 'mnist_cnn' (what `cnnvis train` picks for the data)

A checkpoint (`cnnvis.models.checkpoint`) names its architecture: one registered here, or a
torchvision / timm model ('torchvision:resnet18', 'timm:resnet18', or the bare name when it is
unambiguous). Training code registers nothing new: it builds a registered arch and saves it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from cnnvis.errors import CnnvisError, unknown_name


@dataclass(frozen=True)
class Recipe:
    """Training defaults of an architecture (`cnnvis train`): SGD epochs, batch size, peak learning rate,
    weight decay, and random crop + flip: True, False, or 'colour' (on for colour images only: a
    flipped digit is another symbol)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 5e-4
    augment: Literal["colour"] | bool = "colour"


FALLBACK_ARCH = "cifar_cnn"  # what `default_arch` gives for data no arch claims


@dataclass(frozen=True)
class ArchEntry:
    """A registered architecture: `builder(num_classes, input_shape, **arch_args) -> nn.Module`,
    its default input contract (shape (C, H, W), per-channel mean/std in [0, 1] units), its training
    `recipe`, and `default_for_shape`: `cnnvis train` picks it for data of exactly its input shape."""

    name: str
    builder: Callable[..., nn.Module]
    description: str
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    labels: tuple[str, ...] | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    min_size: int = 1
    recipe: Recipe = Recipe(10, 128, 0.05)
    default_for_shape: bool = False


_ARCHS: "OrderedDict[str, ArchEntry]" = OrderedDict()


def register_arch(name: str, *, description: str, input_shape, mean, std, num_classes: int,
                  labels=None, aliases: dict[str, str] | None = None, min_size: int = 1,
                  recipe: Recipe | None = None, default_for_shape: bool = False):
    """Decorator: register `builder(num_classes, input_shape, **arch_args) -> nn.Module` as `name`
    (recipe: its training defaults, default Recipe(10, 128, 0.05))."""

    def deco(fn):
        _ARCHS[name] = ArchEntry(name, fn, description, tuple(input_shape), tuple(mean), tuple(std),
                                 num_classes, tuple(labels) if labels else None, dict(aliases or {}), min_size,
                                 **({"recipe": recipe} if recipe is not None else {}),
                                 default_for_shape=default_for_shape)
        return fn

    return deco


def list_archs() -> list[str]:
    """Names of the registered architectures."""
    return list(_ARCHS)


def default_arch(shape) -> str:
    """The arch `cnnvis train` uses for (C, H, W) data: the first registered with `default_for_shape`
    whose input shape is `shape`, else FALLBACK_ARCH."""
    shape = tuple(int(v) for v in shape)
    for e in _ARCHS.values():
        if e.default_for_shape and e.input_shape == shape:
            return e.name
    return FALLBACK_ARCH


def arch_info(name: str) -> ArchEntry:
    if name not in _ARCHS:
        raise unknown_name("architecture", name, list_archs(),
                           hint="register it with cnnvis.models.archs.register_arch, or name a "
                                "torchvision/timm model as 'torchvision:NAME' or 'timm:NAME'")
    return _ARCHS[name]


def build_arch(name: str, num_classes: int | None = None, input_shape=None, **arch_args) -> nn.Module:
    """A registered architecture with random weights (defaults: its own classes and input shape)."""
    e = arch_info(name)
    shape = tuple(input_shape) if input_shape is not None else e.input_shape
    try:
        return e.builder(num_classes or e.num_classes, shape, **arch_args)
    except TypeError as err:
        raise CnnvisError(f"architecture {name!r} does not take these arguments: {arch_args} ({err})") from None


# ----------------------------------------------------------------------------- reference nets

class MnistCNN(nn.Module):
    """The classic TensorFlow 'Deep MNIST' net: conv32 5x5 - pool - conv64 5x5 - pool - fc1024 -
    dropout - fc(num_classes), for (B, C, 28, 28) input (C = 1 by default).

    An adaptive average pool to 7x7 sits before the classifier: the identity at 28 px, so the
    weights are those of the classic net, and any input of at least 4 px still gives logits.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Dropout(dropout), nn.Linear(1024, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


@register_arch(
    "mnist_cnn",
    description="conv32-pool-conv64-pool-fc1024-dropout-fc10 for 1x28x28 digits (TensorFlow's Deep MNIST net)",
    input_shape=(1, 28, 28), mean=MNIST_MEAN, std=MNIST_STD, num_classes=10,
    labels=[str(i) for i in range(10)],
    aliases={"conv1": "features.0", "relu1": "features.1", "pool1": "features.2",
             "conv2": "features.3", "relu2": "features.4", "pool2": "features.5",
             "fc1": "classifier.1", "relu3": "classifier.2", "fc2": "classifier.4"},
    min_size=4, recipe=Recipe(epochs=8, batch_size=64, lr=0.05), default_for_shape=True,
)
def _mnist_cnn(num_classes: int, input_shape, dropout: float = 0.5) -> nn.Module:
    return MnistCNN(num_classes, in_channels=int(input_shape[0]), dropout=dropout)


class CifarCNN(nn.Module):
    """The small AlexNet-like net of TensorFlow's classic CIFAR-10 tutorial: conv96 5x5 - ReLU -
    maxpool 3/2 - conv96 3x3 - ReLU - maxpool 3/2 - fc384 - ReLU - fc192 - ReLU - fc(num_classes),
    for (B, C, 32, 32) input (C = 3 by default; 1 for digits).

    Both pools take 3x3 windows at stride 2 with padding 1 (TensorFlow's SAME), so 32 px gives
    8x8 maps; an adaptive average pool to 8x8 before the classifier is then the identity, and other
    sizes (STL-10's 96 px) still give logits.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(96, 96, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((8, 8))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(96 * 8 * 8, 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU(),
            nn.Linear(192, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@register_arch(
    "cifar_cnn",
    description="conv96 5x5-pool3-conv96 3x3-pool3-fc384-fc192-fc10 for 3x32x32 images (TensorFlow's CIFAR-10 net)",
    input_shape=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD, num_classes=10, labels=CIFAR_CLASSES,
    aliases={"conv1": "features.0", "relu1": "features.1", "pool1": "features.2",
             "conv2": "features.3", "relu2": "features.4", "pool2": "features.5",
             "fc1": "classifier.1", "fc2": "classifier.3", "fc3": "classifier.5"},
    min_size=4, recipe=Recipe(epochs=10, batch_size=128, lr=0.05),
)
def _cifar_cnn(num_classes: int, input_shape) -> nn.Module:
    return CifarCNN(num_classes, in_channels=int(input_shape[0]))
