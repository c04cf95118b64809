"""No silent wrong answer, no hang, nothing lost (issue 18): the store, the Python API and the model.

- A damaged cache entry (a file truncated or altered, result.json deleted) is never served: it is
  computed again, replaced, and said on stderr / in `Result.notes` (a CacheWarning in Python).
- A cache that cannot be written (a real read-only bind mount, a real full tmpfs) loses nothing:
  --out is written, the command exits 0 and says the result was not cached; tmp/ stays empty.
- A hit says what made it (torch, device, CPU threads) and when that differs from this run.
- Hostile model.json values and weights that are not regular files: one line, exit 2, no hang.
- `cnnvis.classify` / `cnnvis.dream` stay functions; `to_pil` of a batch gives every image; a
  render result shows its pictures in Jupyter (through a real kernel); a Result's HTML shows
  full values; a user's fixed-size net renders a class image at any size.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnvis
from cnnvis.cli import main
from cnnvis.errors import CnnvisError
from cnnvis.jobs import CacheWarning, Result, Store, make_spec, run
from conftest import sample
from test_cli_bad_input import one_error

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def threads_kept():
    """--threads sets torch's thread count for the process (and is remembered by the CLI): restore both."""
    from cnnvis.commands import common

    n = torch.get_num_threads()
    yield n
    common._THREADS[:] = []
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("CNNVIS_NO_PROGRESS", "1")


def _saliency(photo, cache, out, *more) -> list[str]:
    return ["saliency", str(photo), "--size", "96", "--cache", str(cache), "--out", str(out), *more]


def _entry(cache: Path) -> Path:
    (folder,) = [p.parent for p in (cache / "objects").glob("*/*/result.json")]
    return folder


def _rows(cache: Path) -> int:
    con = sqlite3.connect(cache / "index.sqlite")
    try:
        return con.execute("SELECT count(*) FROM results").fetchone()[0]
    finally:
        con.close()


# ---------------------------------------------------------------------- 1. a damaged entry is never served
def test_truncated_cached_file_is_recomputed_and_healed_through_the_cli(tmp_path, capsys):
    photo, cache = sample("pelican"), tmp_path / "C"
    assert main(_saliency(photo, cache, tmp_path / "a.png")) == 0
    capsys.readouterr()
    good = (tmp_path / "a.png").read_bytes()
    panel = _entry(cache) / "panel.png"
    assert panel.read_bytes() == good
    panel.write_bytes(good[:1000])  # the case: the stored panel truncated to 1,000 bytes

    assert main(_saliency(photo, cache, tmp_path / "b.png")) == 0
    out, err = capsys.readouterr()
    assert "[from the cache" not in out  # computed again, not served
    notes = [ln for ln in err.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 1 and "a damaged cache entry was computed again and replaced" in notes[0], err
    assert f"panel.png has 1000 bytes, {len(good)} expected" in notes[0]
    assert (tmp_path / "b.png").read_bytes() == good
    assert (_entry(cache) / "panel.png").read_bytes() == good  # healed in place
    assert not any((cache / "tmp").iterdir()) and _rows(cache) == 1

    # the second case (--out x.jpg was a traceback): now a hit on the healed entry
    assert main(_saliency(photo, cache, tmp_path / "c.jpg")) == 0
    out, err = capsys.readouterr()
    assert "[from the cache: torch " in out and "note:" not in err
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.size == Image.open(io.BytesIO(good)).size


def test_altered_file_of_the_same_size_is_caught_by_its_sha256(tmp_path, capsys):
    photo, cache = sample("tabby"), tmp_path / "C"
    assert main(_saliency(photo, cache, tmp_path / "a.png")) == 0
    good = (tmp_path / "a.png").read_bytes()
    npy = _entry(cache) / "map.npy"
    blob = bytearray(npy.read_bytes())
    blob[-5] ^= 0xFF  # one byte of the raw map: the same size, another value
    npy.write_bytes(bytes(blob))
    capsys.readouterr()
    assert main(_saliency(photo, cache, tmp_path / "b.png", "--json")) == 0
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert d["cached"] is False and "map.npy does not match its sha256" in err
    assert any("map.npy does not match its sha256" in n for n in d["notes"])
    assert (tmp_path / "b.png").read_bytes() == good
    assert Result.load(_entry(cache)).files["map.npy"] != bytes(blob)


def test_deleted_result_json_heals_so_the_next_run_hits(tmp_path, capsys):
    """The issue: each rerun recomputed, the rename hit the non-empty folder, every later run missed."""
    photo, cache = sample("jaguar"), tmp_path / "C"
    assert main(_saliency(photo, cache, tmp_path / "a.png")) == 0
    (_entry(cache) / "result.json").unlink()
    capsys.readouterr()
    assert main(_saliency(photo, cache, tmp_path / "b.png")) == 0
    out, err = capsys.readouterr()
    assert "[from the cache" not in out and "result.json is missing" in err
    assert main(_saliency(photo, cache, tmp_path / "c.png")) == 0
    out, err = capsys.readouterr()
    assert "[from the cache" in out and err == ""
    assert _rows(cache) == 1 and not any((cache / "tmp").iterdir())
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "c.png").read_bytes()


