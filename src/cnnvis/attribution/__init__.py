"""Attribution: which pixels drive a class score (or an intermediate activation)?

    from cnnvis.attribution import method, LayerTarget
    m = method('guided', vm)                          # or Saliency(vm), GradCAM(vm, 'conv5_3'), ...
    a = m.attribute(x, target='pelican')              # (B, 3, H, W); the CAM family: (B, 1, H, W)
    h = m.map(x, LayerTarget('block4_pool', 44))      # (B, H, W) >= 0
    NoiseTunnel(GuidedBackprop(vm), kind='vargrad')   # SmoothGrad / VarGrad over any method

Method names (CLI --method): see `METHODS`.
"""

from __future__ import annotations

from cnnvis.attribution.base import Attribution, LayerTarget, check_input, model_parts
from cnnvis.attribution.gradcam import (CAM, EigenCAM, GradCAM, GradCAMPlusPlus, GuidedGradCAM, LayerCAM, ScoreCAM,
                                        XGradCAM, default_cam_layer)
from cnnvis.attribution.gradients import (GradientXInput, IntegratedGradients, NoiseTunnel, Saliency, SmoothGrad,
                                          VarGrad)
from cnnvis.attribution.modified_relu import RELU_LIKE, Deconvnet, GuidedBackprop, ModifiedReLU, modified_relu

METHODS: dict[str, type[Attribution]] = {
    "saliency": Saliency,
    "gradxinput": GradientXInput,
    "smoothgrad": SmoothGrad,
    "vargrad": VarGrad,
    "ig": IntegratedGradients,
    "guided": GuidedBackprop,
    "deconvnet": Deconvnet,
    "gradcam": GradCAM,
    "guided_gradcam": GuidedGradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
    "eigencam": EigenCAM,
}

# the methods that take a `layer` argument (the layer the map is computed at)
LAYER_METHODS = ("gradcam", "guided_gradcam", "gradcam++", "xgradcam", "layercam", "scorecam", "eigencam")


def method(name: str, model, **options) -> Attribution:
    """Build a method by name ('saliency', 'ig', 'gradcam', ...) with its options."""
    from cnnvis.errors import CnnvisError, unknown_name

    if name not in METHODS:
        raise unknown_name("attribution method", name, list(METHODS))
    try:
        return METHODS[name](model, **options)
    except TypeError as e:
        raise CnnvisError(f"bad option for method {name!r}: {e}") from None


__all__ = [
    "Attribution", "LayerTarget", "METHODS", "LAYER_METHODS", "method", "check_input", "model_parts",
    "Saliency", "GradientXInput", "IntegratedGradients", "NoiseTunnel", "SmoothGrad", "VarGrad",
    "GuidedBackprop", "Deconvnet", "ModifiedReLU", "modified_relu", "RELU_LIKE",
    "CAM", "GradCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "ScoreCAM", "EigenCAM", "GuidedGradCAM",
    "default_cam_layer",
]
