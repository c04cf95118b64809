"""Image loading: every PIL mode, EXIF rotation, bad files, decompression bombs."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cnnvis.errors import CnnvisError
from cnnvis.images import find_images, load_image, resize_center_crop, sample_photos, to_tensor


def _grad_rgb(w=40, h=30):
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w)[None, :]
    a[..., 1] = np.linspace(0, 255, h)[:, None]
    a[..., 2] = 80
    return Image.fromarray(a, "RGB")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "LA", "1", "I;16", "I", "F"])
def test_every_mode_loads_as_rgb(tmp_path, mode):
    src = _grad_rgb()
    if mode in ("I;16", "I", "F"):
        a = np.asarray(src.convert("L"), np.float64) * 200
        img = Image.fromarray(a.astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
        assert img.mode == mode
        path = tmp_path / f"x_{mode.replace(';', '')}.{'png' if mode == 'I;16' else 'tif'}"
    else:
        img = src.convert(mode)
        path = tmp_path / f"x_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (40, 30)
    a = np.asarray(out, np.float64)
    if mode in ("I;16", "I", "F", "L", "LA"):
        # gray ramp is preserved: left-to-right brightness increases
        assert a[:, -1].mean() > a[:, 0].mean() + 50
    elif mode in ("RGB", "RGBA", "CMYK"):
        assert np.abs(a - np.asarray(src, np.float64)).mean() < 12


def test_rgba_transparency_is_composited_on_white(tmp_path):
    a = np.zeros((10, 10, 4), np.uint8)
    a[..., 0] = 255
    a[:, 5:, 3] = 255  # right half opaque red, left half transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    out = np.asarray(load_image(tmp_path / "t.png"))
    assert (out[:, :5] == 255).all() and (out[:, 5:] == [255, 0, 0]).all()


def test_exif_orientation_is_applied(tmp_path):
    img = _grad_rgb(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes())
    out = load_image(tmp_path / "r.jpg")
    assert out.size == (20, 40)


def test_bad_files_give_clear_errors(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, not an image")
    _grad_rgb(200, 200).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(CnnvisError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(CnnvisError, match="not an image PIL can read"):
        load_image(tmp_path / "text.png")
    with pytest.raises(CnnvisError, match="truncated"):
        load_image(tmp_path / "trunc.jpg")
    with pytest.raises(CnnvisError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(CnnvisError, match="directory"):
        load_image(tmp_path)


def _png_declaring(w: int, h: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_declaring(50_000, 50_000))
    with pytest.raises(CnnvisError, match="decompression bomb"):
        load_image(tmp_path / "bomb.png")


def test_resize_center_crop_and_tensor_values():
    img = _grad_rgb(300, 200)
    x = resize_center_crop(img, 256, 224)
    assert x.shape == (1, 3, 224, 224) and 0 <= x.min() and x.max() <= 1
    t = to_tensor(img)
    assert t.shape == (1, 3, 200, 300)
    assert abs(float(t[0, 2].mean()) - 80 / 255) < 1e-6


def test_find_images_and_samples(tmp_path):
    with pytest.raises(CnnvisError, match="no images"):
        find_images(tmp_path)
    _grad_rgb().save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in find_images(tmp_path)] == ["a.png"]
    names = [n for n, _ in sample_photos()]
    assert names == ["chelsea", "coffee", "rocket", "astronaut"]
