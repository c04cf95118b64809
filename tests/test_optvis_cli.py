"""`cnnvis class` / `cnnvis filters`: outputs, bad input (exit 2, one line, no traceback), and the
slow end-to-end pelican check on the embedded model."""

from __future__ import annotations

import json

import pytest
import torch

from cnnvis.cli import main


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CNNVIS_NO_PROGRESS", "1")


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv, msg", [
    (["class", "pelicn"], "did you mean"),
    (["class", "pelican", "--model", "efficientnet_lite0", "--size", "16"], "too small"),
    (["class", "pelican", "--size", "100000"], "--size"),
    (["class", "pelican", "--steps", "0"], "--steps"),
    (["class", "pelican", "--model", "vgg16_hed"], "not a classifier"),
    (["filters", "-m", "vgg16_hed", "--layers", "conv1_1", "--channels", "0,64"], "out of range"),
    (["filters", "--model", "vgg16_hed", "--layers", "conv9_9"], "unknown layer"),
    (["filters", "--channels", "a,b"], "comma-separated"),
    (["filters", "--layers", "stage1", "--all-conv"], "not both"),
    (["class", "pelican", "--preset", "nope"], "Invalid value"),
])
def test_bad_input_exit_2_no_traceback(capsys, tmp_path, argv, msg):
    rc, out, err = run(capsys, *argv, "--out", str(tmp_path / "x.png"))
    assert rc == 2, (out, err)
    assert msg in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_class_cli_json(capsys, tmp_path, lite0):
    out = tmp_path / "p.png"
    rc, text, err = run(capsys, "class", "pelican", "--steps", "3", "--size", "64", "--until-prob", "0",
                        "--out", str(out), "--json", "--seed", "1")
    assert rc == 0, err
    r = json.loads(text)
    d = r["data"]
    assert r["kind"] == "class_image" and r["out"] == str(out) and len(r["key"]) == 64
    assert out.exists() and d["class"] == {"index": 144, "label": "pelican"}
    assert d["steps"] == 3 and len(d["top5"]) == 5 and 0 <= d["prob_png"] <= 1
    assert set(d["robustness"]) == {"blur1", "down_up2", "shift8", "resize256_crop224"}


def test_class_cli_text(capsys, tmp_path, lite0):
    rc, text, err = run(capsys, "class", "144", "--model", "efficientnet_lite0", "--preset", "chollet2016", "--steps", "2",
                        "--size", "64", "--out", str(tmp_path / "p.png"))
    assert rc == 0, err
    assert "re-read from disk" in text and "top-5:" in text and "Gaussian blur" in text
    # lite0's default: made also for lite1 (its view of the PNG is printed), and no judge (lite1 gave gradients)
    assert "made also for efficientnet_lite1 (mean logits with efficientnet_lite0; it gave gradients): probability " \
        in text
    assert "judge: none (the ensemble's models gave gradients; --judge MODEL adds a witness outside it)" in text


def test_filters_cli(capsys, tmp_path, lite0):
    out = tmp_path / "g.png"
    rc, text, err = run(capsys, "filters", "--layers", "stage0,stage2", "--channels", "0,3", "--steps", "2",
                        "--size", "48", "--out", str(out), "--json")
    assert rc == 0, err
    d = json.loads(text)["data"]
    assert [x["layer"] for x in d["layers"]] == ["stage0", "stage2"] and d["layers"][0]["channels"] == [0, 3]
    from PIL import Image

    assert Image.open(out).size[0] > 2 * 48


def test_default_and_all_conv_layers(hed, lite0):
    from cnnvis.jobs import make_spec
    from cnnvis.layers import default_layers, resolve_layer

    assert default_layers(hed) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                                   "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
    every_conv = make_spec("filters", model="vgg16_hed", all_conv=True).normalized(hed).layers
    assert every_conv[:13] == [resolve_layer(hed, a) for a in default_layers(hed)]
    assert default_layers(lite0) == [f"stage{i}" for i in range(7)]


def test_unknown_class_suggests(lite0):
    from cnnvis.errors import CnnvisError
    from cnnvis.optvis import class_logit, render

    with pytest.raises(CnnvisError, match="did you mean"):
        render(lite0, class_logit("pelicn"), steps=1)


@pytest.mark.slow
def test_pelican_end_to_end(tmp_path, lite0):
    """Default preset: >= 0.99 from the saved PNG and >= 0.9 under the four perturbations."""
    from cnnvis.images import load_image, to_tensor
    from cnnvis.optvis import UntilProb, class_logit, render, robustness
    from cnnvis.viz import save_png

    res = render(lite0, class_logit("pelican"), steps=512, stop=UntilProb(0.99, robust=0.95), seed=0)
    assert res.ok and res.steps <= 512
    path = save_png(res.images, tmp_path / "pelican.png")
    x = to_tensor(load_image(path))
    rob = robustness(lite0, x, 144)
    assert float(rob["png"][0]) >= 0.99, rob
    for k in ("blur1", "down_up2", "shift8", "resize256_crop224"):
        assert float(rob[k][0]) >= 0.9, (k, rob)
    assert res.top5[0][0].index == 144
    assert torch.isfinite(res.values).all()
