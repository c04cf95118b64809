"""Top dataset examples per channel (DeepVis / OpenAI Microscope style), streamed, shardable.

    top = top_examples(vm, ds, "conv2", k=9)          # one pass over ds, batched, under no_grad
    top.values, top.index, top.y, top.x                # (C, k): per channel its k best images
    parts = [top_examples(vm, ds, "conv2", 9, shard=s, shards=3) for s in range(3)]
    merge_top(parts) == top                             # exactly: same entries, same order

Score of an image for a channel: the channel's spatial max at the layer; (y, x) is where
(the first such position, row-major). Order: value descending, then dataset index ascending, so
ties are broken the same way in every run and every merge.

Memory: `TopK` holds k entries per channel ((C, k) tensors) whatever the dataset's size. Each
batch's (C, B) candidates are merged into it with a stable two-key sort of the (C, k + B)
candidates (one vectorized sort for all channels), a bounded heap per channel.

Shards: the dataset is cut into batches of `batch_size` from its start; shard s of S takes the
batches b with b % S == s. Every image is then computed in the same batch, with the same
neighbours, as in an unsharded run with the same batch size, so its values are bit-identical
and the union of the shards' top-k lists gives exactly the unsharded top-k (`merge_top`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from cnnvis.errors import CnnvisError

EMPTY = torch.iinfo(torch.int64).max  # index of an empty slot: sorts after every real one


@dataclass
class TopK:
    """The k best images of each of C channels: values (C, k) float32 (-inf where empty), index
    (C, k) int64 (dataset positions; EMPTY where empty), y, x (C, k) int64 argmax positions."""

    values: Tensor
    index: Tensor
    y: Tensor
    x: Tensor
    seen: int = 0  # images streamed into it
    skipped: int = 0  # items skipped: the shard's unreadable images (and shard 0: the source's unlisted entries)
    skipped_names: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, channels: int, k: int) -> "TopK":
        z = torch.zeros((channels, k), dtype=torch.int64)
        return cls(torch.full((channels, k), -float("inf")), torch.full((channels, k), EMPTY), z, z.clone())

    @property
    def k(self) -> int:
        return self.values.shape[1]

    def entries(self, c: int) -> list[tuple[float, int, int, int]]:
        """Channel row c as [(value, index, y, x)], best first, empty slots left out."""
        keep = self.index[c] != EMPTY
        return [(float(v), int(i), int(yy), int(xx)) for v, i, yy, xx in
                zip(self.values[c][keep], self.index[c][keep], self.y[c][keep], self.x[c][keep])]

    def equal(self, other: "TopK") -> bool:
        return all(torch.equal(a, b) for a, b in ((self.values, other.values), (self.index, other.index),
                                                   (self.y, other.y), (self.x, other.x)))

    def push(self, values: Tensor, index: Tensor, y: Tensor, x: Tensor) -> None:
        """Merge candidates (C, n) into the kept (C, k) entries (value desc, then index asc)."""
        v = torch.cat([self.values, values.float()], 1)
        i = torch.cat([self.index, index], 1)
        yy = torch.cat([self.y, y], 1)
        xx = torch.cat([self.x, x], 1)
        o = i.sort(dim=1, stable=True).indices               # secondary key first: index ascending
        v, i, yy, xx = (t.gather(1, o) for t in (v, i, yy, xx))
        o = v.sort(dim=1, descending=True, stable=True).indices[:, :self.k]  # primary key: value descending
        self.values, self.index, self.y, self.x = (t.gather(1, o) for t in (v, i, yy, xx))


def merge_top(parts: Sequence[TopK]) -> TopK:
    """Top-k of the union of several `TopK` (shards of one dataset): equals the unsharded run."""
    if not parts:
        raise CnnvisError("nothing to merge: give at least one part")
    shapes = {tuple(p.values.shape) for p in parts}
    if len(shapes) != 1:
        raise CnnvisError(f"the parts have different channels x k: {sorted(shapes)}; merge parts of one run")
    out = TopK.empty(*parts[0].values.shape)
    for p in parts:
        out.push(p.values, p.index, p.y, p.x)
        out.seen += p.seen
        out.skipped += p.skipped
        out.skipped_names += p.skipped_names
    return out


def shard_positions(n: int, batch_size: int, shard: int = 0, shards: int = 1) -> np.ndarray:
    """Positions of shard `shard` of `shards`: the batches b (of `batch_size` from the start) with b % shards == shard."""
    if shards < 1 or not 0 <= shard < shards:
        raise CnnvisError(f"shard {shard}/{shards} is not a shard: give s/S with 0 <= s < S (e.g. 0/4)")
    nb = -(-n // batch_size)
    parts = [np.arange(b * batch_size, min(n, (b + 1) * batch_size)) for b in range(shard, nb, shards)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def batch_max(acts: Tensor, channels: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(B, C, h, w) -> spatial max per channel, transposed to (C', B), and its y, x (C', B)."""
    if channels is not None:
        acts = acts.index_select(1, channels)
    w = acts.shape[-1]
    m = acts.flatten(2).max(2)
    v, pos = m.values.t().contiguous(), m.indices.t().contiguous()
    return v, pos // w, pos % w