def test_python_api_warns_and_heals_a_damaged_entry(tmp_path, lite0):
    spec = make_spec("attribution", image=str(sample("magpie")), method="gradcam", size=96)
    first = run(spec, store=tmp_path, vm=lite0)
    st = Store(tmp_path)
    folder = st.folder(first.key)
    (folder / first.main).write_bytes(first.files[first.main][:500])
    res, why = st.lookup(first.key)
    assert res is None and f"{first.main} has 500 bytes" in why
    with pytest.warns(CacheWarning, match="damaged cache entry was computed again"):
        again = run(spec, store=tmp_path, vm=lite0)
    assert not again.cached and again.files == first.files and len(again.notes) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # a healthy hit warns nothing
        hit = run(spec, store=tmp_path, vm=lite0)
    assert hit.cached and hit.files == first.files and hit.notes == [] and hit.env_differs == {}
    # result.json records what is checked
    meta = json.loads((folder / "result.json").read_text())
    assert meta["digests"][first.main]["size"] == len(first.files[first.main])
    # a folder saved by the user is checked the same way
    out = first.save(tmp_path / "mine")
    (out / first.main).write_bytes(b"\x89PNG")
    with pytest.raises(CnnvisError, match=f"{first.main} has 4 bytes"):
        Result.load(out)


def test_put_replaces_a_partial_folder_and_keeps_an_intact_one(tmp_path):
    st = Store(tmp_path)
    r = Result("classify", {"kind": "classify", "model": "m"}, "ab" * 32, {"x": 1}, {"a.png": b"123"}, "a.png")
    folder = st.put(r)
    (folder / "result.json").unlink()  # a partial folder: files but no record
    assert st.get(r.key) is None
    assert st.put(r) == folder and st.get(r.key).files == r.files
    mtime = (folder / "result.json").stat().st_mtime_ns
    st.put(r)  # intact: kept as it is
    assert (folder / "result.json").stat().st_mtime_ns == mtime and not any((tmp_path / "tmp").iterdir())
    # the web's check: an entry whose file changed is not served as it is
    assert st.verified(r.key) == r.key
    (folder / "a.png").write_bytes(b"12")
    assert st.verified(r.key) is None and st.resolve(r.key) is None


@pytest.mark.parametrize("damage", ["overwritten", "deleted"])
def test_an_index_damaged_while_in_use_heals_for_every_thread(tmp_path, damage):
    """A server's job thread holds its own index connection: after the index is overwritten with garbage
    (found corrupt by another thread, set aside, rebuilt) or deleted, what that thread stores next is in the
    index every thread and every new process reads, not in the file set aside."""
    from concurrent.futures import ThreadPoolExecutor

    st = Store(tmp_path)
    results = [Result("classify", {"kind": "classify", "model": "m", "i": i}, f"{i:02x}" * 32, {"i": i},
                      {"a.png": bytes([i]) * 8}, "a.png") for i in range(3)]
    with ThreadPoolExecutor(1) as worker:  # one long-lived thread, as the web's job runner
        worker.submit(st.put, results[0]).result()
        assert st.get(results[0].key) is not None
        if damage == "overwritten":
            with open(st.index_path, "r+b") as f:  # the same file (inode), its bytes garbage
                f.write(os.urandom(4096))
            assert st.get(results[0].key) is not None  # this thread: found corrupt, set aside, rebuilt
        else:
            st.index_path.unlink()
        worker.submit(st.put, results[1]).result()
        worker.submit(st.put, results[2]).result()
        for r in results:
            assert st.get(r.key) is not None and st.resolve(r.key) == r.key, r.key[:4]
            assert worker.submit(st.resolve, r.key).result() == r.key
    fresh = Store(tmp_path)
    assert {row["key"] for row in fresh.list()} == {r.key for r in results}
    if damage == "overwritten":
        assert list(tmp_path.glob("index.sqlite.corrupt-*"))  # kept for inspection


