"""Zeiler & Fergus (2014) deconvnet visualization: project top feature maps back to pixels.

    res = deconvnet(vm, x, layers=['conv1_2', 'conv3_3', 'conv5_3'], top=3)
    res.reconstructions[i]   # (k, C, H, W) pixel-space projection of layer i's top-k channels
    res.activations[i]       # (k, h, w) their rectified feature maps; res.channels[i] (k,) indices
    res.units[i]             # (k, 2) (y, x) of each channel's strongest unit
    res.unit_reconstructions[i]  # (k, C, H, W) each strongest unit alone projected (with also_units=True)
    res.likeness[i]          # median pairwise correlation of the top-k projections (near 1: alike; a note says so)

Rules (`rule=`), applied from the chosen layer down to the pixels:
- 'fired' (default): max-pool -> unpool into the switches recorded in the forward pass;
  ReLU-like -> ReLU of the signal times the mask of the units that fired (forward output > 0);
  conv -> transposed conv with the layer's own filters; a strided conv's transpose is followed by
  a box of width s (`unstride`): nearest-neighbour upsampling of the signal, then the stride-1
  transpose -- Odena et al. 2016's resize-convolution, run backward -- instead of inserting s^2 - 1
  zeros per unit (the checkerboard). On nets of nn.ReLU without strided convs (VGG) it is exactly
  'masked'. On EfficientNet-Lite (ReLU6, five stride-2 convs) it differs twice: a unit saturated
  at 6 fired (the gradient's mask, 0 there, drops the strongest units), and no lattice.
- 'masked': max-pool -> unpool into the switches; ReLU -> ReLU of the signal times the forward
  mask (the activation's derivative: only units that fired pass it on, ReLU6's saturated ones do
  not); conv -> transposed conv. This is guided backprop (Springenberg et al. 2014) seeded as Z&F
  seed it; it equals Captum's NeuronGuidedBackprop.
- 'zf': the pure Z&F rule, the forward mask ignored (ReLU of the signal only); it equals
  Captum's NeuronDeconvolution. On deep layers of VGG it gives grey lattices, and through the
  strided convolutions of nets without max-pools (EfficientNet) a checkerboard: the transposed
  stride-2 convolutions spread a positive signal unevenly and nothing masks it back.
BatchNorm in eval: its per-channel scale; residual sums: the signal goes down both branches.
Each rule is the backward pass of the network with a modified ReLU backward
(`cnnvis.attribution.modified_relu`).

Seed of a channel (`seed=`), at the chosen layer's output:
- 'sum' (default): 1 at every unit where the channel fired (output > 0), 0 elsewhere: the
  projection of the channel's total rectified activation (its gradient under the masked rule).
  Every firing unit counts once, so weak-but-wide responses are not drowned by the peak.
- 'max' (Z&F Fig. 2): only its strongest unit, with its value, so the projection is zero outside
  that unit's receptive field (`also_units=True` adds these to any seed, in the same sweep).
- 'map': its whole rectified feature map, each unit weighted by its value (the deep
  visualization toolbox's view).
Measured in bench/deconv_depth.py (median edge correlation with the photo / lattice share, top-3
channels): 'sum' is the seed that shows the photo at vgg16_hed conv4_3 (+0.32 vs 'map' +0.22,
'max' -0.03 on the tuning photos); ones over the whole map (also units that did not fire) score
higher still (+0.39) but draw the same picture for every channel (top-3 pairwise correlation 0.98,
none with the channel's own map), so they are not offered.
Reconstructions are always full size, in input coordinates; pictures crop them
(`cnnvis.viz.deconv_panel`).

Steps: check the arguments; one forward pass (batch 1) records the tape of leaf modules and the
chosen layers' outputs (`_record_forward`); the seeds are picked (`_seeds`); every chosen layer's
top-k channels are projected in ONE batched backward sweep that starts at the deepest layer with
its k seeds, goes down segment by segment and, at each shallower chosen layer, appends that
layer's k seeds to the batch -- on a plain chain of modules (VGG) the rules run explicitly
(`_Chain`), otherwise autograd runs them (`_autograd_sweep`). The work is the floor: the sum of
each layer's own backward cost, batched.
On a CPU the batch is cut into blocks of rows of at most `_CPU_BLOCK_NUMEL` elements per tensor
(at 224 px: one row at full resolution, more deeper down), each carried down to the pixels
before the next: fresh multi-hundred-MB buffers cost a page fault per 4 KiB (measured: as much
as the transposed convolutions themselves), while blocks this small are recycled by malloc. On a
GPU the whole batch goes down as one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnvis.attribution.base import check_input, model_parts
from cnnvis.attribution.modified_relu import RELU_LIKE, modified_relu, unstride
from cnnvis.errors import CnnvisError

RULES = ("fired", "masked", "zf")
DEFAULT_RULE = "fired"
SEEDS = ("sum", "max", "map")
DEFAULT_SEED = "sum"
# what each rule does, in a few words (picture titles, captions, --help)
RULE_TEXT = {
    "fired": "fired rule: Z&F with the mask of the units that fired; strided convs undone by nearest resize "
             "(no checkerboard)",
    "masked": "masked rule: Z&F with the forward ReLU mask (= guided backprop)",
    "zf": "pure Z&F rule: ReLU of the signal, forward mask ignored (= Captum's deconvolution)",
}
# what each seed is, in a few words (picture titles, captions, --help)
SEED_TEXT = {
    "sum": "seed: every unit where the channel fired, weighted 1 (its total activation)",
    "max": "seed: the channel's strongest unit alone (Z&F Fig. 2)",
    "map": "seed: the channel's whole rectified map, each unit weighted by its value",
}
_RELU_RULE = {"fired": "fired", "masked": "guided", "zf": "deconvnet"}  # the modified-ReLU backward each rule uses


@dataclass
class DeconvResult:
    """Per chosen layer (in the order asked): names, top channels, their maps and projections."""

    layers: list[str]                 # dotted module names
    labels: list[str]                 # the names as given (aliases kept)
    channels: list[Tensor]            # (k,) channel indices, strongest first
    norms: list[Tensor]               # (k,) L2 norms of the rectified feature maps
    activations: list[Tensor]         # (k, h, w) rectified feature maps
    reconstructions: list[Tensor]     # (k, C, H, W) projections into input space (full size)
    max_pools: int = 0                # max-pool layers crossed (0: the rule has no switches)
    notes: list[str] = field(default_factory=list)
    engine: str = "chain"             # 'chain': explicit batched rules; 'autograd': graph with skips
    rule: str = DEFAULT_RULE          # 'fired', 'masked' or 'zf'
    seed: str = DEFAULT_SEED          # 'sum' (firing units, 1 each), 'max' (strongest unit), 'map' (rectified map)
    units: list[Tensor] = field(default_factory=list)  # (k, 2) (y, x) of each channel's strongest unit
    strided: int = 0                  # convolutions with stride > 1 crossed
    unit_reconstructions: list[Tensor] | None = None  # (k, C, H, W) seed 'max' projections (also_units=True)
    likeness: list[float] = field(default_factory=list)  # per layer: how alike its top-k projections are (_likeness)

    @property
    def rule_text(self) -> str:
        """What the rule does, in a few words (for titles and captions)."""
        return RULE_TEXT[self.rule]

    @property
    def seed_text(self) -> str:
        """What the seed is, in a few words (for titles and captions)."""
        return SEED_TEXT[self.seed]


# ---------------------------------------------------------------------- the entry point
def deconvnet(model, x: Tensor, layers: Sequence[str] | None = None, top: int = 3, *, seed: str = DEFAULT_SEED,
              rule: str = DEFAULT_RULE, channels: Sequence[int] | None = None,
              also_units: bool = False) -> DeconvResult:
    """Project the `top` strongest channels of each layer in `layers` to input space, one backward sweep.

    seed: 'sum' (every unit where the channel fired, weighted 1), 'max' (each channel's strongest
    unit, Z&F Fig. 2) or 'map' (its whole rectified map).
    rule: 'fired' (Z&F with the mask of the units that fired, strided convs undone by nearest resize),
    'masked' (Z&F with the forward ReLU mask, = guided backprop) or 'zf' (the pure rule).
    channels: project these channels of every layer instead (e.g. the channel with the highest max).
    also_units: also project each channel's strongest unit alone (res.unit_reconstructions, the
    Fig. 2 crop view), as extra rows of the same sweep (the same tensors when seed is 'max').

    x: (1, C, H, W) with the model's C channels (3 = RGB, 1 = grey; in [0, 1] for a VisModel). Returns a DeconvResult; the model is unchanged.
    """
    from cnnvis.utils import model_guard

    module, normalize, _ = model_parts(model)
    labels, names = check_args(model, layers, top, seed, rule)
    x = check_input(x, _device(module), model)
    if x.shape[0] != 1:
        raise CnnvisError(f"deconvnet projects one image at a time; got a batch of {x.shape[0]}")
    with model_guard(module), torch.enable_grad(), modified_relu(module, _RELU_RULE[rule], RELU_LIKE):
        fwd = _record_forward(module, normalize, x, names, resize=rule == "fired")
        picked = {n: _seeds(fwd.outputs[n], top, seed, channels) for n in fwd.order}
        extra = also_units and seed != "max"  # the strongest units' seeds join the batch as more rows
        seeds = {n: torch.cat([p.seeds, _unit_seeds(p)]) if extra else p.seeds for n, p in picked.items()}
        chain = _Chain.plan(fwd, rule)
        if chain is not None:
            recon, engine = chain.run(seeds), "chain"
        else:
            recon, engine = _autograd_sweep(fwd, seeds), "autograd"
    k = {n: len(p.channels) for n, p in picked.items()}
    units_rec = None
    if also_units:
        units_rec = [(recon[n][k[n]:] if extra else recon[n]).cpu() for n in names]
    recon = {n: r[:k[n]] for n, r in recon.items()}
    alike = [_likeness(recon[n]) for n in names]
    return DeconvResult(
        layers=names, labels=labels,
        channels=[picked[n].channels.cpu() for n in names], norms=[picked[n].norms.cpu() for n in names],
        activations=[picked[n].maps.cpu() for n in names], reconstructions=[recon[n].cpu() for n in names],
        max_pools=fwd.max_pools, notes=_notes(fwd, rule) + _alike_note(labels, alike, rule), engine=engine,
        rule=rule, seed=seed, units=[picked[n].units.cpu() for n in names], strided=fwd.strided,
        unit_reconstructions=units_rec, likeness=alike)


def check_args(model, layers, top, seed, rule) -> tuple[list[str], list[str]]:
    """-> (labels as given or the model's default layers, dotted names); CnnvisError on bad values."""
    from cnnvis.layers import default_layers, resolve_layer

    if top < 1:
        raise CnnvisError(f"top must be at least 1, got {top}")
    if seed not in SEEDS:
        raise CnnvisError(f"seed must be 'sum' (every unit where the channel fired), 'max' (its strongest unit) or "
                          f"'map' (its whole rectified map), got {seed!r}")
    if rule not in RULES:
        raise CnnvisError(f"rule must be 'fired' (Z&F with the mask of the units that fired, strided convolutions "
                          f"undone by nearest resize), 'masked' (Z&F with the forward ReLU mask) or 'zf' (the pure "
                          f"Z&F rule), got {rule!r}")
    labels = list(layers) if layers else default_layers(model)
    if not labels:
        raise CnnvisError("no layers to project; give some in layers")
    names = [resolve_layer(model, n) for n in labels]
    return labels, names


def _notes(fwd: _Forward, rule: str) -> list[str]:
    notes = []
    if fwd.max_pools == 0:
        notes.append("no max-pool layers on the way down: no switches to record; the signal goes down through "
                     "ReLUs and transposed convolutions")
    if rule == "zf" and not fwd.strided:
        notes.append("pure Z&F rule: the forward mask is ignored, so the signal also flows through units that never "
                     "fired; deep layers then show a grey lattice rather than the photo (vgg16_hed from conv3_3 on; "
                     "the masked rule keeps the photo's structure)")
    if rule == "masked" and fwd.strided:
        notes.append(f"masked rule through {fwd.strided} strided convolutions: their transposes insert zeros between "
                     f"units, which leaves a faint lattice (the default 'fired' rule resizes instead)")
    if rule == "fired" and fwd.strided:
        notes.append(f"fired rule: {fwd.strided} strided convolutions undone by nearest resize then their filters "
                     f"(Odena et al. 2016), not by zero insertion: no lattice from the strides")
    if rule == "zf" and fwd.strided:
        notes.append(f"pure Z&F rule through {fwd.strided} strided convolutions: their transposed convolutions "
                     f"spread the signal unevenly and no forward mask takes it back, so deep layers show a "
                     f"checkerboard lattice rather than the photo (the masked rule keeps the photo's structure)")
    return notes


ALIKE = 0.9  # likeness above which a layer's projections are said to look alike


def _likeness(rec: Tensor) -> float:
    """(k, C, H, W) projections -> median pairwise Pearson correlation of their magnitudes (sum_c |r|,
    averaged over 8 x 8 px cells); nan for fewer than 2. Near 1: the same picture whatever the channel."""
    if rec.shape[0] < 2:
        return float("nan")
    a = F.avg_pool2d(rec.detach().abs().sum(1, keepdim=True).float(), 8, ceil_mode=True).flatten(1)
    a = a - a.mean(1, keepdim=True)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-30)
    c = a @ a.t()
    i, j = torch.triu_indices(len(a), len(a), 1)
    return float(c[i, j].median())


