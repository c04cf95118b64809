"""Watch an optimization form: frames from `render(..., watch=anim.add)` -> an animated GIF.

    anim = Animation(every=frame_every(256))          # about 32 frames, one every `anim.every` steps
    res = render(vm, obj, steps=256, watch=anim.add, watch_every=anim.every)
    anim.add(res.steps, res.images, final=True)       # the kept image ends the loop
    open("pelican.gif", "wb").write(anim.gif())

Frames are kept as 8-bit arrays (a batch becomes one row of images), shrunk so the longest side
is at most `max_side`; the GIF is made by Pillow (no other dependency).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def frame_every(steps: int, frames: int = 32) -> int:
    """Steps between frames for about `frames` frames over `steps` steps."""
    return max(1, int(steps) // max(1, frames))


class Animation:
    """Collects frames: `add(step, images)` with images (B, C, H, W) in [0, 1] on the CPU, or
    `add_image(step, pil)`. `every`: the watch interval the caller renders with (a hint it carries)."""

    def __init__(self, every: int = 1, max_side: int = 512, compose=None):
        self.every = int(every)
        self.max_side = int(max_side)
        self.compose = compose  # optional: (step, images) -> (C, H, W) frame (e.g. a labelled grid)
        self.frames: list[tuple[int, np.ndarray]] = []

    def add(self, step: int, images: Tensor, final: bool = False) -> None:
        x = self.compose(step, images) if self.compose is not None else _row(images)
        a = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        a = a.permute(1, 2, 0).numpy()
        if a.shape[2] == 1:
            a = a[..., 0]
        im = Image.fromarray(np.ascontiguousarray(a))
        if max(im.size) > self.max_side:
            f = self.max_side / max(im.size)
            im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.BILINEAR)
        if final and self.frames and self.frames[-1][0] == step:
            self.frames.pop()
        self.frames.append((int(step), np.asarray(im)))

    def add_image(self, step: int, im) -> None:
        """Add a ready-made PIL frame (e.g. a labelled grid), shrunk to `max_side`."""
        im = im.convert("RGB")
        if max(im.size) > self.max_side:
            f = self.max_side / max(im.size)
            im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.BILINEAR)
        self.frames.append((int(step), np.asarray(im)))

    def gif(self, ms: int = 80, hold_ms: int = 1500) -> bytes:
        """The frames as a looping GIF (the last frame held `hold_ms`)."""
        if not self.frames:
            raise ValueError("no frames: nothing was rendered")
        # Pillow's default GIF conversion (median cut with dithering) costs ~75 ms a 224-px frame; a fast
        # octree palette per frame costs ~1.5 ms and keeps each frame's own colours
        ims = [Image.fromarray(a).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
               for _, a in self.frames]
        buf = io.BytesIO()
        durations = [ms] * (len(ims) - 1) + [hold_ms]
        ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=durations, loop=0,
                    optimize=False)
        return buf.getvalue()

    @property
    def steps(self) -> list[int]:
        return [s for s, _ in self.frames]


def _row(images: Tensor) -> Tensor:
    """(B, C, H, W) -> (C, H, B*W + gaps): a batch side by side with 2-px white gaps."""
    if images.dim() == 3:
        return images
    b, c, h, w = images.shape
    if b == 1:
        return images[0]
    out = torch.ones(c, h, b * w + 2 * (b - 1))
    for i in range(b):
        out[:, :, i * (w + 2):i * (w + 2) + w] = images[i]
    return out
