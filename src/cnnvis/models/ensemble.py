"""Several classifiers of the same classes as one: their logits averaged.

    both = ensemble([load("efficientnet_lite0"), load("efficientnet_lite1")])
    both(x)          # (B, classes): the mean of each member's logits, each fed x through its own preprocessing
    render(both, class_logit("pelican"))   # an image both models see as a pelican

Why: an image optimized for one network holds much that only that network reads (it fools the model
it was made for); one that convinces two at once transfers better to a third (Liu et al., "Delving
into transferable adversarial examples", 2017). Class images made for lite0 + lite1 are seen as the
class by efficientnet_lite2, which took no part (bench/class_independent.py).

The members are not copied or changed; the ensemble's module holds them as submodules, so a render's
guard (flags, requires_grad, hooks) covers them all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnnvis.errors import CnnvisError
from cnnvis.models.preprocess import Preprocess
from cnnvis.models.registry import VisModel


class _MeanLogits(nn.Module):
    """x (B, C, H, W) in [0, 1] -> (B, classes): the mean over members of model_k(normalize_k(x))."""

    def __init__(self, members: Sequence[VisModel]) -> None:
        super().__init__()
        self.members = nn.ModuleList([m.model for m in members])
        self._preps = [m.preprocess for m in members]

    def forward(self, x: Tensor) -> Tensor:
        outs = [m(p.normalize(x)) for m, p in zip(self.members, self._preps)]
        return torch.stack(outs).mean(0)


def ensemble(members: Sequence[VisModel], name: str | None = None) -> VisModel:
    """One VisModel whose logits are the mean of the members' (classifiers with the same labels, each
    fed the [0, 1] image through its own preprocessing). Its input shape and labels are the first
    member's; its name joins the members' with '+'. A CnnvisError names a member that does not fit."""
    members = list(members)
    if len(members) < 2:
        raise CnnvisError(f"an ensemble needs at least two models, got {len(members)}")
    first = members[0]
    for m in members:
        if m.task != "classification":
            raise CnnvisError(f"ensemble member {m.name!r} is not a classifier ({m.task})")
        if list(m.labels or []) != list(first.labels or []) or not m.labels:
            raise CnnvisError(f"ensemble member {m.name!r} has other labels than {first.name!r}; the logits of an "
                              "ensemble are averaged class by class: give classifiers of the same classes")
        if m.input_shape[0] != first.input_shape[0]:
            raise CnnvisError(f"ensemble member {m.name!r} takes {m.input_shape[0]} channel(s), {first.name!r} "
                              f"{first.input_shape[0]}")
    names = [m.name for m in members]
    if len(set(names)) < len(names) or len({id(m.model) for m in members}) < len(members):
        raise CnnvisError(f"ensemble members must be different models, got {', '.join(names)}")
    c, h, w = first.input_shape
    prep = Preprocess.identity(c, resize=first.preprocess.resize, crop=first.preprocess.crop)
    return VisModel(name or "+".join(names), _MeanLogits(members), prep, list(first.labels),
                    min_size=max(m.min_size for m in members), input_shape=(c, h, w),
                    description="mean logits of " + ", ".join(names),
                    channels_last=all(m.channels_last for m in members))
