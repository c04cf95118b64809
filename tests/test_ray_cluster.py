"""render-all on a Ray cluster started apart from cnnvis (`ray start --head`), as a user runs one (issue 18):
ray://, HOST:PORT and auto join it and resume; a wrong address, a missing Ray Client, a token the cluster
wants or refuses are one line in seconds; SIGTERM while connecting exits 143; the cluster going away
mid-run says what is stored and the same command on another cluster finishes only the rest.

Every Ray here lives in a sandbox (its own HOME and RAY_TMPDIR, see tests/raycluster.py): nothing is
written to the real ~/.ray, and no Ray of anyone else on the machine is joined or stopped."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnvis.cli import main
from tests.raycluster import Cluster, ray_env, remove, sandbox
from tests.test_engine import _live_tiles, _pngs, _rows, _stored

ray = pytest.importorskip("ray")  # the [ray] extra (make test installs it)
pytestmark = pytest.mark.slow

LITE = "efficientnet_lite0"
QUICK = ["--steps", "2", "--size", "48", "--threads", "1"]
BOUND = 90  # s: a subprocess that runs longer hangs (the retries this fixes took 14 minutes)


@pytest.fixture(scope="module")
def cluster():
    """One cluster for the module (no token: started in a HOME without ~/.ray/auth_token)."""
    root = sandbox()
    c = Cluster(ray_env(root), root / "ray.log")
    c.root = root
    yield c
    c.stop()
    remove(root)


def cnnvis(args: list[str], env: dict, timeout: float = BOUND) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnvis", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def render(cache: Path, layers: str, *extra: str) -> list[str]:
    return ["render-all", "--model", LITE, "--layers", layers, "--cache", str(cache), *QUICK, "--engine", "ray",
            *extra]


def one_error_line(err: str) -> str:
    """The single 'error: ...' line of stderr (and no traceback)."""
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def test_ray_client_and_host_port_join_the_cluster_and_resume(cluster, tmp_path):
    """The README's ray://HOST:PORT and the GCS's HOST:PORT each join the cluster (auto: in the token test
    below); the second run skips the page the first stored and renders only the rest, the pixels this
    process renders."""
    cache, env = tmp_path / "cache", ray_env(cluster.root)
    r = cnnvis(render(cache, "conv_stem", "--first", "16", "--address", cluster.client), env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"on {cluster.client}" in r.stderr and "1 rendered, 0 were already there" in r.stdout
    r = cnnvis(render(cache, "conv_stem,blocks.0.0.conv_pw", "--address", cluster.address), env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"on {cluster.address}" in r.stderr and "2 rendered, 1 were already there" in r.stdout
    stored = _stored(cache)
    assert len(stored) == 3 and _rows(cache) == 3
    assert not (cluster.root / "home" / ".ray").exists()  # joining makes no token
    # the cluster's pages are the pixels this process renders for the same specs
    assert main(["render-all", "--model", LITE, "--layers", "conv_stem,blocks.0.0.conv_pw", "--cache",
                 str(tmp_path / "here"), *QUICK]) == 0
    here = _stored(tmp_path / "here")
    assert here.keys() == stored.keys()
    for key, res in here.items():
        a, b = _pngs(res), _pngs(stored[key])
        assert a.keys() == b.keys() and len(a) == _live_tiles(res) >= 9
        assert all(np.array_equal(a[n], b[n]) for n in a), key


def test_without_ray_client_ray_address_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "grpc", None)  # `import grpc` raises ImportError: Ray without [client]
    rc = main(render(tmp_path / "c", "conv_stem", "--address", "ray://127.0.0.1:10001"))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "needs Ray Client, which is not installed: pip install 'cnnvis[ray]'" in err and "ray[client]" in err


def test_bad_addresses_are_one_line_in_seconds(tmp_path, capsys):
    """Nothing listening, a port that never answers, no cluster for auto, a malformed address: one line each
    (these ran 14 minutes of retries before). In this process: nothing here joins a Ray."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]  # bound, not listening: refused
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts TCP, never speaks gRPC
    cases = {f"127.0.0.1:{port}": f"no Ray cluster (GCS) at '127.0.0.1:{port}': Connection refused",
             f"ray://127.0.0.1:{port}": f"no Ray Client server at 'ray://127.0.0.1:{port}': Connection refused",
             f"127.0.0.1:{silent.getsockname()[1]}": "but it does not answer as a Ray cluster (GCS) within 10 s",
             "head-node": "--address 'head-node' is not a Ray address; give HOST:PORT",
             "ray://head:port": "is not a Ray address"}
    try:
        for address, says in cases.items():
            rc = main(render(tmp_path / "c", "conv_stem", "--first", "16", "--address", address))
            err = capsys.readouterr().err
            assert rc == 2 and says in one_error_line(err), (address, err)
            assert "check --address" in err or "give HOST:PORT" in err
        assert not (tmp_path / "c" / "objects").exists() or not any((tmp_path / "c" / "objects").iterdir())
    finally:
        closed.close()
        silent.close()
    assert not ray.is_initialized()
    root = sandbox()  # auto with no `ray start` on this machine (in this RAY_TMPDIR)
    try:
        r = cnnvis(render(tmp_path / "c", "conv_stem", "--address", "auto"), ray_env(root))
        assert r.returncode == 2
        assert "--address auto: no Ray cluster was started on this machine" in one_error_line(r.stderr)
    finally:
        remove(root)


