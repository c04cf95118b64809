"""Attribution: which pixels drive a class score (or an intermediate activation)?

    from cnnvis.attribution import method, LayerTarget
    m = method('guided', vm)                          # or Saliency(vm), GradCAM(vm, 'conv5_3'), ...
    a = m.attribute(x, target='pelican')              # (B, 3, H, W); the CAM family: (B, 1, H, W)
    h = m.map(x, LayerTarget('block4_pool', 44))      # (B, H, W) >= 0
    NoiseTunnel(GuidedBackprop(vm), kind='vargrad')   # SmoothGrad / VarGrad over any method

Method names (CLI --method): `list_methods()`; each class declares what it can do
(`takes_layer`, `inputs`, `returns_delta`, `seeded`, `report`): see `registry`.
"""

from __future__ import annotations

import importlib
import pkgutil

from cnnvis.attribution.base import Attribution, LayerTarget, check_input, model_parts
from cnnvis.attribution.registry import (METHODS, list_methods, method, method_class, register_method,
                                         unregister_method)

# registration order = listing order (--help, error texts, the web picker, the report grids): the plain
# gradients, then guided backprop / deconvnet, then the CAM family; then any other module, by name
from cnnvis.attribution.gradients import (GradientXInput, IntegratedGradients, NoiseTunnel, Saliency,  # noqa: I001
                                          SmoothGrad, VarGrad)
from cnnvis.attribution.modified_relu import RELU_LIKE, Deconvnet, GuidedBackprop, ModifiedReLU, modified_relu
from cnnvis.attribution.gradcam import (CAM, EigenCAM, GradCAM, GradCAMPlusPlus, GuidedGradCAM, LayerCAM, ScoreCAM,
                                        XGradCAM, default_cam_layer)

for _m in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_m}")  # a new file registers its method by being there
del _m


def __getattr__(name: str):
    if name == "LAYER_METHODS":  # the methods that take a `layer` argument (the layer the map is computed at)
        return tuple(list_methods(takes_layer=True))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Attribution", "LayerTarget", "METHODS", "LAYER_METHODS", "method", "check_input", "model_parts",
    "list_methods", "method_class", "register_method", "unregister_method",
    "Saliency", "GradientXInput", "IntegratedGradients", "NoiseTunnel", "SmoothGrad", "VarGrad",
    "GuidedBackprop", "Deconvnet", "ModifiedReLU", "modified_relu", "RELU_LIKE",
    "CAM", "GradCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "ScoreCAM", "EigenCAM", "GuidedGradCAM",
    "default_cam_layer",
]
