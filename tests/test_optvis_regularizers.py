"""Each regularizer does what it says, on small images with known statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnvis.errors import CnnvisError
from cnnvis.optvis import (
    BoundedRange, ClipSmallContribution, ClipSmallNorm, FourierImage, GaussianBlur, GradientRMS, L2Decay, PixelImage, RandomBlur,
    TotalVariation, channel, gaussian_blur, render, total_variation,
)
from cnnvis.optvis.objectives import Objective


def noise(b=2, h=32, w=32, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def high_freq_energy(x):
    f = torch.fft.rfft2(x - x.mean((-2, -1), keepdim=True)).abs() ** 2
    h = x.shape[-2]
    fy = torch.fft.fftfreq(h).abs().view(-1, 1)
    fx = torch.fft.rfftfreq(x.shape[-1]).view(1, -1)
    return f[..., (fy > 0.25) | (fx > 0.25)].sum()


def zero_objective():
    """Reads the image through a 1x1 identity conv, contributes nothing: only the regularizers act."""
    return Objective(lambda acts: 0 * acts["0"].flatten(1).mean(1), ["0"], "zero")


def ident():
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    return nn.Sequential(conv)


def test_total_variation_falls():
    p = PixelImage.from_image(noise(1))
    tv0 = total_variation(p()).item()
    res = render(ident(), zero_objective(), init=p, steps=30, lr=0.01, optimizer="adam", transforms="none",
                 custom_regularizers=[TotalVariation(1.0), BoundedRange()])
    assert total_variation(res.images).item() < 0.5 * tv0


def test_tv_beta():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:] = 1  # one vertical edge: dx = 1 in each channel on 7 of the 7x7 difference positions
    assert total_variation(x, beta=2).item() == pytest.approx(3 * 7 / 49)
    assert total_variation(x, beta=1).item() == pytest.approx(3 ** 0.5 * 7 / 49, rel=1e-3)
    assert total_variation(torch.ones(1, 3, 8, 8), beta=1.5).item() == pytest.approx(0, abs=1e-4)


def test_bounded_range_holds_with_huge_steps():
    net = ident()
    res = render(net, channel("0", 0) - channel("0", 2), preset="lucid2017", init=PixelImage(1, 16, 16), steps=10,
                 lr=5.0, optimizer="sgd", transforms="none", custom_regularizers=[GradientRMS(), BoundedRange(0.1, 0.9)])
    assert res.images.min() >= 0.1 - 1e-6 and res.images.max() <= 0.9 + 1e-6
    assert res.images[0, 0].min() == pytest.approx(0.9) and res.images[0, 2].max() == pytest.approx(0.1)
    assert BoundedRange(alpha=6, weight=2).penalty(torch.full((1, 3, 2, 2), 1.0)).item() == pytest.approx(2 * 0.5 ** 6)
    with pytest.raises(CnnvisError):
        BoundedRange(1, 0)


def test_fourier_image_is_always_in_range():
    p = FourierImage(2, 16, 16, sd=100.0)
    assert p().min() >= 0 and p().max() <= 1


def test_blur_lowers_high_frequency_energy():
    p = PixelImage.from_image(noise())
    e0 = high_freq_energy(p())
    b = GaussianBlur(1.0, every=2)
    with torch.no_grad():
        b.after_step(p, 0)  # step 1: not yet
        assert high_freq_energy(p()) == e0
        b.after_step(p, 1)
    assert high_freq_energy(p()) < 0.1 * e0
    x = noise()
    assert gaussian_blur(x, 1.0).mean().item() == pytest.approx(x.mean().item(), abs=1e-3)
    y = RandomBlur(1.0, p=1.0)(x, torch.Generator().manual_seed(0))
    assert high_freq_energy(y) < high_freq_energy(x)


def test_l2_decay_shrinks_towards_grey():
    x = noise()
    p = PixelImage.from_image(x)
    r = L2Decay(0.1)
    r.check(p)
    with torch.no_grad():
        r.after_step(p, 0)
    assert torch.allclose(p() - 0.5, 0.9 * (x - 0.5), atol=1e-6)
    f = FourierImage(1, 8, 8)
    r.check(f)  # penalty form on non-pixel images
    assert r.penalty(torch.ones(1, 3, 4, 4)).item() == pytest.approx(0.1 * 0.25)


def test_clip_small_norm_greys_out_weak_pixels():
    x = noise(1, 20, 20)
    p = PixelImage.from_image(x)
    r = ClipSmallNorm(40)
    r.check(p)
    with torch.no_grad():
        r.after_step(p, 0)
    grey = (p() == 0.5).all(1)
    assert grey.float().mean().item() == pytest.approx(0.4, abs=0.01)
    norm = (x - 0.5).norm(dim=1)
    assert norm[grey].max() <= norm[~grey].min()


def test_clip_small_contribution_uses_gradient():
    x = noise(1, 10, 10)
    p = PixelImage.from_image(x)
    g = torch.zeros_like(x)
    g[..., :5] = 1.0  # only the left half matters
    p.pixels.grad = g
    r = ClipSmallContribution(50)
    r.check(p)
    r.on_grad(p)
    with torch.no_grad():
        r.after_step(p, 0)
    assert (p()[..., 5:] == 0.5).all()
    assert torch.equal(p()[..., :5], x[..., :5])


def test_pixel_only_regularizers_refuse_fourier():
    for r in (GaussianBlur(), ClipSmallNorm(), ClipSmallContribution()):
        with pytest.raises(CnnvisError, match="pixel"):
            render(ident(), channel("0", 0), preset="lucid2017", size=16, steps=1, custom_regularizers=[r])
