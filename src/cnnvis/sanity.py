"""Sanity check for saliency maps (Adebayo et al. 2018): cascading randomization.

    res = sanity_check(vm, x, method='guided')     # x (1, 3, H, W)
    res.steps      # ['(trained)', 'classifier', 'bn2', 'conv_head', 'blocks.6', ...]
    res.spearman   # rank correlation of each step's map with the trained model's map (1.0 first)

The weights are re-initialized group by group from the top layer down, cumulatively, on a deep
copy of the model (the user's model is never touched). A method whose map stays similar while
the network becomes random does not explain the model. The target stays the trained model's.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnvis.errors import CnnvisError


@dataclass
class SanityResult:
    method: str
    target: int | None
    steps: list[str]           # step 0 = the trained model; step i = groups 1..i randomized
    spearman: list[float]      # rank correlation with step 0's map (of |map|), per step
    maps: Tensor               # (steps, H, W) the maps themselves


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two same-size tensors (ties get their average rank)."""
    ra, rb = _rank(a.flatten().double()), _rank(b.flatten().double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / den) if den > 0 else 0.0


def _rank(v: Tensor) -> Tensor:
    _, inv, counts = torch.unique(v, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() - 1) / 2  # 1-based average rank of each distinct value
    return avg[inv]


def layer_groups(model, input_size: int = 224, max_steps: int = 16) -> list[list[str]]:
    """Leaf modules with weights, grouped by name prefix (coarser until <= max_steps groups),
    top layer first (reverse execution order)."""
    from cnnvis.attribution.base import model_parts
    from cnnvis.layers import list_layers

    module = model_parts(model)[0]
    infos = list_layers(model, input_size, leaves_only=True)
    names = [i.name for i in infos if any(True for _ in module.get_submodule(i.name).parameters(recurse=False))]
    if not names:
        raise CnnvisError("the model has no layers with weights to randomize")
    depth = max(n.count(".") + 1 for n in names)
    groups: list[list[str]] = []
    for d in range(depth, 0, -1):
        groups = []
        for n in names:
            key = ".".join(n.split(".")[:d])
            if groups and ".".join(groups[-1][0].split(".")[:d]) == key:
                groups[-1].append(n)
            else:
                groups.append([n])
        if len(groups) <= max_steps:
            break
    return groups[::-1]


def _randomize(module: nn.Module, gen_seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(gen_seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            for p in module.parameters(recurse=False):
                with torch.no_grad():
                    p.normal_(0, 0.01)


def sanity_check(model, x: Tensor, method: str = "saliency", target=None, *, max_steps: int = 16,
                 seed: int = 0, progress=None, **options) -> SanityResult:
    """Cascading randomization for one image `x` (1, 3, H, W) and any method name of
    `cnnvis.attribution.METHODS` (with its `options`)."""
    from cnnvis.attribution import method as make
    from cnnvis.attribution.base import check_input, model_parts
    from cnnvis.utils import progress_iter

    module, _, vm = model_parts(model)
    from cnnvis.utils import module_device

    x = check_input(x, module_device(module), model)
    if x.shape[0] != 1:
        raise CnnvisError(f"the sanity check takes one image, got a batch of {x.shape[0]}")
    m0 = make(method, model, **options)
    target = m0.fixed_target(x, target) if target is None else target
    tgt = int(target[0]) if torch.is_tensor(target) else target
    base = m0.map(x, tgt)[0]
    groups = layer_groups(model, x.shape[-1], max_steps)
    twin = copy.deepcopy(module)  # the user's model is never changed
    twin_model = copy.copy(vm) if vm is not None else twin
    if vm is not None:
        twin_model.model = twin
    maps, steps, rho = [base.cpu()], ["(trained)"], [1.0]
    for i, grp in enumerate(progress_iter(groups, total=len(groups), desc=f"sanity {method}", progress=progress)):
        for n in grp:
            _randomize(twin.get_submodule(n), seed * 1000 + i)
        mp = make(method, twin_model, **options).map(x, tgt)[0]
        maps.append(mp.cpu())
        steps.append(_common_prefix(grp))
        rho.append(spearman(base, mp))
    return SanityResult(method, tgt if isinstance(tgt, int) else None, steps, rho, torch.stack(maps))


def _common_prefix(names: Sequence[str]) -> str:
    parts = [n.split(".") for n in names]
    out = []
    for seg in zip(*parts):
        if len(set(seg)) != 1:
            break
        out.append(seg[0])
    return ".".join(out) or names[0]
