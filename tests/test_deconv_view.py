"""What the deconvnet shows at depth (issue 20): the default rule against the pure Z&F rule on real
photos (edge correlation and lattice share computed here from their definitions), the rule named
in the job's JSON and on its picture, the crop view's photo patch and projection cut from the same
receptive field, the spec defaults every face gets."""

from __future__ import annotations

import math
import statistics
import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cnnvis.deconv import RULE_TEXT, deconvnet
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


def test_metrics_on_known_signals():
    """The two numbers mean what they say: a pure checkerboard is all lattice; a projection that is the
    photo's own edge magnitude correlates with it; a blob where the photo is flat does not."""
    x = torch.zeros(3, 64, 64)
    x[:, 16:48, 16:48] = 1.0  # a white square: edges on its outline
    board = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2).float().expand(3, -1, -1) - 0.5
    assert lattice_share(board) == pytest.approx(1.0)
    g = x[0][None, None]
    sob = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    gp = F.pad(g, (1, 1, 1, 1), mode="replicate")
    mag = (F.conv2d(gp, sob.view(1, 1, 3, 3)) ** 2 + F.conv2d(gp, sob.t().reshape(1, 1, 3, 3)) ** 2).sqrt()[0]
    assert edge_correlation(mag.expand(3, -1, -1) + 1e-3, x) > 0.99
    blob = torch.zeros(3, 64, 64)
    blob[:, 28:36, 28:36] = 1.0  # inside the square: no edges there
    assert edge_correlation(blob + 1e-3, x) < 0
    # white noise: the top 1% of exponentially distributed bin energies hold about 1% x (1 + ln 100) = 5.6%
    assert lattice_share(torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0))) < 0.08


# ---------------------------------------------------------------------- the default rule at depth
@pytest.mark.slow
def test_default_rule_shows_the_photo_where_the_pure_rule_draws_a_lattice(hed):
    """vgg16_hed conv4_3 / conv5_3, top-3 channels, golden retriever and jaguar: the pure rule's
    projections are lattices (median share > 0.4, measured 0.51); the default's (masked rule,
    strongest unit) are not (median <= 0.2, issue 20's goal; measured 0.15) and follow the photo's
    edges better (median edge correlation +0.07 against -0.07). Issue 20's edge goal (>= 0.3) is
    NOT met by any rule here: bench/deconv_depth.py gives the numbers on two photo sets."""
    from cnnvis.images import load_image

    stats = {"masked": ([], []), "zf": ([], [])}
    for name in ("golden_retriever", "jaguar"):
        x = hed.preprocess.prepare(load_image(str(sample(name))))
        for rule in ("masked", "zf"):
            res = deconvnet(hed, x, ["conv4_3", "conv5_3"], 3, **({} if rule == "masked" else {"rule": "zf"}))
            assert res.rule == rule and res.seed == "max"
            for rec in res.reconstructions:
                for r in rec:
                    stats[rule][0].append(edge_correlation(r, x[0]))
                    stats[rule][1].append(lattice_share(r))
    med = {k: (statistics.median(e), statistics.median(lat)) for k, (e, lat) in stats.items()}
    assert med["zf"][1] > 0.4 and med["masked"][1] <= 0.2, med
    assert med["masked"][0] >= med["zf"][0] + 0.1, med


# ---------------------------------------------------------------------- the job: rule in JSON and on the picture
def _header(png: bytes, lines: list[str]) -> tuple[Image.Image, Image.Image]:
    """(the panel's top band, the same text lines drawn by the panel's own text helper)."""
    import io

    from cnnvis.viz.panels import _text_lines

    panel = Image.open(io.BytesIO(png)).convert("RGB")
    want = _text_lines(lines, panel.size[0])
    return panel.crop((0, 0, *want.size)), want


@pytest.mark.parametrize("rule", ["masked", "zf"])
def test_job_names_its_rule_in_json_and_on_the_picture(lite0, rule, tmp_path):
    from cnnvis.jobs import run

    ref = str(sample("robin"))
    spec = {"kind": "deconv", "model": "efficientnet_lite0", "image": ref, "layers": ["stage1", "stage3"], "size": 96}
    if rule == "zf":
        spec["rule"] = "zf"
    res = run(spec)
    d = res.data
    assert d["rule"] == rule and d["rule_text"] == RULE_TEXT[rule] and d["project"] == "max"
    # the pure rule through lite0's strided convolutions: the checkerboard caption; the masked rule: none
    checker = [n for n in d["notes"] if "checkerboard" in n]
    assert bool(checker) == (rule == "zf")
    how = ("each top channel's strongest unit projected, beside the photo patch that drove it (Z&F Fig. 2); "
           "both cropped to the unit's receptive field, tightened to 99% of the projection's energy")
    got, want = _header(res.files["panel.png"], [f"efficientnet_lite0 deconvnet: {how}", RULE_TEXT[rule]] + d["notes"])
    assert got.tobytes() == want.tobytes()  # the rule line (and the checkerboard caption) drawn on the panel
    other = "zf" if rule == "masked" else "masked"
    _, wrong = _header(res.files["panel.png"], [f"efficientnet_lite0 deconvnet: {how}", RULE_TEXT[other]] + d["notes"])
    assert got.tobytes() != wrong.tobytes()


def test_spec_defaults_reach_every_face():
    """The web sends {kind, image, top}; the CLI passes --rule / --project only when given: both get these."""
    from cnnvis.jobs import make_spec

    s = make_spec("deconv", image="sample:chelsea", top=3)
    assert (s.rule, s.project) == ("masked", "max")
    with pytest.raises(Exception, match="rule"):
        make_spec("deconv", image="sample:chelsea", rule="guided")


# ---------------------------------------------------------------------- the crop view
def test_crop_view_pairs_projection_and_photo_patch_at_the_same_field(hed):
    """Each projection and its photo patch are cut from one box, inside the unit's receptive field,
    holding (at least) 99% of the projection's energy; the projection itself stays full size and is
    zero outside the field."""
    from cnnvis.images import load_image
    from cnnvis.study.receptive import receptive_field
    from cnnvis.viz.panels import MIN_CROP, crop_pairs

    x = hed.preprocess.prepare(load_image(str(sample("golden_retriever"))), size=128)
    res = deconvnet(hed, x, ["conv2_2", "conv4_3"], 3)
    boxes = []
    for n, units in zip(res.layers, res.units):
        rf = receptive_field(hed, n, (128, 128))
        boxes.append([rf.box(int(y), int(xx), (128, 128)) for y, xx in units.tolist()])
    pairs = crop_pairs(x, res, boxes)
    for i, rec in enumerate(res.reconstructions):
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
