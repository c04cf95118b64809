"""The command line: output, JSON, and exit code 2 with one line (no traceback) on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cnnvis.cli import main

from conftest import sample


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_and_json(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "efficientnet_lite0" in out and "vgg16_hed" in out
    code, out, _ = run(capsys, "models", "--json", "--filter", "resnet*")
    assert code == 0 and {m["name"] for m in json.loads(out)} == {"resnet18", "resnet34", "resnet50", "resnet101"}


def test_layers_shows_aliases_and_shapes(capsys):
    code, out, _ = run(capsys, "layers", "--model", "vgg16_hed")
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("features.28 "))
    assert "conv5_3" in line and "512x14x14" in line
    code, out, _ = run(capsys, "layers", "--model", "efficientnet_lite0", "--size", "96", "--json", "--all")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["blocks.3"]["alias"] == "stage3" and rows["blocks.3"]["shape"] == [80, 6, 6]


def test_classify_prints_top_k_with_probabilities(capsys):
    dog, shark = sample("golden_retriever"), sample("great_white_shark")
    code, out, _ = run(capsys, "classify", str(dog), str(shark), "--top", "3", "--device", "cpu")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == str(dog) and lines[1].split()[0] == "golden_retriever" and float(lines[1].split()[1]) > 0.5
    assert len(lines) == 8 and lines[5].split()[0] == "great_white_shark"
    code, out, _ = run(capsys, "classify", str(dog), "--json")
    res = json.loads(out)
    probs = [t["prob"] for t in res[0]["top"]]
    assert res[0]["top"][0]["index"] == 207 and len(probs) == 5 and probs == sorted(probs, reverse=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["classify", "{img}", "--model", "resnet81"], "unknown model 'resnet81'; did you mean: resnet18"),
        (["classify", "{missing}"], "does not exist"),
        (["classify", "{text}"], "not an image PIL can read"),
        (["classify", "{img}", "--weights", "{badw}"], "not a state_dict"),
        (["classify", "{img}", "--model", "resnet18", "--weights", "{vggw}"], "do not fit this model"),
        (["classify", "{img}", "--model", "vgg16_hed"], "not a classifier"),
        (["classify", "{img}", "--device", "tpu"], "unknown device"),
        (["layers", "--model", "nosuchnet"], "unknown model"),
        (["report", "--out", "{text}"], "is a file"),
        (["report", "--out", "{tmp}/r", "--sections", "clasification"], "did you mean: classification"),
        (["report", "--out", "{tmp}/r", "--images", "{tmp}/none"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, args, message):
    (tmp_path / "t.txt").write_text("not an image")
    torch.save([1, 2], tmp_path / "bad.pth")
    from cnnvis.models import load

    torch.save(load("alexnet", weights="random").model.state_dict(), tmp_path / "alex.pth")
    subs = {"img": str(sample("pelican")), "missing": str(tmp_path / "nope.jpg"), "text": str(tmp_path / "t.txt"),
            "badw": str(tmp_path / "bad.pth"), "vggw": str(tmp_path / "alex.pth"), "tmp": str(tmp_path)}
    code, out, err = run(capsys, *[a.format(**subs) for a in args])
    assert code == 2, (out, err)
    assert message in err and err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_usage_errors_exit_2(capsys):
    code, _, err = run(capsys, "classify", "x.jpg", "--top", "0")
    assert code == 2 and "--top" in err


def test_console_script_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    p = subprocess.run([sys.executable, "-m", "cnnvis.cli", "classify", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and str(bad) in p.stderr


def test_report_writes_page_with_classification(capsys, tmp_path):
    from PIL import Image

    imgs = tmp_path / "photos"
    imgs.mkdir()
    Image.open(sample("flamingo")).save(imgs / "flamingo.png")
    Image.open(sample("ambulance")).convert("CMYK").save(imgs / "ambulance.jpg")
    code, out, err = run(capsys, "report", "--images", str(imgs), "--out", str(tmp_path / "rep"), "--sections", "classification")
    assert code == 0, err
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Top-5 classification" in page and "ambulance" in page
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    top = data["sections"]["classification"]
    assert top["ambulance"][0]["label"] == "ambulance" and top["flamingo"][0]["label"] == "flamingo"
    assert (tmp_path / "rep" / "img" / "photo_flamingo.png").is_file()


# ----------------------------------------------------------------------------- saliency, deconv, sanity

@pytest.fixture()
def odd_png(tmp_path):
    """A grey+alpha 50x37 PNG: an odd mode and size."""
    from PIL import Image

    p = tmp_path / "p.png"
    Image.new("LA", (50, 37), (128, 200)).save(p)
    return p


def test_photo_commands_bad_input_exit_2(tmp_path, odd_png, capsys):
    out = str(tmp_path / "o.png")
    assert main(["saliency", str(odd_png), "--target", "5000", "--size", "64", "--out", out]) == 2
    assert main(["saliency", str(odd_png), "--method", "gradcam", "--layer", "classifier", "--size", "64",
                 "--out", out]) == 2
    assert main(["saliency", str(tmp_path / "missing.jpg"), "--out", out]) == 2
    assert main(["saliency", str(odd_png), "--out", str(odd_png)]) == 2
    assert main(["deconv", str(odd_png), "--layers", "nope", "--out", out]) == 2
    assert main(["sanity", str(odd_png), "--method", "foo", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 6


@pytest.mark.slow
def test_photo_commands_end_to_end(tmp_path, odd_png, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setenv("CNNVIS_NO_PROGRESS", "1")
    for m in ("saliency", "gradcam", "guided"):
        out = tmp_path / f"{m}.png"
        assert main(["saliency", str(odd_png), "--method", m, "--size", "64", "--out", str(out)]) == 0
        assert Image.open(out).size[0] > 64
    out = tmp_path / "d.png"
    assert main(["deconv", str(odd_png), "-m", "vgg16_hed", "--size", "64", "--layers", "conv1_2,pool2",
                 "--top", "2", "--out", str(out)]) == 0
    assert out.exists()
    said = capsys.readouterr().out
    assert "fired rule" in said and "every unit where the channel fired" in said  # the default rule and seed, named
    assert main(["deconv", str(odd_png), "-m", "vgg16_hed", "--size", "64", "--layers", "conv3_3", "--top", "1",
                 "--rule", "zf", "--project", "map", "--json", "--out", str(out)]) == 0
    d = json.loads(capsys.readouterr().out)["data"]
    assert (d["rule"], d["project"]) == ("zf", "map") and "grey lattice" in d["notes"][0]
    out = tmp_path / "s.png"
    assert main(["sanity", str(odd_png), "--method", "saliency", "--size", "64", "--max-steps", "4",
                 "--out", str(out)]) == 0
    assert out.exists()


# ----------------------------------------------------------------------------- photos or a dataset
def test_maxmaps_reads_a_gif_as_a_photo(tmp_path, capsys, mnist_ckpt_shared):
    """A .gif given to maxmaps is a photo (an input image suffix, cnnvis.images.IMAGE_SUFFIXES), not a
    dataset: the command used to decide with the list of output formats, which has no .gif."""
    from PIL import Image

    gif = tmp_path / "digit.gif"
    a = np.zeros((28, 28), np.uint8)
    a[6:22, 12:16] = 255
    Image.fromarray(a, "L").save(gif)
    out = tmp_path / "m.png"
    code, said, err = run(capsys, "maxmaps", str(gif), "--model", mnist_ckpt_shared.folder, "--out", str(out),
                          "--json")
    assert code == 0, err
    items = json.loads(said)["data"]["items"]
    assert [it["image"] for it in items] == [str(gif)] and Image.open(out).size[0] > 28
