"""Job kinds that explain a photo: attribution maps, the Zeiler & Fergus deconvnet, the sanity check."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from cnnvis import defaults as D
from cnnvis.errors import CnnvisError
from cnnvis.jobs.helpers import (
    PhotoSpec, Side, chosen_layers, describe, layer_label, prepare, resolve_layers, target_and_layer,
)
from cnnvis.jobs.result import npy_bytes, png_bytes
from cnnvis.jobs.spec import Spec, register


# ---------------------------------------------------------------------- attribution
def _check_options(method: str, options: dict) -> None:
    """ValueError naming an option `method` does not take (it failed inside the job, as a TypeError of
    the method's constructor), and the ones it takes."""
    import inspect

    from cnnvis.attribution import method_class

    params = inspect.signature(method_class(method).__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    takes = [n for n, p in params.items() if n not in ("self", "model") and p.kind is p.KEYWORD_ONLY
             or n not in ("self", "model") and p.kind is p.POSITIONAL_OR_KEYWORD]
    bad = [k for k in options if k not in takes]
    if bad:
        raise ValueError(f"method {method!r} takes no option {bad[0]!r}; its options: {', '.join(takes) or 'none'}")


def _known_methods(names: list[str]) -> None:
    """ValueError naming the first of `names` the attribution registry does not know, and the known ones."""
    from cnnvis.attribution import list_methods

    methods = list_methods()
    bad = [m for m in names if m not in methods]
    if bad:
        raise ValueError(f"unknown method {bad[0]!r}; one of {', '.join(methods)}")


def _with_seed(method: str, options: dict, seed: int) -> dict:
    """Pass the spec's seed to methods that draw random numbers (`seeded`: SmoothGrad, VarGrad, ...)."""
    from cnnvis.attribution import method_class

    if method_class(method).seeded and "seed" not in options:
        return {**options, "seed": seed}
    return dict(options)


@register
class AttributionSpec(PhotoSpec):
    """An attribution map (saliency, IG, Grad-CAM, ...) of a photo for a class or a layer's activation."""

    kind = "attribution"
    example = {"image": "sample:chelsea", "method": "gradcam"}
    title = "attribution map"
    method: str = D.Attribution.method
    target: int | str | None = None  # class (default: top-1); or use layer/channel/unit
    layer: str | None = None  # CAM methods: the layer the map is computed at; others: explain this activation
    channel: int | None = None
    unit: tuple[int, int] | None = None
    options: dict[str, float | int | str | bool | None] = Field(default_factory=dict)  # method options (steps, ...)
    # under the panel (and in the JSON) of a method whose picture needs a word
    CAPTIONS: ClassVar[dict[str, str]] = {
        "deconvnet": "deconvnet, fired rule (the default): the ReLU of the signal where the unit fired, strided "
                     "convolutions undone by nearest resize, not zero insertion (no checkerboard). Option rule 'zf': "
                     "the pure Zeiler & Fergus rule.",
        "deconvnet:zf": "deconvnet, pure Zeiler & Fergus rule (the ReLU of the signal, the forward mask ignored; = "
                        "Captum's Deconvolution): through strided convolutions (EfficientNet) or deep VGG layers it "
                        "spreads the signal into a regular checkerboard, not the photo. The default rule 'fired' "
                        "keeps the photo's structure."}  # key 'method:rule' for a rule given in options

    @field_validator("method")
    @classmethod
    def _known(cls, v):
        _known_methods([v])
        return v

    @field_validator("options")
    @classmethod
    def _known_options(cls, v, info):
        if isinstance(info.data.get("method"), str):  # else the method's own error is the one to read
            _check_options(info.data["method"], v)
        return v

    def normalized(self, vm):
        from cnnvis.attribution import method_class

        cls = method_class(self.method)
        cam, explains_activation = cls.takes_layer, "activation" in cls.inputs
        if (self.channel is not None or self.unit is not None) and (self.layer is None or not explains_activation):
            raise CnnvisError("channel/unit need a layer, with a method that is not a CAM method")
        if not cam and self.layer is not None and self.target is not None:
            raise CnnvisError("give either a target (a class) or a layer (an activation), not both")
        return self.model_copy(update={**target_and_layer(vm, self.target, self.layer),
                                       "options": {**cls.option_defaults, **self.options}})

    def run(self, vm, ctx):
        from cnnvis.attribution import LayerTarget, method as make, method_class
        from cnnvis.viz import attribution_panel

        x = prepare(vm, self.image, self.size)
        cls = method_class(self.method)
        cam = cls.takes_layer
        opts = _with_seed(self.method, self.options, self.seed)
        if cam:
            opts["layer"] = self.layer
        info: dict = {"method": self.method}
        if not cam and self.layer is not None:
            tgt = LayerTarget(self.layer, self.channel, self.unit)
            lab = layer_label(vm, self.layer)
            title = f"{vm.name}: {lab}" + (f" channel {self.channel}" if self.channel is not None else "") + \
                (f" unit {self.unit}" if self.unit else "")
            info.update({"layer": lab, "channel": self.channel, "unit": self.unit})
        else:
            tgt, (title, more) = self.target, describe(vm, x, self.target)
            info.update(more)
            if tgt is None and vm.task == "classification":
                tgt = more["target"]
        m = make(self.method, vm, **opts)
        if cls.returns_delta:
            a, delta = m.attribute(x, tgt, return_delta=True)
            info[f"{cls.name}_completeness_delta"] = float(delta[0])
        else:
            a = m.attribute(x, tgt)
        heat = a.abs().amax(1)[0] if a.shape[1] > 1 else a[0, 0]
        if cam:
            info["layer"] = getattr(m, "layer", None)
        caption = self.CAPTIONS.get(f"{self.method}:{self.options.get('rule')}", self.CAPTIONS.get(self.method, ""))
        if caption:
            info["caption"] = caption
        files = {"panel.png": png_bytes(attribution_panel(x, heat, f"{self.method}: {title}", caption=caption)),
                 "map.npy": npy_bytes(heat.float()), "attribution.npy": npy_bytes(a[0].float()),
                 "input.png": png_bytes(x[0])}
        return info, files, "panel.png"


# ---------------------------------------------------------------------- a grid of methods
@register
class AttributionGridSpec(Spec):
    """Rows = photos, columns = the photo and one overlay per method: one `attribution` job per photo and method
    (cached and shared like any other), composed into grid.png (the report's methods and CAM grids)."""

    kind = "attribution_grid"
    example = {"images": ["sample:chelsea"], "methods": ["saliency", "gradcam"], "size": 64}
    title = "attribution grid (one attribution job per photo and method)"
    images: list[str] = Field(min_length=1, max_length=16)  # paths or 'sample:NAME', a row each
    names: list[str] | None = None  # row names (default: each photo's file stem or sample name)
    methods: list[str] = Field(min_length=1, max_length=16)  # a column each
    size: Side | None = None  # input size in pixels (default: the model's)
    options: dict[str, dict[str, float | int | str | bool | None]] = Field(default_factory=dict)  # per method

    @field_validator("methods")
    @classmethod
    def _known(cls, v):
        _known_methods(v)
        if len(set(v)) != len(v):
            raise ValueError("a method is listed twice; list each once")
        return v

    @model_validator(mode="after")
    def _fits(self):
        if self.names is not None and len(self.names) != len(self.images):
            raise ValueError(f"{len(self.names)} names for {len(self.images)} images; give one name per image")
        extra = [m for m in self.options if m not in self.methods]
        if extra:
            raise ValueError(f"options for {extra[0]!r}, which is not in methods; drop them or add the method")
        return self

    def inputs(self) -> list[str]:
        return list(self.images)

    def row_names(self) -> list[str]:
        from pathlib import Path

        if self.names is not None:
            return list(self.names)
        return [r.split(":", 1)[1] if r.startswith("sample:") else Path(r).stem for r in self.images]

    def attribution_specs(self) -> list[list]:
        """The `attribution` job of each photo (rows) and method (columns): what the report sent before this kind."""
        from cnnvis.jobs.spec import make_spec

        common = {"model": self.model, "weights": self.weights, "seed": self.seed, "size": self.size}
        return [[make_spec("attribution", image=ref, method=n, options=self.options.get(n, {}), **common)
                 for n in self.methods] for ref in self.images]

    def run(self, vm, ctx):
        import torch

        from cnnvis.images import to_tensor
        from cnnvis.viz import methods_grid

        xs, rows = [], []
        maps: dict[str, list] = {n: [] for n in self.methods}
        for name, specs in zip(self.row_names(), self.attribution_specs()):
            results = [ctx.sub(s) for s in specs]
            for n, r in zip(self.methods, results):
                maps[n].append(torch.from_numpy(r.array("map.npy"))[None])
            d = results[0].data
            lab = f"{d['label']} (p={d['prob']:.2f})" if d.get("label") else "sum of the output"
            im = results[0].image("input.png")
            xs.append((f"{name}: {lab}", to_tensor(im, mode=im.mode)))
            rows.append({"name": name, "target": d.get("target"), "label": lab,
                         "maps": [{"method": n, "key": r.key,
                                   **{k: r.data[k] for k in ("layer", "ig_completeness_delta") if k in r.data}}
                                  for n, r in zip(self.methods, results)]})
        grid = methods_grid(xs, {n: torch.cat(v) for n, v in maps.items()})
        return {"methods": list(self.methods), "rows": rows, "size": list(grid.size)}, \
            {"grid.png": png_bytes(grid)}, "grid.png"


# ---------------------------------------------------------------------- deconvnet
@register
class DeconvSpec(PhotoSpec):
    """Zeiler & Fergus deconvnet: the top channels of each layer projected back to pixels.

    Default: the fired rule (Z&F + the mask of the units that fired, strided convolutions undone by
    nearest resize; on VGG = the masked rule, guided backprop), each top channel seeded with every unit
    where it fired ('sum'), drawn full size with its strongest unit's box, beside Z&F Fig. 2's
    pair (the photo patch in that box and the strongest unit's own projection there, one sweep).
    rule 'masked' is guided backprop (zero insertion through strides), 'zf' the pure rule; project 'max' the
    Fig. 2 pairs alone, 'map' the rectified map."""

    kind = "deconv"
    example = {"image": "sample:chelsea", "top": 1}
    title = "deconvnet (Zeiler & Fergus)"
    layers: list[str] | None = None  # default: the model's classic layers
    all_conv: bool = False  # instead of layers: every Conv2d
    top: int = Field(D.Deconv.top, ge=1, le=64)
    # every unit where the channel fired (1 each), its strongest unit (Z&F Fig. 2), or its rectified map
    project: Literal["sum", "max", "map"] = D.Deconv.project
    # Z&F + the mask of the units that fired, strided convs resized; + the forward ReLU mask (guided backprop); pure
    rule: Literal["fired", "masked", "zf"] = D.Deconv.rule

    def normalized(self, vm):
        layers = chosen_layers(vm, self.layers, self.all_conv)
        return self.model_copy(update={"layers": [layer_label(vm, n) for n in resolve_layers(vm, layers)],
                                       "all_conv": False})

    @classmethod
    def menus(cls) -> dict:
        """The choices of `rule` and `project`, each [{name, text}] with the default first (the web panel's
        menus; the texts are deconv.RULE_TEXT / SEED_TEXT)."""
        from cnnvis.deconv import RULE_TEXT, RULES, SEED_TEXT, SEEDS

        rule, project = cls.model_fields["rule"].default, cls.model_fields["project"].default

        def menu(names, texts, default: str) -> list[dict]:
            return [{"name": n, "text": texts[n]} for n in sorted(names, key=lambda n: n != default)]

        return {"rule": rule, "project": project,
                "rules": menu(RULES, RULE_TEXT, rule), "projects": menu(SEEDS, SEED_TEXT, project)}

    def run(self, vm, ctx):
        from cnnvis.deconv import deconvnet
        from cnnvis.study.receptive import receptive_field
        from cnnvis.viz import deconv_panel
        from cnnvis.viz.panels import crop_pairs

        x = prepare(vm, self.image, self.size)
        res = deconvnet(vm, x, self.layers, self.top, seed=self.project, rule=self.rule, also_units=True)
        hw = tuple(x.shape[-2:])
        fields, boxes = [], []
        for n, units in zip(res.layers, res.units):
            try:  # the field of each channel's strongest unit, in input pixels
                rf = receptive_field(vm, n, hw)
                fields.append(round(rf.size, 2))
                boxes.append([list(rf.box(int(y), int(xx), hw)) for y, xx in units.tolist()])
            except CnnvisError:  # no fixed field (after an adaptive pool): the whole photo
                fields.append(None)
                boxes.append(None)
        img = deconv_panel(x, res, boxes, title=f"{vm.name} deconvnet", captions=res.notes)
        crops = [[list(c) for c, _, _ in row] for row in crop_pairs(x, res, boxes)]
        data = {"max_pools": res.max_pools, "notes": res.notes, "engine": res.engine, "rule": res.rule,
                "rule_text": res.rule_text, "project": res.seed, "seed_text": res.seed_text,
                "layers": [{"layer": lab, "module": n, "channels": c.tolist(), "norms": [round(float(v), 4) for v in k],
                            "units": u.tolist(), "field": f, "boxes": b, "crops": cr}
                           for lab, n, c, k, u, f, b, cr in zip(res.labels, res.layers, res.channels, res.norms,
                                                                res.units, fields, boxes, crops)]}
        return data, {"panel.png": png_bytes(img)}, "panel.png"


# ---------------------------------------------------------------------- sanity check
@register
class SanitySpec(PhotoSpec):
    """Adebayo et al. cascading randomization: how much each method's map depends on the weights."""

    kind = "sanity"
    example = {"image": "sample:chelsea", "max_steps": 2}
    title = "sanity check (cascading randomization)"
    methods: list[str] = Field(default_factory=lambda: list(D.Sanity.methods), min_length=1)
    target: int | str | None = None
    layer: str | None = None  # CAM methods' layer
    max_steps: int = Field(D.Sanity.max_steps, ge=1, le=1000)
    options: dict[str, float | int | str | bool | None] = Field(default_factory=dict)

    @field_validator("methods")
    @classmethod
    def _known(cls, v):
        _known_methods(v)
        return v

    @field_validator("options")
    @classmethod
    def _known_options(cls, v, info):
        for m in info.data.get("methods") or ():  # the options go to every method
            _check_options(m, v)
        return v

    def normalized(self, vm):
        return self.model_copy(update=target_and_layer(vm, self.target, self.layer))

    def run(self, vm, ctx):
        from cnnvis.attribution import method_class
        from cnnvis.sanity import sanity_check
        from cnnvis.viz import colormap, curve, grid, stack, to_pil

        x = prepare(vm, self.image, self.size)
        results = []
        for n in self.methods:
            opts = dict(self.options)
            if method_class(n).takes_layer:
                opts["layer"] = self.layer
            results.append(sanity_check(vm, x, n, self.target, max_steps=self.max_steps, seed=self.seed,
                                        progress=ctx.bar, **opts))
        steps = results[0].steps
        img = curve(steps, {r.method: r.spearman for r in results})
        rows = [[to_pil(x)] + [colormap(m) for m in r.maps] for r in results]
        strip = grid(rows, row_labels=[r.method for r in results], col_labels=["photo"] + [s[:10] for s in steps],
                     cell=72)
        data = {"target": results[0].target, "steps": steps,
                "spearman": {r.method: [round(v, 4) for v in r.spearman] for r in results}}
        files = {"panel.png": png_bytes(stack([img, strip])), "curve.png": png_bytes(img)}
        return data, files, "panel.png"
