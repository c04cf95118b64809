"""Activation maximization: images that make a channel, a neuron or a class respond most.

    from cnnvis.optvis import render, channel, class_logit
    res = render(vm, class_logit("pelican"), until_prob=0.99)            # default preset 'robust'
    res = render(vm, channel("conv3_1", list(range(16))), preset="lucid2017")  # 16 filters, one batch

Modules: objectives (what to maximize), param (image parameterizations), transforms
(transformation robustness), regularizers (classic priors), presets (named recipes),
render (the loop), robustness (re-classify a class image after small perturbations).
"""

from cnnvis.optvis.objectives import (
    LOGITS, Objective, as_objective, channel, class_logit, direction, diversity, layer_l2, neuron,
)
from cnnvis.optvis.param import FourierImage, ImageParam, PixelImage, make_param
from cnnvis.optvis.presets import DEFAULT_PRESET, PRESETS, Preset, get_preset
from cnnvis.optvis.regularizers import (
    BoundedRange, ClipSmallContribution, ClipSmallNorm, GaussianBlur, GradientRMS, L2Decay, Regularizer,
    TotalVariation, gaussian_blur, total_variation,
)
from cnnvis.optvis.render import RenderResult, quantize, render
from cnnvis.optvis.robustness import PERTURBATIONS, robustness
from cnnvis.optvis.transforms import (
    Compose, Jitter, Pad, RandomAffine, RandomBlur, RandomRotate, RandomScale, Roll, standard_transforms,
)

__all__ = [
    "LOGITS", "Objective", "as_objective", "channel", "class_logit", "direction", "diversity", "layer_l2", "neuron",
    "FourierImage", "ImageParam", "PixelImage", "make_param",
    "DEFAULT_PRESET", "PRESETS", "Preset", "get_preset",
    "BoundedRange", "ClipSmallContribution", "ClipSmallNorm", "GaussianBlur", "GradientRMS", "L2Decay",
    "Regularizer", "TotalVariation", "gaussian_blur", "total_variation",
    "RenderResult", "quantize", "render", "PERTURBATIONS", "robustness",
    "Compose", "Jitter", "Pad", "RandomAffine", "RandomBlur", "RandomRotate", "RandomScale", "Roll", "standard_transforms",
]