# ---------------------------------------------------------------------- 2. a cache that cannot be written
def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    p = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"],
                       capture_output=True)
    return p.returncode == 0


UNSHARE = _can_unshare()


def _in_namespace(setup: str, script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `script` (sh) after `setup` (mount commands) in a private mount namespace: the mounts are real
    (EROFS, ENOSPC from the kernel), invisible to the rest of the machine and gone when it exits."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CNNVIS_NO_PROGRESS": "1"}
    return subprocess.run(["unshare", "-m", "sh", "-c", f"set -e; {setup}; set +e; {script}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


API = """
import sys, warnings
import cnnvis
from cnnvis.jobs import CacheWarning
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    r = cnnvis.run({{"kind": "attribution", "image": sys.argv[1], "size": 96}}, store="{cache}")
print("API", r.cached, len(r.files), [str(x.message) for x in w if x.category is CacheWarning])
"""


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_cache_that_cannot_be_written_loses_nothing(tmp_path, how, capsys, monkeypatch):
    """A real read-only bind mount / a real 96 KiB tmpfs (unshare -m: root ignores file permissions, so
    chmod proves nothing here); where mount namespaces are not allowed, the same store calls fail by a
    patched write (the path after the first failing write is the same)."""
    photo = str(sample("pelican"))
    why = "it is not writable" if how == "read-only" else "the disk is full"
    cache = tmp_path / "C"
    cache.mkdir()
    if how == "read-only":
        Store(cache)  # an existing (empty) cache, then mounted read-only: it still answers, but takes nothing
    if UNSHARE:
        setup = (f"mount --bind C C && mount -o remount,ro,bind C C" if how == "read-only"
                 else "mount -t tmpfs -o size=96k tmpfs C")
        py = sys.executable
        p = _in_namespace(setup, f"{py} -m cnnvis saliency {photo} --size 96 --cache C --out out.png; "
                                 f"echo rc=$?; ls -A C/tmp 2>/dev/null | wc -l; "
                                 f"{py} -c '{API.format(cache='C')}' {photo}", tmp_path)
        out, err = p.stdout, p.stderr
        assert "rc=0" in out, (out, err)
        assert out.split("rc=0\n")[1].splitlines()[0].strip() == "0"  # nothing left in the cache's tmp/
    else:
        from cnnvis.jobs import store as store_mod

        def fail(self, result, folder):
            folder.mkdir(parents=True)
            (folder / "part").write_bytes(b"x")
            raise OSError(30 if how == "read-only" else 28, "patched")  # EROFS / ENOSPC

        monkeypatch.setattr(store_mod.Store, "_write", fail)
        monkeypatch.chdir(tmp_path)
        assert main(["saliency", photo, "--size", "96", "--cache", "C", "--out", "out.png"]) == 0
        o, err = capsys.readouterr()
        assert not any((cache / "tmp").iterdir())
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            r = cnnvis.run({"kind": "attribution", "image": photo, "size": 96}, store="C")
        out = o + f"API False {len(r.files)} {[str(x.message) for x in w if x.category is CacheWarning]}"
    # the CLI: --out written, exit 0, one note naming the cache directory and why
    with Image.open(tmp_path / "out.png") as im:
        assert im.size[0] > 96
    assert "wrote out.png" in out and "Traceback" not in err
    note = [ln for ln in err.splitlines() if "not cached" in ln]
    assert len(note) == 1 and note[0].startswith("note: the result was not cached: cache directory 'C': " + why), err
    assert ".part" not in err and "/tmp/" not in note[0]  # no internal temp file named
    # the Python API: the result in hand, a CacheWarning saying the same
    api = next(ln for ln in out.splitlines() if ln.startswith("API"))
    _, cached, n_files, warned = api.split(" ", 3)
    assert cached == "False" and int(n_files) >= 3  # computed, in hand: panel, map, input...
    assert f"the result was not cached: cache directory 'C': {why}" in warned


def test_cache_that_cannot_be_opened_is_said_and_skipped(tmp_path, capsys):
    f = tmp_path / "cache-file"
    f.write_text("not a folder")
    assert main(_saliency(sample("pelican"), f, tmp_path / "a.png")) == 0
    out, err = capsys.readouterr()
    assert err.strip() == f"note: computing without the cache: cache directory {str(f)!r} is a file; give a folder"
    assert (tmp_path / "a.png").stat().st_size > 1000


# ---------------------------------------------------------------------- 7. a hit says what made it
def test_hit_shows_its_env_and_warns_when_threads_differ(tmp_path, capsys, threads_kept):
    photo, cache = sample("pelican"), tmp_path / "C"
    torch.set_num_threads(2)
    assert main(_saliency(photo, cache, tmp_path / "a.png", "--threads", "2")) == 0
    capsys.readouterr()
    assert main(_saliency(photo, cache, tmp_path / "b.png", "--threads", "2")) == 0
    out, err = capsys.readouterr()
    assert "[from the cache: torch " in out and "cpu, 2 CPU threads]" in out and err == ""
    assert main(_saliency(photo, cache, tmp_path / "c.png", "--threads", "1", "--json")) == 0
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert d["cached"] is True and d["env"]["threads"] == 2 and d["env_differs"] == {"threads": [2, 1]}
    want = ("note: the cached result was computed with 2 CPU threads; this run has 1 CPU thread: computed here it "
            "can differ (optimized pictures visibly); use --threads 2 (torch.set_num_threads) or run without the "
            "cache to compute it here")
    assert err.strip() == want and d["notes"] == [want[len("note: "):]]
    # the Python API: the same, as a CacheWarning and in the result
    torch.set_num_threads(1)
    with pytest.warns(CacheWarning, match="computed with 2 CPU threads; this run has 1"):
        r = run({"kind": "attribution", "image": str(photo), "size": 96}, store=cache)
    assert r.cached and r.env_differs == {"threads": [2, 1]} and r.to_dict()["env_differs"] == {"threads": [2, 1]}


# ---------------------------------------------------------------------- 3. hostile model.json, weights files
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from cnnvis.models.archs import build_arch
    from cnnvis.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(d, build_arch("mnist_cnn", num_classes=10), architecture="mnist_cnn",
                    classes=[str(i) for i in range(10)])
    return d


def _hostile(ckpt: Path, tmp_path: Path, change) -> Path:
    d = tmp_path / "hostile"
    shutil.copytree(ckpt, d)
    meta = json.loads((d / "model.json").read_text())
    change(meta)
    (d / "model.json").write_text(json.dumps(meta))  # json writes NaN / Infinity as JSON's extension does
    return d


def _set(path: str, value):
    def change(meta):
        *parents, last = path.split(".")
        cur = meta
        for p in parents:
            cur = cur[p]
        cur[last] = value
    return change


HOSTILE = {
    "mean NaN": (_set("input.mean", [float("nan")]),
                 "'input.mean' must be finite numbers, one per channel (no NaN or Infinity), got [NaN]"),
    "std Infinity": (_set("input.std", [float("inf")]), "'input.std' must be finite numbers"),
    "negative std": (_set("input.std", [-0.3081]),
                     "'input.std' must be positive numbers (a negative std would invert the image"),
    "zero std": (_set("input.std", [0]), "'input.std' must be positive numbers"),
    "boolean mean": (_set("input.mean", [True]), "'input.mean' must be a list of 1 numbers"),
    "duplicate classes": (_set("classes", ["a"] * 9 + ["b"]),
                          "'classes' must be distinct names, but 'a' appears 9 times; give each output its own "
                          "name in the JSON"),
    "input 1x2x2": (lambda m: m["input"].update(shape=[1, 2, 2], resize=2),
                    "input shape [1, 2, 2] is too small for 'mnist_cnn', which needs at least 4 x 4 pixels; "
                    "fix 'input.shape' in the JSON"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_model_json_is_refused_at_load(case, ckpt, tmp_path, capsys):
    change, words = HOSTILE[case]
    d = _hostile(ckpt, tmp_path, change)
    line = one_error(capsys, ["classify", sample("pelican"), "--model", d])
    assert words in line and str(d / "model.json") in line
    with pytest.raises(CnnvisError) as e:
        cnnvis.load(str(d))
    assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CnnvisError, match="checkpoint metadata"):
        run({"kind": "classify", "model": str(d), "images": ["sample:chelsea"]})


def test_negative_std_was_an_inverted_image_and_is_now_refused(ckpt, tmp_path):
    """Why a negative std is refused and not taken: it feeds the model the negative of the image."""
    from cnnvis.models.preprocess import Preprocess

    x = torch.rand(1, 1, 28, 28)
    good, neg = Preprocess((0.1307,), (0.3081,), resize=28, crop=28), Preprocess((0.1307,), (-0.3081,), resize=28,
                                                                                   crop=28)
    assert torch.allclose(neg.normalize(x), -good.normalize(x))
    d = _hostile(ckpt, tmp_path, _set("input.std", [-0.3081]))
    with pytest.raises(CnnvisError, match="negative std would invert"):
        cnnvis.load(str(d))


def test_input_shape_the_network_cannot_run_is_refused_by_a_probe(tmp_path, capsys):
    """Past the arch's min_size: a head made for 28x28 (Linear after Flatten) at 20x20 -> one forward at load."""
    from torch import nn

    from cnnvis.models.archs import register_arch
    from cnnvis.models.checkpoint import save_checkpoint

    name = "fixed28_test_net"

    @register_arch(name, description="test: Linear head after Flatten, 28x28 only", input_shape=(1, 28, 28),
                   mean=(0.5,), std=(0.5,), num_classes=3)
    def _net(num_classes, input_shape):
        return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 28 * 28, num_classes))

    torch.manual_seed(0)
    d = tmp_path / "ck"
    save_checkpoint(d, _net(3, (1, 28, 28)), architecture=name, classes=["a", "b", "c"])
    meta = json.loads((d / "model.json").read_text())
    meta["input"].update(shape=[1, 20, 20], resize=20)
    (d / "model.json").write_text(json.dumps(meta))
    line = one_error(capsys, ["classify", sample("pelican"), "--model", d, "--weights", "random"])
    assert f"the '{name}' network cannot run on its input shape [1, 20, 20] (mat1 and mat2 shapes cannot be " \
           f"multiplied" in line and line.endswith("fix 'input.shape' in the JSON (the size it was trained on)")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("what", ["/dev/zero", "fifo", "folder"])
def test_weights_that_are_not_a_regular_file_are_refused_at_once(what, ckpt, tmp_path, capsys):
    """"weights": "/dev/zero" made classify hash it forever; a FIFO would block on open."""
    target = {"/dev/zero": "/dev/zero", "fifo": str(tmp_path / "w.fifo"), "folder": str(tmp_path / "wdir")}[what]
    if what == "fifo":
        os.mkfifo(target)
    if what == "folder":
        os.mkdir(target)
    d = _hostile(ckpt, tmp_path, lambda m: m.update(weights=target, weights_sha256=""))
    line = one_error(capsys, ["classify", sample("pelican"), "--model", d])
    assert target in line and ("not a regular file" in line or "is a folder" in line)
    with pytest.raises(CnnvisError, match="not a regular file|is a folder"):
        cnnvis.load(str(d))
    from cnnvis.jobs import file_hash

    with pytest.raises(CnnvisError, match="not a regular file|is a folder"):
        file_hash(target)


def test_file_hash_reads_no_more_than_the_size_it_saw(tmp_path, monkeypatch):
    from cnnvis.jobs import runner

    p = tmp_path / "w.bin"
    p.write_bytes(b"x" * 3000)
    monkeypatch.setattr(runner, "MAX_FILE_BYTES", 2048)
    with pytest.raises(CnnvisError, match="more than cnnvis reads"):
        runner.file_hash(p)
    monkeypatch.undo()
    import hashlib

    assert runner.file_hash(p) == hashlib.sha256(b"x" * 3000).hexdigest()


# ---------------------------------------------------------------------- 4. the Python API
def _fresh(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CNNVIS_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=600)


def test_lazy_names_stay_functions_after_jobs_and_submodule_imports():
    photo = str(sample("pelican"))
    p = _fresh("""
        import types
        import cnnvis
        r = cnnvis.run({"kind": "dream", "image": "sample:chelsea", "octaves": 1, "steps": 1, "max_side": 64})
        r = cnnvis.run({"kind": "classify", "images": ["sample:chelsea"], "top": 1})
        import cnnvis.dream
        from cnnvis.classify import classify            # the README's own line
        from cnnvis.dream import dream
        assert cnnvis.classify is classify and cnnvis.dream is dream, (cnnvis.classify, cnnvis.dream)
        vm = cnnvis.load()
        top = cnnvis.classify(vm, [__import__("cnnvis.images").images.load_image(PHOTO)], top=1)
        print("classify", top[0][0].label)
        out = cnnvis.dream(vm, __import__("torch").rand(1, 3, 64, 64), ["stage2"], octaves=1, steps_per_octave=1)
        print("dream", tuple(out.shape))
        import importlib
        for name, mod in cnnvis._LAZY.items():
            importlib.import_module(mod)
            v = getattr(cnnvis, name)
            assert callable(v) and not isinstance(v, types.ModuleType), name
        print("lazy ok", len(cnnvis._LAZY))
    """.replace("PHOTO", repr(photo)))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "classify pelican" and lines[1] == "dream (1, 3, 64, 64)" and lines[2].startswith("lazy ok")


def test_to_pil_of_a_batch_gives_every_image():
    from cnnvis.viz import to_pil

    x = torch.stack([torch.full((3, 8, 10), v) for v in (0.0, 0.25, 0.5, 1.0)])
    ims = to_pil(x)
    assert isinstance(ims, list) and len(ims) == 4
    assert [np.asarray(im)[0, 0, 0] for im in ims] == [0, 64, 128, 255]
    assert all(im.size == (10, 8) for im in ims)
    one = to_pil(x[2:3])
    assert isinstance(one, Image.Image) and np.asarray(one)[0, 0, 0] == 128
    from cnnvis.jobs.result import png_bytes

    strip = Image.open(io.BytesIO(png_bytes(x)))  # a batch as one picture: the four side by side
    assert strip.size[0] > 4 * 10 and strip.size[1] >= 8


def test_render_result_shows_pictures_not_numbers(lite0):
    from cnnvis.optvis import channel, render

    res = render(lite0, channel("stage3", [0, 1, 2]), steps=2, size=48, seed=0)
    r = repr(res)
    assert r.startswith("RenderResult(images 3x3x48x48; 2 steps") and len(r) < 120 and "tensor(" not in r
    png = Image.open(io.BytesIO(res._repr_png_()))
    assert png.size == (3 * 96 + 2 * 4, 96)  # 3 images, each enlarged to 96 px
    left = np.asarray(png)[:96, :96].astype(int)
    want = np.asarray(Image.fromarray((res.images[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
                      .resize((96, 96), Image.NEAREST)).astype(int)
    assert np.abs(left - want).max() <= 1
    h = res._repr_html_()
    assert h.count("data:image/png;base64,") == 1 and "tensor(" not in h and len(h) < 200_000


def test_result_html_shows_full_values_escaped(lite0):
    photos = [str(sample("pelican")), str(sample("magpie"))]
    res = run({"kind": "classify", "images": photos, "top": 5}, vm=lite0)
    res.data["note"] = "<script>alert(1)</script>"
    h = res._repr_html_()
    import html

    full = json.dumps(res.data["predictions"], ensure_ascii=False)
    assert len(full) > 400 and full in html.unescape(h)  # both photos' predictions (the old table cut at 200)
    assert "pelican" in h and "magpie" in h
    assert "<script>alert" not in h and "&lt;script&gt;" in h
    assert "<details>" in h and "characters)</summary>" in h


def test_render_result_in_a_real_jupyter_kernel():
    import nbformat  # the dev extra installs nbclient + ipykernel
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent("""
        import cnnvis
        vm = cnnvis.load()
        res = cnnvis.render(vm, cnnvis.channel("stage2", [0, 1]), steps=2, size=48)
        res
    """)), nbformat.v4.new_code_cell("cnnvis.run({'kind': 'classify', 'images': ['sample:chelsea'], 'top': 2}, vm=vm)")]
    env_before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT / "src")  # the kernel imports this checkout's cnnvis
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    finally:
        if env_before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env_before
    (out,) = [o for o in nb.cells[0].outputs if o.output_type == "execute_result"]
    png = Image.open(io.BytesIO(base64.b64decode(out.data["image/png"])))
    assert png.size == (2 * 96 + 4, 96)
    assert "image/png" in out.data["text/html"] or "data:image/png;base64," in out.data["text/html"]
    assert len(out.data["text/plain"]) < 120 and "tensor(" not in out.data["text/plain"]
    (job,) = [o for o in nb.cells[1].outputs if o.output_type == "execute_result"]
    assert "tabby" in job.data["text/html"] or "cat" in job.data["text/html"]
    assert len(job.data["text/plain"]) < 300


# ---------------------------------------------------------------------- 5. a user's fixed-size net
def test_wrapped_fixed_size_net_renders_and_reaches_the_class(mnist_run):
    """The issue's case: wrap(net, input_shape=(1, 28, 28)) with a Linear head after Flatten failed with
    'mat1 and mat2 shapes cannot be multiplied' at any size. The trained MNIST net without its identity
    adaptive pool is exactly such a net."""
    import copy

    from torch import nn

    from cnnvis.optvis import UntilProb, class_logit, render

    m = cnnvis.load(str(mnist_run))
    net = nn.Sequential(*copy.deepcopy(m.model.features), *copy.deepcopy(m.model.classifier)).eval()
    vm = cnnvis.wrap(net, input_shape=(1, 28, 28), preprocess=m.preprocess, labels=m.labels)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        net(torch.zeros(1, 1, 24, 24))  # it takes 28x28 only
    for size in (None, 56):
        res = render(vm, class_logit(3), stop=UntilProb(0.95), steps=96, size=size, seed=0)
        side = size or 28
        assert res.images.shape == (1, 1, side, side) and res.stopped == "until_prob", res.message
        x = torch.nn.functional.interpolate(res.images, size=(28, 28), mode="bilinear", antialias=True)
        with torch.no_grad():
            p = torch.softmax(net(m.preprocess.normalize(x)), 1)[0]
        assert int(p.argmax()) == 3 and float(p[3]) >= 0.9 and abs(float(res.probs[0]) - float(p[3])) < 0.05
    # a channel objective on a conv layer never reaches the head: rendered at its own size, no resize
    res = render(vm, "3:5", size=40, steps=4, seed=0)
    assert res.images.shape == (1, 1, 40, 40)
    # the job layer on the user's model
    job = run({"kind": "class_image", "target": 3, "size": 28, "steps": 96, "min_steps": 0, "judge": "none",
               "until_prob": 0.95}, vm=vm)
    assert job.data["prob_png"] >= 0.9


def test_render_all_resume_recomputes_a_damaged_entry(tmp_path):
    """The engine's resume check skips stored tasks: a damaged one is computed again, not skipped."""
    from cnnvis.jobs.engine import run_many

    specs = [make_spec("attribution", image=str(sample(n)), size=96).to_dict() for n in ("pelican", "tabby")]
    store = Store(tmp_path)
    first = run_many(specs, store, progress=False)
    assert first.computed == 2 and first.skipped == 0
    folder = store.folder(first.keys[0])
    (folder / "panel.png").write_bytes(b"\x89PNG truncated")
    again = run_many(specs, store, progress=False)
    assert again.skipped == 1 and again.computed == 1 and again.keys == first.keys
    assert store.get(first.keys[0]) is not None
