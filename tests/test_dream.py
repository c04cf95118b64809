"""DeepDream: same-size output, objective goes up, tiling, seeds, the input file is kept, bad input."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnvis.cli import main
from cnnvis.dream import dream, dream_objective, octave_sizes
from cnnvis.errors import CnnvisError
from cnnvis.hooks import capture, hook_count
from cnnvis.images import load_image, to_tensor
from cnnvis.optvis.tiling import tile_starts, tiled_backward
from cnnvis.viz import to_pil

from conftest import sample

FAST = dict(octaves=2, steps_per_octave=2, step_size=0.02, jitter=4)


@pytest.mark.parametrize("size", [(101, 77), (64, 96)])
def test_output_has_the_input_size(lite0, pelican_image, size):
    img = pelican_image.resize(size)
    out = dream(lite0, img, ["stage2"], **FAST)
    assert torch.is_tensor(out) and out.shape == (1, 3, size[1], size[0])  # compute returns tensors
    x = to_tensor(img)
    out_t = dream(lite0, x, ["stage2"], **FAST)
    assert out_t.shape == x.shape and 0 <= out_t.min() and out_t.max() <= 1


def _l2(vm, x, layer):
    with torch.no_grad(), capture(vm, [layer]) as cap:
        cap.run(x)
        return float(cap[layer].pow(2).mean())


def test_dream_increases_the_objective_and_keeps_the_model(lite0, pelican_image):
    x = to_tensor(pelican_image.resize((128, 96)))
    flags = [m.training for m in lite0.model.modules()]
    out = dream(lite0, x, ["stage3"], octaves=1, steps_per_octave=6, step_size=0.02, jitter=4)
    assert _l2(lite0, out, "stage3") > 1.2 * _l2(lite0, x, "stage3")
    assert (out - x).abs().mean() > 0.005
    assert flags == [m.training for m in lite0.model.modules()] and hook_count(lite0.model) == 0
    assert not any(p.requires_grad != True for p in lite0.model.parameters())  # noqa: E712  (untouched flags)


def test_channel_dream_raises_those_channels(lite0, pelican_image):
    x = to_tensor(pelican_image.resize((96, 96)))
    out = dream(lite0, x, ["stage3"], channels=[5], octaves=1, steps_per_octave=5, jitter=0)

    def ch5(t):
        with torch.no_grad(), capture(lite0, ["stage3"]) as cap:
            cap.run(t)
            return float(cap["stage3"][:, 5].pow(2).mean())

    assert ch5(out) > 1.5 * ch5(x)


def test_seeded_runs_reproduce(lite0, pelican_image):
    img = pelican_image.resize((80, 64))
    a = np.asarray(to_pil(dream(lite0, img, ["stage2"], seed=3, **FAST)))
    b = np.asarray(to_pil(dream(lite0, img, ["stage2"], seed=3, **FAST)))
    c = np.asarray(to_pil(dream(lite0, img, ["stage2"], seed=4, **FAST)))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_tile_starts_cover_the_image():
    assert tile_starts(100, 128) == [0]
    assert tile_starts(100, 40) == [0, 40, 60]
    assert tile_starts(80, 40) == [0, 40]


def test_tiled_gradient_equals_untiled_on_an_image_that_fits_one_tile(lite0):
    x = torch.rand(1, 3, 96, 80, generator=torch.Generator().manual_seed(0))
    obj = dream_objective(["stage3"])
    grads = []
    for tile in (None, 96):
        xx = x.clone().requires_grad_(True)
        with capture(lite0, ["stage3"]) as cap:

            def fn(t):
                cap.run(t)
                return obj({"stage3": cap["stage3"]})

            if tile is None:
                (-fn(xx).sum()).backward()
            else:
                tiled_backward(fn, xx, tile)
        grads.append(xx.grad)
    lite0.model.zero_grad(set_to_none=True)  # this test backpropagates through the shared model itself
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_tiled_gradient_equals_untiled_for_a_pointwise_objective():
    """With a 1x1-conv network every tile is independent: tiles of 16 give exactly the full gradient."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Tanh())
    x = torch.rand(2, 3, 48, 32)
    fn = lambda t: net(t).pow(2).flatten(1).mean(1)  # noqa: E731
    full = x.clone().requires_grad_(True)
    v_full = fn(full)
    (-v_full.sum()).backward()
    tiled = x.clone().requires_grad_(True)
    v_tiled = tiled_backward(fn, tiled, 16)
    assert torch.allclose(v_full.detach(), v_tiled, atol=1e-6)
    assert torch.allclose(full.grad, tiled.grad, atol=1e-8)


