"""Issue 19 item 3: what the faces composed themselves is a job kind they build specs for (cached, shared)."""

import json

from cnnvis.cli import main
from cnnvis.jobs import Store, make_spec, run
from cnnvis.layers import list_layers


def run_cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_layers_kind_is_list_layers(lite0, tmp_path):
    """`layers` = `list_layers` row for row (probe size and containers honoured); a rerun is a store hit."""
    spec = make_spec("layers", model="efficientnet_lite0", size=96, leaves_only=False)
    store = Store(tmp_path / "cache")
    res = run(spec, vm=lite0, store=store)
    want = list_layers(lite0, 96, leaves_only=False)
    assert [(d["name"], d["alias"], d["type"], d["shape"], d["params"], d["spatial"]) for d in res.data["layers"]] == \
        [(i.name, i.alias, i.kind, list(i.shape) if i.shape is not None else None, i.params, i.spatial) for i in want]
    row = next(d for d in res.data["layers"] if d["name"] == "blocks.3")
    assert row["alias"] == "stage3" and row["shape"] == [80, 6, 6] and row["spatial"] is True
    assert res.files == {} and not res.cached
    again = run(spec, vm=lite0, store=store)
    assert again.cached and again.data == json.loads(json.dumps(res.data))
    leaves = run(make_spec("layers", model="efficientnet_lite0"), vm=lite0).data["layers"]
    assert [d["name"] for d in leaves] == [i.name for i in list_layers(lite0, leaves_only=True)]
    assert len(leaves) < len(res.data["layers"])


def test_layers_cli_prints_the_job(capsys, lite0):
    """`cnnvis layers --json` is the job's rows without `spatial`; the text form lines up the same rows;
    a too-small --size is one line naming the flag."""
    code, out, _ = run_cli(capsys, "layers", "--json", "--size", "64")
    assert code == 0
    want = list_layers(lite0, 64, leaves_only=True)
    assert json.loads(out) == [{"name": i.name, "alias": i.alias, "type": i.kind,
                                "shape": list(i.shape) if i.shape else None, "params": i.params} for i in want]
    code, out, _ = run_cli(capsys, "layers", "--size", "64")
    assert code == 0 and len(out.splitlines()) == len(want)
    assert out.splitlines()[0].split()[0] == want[0].name
    code, _, err = run_cli(capsys, "layers", "--size", "4")
    assert code == 2 and err.strip() == "error: --size 4 is too small for efficientnet_lite0; use at least 32"


def test_web_listing_is_the_layers_job(lite0):
    """The web (serve, render-all, export) lists a model's layers through the `layers` job: the same
    LayerInfo rows list_layers gives (containers included), so layer pages and channel counts are unchanged."""
    from cnnvis.jobs import ModelPool
    from cnnvis.web.specs import model_layers

    pool = ModelPool()
    pool.add(lite0, "efficientnet_lite0")
    assert model_layers(pool, "efficientnet_lite0", lite0) == list_layers(lite0)


def _dream_kw():
    return dict(image="sample:chelsea", octaves=1, steps=2, max_side=64, step_size=0.03)


def test_dream_row_is_the_hand_made_row_of_its_dream_jobs(lite0, tmp_path):
    """`dream_row` sends each layer's `dream` spec as the faces did (a warm store serves them) and composes
    the same picture: the report's (cell None: photo resized to the dreams, names as given) and the CLI's
    (cell 384: photo thumbnailed, names as each dream job gives them)."""
    import numpy as np

    from cnnvis.jobs.helpers import load_input
    from cnnvis.layers import dream_layers
    from cnnvis.viz import grid

    store = Store(tmp_path / "cache")
    layers = dream_layers(lite0, 2)
    singles = [run(make_spec("dream", layers=[n], **_dream_kw()), vm=lite0, store=store) for n in layers]
    dreams = [r.image() for r in singles]
    photo = load_input("sample:chelsea")

    res = run(make_spec("dream_row", n=2, **_dream_kw()), vm=lite0, store=store)
    assert res.data["layers"] == layers and res.data["size"] == list(dreams[0].size)
    assert [d["key"] for d in res.data["dreams"]] == [r.key for r in singles]  # the same jobs, served by the store
    small = photo.resize(dreams[0].size)
    want = grid([[small] + dreams], col_labels=["photo"] + layers, cell=small.size)
    assert np.array_equal(np.asarray(res.image()), np.asarray(want.convert(res.image().mode)))

    f = min(1.0, 384 / max(photo.size))
    cell = max(1, round(photo.size[0] * f)), max(1, round(photo.size[1] * f))
    cli = run(make_spec("dream_row", layers=layers, cell=384, **_dream_kw()), vm=lite0, store=store)
    labels = [r.data["layers"][0] for r in singles]
    want = grid([[photo] + dreams], col_labels=["photo"] + labels, cell=cell)
    assert np.array_equal(np.asarray(cli.image()), np.asarray(want.convert(cli.image().mode)))
    assert cli.data["labels"] == labels and cli.data["dreams"] == res.data["dreams"]
    assert run(make_spec("dream_row", n=2, **_dream_kw()), vm=lite0, store=store).cached


