"""Filter grids (issue 10, items 4-5): per-layer plan from the receptive field, dead channels found on
the sample photos and drawn as 'dead', an objective that reaches sparse channels, a flat-tile
measure, and a progress line per layer on stderr when no terminal shows a bar."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from cnnvis.optvis import channel, render
from cnnvis.optvis.filters import (
    FILTER_DEFAULTS, GREY_STD, MAX_SIZE, MAX_STEPS, dead_channels, flat_score, layer_plan, receptive_fields,
    render_filters,
)
from cnnvis.viz.filters import filters_grid


def test_receptive_fields_and_plan_grow_with_depth(hed):
    rf = receptive_fields(hed, ["conv1_1", "conv1_2", "conv2_1", "conv3_1", "conv5_3"])
    # VGG16: 3x3 convs, 2x2/2 pools
    assert rf == {"conv1_1": 3, "conv1_2": 5, "conv2_1": 10, "conv3_1": 24, "conv5_3": 196}
    (s1, n1), (s5, n5) = layer_plan(rf["conv1_1"], hed.min_size), layer_plan(rf["conv5_3"], hed.min_size)
    assert s1 < s5 and n1 < n5 and s1 >= hed.min_size
    sizes = [layer_plan(r, hed.min_size)[0] for r in rf.values()]
    assert sizes == sorted(sizes)
    assert layer_plan(None, 32) == (MAX_SIZE, MAX_STEPS)  # unknown receptive field: the largest plan
    assert layer_plan(3, 64)[0] == 64  # never below the model's smallest input


def test_real_dead_channel_of_vgg16_hed(hed):
    """conv2_1's channel 7 is <= 0 on every pixel of the sample photos in these weights (its maximum
    is about -33); channel 2 fires on most pixels."""
    dead = dead_channels(hed, ["conv2_1", "conv1_1"])
    assert 7 in dead["conv2_1"] and 2 not in dead["conv2_1"]
    assert dead["conv1_1"] == []


def test_zeroed_channel_is_dead_and_drawn_dead(hed):
    vm = copy.deepcopy(hed)
    conv = vm.model.features[0]
    with torch.no_grad():
        conv.weight[1].zero_()
        conv.bias[1].zero_()
    assert dead_channels(vm, ["conv1_1"])["conv1_1"] == [1]
    (row,) = render_filters(vm, ["conv1_1"], 3, steps=2, size=32)
    assert row.dead == [1] and row.size == 32 and row.steps == 2
    assert torch.isnan(row[3][1]) and not torch.isnan(row[3][0])
    img = np.asarray(filters_grid(vm, [row]).convert("RGB")).astype(int)
    reddish = (img[..., 0] > 120) & (img[..., 1] < 80) & (img[..., 2] < 80)  # the 'dead' label
    w = img.shape[1]
    assert reddish[:, w // 3:].any()  # somewhere right of the row label


def test_pre_relu_leaky_objective_reaches_a_sparse_channel(hed):
    """conv1_2 channel 1 fires on ~1.5 % of photo pixels (max ~390). From a grey start its plain
    pre-ReLU mean ends negative and its tile flat; the leaky mean grows a pattern. A post-ReLU
    objective has no gradient at all where the channel is off everywhere (it is, on uniform grey)."""
    kw = dict(steps=32, size=32, seed=0, **FILTER_DEFAULTS)
    plain = render(hed, channel("conv1_2", [1]), **kw)
    leaky = render(hed, channel("conv1_2", [1], leak=0.1), **kw)
    assert float(plain.final_values[0]) < 0 and float(flat_score(plain.images)[0]) < GREY_STD
    assert float(flat_score(leaky.images)[0]) > 2 * GREY_STD
    # post-ReLU on an exactly grey start: zero gradient, the image never moves
    flat = dict(steps=4, size=32, seed=0, transforms="none", init_sd=0.0)
    post = render(hed, channel("relu1_2", [1]), **flat)
    pre = render(hed, channel("conv1_2", [1], leak=0.1), **flat)
    assert float(post.final_values[0]) == 0.0 and float(post.images.std()) < 1e-6
    assert float(pre.images.std()) > 1e-3


def test_leak_validation():
    from cnnvis.errors import CnnvisError

    with pytest.raises(CnnvisError, match="leak"):
        channel("conv1_1", 0, leak=0)
    assert channel("conv1_1", [0], leak=0.1).image_key(0) != channel("conv1_1", [0]).image_key(0)
    assert channel("conv1_1", [0], leak=1).image_key(0) == channel("conv1_1", [0]).image_key(0)


def test_flat_score_separates_flat_from_pattern():
    flat = torch.full((1, 3, 32, 32), 0.5)
    flat[:, 0] = 0.9  # a single flat colour is flat too
    stripes = torch.zeros(1, 3, 32, 32)
    stripes[..., ::4, :] = 1.0
    s = flat_score(torch.cat([flat, stripes]))
    assert float(s[0]) < GREY_STD < float(s[1])


def test_job_records_plan_dead_grey_and_logs_a_line_per_layer(hed, capsys, monkeypatch):
    """No terminal (and --json) hides a bar: the job prints one line per layer on stderr; the
    result records per layer size, steps, dead channels and grey tiles; explicit ints still win."""
    from cnnvis.jobs import make_spec, run

    monkeypatch.delenv("CNNVIS_NO_PROGRESS", raising=False)
    res = run(make_spec("filters", model="vgg16_hed", layers=["conv1_1", "conv3_3"], channels=[6, 7], steps=2),
              vm=hed)
    err = capsys.readouterr().err
    assert "filters: conv1_1 (1/2)" in err and "filters: conv3_3 (2/2)" in err
    d = res.data
    assert res.spec["preset"] is None  # the filter recipe (FILTER_DEFAULTS), not the class preset
    l1, l2 = d["layers"]
    assert l1["size"] == layer_plan(3, hed.min_size)[0] and l1["steps"] == 2 and l2["size"] > l1["size"]
    assert l2["dead"] == [7] and l2["values"][1] is None and d["dead"] == 1
    assert isinstance(d["grey"], int) and all(isinstance(x["grey"], list) for x in d["layers"])
    assert all(set(x["grey"]) <= set(x["rendered_again"]) for x in d["layers"])  # grey only after a retry
    json.dumps(d)
    monkeypatch.setenv("CNNVIS_NO_PROGRESS", "1")
    run(make_spec("filters", model="vgg16_hed", layers=["conv1_1"], channels=[0], steps=1, size=32, seed=3), vm=hed)
    assert "filters:" not in capsys.readouterr().err


def test_filters_cli_json_prints_layer_lines(capsys, tmp_path, hed, monkeypatch):
    from cnnvis.cli import main

    monkeypatch.delenv("CNNVIS_NO_PROGRESS", raising=False)
    out = tmp_path / "g.png"
    rc = main(["filters", "-m", "vgg16_hed", "--layers", "conv1_1", "--channels", "0,1", "--steps", "2",
               "--size", "auto", "--out", str(out), "--json"])
    o, err = capsys.readouterr()
    assert rc == 0, err
    assert "filters: conv1_1 (1/1)" in err
    d = json.loads(o)["data"]
    assert d["layers"][0]["size"] == layer_plan(3, hed.min_size)[0] and d["dead"] == 0 and out.exists()


def test_job_context_log_policy(monkeypatch):
    """The filters job's per-layer lines go through JobContext.log (compute no longer reads the context's
    privates): stderr in a log or under --json, nothing while a terminal shows the bar, when the caller
    takes progress itself, or under CNNVIS_NO_PROGRESS."""
    import io
    import sys

    from cnnvis.jobs import JobContext

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("CNNVIS_NO_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert JobContext(None).log is not None and JobContext(lambda *a: None).log is None
    JobContext(True).log("filters: conv1_1 (1/1)")
    assert sys.stderr.getvalue() == "filters: conv1_1 (1/1)\n"
    monkeypatch.setattr(sys, "stderr", Tty())
    assert JobContext(True).log is None and JobContext(None).log is not None
    monkeypatch.setenv("CNNVIS_NO_PROGRESS", "1")
    assert JobContext(None).log is None
