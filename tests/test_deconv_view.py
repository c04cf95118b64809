"""What the deconvnet shows at depth (issue 20): the default (fired rule, 'sum' seed) against the
strongest unit alone and the pure Z&F rule on real photos (edge correlation and lattice share
computed here from their definitions), the rule and seed named in the job's JSON and on its
picture, the crop view's photo patch and projection cut from the same receptive field, the spec
defaults every face gets, the deconvnet attribution method's caption."""

from __future__ import annotations

import math
import statistics
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cnnvis.deconv import RULE_TEXT, SEED_TEXT, deconvnet
from conftest import sample

warnings.filterwarnings("ignore", category=UserWarning)


# ---------------------------------------------------------------------- the two numbers, from their definitions
def _blur(t: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    r = int(3 * sigma)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    t = F.conv2d(F.pad(t[None, None], (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(t, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))[0, 0]


def edge_correlation(r: torch.Tensor, x: torch.Tensor) -> float:
    """Pearson correlation, over the pixels r (C, H, W) reaches, of blur(sum_c |r|) and the blurred
    Sobel magnitude of the grey photo x (3, H, W); blur = Gaussian, sigma 4 px."""
    grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None, None]
    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    gp = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    mag = (F.conv2d(gp, sobel.view(1, 1, 3, 3)) ** 2 + F.conv2d(gp, sobel.t().reshape(1, 1, 3, 3)) ** 2).sqrt()
    a = r.abs().sum(0)
    reach = a > 0
    u, v = _blur(a)[reach], _blur(mag[0, 0])[reach]
    u, v = u - u.mean(), v - v.mean()
    return float((u * v).sum() / (u.norm() * v.norm()))


def lattice_share(r: torch.Tensor) -> float:
    """Share of |FFT2(sum_c r)|^2 (DC removed) in the top 1% of frequency bins."""
    p = torch.fft.fft2(r.sum(0).double()).abs().pow(2).flatten()
    p[0] = 0
    return float(p.topk(math.ceil(0.01 * p.numel())).values.sum() / p.sum())


def alias_share(r: torch.Tensor) -> float:
    """Share of |FFT2(sum_c r)|^2 (DC removed) in the stride-lattice bins: within 1 bin of a multiple of
    N/8 on both axes, or on one axis with the other within 1 of 0 (periods 2, 4, 8 px), DC's own
    neighbourhood left out (bench/deconv_depth.py's alias_share)."""
    H, W = r.shape[-2:]
    p = torch.fft.fft2(r.sum(0).double()).abs().pow(2)
    p[0, 0] = 0

    def near(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.fft.fftfreq(n, dtype=torch.float64) * n
        q = n / 8
        return ((f / q - (f / q).round()).abs() * q <= 1.0) & (f.abs() > 1), f.abs() <= 1

    (lh, zh), (lw, zw) = near(H), near(W)
    lat = lh[:, None] & lw[None] | lh[:, None] & zw[None] | zh[:, None] & lw[None]
    return float(p[lat].sum() / p.sum())


def test_metrics_on_known_signals():
    """The two numbers mean what they say: a pure checkerboard is all lattice; a projection that is the
    photo's own edge magnitude correlates with it; a blob where the photo is flat does not."""
    x = torch.zeros(3, 64, 64)
    x[:, 16:48, 16:48] = 1.0  # a white square: edges on its outline
    board = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2).float().expand(3, -1, -1) - 0.5
    assert lattice_share(board) == pytest.approx(1.0)
    assert alias_share(board) == pytest.approx(1.0)
    stripes = (torch.arange(64) % 4 < 2).float().expand(3, 64, -1) - 0.5  # period 4 along x: at N/4 on one axis
    assert alias_share(stripes) == pytest.approx(1.0)
    g = x[0][None, None]
    sob = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    gp = F.pad(g, (1, 1, 1, 1), mode="replicate")
    mag = (F.conv2d(gp, sob.view(1, 1, 3, 3)) ** 2 + F.conv2d(gp, sob.t().reshape(1, 1, 3, 3)) ** 2).sqrt()[0]
    assert edge_correlation(mag.expand(3, -1, -1) + 1e-3, x) > 0.99
    blob = torch.zeros(3, 64, 64)
    blob[:, 28:36, 28:36] = 1.0  # inside the square: no edges there
    assert edge_correlation(blob + 1e-3, x) < 0
    # white noise: the top 1% of exponentially distributed bin energies hold about 1% x (1 + ln 100) = 5.6%
    noise = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert lattice_share(noise) < 0.08
    noise = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert alias_share(noise) < 0.02  # at 224 px: about 0.6% of the bins


# ---------------------------------------------------------------------- the default at depth
def _pearson(u: torch.Tensor, v: torch.Tensor) -> float:
    u, v = u.flatten() - u.mean(), v.flatten() - v.mean()
    return float((u * v).sum() / (u.norm() * v.norm()))


@pytest.mark.slow
def test_default_shows_the_photo_at_depth_where_the_pure_rule_draws_a_lattice(hed):
    """vgg16_hed, top-3 channels, golden retriever and jaguar. conv4_3: the default (fired rule, = the
    masked rule on VGG; 'sum' seed) meets issue 20's goal, median edge correlation >= 0.3 and lattice share <= 0.2
    (measured +0.37 / 0.14), with three pictures, not one (median pairwise correlation of the
    top-3 blurred projections < 0.9, measured 0.67; ones over the whole map, units that did not
    fire included, give 0.98: the photo's edges whatever the channel). conv5_3: no lattice
    (<= 0.2, measured 0.14) and the photo's edges followed better than by the strongest unit alone
    (+0.20 against +0.10); the 0.3 edge goal is NOT met there (bench/deconv_depth.py: +0.16 on
    the tuning photos, +0.28 held out). The pure rule: lattices (median share > 0.4, measured 0.48)."""
    from cnnvis.images import load_image

    stats: dict = {}
    for name in ("golden_retriever", "jaguar"):
        x = hed.preprocess.prepare(load_image(str(sample(name))))
        for rule, seed in (("fired", "sum"), ("masked", "max"), ("zf", "sum")):
            kw = {} if rule == "fired" and seed == "sum" else {"rule": rule, "seed": seed}  # the default: no arguments
            res = deconvnet(hed, x, ["conv4_3", "conv5_3"], 3, **kw)
            assert (res.rule, res.seed) == (rule, seed)
            for lab, rec in zip(res.labels, res.reconstructions):
                d = stats.setdefault((rule, seed, lab), ([], [], []))
                for r in rec:
                    d[0].append(edge_correlation(r, x[0]))
                    d[1].append(lattice_share(r))
                bl = [_blur(r.abs().sum(0)) for r in rec]
                d[2].extend(_pearson(bl[i], bl[j]) for i in range(3) for j in range(i + 1, 3))
    med = {k: tuple(statistics.median(v) for v in d) for k, d in stats.items()}
    edge, lat, pair = med[("fired", "sum", "conv4_3")]
    assert edge >= 0.3 and lat <= 0.2 and pair < 0.9, med
    edge5, lat5, _ = med[("fired", "sum", "conv5_3")]
    assert lat5 <= 0.2 and edge5 >= med[("masked", "max", "conv5_3")][0] + 0.05, med
    for lab in ("conv4_3", "conv5_3"):
        assert med[("zf", "sum", lab)][1] > 0.4, med


def test_likeness_and_its_note_on_known_projections():
    """Likeness = median pairwise correlation of the projections' magnitudes: 1 for one picture three
    times (sign flips included), near 0 for independent noise, nan for one; the note names the
    layers above 0.9 (with their value) under the masked rule only."""
    from cnnvis.deconv import _alike_note, _likeness

    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 64, 64, generator=g)
    assert _likeness(torch.cat([a, -a, 2 * a])) == pytest.approx(1.0, abs=1e-5)
    assert abs(_likeness(torch.rand(3, 3, 64, 64, generator=g))) < 0.3
    assert math.isnan(_likeness(a))
    note = _alike_note(["stage5", "stage6"], [0.95, 0.5], "masked")
    assert len(note) == 1 and "stage5 0.95" in note[0] and "stage6" not in note[0]
    assert _alike_note(["stage5"], [0.95], "zf") == [] and _alike_note(["stage5"], [0.85], "masked") == []


@pytest.mark.slow
def test_embedded_model_default_follows_the_photo_without_the_stride_lattice(lite0):
    """efficientnet_lite0 stages 4-6 on the robin, top-3, medians per stage. The default (fired rule:
    ReLU6 units saturated at 6 pass the signal, strided convs undone by nearest resize) follows the
    photo's edges (edge correlation >= 0.3, measured +0.34..+0.49) better than the masked rule (guided
    backprop, +0.14..+0.26; by >= 0.05), and has no stride lattice: its alias share <= 0.02 (measured
    0.005, white noise ~0.006) where the masked rule's zero insertion leaves >= 0.04 (0.06-0.11) and the
    pure rule's checkerboard >= 0.5 (0.62-0.67; lattice share >= 0.8, measured 0.88-0.92). The issue's
    lattice share of the default is 0.26-0.28 here, above the 0.2 goal: that number also counts the
    low-frequency energy of a photo-like picture (the photo itself: 0.8-0.96), so it stays NOT met; it is
    held below 0.3 and below the pure rule's. Where the three projections look alike (stages 5-6) the
    panel's note says so."""
    from cnnvis.images import load_image

    x = lite0.preprocess.prepare(load_image(str(sample("robin"))))
    layers = ["stage4", "stage5", "stage6"]
    ours = deconvnet(lite0, x, layers, 3)
    assert ours.rule == "fired"
    masked, pure = deconvnet(lite0, x, layers, 3, rule="masked"), deconvnet(lite0, x, layers, 3, rule="zf")
    for i, lab in enumerate(ours.labels):
        med = {name: (statistics.median(edge_correlation(r, x[0]) for r in res.reconstructions[i]),
                      statistics.median(lattice_share(r) for r in res.reconstructions[i]),
                      statistics.median(alias_share(r) for r in res.reconstructions[i]))
               for name, res in (("fired", ours), ("masked", masked), ("zf", pure))}
        (e_f, l_f, a_f), (e_m, _, a_m), (_, l_z, a_z) = med["fired"], med["masked"], med["zf"]
        assert e_f >= 0.3 and e_f >= e_m + 0.05, (lab, med)
        assert a_f <= 0.02 and a_m >= 0.04 and a_z >= 0.5, (lab, med)
        assert l_f <= 0.3 and l_z >= 0.8, (lab, med)
    alike = [f"{lab} {v:.2f}" for lab, v in zip(ours.labels, ours.likeness) if v > 0.9]
    assert {"stage5", "stage6"} <= {s.split()[0] for s in alike}, ours.likeness
    note = [n for n in ours.notes if "alike" in n]
    assert len(note) == 1 and all(s in note[0] for s in alike)
    assert not [n for n in pure.notes if "alike" in n]
    assert any("nearest resize" in n for n in ours.notes) and any("faint lattice" in n for n in masked.notes)


# ---------------------------------------------------------------------- the job: rule in JSON and on the picture
def _header(png: bytes, lines: list[str]) -> tuple[Image.Image, Image.Image]:
    """(the panel's top band, the same text lines drawn by the panel's own text helper)."""
    import io

    from cnnvis.viz.panels import _text_lines

    panel = Image.open(io.BytesIO(png)).convert("RGB")
    want = _text_lines(lines, panel.size[0])
    return panel.crop((0, 0, *want.size)), want


@pytest.mark.parametrize("rule,project", [("fired", None), ("zf", "max")])
def test_job_names_its_rule_and_seed_in_json_and_on_the_picture(lite0, rule, project, tmp_path):
    """The default (no rule, no project: fired, 'sum') and the pure rule's Fig. 2 pairs alone: the
    rule and the seed named in the JSON and drawn under the title; the Fig. 2 crops in the JSON
    either way (the default projects the strongest units as extra rows of its sweep)."""
    from cnnvis.jobs import run

    ref = str(sample("robin"))
    spec = {"kind": "deconv", "model": "efficientnet_lite0", "image": ref, "layers": ["stage1", "stage3"], "size": 96}
    if rule == "zf":
        spec.update(rule="zf", project=project)
    res = run(spec)
    d = res.data
    seed = project or "sum"
    assert (d["rule"], d["rule_text"], d["project"], d["seed_text"]) == (rule, RULE_TEXT[rule], seed, SEED_TEXT[seed])
    assert [len(lay["crops"]) for lay in d["layers"]] == [3, 3]
    # the pure rule through lite0's strided convolutions: the checkerboard caption; the fired rule: none
    checker = [n for n in d["notes"] if "checkerboard" in n]
    assert bool(checker) == (rule == "zf")
    how = {"sum": "each top channel projected, full size, its strongest unit's box outlined; beside it the photo "
                  "patch in that box and the strongest unit's own projection there (Z&F Fig. 2)",
           "max": "each top channel's strongest unit projected, beside the photo patch that drove it (Z&F Fig. 2); "
                  "both cropped to the unit's receptive field, tightened to 99% of the projection's energy"}[seed]
    head = f"efficientnet_lite0 deconvnet: {how}"
    got, want = _header(res.files["panel.png"], [head, f"{RULE_TEXT[rule]}; {SEED_TEXT[seed]}"] + d["notes"])
    assert got.tobytes() == want.tobytes()  # the rule and seed line (and the checkerboard caption) drawn
    other = "zf" if rule == "fired" else "fired"
    _, wrong = _header(res.files["panel.png"], [head, f"{RULE_TEXT[other]}; {SEED_TEXT[seed]}"] + d["notes"])
    assert got.tobytes() != wrong.tobytes()


def test_spec_defaults_reach_every_face():
    """The web sends {kind, image, top}; the CLI passes --rule / --project only when given: both get these."""
    from cnnvis.jobs import make_spec

    s = make_spec("deconv", image="sample:chelsea", top=3)
    assert (s.rule, s.project) == ("fired", "sum")
    with pytest.raises(Exception, match="rule"):
        make_spec("deconv", image="sample:chelsea", rule="guided")


# ---------------------------------------------------------------------- the crop view
def test_crop_view_pairs_projection_and_photo_patch_at_the_same_field(hed):
    """Each strongest unit's projection (the default seed's extra rows) and its photo patch are cut
    from one box, inside the unit's receptive field, holding (at least) 99% of the projection's
    energy; the projection itself stays full size and is zero outside the field. Without those
    rows there is nothing to crop."""
    from cnnvis.images import load_image
    from cnnvis.study.receptive import receptive_field
    from cnnvis.viz.panels import MIN_CROP, crop_pairs

    x = hed.preprocess.prepare(load_image(str(sample("golden_retriever"))), size=128)
    assert crop_pairs(x, deconvnet(hed, x, ["conv2_2"], 3)) is None
    res = deconvnet(hed, x, ["conv2_2", "conv4_3"], 3, also_units=True)
    boxes = []
    for n, units in zip(res.layers, res.units):
        rf = receptive_field(hed, n, (128, 128))
        boxes.append([rf.box(int(y), int(xx), (128, 128)) for y, xx in units.tolist()])
    pairs = crop_pairs(x, res, boxes)
    for i, rec in enumerate(res.unit_reconstructions):
        assert rec.shape == (3, 3, 128, 128)
        for j, ((t, left, b, r), patch, proj) in enumerate(pairs[i]):
            ft, fl, fb, fr = boxes[i][j]
            inside = torch.zeros(128, 128, dtype=torch.bool)
            inside[ft:fb + 1, fl:fr + 1] = True
            assert not (rec[j].abs().sum(0)[~inside] > 0).any()  # zero outside the field
            if fb - ft + 1 >= MIN_CROP and fr - fl + 1 >= MIN_CROP:  # (small fields are shown with context)
                assert ft <= t and fl <= left and b <= fb and r <= fr
            assert torch.equal(patch, x[0, :, t:b + 1, left:r + 1])      # the photo there ...
            assert torch.equal(proj, rec[j][:, t:b + 1, left:r + 1])     # ... and the projection there
            assert float(proj.abs().sum()) >= 0.99 * float(rec[j].abs().sum())


# ---------------------------------------------------------------------- the deconvnet attribution method
@pytest.mark.slow
def test_deconvnet_attribution_map_shows_the_photo_and_names_its_rule(lite0):
    """The 'deconvnet' attribution method (the photo page's map) takes the deconvnet's default rule,
    'fired': on lite0's robin (224 px, its top class) its map follows the photo's edges (edge
    correlation >= 0.25, measured +0.33) with no stride lattice (alias share <= 0.02, measured 0.005);
    option rule 'zf' (the pure rule, = Captum's Deconvolution) is the checkerboard (alias share >= 0.5,
    measured 0.67; edge +0.14). Each panel says which rule drew it, under the picture; guided: no line."""
    import io

    from cnnvis.jobs import run
    from cnnvis.viz.panels import _text_lines

    spec = {"kind": "attribution", "model": "efficientnet_lite0", "image": str(sample("robin")),
            "method": "deconvnet"}
    fired, pure = run(spec), run({**spec, "options": {"rule": "zf"}})
    rgb = np.asarray(Image.open(io.BytesIO(fired.files["input.png"])).convert("RGB"), dtype=np.float32)
    x = torch.from_numpy(rgb / 255).permute(2, 0, 1)  # (3, H, W): the photo as the job saw it
    maps = {k: torch.from_numpy(r.array("attribution.npy")) for k, r in (("fired", fired), ("zf", pure))}
    assert edge_correlation(maps["fired"], x) >= 0.25 and alias_share(maps["fired"]) <= 0.02
    assert alias_share(maps["zf"]) >= 0.5
    assert "fired rule" in fired.data["caption"] and "checkerboard" in pure.data["caption"]
    for res in (fired, pure):
        cap = res.data["caption"]
        panel = Image.open(io.BytesIO(res.files["panel.png"])).convert("RGB")
        want = _text_lines([cap], panel.size[0])
        got = panel.crop((0, panel.size[1] - want.size[1], panel.size[0], panel.size[1]))
        assert got.tobytes() == want.tobytes()
    guided = run({**spec, "method": "guided", "size": 96})
    assert "caption" not in guided.data