def test_dream_row_checks_every_layer_first(lite0):
    import pytest

    from cnnvis.errors import CnnvisError

    with pytest.raises(CnnvisError, match="unknown layer 'nope'"):
        run(make_spec("dream_row", layers=["stage1", "nope"], **_dream_kw()), vm=lite0)


def _grid_kw():
    return dict(images=["sample:chelsea", "sample:astronaut"], names=["cat", "astro"], size=64,
                methods=["saliency", "ig", "gradcam"], options={"ig": {"steps": 4}})


def test_attribution_grid_is_the_hand_made_grid_of_its_attribution_jobs(lite0, tmp_path):
    """`attribution_grid` sends each photo's and method's `attribution` spec as the report did (a warm store
    serves them) and composes the same picture (methods_grid, rows labelled with each photo's top-1 class)."""
    import numpy as np
    import torch

    from cnnvis.images import to_tensor
    from cnnvis.viz import methods_grid

    kw = _grid_kw()
    store = Store(tmp_path / "cache")
    singles = [[run(make_spec("attribution", image=ref, method=n, size=64, options=kw["options"].get(n, {})),
                    vm=lite0, store=store) for n in kw["methods"]] for ref in kw["images"]]
    xs = []
    for name, row in zip(kw["names"], singles):
        d, im = row[0].data, row[0].image("input.png")
        xs.append((f"{name}: {d['label']} (p={d['prob']:.2f})", to_tensor(im, mode=im.mode)))
    maps = {n: torch.cat([torch.from_numpy(row[j].array("map.npy"))[None] for row in singles])
            for j, n in enumerate(kw["methods"])}
    want = methods_grid(xs, maps)

    res = run(make_spec("attribution_grid", **kw), vm=lite0, store=store)
    assert not res.cached and res.main == "grid.png"
    assert np.array_equal(np.asarray(res.image()), np.asarray(want.convert(res.image().mode)))
    assert [[m["key"] for m in r["maps"]] for r in res.data["rows"]] == [[s.key for s in row] for row in singles]
    assert [r["name"] for r in res.data["rows"]] == ["cat", "astro"]
    assert [r["target"] for r in res.data["rows"]] == [row[0].data["target"] for row in singles]
    ig = res.data["rows"][0]["maps"][1]
    assert ig["method"] == "ig" and ig["ig_completeness_delta"] == singles[0][1].data["ig_completeness_delta"]
    assert res.data["rows"][0]["maps"][2]["layer"] == singles[0][2].data["layer"]
    again = run(make_spec("attribution_grid", **kw), vm=lite0, store=store)
    assert again.cached and again.files["grid.png"] == res.files["grid.png"]


def test_attribution_grid_default_names_and_bad_input():
    import pytest

    from cnnvis.errors import CnnvisError

    spec = make_spec("attribution_grid", images=["sample:chelsea", "/x/dog.jpg"], methods=["saliency"])
    assert spec.row_names() == ["chelsea", "dog"]
    for bad, msg in [(dict(methods=["saliency", "nope"]), "unknown method 'nope'"),
                     (dict(methods=["saliency", "saliency"]), "listed twice"),
                     (dict(methods=["saliency"], names=["a", "b"]), "2 names for 1 images"),
                     (dict(methods=["saliency"], options={"ig": {"steps": 4}}), "options for 'ig'"),
                     (dict(methods=[]), "methods")]:
        with pytest.raises(CnnvisError, match=msg):
            make_spec("attribution_grid", **{"images": ["sample:chelsea"], **bad})
