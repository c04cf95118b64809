"""Bad input on the command line: one line `error: ...`, exit code 2, no traceback, refused
before any work where it can be (weights that are text or HDF5, outputs that cannot be
written, sizes that would need tens of GB)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnvis.cli import main
from cnnvis.errors import CnnvisError


def one_error(capsys, argv) -> str:
    """Run the CLI; assert exit 2 and exactly one stderr line 'error: ...'; return that line."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def text_pth(tmp_path):
    p = tmp_path / "x.pth"
    p.write_text("epoch 12: loss 0.31\n")
    return p


@pytest.fixture
def h5_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "weights.h5"
    with h5py.File(p, "w") as f:
        f.create_group("layers/dense/vars").create_dataset("0", data=[[1.0, 2.0]])
    return p


# ---------------------------------------------------------------------- weights files
def test_text_weights_file(capsys, pelican_path, text_pth):
    line = one_error(capsys, ["classify", pelican_path, "--weights", text_pth])
    assert str(text_pth) in line and "is a text file" in line and "epoch 12" in line
    assert "torch.save(model.state_dict(), path)" in line


def test_weights_files_that_are_not_torch_files(tmp_path):
    from safetensors.torch import save_file

    from cnnvis.models.weights import read_state_dict

    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(7, 200)))
    with pytest.raises(CnnvisError, match=r"not a PyTorch file \(it starts with bytes 07 08 09"):
        read_state_dict(junk)
    st = tmp_path / "w.pth"
    save_file({"a": torch.ones(2)}, str(st))
    with pytest.raises(CnnvisError, match="looks like a safetensors file; rename it"):
        read_state_dict(st)
    good = tmp_path / "good.pth"
    torch.save({"module.a": torch.arange(3.0)}, good)
    torch.save({"a": torch.ones(1)}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(read_state_dict(good)["a"], torch.arange(3.0))  # real files still load
    assert torch.equal(read_state_dict(tmp_path / "old.pth")["a"], torch.ones(1))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CnnvisError, match="could not be read as a PyTorch file"):
        read_state_dict(cut)


def test_keras_h5_for_a_model_that_is_not_vgg(capsys, pelican_path, h5_file, tmp_path):
    line = one_error(capsys, ["classify", pelican_path, "--weights", h5_file])  # the default: efficientnet_lite0
    assert "Keras/HDF5" in line and "only supported for VGG16-style models" in line and "pickle" not in line
    renamed = tmp_path / "renamed.pth"
    renamed.write_bytes(h5_file.read_bytes())  # found by its content, not only by its name
    line = one_error(capsys, ["classify", pelican_path, "--weights", renamed])
    assert "only supported for VGG16-style models" in line


def test_subprocess_text_weights_exit_code(pelican_path, text_pth):
    p = subprocess.run([sys.executable, "-m", "cnnvis.cli", "classify", str(pelican_path), "--weights", str(text_pth)],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CNNVIS_NO_PROGRESS": "1"})
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith("error: weights file")


# ---------------------------------------------------------------------- outputs that cannot be written
def _under_a_file(tmp_path) -> Path:
    f = tmp_path / "file.txt"
    f.write_text("a regular file")
    return f / "sub" / "out.png"  # root can write anywhere, but not into a file


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_out_that_cannot_be_written_is_refused_before_the_work(capsys, pelican_path, tmp_path, where, monkeypatch):
    if where == "proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc")
        out = Path("/proc/cnnvis-out.png")  # os.access says yes to root; creating a file fails
    else:
        out = _under_a_file(tmp_path)
    import cnnvis.jobs as jobs

    monkeypatch.setattr(jobs, "run", lambda *a, **k: pytest.fail("the job ran before the output was checked"))
    line = one_error(capsys, ["saliency", pelican_path, "--out", out])
    assert "cannot write into" in line and "choose another --out" in line
    for argv in (["run", tmp_path / "spec.json", "--out", out.parent], ["report", "--quick", "--out", out.parent]):
        (tmp_path / "spec.json").write_text('{"kind": "classify", "images": ["sample:chelsea"]}')
        line = one_error(capsys, argv)
        assert "cannot write" in line and str(out.parent) in line