def _alike_note(labels: list[str], alike: list[float], rule: str) -> list[str]:
    same = [f"{lab} {v:.2f}" for lab, v in zip(labels, alike) if v > ALIKE]
    if not same or rule == "zf":
        return []
    return [f"top channels' projections alike (correlation {', '.join(same)}): there the {rule} rule mostly "
            f"redraws the photo's edges whatever the channel (as guided backprop does), so they show where the "
            f"channels fire more than what they detect"]


# ---------------------------------------------------------------------- step 1: the forward pass
class _Stop(Exception):
    pass


@dataclass
class _Forward:
    """What the one forward pass recorded."""

    tape: list[tuple[nn.Module, Tensor | None, Tensor]]  # every leaf module run: (module, input, output)
    order: list[str]                                       # chosen layers in execution order
    outputs: dict[str, Tensor]                             # chosen layer -> its output (1, C, h, w)
    x: Tensor                                              # (1, C, H, W) the image, requires grad
    x_in: Tensor                                           # what the network got (x normalized, or x)
    max_pools: int
    strided: int


def _record_forward(module: nn.Module, normalize, x: Tensor, names: list[str], resize: bool = False) -> _Forward:
    """Run the network on x up to the deepest chosen layer with the Z&F hooks in place (resize: strided
    convolutions go back by nearest resize, `unstride`)."""
    uniq = list(dict.fromkeys(names))
    order: list[str] = []
    outputs: dict[str, Tensor] = {}
    tape: list[tuple[nn.Module, Tensor | None, Tensor]] = []

    def keep(name):
        def fn(mod, inp, out):
            if name in outputs or not torch.is_tensor(out):
                return None
            outputs[name] = out
            order.append(name)
            if len(outputs) == len(uniq):
                raise _Stop
            return None
        return fn

    def record(mod, inp, out):
        tape.append((mod, inp[0] if inp else None, out))

    handles = _zf_hooks(module, resize)
    try:
        for m in module.modules():
            if not list(m.children()):
                handles.append(m.register_forward_hook(record))
        for n in uniq:  # after the ReLU-rule hooks, so a ReLU layer's seed goes through its rule
            handles.append(module.get_submodule(n).register_forward_hook(keep(n)))
        xg = x.requires_grad_(True)
        x_in = normalize(xg) if normalize is not None else xg
        try:
            module(x_in)
        except _Stop:
            pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in uniq if n not in outputs]
    if missing:
        raise CnnvisError(f"layers {missing} did not run in the forward pass; pick layers the model uses")
    for n in uniq:
        if outputs[n].dim() != 4:
            raise CnnvisError(f"layer {n!r} has no feature maps (output shape {tuple(outputs[n].shape[1:])}); "
                              f"deconvnet needs conv layers")
    pools = sum(isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) for m, _, _ in tape)
    strided = sum(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m, _, _ in tape)
    return _Forward(tape, order, outputs, xg, x_in, pools, strided)


