"""Top-k classification of photos.

    classify(vm, [img1, img2], top=5) -> [[Prediction(index=207, label='golden retriever', prob=0.79), ...], ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from cnnvis.errors import CnnvisError
from cnnvis.utils import model_guard


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    prob: float


def predict_probs(vm, x: Tensor, batch_size: int = 16, progress=None) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, classes) softmax probabilities, no grad, model unchanged."""
    from cnnvis.utils import progress_iter

    if vm.task != "classification":
        raise CnnvisError(f"model {vm.name!r} is not a classifier ({vm.task}); classification needs a classifier")
    outs = []
    starts = range(0, x.shape[0], batch_size)
    with model_guard(vm.model), torch.no_grad():
        for i in progress_iter(starts, total=len(starts), desc="classify", progress=progress and len(starts) > 1):
            outs.append(torch.softmax(vm(x[i:i + batch_size].to(vm.device)).float(), dim=1).cpu())
    return torch.cat(outs)


def topk(probs: Tensor, vm, top: int = 5) -> list[list[Prediction]]:
    """(B, classes) probabilities -> top-k predictions per row."""
    k = min(top, probs.shape[1])
    p, i = probs.topk(k, dim=1)
    return [[Prediction(int(j), vm.label(int(j)), float(q)) for q, j in zip(pr, ir)] for pr, ir in zip(p, i)]


def classify(vm, images: Sequence[Image.Image | Tensor], top: int = 5, batch_size: int = 16, progress=None) -> list[list[Prediction]]:
    """PIL images (resized/cropped by the model's preprocessing) or (1,3,H,W) tensors -> top-k each."""
    if top < 1:
        raise CnnvisError(f"top must be at least 1, got {top}")
    xs = [vm.preprocess.prepare(im) if isinstance(im, Image.Image) else im for im in images]
    if not xs:
        return []
    return topk(predict_probs(vm, torch.cat(xs), batch_size, progress), vm, top)
