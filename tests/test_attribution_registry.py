"""The attribution registry: each method class registers itself and declares what it can do; every list
of methods (CLI --method, job validation, the report grids, the parametrized tests) is derived from it,
in registration order, which is the order users have always seen."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnvis.attribution import (CAM, LAYER_METHODS, METHODS, Attribution, GradCAM, Saliency, list_methods, method,
                                method_class, register_method, unregister_method)
from cnnvis.errors import CnnvisError

ORDER = ["saliency", "gradxinput", "smoothgrad", "vargrad", "ig", "guided", "deconvnet", "gradcam",
         "guided_gradcam", "gradcam++", "xgradcam", "layercam", "scorecam", "eigencam"]
CAMS = ["gradcam", "guided_gradcam", "gradcam++", "xgradcam", "layercam", "scorecam", "eigencam"]


def test_the_order_users_see_is_unchanged():
    assert list_methods()[:14] == ORDER
    assert list(METHODS)[:14] == ORDER and METHODS["gradcam"] is GradCAM  # the old name: a live view
    assert LAYER_METHODS == tuple(CAMS) == tuple(list_methods(takes_layer=True))
    assert list_methods(takes_layer=False)[:7] == ORDER[:7]
    with pytest.raises(TypeError):
        METHODS["x"] = Saliency  # read-only: register_method is the way in


def test_report_grids_and_capabilities():
    assert list_methods(report="maps") == ["saliency", "gradxinput", "smoothgrad", "ig", "guided", "deconvnet",
                                           "gradcam", "guided_gradcam"]
    assert list_methods(report="cams") == ["gradcam", "gradcam++", "xgradcam", "layercam", "scorecam", "eigencam"]
    assert [n for n in list_methods() if method_class(n).seeded] == ["smoothgrad", "vargrad"]
    assert [n for n in list_methods() if method_class(n).returns_delta] == ["ig"]
    assert [n for n in list_methods() if "activation" not in method_class(n).inputs] == CAMS
    assert all(issubclass(method_class(n), CAM) for n in CAMS if n != "guided_gradcam")
    titles = [method_class(n).title for n in list_methods()]
    assert len(set(titles)) == len(titles) and method_class("ig").title == "integrated gradients"


# the report's grid captions, worded as they always were: each method's words come from its class
MAPS_CAPTION = ("Rows: photos (the map explains the top-1 class). Columns: saliency, gradient x input, SmoothGrad, "
                "integrated gradients, guided backprop, deconvnet, Grad-CAM (last conv block), guided Grad-CAM.")
CAMS_CAPTION = ("Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, Score-CAM (gradient-free: each channel's map masks the "
                "photo) and Eigen-CAM (first principal component of the activations, class-agnostic). Each equals "
                "pytorch-grad-cam's in the tests.")


def test_report_captions_come_from_the_classes():
    from cnnvis.sections.attribution import cams_caption, maps_caption

    assert maps_caption() == MAPS_CAPTION and cams_caption() == CAMS_CAPTION
    assert method_class("gradcam").caption_for("maps") == "Grad-CAM (last conv block)"
    assert method_class("gradcam").caption_for("cams") == "Grad-CAM"
    assert method_class("smoothgrad").caption_for("maps") == method_class("smoothgrad").title  # no caption: title


def test_unknown_names_and_bad_registrations():
    with pytest.raises(CnnvisError) as e:
        method("gradcm", None)
    assert str(e.value) == ("unknown attribution method 'gradcm'; did you mean: gradcam, xgradcam, gradcam++, "
                            "vargrad, guided_gradcam?")

    class Inherited(Saliency):  # `name` is Saliency's: not its own
        pass

    with pytest.raises(ValueError, match="needs its own class attribute `name`"):
        register_method(Inherited)

    class Taken(Attribution):
        name = "gradcam"

    with pytest.raises(ValueError, match="'gradcam' is already registered"):
        register_method(Taken)
    assert register_method(GradCAM) is GradCAM and method_class("gradcam") is GradCAM  # again: no change
    assert list_methods()[:14] == ORDER


ONES_SOURCE = """
import torch

from cnnvis.attribution import Attribution, register_method