def test_atomic_write_errors_are_one_line(tmp_path):
    from cnnvis.utils import atomic_write

    for bad in (_under_a_file(tmp_path), Path("/proc/cnnvis-out.png")):
        with pytest.raises(CnnvisError, match="cannot write .*choose a file in a folder you can write to"):
            with atomic_write(bad) as f:
                f.write(b"x")
    target = tmp_path / "full.png"
    with pytest.raises(CnnvisError, match="No space left on device"):
        with atomic_write(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert not target.exists() and not list(tmp_path.glob(".full.png.*.part"))  # no temp file left behind
    with pytest.raises(ValueError, match="not ours"):  # other errors pass through unchanged
        with atomic_write(target):
            raise ValueError("not ours")
    with atomic_write(target) as f:
        f.write(b"ok")
    assert target.read_bytes() == b"ok"


# ---------------------------------------------------------------------- sizes
@pytest.mark.parametrize("argv", [
    ["class", "pelican", "--size", "100000", "--out", "{tmp}/a.png"],
    ["filters", "--size", "100000", "--out", "{tmp}/a.png"],
    ["saliency", "{photo}", "--size", "100000", "--out", "{tmp}/a.png"],
    ["saliency", "{photo}", "--method", "gradcam", "--size", "3000", "--out", "{tmp}/a.png"],
    ["deconv", "{photo}", "--size", "100000", "--out", "{tmp}/a.png"],
    ["sanity", "{photo}", "--size", "100000", "--out", "{tmp}/a.png"],
    ["dream", "{photo}", "--tile", "100000", "--out", "{tmp}/a.png"],
])
def test_huge_sizes_are_refused_up_front(capsys, pelican_path, tmp_path, argv, monkeypatch):
    import cnnvis.models as models

    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("the model loaded before the size was checked"))
    argv = [a.format(tmp=tmp_path, photo=pelican_path) for a in argv]
    flag = next(a for a in argv if a in ("--size", "--tile"))
    line = one_error(capsys, argv)
    value = argv[argv.index(flag) + 1]
    assert line.startswith(f"error: {flag}: {value} pixels is too large: the limit is 2048 pixels a side")
    assert line.endswith(f"give {flag} of at most 2048") and "(fields:" not in line and "spec:" not in line


def test_size_limit_in_the_spec_schema():
    from cnnvis.jobs import KINDS, make_spec

    assert KINDS["attribution"].model_json_schema()["properties"]["size"]["anyOf"][0]["maximum"] == 2048
    assert make_spec("attribution", image="x.jpg", size=2048).size == 2048
    with pytest.raises(CnnvisError, match="field 'size': 2049 pixels is too large"):
        make_spec("attribution", image="x.jpg", size=2049)


# ---------------------------------------------------------------------- a hostile user's pass (sixth session)
def test_a_second_hostile_pass_each_refused_in_one_line(capsys, pelican_path, tmp_path):
    """Each of these was a traceback, a crash, a NaN result or a silent default before: now one line, exit 2,
    and the line names the problem."""
    out = tmp_path / "o.png"
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    cases = [
        (["occlusion", pelican_path, "-o", out, "-l", "classifier", "--window", 112, "--stride", 112],
         "layer 'classifier' has no feature maps"),
        (["run", deep], "nested too deeply"),
        (["classify", pelican_path, "--threads", 100000], "--threads must be a number of CPU threads from 1 to"),
        (["classify", fifo], "not a regular file"),
        (["saliency", pelican_path, "-o", out, "--method", "ig", "--baseline", "nan", "--steps", 2],
         "error: --baseline: Input should be a finite number"),
        (["saliency", pelican_path, "-o", out, "--method", "ig", "--baseline", 5, "--steps", 2], "got 5.0"),
        (["saliency", pelican_path, "-o", out, "--method", "smoothgrad", "--noise", "nan", "--samples", 2],
         "error: --noise: Input should be a finite number"),
        (["saliency", pelican_path, "-o", out, "-l", "stage3", "--channel", -1], "channel -1 is out of range"),
        (["maps", pelican_path, "-o", out, "-l", "blocks.0.0.drop_path"],
         "'blocks.0.0.drop_path' did not run in the forward pass"),
        (["filters", "--steps", 2, "--size", 48, "-o", out, "--layers", ",,", "--first", 1], "names nothing"),
        (["filters", "--steps", 2, "--size", 48, "-o", out, "--layers", "stage0", "--channels", "1,1"],
         "names 1 twice"),
        (["invert", pelican_path, "--steps", 2, "--judge", "none", "--size", 64, "-o", out, "--layers", ""],
         "--layers '' names nothing"),
        (["invert", pelican_path, "--steps", 2, "--judge", "none", "--size", 64, "-o", out, "--layers", "stage1",
          "--fourier-steps", 5], "more than all the steps"),
        (["class", "robin", "--ensemble", "none", "--judge", "none", "--steps", 2, "--size", 64, "-o", out,
          "--animate", tmp_path / "o.png"], "--out and --animate name the same file"),
    ]
    for argv, words in cases:
        line = one_error(capsys, argv)
        assert words in line, (argv, line)
    assert not out.exists()
    for body, words in [('{"kind": "feature_maps", "image": "sample:chelsea", "seed": true}', "'seed' must be integer"),
                        ('{"kind": "feature_maps", "image": "sample:chelsea", "size": "224"}', "'size' must be")]:
        spec = tmp_path / "spec.json"
        spec.write_text(body)
        assert words in one_error(capsys, ["run", spec])