def test_sigterm_while_connecting_exits_143(tmp_path):
    """SIGTERM while cnnvis waits for an address that never answers: 143 and the resume line at once (Ray's
    own handler made it 15)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    root = sandbox()
    try:
        p = subprocess.Popen([sys.executable, "-m", "cnnvis", *render(tmp_path / "c", "conv_stem", "--address",
                                                                         f"127.0.0.1:{silent.getsockname()[1]}")],
                             env=ray_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = ""
        while "to run (ray engine)" not in seen:  # the probe starts right after this line
            line = p.stderr.readline()
            assert line, (p.wait(), seen)
            seen += line
        time.sleep(1.0)
        assert p.poll() is None  # still waiting for the silent port (10 s)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 143, (p.returncode, err[-2000:])
        assert "terminated: 0 tasks stored this run; run the same command again" in err and "Traceback" not in err
    finally:
        silent.close()
        remove(root)


def test_a_token_cluster_after_a_local_run(cluster, tmp_path, monkeypatch, capsys):
    """A local --engine ray run makes ~/.ray/auth_token (Ray's default); a cluster started after it with
    `ray start` wants that token. cnnvis sends it (HOST:PORT, as `auto` did); a machine without it, or with
    another, is told what to do in one line; a cluster without tokens is joined with a token present."""
    root = sandbox()
    home = root / "home"
    try:
        r = cnnvis(render(tmp_path / "local", "conv_stem", "--first", "16", "--workers", "1"), ray_env(root))
        assert r.returncode == 0, r.stderr[-3000:]
        assert "Ray: 1 workers" in r.stderr and " on " not in r.stderr.split("Ray: ")[1].splitlines()[0]
        token = home / ".ray" / "auth_token"
        assert token.is_file() and len(token.read_text().strip()) >= 16  # a local Ray, not the module's cluster
        b = Cluster(ray_env(root), root / "ray.log")  # started after the token exists: token auth on
        try:
            cache = tmp_path / "cache"
            r = cnnvis(render(cache, "conv_stem", "--first", "16", "--address", b.address), ray_env(root))
            assert r.returncode == 0, r.stderr[-3000:]
            assert f"on {b.address}" in r.stderr and "1 rendered, 0 were already there" in r.stdout
            # in this process: no token at all, then the wrong one (nothing is joined, so nothing to undo)
            monkeypatch.setenv("HOME", str(tmp_path))
            for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
                monkeypatch.delenv(k, raising=False)
            for address in (b.address, b.client):
                rc = main(render(tmp_path / "c2", "conv_stem", "--address", address))
                line = one_error_line(capsys.readouterr().err)
                assert rc == 2 and f"the Ray cluster at '{address}' requires an authentication token and this " \
                                   "machine has none: run `ray get-auth-token` on its head node" in line, line
            monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token-of-that-cluster")
            rc = main(render(tmp_path / "c2", "conv_stem", "--address", b.address))
            line = one_error_line(capsys.readouterr().err)
            assert rc == 2 and f"the Ray cluster at '{b.address}' refused this machine's authentication " \
                               "token" in line and "RAY_AUTH_TOKEN=" in line, line
            assert not ray.is_initialized()
        finally:
            b.stop()
        # the module's cluster has no tokens: joined (auto too) although this HOME has one
        env = ray_env(cluster.root, home=home)
        r = cnnvis(render(cache, "conv_stem", "--address", "auto"), env)
        assert r.returncode == 0 and "1 rendered, 1 were already there" in r.stdout, r.stderr[-3000:]
        assert "on auto" in r.stderr and "worker died" not in r.stderr  # (a token sent there killed workers)
    finally:
        remove(root)


def test_the_cluster_going_away_mid_run_says_what_is_stored_and_the_rerun_resumes(cluster, tmp_path):
    """The cluster is killed while render-all runs on it: exit 1 with one line naming how many pages are
    stored and which are not; the same command on another cluster renders only those; what the first run
    stored is untouched."""
    root = sandbox()
    cache = tmp_path / "cache"
    args = ["render-all", "--model", LITE, "--layers", "blocks.1.0.conv_pw", "--cache", str(cache), "--steps",
            "30", "--size", "48", "--threads", "1", "--engine", "ray"]  # 6 pages of 16 channels
    try:
        c = Cluster(ray_env(root), root / "ray.log")
        try:
            p = subprocess.Popen([sys.executable, "-m", "cnnvis", *args, "--address", c.address], env=ray_env(root),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            t0 = time.time()
            while _rows(cache) < 1 and p.poll() is None and time.time() - t0 < BOUND:
                time.sleep(0.1)
            assert p.poll() is None, p.communicate()
            c.kill()
            out, err = p.communicate(timeout=BOUND)
        finally:
            c.stop()
        assert p.returncode == 1, (p.returncode, err[-3000:])
        line = one_error_line(err)
        first = _stored(cache)
        n = len(first)
        assert 1 <= n < 6, n
        assert line.startswith(f"error: the Ray cluster at '{c.address}' went away mid-run"), line
        assert f"{n} of 6 pages are stored ({n} this run), {6 - n} are not (blocks.1.0.conv_pw channels " in line
        assert line.endswith("run the same command again, on a running cluster, to compute only those")
        stored = {re.search(r"channels (\d+)-", line).group(1)}  # a page named as not stored is not in the store
        assert not any(str(res.spec["channels"][0]) in stored for res in first.values())
        r = cnnvis([*args, "--address", cluster.address], ray_env(cluster.root))
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"6 tasks: {n} already in" in r.stderr
        assert f"{6 - n} rendered, {n} were already there, 0 failed" in r.stdout
        final = _stored(cache)
        assert len(final) == 6 and _rows(cache) == 6
        for key, res in first.items():
            assert final[key].files == res.files
    finally:
        remove(root)