@register_method
class Ones(Attribution):
    name, title, caption = "zz_ones", "ones (test)", "all ones (a test)"

    def _attribute(self, x, target):
        return torch.ones_like(x) * self.input_grad(x, target).sign()
"""


@pytest.fixture
def ones():
    """A throwaway method registered for one test (the whole of it is ONES_SOURCE: one class in one file):
    ones x the sign of the input gradient. Unregistered afterwards, also when the test fails."""
    ns: dict = {}
    exec(compile(ONES_SOURCE, "zz_ones.py", "exec"), ns)
    yield ns["Ones"]
    unregister_method("zz_ones")


def test_a_new_method_is_one_class(ones, capsys, tmp_path, mnist_ckpt_shared):
    """Registering one class is all it takes: the method runs by name, through a job spec and the CLI
    (its --help lists it), the web photo page offers it, the report draws it in the maps grid."""
    from fastapi.testclient import TestClient

    from cnnvis.cli import main
    from cnnvis.jobs import make_spec
    from cnnvis.sections.attribution import cam_methods, map_methods
    from cnnvis.web.app import create_app

    assert list_methods()[:14] == ORDER and list_methods()[14:] == ["zz_ones"] and METHODS["zz_ones"] is ones
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.rand(2, 3, 8, 8)
    a = method("zz_ones", net).attribute(x, 1)
    assert torch.equal(a, Saliency(net).attribute(x, 1).sign())
    # the job layer and the CLI
    assert make_spec("attribution", image="sample:chelsea", method="zz_ones").method == "zz_ones"
    assert main(["saliency", "--help"]) == 0
    assert "|eigencam|zz_ones]" in capsys.readouterr().out
    digit = tmp_path / "digit.png"
    Image.fromarray(np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1)), "L").save(digit)
    out = tmp_path / "ones.png"
    assert main(["saliency", str(digit), "--model", mnist_ckpt_shared.folder, "--method", "zz_ones", "--target", "3",
                 "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0, capsys.readouterr().err
    assert Image.open(out).size[0] >= 28
    # the report: drawn in the maps grid (its class's default `report`), not in the CAM grid, named in the
    # grid's caption as the class says (`caption`)
    assert map_methods()[-1] == "zz_ones" and "zz_ones" not in cam_methods()
    assert main(["report", "--model", mnist_ckpt_shared.folder, "--quick", "--sections", "attribution", "--threads",
                 "1", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<figcaption>" + MAPS_CAPTION[:-1] + ", all ones (a test).</figcaption>" in page
    assert "<figcaption>" + CAMS_CAPTION + "</figcaption>" in page
    # the web photo page's method picker, in registry order, with the class's title
    app = create_app([mnist_ckpt_shared.folder], tmp_path / "web-cache")
    with TestClient(app) as client:
        html = client.get(f"/m/{app.state.default_mid}/photo").text
    picker = re.search(r'<select id="method"[^>]*>(.*?)</select>', html, re.S).group(1)
    opts = re.findall(r'<option value="([^"]+)">([^<]*)</option>', picker)
    assert [v for v, _ in opts] == ORDER + ["zz_ones"] and ("zz_ones", "ones (test)") in opts
    # gone again once unregistered
    unregister_method("zz_ones")
    assert "zz_ones" not in list_methods() and "zz_ones" not in map_methods()
    with pytest.raises(CnnvisError, match="unknown method 'zz_ones'"):
        make_spec("attribution", image="sample:chelsea", method="zz_ones")


PLUGIN = ONES_SOURCE  # `-p zz_ones_plugin` imports it (so registers the class) before collection


@pytest.mark.slow
def test_the_parametrized_tests_take_a_new_method(tmp_path):
    """The tests that run every method are parametrized from the registry: a plugin that registers the
    throwaway method before collection gets it checked by test_side_effects (model and input untouched,
    also when it raises; its declared capabilities match its constructor)."""
    (tmp_path / "zz_ones_plugin.py").write_text(PLUGIN)
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "CNNVIS_NO_PROGRESS": "1"}
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "zz_ones_plugin",
                        str(tests / "test_side_effects.py"), "-k", "zz_ones", "-W", "ignore"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=tests.parent)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert re.search(r"\b5 passed\b", p.stdout), p.stdout[-2000:]
