"""Reading photos robustly: any PIL mode, EXIF rotation, clear errors for bad files.

    img = load_image('photo.jpg')            # PIL RGB
    x = to_tensor(img)                       # (1, 3, H, W) float in [0, 1]
    x = resize_center_crop(img, 256, 224)    # (1, 3, 224, 224)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch import Tensor

from cnnvis.errors import CnnvisError

MAX_PIXELS = 100_000_000  # refuse larger declared sizes (decompression bombs); 12 MP photos are fine
MAX_ASPECT = 20  # refuse images more elongated than 20:1: scaling the shorter side to a model's input would
# blow the longer one up (a 50000x1 PNG of 225 bytes -> 12,800,000 x 256 pixels)
# the one list of image files read as input (photos, image folders, datasets), by suffix
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
# the image files written (--out, save_png): suffix -> PIL format
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
                  ".tiff": "TIFF"}
OUTPUT_SUFFIXES = tuple(OUTPUT_FORMATS)


def aspect_problem(w: int, h: int) -> str | None:
    """Why a w x h image is too elongated to take (a phrase), or None."""
    if min(w, h) > 0 and max(w, h) > MAX_ASPECT * min(w, h):
        return (f"is {w}x{h}, {max(w, h) / min(w, h):.0f} times longer one way than the other (the limit is "
                f"{MAX_ASPECT}:1); crop it to the part to look at")
    return None


def load_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open any PIL-readable image as 8-bit RGB, applying EXIF orientation.

    RGBA/LA/P-with-transparency are composited on white; 16-bit and float images are scaled
    to 8 bits by their range; CMYK is converted. Raises CnnvisError naming the file and reason.
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise CnnvisError(f"image {name!r} does not exist")
    if path.is_dir():
        raise CnnvisError(f"image {name!r} is a directory, not an image file")
    if not path.is_file():
        raise CnnvisError(f"image {name!r} is not a regular file (a device, FIFO or socket); give an image file")
    if path.stat().st_size == 0:
        raise CnnvisError(f"image {name!r} is empty (0 bytes)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > max_pixels:
                raise CnnvisError(
                    f"image {name!r} declares {w}x{h} = {w * h / 1e6:.0f} megapixels, over the limit of "
                    f"{max_pixels / 1e6:.0f}; refusing it as a possible decompression bomb (shrink it first)"
                )
            if w == 0 or h == 0:
                raise CnnvisError(f"image {name!r} has zero size")
            if why := aspect_problem(w, h):
                raise CnnvisError(f"image {name!r} {why}")
            img.load()
    except CnnvisError:
        raise
    except UnidentifiedImageError:
        raise CnnvisError(f"image {name!r} is not an image PIL can read (unknown format or corrupt)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise CnnvisError(f"image {name!r} is too large, refusing it as a possible decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise CnnvisError(f"image {name!r} could not be decoded ({e}); is it truncated or corrupt?") from None
    return to_rgb(img)


def check_pixels(x: Tensor, what: str = "the image", *, in_range: bool = True) -> None:
    """CnnvisError unless x is a float tensor of finite pixels, in about [0, 1] with `in_range` (a uint8 or 0-255
    image was clamped to white, a NaN one failed later with another cause named). Without it (attribution, whose
    input to a bare module may be normalized already) only the dtype and finiteness are checked."""
    if not x.is_floating_point():
        raise CnnvisError(f"{what} is a {x.dtype} tensor; give float pixels in [0, 1] (x.float() / 255)")
    if not bool(torch.isfinite(x).all()):
        raise CnnvisError(f"{what} holds NaN or infinite values; give finite pixels in [0, 1]")
    if not in_range:
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if lo < -0.5 or hi > 1.5:
        raise CnnvisError(f"{what} has pixels from {lo:.3g} to {hi:.3g}; give pixels in [0, 1]"
                          + (" (divide by 255)" if hi > 2 else ""))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB (EXIF orientation applied)."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must not stop us
        pass
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.round().astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode == "1":
        img = img.convert("L")
    return img.convert("RGB") if img.mode != "RGB" else img


def to_tensor(img: Image.Image, mode: str = "RGB") -> Tensor:
    """PIL image -> (1, C, H, W) float32 in [0, 1]; mode 'RGB' (C=3, default), 'L' (C=1) or 'RGBA'."""
    img = to_rgb(img)
    if mode != "RGB":
        img = img.convert(mode)
    a = np.asarray(img, dtype=np.float32) / 255.0
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(a.copy()).permute(2, 0, 1).unsqueeze(0)


def resize_center_crop(img: Image.Image, resize: int, crop: int, mode: str = "RGB") -> Tensor:
    """Shorter side to `resize` (bilinear, antialiased), centre crop `crop` -> (1, C, crop, crop).

    mode: 'RGB' (C=3), 'L' (grey, C=1) or 'RGBA' (C=4), as in `to_tensor`."""
    img = to_rgb(img)
    w, h = img.size
    s = resize / min(w, h)
    nw, nh = max(crop, round(w * s)), max(crop, round(h * s))
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = (nw - crop) // 2, (nh - crop) // 2
    return to_tensor(img.crop((left, top, left + crop, top + crop)), mode)


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by extension) directly inside `folder`, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CnnvisError(f"images folder {str(folder)!r} does not exist or is not a folder")
    named = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    odd = [p for p in named if not p.is_file() and not p.is_dir()]  # a FIFO, socket, device or broken link
    if odd:  # was skipped without a word (a corrupt file in the same folder stops the command)
        what = lambda p: "a broken link" if p.is_symlink() and not p.exists() else "not a regular file"  # noqa: E731
        raise CnnvisError(f"images folder {str(folder)!r} holds {len(odd)} entr{'y' if len(odd) == 1 else 'ies'} named "
                          f"like images that cannot be read: " + ", ".join(f"{p.name} ({what(p)})" for p in odd[:3])
                          + "; remove them or give the images another way")
    files = [p for p in named if p.is_file()]
    if not files:
        raise CnnvisError(f"images folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


SAMPLE_NAMES = ("chelsea", "coffee", "rocket", "astronaut")  # photos that ship with scikit-image


def sample_photo(name: str) -> Image.Image:
    """One of scikit-image's photos (no download) by name, RGB."""
    if name not in SAMPLE_NAMES:
        from cnnvis.errors import unknown_name

        raise unknown_name("sample photo", name, SAMPLE_NAMES)
    try:
        from skimage import data
    except ImportError:
        raise CnnvisError("sample photos need scikit-image (pip install scikit-image); or give your own photos") from None
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def sample_photos() -> list[tuple[str, Image.Image]]:
    """All sample photos: cat, coffee, rocket, astronaut."""
    return [(name, sample_photo(name)) for name in SAMPLE_NAMES]
