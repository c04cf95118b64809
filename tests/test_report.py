"""The report: sections through the job layer, skipped where they do not apply, a failing one kept apart."""

from __future__ import annotations

import json

from cnnvis.cli import main
from cnnvis.report import Section, build_report


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
    from cnnvis.jobs.kinds import SanitySpec

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

    from tests.conftest import sample

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