def top_examples(vm, ds, layer: str, k: int = 9, channels: Sequence[int] | None = None, *, batch_size: int = 256,
                 shard: int = 0, shards: int = 1, progress=None, with_info: bool = False):
    """Stream `ds` (a cnnvis Dataset) once through `vm` up to `layer` -> TopK over `channels` (default: all;
    row r of the result is channels[r]). `with_info`: also return (layer output shape, channels)."""
    from cnnvis.hooks import capture
    from cnnvis.study.maps import require_spatial
    from cnnvis.utils import model_guard

    if k < 1:
        raise CnnvisError(f"k must be at least 1 (images kept per channel), got {k}")
    if batch_size < 1:
        raise CnnvisError(f"batch_size must be at least 1, got {batch_size}")
    pos = shard_positions(len(ds), batch_size, shard, shards)
    sub = ds.subset(pos) if shards > 1 else ds
    dev = vm.device
    top: TopK | None = None
    chan_t = None
    shape = None
    nb = -(-len(sub) // batch_size)
    it = sub.batches(batch_size, with_index=True)
    if progress:
        it = progress(it, total=nb, desc=f"top examples {layer}")
    with model_guard(vm.model), torch.no_grad(), capture(vm, [layer]) as cap:
        for xb, _yb, ib in it:
            try:
                cap.run(xb.to(dev))
            except (RuntimeError, ValueError) as e:
                line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CnnvisError(f"{vm.name} cannot take {xb.shape[-2]}x{xb.shape[-1]} images ({line[:160]}); "
                                  f"give size={vm.input_shape[1]}") from None
            acts = cap[layer]
            if top is None:
                require_spatial(vm, layer, acts.shape)
                shape = list(acts.shape[1:])
                C = acts.shape[1]
                chs = list(range(C)) if channels is None else [int(c) for c in channels]
                bad = [c for c in chs if not 0 <= c < C]
                if bad:
                    raise CnnvisError(f"channel {bad[0]} does not exist at {layer!r}: it has {C} channels (0..{C - 1})")
                chan_t = None if channels is None else torch.tensor(chs, device=acts.device)
                top = TopK.empty(len(chs), k)
            v, y, x = batch_max(acts, chan_t)
            idx = torch.as_tensor(pos[ib.numpy()] if shards > 1 else ib.numpy(), dtype=torch.int64)
            n = len(idx)
            top.push(v.float().cpu(), idx.expand(v.shape[0], n), y.cpu(), x.cpu())
            top.seen += n
    if top is None:  # an empty shard: its shape comes from a probe
        from cnnvis.study.maps import layer_output

        c, h, w = ds.channels, *ds.size
        acts = layer_output(vm, torch.full((1, c, h, w), 0.5, device=dev), layer)
        require_spatial(vm, layer, acts.shape)
        shape = list(acts.shape[1:])
        chs = list(range(acts.shape[1])) if channels is None else [int(c) for c in channels]
        top = TopK.empty(len(chs), k)
    # each unreadable image is in one shard; entries refused when listing are counted by shard 0
    top.skipped_names = (ds.unlisted if shard == 0 else []) + sub.unreadable_names
    top.skipped = len(top.skipped_names)
    return (top, shape, chs) if with_info else top


def patch(img: Tensor, rf, y: int, x: int) -> Tensor:
    """(C, H, W) image -> (C, s, s) crop of the receptive field of unit (y, x) (`rf`: an RF),
    s = its box's side; where the field leaves the image the patch is grey (0.5)."""
    C, H, W = img.shape
    t, l_, b, r = rf.box(y, x)  # unclipped
    out = torch.full((C, b - t + 1, r - l_ + 1), 0.5, dtype=img.dtype)
    ct, cl, cb, cr = max(0, t), max(0, l_), min(H - 1, b), min(W - 1, r)
    if cb >= ct and cr >= cl:
        out[:, ct - t:cb - t + 1, cl - l_:cr - l_ + 1] = img[:, ct:cb + 1, cl:cr + 1]
    return out


def from_index(doc: dict) -> TopK:
    """A top-examples index.json (as a dict) -> its TopK (values exact: JSON keeps float64)."""
    chans = doc["channels"]
    k = int(doc["k"])
    top = TopK.empty(len(chans), k)
    for r, c in enumerate(chans):
        for j, e in enumerate(doc["top"][str(c)]):
            top.values[r, j] = e["value"]
            top.index[r, j] = e["index"]
            top.y[r, j], top.x[r, j] = e["y"], e["x"]
    top.seen = int(doc.get("seen", 0))
    top.skipped = int(doc.get("skipped", 0))
    top.skipped_names = list(doc.get("skipped_names", []))
    return top


# fields of an index.json that every shard of one run shares (merge refuses parts that differ)
SAME_RUN = ("format", "weights_id", "data", "split", "size", "limit", "module", "k", "channels", "batch_size",
            "shards", "images", "rf", "shape")


def _check_entries(doc: dict, name: str) -> None:
    """CnnvisError unless a shard's index lists, for each of its channels, at most k entries of images of its
    own batches, at units inside the layer's map, with finite values (a hand-edited or damaged index.json
    raised deep inside the merge, or merged a wrong image silently)."""
    import math

    def bad(what: str) -> CnnvisError:
        return CnnvisError(f"{name}/index.json {what}; it was edited or damaged: run that shard again")

    try:
        k, n, b, S = int(doc["k"]), int(doc["images"]), int(doc["batch_size"]), int(doc.get("shards", 1))
        h, w = (int(v) for v in list(doc["shape"])[-2:])
        own = set(doc.get("shards_merged", [doc.get("shard", 0)]))
        top = doc["top"]
        for c in doc["channels"]:
            entries = top[str(c)]
            if not isinstance(entries, list) or len(entries) > k:
                raise bad(f"lists {len(entries) if isinstance(entries, list) else 'no'} entries for channel {c} "
                          f"(k is {k})")
            for e in entries:
                i, v, y, x = e["index"], e["value"], e["y"], e["x"]
                if not all(type(t) is int for t in (i, y, x)) or not isinstance(v, (int, float)) \
                        or not math.isfinite(v):
                    raise bad(f"has an entry of channel {c} that is not numbers: {str(e)[:80]}")
                if not 0 <= i < n or (i // b) % S not in own:
                    raise bad(f"names image {i} for channel {c}, which is not one of its shard's images")
                if not (0 <= y < h and 0 <= x < w):
                    raise bad(f"names unit ({y}, {x}) for channel {c}, outside the layer's {h}x{w} map")
    except CnnvisError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError):
        raise bad("is missing fields or has fields of the wrong type") from None


def merge_docs(docs: Sequence[dict], names: Sequence[str] | None = None) -> tuple[TopK, dict]:
    """index.json documents of the shards of one run -> (merged TopK, merged header). Every shard
    0..S-1 must be there exactly once and the parts must agree on SAME_RUN; else a CnnvisError."""
    names = list(names or [f"part {i}" for i in range(len(docs))])
    if not docs:
        raise CnnvisError("nothing to merge: give the output folders of the shards")
    first = docs[0]
    for d, n in zip(docs[1:], names[1:]):
        diff = [f for f in SAME_RUN if d.get(f) != first.get(f)]
        if diff:
            raise CnnvisError(f"{n} is not a shard of the same run as {names[0]}: {', '.join(diff)} differ; "
                              "merge the shards of one top-examples run")
    have: dict[int, str] = {}
    for d, n in zip(docs, names):
        for s in d.get("shards_merged", [d.get("shard", 0)]):
            if s in have:
                raise CnnvisError(f"shard {s} is given twice ({have[s]} and {n}); give each shard once")
            have[s] = n
    S = int(first.get("shards", 1))
    missing = [s for s in range(S) if s not in have]
    if missing:
        raise CnnvisError(f"shard(s) {', '.join(map(str, missing))} of {S} missing: give the output folder of every "
                          "shard (the result would not be the top-k of the whole dataset)")
    for d, n in zip(docs, names):
        _check_entries(d, n)
    top = merge_top([from_index(d) for d in docs])
    header = {k: v for k, v in first.items() if k not in ("top", "seen")}
    header.update({"shard": None, "shards_merged": sorted(have), "skipped": top.skipped,
                   "skipped_names": top.skipped_names[:20]})
    return top, header
