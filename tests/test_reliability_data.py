"""Hostile datasets (issue 18): the format decided by the data as a whole, unreadable images
counted once by every command and never replaced by a neighbour, phantom classes refused or
merged, hostile zip members and FIFOs skipped (never a traceback, a hang or a whole read), and
no output written inside the dataset a command reads. Every file is written by the tests."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnvis.cli import main
from cnnvis.data import CorruptImageWarning, DatasetFormatWarning, open_dataset, train_test_split
from cnnvis.data import files as data_files
from cnnvis.data.base import CorruptImage
from cnnvis.errors import CnnvisError
from test_cli_bad_input import one_error

SIDE = 8  # px: tiny images, tiny nets


def _img(mode: str, side: int = SIDE, seed: int = 0, red: bool = False) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), "L")
    a = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    if red:
        a[..., 0] = 255
    return Image.fromarray(a, "RGB")


def _bytes(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _clean(root: Path, n: int = 8, classes=("cat", "dog"), prefix: str = "") -> Path:
    """n RGB PNGs per class (cat: red channel full), names 01.png..."""
    for k, c in enumerate(classes):
        d = root / prefix / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _img("RGB", seed=100 * k + i, red=(c.lower() == "cat")).save(d / f"{i + 1:02d}.png")
    return root


BAD = {  # name -> bytes: four kinds of unreadable file
    "cat/00_garbage.png": b"this is not an image at all",
    "dog/00_truncated.png": None,  # filled in below: a PNG cut in half
    "dog/05_empty.jpg": b"",
    "cat/05_jpeg_header_only.jpg": b"\xff\xd8\xff\xe0 not a jpeg",
}


def _with_bad(root: Path) -> Path:
    """A clean cat/dog folder plus the 4 unreadable files of BAD."""
    _clean(root)
    for name, data in BAD.items():
        if data is None:
            full = _bytes(_img("RGB", seed=9))
            data = full[: len(full) // 2]
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A cifar_cnn checkpoint of classes cat, dog on 3x8x8 images (1 epoch)."""
    from cnnvis.train import train

    root = tmp_path_factory.mktemp("rel")
    data = _clean(root / "clean", n=6)
    train(data, out=root / "run", epochs=1, progress=False, seed=0)
    return root / "run"


def _json(capsys, argv) -> dict:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, (code, out, err)
    assert "Traceback" not in err
    return json.loads(out)


