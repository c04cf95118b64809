"""Many jobs into one store, locally or on Ray (issue 13): render-all and top-examples with
--engine ray give the local engine's results; a SIGTERM'd driver resumes; failures are retried
and reported; without Ray, --engine ray says how to install it."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnvis.cli import main
from cnnvis.jobs import Store
from cnnvis.jobs.result import Result
from conftest import SHARED
from tests.raycluster import ray_env, remove, sandbox

ray = pytest.importorskip("ray")  # the [ray] extra: make test installs it (CI runs these)
pytestmark = pytest.mark.slow

CIFAR_ZIP = SHARED / "data" / "cifar10-jpeg.zip"
LITE = "efficientnet_lite0"
LAYERS = "conv_stem,blocks.0.0.conv_pw"  # 32 + 16 channels: 3 pages of 16
QUICK = ["--steps", "8", "--size", "64", "--threads", "1"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's in-process runs (run_many joins it instead of starting its own), in a
    sandbox: the auth token a local Ray makes goes to a temporary HOME, never the real ~/.ray."""
    root = sandbox()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ray_env(root).items():
            mp.setenv(k, v)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        yield
        ray.shutdown()
    remove(root)


def _stored(cache: Path) -> dict[str, Result]:
    """Every result in a cache folder, loaded from its files (a broken one raises)."""
    return {p.parent.name: Result.load(p.parent) for p in sorted((cache / "objects").glob("*/*/result.json"))}


def _pngs(res: Result) -> dict[str, np.ndarray]:
    return {n: np.asarray(Image.open(io.BytesIO(b))) for n, b in res.files.items() if n.endswith(".png")}


def _live_tiles(res: Result) -> int:
    """The PNGs a filters page must hold: its grid and one tile per channel that is not dead (a dead channel,
    constant on the sample photos after its activation, is drawn as a blank cell and has no tile)."""
    rows = res.data["layers"]
    return 1 + sum(len(r["channels"]) - len(r["dead"]) for r in rows)


