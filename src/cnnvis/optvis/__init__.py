"""Activation maximization: images that make a channel, a neuron or a class respond most.

    from cnnvis.optvis import RenderConfig, UntilProb, channel, class_logit, render
    res = render(vm, class_logit("pelican"), stop=UntilProb(0.99))            # default preset 'robust'
    res = render(vm, channel("conv3_1", list(range(16))), "lucid2017")        # 16 filters, one batch
    res = render(vm, channel("conv3_1", 5), RenderConfig(steps=128, size=128, seed=1))

Modules: config (RenderConfig, UntilProb, PRESETS), objectives (what to maximize), param (image
parameterizations), transforms (transformation robustness), regularizers (classic priors),
presets (named transform/regularizer recipes), seeding (a generator per image), render (the
loop), robustness (re-classify a class image after small perturbations).
"""

from cnnvis.optvis.objectives import (
    LOGITS, Objective, as_objective, channel, class_logit, class_logprob, direction, diversity, layer_l2, neuron,
)
from cnnvis.optvis.config import DEFAULT_PRESET, PRESETS, RenderConfig, UntilProb, get_preset
from cnnvis.optvis.param import FourierImage, ImageParam, PixelImage, make_param
from cnnvis.optvis.regularizers import (
    BoundedRange, ClipSmallContribution, ClipSmallNorm, GaussianBlur, GradientRMS, L2Decay, Regularizer,
    TotalVariation, gaussian_blur, total_variation,
)
from cnnvis.optvis.render import RenderResult, render
from cnnvis.optvis.robustness import PERTURBATIONS, quantize, robustness
from cnnvis.optvis.transforms import (
    Compose, Jitter, Pad, RandomAffine, RandomBlur, RandomRotate, RandomScale, Roll, standard_transforms,
)

__all__ = [
    "LOGITS", "Objective", "as_objective", "channel", "class_logit", "class_logprob", "direction", "diversity", "layer_l2", "neuron",
    "FourierImage", "ImageParam", "PixelImage", "make_param",
    "DEFAULT_PRESET", "PRESETS", "RenderConfig", "UntilProb", "get_preset",
    "BoundedRange", "ClipSmallContribution", "ClipSmallNorm", "GaussianBlur", "GradientRMS", "L2Decay",
    "Regularizer", "TotalVariation", "gaussian_blur", "total_variation",
    "RenderResult", "quantize", "render", "PERTURBATIONS", "robustness",
    "Compose", "Jitter", "Pad", "RandomAffine", "RandomBlur", "RandomRotate", "RandomScale", "Roll", "standard_transforms",
]
