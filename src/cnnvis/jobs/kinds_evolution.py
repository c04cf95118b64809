"""Job kind `evolution`: features across training (Zeiler & Fergus 2014, Fig. 4).

    run({"kind": "evolution", "model": "runs/mnist", "first": 6}, store=Store("cache/"))

A run trained with `cnnvis train --snapshots 1,2,5,10` keeps those epochs' weights as
checkpoints (`cnnvis.train.read_snapshots`). For each chosen snapshot this job runs two ordinary
sub-jobs through the same store (`JobContext.sub`): a `filters` job (the same layers, channels,
settings and seed for every snapshot, so that what differs is the weights) and, where the run's
dataset can be read, a `top_examples` job per layer. It draws them in one grid: rows = channels,
grouped by layer; columns = snapshots; each cell the channel's visualization with its top dataset
patches beside it. Each cell is stored once and reused by any later request for the same filters
or top examples.

Numbers besides the picture, per layer and snapshot: the correlation of each channel's filter
weights with those of the last snapshot, and the share of its top-k images it shares with the last
snapshot (how far the channel still is from what it becomes).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from cnnvis import defaults as D
from cnnvis.errors import CnnvisError
from cnnvis.jobs.helpers import Side, layer_label, preset_name, resolve_layers
from cnnvis.jobs.result import png_bytes
from cnnvis.jobs.spec import Spec, register

SMALL_SIDE = 64  # nets with inputs under this many pixels render their filters at their own input size


def run_data(model: str) -> tuple[str | None, str | None]:
    """(dataset ref, training split) recorded in a run's training block; (None, None) when there is none."""
    from cnnvis.models.refs import training_block

    t = training_block(model)
    if t is None or not isinstance(t.get("data"), str):
        return None, None
    return t["data"], t.get("split") if isinstance(t.get("split"), str) else None