def test_weights_full_of_nan_are_refused_not_a_nan_answer(capsys, pelican_path, tmp_path):
    """A state_dict from a diverged run (every float NaN) classified as 'tench nan' with exit 0."""
    import torchvision

    sd = torchvision.models.resnet18().state_dict()
    sd["layer1.0.conv1.weight"][0, 0, 0, 0] = float("inf")
    torch.save(sd, tmp_path / "one_inf.pth")
    line = one_error(capsys, ["classify", pelican_path, "-m", "resnet18", "--weights", tmp_path / "one_inf.pth"])
    assert "NaN or infinite values in 1 tensors (e.g. layer1.0.conv1.weight)" in line
    sd["bn1.running_var"].fill_(float("nan"))
    torch.save(sd, tmp_path / "nan_stats.pth")
    assert "in 2 tensors" in one_error(capsys, ["classify", pelican_path, "-m", "resnet18", "--weights",
                                                tmp_path / "nan_stats.pth"])


def test_outputs_that_would_overwrite_data_shards_or_a_users_folder(capsys, tmp_path, mnist_run):
    """compare wrote its picture over a dataset image; a report replaced a website's index.html; a merge
    replaced one of its own shards; an export deleted files added to it; a FIFO in a photo folder was
    skipped without a word; --lr 1e300 overflowed inside the optimizer (a traceback)."""
    import json

    from PIL import Image

    from cnnvis.jobs.kinds_study import INDEX_FORMAT
    from cnnvis.web.export import MARKER, _prepare_out

    data = tmp_path / "digits"
    for c in ("3", "7"):
        (data / c).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (28, 28), 60 * i).save(data / c / f"{i}.png")
    before = (data / "3" / "1.png").read_bytes()
    line = one_error(capsys, ["compare", "--model", mnist_run, "--model", mnist_run, data, "--out", "c.png",
                              "--matches", data / "3" / "1.png"])
    assert "inside" in line and (data / "3" / "1.png").read_bytes() == before
    site = tmp_path / "mysite"
    site.mkdir()
    (site / "index.html").write_text("<h1>my homepage</h1>")
    assert "not an earlier cnnvis report" in one_error(capsys, ["report", "--quick", "--out", site])
    assert (site / "index.html").read_text() == "<h1>my homepage</h1>"
    parts = []
    for s in range(2):
        parts.append(tmp_path / f"part{s}")
        parts[-1].mkdir()
        (parts[-1] / "index.json").write_text(json.dumps({"format": INDEX_FORMAT}))
    line = one_error(capsys, ["top-examples", "--merge", *parts, "--out", parts[0]])
    assert "the shard folder" in line and json.loads((parts[0] / "index.json").read_text()) == {"format": INDEX_FORMAT}
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 32)).save(photos / "a.png")
    os.mkfifo(photos / "pipe.png")
    assert "pipe.png (not a regular file)" in one_error(capsys, ["classify", photos])
    assert "learning rate must be a positive number up to 100" in one_error(
        capsys, ["train", data, "--out", tmp_path / "run", "--lr", "1e300"])
    export = tmp_path / "site"
    export.mkdir()
    (export / "index.html").write_text("x")
    (export / MARKER).write_text("written by cnnvis export-site; ...:\nindex.html\n")
    _prepare_out(export)  # only its own files: replaced
    (export / "mine.txt").write_text("mine")
    with pytest.raises(CnnvisError, match=r"1 file\(s\) were added to it since \(mine.txt\)"):
        _prepare_out(export)
    for p in tmp_path.glob(".site.tmp-*"):
        p.rmdir()


def test_a_runs_recorded_data_that_is_not_found_is_named(capsys, tmp_path, mnist_run):
    """compare without DATA reads the run's recorded dataset: when that path is not found from here, the line
    says where it came from (was: cannot read 'good': No such file or directory)."""
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(mnist_run, run)
    meta = json.loads((run / "model.json").read_text())
    meta["training"]["data"] = "nowhere/digits"
    (run / "model.json").write_text(json.dumps(meta))
    line = one_error(capsys, ["compare", "--model", run, "--model", mnist_run, "--out", tmp_path / "c.png"])
    assert "was trained on 'nowhere/digits' (its model.json says so)" in line and "give DATA" in line