def test_render_all_on_ray_equals_the_local_engine(local_ray, tmp_path, capsys):
    local, rayc = tmp_path / "local", tmp_path / "ray"
    assert main(["render-all", "--model", LITE, "--layers", LAYERS, "--cache", str(local), *QUICK]) == 0
    assert main(["render-all", "--model", LITE, "--layers", LAYERS, "--cache", str(rayc), *QUICK,
                 "--engine", "ray", "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "Ray: 2 workers" in err and "48/48 channels" in err  # one overall bar (plain lines off a terminal)
    a, b = _stored(local), _stored(rayc)
    assert len(a) == 3 and a.keys() == b.keys()  # the same specs -> the same keys, in the same store layout
    for key in a:
        assert a[key].spec == b[key].spec and sorted(a[key].files) == sorted(b[key].files)
        pa, pb = _pngs(a[key]), _pngs(b[key])
        assert len(pa) == _live_tiles(a[key]) >= 9  # a grid and a tile per live channel (of 16)
        assert a[key].data["dead"] < 8
        for n in pa:  # same seeds, same thread count: the same pixels
            assert np.array_equal(pa[n], pb[n]), (key, n)
        assert a[key].env["threads"] == b[key].env["threads"] == 1
    # the pages read it: the index has a row per page, and a second run computes nothing
    assert main(["render-all", "--model", LITE, "--layers", LAYERS, "--cache", str(rayc), *QUICK,
                 "--engine", "ray"]) == 0
    out = capsys.readouterr()
    assert "0 rendered, 3 were already there" in out.out and "3 already in" in out.err


@pytest.mark.skipif(not CIFAR_ZIP.is_file(), reason=f"{CIFAR_ZIP} not present")
def test_top_examples_on_ray_equal_the_local_engine(local_ray, tmp_path, capsys):
    from cnnvis.models import build_arch
    from cnnvis.models.checkpoint import save_checkpoint

    torch.manual_seed(3)
    ckpt = save_checkpoint(tmp_path / "net", build_arch("cifar_cnn", num_classes=10), architecture="cifar_cnn",
                           classes=["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                    "truck"])
    common = ["--model", str(ckpt), str(CIFAR_ZIP), "--split", "test", "--layer", "conv2", "--k", "9",
              "--threads", "1", "--json"]
    assert main(["top-examples", *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["top-examples", *common, "--engine", "ray", "--workers", "2", "--shards", "5", "--cache",
                 str(tmp_path / "cache"), "--out", str(tmp_path / "ray")]) == 0
    capsys.readouterr()
    a = json.loads((tmp_path / "local" / "index.json").read_text())
    b = json.loads((tmp_path / "ray" / "index.json").read_text())
    assert a["images"] == b["images"] == 10000 and a["seen"] == b["seen"] == 10000
    assert b["shards_merged"] == [0, 1, 2, 3, 4]
    assert len(a["channels"]) == 96 and a["top"] == b["top"]  # every channel's top 9: images, values, places
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(p.name for p in (tmp_path / "local")
                                                                         .iterdir())
    # one stored result per shard (a rerun skips them) and the merge of them (a rerun is served from the store)
    assert sorted(r.kind for r in _stored(tmp_path / "cache").values()) == ["top_examples"] * 5 + ["top_examples_merge"]


def test_failed_tasks_are_retried_and_reported(local_ray, tmp_path, capsys, monkeypatch):
    """A task that cannot succeed (a channel past the layer's end) is tried 1 + retries times on each
    engine, named in the summary, and the others are stored; the CLI exits 1 and names it."""
    from cnnvis.jobs.engine import run_many

    good = {"kind": "filters", "model": LITE, "layers": ["blocks.0.0.conv_pw"], "channels": [0, 1], "steps": 2,
            "size": 48}
    bad = {**good, "channels": [99]}
    for engine in ("local", "ray"):
        store = Store(tmp_path / engine)
        s = run_many([good, bad], store, engine=engine, workers=2, threads=1, retries=2, progress=False)
        assert (s.computed, s.skipped, s.retried, len(s.failed)) == (1, 0, 2, 1), (engine, s)
        assert list(s.retries) == [1] and len(s.retries[1]) == 2 and all("channel 99" in e for e in s.retries[1])
        d = s.to_dict()
        assert d["retries"] == [{"spec": bad, "errors": s.retries[1], "stored": False}] and d["lost"] is None
        assert s.failed[0][0] == bad and "channel 99" in s.failed[0][1], s.failed
        assert s.keys[0] is not None and s.keys[1] is None and len(_stored(tmp_path / engine)) == 1
    from cnnvis.jobs.kinds_optvis import FiltersSpec

    real = FiltersSpec.run
    calls = []

    def flaky(self, vm, ctx):  # the page of channels 16-31 always fails, the first page works
        calls.append(self.channels[0])
        if self.channels[0] == 16:
            raise RuntimeError("boom")
        return real(self, vm, ctx)

    monkeypatch.setattr(FiltersSpec, "run", flaky)
    rc = main(["render-all", "--model", LITE, "--layers", "conv_stem", "--cache", str(tmp_path / "cli"),
               "--steps", "2", "--size", "48", "--threads", "1", "--retries", "1"])
    out = capsys.readouterr()
    assert rc == 1 and "Traceback" not in out.err
    assert "failed after retries: conv_stem channels 16-31: RuntimeError: boom" in out.err
    assert "1 rendered, 0 were already there, 1 failed, 1 retry (" in out.out and calls == [0, 16, 16]
    assert len(_stored(tmp_path / "cli")) == 1
    # bad input is refused before any task runs: exit 2, one line
    rc = main(["render-all", "--model", LITE, "--layers", "conv_stem", "--cache", str(tmp_path / "cli2"),
               "--size", "8"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --size 8 is too small") and err.count("\n") == 1


def test_without_ray_engine_ray_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    rc = main(["render-all", "--model", LITE, "--layers", "conv_stem", "--cache", str(tmp_path / "c"),
               "--engine", "ray"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'cnnvis[ray]'" in err and err.count("\n") == 1
    assert not (tmp_path / "c" / "objects").exists() or not any((tmp_path / "c" / "objects").iterdir())


def _rows(cache: Path) -> int:
    try:
        with sqlite3.connect(cache / "index.sqlite", timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_a_killed_driver_resumes_with_only_the_unfinished_tasks(tmp_path):
    """SIGTERM to `cnnvis render-all --engine ray` half-way: it exits (143), what finished is stored and
    whole; the same command again runs only the rest; every stored result loads and decodes."""
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "cnnvis", "render-all", "--model", LITE, "--layers", "blocks.1.0.conv_pw",
           "--cache", str(cache), "--steps", "6", "--size", "48", "--threads", "1", "--engine", "ray",
           "--workers", "2"]  # 96 channels: 6 pages
    root = sandbox()  # its local Ray's token and sessions (removed at the end)
    env = ray_env(root)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.time()
    while _rows(cache) < 2 and p.poll() is None and time.time() - t0 < 240:
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()  # still running half-way
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, (p.returncode, err[-2000:])
    assert "run the same command again" in err and "Traceback" not in err
    first = _stored(cache)
    assert 2 <= len(first) < 6, len(first)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"6 tasks: {len(first)} already in" in r.stderr and f"{6 - len(first)} to run" in r.stderr
    assert f"{6 - len(first)} rendered, {len(first)} were already there" in r.stdout
    final = _stored(cache)
    assert len(final) == 6 and _rows(cache) == 6
    for key, res in final.items():
        tiles = _pngs(res)
        assert len(tiles) == _live_tiles(res) >= 9 and all(t.size > 0 for t in tiles.values())  # all decode
        if key in first:  # what the killed run stored is untouched
            assert res.files == first[key].files
    remove(root)


def test_retries_that_succeed_are_named_in_the_summary(tmp_path, capsys, monkeypatch):
    """A page that fails once and then works: stored, and the summary says it was tried again and why."""
    from cnnvis.jobs.kinds_optvis import FiltersSpec

    real = FiltersSpec.run
    calls = []

    def once(self, vm, ctx):
        calls.append(self.channels[0])
        if self.channels[0] == 16 and calls.count(16) == 1:
            raise RuntimeError("flaky once")
        return real(self, vm, ctx)

    monkeypatch.setattr(FiltersSpec, "run", once)
    rc = main(["render-all", "--model", LITE, "--layers", "conv_stem", "--cache", str(tmp_path / "c"), "--steps",
               "2", "--size", "48", "--threads", "1"])
    out = capsys.readouterr()
    assert rc == 0 and calls == [0, 16, 16]
    assert "2 rendered, 0 were already there, 0 failed, 1 retry (" in out.out
    assert "retried: conv_stem channels 16-31: stored after 2 tries (first failure: RuntimeError: flaky once)" \
        in out.err
    assert len(_stored(tmp_path / "c")) == 2


def test_ray_flags_with_the_local_engine_are_refused(tmp_path, capsys):
    """--address/--workers (and --retries where nothing is retried) with --engine local were silently
    ignored: now one line, exit 2, before anything runs."""
    cache = tmp_path / "c"
    cases = [(["render-all", "--model", LITE, "--layers", "conv_stem", "--cache", str(cache), "--address",
               "head:6379"], "error: --address does nothing here: this run computes in this process "
                             "(--engine local); add --engine ray, or leave it out"),
             (["render-all", "--model", LITE, "--cache", str(cache), "--workers", "4", "--address", "auto"],
              "error: --address and --workers do nothing here"),
             (["top-examples", "--model", LITE, "mnist", "--layer", "conv_stem", "--out", str(tmp_path / "o"),
               "--retries", "3"], "error: --retries does nothing here: this run computes in this process "
                                  "(--engine local); add --engine ray (or, for --retries, --shards S)"),
             (["top-examples", "--model", LITE, "mnist", "--layer", "conv_stem", "--out", str(tmp_path / "o"),
               "--shards", "2", "--workers", "2"], "error: --workers does nothing here"),
             (["top-examples", "--merge", str(tmp_path / "a"), "--out", str(tmp_path / "o"), "--address", "auto"],
              "error: --address does nothing here: --merge only combines finished shards' folders; leave it out")]
    for argv, says in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith(says) and err.count("\n") == 1, (argv, err)
    assert not cache.exists() and not (tmp_path / "o").exists()
    # --retries acts on the local engine's tasks: accepted there
    rc = main(["render-all", "--model", LITE, "--layers", "conv_stem", "--first", "16", "--cache", str(cache),
               "--steps", "1", "--size", "48", "--retries", "0"])
    assert rc == 0 and "1 rendered" in capsys.readouterr().out


def test_the_eta_after_a_resume_counts_only_the_work_left(monkeypatch, capsys):
    """90 of 100 channels were stored before; 5 computed in 10 s: 5 left at 2 s each = ETA 10 s (it said
    0.5 s: the skipped 90 counted as work done in those 10 s). A clock the test sets, not a timing."""
    from cnnvis import progress

    now = [1000.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    bar = progress.Bar(100, unit="channels", leave=True, style="eta", skipped=90)  # as run_many makes it
    bar.every = 0
    now[0] += 10
    bar.update(5)
    now[0] += 4
    bar.update(3)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["95/100 channels (10 s, ETA 10 s)", "98/100 channels (14 s, ETA 4 s)"]
    assert bar.eta(now[0]) == pytest.approx(14 / 8 * 2)
    fresh = progress.Bar(100, unit="channels", enabled=False, leave=True, style="eta")
    fresh.update(20)
    assert fresh.eta(now[0] + 10) == pytest.approx(10 / 20 * 80)


def test_a_ray_client_session_that_fails_to_start_is_tried_again(monkeypatch, capsys):
    """A Ray Client server answers the probe but cannot start this client's session (a busy head): ray.init is
    tried again after a pause, said on stderr; when it keeps failing the one-line error names the server's cause
    (the last line of its message, not the empty first line)."""
    from cnnvis.errors import CnnvisError
    from cnnvis.jobs import engine, ray_connect

    calls = []

    class FakeRay:
        fail = 1

        def init(self, **kw):
            calls.append(kw["address"])
            if len(calls) <= self.fail:
                raise ConnectionAbortedError("Initialization failure from server:\nTraceback ...\n"
                                             "RuntimeError: Starting Ray client server failed.")

        def shutdown(self):
            pass

        def is_initialized(self):
            return False

    monkeypatch.setattr(ray_connect, "check_cluster", lambda target: (lambda: None))
    monkeypatch.setattr(engine, "INIT_PAUSE_S", 0.0)
    monkeypatch.setattr(engine, "_catch_sigterm", lambda: None)
    fake = FakeRay()
    host, port, where, _ = engine._connect(fake, "ray://127.0.0.1:10001", None, 1)
    assert (host, port) == ("127.0.0.1", 10001) and calls == ["ray://127.0.0.1:10001"] * 2
    err = capsys.readouterr().err
    assert "could not start a session (Initialization failure from server: RuntimeError: Starting Ray client " \
           "server failed.); trying again (2/3)" in err
    calls.clear()
    fake.fail = 99
    with pytest.raises(CnnvisError) as e:
        engine._connect(fake, "ray://127.0.0.1:10001", None, 1)
    assert len(calls) == engine.INIT_TRIES == 3
    assert "cannot join the Ray cluster at 'ray://127.0.0.1:10001': Initialization failure from server: " \
           "RuntimeError: Starting Ray client server failed.; check --address" in str(e.value)
