"""Report sections: attribution maps, Zeiler & Fergus deconvnet panels, sanity check."""

from __future__ import annotations

import torch

from cnnvis.report import ReportContext, Section, esc


def _target_label(vm, x) -> tuple[int | None, str]:
    if vm.task != "classification":
        return None, f"sum of the {vm.task} output"
    from cnnvis.classify import predict_probs

    p = predict_probs(vm, x)[0]
    i = int(p.argmax())
    return i, f"{vm.label(i)} (p={float(p[i]):.2f})"


def render_maps(ctx: ReportContext) -> str:
    from cnnvis.attribution import method
    from cnnvis.viz.panels import methods_grid

    vm = ctx.vm
    photos = ctx.photos[:2] if ctx.quick else ctx.photos
    size = 160 if ctx.quick else None
    opts = {"smoothgrad": {"samples": 6 if ctx.quick else 25}, "ig": {"steps": 12 if ctx.quick else 50}}
    names = ["saliency", "gradxinput", "smoothgrad", "ig", "guided", "deconvnet", "gradcam", "guided_gradcam"]
    xs, labels, data = [], [], {}
    maps: dict[str, list] = {n: [] for n in names}
    for name, im in photos:
        x = vm.preprocess.prepare(im, size=size).to(vm.device)
        t, lab = _target_label(vm, x)
        xs.append((f"{name}: {lab}", x))
        data[name] = {"target": t, "label": lab}
        for n in names:
            m = method(n, vm, **opts.get(n, {}))
            maps[n].append(m.map(x, t).cpu())
            if n == "ig":
                data[name]["ig_completeness_delta"] = round(float(m.delta[0]), 4)
    grid = methods_grid(xs, {n: torch.cat(v) for n, v in maps.items()})
    rel = ctx.save(grid, "attribution_methods.png")
    ctx.data["attribution"] = data
    return (ctx.img_tag(rel, "Rows: photos (the map explains the top-1 class). Columns: saliency, gradient x input, "
                        "SmoothGrad, integrated gradients, guided backprop, deconvnet, Grad-CAM (last conv block), "
                        "guided Grad-CAM.")
            + "<p>Guided backprop and deconvnet apply their modified-ReLU rule to every ReLU-like module "
              "(here ReLU6, which Captum would silently skip).</p>")


def render_deconv(ctx: ReportContext) -> str:
    from cnnvis.viz.panels import deconv_panel
    from cnnvis.deconv import deconvnet

    parts, data = [], {}
    name, im = ctx.photos[0]
    for model_name in ("vgg16_hed", ctx.vm.name):
        try:
            vm = ctx.model(model_name)
        except Exception as e:  # a missing optional weight package must not kill the report
            parts.append(f"<p>{esc(model_name)}: not available ({esc(str(e))})</p>")
            continue
        layers = None
        if model_name == "vgg16_hed" and ctx.quick:
            layers = ["conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"]
        x = vm.preprocess.prepare(im).to(vm.device)
        res = deconvnet(vm, x, layers, top=3)
        rel = ctx.save(deconv_panel(x, res, title=f"{vm.name} on {name}"), f"deconv_{model_name}.png")
        note = (f"{res.max_pools} max-pools: their switches, recorded in the one forward pass, place each "
                f"signal back where the maximum was" if res.max_pools else
                "This model has no max-pools: the deconvnet rule reduces to ReLU + transposed convolutions "
                "(and BatchNorm scales, residual sums); there are no switches to record")
        parts.append(ctx.img_tag(rel, f"{esc(vm.name)}: rows = layers; per top-3 channel its activation over the "
                                      f"photo and its reconstruction. {esc(note)}."))
        data[model_name] = {"layers": res.labels, "channels": [c.tolist() for c in res.channels],
                            "max_pools": res.max_pools, "engine": res.engine}
        if model_name == ctx.vm.name:
            break
    ctx.data["deconv"] = data
    return "".join(parts) + ("<p>All layers x top-3 channels are projected in one batched backward sweep "
                             "after a single forward pass.</p>")


def render_sanity(ctx: ReportContext) -> str:
    from cnnvis.viz.panels import curve, stack
    from cnnvis.sanity import sanity_check
    from cnnvis.viz import colormap, grid, to_pil

    vm = ctx.vm
    name, im = ctx.photos[0]
    size = 160 if ctx.quick else vm.input_size
    x = vm.preprocess.prepare(im, size=size).to(vm.device)
    t, _ = _target_label(vm, x)
    methods = ["saliency", "guided", "gradcam"] + ([] if ctx.quick else ["ig", "smoothgrad"])
    res = [sanity_check(vm, x, m, t, max_steps=12 if ctx.quick else 16) for m in methods]
    img = curve(res[0].steps, {r.method: r.spearman for r in res})
    rows = [[to_pil(x)] + [colormap(m) for m in r.maps] for r in res]
    strip = grid(rows, row_labels=[r.method for r in res], cell=72)
    rel = ctx.save(stack([img, strip]), "sanity.png")
    ctx.data["sanity"] = {r.method: {"steps": r.steps, "spearman": [round(v, 3) for v in r.spearman]} for r in res}
    return (ctx.img_tag(rel, f"Cascading randomization on {esc(name)}: weights re-initialized from the top "
                             f"layer down; Spearman rank correlation of each map with the trained model's.")
            + "<p>A map that stays the same while the weights become random (guided backprop is the classic "
              "case) does not explain the model.</p>")


SECTION = Section("attribution", "Attribution maps", render_maps, order=40,
                  description="Which pixels drive the predicted class, by eight methods.")
