"""The regularizer study (issue 11 item 8) on two real MNIST nets: net 1 makes the class images, net 2 judges them.

Every number is recomputed here from the saved files, independently of the job's own code."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnvis.jobs import run
from tests.test_cli_bad_input import one_error

MNIST_MEAN = 0.1307


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def study(mnist_run, mnist_run2):
    return run({"kind": "regularizer_study", "model": str(mnist_run), "judge": str(mnist_run2)})


def tiles(res, name: str) -> np.ndarray:
    """row_NAME.png -> (10, 28, 28) floats in [0, 1], read with PIL alone."""
    a = np.asarray(Image.open(io.BytesIO(res.files[f"row_{name}.png"])).convert("L"), dtype=np.float64) / 255
    n = res.data["rows"][0]["n"]
    return np.stack(np.split(a, n, axis=1))


def probs(run_dir, x: np.ndarray) -> np.ndarray:
    """A checkpoint's softmax on (B, 28, 28) images: its own weights and normalization, read from its files."""
    from cnnvis.models import load

    vm = load(str(run_dir))
    meta = json.loads((run_dir / "model.json").read_text())
    m, s = meta["input"]["mean"][0], meta["input"]["std"][0]
    with torch.no_grad():
        return torch.softmax(vm.model((torch.from_numpy(x).float().unsqueeze(1) - m) / s), 1).numpy()


def rows(res) -> dict:
    return {r["name"]: r for r in res.data["rows"]}


def tv(x: np.ndarray) -> float:
    return float(((x[:, :-1, 1:] - x[:, :-1, :-1]) ** 2 + (x[:, 1:, :-1] - x[:, :-1, :-1]) ** 2).mean())


def test_rows_and_fields(study):
    r = rows(study)
    assert list(r) == ["none", "decay", "blur", "clip", "tv", "range", "all", "default"]
    assert study.data["targets"] == list(range(10)) and study.main == "panel.png"
    for row in r.values():
        assert {"name", "config", "judge_mean_prob", "judge_agree", "n", "own_mean_prob"} <= set(row)
        assert row["n"] == 10 and row["config"]
    im = study.image("panel.png")
    assert im.size[0] > 10 * 28 and im.size[1] > 8 * 28


def test_numbers_are_the_second_nets_verdict_on_the_saved_rows(study, mnist_run, mnist_run2):
    for name, row in rows(study).items():
        x = tiles(study, name)
        p2 = probs(mnist_run2, x)
        target = np.arange(10)
        assert row["judge_mean_prob"] == pytest.approx(p2[target, target].mean(), abs=2e-5), name
        assert row["judge_agree"] == int((p2.argmax(1) == target).sum()), name
        p1 = probs(mnist_run, x)
        assert row["own_mean_prob"] == pytest.approx(p1[target, target].mean(), abs=2e-5), name


def test_each_row_changes_what_its_regularizer_acts_on(study):
    x = {n: tiles(study, n) for n in rows(study)}
    base = x["none"]
    # total variation: the TV row is smoother than plain ascent
    assert tv(x["tv"]) < 0.75 * tv(base)
    # blur: less high-frequency energy (difference from a 3x3 box mean)
    def hf(a):
        t = torch.from_numpy(a).unsqueeze(1)
        return float((t - torch.nn.functional.avg_pool2d(t, 3, 1, 1, count_include_pad=False)).pow(2).mean())
    assert hf(x["blur"]) < 0.5 * hf(base)
    # L2 decay: closer to the mean image (the dark background) than plain ascent
    def l2(a):
        return float(((a - MNIST_MEAN) ** 2).mean())
    assert l2(x["decay"]) < 0.85 * l2(base)
    # clipping of small-norm pixels: many pixels exactly at the mean's 8-bit value, plain ascent has almost none
    bg = round(MNIST_MEAN * 255) / 255
    def share_bg(a):
        return float((np.abs(a - bg) < 1e-6).mean())
    assert share_bg(x["clip"]) > 0.3 and share_bg(base) < 0.05
    # bounded range: the raw (unsaved) pixels stay in [0, 1]; plain ascent's leave it
    raw = {n: np.load(io.BytesIO(study.files[f"raw_{n}.npy"])).astype(np.float32) for n in ("range", "none")}
    assert raw["range"].min() >= 0 and raw["range"].max() <= 1
    assert ((raw["none"] < 0) | (raw["none"] > 1)).mean() > 0.1
    # all combined: every one of those at once
    assert tv(x["all"]) < 0.5 * tv(base) and share_bg(x["all"]) > 0.3 and l2(x["all"]) < l2(base)
    assert raw["none"].shape == (10, 1, 28, 28)


