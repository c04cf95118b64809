"""Is a class image a picture or adversarial noise? Re-classify it after four small perturbations.

    robustness(vm, x, 144) -> {'png': 0.999, 'blur1': 0.97, 'down_up2': 0.95, 'shift8': 0.99, 'resize256_crop224': 0.98}

x: (B, C, H, W) in [0, 1] (e.g. a saved PNG re-read); values: (B,) target probabilities.
Also home of `quantize` (what an 8-bit file stores), used by render's stop check: this module
imports nothing from render.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnvis.optvis.regularizers import gaussian_blur

PERTURBATIONS = {
    "blur1": "Gaussian blur, sigma 1 px",
    "down_up2": "2x downscale then upscale (bilinear, antialiased)",
    "shift8": "shift 8 px right and down (side/28 px below 224 px)",
    "resize256_crop224": "resize to 256/224 of the size, centre crop back",
}


def quantize(x: Tensor) -> Tensor:
    """[0, 1] image -> the same values an 8-bit PNG stores (round to 1/255)."""
    return (x.clamp(0, 1) * 255).round() / 255


def blur1(x: Tensor) -> Tensor:
    return gaussian_blur(x, 1.0)


def down_up2(x: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(h // 2, w // 2), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def shift8(x: Tensor, d: int | None = None) -> Tensor:
    """Shift by d px (default 8, or 8/224 of the side of a smaller image: 1 px of a 28-px digit, since 8 px
    would move it out of the picture)."""
    h, w = x.shape[-2:]
    if d is None:
        d = 8 if min(h, w) >= 224 else max(1, round(8 * min(h, w) / 224))
    return F.pad(x, (d, 0, d, 0), mode="replicate")[..., :h, :w]


def resize_crop(x: Tensor, resize: int = 256, crop: int = 224) -> Tensor:
    h, w = x.shape[-2:]
    nh, nw = round(h * resize / crop), round(w * resize / crop)
    big = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=False, align_corners=False)
    top, left = (nh - h) // 2, (nw - w) // 2
    return big[..., top:top + h, left:left + w]


_FUNCS = {"blur1": blur1, "down_up2": down_up2, "shift8": shift8, "resize256_crop224": resize_crop}


def perturb(x: Tensor) -> dict[str, Tensor]:
    """The four perturbed versions of x, each re-quantized to 8 bits like a saved file."""
    return {k: quantize(f(x)) for k, f in _FUNCS.items()}


def check_judge(vm, judge) -> None:
    """Raise a CnnvisError unless `judge` can witness `vm`'s class images: a classifier with the same
    labels that is not `vm` itself (same module, or same name and weights)."""
    from cnnvis.errors import CnnvisError

    if getattr(judge, "task", "classification") != "classification":
        raise CnnvisError(f"judge {judge.name!r} is not a classifier ({judge.task}); give a classifier with the same "
                          f"labels as {vm.name!r}, e.g. --judge efficientnet_lite1, or --judge none")
    if judge is vm or judge.model is vm.model or (judge.name == vm.name and _same_weights(judge.model, vm.model)):
        raise CnnvisError(f"the judge must be a second model, not {vm.name!r} itself: its own view is what the "
                          "render optimized; give another classifier with the same labels, or --judge none")
    a, b = list(vm.labels or []), list(judge.labels or [])
    if a != b:
        what = f"has {len(b)} classes where {vm.name!r} has {len(a)}" if len(a) != len(b) else \
            f"names its classes otherwise than {vm.name!r}"
        raise CnnvisError(f"judge {judge.name!r} {what}; a witness needs the same labels: give a classifier trained "
                          "on the same classes, or --judge none")


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def witness_probs(judge, x: Tensor) -> Tensor:
    """What a second classifier says of images as saved files: x (B, C, H, W) in [0, 1] is rounded to
    8 bits, made into PIL images and prepared by the judge's own preprocessing (resize, crop).
    Returns the judge's (B, classes) softmax probabilities."""
    import numpy as np
    from PIL import Image

    from cnnvis.classify import predict_probs

    q = (quantize(x.detach().float().cpu()) * 255).round().to(torch.uint8)
    mode = judge.preprocess.pil_mode or "RGB"
    ims = [Image.fromarray(np.ascontiguousarray(im.permute(1, 2, 0).squeeze(-1).numpy())).convert(mode) for im in q]
    return predict_probs(judge, torch.cat([judge.preprocess.prepare(im) for im in ims]))


def robustness(vm, x: Tensor, target: int | list[int]) -> dict[str, Tensor]:
    """Target-class probability of x ('png') and of its four perturbations, each (B,)."""
    from cnnvis.classify import predict_probs

    x = x.float().cpu()
    b = x.shape[0]
    t = torch.as_tensor([target] * b if isinstance(target, int) else list(target))
    versions = {"png": x, **perturb(x)}
    allx = torch.cat(list(versions.values()))
    probs = predict_probs(vm, allx)
    out = {}
    for k, (name, _) in enumerate(versions.items()):
        p = probs[k * b:(k + 1) * b]
        out[name] = p[torch.arange(b), t]
    return out
