"""Report sections: attribution maps, Zeiler & Fergus deconvnet panels, sanity check."""

from __future__ import annotations

from cnnvis.report import ReportContext, Section, esc, join_words


def map_methods() -> list[str]:
    """The methods shown side by side in the first grid: those whose class lists 'maps' in its `report`
    (saliency, gradxinput, smoothgrad, ig, guided, deconvnet, gradcam, guided_gradcam), registry order."""
    from cnnvis.attribution import list_methods

    return list_methods(report="maps")


def cam_methods() -> list[str]:
    """The CAM-family grid: the classes that list 'cams' in their `report` (gradcam, gradcam++, xgradcam,
    layercam, scorecam, eigencam)."""
    from cnnvis.attribution import list_methods

    return list_methods(report="cams")


def _names(methods: list[str], grid: str, last: str = ", ") -> str:
    """The methods as each class names itself in a caption of report grid `grid` (`caption_for`), in order;
    `last` joins the last two."""
    from cnnvis.attribution import method_class

    return join_words([method_class(m).caption_for(grid) for m in methods], last)


def maps_caption() -> str:
    """The maps grid's caption: its columns as the method classes name themselves."""
    return f"Rows: photos (the map explains the top-1 class). Columns: {_names(map_methods(), 'maps')}."


def cams_caption() -> str:
    """The CAM grid's caption: its columns as the method classes name themselves."""
    return f"{_names(cam_methods(), 'cams', last=' and ')}. Each equals pytorch-grad-cam's in the tests."


def _grid(ctx: ReportContext, methods: list[str], size, opts: dict) -> tuple[object, dict]:
    """Rows = photos, columns = photo + one overlay per method: the `attribution_grid` job (each map its own
    `attribution` job). Returns (the job's result, per photo name its target, label, IG delta, CAM layer)."""
    photos = ctx.photos[:2] if ctx.quick else ctx.photos
    res = ctx.run("attribution_grid", images=[ref for _, ref in photos], names=[name for name, _ in photos],
                  methods=methods, size=size, options={n: o for n, o in opts.items() if n in methods})
    data, cams = {}, cam_methods()
    for row in res.data["rows"]:
        d = data[row["name"]] = {"target": row["target"], "label": row["label"]}
        for m in row["maps"]:
            if "ig_completeness_delta" in m:
                d["ig_completeness_delta"] = round(m["ig_completeness_delta"], 4)
            if m.get("layer") and m["method"] in cams:
                d["cam_layer"] = m["layer"]
    return res, data


def render_maps(ctx: ReportContext) -> str:
    size = 160 if ctx.quick else None
    opts = {"smoothgrad": {"samples": 6 if ctx.quick else 25}, "ig": {"steps": 12 if ctx.quick else 50}}
    grid, data = _grid(ctx, map_methods(), size, opts)
    rel = ctx.save_file(grid, "attribution_methods.png")
    cams, cam_data = _grid(ctx, cam_methods(), size, {})
    rel_cam = ctx.save_file(cams, "attribution_cams.png")
    for k, v in cam_data.items():
        data.setdefault(k, {}).update({"cam_layer": v.get("cam_layer")})
    ctx.data["attribution"] = data
    text = lambda s: esc(s, quote=False)  # noqa: E731  (a class's words are text; apostrophes stay as they are)
    return (ctx.img_tag(rel, text(maps_caption()))
            + "<p>Guided backprop and deconvnet apply their modified-ReLU rule to every ReLU-like module "
              "(here ReLU6, which Captum would silently skip). The deconvnet column is the deconvnet's default "
              "fired rule (the units that fired, strided convolutions undone by nearest resize); on a net of plain "
              "ReLUs without strided convolutions it equals guided backprop. Method option "
              "<code>rule: zf</code> gives the pure Zeiler &amp; Fergus rule (a checkerboard here).</p>"
            + "<h3>The CAM family at the last spatial block</h3>"
            + ctx.img_tag(rel_cam, text(cams_caption())))


def render_deconv(ctx: ReportContext) -> str:
    parts, data = [], {}
    name, ref = ctx.photos[0]
    from cnnvis.report import with_vgg16

    for model_name in with_vgg16(ctx.vm):
        layers = ["conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"] if model_name == "vgg16_hed" and ctx.quick \
            else None
        try:
            res = ctx.run("deconv", model=model_name, image=ref, layers=layers)  # top: the spec default
        except ImportError as e:  # a missing optional weight package must not kill the section
            parts.append(f"<p>{esc(model_name)}: not available ({esc(str(e))})</p>")
            continue
        d = res.data
        rel = ctx.save_file(res, f"deconv_{model_name}.png")
        note = (f"{d['max_pools']} max-pools: their switches, recorded in the one forward pass, place each "
                f"signal back where the maximum was" if d["max_pools"] else
                "This model has no max-pools, so no switches: the signal goes down through ReLUs, transposed "
                "(strided) convolutions, BatchNorm scales and residual sums. Under the pure Z&F rule "
                "(<code>--rule zf</code>) the strided convolutions leave a checkerboard lattice at depth; the "
                "default fired rule keeps the photo's structure: only units that fired pass the signal on, and a "
                "strided convolution goes back by nearest resize then its filters, not by zero insertion "
                "(<code>--rule masked</code>, guided backprop, inserts zeros: a faint lattice)")
        parts.append(ctx.img_tag(rel, f"{esc(model_name)} on {esc(name)}, {esc(d['rule_text'])}, "
                                      f"{esc(d['seed_text'])}: rows = layers; per top-3 channel its projection, full "
                                      f"size, with its strongest unit's box, then the photo patch in that box beside "
                                      f"that unit's own projection, as in Zeiler &amp; Fergus's Fig. 2. {note}."))
        data[model_name] = {"layers": [r["layer"] for r in d["layers"]], "channels": [r["channels"] for r in d["layers"]],
                            "max_pools": d["max_pools"], "engine": d["engine"], "rule": d["rule"],
                            "project": d["project"]}
    ctx.data["deconv"] = data
    return "".join(parts) + ("<p>All layers x top-3 channels are projected in one batched backward sweep "
                             "after a single forward pass. <code>cnnvis deconv PHOTO --rule zf</code> gives the pure "
                             "Z&amp;F rule (the forward mask ignored, as Captum's deconvolution: grey lattices from "
                             "VGG's conv3 on), <code>--project max</code> the Fig. 2 pairs alone, <code>--project "
                             "map</code> each channel's rectified map (units weighted by their values).</p>")


def render_sanity(ctx: ReportContext) -> str:
    name, ref = ctx.photos[0]
    methods = ["saliency", "guided", "gradcam"] + ([] if ctx.quick else ["ig", "smoothgrad"])
    res = ctx.run("sanity", image=ref, methods=methods, size=160 if ctx.quick else None,
                  max_steps=12 if ctx.quick else 16)
    rel = ctx.save_file(res, "sanity.png")
    ctx.data["sanity"] = {m: {"steps": res.data["steps"], "spearman": [round(v, 3) for v in s]}
                          for m, s in res.data["spearman"].items()}
    return (ctx.img_tag(rel, f"Cascading randomization on {esc(name)}: weights re-initialized from the top "
                             f"layer down; Spearman rank correlation of each map with the trained model's.")
            + "<p>A map that stays the same while the weights become random (guided backprop is the classic "
              "case) does not explain the model.</p>")


SECTION = Section("attribution", "Attribution maps", render_maps, order=40,
                  description="Which pixels drive the predicted class: gradients, modified-ReLU rules and CAMs.")
