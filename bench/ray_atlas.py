"""Local engine vs Ray (issue 13): render-all and top-examples, measured in one run (not a test).

    .venv/bin/python bench/ray_atlas.py [--workers 2] [--steps 48] [--size 80] [--skip-top] [--skip-resnet]

(a) render-all of efficientnet_lite0's conv_stem + blocks.1.0.conv_pw (32 + 96 channels, 8 pages of 16,
    the web pages' settings unless --steps/--size): local engine on 1 thread, local on --workers threads,
    Ray with --workers workers of 1 thread each: channels/s, and Ray's overhead per task = the driver's
    submit-to-stored time minus the task's compute time in the worker (also vs the same page in-process).
(b) top-examples over the CIFAR-10 test images of the shared zip (random cifar_cnn, conv2, k 9): one
    local pass vs --shards shards on Ray: images/s, and the merged top-9 equal to the local one.
(c) the per-channel cost of a ResNet-50 atlas page (random weights: the same compute) on this machine,
    and the expected time of a full atlas (every channel of every conv layer) on N such workers.
Each setting gets a fresh cache. Progress on stderr; one JSON report on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def render_plan(model: str, layers: list[str], steps: int, size: int, weights: str | None = None):
    from cnnvis.jobs import default_pool
    from cnnvis.layers import list_layers
    from cnnvis.web import specs

    vm = default_pool().get(model, weights)
    specs.remember(model, vm, list_layers(vm))
    plan, units = [], []
    for layer in layers:
        for p in range(specs.n_pages(model, layer)):
            sp = specs.layer_page_spec(model, layer, p, steps=steps, size=size)
            if weights:
                sp["weights"] = weights
            plan.append(sp)
            units.append(len(sp["channels"]))
    return plan, units


def timed(plan, units, engine, threads, workers=None) -> dict:
    import torch

    from cnnvis.jobs import Store
    from cnnvis.jobs.engine import run_many

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        s = run_many(plan, Store(d), engine=engine, workers=workers, threads=threads, units=units, unit="channels")
        wall = time.perf_counter() - t0
    assert not s.failed, s.failed
    over = [w - c for w, c in zip(s.task_wall, s.task_seconds)]
    return {"engine": engine, "threads": threads, "workers": s.workers, "tasks": s.total, "channels": sum(units),
            "wall_s": round(wall, 2), "channels_per_s": round(sum(units) / wall, 3),
            "task_compute_mean_s": round(statistics.mean(s.task_seconds), 3),
            "task_wall_mean_s": round(statistics.mean(s.task_wall), 3),
            "overhead_per_task_mean_s": round(statistics.mean(over), 3),
            "overhead_per_task_median_s": round(statistics.median(over), 3),  # the max: a worker's start + model load
            "overhead_per_task_max_s": round(max(over), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--size", type=int, default=80)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--skip-top", action="store_true")
    ap.add_argument("--skip-resnet", action="store_true")
    a = ap.parse_args()
    import ray

    from cnnvis import __version__

    report: dict = {"cnnvis": __version__, "ray": ray.__version__, "workers": a.workers}
    # Ray starts once (its start-up is reported apart, not charged to the tasks)
    t0 = time.perf_counter()
    ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    report["ray_init_s"] = round(time.perf_counter() - t0, 2)

    # (a)
    plan, units = render_plan("efficientnet_lite0", ["conv_stem", "blocks.1.0.conv_pw"], a.steps, a.size)
    _say(f"(a) {len(plan)} pages, {sum(units)} channels, {a.steps} steps at {a.size} px")
    rows = [timed(plan, units, "local", 1), timed(plan, units, "local", a.workers),
            timed(plan, units, "ray", 1, a.workers)]
    rows.append({**timed(plan, units, "ray", 1, a.workers), "note": "again (each run starts its workers)"})
    loc1, locn = rows[0], rows[1]
    for r in rows:
        r["speedup_vs_local_1_thread"] = round(r["channels_per_s"] / loc1["channels_per_s"], 2)
        r["speedup_vs_local_n_threads"] = round(r["channels_per_s"] / locn["channels_per_s"], 2)
    report["render_all"] = rows
    # a Ray task's submit-to-stored time vs the same page computed in-process on 1 thread
    report["ray_task_wall_over_in_process"] = round(rows[-1]["task_wall_mean_s"] / loc1["task_compute_mean_s"], 3)

    # (b)
    if not a.skip_top:
        zp = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
        if zp.is_file():
            report["top_examples"] = top_examples(zp, a)
        else:
            report["top_examples"] = "skipped: ../shared/data/cifar10-jpeg.zip not found"

    # (c)
    if not a.skip_resnet:
        report["resnet50"] = resnet50(a)
    ray.shutdown()
    print(json.dumps(report, indent=1))


def top_examples(zp: Path, a) -> dict:
    import torch

    from cnnvis.cli import main as cli
    from cnnvis.models import build_arch
    from cnnvis.models.checkpoint import save_checkpoint

    out = {}
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        ck = save_checkpoint(Path(d) / "net", build_arch("cifar_cnn", num_classes=10), architecture="cifar_cnn",
                             classes=["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                      "ship", "truck"])
        common = ["--model", str(ck), str(zp), "--split", "test", "--layer", "conv2", "--k", "9"]
        for name, extra in (("local", ["--threads", str(a.workers)]),
                            ("ray", ["--threads", "1", "--engine", "ray", "--workers", str(a.workers),
                                     "--shards", str(a.shards), "--cache", str(Path(d) / "cache")])):
            _say(f"(b) top-examples, {name}")
            t0 = time.perf_counter()
            rc = cli(["top-examples", *common, *extra, "--out", str(Path(d) / name)])
            wall = time.perf_counter() - t0
            assert rc == 0, rc
            out[name] = {"wall_s": round(wall, 2), "images_per_s": round(10000 / wall, 1)}
        ia = json.loads((Path(d) / "local" / "index.json").read_text())
        ib = json.loads((Path(d) / "ray" / "index.json").read_text())
        out["top9_equal"] = ia["top"] == ib["top"]
    return out


def resnet50(a) -> dict:
    from torch import nn

    from cnnvis.jobs import default_pool

    vm = default_pool().get("resnet50", "random")
    convs = [m for m in vm.model.modules() if isinstance(m, nn.Conv2d)]
    n_channels = sum(m.out_channels for m in convs)
    plan, units = render_plan("resnet50", ["layer3.0.conv1"], a.steps, a.size, weights="random")
    plan, units = plan[:2], units[:2]  # 2 pages of 16 channels, a mid-network layer
    _say(f"(c) resnet50: {len(convs)} conv layers, {n_channels} channels; timing {sum(units)} channels")
    r = timed(plan, units, "local", a.workers)
    per = r["wall_s"] / r["channels"]
    return {"conv_layers": len(convs), "channels": n_channels, "measured_channels": r["channels"],
            "seconds_per_channel_here": round(per, 3), "steps": a.steps, "size": a.size,
            "atlas_hours_on_1_worker_like_this": round(per * n_channels / 3600, 2),
            "atlas_hours_on_N_workers": {n: round(per * n_channels / 3600 / n, 2) for n in (2, 8, 32)},
            "note": "a 2-core CPU worker; no GPU was lent to measure one"}


if __name__ == "__main__":
    main()
