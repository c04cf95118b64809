"""Presets: the classic recipes for activation maximization, as named bundles of render settings.

    chollet2016   pixels from grey noise, gradient divided by its RMS, plain gradient ascent,
                  clamp to [0, 1] (F. Chollet, "How convolutional neural networks see the world", 2016)
    yosinski2015  pixels, L2 decay + periodic Gaussian blur + clipping of small-norm and
                  small-contribution pixels, jitter (Yosinski et al., "Understanding neural
                  networks through deep visualization", 2015)
    lucid2017     Fourier spectrum + decorrelated colour + sigmoid, Adam, Lucid's standard
                  transforms (Olah, Mordvintsev & Schubert, "Feature Visualization", Distill 2017)
    robust        (the default) lucid2017's parameterization with stronger random transforms in
                  ONE bilinear resampling that keeps the image size: per-image zoom 0.85-1.2,
                  rotation +-10 degrees, shift +-16 px, and on half the steps a grid up to 2x
                  coarser (a random loss of fine detail, like a blur or a rescale); then jitter 8

Why `robust` is the default. A class image should be a picture the model recognises, not
adversarial noise, so `cnnvis class` re-classifies the saved PNG after a 1-px blur, 2x
down/up-scaling, an 8-px shift and a resize/crop. Measured on efficientnet_lite0, 96 steps,
224 px (probability of the class: PNG / blur / down-up / shift / resize-crop):
  golden retriever  chollet2016   1.00 / 0.00 / 0.00 / 0.97 / 0.00   (adversarial noise)
                    yosinski2015  1.00 / 0.24 / 0.00 / 0.99 / 0.99
                    lucid2017     1.00 / 1.00 / 0.68 / 1.00 / 1.00
                    robust        1.00 / 1.00 / 1.00 / 1.00 / 1.00
  magpie            lucid2017     1.00 / 1.00 / 0.97 / 1.00 / 1.00
                    robust        1.00 / 1.00 / 1.00 / 1.00 / 1.00
Pixel-space ascent reaches 1.0 with high-frequency patterns that a blur destroys; Yosinski's
decay/blur/clipping remove part of them; the Fourier/decorrelated parameterization of Lucid
gives natural colours and low frequencies first. `robust` keeps that and asks the objective to
hold under the whole family of shifts, zooms, rotations and blurs at every step (a form of
expectation over transformations, Athalye et al. 2018), at the same cost per step as lucid2017
(its transforms do not enlarge the image). Without the random coarsening, the same transforms
left magpie at 0.72 after 2x down/up-scaling. `copies=` averages the objective over several
transformed copies per step, for yet more robustness at that many times the compute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cnnvis.errors import unknown_name
from cnnvis.optvis import regularizers as R
from cnnvis.optvis import transforms as T


@dataclass(frozen=True)
class Preset:
    """Render settings. `transforms()` and `regularizers()` build fresh objects per render."""

    name: str
    description: str
    param: str = "fourier"                  # 'pixel' | 'fourier'
    param_kw: dict = field(default_factory=dict)
    optimizer: str = "adam"                 # 'adam' | 'sgd'
    lr: float = 0.05
    steps: int = 512
    transforms: Callable[[], Callable | None] = lambda: None
    regularizers: Callable[[], list] = lambda: []
    copies: int = 1                         # transformed copies per image per step (objective averaged)
    octaves: int = 1
    octave_scale: float = 1.4

    def with_(self, **kw) -> "Preset":
        return replace(self, **kw)


def _robust_transforms():
    return T.Compose([
        T.RandomAffine(scale=(0.85, 1.2), degrees=10, translate=16, soften=(0.5, 2.0)),
        T.Jitter(8),
    ])


PRESETS: dict[str, Preset] = {
    "chollet2016": Preset(
        "chollet2016", "pixels, RMS-normalized gradient ascent from grey noise, clamp to [0, 1]",
        param="pixel", param_kw={"sd": 0.05}, optimizer="sgd", lr=2 / 255, steps=256,
        regularizers=lambda: [R.GradientRMS(), R.BoundedRange()],
    ),
    "yosinski2015": Preset(
        "yosinski2015", "pixels, L2 decay, blur every 4 steps, clip small norm/contribution, jitter",
        param="pixel", param_kw={"sd": 0.05}, optimizer="sgd", lr=4 / 255, steps=512,
        transforms=lambda: T.Compose([T.Pad(8, mode="reflect"), T.Jitter(8)]),
        regularizers=lambda: [R.GradientRMS(), R.L2Decay(0.002), R.GaussianBlur(0.5, every=4),
                              R.ClipSmallNorm(5), R.ClipSmallContribution(5), R.BoundedRange()],
    ),
    "lucid2017": Preset(
        "lucid2017", "Fourier spectrum + decorrelated colour, Adam, Lucid's standard transforms",
        param="fourier", optimizer="adam", lr=0.05, steps=512, transforms=T.standard_transforms,
    ),
    "robust": Preset(
        "robust", "lucid2017 parameterization + stronger same-size transforms incl. random blur",
        param="fourier", optimizer="adam", lr=0.05, steps=512, transforms=_robust_transforms, copies=1,
    ),
}
DEFAULT_PRESET = "robust"


def get_preset(name: "str | Preset | None") -> Preset:
    if isinstance(name, Preset):
        return name
    name = name or DEFAULT_PRESET
    if name not in PRESETS:
        raise unknown_name("preset", name, list(PRESETS))
    return PRESETS[name]