@pytest.mark.parametrize("shift", [(0, 0), (5, -7), (-20, 13)])
def test_rolled_tile_grid_equals_tiling_the_rolled_image(shift):
    """shift= moves the tile grid instead of rolling the image: same values, same gradient, and a
    leaf's gradient lands in its own .grad (no other full-size buffer)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh())
    fn = lambda t: net(t).pow(2).flatten(1).mean(1)  # noqa: E731
    x = torch.rand(1, 3, 48, 40)
    ref = x.clone().requires_grad_(True)
    v_ref = tiled_backward(fn, torch.roll(ref, shift, dims=(-2, -1)), 16)
    got = x.clone().requires_grad_(True)
    v_got = tiled_backward(fn, got, 16, shift=shift)
    assert torch.allclose(v_ref, v_got, atol=1e-6)
    assert torch.allclose(ref.grad, got.grad, atol=1e-7)


def test_dream_keeps_the_input_tensor(lite0):
    x = torch.rand(1, 3, 80, 72, generator=torch.Generator().manual_seed(2))
    before = x.clone()
    out = dream(lite0, x, ["stage2"], **FAST)
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr() and (out - x).abs().max() > 0


def test_tiled_dream_runs_on_a_photo_larger_than_the_tile(lite0, pelican_image):
    img = pelican_image.resize((150, 100))
    out = dream(lite0, img, ["stage2"], tile=64, **FAST)
    assert out.shape == (1, 3, 100, 150)


def test_octave_sizes_end_at_the_input_size():
    s = octave_sizes(301, 199, 4, 1.4, 32)
    assert s[-1] == (301, 199) and len(s) == 4 and s[0][0] < s[1][0] < s[2][0]
    assert octave_sizes(60, 60, 5, 1.4, 32)[0][0] >= 32


def test_guided_dream_differs_from_plain(lite0, pelican_image):
    img = pelican_image.resize((96, 96))
    guide = load_image(sample("golden_retriever"))
    a = np.asarray(to_pil(dream(lite0, img, ["stage3"], seed=0, **FAST)), dtype=np.int16)
    b = np.asarray(to_pil(dream(lite0, img, ["stage3"], guide=guide, seed=0, **FAST)), dtype=np.int16)
    assert np.abs(a - b).mean() > 0.5


def test_bad_arguments(lite0, pelican_image):
    with pytest.raises(CnnvisError, match="too small"):
        dream(lite0, pelican_image.resize((20, 20)), ["stage2"])
    with pytest.raises(CnnvisError, match="unknown layer 'stage9'"):
        dream(lite0, pelican_image.resize((64, 64)), ["stage9"])
    with pytest.raises(CnnvisError, match="out of range"):
        dream(lite0, pelican_image.resize((64, 64)), ["stage2"], channels=[999], **FAST)
    with pytest.raises(CnnvisError, match="no spatial output"):
        dream(lite0, pelican_image.resize((64, 64)), ["classifier"], **FAST)


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16"])
def test_cli_converts_any_photo_mode_and_keeps_the_input(tmp_path, capsys, pelican_image, mode):
    src = pelican_image.resize((72, 56))
    if mode == "I;16":
        img = Image.fromarray((np.asarray(src.convert("L"), np.uint16) * 257))
        path = tmp_path / "in16.png"
    else:
        img = src.convert(mode)
        path = tmp_path / f"in.{'jpg' if mode == 'CMYK' else 'png'}"
    img.save(path)
    before = _sha(path)
    out = tmp_path / "out.jpg"
    code = main(["dream", str(path), "--layers", "stage2", "--octaves", "2", "--steps", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert Image.open(out).format == "JPEG" and Image.open(out).size == (72, 56)
    assert _sha(path) == before


def test_cli_row_has_one_column_per_layer(tmp_path, capsys, pelican_image):
    path = tmp_path / "p.png"
    pelican_image.resize((64, 48)).save(path)
    code = main(["dream", str(path), "--layers", "stage1,stage3", "--octaves", "1", "--steps", "1", "--row", str(tmp_path / "row.png")])
    assert code == 0
    row = Image.open(tmp_path / "row.png")
    assert row.size[0] > 3 * 64 and row.size[1] < 2 * 64


def test_cli_row_json_lists_every_dream_job_in_full(tmp_path, capsys, pelican_image):
    """`dream --row --json` lists each layer's `dream` result as the Python API gives it (spec, key, data,
    files, env...): computed (cached false), and on a rerun with the same --cache (store hits, every field)."""
    import json

    from cnnvis.jobs import Store, make_spec, run

    path = tmp_path / "p.png"
    pelican_image.resize((64, 48)).save(path)
    args = ["dream", str(path), "--layers", "stage1,stage3", "--octaves", "1", "--steps", "1", "--row",
            str(tmp_path / "row.png"), "--json", "--cache", str(tmp_path / "cache")]
    runs = []
    for _ in range(2):
        assert main(args) == 0
        runs.append(json.loads(capsys.readouterr().out))
    want = [run(make_spec("dream", image=str(path), layers=[n], octaves=1, steps=1), store=Store(tmp_path / "cache"))
            .to_dict() for n in ("stage1", "stage3")]  # store hits
    assert [w["cached"] for w in want] == [True, True] and want[0]["data"]["layers"] == ["stage1"]
    assert runs[1] == {"row": {"path": str(tmp_path / "row.png"), "results": want}}
    made = [{k: v for k, v in w.items() if k not in ("seconds", "env_differs")} | {"cached": False} for w in want]
    assert runs[0]["row"]["path"] == str(tmp_path / "row.png")
    assert [{k: v for k, v in d.items() if k != "seconds"} for d in runs[0]["row"]["results"]] == made


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "{inp}"], "is the input file"),
        (["--out", "{tmp}/x.xyz"], "unknown image format"),
        ([], "give --out"),
        (["--layers", "stage9", "--out", "{tmp}/o.png"], "unknown layer 'stage9'"),
        (["--channels", "a,b", "--out", "{tmp}/o.png"], "comma-separated integers"),
    ],
)
def test_cli_bad_input_exits_2_and_keeps_the_input(tmp_path, capsys, pelican_image, args, message):
    inp = tmp_path / "in.png"
    pelican_image.resize((64, 48)).save(inp)
    before = _sha(inp)
    code = main(["dream", str(inp), "--steps", "1", "--octaves", "1"] + [a.format(inp=inp, tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert _sha(inp) == before


def test_cli_refuses_decompression_bombs(tmp_path, capsys):
    from test_images import _png_declaring

    (tmp_path / "bomb.png").write_bytes(_png_declaring(40_000, 40_000))
    code = main(["dream", str(tmp_path / "bomb.png"), "--out", str(tmp_path / "o.png")])
    assert code == 2 and "decompression bomb" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