@register
class EvolutionSpec(Spec):
    """Features across training (Zeiler & Fergus 2014, Fig. 4): the same channels' visualizations and
    top dataset examples at each snapshot of a `cnnvis train --snapshots` run, in one grid."""

    kind = "evolution"
    example = {"first": 2, "steps": 4, "k": 2, "limit": 16}  # needs a run folder with snapshots as model
    title = "features across training (a run's snapshots, Zeiler & Fergus Fig. 4)"
    snapshots: list[int] | None = None  # epochs (default: every snapshot of the run)
    layers: list[str] | None = None  # default: cnnvis.layers.default_layers (a small net: every conv)
    channels: list[int] | None = None  # the same channels of every layer (default: the first `first`)
    first: int = Field(D.Evolution.first, ge=1, le=512)
    preset: str | None = None  # filters' recipe (None: the filter grid's own)
    steps: int | None = Field(None, ge=1, le=100000)  # None: per layer (optvis.filters.layer_plan)
    size: Side | None = None  # None: a small net's input side, else per layer
    data: str | None = None  # top examples from this dataset (None: the run's own, when it can be read here)
    split: str | None = None
    k: int = Field(D.Evolution.k, ge=0, le=16)  # top examples per cell (0: none)
    limit: int | None = Field(None, ge=1)  # top examples from the first `limit` images only
    batch: int = Field(D.Evolution.batch, ge=1, le=256, exclude=True)  # speed only

    def datasets(self) -> list[str]:
        if not self.k:
            return []
        ref = self.data if self.data is not None else run_data(self.model)[0]
        if ref is None:
            return []
        from cnnvis.data.api import ALIASES, KNOWN

        known = ALIASES.get(ref.lower(), ref.lower()) in KNOWN and "/" not in ref
        return [ref] if known or Path(ref).exists() else []

    def normalized(self, vm):
        from cnnvis.layers import default_layers, list_layers
        from cnnvis.train import read_snapshots

        if self.weights is not None:
            raise CnnvisError("evolution shows a run's own snapshots; drop --weights (give the run folder as --model)")
        run_dir, snaps = read_snapshots(self.model)
        have = [s.epoch for s in snaps]
        want = sorted(set(self.snapshots)) if self.snapshots else have
        missing = [e for e in want if e not in have]
        if missing:
            raise CnnvisError(f"the run {self.model!r} has no snapshot of epoch {', '.join(map(str, missing))}; its "
                              f"snapshots are epochs {', '.join(map(str, have))}: give --snapshots from those (or "
                              f"train again with --snapshots {','.join(map(str, sorted(set(have) | set(missing))))})")
        layers = resolve_layers(vm, self.layers) if self.layers is not None else \
            resolve_layers(vm, default_layers(vm))
        if not layers:
            raise CnnvisError(f"model {vm.name!r} has no conv layers; give layers")
        infos = {i.name: i for i in list_layers(vm)}
        for n in layers:
            i = infos.get(n)
            if i is None or not i.spatial:
                spatial = [x.alias or x.name for x in infos.values() if x.spatial]
                raise CnnvisError(f"layer {layer_label(vm, n)!r} of {vm.name} has no feature maps (output "
                                  f"{'x'.join(map(str, i.shape)) if i and i.shape else 'none'}); evolution shows "
                                  f"conv layers: give one of {', '.join(spatial[:12])}")
        narrow = min(layers, key=lambda n: infos[n].shape[0])
        fewest = infos[narrow].shape[0]
        if self.channels is not None:
            chans = sorted(set(self.channels))
            bad = [c for c in chans if not 0 <= c < fewest]
            if bad:
                raise CnnvisError(f"channel {bad[0]} is out of range for layer {layer_label(vm, narrow)!r}, which has "
                                  f"{fewest} channels (0..{fewest - 1}); give channels in that range for every layer")
        else:
            chans = list(range(min(self.first, fewest)))
        size = self.size
        if size is None and min(vm.input_shape[1:]) < SMALL_SIDE:
            size = min(vm.input_shape[1:])  # a 28-px net's features tile a 28-px image
        data, split = self.data, self.split
        if self.k and data is None:
            data, split0 = self._run_dataset(vm)
            split = split if split is not None else split0
        elif self.k:  # given: refused now (one line) rather than after the first snapshot's renders
            from cnnvis.study.dataref import open_for_model

            open_for_model(vm, data, split, model_ref=self.model)
        return self.model_copy(update={"snapshots": want, "layers": layers, "channels": chans, "first": len(chans),
                                       "size": size, "preset": preset_name(self.preset) if self.preset else None,
                                       "data": data, "split": split if data is not None else None})

    def _run_dataset(self, vm) -> tuple[str | None, str | None]:
        """The run's training data and split, when they can be opened here (else (None, None))."""
        from cnnvis.study.dataref import open_for_model

        ref, split = run_data(self.model)
        if ref is None:
            return None, None
        try:
            open_for_model(vm, ref, split, model_ref=self.model)
        except CnnvisError:
            return None, None
        return ref, split

    def run(self, vm, ctx):
        from cnnvis.jobs.spec import make_spec
        from cnnvis.train import read_snapshots
        from cnnvis.viz.evolution import evolution_grid
        from cnnvis.viz.filters import dead_tile

        run_dir, snaps = read_snapshots(self.model)
        by_epoch = {s.epoch: s for s in snaps}
        log = ctx.log
        top_on = bool(self.k and self.data is not None)
        cols = []
        for j, e in enumerate(self.snapshots):
            ctx.check()
            ref = str(by_epoch[e].path)
            fres = ctx.sub(make_spec("filters", model=ref, layers=self.layers, channels=self.channels,
                                     preset=self.preset, steps=self.steps, size=self.size, seed=self.seed,
                                     batch=self.batch))
            tops = [ctx.sub(make_spec("top_examples", model=ref, data=self.data, split=self.split, layer=n, k=self.k,
                                      channels=self.channels, limit=self.limit, grids=False))
                    for n in self.layers] if top_on else []
            cols.append((e, by_epoch[e], fres, tops))
            if log is not None:
                log(f"evolution: epoch {e} ({j + 1}/{len(self.snapshots)})"
                    + (" [from the cache]" if fres.cached and all(t.cached for t in tops) else ""))

        # patches of the top examples: the dataset read once, images fetched as needed
        ds = None
        if top_on:
            from cnnvis.study.dataref import open_for_model

            ds = open_for_model(vm, self.data, self.split, model_ref=self.model, limit=self.limit)
        weights = [_layer_weights(ctx, str(by_epoch[e].path)) for e in self.snapshots]

        groups, cells = [], []
        last = len(cols) - 1
        layers_data = []
        for li, n in enumerate(self.layers):
            lab = layer_label(vm, n)
            rows = []
            per_snap = []
            for j, (e, snap, fres, tops) in enumerate(cols):
                lrow = fres.data["layers"][li]
                ov = _overlap(tops[li].data, cols[last][3][li].data, self.channels) if tops else None
                wc = _corr(weights[j].get(n), weights[last].get(n), self.channels)
                per_snap.append({"epoch": e, "dead": lrow["dead"], "grey": lrow["grey"],
                                 "values": lrow["values"], "weight_corr_to_last": wc, "top_overlap_with_last": ov,
                                 "filters_key": fres.key, "top_examples_key": tops[li].key if tops else None})
            for ci, c in enumerate(self.channels):
                line = []
                for j, (e, snap, fres, tops) in enumerate(cols):
                    lrow = fres.data["layers"][li]
                    name = f"tile_{li}_{c}.png"
                    s_ = int(lrow["size"])
                    side = s_ * -(-84 // s_) if s_ < 64 else s_  # small renders enlarged by a whole factor
                    # no tile: a channel that never fires on the sample photos at this epoch
                    im = fres.image(name).resize((side, side), 0) if name in fres.files else dead_tile(side)
                    patches, entries = [], []
                    if tops:
                        doc = tops[li].data
                        from cnnvis.study.receptive import RF
                        from cnnvis.study.top_examples import patch
                        from cnnvis.viz import to_pil

                        rf = RF(**doc["rf"]) if doc.get("rf") else None
                        for t in doc["top"][str(c)]:
                            img = ds[t["index"]][0]
                            patches.append(to_pil(patch(img, rf, t["y"], t["x"]) if rf else img))
                            entries.append({"index": t["index"], "value": t["value"], "class": t.get("class")})
                    line.append((im, patches))
                    cells.append({"layer": lab, "channel": c, "epoch": e, "dead": c in lrow["dead"],
                                  "value": lrow["values"][ci], "top": entries})
                rows.append((f"ch {c}", line))
            groups.append((f"{lab} ({n})" if lab != n else n, rows))
            layers_data.append({"layer": lab, "module": n, "snapshots": per_snap})
        col_labels = [f"epoch {e}" + (" (init)" if e == 0 else "") for e, *_ in cols]
        notes = [f"acc {s.held_out_accuracy:.3f}" if isinstance(s.held_out_accuracy, float) else "untrained"
                 if e == 0 else "" for e, s, *_ in cols]
        title = (f"{run_dir.name}: features across training, {len(self.channels)} channels x {len(self.layers)} "
                 f"layers" + (f"; right: top {self.k} patches of {self.data}" if top_on else ""))
        img, boxes = evolution_grid(groups, col_labels, col_notes=notes, title=title, k=self.k if top_on else 0)
        flat = [b for line in boxes for b in line]
        for cell, box in zip(cells, flat):
            cell["box"] = list(box)
        data = {"run": run_dir.name, "snapshots": [{"epoch": e, "model": str(s.path), "held_out_accuracy":
                                                    s.held_out_accuracy} for e, s, *_ in cols],
                "layers": layers_data, "channels": list(self.channels), "cells": cells,
                "top_examples": ({"data": self.data, "split": self.split, "k": self.k, "images": len(ds)}
                                 if top_on else None),
                "note": None if top_on or not self.k else
                "no top examples: the run's dataset cannot be read here; give data (--data DATA)"}
        return data, {"grid.png": png_bytes(img)}, "grid.png"

def _layer_weights(ctx, ref: str) -> dict:
    """{dotted name: (C, -1) float weights} of every conv layer of the checkpoint `ref` (from the pool)."""
    import torch

    from cnnvis.jobs.runner import default_pool

    vm = (ctx.pool or default_pool()).get(ref)
    out = {}
    for n, m in vm.model.named_modules():
        w = getattr(m, "weight", None)
        if n and isinstance(w, torch.Tensor) and w.dim() == 4:
            out[n] = w.detach().float().flatten(1).cpu()
    return out


def _corr(a, b, chans) -> list[float] | None:
    """Pearson correlation of each channel's filter weights (rows of a and b), or None without weights."""
    if a is None or b is None:
        return None
    out = []
    for c in chans:
        x, y = a[c] - a[c].mean(), b[c] - b[c].mean()
        d = float(x.norm() * y.norm())
        out.append(round(float((x * y).sum()) / d, 4) if d > 0 else None)
    return out


def _overlap(doc, last, chans) -> list[float]:
    """Share of each channel's top-k images that are also in the last snapshot's top-k."""
    out = []
    for c in chans:
        a = {t["index"] for t in doc["top"][str(c)]}
        b = {t["index"] for t in last["top"][str(c)]}
        out.append(round(len(a & b) / max(1, len(b)), 4))
    return out
