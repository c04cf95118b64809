"""Photos sent by the user: decoded by PIL under limits, re-encoded to PNG in `<cache>/uploads/<sha>.png`
and referred to as `upload:<sha>` (nothing is written outside the cache); request bodies over their
limit answered 413 before they are read whole (`UploadLimit`)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings

from fastapi import HTTPException, UploadFile

from cnnvis.errors import CnnvisError
from cnnvis.web.jobs import one_line

UPLOAD_RE = re.compile(r"^upload:([0-9a-f]{64})$")
UPLOAD_PIXELS = 50_000_000  # decoded pixels an upload may declare (a 12 MP photo is fine)
UPLOAD_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "MPO")  # never EPS/PDF (Ghostscript)
UPLOAD_TYPES = ("image/", "application/octet-stream")
BODY_LIMIT = 2**20  # bytes of any other request body (a job spec is a few hundred)


def decode_upload(blob: bytes, filename: str, max_pixels: int = UPLOAD_PIXELS):
    """Bytes of an uploaded file -> PIL RGB image; CnnvisError (one line) for anything that is not a
    whole, reasonably sized image in a plain raster format."""
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    from cnnvis.images import aspect_problem, to_rgb

    name = filename or "the upload"
    if not blob:
        raise CnnvisError(f"{name!r} is empty (0 bytes); choose a photo")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()
            img = Image.open(io.BytesIO(blob), formats=[f for f in UPLOAD_FORMATS if f in Image.OPEN])
            w, h = img.size
            if w * h > max_pixels:
                raise CnnvisError(f"{name!r} declares {w}x{h} = {w * h / 1e6:.0f} megapixels, over the limit of "
                                  f"{max_pixels / 1e6:.0f}; refused as a possible decompression bomb (shrink it first)")
            if w == 0 or h == 0:
                raise CnnvisError(f"{name!r} has zero size")
            if why := aspect_problem(w, h):
                raise CnnvisError(f"{name!r} {why}")
            img.load()
            img = ImageOps.exif_transpose(img)
    except CnnvisError:
        raise
    except UnidentifiedImageError:
        raise CnnvisError(f"{name!r} is not an image (or not one of {', '.join(UPLOAD_FORMATS)}); "
                          "upload a JPEG or PNG photo") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise CnnvisError(f"{name!r} is too large when decoded; refused as a possible decompression bomb") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise CnnvisError(f"{name!r} could not be decoded ({one_line(e)}); is it truncated or corrupt?") from None
    return to_rgb(img)


async def save_upload(ctx, file: UploadFile) -> tuple[str, int, int]:
    """Read an uploaded file (<= ctx.max_upload_mb), decode and keep it: (sha256 of the PNG, width, height)."""
    ctype = (file.content_type or "").lower()
    if not ctype.startswith(UPLOAD_TYPES):
        raise HTTPException(415, f"{file.filename or 'the upload'!r} was sent as {ctype or 'no type'}, not an "
                                 "image; upload a JPEG or PNG photo")
    limit = ctx.max_upload_mb * 2**20
    chunks, n = [], 0
    while True:
        chunk = await file.read(1 << 20)
        if not chunk:
            break
        n += len(chunk)
        if n > limit:
            raise HTTPException(413, f"the upload is larger than {ctx.max_upload_mb} MB; choose a smaller photo")
        chunks.append(chunk)
    blob = b"".join(chunks)
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(store_upload, ctx.uploads, blob, file.filename or "")


def store_upload(folder, blob: bytes, filename: str) -> tuple[str, int, int]:
    """Decode `blob`, write it as `<folder>/<sha>.png` (atomically, once): (sha, width, height)."""
    from cnnvis.utils import atomic_write

    img = decode_upload(blob, filename)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    png = buf.getvalue()
    sha = hashlib.sha256(png).hexdigest()
    path = folder / f"{sha}.png"
    if read_upload(path, sha) is None:  # new, or damaged on disk since: (re)written whole
        with atomic_write(path) as f:
            f.write(png)
    return sha, img.size[0], img.size[1]


def read_upload(path, sha: str) -> bytes | None:
    """The bytes of a stored upload when they still hash to its name `sha` (a plain file, no symlink);
    None when it is missing or damaged (truncated, altered): never served or computed on as it is."""
    import os

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    return blob if hashlib.sha256(blob).hexdigest() == sha else None


class _TooLarge(Exception):
    pass


class UploadLimit:
    """ASGI middleware: bodies of POST /api/uploads and /api/classify over `limit` bytes -> 413, from the
    Content-Length header when given and by counting the bytes as they arrive (chunked bodies)."""

    PATHS = ("/api/uploads", "/api/classify")

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope.get("path") in self.PATHS:
            limit, what = self.limit + 64 * 1024, -self.limit  # + the multipart envelope; < 0: an upload
        else:
            limit = what = BODY_LIMIT  # a job spec is a few hundred bytes
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = -1
                if n > limit:
                    return await self._send_413(send, what)
        seen = 0
        state = {"over": False, "replaced": False, "started": False}

        async def counting_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    state["over"] = True
                    raise _TooLarge
            return msg

        async def guarded_send(msg):
            # the body parser may turn _TooLarge into its own 400: whatever the app answers, it is a 413
            if state["replaced"]:
                return
            if msg["type"] == "http.response.start" and state["over"]:
                state["replaced"] = True
                return await self._send_413(send, what)
            state["started"] = True
            await send(msg)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            if not state["started"] and not state["replaced"]:
                await self._send_413(send, what)

    async def _send_413(self, send, what: int):
        mb = abs(what) / 2**20
        msg = f"the upload is larger than {mb:.0f} MB; choose a smaller photo" if what < 0 else \
            f"the request body is larger than {mb:.0f} MB"
        body = json.dumps({"detail": msg}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