def test_combined_and_default_rows_convince_the_second_net(study):
    r = rows(study)
    for name in ("all", "default"):
        assert r[name]["judge_agree"] >= 7, r[name]
        assert r[name]["judge_mean_prob"] > 0.7, r[name]


def test_a_judge_with_other_labels_or_none_is_refused(capsys, mnist_run, tmp_path):
    from cnnvis.models import save_checkpoint
    from cnnvis.models.archs import build_arch

    other = tmp_path / "letters"
    save_checkpoint(other, build_arch("mnist_cnn"), architecture="mnist_cnn", classes=list("abcdefghij"))
    base = ["regularizers", "--model", mnist_run, "--steps", "2", "--threads", "1"]
    msg = one_error(capsys, base + ["--judge", other])
    assert "same labels" in msg and "names its classes otherwise than" in msg
    msg = one_error(capsys, base)  # a small net has no default judge
    assert "--judge" in msg and "second checkpoint" in msg
    msg = one_error(capsys, base + ["--judge", mnist_run])
    assert "second model" in msg
    msg = one_error(capsys, base + ["--judge", "none", "--rows", "none,blurr"])
    assert "blurr" in msg and "--rows" in msg
    out = tmp_path / "panel.png"
    assert not out.exists()


def test_the_rows_come_from_one_registry_that_imports_no_torch(mnist_run, tmp_path):
    """The --rows help, the kind's check and the 'all' row are derived from the registered rows: a row
    registered in one place (a throwaway one here) is offered and rendered; the registry imports no torch
    (it builds the CLI's --help)."""
    import subprocess
    import sys

    from cnnvis.optvis import regularizers as R
    from cnnvis.study import regularizers as S

    assert S.row_names() == ("none", "decay", "blur", "clip", "tv", "range", "all", "default")
    assert S.alone_rows() == ("decay", "blur", "clip", "tv", "range")
    kinds = [type(r).__name__ for r in S.regularizers_for("all", [0.5])]
    assert kinds == ["L2Decay", "GaussianBlur", "ClipSmallNorm", "TotalVariation", "BoundedRange"]
    code = "import sys, cnnvis.study.regularizers; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
    from cnnvis.sections.study import regularizers_description

    old = regularizers_description()  # the report's line, in the words it always had
    assert old == ("Decay, blur, clipping of weak pixels, total variation and bounded range, each alone and together "
                   "(Yosinski et al. 2015; Mahendran & Vedaldi 2015).")
    S.register_row("zz_blur2", doc="a wider blur (a test's throwaway row)", caption="a wider blur")(
        lambda c: [R.GaussianBlur(2.0, every=1)])
    try:
        assert S.row_names()[-3:] == ("zz_blur2", "all", "default")
        assert regularizers_description() == old.replace("total variation and bounded range",
                                                         "total variation, bounded range and a wider blur")
        assert [type(r).__name__ for r in S.regularizers_for("all", [0.5])][-1] == "GaussianBlur"
        res = run({"kind": "regularizer_study", "model": str(mnist_run), "judge": "none", "steps": 3,
                   "targets": [0, 1], "regularizers": ["none", "zz_blur2"]})
        a = tiles(res, "zz_blur2")
        assert [r["name"] for r in res.data["rows"]] == ["none", "zz_blur2"]
        assert "GaussianBlur" in res.data["rows"][1]["config"] and not np.array_equal(a, tiles(res, "none"))
        with pytest.raises(ValueError, match="registered already"):
            S.register_row("tv", doc="again")(lambda c: [])
    finally:
        S.unregister_row("zz_blur2")
    assert "zz_blur2" not in S.row_names() and regularizers_description() == old