def _refused(capsys, argv) -> str:
    """Exit 2, the last stderr line 'error: ...' (warnings before it are one line each), no traceback."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, (code, out, err)
    assert lines[-1].startswith("error: ") and all(ln.startswith("warning: ") for ln in lines[:-1]), err
    return lines[-1]


def _text(capsys, argv) -> tuple[str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, (code, out, err)
    assert "Traceback" not in err
    return out, err


# ------------------------------------------------------------------ 1. the format is the data's, not the first image's
def test_format_is_the_most_common_not_the_first_images(tmp_path, capsys):
    data = _clean(tmp_path / "d", n=10)
    grey = _img("L", seed=7)
    grey.save(data / "cat" / "00.png")  # sorts first: a grey image
    big = _img("RGB", side=300, seed=8)
    big.save(data / "dog" / "00.png")  # sorts first in its class: a big one
    with pytest.warns(DatasetFormatWarning, match=r"1 grey.*1 of 300x300.*read as RGB 8x8"):
        ds = open_dataset(data)
    assert ds.channels == 3 and ds.size == (SIDE, SIDE)
    assert "21 colour, 1 grey" in ds.format_note and "21 of 8x8" in ds.format_note
    # every image converted to that: the grey one as PIL's RGB of it, the big one resized (bilinear)
    names = [ds.item_name(i) for i in range(len(ds))]
    x_grey, _ = ds[names.index("cat/00.png")]
    assert torch.equal((x_grey * 255).round().to(torch.uint8),
                       torch.from_numpy(np.array(grey.convert("RGB"))).permute(2, 0, 1))
    x_big, _ = ds[names.index("dog/00.png")]
    want = np.array(big.resize((SIDE, SIDE), Image.BILINEAR))
    assert torch.equal((x_big * 255).round().to(torch.uint8), torch.from_numpy(want).permute(2, 0, 1))

    # train builds a 3-channel 8x8 net, says what it decided (stderr, JSON, model.json)
    res = _json(capsys, ["train", data, "--out", tmp_path / "run", "--epochs", "1", "--threads", "1", "--json"])
    assert res["input_shape"] == [3, SIDE, SIDE] and "read as RGB 8x8" in res["format_note"]
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["input"]["shape"] == [3, SIDE, SIDE] and meta["training"]["format_note"] == res["format_note"]
    out, err = _text(capsys, ["train", data, "--out", tmp_path / "run2", "--epochs", "1", "--threads", "1"])
    warned = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert len(warned) == 1 and "read as RGB 8x8" in warned[0]


def test_mostly_grey_data_is_grey_and_a_uniform_folder_has_no_note(tmp_path):
    d = tmp_path / "g"
    for c in ("a", "b"):
        (d / c).mkdir(parents=True)
        for i in range(5):
            _img("L", seed=i).save(d / c / f"{i}.png")
    _img("RGB", seed=1).save(d / "a" / "0.png")  # the first one is colour
    with pytest.warns(DatasetFormatWarning, match="read as grey 8x8"):
        ds = open_dataset(d)
    assert ds.channels == 1 and ds[0][0].shape == (1, SIDE, SIDE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a uniform folder: no warning at all
        clean = open_dataset(_clean(tmp_path / "c", n=3))
    assert clean.format_note is None and clean.channels == 3
    # given channels and size are used as they are, without a note
    assert open_dataset(d, channels=3, size=4).format_note is None


# ------------------------------------------------------------------ 3. maxmaps: only readable images, their own labels
def test_maxmaps_shows_readable_images_only_with_their_own_labels(run_dir, tmp_path, capsys):
    data = _with_bad(tmp_path / "d")  # 16 readable + 4 unreadable
    d = _json(capsys, ["maxmaps", "--model", run_dir, data, "-n", "20", "--out", tmp_path / "m.png", "--json",
                       "--threads", "1"])["data"]
    ds = open_dataset(data)
    idx = [it["index"] for it in d["items"]]
    assert len(idx) == 16 and len(set(idx)) == 16 and idx == sorted(idx)
    for it in d["items"]:  # each item is its own image: its class is its folder's
        name = ds.item_name(it["index"])
        assert name not in BAD and it["class"] == name.split("/")[0] == ds.classes[it["label"]]
    assert d["skipped"] == 4 and sorted(d["skipped_names"]) == sorted(BAD)
    # fewer than all: a seeded draw of readable images; the picture has one row per image
    d5 = _json(capsys, ["maxmaps", "--model", run_dir, data, "-n", "5", "--out", tmp_path / "m5.png", "--json",
                        "--seed", "3", "--threads", "1"])["data"]
    assert len({it["index"] for it in d5["items"]}) == 5
    assert all(ds.item_name(it["index"]) not in BAD for it in d5["items"])
    out, _ = _text(capsys, ["maxmaps", "--model", run_dir, data, "-n", "20", "--out", tmp_path / "m2.png",
                            "--threads", "1"])
    assert "saved" in out and "16 images" in out and "4 unreadable image(s) skipped" in out


def test_draw_readable_equals_the_plain_seeded_draw_on_clean_data(tmp_path):
    from cnnvis.jobs.kinds_study import draw_readable

    ds = open_dataset(_clean(tmp_path / "c", n=10))
    got, bad = draw_readable(ds, 7, seed=5)
    want = np.sort(np.random.default_rng(5).choice(len(ds), 7, replace=False))
    assert [p for p, _ in got] == want.tolist() and bad == []
    for p, (x, y) in got:
        assert torch.equal(x, ds[p][0]) and y == ds.labels[p]


# ------------------------------------------------------------------ 4. skipped: counted once, by every command
def test_every_command_counts_each_unreadable_file_once(run_dir, tmp_path, capsys):
    data = _with_bad(tmp_path / "d")
    # train (a held-out split of the same folder: the two sets share the files)
    res = _json(capsys, ["train", data, "--out", tmp_path / "run", "--epochs", "1", "--threads", "1", "--json"])
    assert res["skipped"] == 4 and sorted(res["skipped_names"]) == sorted(BAD)
    t = json.loads((tmp_path / "run" / "model.json").read_text())["training"]
    assert t["skipped_images"] == 4 and t["train_images"] + t["held_out_images"] == 16
    out, _ = _text(capsys, ["train", data, "--out", tmp_path / "run2", "--epochs", "1", "--threads", "1"])
    assert "4 unreadable image(s) skipped (not trained on, not scored)" in out
    # evaluate
    ev = _json(capsys, ["evaluate", "--model", run_dir, data, "--json", "--threads", "1"])["data"]
    assert ev["skipped"] == 4 and ev["n"] == 16
    out, _ = _text(capsys, ["evaluate", "--model", run_dir, data, "--threads", "1"])
    assert "4 unreadable image(s) skipped (not scored)" in out
    # top-examples: whole, by hand in 3 shards + merge, and --shards 2
    base = ["top-examples", "--model", run_dir, data, "--k", "2", "--batch-size", "4", "--threads", "1"]
    whole = _json(capsys, [*base, "--out", tmp_path / "all", "--json"])["data"]
    assert whole["skipped"] == 4 and whole["seen"] == 16
    for s in range(3):
        part = _json(capsys, [*base, "--shard", f"{s}/3", "--out", tmp_path / f"p{s}", "--json"])["data"]
        assert 0 <= part["skipped"] <= 4
    merged = _json(capsys, ["top-examples", "--merge", *(tmp_path / f"p{s}" for s in range(3)),
                            "--out", tmp_path / "merged", "--json"])["index"]
    assert merged["skipped"] == 4 and merged["seen"] == 16 and merged["top"] == whole["top"]
    assert sorted(merged["skipped_names"]) == sorted(BAD)
    sharded = _json(capsys, [*base, "--shards", "2", "--cache", tmp_path / "cache", "--out", tmp_path / "sh",
                             "--json"])["index"]
    assert sharded["skipped"] == 4 and sharded["top"] == whole["top"]
    out, _ = _text(capsys, [*base, "--out", tmp_path / "all2"])
    assert "4 unreadable image(s) skipped (not scored)" in out
    # embed
    em = _json(capsys, ["embed", "--model", run_dir, data, "--out", tmp_path / "e", "--perplexity", "2", "--k", "2",
                        "--queries", "2", "--grid", "3", "--json", "--threads", "1"])["data"]
    assert em["dataset"]["skipped"] == 4 and em["n"] == 16
    # the Python API: the same counts
    from cnnvis.jobs import run

    assert run({"kind": "evaluate", "model": str(run_dir), "data": str(data)}).data["skipped"] == 4
    assert run({"kind": "max_maps", "model": str(run_dir), "data": str(data), "n": 20}).data["skipped"] == 4
    ds = open_dataset(data)
    assert sum(len(y) for _, y in ds.batches(5)) == 16 and ds.skipped == 4
    tr, held = train_test_split(ds, 0.25, seed=0)
    assert tr.skipped + held.skipped == 4  # each view counts its own files


# ------------------------------------------------------------------ 5. phantom classes
def test_class_folders_differing_in_case_between_splits_are_one_class(tmp_path, capsys):
    root = tmp_path / "d"
    _clean(root, n=4, classes=("cat", "dog"), prefix="train")
    _clean(root, n=5, classes=("Cat", "dog"), prefix="test")  # more 'Cat' images: the training split's name wins
    with pytest.warns(DatasetFormatWarning, match=r"test/Cat \+ train/cat -> 'cat'"):
        te = open_dataset(root, split="test")
    assert te.classes == ["cat", "dog"] and te.class_counts() == {"cat": 5, "dog": 5}
    res = _json(capsys, ["train", root, "--out", tmp_path / "run", "--epochs", "1", "--threads", "1", "--json"])
    assert res["classes"] == ["cat", "dog"] and res["held_out"] == "test split"


def test_a_class_without_readable_training_images_is_refused(tmp_path, capsys):
    data = _clean(tmp_path / "d", n=4)
    (data / "bird").mkdir()
    for i in range(3):
        (data / "bird" / f"{i}.png").write_bytes(b"broken")
    line = _refused(capsys, ["train", data, "--out", tmp_path / "run", "--epochs", "1"])
    assert "class 'bird' has no readable training image" in line and "the folder 'bird'" in line
    assert not (tmp_path / "run").exists()
    # a class folder in the test split only: the net could never learn it
    root = tmp_path / "s"
    _clean(root, n=3, prefix="train")
    _clean(root, n=2, classes=("cat", "eel"), prefix="test")
    line = _refused(capsys, ["train", root, "--out", tmp_path / "run2", "--epochs", "1"])
    assert "class 'eel'" in line and "no train/eel/" in line
    assert not (tmp_path / "run2").exists()


def test_zip_members_with_absolute_or_dotdot_paths_are_skipped_and_counted(tmp_path, capsys, run_dir):
    zp = tmp_path / "d.zip"
    with zipfile.ZipFile(zp, "w") as z:
        for c in ("cat", "dog"):
            for i in range(4):
                z.writestr(f"test/{c}/{i}.png", _bytes(_img("RGB", seed=i, red=c == "cat")))
        z.writestr("/abs/x.png", _bytes(_img("RGB")))
        z.writestr("test/../evil/y.png", _bytes(_img("RGB")))
    with pytest.warns(DatasetFormatWarning, match="2 member.*absolute or '..' path"):
        ds = open_dataset(zp, split="test")
    assert ds.classes == ["cat", "dog"] and len(ds) == 8 and ds.skipped == 2
    ev = _json(capsys, ["evaluate", "--model", run_dir, zp, "--split", "test", "--json", "--threads", "1"])["data"]
    assert ev["n"] == 8 and ev["skipped"] == 2 and set(ev["skipped_names"]) == {"/abs/x.png", "test/../evil/y.png"}


# ------------------------------------------------------------------ tracebacks, hangs, whole reads
def _patch_member(zp: Path, name: str, *, flag: int = 0, method: int | None = None) -> None:
    """Set flag bits / the compression method of member `name` in its local and central headers."""
    buf = bytearray(zp.read_bytes())
    with zipfile.ZipFile(zp) as z:
        off = z.getinfo(name).header_offset
        pos = z.start_dir  # the first central directory entry
    assert buf[off:off + 4] == b"PK\x03\x04"
    while buf[pos:pos + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack("<HHH", buf[pos + 28:pos + 34])
        if buf[pos + 46:pos + 46 + n].decode() == name:
            for at, fo, mo in ((off, 6, 8), (pos, 8, 10)):
                struct.pack_into("<H", buf, at + fo, struct.unpack("<H", buf[at + fo:at + fo + 2])[0] | flag)
                if method is not None:
                    struct.pack_into("<H", buf, at + mo, method)
            zp.write_bytes(bytes(buf))
            return
        pos += 46 + n + m + k
    raise AssertionError(f"{name} not in the central directory")


def _hostile_zip(tmp_path: Path) -> Path:
    """train/ and test/ of cat, dog, each split with an encrypted, a Deflate64 and an over-size member."""
    zp = tmp_path / "h.zip"
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as z:
        for split, n in (("train", 6), ("test", 4)):
            for c in ("cat", "dog"):
                for i in range(n):
                    z.writestr(f"{split}/{c}/{i}.png", _bytes(_img("RGB", seed=i + 10 * n, red=c == "cat")))
            z.writestr(f"{split}/dog/zz_d64.png", _bytes(_img("RGB")), zipfile.ZIP_STORED)
            z.writestr(f"{split}/cat/zz_big.png", b"\0" * (3 << 20))  # 3 MiB of zeros in about 3 KB
    for split in ("train", "test"):
        _patch_member(zp, f"{split}/dog/zz_d64.png", method=9)  # Deflate64: Python cannot read it
    enc = _bytes(_img("RGB", seed=5, red=True))
    for split in ("train", "test"):
        if shutil.which("zip"):  # a real password-protected member, written by Info-ZIP
            src = tmp_path / "enc" / split / "cat"
            src.mkdir(parents=True)
            (src / "zz_enc.png").write_bytes(enc)
            subprocess.run(["zip", "-q", "-P", "secret", str(zp), f"{split}/cat/zz_enc.png"], cwd=tmp_path / "enc",
                           check=True)
        else:  # the encryption flag bit set on a member
            with zipfile.ZipFile(zp, "a") as z:
                z.writestr(f"{split}/cat/zz_enc.png", enc)
            _patch_member(zp, f"{split}/cat/zz_enc.png", flag=0x1)
    assert zp.stat().st_size < 200_000
    return zp


def test_encrypted_deflate64_and_oversize_zip_members_are_skipped_and_counted(run_dir, tmp_path, capsys,
                                                                              monkeypatch):
    monkeypatch.setattr(data_files, "MAX_IMAGE_BYTES", 1 << 20)  # 1 MiB here; 64 MiB for real
    zp = _hostile_zip(tmp_path)
    with zipfile.ZipFile(zp) as z:
        assert z.getinfo("test/cat/zz_enc.png").flag_bits & 1
        assert z.getinfo("test/dog/zz_d64.png").compress_type == 9
    with pytest.warns(CorruptImageWarning):
        te = open_dataset(zp, split="test")
        assert sum(len(y) for _, y in te.batches(4)) == 8
    assert sorted(te.skipped_names) == ["test/cat/zz_big.png", "test/cat/zz_enc.png", "test/dog/zz_d64.png"]
    for name, why in (("zz_enc", "encrypted"), ("zz_d64", "Deflate64"), ("zz_big", "over the limit")):
        i = next(k for k in range(len(te)) if name in te.item_name(k))
        with pytest.raises(CorruptImage, match=why):
            te._src.read(i)
    res = _json(capsys, ["train", zp, "--out", tmp_path / "run", "--epochs", "1", "--threads", "1", "--json"])
    assert res["skipped"] == 6 and res["held_out"] == "test split"
    ev = _json(capsys, ["evaluate", "--model", run_dir, zp, "--split", "test", "--json", "--threads", "1"])["data"]
    assert ev["skipped"] == 3 and ev["n"] == 8
    top = _json(capsys, ["top-examples", "--model", run_dir, zp, "--split", "test", "--k", "2", "--out",
                         tmp_path / "top", "--json", "--threads", "1"])["data"]
    assert top["skipped"] == 3 and top["seen"] == 8


def test_a_member_is_never_read_past_the_limit_whatever_its_header_says(tmp_path, monkeypatch):
    # the reader counts what comes out of the stream: an endless stream stops at the limit
    class Endless:
        read_bytes = 0

        def read(self, n):
            self.read_bytes += n
            return b"\0" * n

    s = Endless()
    with pytest.raises(CorruptImage, match="more than 1 MiB"):
        data_files.read_capped(s, 1 << 20)
    assert s.read_bytes == (1 << 20) + 1
    # a member whose headers claim 100 bytes but that inflates to 3 MiB: read up to the claim, then refused
    zp = tmp_path / "lie.zip"
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as z:
        for c in ("a", "b"):
            z.writestr(f"{c}/0.png", _bytes(_img("RGB")))
        z.writestr("a/zz.png", b"\0" * (3 << 20))
    buf = bytearray(zp.read_bytes())
    with zipfile.ZipFile(zp) as z:
        info = z.getinfo("a/zz.png")
    struct.pack_into("<I", buf, info.header_offset + 22, 100)  # local header: uncompressed size
    cd = buf.rindex(b"PK\x01\x02")  # the last central entry is a/zz.png
    struct.pack_into("<I", buf, cd + 24, 100)
    zp.write_bytes(bytes(buf))
    monkeypatch.setattr(data_files, "MAX_IMAGE_BYTES", 1 << 20)
    with pytest.warns(CorruptImageWarning, match="a/zz.png.*BadZipFile"):  # its CRC is not the data's
        ds = open_dataset(zp)
        assert sum(len(y) for _, y in ds.batches(4)) == 2
    assert ds.skipped_names == ["a/zz.png"]


def test_a_fifo_named_like_an_image_is_skipped_not_waited_on(run_dir, tmp_path, capsys):
    data = _clean(tmp_path / "d", n=4)
    os.mkfifo(data / "dog" / "x.png")
    done: list = []

    def read():
        ds = open_dataset(data)
        done.append((sum(len(y) for _, y in ds.batches(3)), ds.skipped_names))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(120)  # a guard: opening the FIFO for reading would wait for a writer forever
    assert not t.is_alive() and done == [(8, ["dog/x.png"])]
    ev = _json(capsys, ["evaluate", "--model", run_dir, data, "--json", "--threads", "1"])["data"]
    assert ev["n"] == 8 and ev["skipped"] == 1 and ev["skipped_names"] == ["dog/x.png"]


# ------------------------------------------------------------------ nothing lost: no output inside an input
def test_an_output_inside_the_dataset_is_refused_and_nothing_is_written(run_dir, tmp_path, capsys):
    data = _clean(tmp_path / "ds", n=4)
    victim = data / "dog" / "01.png"
    before = victim.read_bytes()
    listing = sorted(p.relative_to(data).as_posix() for p in data.rglob("*"))
    m = ["--model", run_dir, "--threads", "1"]
    cases = [
        (["evaluate", *m, data, "--out", victim], "is inside the dataset"),
        (["maxmaps", *m, data, "--out", victim], "is inside the dataset"),
        (["maxmaps", *m, data, "--out", data / "cat" / "new.png"], "is inside the dataset"),
        (["top-examples", *m, data, "--out", data / "top"], "is inside the dataset"),
        (["top-examples", *m, data, "--out", tmp_path, "--overwrite"], "holds the dataset"),
        (["embed", *m, data, "--out", data / "emb"], "is inside the dataset"),
        (["train", data, "--out", data / "run", "--epochs", "1"], "is inside the dataset"),
        (["report", "--model", run_dir, "--data", data, "--sections", "study_weights", "--out", data / "rep"],
         "is inside the dataset"),
    ]
    for argv, want in cases:
        line = one_error(capsys, argv)
        assert want in line and str(data) in line, line
    assert victim.read_bytes() == before
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == listing
    # a zip dataset: the zip itself as --out
    zp = tmp_path / "d.zip"
    with zipfile.ZipFile(zp, "w") as z:
        for p in data.rglob("*.png"):
            z.write(p, p.relative_to(data).as_posix())
    zbytes = zp.read_bytes()
    assert "is the dataset" in one_error(capsys, ["maxmaps", *m, zp, "--out", zp])
    assert zp.read_bytes() == zbytes
    # beside the dataset is fine
    _text(capsys, ["evaluate", *m, data, "--out", tmp_path / "confusion.png"])
    assert (tmp_path / "confusion.png").is_file()
