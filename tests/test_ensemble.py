"""Issue 20 item 4: class images made for an ensemble (lite0 + lite1 logits averaged), so that a third,
independent model (efficientnet_lite2) agrees; the ensemble's gradient is the mean of its members', the
default reaches the render, a member is never the judge."""

from __future__ import annotations

import pytest
import torch

from cnnvis.errors import CnnvisError
from cnnvis.jobs import run
from cnnvis.models.ensemble import ensemble
from cnnvis.optvis import class_logit, render
from cnnvis.optvis.config import RenderConfig


def test_ensemble_logits_and_gradient_are_the_members_mean(lite0, lite1):
    """Each member gets the image through its own normalization; the logits and the class logit's gradient
    with respect to the [0, 1] image are the mean of the two models'."""
    both = ensemble([lite0, lite1])
    assert both.name == "efficientnet_lite0+efficientnet_lite1" and list(both.labels) == list(lite0.labels)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 96, 96)
    t = lite0.class_index("goldfinch")

    def grad(fn):  # autograd.grad: the shared fixtures' weights get no .grad
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        return out.detach(), torch.autograd.grad(out[:, t].sum(), xi)[0]

    l0, g0 = grad(lite0)
    l1, g1 = grad(lite1)
    le, ge = grad(both)
    assert torch.allclose(le, (l0 + l1) / 2, atol=1e-4)
    assert torch.allclose(ge, (g0 + g1) / 2, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(g0, g1, atol=1e-4)  # two different views: the mean is neither alone


def test_ensemble_refuses_members_that_do_not_fit(lite0, hed):
    from cnnvis.models import wrap

    with pytest.raises(CnnvisError, match="at least two"):
        ensemble([lite0])
    with pytest.raises(CnnvisError, match="'vgg16_hed' is not a classifier"):
        ensemble([lite0, hed])
    three = wrap(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
                 name="three", labels=["a", "b", "c"])
    with pytest.raises(CnnvisError, match="'three' has other labels"):
        ensemble([lite0, three])
    with pytest.raises(CnnvisError, match="different models"):
        ensemble([lite0, lite0])


def test_render_on_the_ensemble_leaves_both_members_unchanged(lite0, lite1):
    before = [{k: v.clone() for k, v in m.model.state_dict().items()} for m in (lite0, lite1)]
    flags = [(m.model.training, [p.requires_grad for p in m.model.parameters()]) for m in (lite0, lite1)]
    res = render(ensemble([lite0, lite1]), class_logit("goldfinch"), RenderConfig("witness", steps=2, size=64))
    assert res.images.shape == (1, 3, 64, 64) and torch.isfinite(res.images).all()
    for m, b, f in zip((lite0, lite1), before, flags):
        assert all(torch.equal(b[k], v) for k, v in m.model.state_dict().items())
        assert (m.model.training, [p.requires_grad for p in m.model.parameters()]) == f
        assert all(p.grad is None for p in m.model.parameters())
        assert not m.model._forward_hooks and all(not s._forward_hooks for s in m.model.modules())


def test_default_class_image_is_made_for_lite0_and_lite1_and_judged_by_neither(tmp_path, lite0, lite1):
    """The spec's default for lite0: ensemble [lite1], no judge (lite1 gave gradients); the rendered image is
    exactly the render of the ensemble with the spec's settings; the result reports lite1's view of the PNG."""
    from cnnvis.images import to_tensor
    from cnnvis.jobs.kinds_optvis import ClassImageSpec
    from cnnvis.optvis.config import UntilProb
    from cnnvis.optvis.robustness import witness_probs

    spec = {"kind": "class_image", "target": "goldfinch", "steps": 3, "min_steps": 0, "size": 64, "until_prob": 0}
    res = run(spec, store=tmp_path / "store")
    assert res.spec["ensemble"] == ["efficientnet_lite1"] and res.spec["judge"] == "none"
    assert res.spec["preset"] == res.data["preset"] == "agree" and res.data["judge"] is None
    x = to_tensor(res.image())
    (e,) = res.data["ensemble"]
    assert e["model"] == "efficientnet_lite1"
    assert e["prob"] == pytest.approx(float(witness_probs(lite1, x)[0, 11]), abs=1e-6)
    both = ensemble([lite0, lite1])
    want = render(both, class_logit(11), RenderConfig("agree", steps=3, size=64))
    got = x[0]
    assert torch.allclose(got, (want.images[0] * 255).round() / 255, atol=1 / 255 + 1e-6)
    assert want.config.decay_power == 1.25 and want.config.ema == 0.9 and want.config.lr == 0.1
    # neither lite0 alone nor the witness recipe (spectrum 1/f) makes that image
    for other in (render(lite0, class_logit(11), RenderConfig("agree", steps=3, size=64)),
                  render(both, class_logit(11), RenderConfig("witness", steps=3, size=64))):
        assert (other.images[0] - want.images[0]).abs().mean() > 0.01
    # the model alone (the old default) is one option away, judged by lite1 again
    alone = ClassImageSpec(target="goldfinch", ensemble=["none"]).normalized(lite0)
    assert alone.ensemble == [] and alone.judge == "efficientnet_lite1" and "ensemble" not in alone.to_dict()
    assert alone.preset == "witness"
    # a member cannot judge
    with pytest.raises(CnnvisError, match="judge 'efficientnet_lite1' is in the ensemble"):
        ClassImageSpec(target="goldfinch", judge="efficientnet_lite1").normalized(lite0)
    with pytest.raises(CnnvisError, match="lists 'efficientnet_lite0', the model itself"):
        ClassImageSpec(target="goldfinch", ensemble=["efficientnet_lite0"]).normalized(lite0)
    assert UntilProb(0.99).judge is None


def test_other_models_keep_their_class_image_alone(lite1, mnist_vm):
    """Only lite0 has a default ensemble: lite1's and a small net's class images are made for themselves,
    and their spec (job key) holds no ensemble field."""
    from cnnvis.jobs.judge import default_ensemble
    from cnnvis.jobs.kinds_optvis import ClassImageSpec

    assert default_ensemble(lite1) == [] and default_ensemble(mnist_vm) == []
    s = ClassImageSpec(model="efficientnet_lite1", target="goldfinch").normalized(lite1)
    assert s.ensemble == [] and s.judge == "efficientnet_lite0" and "ensemble" not in s.to_dict()
    assert s.preset == "witness"
