"""Load and reliability bench of `cnnvis serve` (issue 12; loopback only, bounded; not a test).

    .venv/bin/python bench/serve.py [--model efficientnet_lite0] [--requests 200] [--clients 16] [--threads 2]

Starts `cnnvis serve` in a subprocess on a free 127.0.0.1 port with a fresh temporary cache, then:
(a) `--requests` POST /api/classify from `--clients` concurrent clients (threads, one httpx client each),
    cycling through the shared ImageNet samples (the first pass computes, repeats are store hits):
    errors, top-1 agreement with the file name, p50/p99/max latency, requests/s, and the server's
    RSS (VmRSS, peak VmHWM from /proc/PID/status) before and after;
(b) 16 simultaneous identical POST /api/jobs of a layer page (`cnnvis.web.specs.layer_page_spec`):
    one job id, and GET /api/health `runs` grows by exactly 1;
(c) while that render runs: GET /m/{mid} (the model page) and GET /api/models, each timed (goal < 1 s);
(d) kill -9 the server during a second render, start it again on the same cache: the first render's
    files are served byte-identical at once, the killed job is not done (no half-written result).
Check it runs: --requests 20 --clients 4 --render-timeout 300.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def _samples() -> list[Path]:
    for cand in (os.environ.get("CNNVIS_SHARED"), ROOT.parent / "shared", ROOT.parent.parent / "shared"):
        if cand and (Path(cand) / "data" / "imagenet-samples").is_dir():
            return sorted((Path(cand) / "data" / "imagenet-samples").glob("*.JPEG"))
    sys.exit("bench/serve.py: the shared ImageNet samples (../shared/data/imagenet-samples) are missing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = round(int(v.split()[0]) / 1024, 1)  # MiB
    return out


class Server:
    def __init__(self, args, cache: str) -> None:
        self.args, self.cache, self.port = args, cache, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.args.threads), "MKL_NUM_THREADS": str(self.args.threads),
               "CNNVIS_NO_PROGRESS": "1"}
        cmd = [sys.executable, "-m", "cnnvis", "serve", "--model", self.args.model, "--host", "127.0.0.1",
               "--port", str(self.port), "--cache", self.cache, "--threads", str(self.args.threads)]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        while time.perf_counter() - t0 < self.args.start_timeout:
            if self.proc.poll() is not None:
                sys.exit(f"server exited with {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        sys.exit(f"server did not answer within {self.args.start_timeout} s")

    def kill(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def classify_load(srv: Server, args, photos: list[Path]) -> dict:
    blobs = [(p.name, p.read_bytes(), p.stem.split("_", 1)[1].replace("_", " ")) for p in photos]
    lat, errors, agree = [], [], [0]
    lock = threading.Lock()
    per = [list(range(i, args.requests, args.clients)) for i in range(args.clients)]

    def client(idxs):
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            for i in idxs:
                name, blob, want = blobs[i % len(blobs)]
                t0 = time.perf_counter()
                try:
                    r = c.post("/api/classify", files={"file": (name, blob, "image/jpeg")})
                    dt = time.perf_counter() - t0
                    with lock:
                        lat.append(dt)
                        if r.status_code != 200:
                            errors.append(f"{name}: {r.status_code} {r.text[:120]}")
                        elif r.json()["top"][0]["label"].lower() == want.lower():
                            agree[0] += 1
                except httpx.HTTPError as e:
                    with lock:
                        errors.append(f"{name}: {type(e).__name__} {e}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as ex:
        list(ex.map(client, per))
    wall = time.perf_counter() - t0
    return {"requests": args.requests, "clients": args.clients, "distinct_photos": min(len(blobs), args.requests),
            "errors": len(errors), "error_samples": errors[:3], "top1_matches_file_name": agree[0],
            "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
            "p99_ms": round(1000 * pct(lat, 99), 1) if lat else None,
            "max_ms": round(1000 * max(lat), 1) if lat else None, "req_per_s": round(len(lat) / wall, 2)}


def poll(c: httpx.Client, job_id: str, timeout: float, until=("done", "failed", "cancelled")) -> dict:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        st = c.get(f"/api/jobs/{job_id}").json()
        if st["status"] in until:
            return st
        time.sleep(0.5)
    return st


def render_phase(srv: Server, args, mid: str, spec: dict) -> dict:
    barrier = threading.Barrier(16)

    def post(_):
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            barrier.wait()
            return c.post("/api/jobs", json=spec)

    with httpx.Client(base_url=srv.url, timeout=60) as c:
        runs0 = c.get("/api/health").json()["runs"]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as ex:
            rs = list(ex.map(post, range(16)))
        ids = {r.json().get("id") for r in rs if r.status_code == 200}
        bad = [f"{r.status_code} {r.text[:120]}" for r in rs if r.status_code != 200]
        job_id = next(iter(ids)) if ids else None
        page_ms, api_ms = [], []
        while job_id:  # the server stays responsive while the render runs
            st = c.get(f"/api/jobs/{job_id}").json()
            if st["status"] != "running" and st["status"] != "queued":
                break
            if time.perf_counter() - t0 > args.render_timeout:
                break
            for path, out in ((f"/m/{mid}", page_ms), ("/api/models", api_ms)):
                t1 = time.perf_counter()
                r = c.get(path)
                out.append((time.perf_counter() - t1) * 1000 if r.status_code == 200 else float("nan"))
            time.sleep(0.5)
        st = poll(c, job_id, max(1.0, args.render_timeout - (time.perf_counter() - t0))) if job_id else {}
        runs1 = c.get("/api/health").json()["runs"]
    return {"posts": 16, "distinct_job_ids": len(ids), "post_errors": bad[:3], "status": st.get("status"),
            "error": st.get("error"), "render_s": round(time.perf_counter() - t0, 1), "runs_added": runs1 - runs0,
            "page_loads_during_render": len(page_ms),
            "page_ms_max": round(max(page_ms), 1) if page_ms else None,
            "page_ms_p50": round(statistics.median(page_ms), 1) if page_ms else None,
            "api_models_ms_max": round(max(api_ms), 1) if api_ms else None,
            "page_under_1s": bool(page_ms) and max(page_ms) < 1000, "job_id": job_id,
            "files": (st.get("result") or {}).get("files", {})}


def kill_phase(srv: Server, args, spec2: dict, done: dict) -> dict:
    """kill -9 during a second render; restart on the same cache; the first render is served at once."""
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        before = {n: c.get(u).content for n, u in done["files"].items()}
        j2 = c.post("/api/jobs", json=spec2).json()
        poll(c, j2["id"], 120, until=("running", "done", "failed"))
        time.sleep(1.0)
    srv.kill(signal.SIGKILL)
    t0 = time.perf_counter()
    srv.start()
    restart_s = time.perf_counter() - t0
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        st = c.get(f"/api/jobs/{done['job_id']}").json()
        after = {n: c.get(u).content for n, u in (st.get("result") or {}).get("files", {}).items()}
        st2 = c.get(f"/api/jobs/{j2['id']}")
        killed = st2.json().get("status") if st2.status_code == 200 else f"{st2.status_code} (not in the store)"
    tmp_left = len(list((Path(srv.cache) / "tmp").iterdir())) if (Path(srv.cache) / "tmp").is_dir() else 0
    return {"restart_s": round(restart_s, 1), "first_render_status": st.get("status"),
            "first_render_files_identical": before == after and bool(before), "killed_job_after_restart": killed,
            "tmp_entries_left": tmp_left}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--layer", default=None, help="layer of the render job (default: the model's first default layer)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="the server's torch CPU threads")
    ap.add_argument("--start-timeout", type=float, default=180)
    ap.add_argument("--render-timeout", type=float, default=900)
    ap.add_argument("--no-kill", action="store_true", help="skip (d)")
    args = ap.parse_args()

    import json

    import torch

    torch.set_num_threads(1)
    from cnnvis.layers import default_layers
    from cnnvis.web import specs

    photos = _samples()
    ref = specs.canonical_ref(args.model)
    vm = specs._vm(ref)
    layer = args.layer or default_layers(vm)[0]
    spec = specs.layer_page_spec(ref, layer, 0)
    spec2 = specs.layer_page_spec(ref, layer, 1) if specs.n_pages(ref, layer) > 1 else {**spec, "seed": 1}
    report = {"model": args.model, "layer": layer, "server_threads": args.threads, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="cnnvis-serve-bench-") as cache:
        srv = Server(args, cache)
        try:
            report["start_s"] = round(srv.start(), 1)
            mid = httpx.get(srv.url + "/api/models").json()[0]["id"]
            report["rss_before_mib"] = rss(srv.proc.pid)
            report["classify"] = classify_load(srv, args, photos)
            report["rss_after_mib"] = rss(srv.proc.pid)
            r = render_phase(srv, args, mid, spec)
            report["render"] = {k: v for k, v in r.items() if k not in ("files",)}
            report["rss_after_render_mib"] = rss(srv.proc.pid)
            if not args.no_kill and r["status"] == "done":
                report["kill"] = kill_phase(srv, args, spec2, r)
        finally:
            srv.kill()
    print(json.dumps(report, indent=1))
    ok = (report["classify"]["errors"] == 0 and report["render"]["distinct_job_ids"] == 1
          and report["render"]["runs_added"] == 1 and report["render"]["status"] == "done")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