# ---------------------------------------------------------------------- step 2: the seeds
class _Picked(NamedTuple):
    channels: Tensor  # (k,) long
    norms: Tensor     # (k,)
    maps: Tensor      # (k, h, w) rectified maps
    units: Tensor     # (k, 2) (y, x) of each map's strongest unit
    seeds: Tensor     # (k, 1, C, h, w) one seed per row, every other channel zero


def _seeds(act: Tensor, top: int, seed: str, chosen: Sequence[int] | None = None) -> _Picked:
    """(1, C, h, w) activation -> the `top` strongest channels by norm (or the `chosen` ones) and their seeds."""
    r = act.detach()[0].clamp(min=0)
    C = r.shape[0]
    norms = r.flatten(1).norm(dim=1)
    if chosen is not None:
        bad = [c for c in chosen if not 0 <= int(c) < C]
        if bad:
            raise CnnvisError(f"channel {bad[0]} does not exist: the layer has {C} channels (0..{C - 1})")
        ch = torch.as_tensor([int(c) for c in chosen], dtype=torch.long, device=r.device)
        nk, k = norms[ch], len(ch)
    else:
        k = min(top, C)
        nk, ch = norms.topk(k)
    maps = r[ch]
    flat = maps.flatten(1)
    pos = flat.argmax(1)
    units = torch.stack([pos // maps.shape[-1], pos % maps.shape[-1]], 1)
    if seed == "max":
        sel = _strongest(maps, pos)
    elif seed == "sum":
        sel = (maps > 0).to(maps.dtype)
    else:
        sel = maps
    seeds = torch.zeros((k, 1, *r.shape), dtype=r.dtype, device=r.device)
    seeds[torch.arange(k), 0, ch] = sel
    return _Picked(ch, nk, maps, units, seeds)


def _strongest(maps: Tensor, pos: Tensor) -> Tensor:
    """(k, h, w) rectified maps, (k,) flat argmax -> (k, h, w): each map's strongest unit alone."""
    flat = maps.flatten(1)
    return torch.zeros_like(flat).scatter_(1, pos[:, None], flat.gather(1, pos[:, None])).view_as(maps)


def _unit_seeds(p: _Picked) -> Tensor:
    """(k, 1, C, h, w): the picked channels' strongest units alone (seed 'max')."""
    pos = p.units[:, 0] * p.maps.shape[-1] + p.units[:, 1]
    seeds = torch.zeros_like(p.seeds)
    seeds[torch.arange(len(p.channels)), 0, p.channels] = _strongest(p.maps, pos)
    return seeds


# ---------------------------------------------------------------------- step 3a: the explicit sweep (chains)
# CPU: no tensor the sweep allocates is bigger than this many elements (16 MB of float32).
# Freshly mapped memory costs a page fault per 4 KiB page (as much as the convolution itself at
# 224 px); allocations below glibc's mmap threshold are recycled from the heap without faults.
# So the batch is cut into blocks of rows that each fit, and every block is carried down to the
# pixels before the next one starts (depth first: few blocks alive at a time). On a GPU the
# caching allocator recycles memory anyway: one block, as big as the batch.
_CPU_BLOCK_NUMEL = 1 << 22


class _Chain:
    """The rules run explicitly, batched, on a plain chain of modules (VGG-like trunks).

    Speed (CPU): signals are kept channels-last (oneDNN's transposed convolution is up to 3x
    faster than on NCHW batches), the ReLU rule and BN scale run in place, unpooling is one pass
    (the ReLU rule below a max-pool runs on the 4x smaller signal before it, its forward mask
    folded into the switch mask), and big batches are cut into blocks of rows that stay below
    `_CPU_BLOCK_NUMEL` elements.
    """

    def __init__(self, fwd: _Forward, steps: list[tuple[nn.Module, Tensor, Tensor]], rule: str) -> None:
        self.fwd, self.rule = fwd, rule
        self.steps = steps[::-1]  # deepest module first
        at_out = {id(o): n for n, o in fwd.outputs.items()}
        self.seed_at = [at_out.get(id(o)) for _, _, o in self.steps]
        self.budget = _CPU_BLOCK_NUMEL if fwd.x.device.type == "cpu" else None
        self._unpools: dict[int, _Unpool2d] = {}
        self._weights: dict[int, Tensor] = {}  # channels-last copies of the filters (else every call converts)
        self._masks: dict[int, Tensor] = {}    # forward ReLU masks (rules 'fired', 'masked'), channels-last

    @classmethod
    def plan(cls, fwd: _Forward, rule: str) -> _Chain | None:
        """A _Chain when the modules from the input to the deepest chosen layer form a simple chain
        of conv / max-pool / ReLU-like / BN / identity modules; else None (autograd does the sweep)."""
        tape = fwd.tape
        if not tape:
            return None
        deepest = fwd.outputs[fwd.order[-1]]
        end = next((j for j, (_, _, o) in enumerate(tape) if o is deepest), None)
        if end is None or tape[0][1] is not fwd.x_in:
            return None
        tape = tape[:end + 1]
        for j, (m, inp, out) in enumerate(tape):
            if j and inp is not tape[j - 1][2]:
                return None
            ok = (isinstance(m, RELU_LIKE) or type(m) in (nn.Identity, nn.Dropout, nn.Dropout2d)
                  or (type(m) is nn.BatchNorm2d and not m.training and m.track_running_stats)
                  or (isinstance(m, nn.Conv2d) and _conv_geometry(m, inp, out) is not None)
                  or (type(m) is nn.MaxPool2d and not m.return_indices))
            if not ok or not torch.is_tensor(inp) or inp.dim() != 4:
                return None
        return cls(fwd, tape, rule)

    def run(self, seeds: dict[str, Tensor]) -> dict[str, Tensor]:
        """{layer: (k, 1, C, h, w) seeds} -> {layer: (k, C, H, W) projections onto the image x}."""
        rows: dict[str, range] = {}  # layer -> its rows in the batch (deepest layer first)
        done: list[tuple[list[int], Tensor]] = []
        stack: list[tuple[int, Tensor | None, list[int]]] = [(0, None, [])]  # blocks waiting: (step, G, rows)
        with torch.no_grad():
            while stack:
                j, G, ids = stack.pop()
                G, ids = self._down(j, G, ids, seeds, rows, stack)
                if G is not None:
                    done.append((ids, G))
        order = torch.tensor([i for ids, _ in done for i in ids])
        G = torch.cat([g for _, g in done])[order.argsort()] if len(done) > 1 else done[0][1]
        gx = self._to_pixels(G)
        return {name: gx[r.start:r.stop].detach().contiguous() for name, r in rows.items()}

    def _down(self, j: int, G: Tensor | None, ids: list[int], seeds, rows, stack) -> tuple[Tensor | None, list[int]]:
        """Carry one block of rows from step j to the network input, joining seeds on the way;
        rows beyond the CPU budget are pushed on `stack` for later."""
        cl = torch.channels_last
        clamped = False  # True right after an unpool that already applied the ReLU rule below it
        while j < len(self.steps):
            m, inp, out = self.steps[j]
            name = self.seed_at[j]
            if name is not None and name not in rows:  # this layer's seeds join the batch here
                s = seeds[name][:, 0].clone(memory_format=cl)  # our own copy: later steps work in place
                n0 = sum(len(r) for r in rows.values())
                rows[name] = range(n0, n0 + s.shape[0])
                if G is None:
                    G, ids = s, list(rows[name])
                elif self.budget is None or G.numel() + s.numel() <= self.budget:
                    G, ids = torch.cat([G, s]).contiguous(memory_format=cl), ids + list(rows[name])
                else:
                    stack.append((j, s, list(rows[name])))
            if G is None:
                j += 1
                continue
            per_row = inp[0].numel()  # what a conv / unpool writes per row
            if self.budget is not None and G.shape[0] > 1 and G.shape[0] * per_row > self.budget \
                    and isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                step = max(1, self.budget // per_row)
                for a in range((G.shape[0] - 1) // step * step, 0, -step):  # later blocks wait
                    stack.append((j, G[a:a + step], ids[a:a + step]))
                G, ids = G[:step], ids[:step]
            if isinstance(m, nn.MaxPool2d):
                G, clamped = self._unpool(j, G)
            else:
                if not (clamped and isinstance(m, RELU_LIKE)):
                    G = self._rule(j, G)
                clamped = False
            j += 1
        return G, ids

    def _rule(self, j: int, G: Tensor) -> Tensor:
        """One non-pool module's backward rule on a block of signals (in place where it can)."""
        m, inp, out = self.steps[j]
        if isinstance(m, RELU_LIKE):
            G.clamp_(min=0)
            if self.rule != "zf":
                G.mul_(self._mask(j))
        elif isinstance(m, nn.Conv2d):
            if j not in self._weights:
                self._weights[j] = m.weight.detach().contiguous(memory_format=torch.channels_last)
            G = _conv_t(G, m, _conv_geometry(m, inp, out), self._weights[j])
            if self.rule == "fired" and max(m.stride) > 1:
                G = unstride(G, m.stride)
        elif isinstance(m, nn.BatchNorm2d):
            scale = torch.rsqrt(m.running_var + m.eps)
            if m.weight is not None:
                scale = scale * m.weight
            G.mul_(scale.view(1, -1, 1, 1))
        return G  # identity, dropout in eval: nothing to do

    def _unpool(self, j: int, G: Tensor) -> tuple[Tensor, bool]:
        """Unpool into the switches. The ReLU rule right below (when no seed joins there) runs first,
        on the 4x smaller signal: its clamp commutes with unpooling and its forward mask is folded
        into the switch mask. Returns (signal, whether that ReLU rule is done)."""
        below = j + 1 < len(self.steps) and isinstance(self.steps[j + 1][0], RELU_LIKE) \
            and self.seed_at[j + 1] is None
        if j not in self._unpools:
            m, inp, _ = self.steps[j]
            extra = self._mask(j + 1) if below and self.rule != "zf" else None
            self._unpools[j] = _Unpool2d(m, inp, extra)
        if below:
            G.clamp_(min=0)
        return self._unpools[j](G), below

    def _mask(self, j: int) -> Tensor:
        """(1, C, h, w) forward mask of ReLU-like step j: rule 'fired': [output > 0] (the units that fired);
        'masked': the activation's derivative at its input (the same for nn.ReLU; 0 where ReLU6 saturates)."""
        if j not in self._masks:
            m, inp, out = self.steps[j]
            if self.rule == "fired":
                self._masks[j] = (out.detach() > 0).to(out.dtype).contiguous(memory_format=torch.channels_last)
                return self._masks[j]
            with torch.enable_grad():
                z = inp.detach().requires_grad_(True)
                (d,) = torch.autograd.grad(m.forward(z).sum(), z)  # .forward: no hooks
            self._masks[j] = d.contiguous(memory_format=torch.channels_last)
        return self._masks[j]

    def _to_pixels(self, G: Tensor) -> Tensor:
        """(n, C, H, W) signals at the network input -> (n, C, H, W) at the image x: the
        preprocessing (per-channel affine, maybe an RGB->BGR flip) back to [0, 1] pixels."""
        x, x_in = self.fwd.x, self.fwd.x_in
        if x_in is x:
            return G
        (gx,) = torch.autograd.grad(x_in, x, G.contiguous().unsqueeze(1), retain_graph=True, is_grads_batched=True)
        return gx[:, 0]


def _conv_geometry(mod: nn.Conv2d, x: Tensor, out: Tensor):
    """(pad, output_padding, crop) for the transposed conv that maps `out` back onto `x`, or None."""
    k, s, d = mod.kernel_size, mod.stride, mod.dilation
    if type(mod).__name__ == "Conv2dSame":  # timm: pad_same() then an unpadded conv
        from timm.layers.padding import get_same_padding

        ph = get_same_padding(x.shape[-2], k[0], s[0], d[0])
        pw = get_same_padding(x.shape[-1], k[1], s[1], d[1])
        size = (x.shape[-2] + ph, x.shape[-1] + pw)
        pad, crop = (0, 0), (ph // 2, x.shape[-2], pw // 2, x.shape[-1])
    elif type(mod) is nn.Conv2d and mod.padding_mode == "zeros" and not isinstance(mod.padding, str):
        size, pad, crop = tuple(x.shape[-2:]), tuple(mod.padding), None
    else:
        return None
    full = [(out.shape[-2 + i] - 1) * s[i] - 2 * pad[i] + d[i] * (k[i] - 1) + 1 for i in range(2)]
    out_pad = tuple(size[i] - full[i] for i in range(2))
    if min(out_pad) < 0 or any(out_pad[i] >= max(s[i], d[i]) for i in range(2)):
        return None
    return pad, out_pad, crop


def _conv_t(g: Tensor, mod: nn.Conv2d, geom, weight: Tensor | None = None) -> Tensor:
    """(n, out, h, w) signal -> (n, in, H, W): the transposed conv with the layer's own filters."""
    pad, out_pad, crop = geom
    weight = mod.weight.detach() if weight is None else weight
    gx = F.conv_transpose2d(g, weight, None, mod.stride, pad, out_pad, mod.groups, mod.dilation)
    if crop is not None:
        t, h, left, w = crop
        gx = gx[..., t:t + h, left:left + w]
    return gx


class _Unpool2d:
    """Max-unpooling of a batch of signals into the switches of one image's max-pool.

    Non-overlapping windows (kernel == stride, no padding or dilation): nearest upsampling of the
    signal times a one-hot mask of the switches, both channels-last (no zero-fill + scatter).
    Anything else: zero-fill + scatter-add into the recorded argmax positions.
    Either way the result equals autograd's max-pool backward with the same indices, times
    `extra` (1, C, H, W) when given (the forward mask of the ReLU below the pool).
    """

    def __init__(self, m: nn.MaxPool2d, inp: Tensor, extra: Tensor | None = None) -> None:
        _, sw = F.max_pool2d(inp, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True)
        self.sw, self.shape, self.extra = sw, tuple(inp.shape[1:]), extra
        two = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        k, st, pd, dl = two(m.kernel_size), two(m.stride or m.kernel_size), two(m.padding), two(m.dilation)
        C, H, W = self.shape
        h, w = sw.shape[-2:]
        self.mask = None
        if k == st and pd == (0, 0) and dl == (1, 1) and h * k[0] <= H and w * k[1] <= W:
            base = (torch.arange(h, device=sw.device).view(h, 1) * (k[0] * W)
                    + torch.arange(w, device=sw.device).view(1, w) * k[1])
            off = sw[0] - base                                  # (C, h, w): offset inside the window
            pos = (off // W) * k[1] + off % W                   # window-local flat position
            one = F.one_hot(pos, k[0] * k[1]).to(inp.dtype)     # (C, h, w, k0*k1)
            mask = inp.new_zeros((1, H, W, C))                  # channels-last (1, C, H, W)
            mask[0, :h * k[0], :w * k[1]] = one.view(C, h, w, k[0], k[1]).permute(1, 3, 2, 4, 0).reshape(
                h * k[0], w * k[1], C)
            self.mask = mask.permute(0, 3, 1, 2)
            if extra is not None:
                self.mask = self.mask * extra
            self.k = k

    def __call__(self, g: Tensor) -> Tensor:
        C, H, W = self.shape
        B = g.shape[0]
        if self.mask is None:
            flat = g.new_zeros((B, C, H * W))
            idx = self.sw.reshape(1, C, -1).expand(B, -1, -1)
            out = flat.scatter_add_(2, idx, g.contiguous().reshape(B, C, -1)).view(B, C, H, W)
            out = out.contiguous(memory_format=torch.channels_last)
            return out if self.extra is None else out.mul_(self.extra)
        # nearest upsampling (a fast channels-last kernel) times the one-hot switch mask
        up = F.interpolate(g, scale_factor=self.k, mode="nearest")
        if up.shape[-2:] != (H, W):  # the rows / columns the pool never covered get zero
            up = F.pad(up, (0, W - up.shape[-1], 0, H - up.shape[-2])).contiguous(memory_format=torch.channels_last)
        return up.mul_(self.mask)


# ---------------------------------------------------------------------- step 3b: the autograd sweep (skips)
def _autograd_sweep(fwd: _Forward, seeds: dict[str, Tensor]) -> dict[str, Tensor]:
    """One batched backward sweep from the deepest layer to x; returns {layer: (k, C, H, W)}.

    Rows of the batch are (layer, channel) pairs, deepest layer first. The sweep stops at each
    shallower chosen layer whose output every path down to x goes through (always so in VGG),
    and joins that layer's seeds to the batch there: each segment is back-propagated once, for
    exactly the rows that reach it. Where a skip connection jumps over a layer, that layer is
    seeded in the same segment instead (zero rows elsewhere), because the ReLU rule is not
    linear: signals must merge before they cross a ReLU.
    """
    order, orig, x = fwd.order, fwd.outputs, fwd.x
    rows: list[tuple[str, int]] = []
    group: list[str] = []                # outputs seeded in the current segment
    grads_at: dict[str, Tensor] = {}     # (n, 1, C, h, w) signal per group output
    n = 0

    def seed(name: str) -> None:
        nonlocal n
        s = seeds[name]
        k = s.shape[0]
        for g in group:  # earlier outputs get zero rows for the new channels
            grads_at[g] = torch.cat([grads_at[g], grads_at[g].new_zeros((k, *grads_at[g].shape[1:]))])
        grads_at[name] = torch.cat([s.new_zeros((n, *s.shape[1:])), s]) if n else s
        group.append(name)
        rows.append((name, k))
        n += k

    for i in range(len(order) - 1, -1, -1):
        name = order[i]
        if name not in grads_at:
            seed(name)
        below = orig[order[i - 1]] if i > 0 else None
        if below is not None and not _all_paths_through([orig[g] for g in group], below, x):
            continue  # a skip connection jumps over `below`: seed it in this segment
        target = below if below is not None else x
        g = _batched_vjp([orig[g] for g in group], target, [grads_at[g] for g in group], keep=below is not None)
        group.clear()
        grads_at.clear()
        if below is None:
            gx = g
        else:
            # the shallower layer's own seeds are appended to the signal that arrived there
            s = seeds[order[i - 1]]
            k = s.shape[0]
            grads_at[order[i - 1]] = torch.cat([g, s])
            group.append(order[i - 1])
            rows.append((order[i - 1], k))
            n += k
    out, at = {}, 0
    for name, k in rows:
        out[name] = gx[at:at + k, 0].detach()
        at += k
    return out


def _batched_vjp(outputs: list[Tensor], target: Tensor, grads: list[Tensor], keep: bool) -> Tensor:
    """(n, ...) cotangents per output -> (n, 1, ...) signal at `target`, one autograd call per row.

    (autograd's is_grads_batched runs convolutions row by row anyway, slower than this loop.)
    """
    n = grads[0].shape[0]
    out = []
    for r in range(n):
        (g,) = torch.autograd.grad(outputs, [target], [gr[r] for gr in grads], retain_graph=keep or r < n - 1,
                                   allow_unused=True)
        out.append(torch.zeros_like(target) if g is None else g)
    return torch.stack(out)


def _all_paths_through(starts: list[Tensor], stop: Tensor, x: Tensor) -> bool:
    """Does every autograd path from `starts` down to `x` pass through `stop`'s node?"""
    stop_node = stop.grad_fn
    if stop_node is None:
        return False
    stack = [t.grad_fn for t in starts if t.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node is stop_node:
            continue
        if getattr(node, "variable", None) is x:
            return False
        stack.extend(nf for nf, _ in node.next_functions)
    return True


class _ConvT(torch.autograd.Function):
    """Forward: the conv's own output. Backward: transposed conv with the same filters."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, y, weight, stride, pad, dilation, groups, out_pad, crop, resize):
        return y.view_as(y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, ctx.weight, ctx.stride, ctx.pad, ctx.dilation, ctx.groups, ctx.out_pad, ctx.crop, ctx.resize = inputs

    @staticmethod
    def backward(ctx, g):
        gx = F.conv_transpose2d(g, ctx.weight, None, ctx.stride, ctx.pad, ctx.out_pad, ctx.groups, ctx.dilation)
        if ctx.crop is not None:  # TF-style 'same' padding: drop the padded border
            t, h, left, w = ctx.crop
            gx = gx[..., t:t + h, left:left + w]
        if ctx.resize and max(ctx.stride) > 1:
            gx = unstride(gx, ctx.stride)
        return gx, None, None, None, None, None, None, None, None, None


class _Unpool(torch.autograd.Function):
    """Forward: the pool's own output. Backward: unpool into the recorded switches (argmax positions)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, y, switches):
        return y.view_as(y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, ctx.switches = inputs
        ctx.in_shape = tuple(x.shape)

    @staticmethod
    def backward(ctx, g):
        C, H, W = ctx.in_shape[-3:]
        flat = g.new_zeros((*g.shape[:-2], H * W))
        idx = ctx.switches.reshape(*ctx.switches.shape[:-2], -1)
        gx = flat.scatter_add(-1, idx, g.reshape(*g.shape[:-2], -1)).reshape(*g.shape[:-2], H, W)
        return gx, None, None


def _conv_hook(mod: nn.Conv2d, inp, out, resize: bool = False):
    x = inp[0]
    if not (torch.is_tensor(x) and x.dim() == 4 and out.dim() == 4 and x.requires_grad):
        return None
    geom = _conv_geometry(mod, x, out)
    if geom is None:
        return None  # anything else: autograd's own conv backward (the same rule, unbatched kernels)
    pad, out_pad, crop = geom
    return _ConvT.apply(x, out, mod.weight.detach(), mod.stride, pad, mod.dilation, mod.groups, out_pad, crop, resize)


def _pool_hook(mod: nn.MaxPool2d, inp, out):
    x = inp[0]
    if not (torch.is_tensor(x) and x.dim() == 4 and x.requires_grad) or mod.return_indices:
        return None
    with torch.no_grad():  # record the switches
        _, sw = F.max_pool2d(x, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode, True)
    return _Unpool.apply(x, out, sw)


def _zf_hooks(module: nn.Module, resize: bool = False) -> list:
    """Explicit Z&F backward rules for plain convs and max-pools (batched kernels under vmap); resize: strided
    convs go back by nearest resize (`unstride`)."""
    hs = []
    conv = functools.partial(_conv_hook, resize=resize)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            hs.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.MaxPool2d):
            hs.append(m.register_forward_hook(_pool_hook))
    return hs


def _device(module: nn.Module) -> torch.device:
    from cnnvis.utils import module_device

    return module_device(module)
