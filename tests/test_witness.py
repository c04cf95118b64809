"""Issue 10: a second model judges class images (it stops the render, never gives a gradient),
results record what they depend on (torch, device, threads), and optimizations can be watched
(animated GIFs of class images and dreams)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnvis.cli import main
from cnnvis.errors import CnnvisError
from cnnvis.jobs import run
from cnnvis.models import wrap
from cnnvis.optvis import class_logit, render
from cnnvis.optvis.config import RenderConfig, UntilProb
from cnnvis.optvis.robustness import check_judge, witness_probs
from conftest import sample
from test_cli_bad_input import one_error

LABELS = ["red", "green", "blue"]


def _linear(weight, bias, name):
    """(B, 3, H, W) -> 3 logits from the mean colour: a classifier whose answer we know."""
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        lin.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin)
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        net[0].bias.zero_()
    from cnnvis.models import Preprocess

    return wrap(net.eval(), name=name, labels=LABELS, preprocess=Preprocess.identity(3, resize=32, crop=32))


@pytest.fixture
def redness():
    """Logit of 'red' = 60 * (mean red - 0.5): the render reaches p >= 0.99 in a few dozen steps."""
    return _linear([[60, 0, 0], [0, 0, 0], [0, 0, 0]], [-30, 0, 0], "redness")


def _judge(favour: int, name: str):
    bias = [0.0, 0.0, 0.0]
    bias[favour] = 12.0
    return _linear([[0, 0, 0]] * 3, bias, name)


def test_render_waits_for_the_judge(redness):
    """The same render stops early when the judge agrees and runs every step when it does not;
    the result reports what the judge says of the final 8-bit image."""
    cfg = RenderConfig(preset="witness", steps=96, size=32, check_every=8)
    agree, disagree = _judge(0, "agree"), _judge(1, "disagree")
    a = render(redness, class_logit("red"), cfg, stop=UntilProb(0.99, judge="agree"), judge=agree)
    assert a.stopped == "until_prob" and a.steps < 96 and "judge agree" in a.message
    assert float(a.judge_probs[0]) > 0.99 and int(a.judge_top1[0]) == 0
    d = render(redness, class_logit("red"), cfg, stop=UntilProb(0.99, judge="disagree", judge_prob=0.5),
               judge=disagree)
    assert d.stopped is None and d.steps == 96 and float(d.probs[0]) >= 0.99  # the model itself was sure
    assert float(d.judge_probs[0]) < 1e-4 and int(d.judge_top1[0]) == 1
    # never convinced: the checked image the judge liked best (all equal here: the first that passed
    # the model's own checks) is kept, and the message says so
    s = d.image_steps[0]
    assert s < 96 and s % 8 == 0 and "liked best (step" in d.message
    # the judge is a witness: that image is the one a render without it has at that step
    plain = render(redness, class_logit("red"), cfg.with_(steps=s))
    assert torch.equal(d.images, plain.images)
    assert float(render(redness, class_logit("red"), cfg.with_(steps=s - 8)).probs[0]) < 0.99  # its own first pass


def test_judge_never_gets_a_gradient(redness):
    judge = _judge(0, "agree")
    before = {k: v.clone() for k, v in judge.model.state_dict().items()}
    render(redness, class_logit("red"), RenderConfig(preset="witness", steps=32, size=32, check_every=8),
           stop=UntilProb(0.99, judge="agree"), judge=judge)
    assert all(p.grad is None for p in judge.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in judge.model.state_dict().items())


def test_check_judge_refuses_what_cannot_witness(redness, lite0, lite1, hed):
    check_judge(lite0, lite1)
    check_judge(lite1, lite0)
    with pytest.raises(CnnvisError, match="not a classifier"):
        check_judge(lite0, hed)
    with pytest.raises(CnnvisError, match="second model, not 'efficientnet_lite0' itself"):
        check_judge(lite0, lite0)
    with pytest.raises(CnnvisError, match="3 classes .*same labels"):
        check_judge(lite0, redness)
    other = wrap(redness.model, name="other", labels=["r", "g", "b"])
    with pytest.raises(CnnvisError, match="second model"):  # the same module under another name
        check_judge(redness, other)


def test_witness_probs_is_the_judges_view_of_the_png_file(lite1):
    """witness_probs = what `classify` on the saved PNG gives: 8 bits, the judge's own resize and crop."""
    from cnnvis.classify import predict_probs
    from cnnvis.images import load_image, to_tensor

    photo = load_image(sample("magpie")).resize((224, 224))
    x = to_tensor(photo) + 0.001  # not on the 8-bit grid: rounding is part of the judge's view
    buf = io.BytesIO()
    Image.fromarray((x[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()).save(buf, "PNG")
    want = predict_probs(lite1, lite1.preprocess.prepare(Image.open(buf)))[0]
    p = witness_probs(lite1, x)
    assert p.shape == (1, 1000) and torch.allclose(p[0], want, atol=1e-6) and int(p[0].argmax()) == 18
    assert float(p[0, 18]) > 0.5  # lite1 knows a magpie photo


def test_default_judge_is_the_other_embedded_model(lite0, lite1, redness):
    from cnnvis.jobs.judge import default_judge

    assert default_judge(lite0) == "efficientnet_lite1" and default_judge(lite1) == "efficientnet_lite0"
    assert default_judge(redness) == "none"


def test_class_job_reports_the_judge_and_records_its_env(tmp_path):
    """The job result carries the judge's verdict and what the numbers depend on; both survive the store
    (lite0 alone: by default lite1 is in the ensemble and judges nothing, tests/test_ensemble.py)."""
    spec = {"kind": "class_image", "target": "goldfinch", "steps": 8, "min_steps": 0, "size": 64, "until_prob": 0,
            "ensemble": ["none"]}
    res = run(spec, store=tmp_path / "store")
    j = res.data["judge"]
    assert j["model"] == "efficientnet_lite1" and res.spec["judge"] == "efficientnet_lite1"
    assert 0 <= j["prob"] <= 1 and j["agrees"] == (j["top1"]["index"] == 11)
    assert res.env["torch"] == torch.__version__ and res.env["threads"] == torch.get_num_threads()
    assert res.env["device"] == "cpu"
    assert 0 < res.data["saturation"] <= 1 and 0 < res.data["contrast"] < 0.6
    again = run(spec, store=tmp_path / "store")
    assert again.cached and again.env == res.env and again.data["judge"] == j


def test_cli_bad_judges(capsys, tmp_path, mnist_ckpt_shared):
    out = tmp_path / "c.png"
    base = ["class", "pelican", "--steps", "2", "--size", "64", "--out", out]
    assert "not a classifier" in one_error(capsys, base + ["--judge", "vgg16_hed"])
    assert "not 'efficientnet_lite0' itself" in one_error(capsys, base + ["--judge", "efficientnet_lite0"])
    assert "10 classes" in one_error(capsys, base + ["--judge", mnist_ckpt_shared.folder])
    assert "unknown model 'lite7'" in one_error(capsys, base + ["--judge", "lite7"])
    in_ens = "judge 'efficientnet_lite1' is in the ensemble"
    assert in_ens in one_error(capsys, base + ["--judge", "efficientnet_lite1"])
    assert "'vgg16_hed' is not a classifier" in one_error(capsys, base + ["--ensemble", "vgg16_hed"])
    assert "the model itself" in one_error(capsys, base + ["--ensemble", "efficientnet_lite0"])
    other = "other labels than 'efficientnet_lite0'"
    assert other in one_error(capsys, base + ["--ensemble", mnist_ckpt_shared.folder])
    assert "--animate" in one_error(capsys, base + ["--animate", tmp_path / "a.png"])
    assert "--threads" in one_error(capsys, base + ["--threads", "0"])
    assert not out.exists()


def test_cli_threads_and_env(tmp_path):
    """--threads N sets torch's threads, and the JSON result says so."""
    out = tmp_path / "c.png"
    r = subprocess.run([sys.executable, "-m", "cnnvis", "class", "1", "--steps", "2", "--min-steps", "0", "--size",
                        "64", "--judge", "none", "--threads", "1", "--json", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["env"]["threads"] == 1 and d["env"]["torch"] == torch.__version__ and d["data"]["judge"] is None


def _frames(gif: bytes) -> list[np.ndarray]:
    im = Image.open(io.BytesIO(gif))
    out = []
    for k in range(im.n_frames):
        im.seek(k)
        out.append(np.asarray(im.convert("RGB"), dtype=np.float32) / 255)
    return out


def test_class_animation_ends_on_the_saved_image(tmp_path):
    spec = {"kind": "class_image", "target": "goldfinch", "steps": 24, "min_steps": 0, "size": 64,
            "until_prob": 0, "judge": "none", "animate": True}
    res = run(spec)
    frames = _frames(res.files["animation.gif"])
    assert len(frames) == res.data["frames"] == 24  # steps 1..24, the last is the kept image
    final = np.asarray(res.image().convert("RGB"), dtype=np.float32) / 255
    assert np.abs(frames[-1] - final).mean() < 0.03  # GIF's 256-colour palette, else the same picture
    assert np.abs(frames[0] - final).mean() > 0.05  # it formed: the first frame is another picture
    plain = run({**spec, "animate": False})
    assert plain.files["image.png"] == res.files["image.png"]  # watching does not change the result


def test_dream_animation_cli(tmp_path):
    out, gif = tmp_path / "d.png", tmp_path / "d.gif"
    code = main(["dream", str(sample("pelican")), "--octaves", "2", "--steps", "2", "--out", str(out),
                 "--animate", str(gif)])
    assert code == 0 and out.exists()
    frames = _frames(gif.read_bytes())
    assert len(frames) == 4 and frames[0].shape == frames[-1].shape
    final = np.asarray(Image.open(out).convert("RGB").resize(frames[-1].shape[1::-1]), dtype=np.float32) / 255
    assert np.abs(frames[-1] - final).mean() < 0.03


def test_same_seed_and_threads_give_the_same_png():
    """What README promises: same seed, settings, torch, device and threads -> the same bytes."""
    from cnnvis.jobs.runner import ModelPool

    spec = {"kind": "class_image", "target": "flamingo", "steps": 20, "min_steps": 0, "size": 64, "until_prob": 0,
            "judge": "none", "seed": 3}
    a = run(spec, pool=ModelPool())  # two separately loaded models
    b = run(spec, pool=ModelPool())
    assert a.files["image.png"] == b.files["image.png"] and a.env == b.env
    c = run({**spec, "seed": 4})
    assert c.files["image.png"] != a.files["image.png"]


def test_progress_is_plain_lines_in_a_log(tmp_path):
    """stderr that is not a terminal (a log file, CI) gets progress as plain lines, no cursor codes."""
    import os

    env = {**os.environ, "CNNVIS_PROGRESS_EVERY": "0"}
    env.pop("CNNVIS_NO_PROGRESS", None)
    r = subprocess.run([sys.executable, "-m", "cnnvis", "class", "1", "--steps", "6", "--min-steps", "0", "--size",
                        "64", "--judge", "none", "--out", str(tmp_path / "c.png")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("class goldfish")]
    import re

    assert [int(m.group(1)) for ln in lines if (m := re.fullmatch(r"class goldfish: (\d)/6 \(\d+ s\)", ln))] \
        == [1, 2, 3, 4, 5, 6], r.stderr
    assert any(ln.startswith("class goldfish: done, 6 in") for ln in lines) and "\r" not in r.stderr


def test_filters_animation_ends_on_the_grid():
    spec = {"kind": "filters", "model": "vgg16_hed", "layers": ["conv1_1", "conv3_1"], "first": 3, "steps": 24,
            "size": 48, "animate": True}
    res = run(spec)
    frames = _frames(res.files["animation.gif"])
    assert len(frames) == res.data["frames"] == 24 and all(f.shape == frames[0].shape for f in frames)
    grid = np.asarray(res.image().convert("RGB"), dtype=np.float32) / 255
    assert frames[-1].shape == grid.shape and np.abs(frames[-1] - grid).mean() < 0.03
    assert np.abs(frames[0] - grid).mean() > 0.01  # step 1 of 24: the filters had not formed yet
    plain = run({**spec, "animate": False})
    assert plain.files["grid.png"] == res.files["grid.png"]  # watching does not change the grid
