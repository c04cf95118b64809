"""Render settings as one JSON-serializable object: a preset plus overrides, and the stop criterion.

    cfg = RenderConfig(preset="robust", steps=256, stop=UntilProb(0.99, robust=0.95, min_steps=128))
    render(vm, class_logit("pelican"), cfg)
    render(vm, class_logit("pelican"), steps=256)         # overrides of RenderConfig() (unknown names: error)
    RenderConfig.from_dict(cfg.to_dict()) == cfg          # plain JSON types only
    cfg.resolved()          # the preset's values filled in: the canonical form (hash this one)

Fields left None take the preset's value. Presets (PRESETS) are fully resolved configs.
Objects that cannot be serialized (a start image, custom transforms or regularizers, a progress
bar) are keyword arguments of `render`, not config fields.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from cnnvis.errors import CnnvisError, unknown_name
from cnnvis.optvis.presets import REGULARIZERS, TRANSFORMS

DEFAULT_PRESET = "robust"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class UntilProb:
    """Stop a class render once the target probability of each image's 8-bit version is >= `prob`
    (and, with `robust`, >= `robust` under each perturbation of optvis.robustness; with `judge`, a
    second classifier's probability of the saved file >= `judge_prob`), never before `min_steps`.
    Each image stops on its own: an image reached is kept as it was at that step.

    judge: a model name (`cnnvis.models.load`) with the same labels; it only looks at the images
    (a witness, never a gradient). The model's own probabilities saturate at 1.0 long before the
    picture convinces another model; the judge's does not (see optvis.presets)."""

    prob: float = 0.99
    robust: float | None = None
    min_steps: int = 0
    judge: str | None = None
    judge_prob: float | None = None

    def __post_init__(self):
        for name in ("prob", "robust", "judge_prob"):
            v = getattr(self, name)
            if (v is not None or name == "prob") and not (_is_num(v) and 0 < v <= 1):
                raise CnnvisError(f"UntilProb.{name} must be a probability in (0, 1], got {v!r}")
        if not _is_int(self.min_steps) or self.min_steps < 0:
            raise CnnvisError(f"UntilProb.min_steps must be an integer >= 0, got {self.min_steps!r}")
        if self.judge is not None and not (isinstance(self.judge, str) and self.judge):
            raise CnnvisError(f"UntilProb.judge must be a model name, got {self.judge!r}")
        if self.judge is not None and self.judge_prob is None:
            object.__setattr__(self, "judge_prob", 0.97)
        if self.judge is None and self.judge_prob is not None:
            raise CnnvisError("UntilProb.judge_prob needs a judge (a second model's name)")

    def to_dict(self) -> dict:
        return {"kind": "until_prob", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "UntilProb":
        d = dict(d)
        kind = d.pop("kind", "until_prob")
        if kind != "until_prob":
            raise CnnvisError(f"unknown stop criterion kind {kind!r}; known: until_prob")
        _check_keys(cls, d, "UntilProb")
        return cls(**d)


@dataclass(frozen=True)
class RenderConfig:
    """Everything that decides a render's result, as JSON types (None = the preset's value).

    preset: name in PRESETS. steps: optimizer steps. lr, optimizer ('adam' | 'sgd').
    image: parameterization 'fourier' | 'pixel'; init_sd: std of its random start.
    transforms: recipe name in presets.TRANSFORMS ('robust', 'lucid', 'jitter', 'none').
    regularizers: recipe name in presets.REGULARIZERS ('none', 'chollet', 'yosinski').
    copies: transformed copies per image per step; octaves, octave_scale: multi-scale schedule.
    size: int or (H, W); None = the model's input size. batch: images (None = the objective's).
    stop: UntilProb or None. check_every: steps between finiteness/stop checks.
    seed: with (layer, channel or class) it fixes each image, whatever the batch.
    tile: largest side processed in one forward (memory; spatial-mean objectives such as DeepDream).
    ema: shown image = exponential moving average of the parameters with this decay (0 = off).
    decay_power: the Fourier image's spectrum falls as 1/frequency**decay_power (Lucid: 1; larger:
      broader shapes first). Pixel images ignore it.
    """

    preset: str = DEFAULT_PRESET
    steps: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    image: str | None = None
    init_sd: float | None = None
    transforms: str | None = None
    regularizers: str | None = None
    copies: int | None = None
    octaves: int | None = None
    octave_scale: float | None = None
    size: int | tuple[int, int] | None = None
    batch: int | None = None
    stop: UntilProb | None = None
    check_every: int = 16
    seed: int = 0
    tile: int | None = None
    ema: float | None = None
    decay_power: float | None = None

    def __post_init__(self):
        if self.preset is None:
            object.__setattr__(self, "preset", DEFAULT_PRESET)
        if isinstance(self.stop, dict):
            object.__setattr__(self, "stop", UntilProb.from_dict(self.stop))
        if isinstance(self.size, list):
            object.__setattr__(self, "size", tuple(self.size))
        self._validate()

    # ---- validation: one clear message naming the field
    def _validate(self) -> None:
        if not _BUILDING and self.preset not in PRESETS:
            raise unknown_name("preset", self.preset, list(PRESETS))
        pos_int = ("steps", "copies", "octaves", "batch", "tile")
        for name in pos_int:
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 1):
                raise CnnvisError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "init_sd"):
            v = getattr(self, name)
            if v is not None and (not _is_num(v) or v < 0 or (name == "lr" and v == 0)):
                raise CnnvisError(f"{name} must be a {'positive' if name == 'lr' else 'non-negative'} finite number, "
                                  f"got {v!r}")
        if self.octave_scale is not None and not (_is_num(self.octave_scale) and self.octave_scale > 1):
            raise CnnvisError(f"octave_scale must be a number > 1, got {self.octave_scale!r}")
        if self.decay_power is not None and not (_is_num(self.decay_power) and 0 <= self.decay_power <= 4):
            raise CnnvisError(f"decay_power must be a number in [0, 4] (Lucid's: 1), got {self.decay_power!r}")
        if self.ema is not None and not (_is_num(self.ema) and 0 <= self.ema < 1):
            raise CnnvisError(f"ema must be a number in [0, 1) (0 = off), got {self.ema!r}")
        choices = {"optimizer": ("adam", "sgd"), "image": ("fourier", "pixel"),
                   "transforms": tuple(TRANSFORMS), "regularizers": tuple(REGULARIZERS)}
        for name, ok in choices.items():
            v = getattr(self, name)
            if v is not None and v not in ok:
                raise CnnvisError(f"unknown {name} {v!r}; use one of {', '.join(ok)}")
        s = self.size
        if s is not None and not ((_is_int(s) and s >= 1) or (isinstance(s, tuple) and len(s) == 2
                                                              and all(_is_int(v) and v >= 1 for v in s))):
            raise CnnvisError(f"size must be a positive integer or (height, width), got {s!r}")
        if not _is_int(self.check_every) or self.check_every < 1:
            raise CnnvisError(f"check_every must be a positive integer, got {self.check_every!r}")
        if not _is_int(self.seed):
            raise CnnvisError(f"seed must be an integer, got {self.seed!r}")
        if self.stop is not None and not isinstance(self.stop, UntilProb):
            raise CnnvisError(f"stop must be None or UntilProb(prob, robust=..., min_steps=...), got {self.stop!r}")
        if self.steps is not None and self.octaves is not None and self.octaves > self.steps:
            raise CnnvisError(f"octaves must be between 1 and steps ({self.steps}), got {self.octaves}")

    # ---- overrides, resolution, JSON
    def with_(self, **overrides) -> "RenderConfig":
        """A copy with some fields changed; unknown names raise a CnnvisError listing the fields."""
        _check_keys(type(self), overrides, "render setting")
        return replace(self, **overrides)

    def resolved(self) -> "RenderConfig":
        """Every None field that the preset sets, filled in from PRESETS[preset]."""
        base = PRESETS[self.preset]
        kw = {f.name: getattr(base, f.name) for f in fields(self)
              if getattr(self, f.name) is None and getattr(base, f.name) is not None}
        out = replace(self, **kw)
        if out.octaves > out.steps:
            raise CnnvisError(f"octaves must be between 1 and steps ({out.steps}), got {out.octaves}")
        return out

    @property
    def name(self) -> str:
        """The preset's name (what `get_preset(...).name` gave before presets were configs)."""
        return self.preset

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["size"] = list(self.size) if isinstance(self.size, tuple) else self.size
        d["stop"] = self.stop.to_dict() if self.stop is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RenderConfig":
        _check_keys(cls, d, "render setting")
        return cls(**d)


_LEGACY = {"until_prob", "until_robust", "min_steps"}
_BUILDING = False  # True while register_preset builds a preset's config (its name is not known yet)


def _check_keys(cls, d: dict, what: str) -> None:
    names = [f.name for f in fields(cls)]
    bad = [k for k in d if k not in names]
    if bad:
        hint = ("; stop criteria are objects now: stop=UntilProb(prob, robust=..., min_steps=...)"
                if set(bad) & _LEGACY else "")
        raise CnnvisError(f"unknown {what} {bad[0]!r}{hint}; fields: {', '.join(names)}")


PRESETS: dict[str, RenderConfig] = {}  # name -> fully resolved config, in registration order
COMPARED = ("quick", "full")  # where a preset is drawn in the report's side-by-side comparison


@dataclass(frozen=True)
class PresetInfo:
    """What a preset declares besides its config. note: one line. compared: 'quick' (drawn in every
    report's comparison of presets), 'full' (in the full report only) or None (not drawn there)."""

    note: str
    compared: str | None = None


PRESET_INFO: dict[str, PresetInfo] = {}


def register_preset(name: str, *, note: str, compared: str | None = None, base: str | None = None,
                    **settings) -> RenderConfig:
    """Add a named recipe: every RenderConfig field (or `base`'s, overridden by `settings`).

    Its name is then accepted everywhere a preset is (CLI --preset, specs, the web) and, if `compared`,
    drawn in the report's comparison of presets. Returns the resolved config."""
    global _BUILDING
    if name in PRESETS:
        raise ValueError(f"preset {name!r} is registered already")
    if compared not in (None, *COMPARED):
        raise ValueError(f"compared must be None or one of {COMPARED}, got {compared!r}")
    if base is not None and base not in PRESETS:
        raise ValueError(f"unknown base preset {base!r}; registered: {', '.join(PRESETS)}")
    _check_keys(RenderConfig, settings, "render setting")
    if base is not None:
        settings = {**{f.name: getattr(PRESETS[base], f.name) for f in fields(RenderConfig)
                       if f.name not in ("preset", "stop", "seed", "check_every")}, **settings}
    _BUILDING, was = True, _BUILDING
    try:
        cfg = RenderConfig(name, **settings)
    finally:
        _BUILDING = was
    missing = [f for f in _RESOLVED if getattr(cfg, f) is None]
    if missing:
        raise ValueError(f"preset {name!r} leaves {', '.join(missing)} unset; a preset sets every one of "
                         f"{', '.join(_RESOLVED)}")
    PRESETS[name], PRESET_INFO[name] = cfg, PresetInfo(note, compared)
    return cfg


def unregister_preset(name: str) -> None:
    """Remove a preset added by register_preset (tests' throwaway presets)."""
    for d in (PRESETS, PRESET_INFO):
        d.pop(name, None)


def compared_presets(quick: bool = False) -> list[str]:
    """The presets the report draws side by side, in registration order ('quick' ones only when quick)."""
    return [n for n, i in PRESET_INFO.items() if i.compared == "quick" or (i.compared == "full" and not quick)]


_RESOLVED = ("steps", "lr", "optimizer", "image", "init_sd", "transforms", "regularizers", "copies", "octaves",
             "octave_scale", "ema", "decay_power")

register_preset("chollet2016", compared="quick",
                note="pixels, RMS-normalized gradient ascent from grey noise, clamp to [0, 1]",
                steps=256, lr=2 / 255, optimizer="sgd", image="pixel", init_sd=0.05, transforms="none",
                regularizers="chollet", copies=1, octaves=1, octave_scale=1.4, ema=0.0, decay_power=1.0)
register_preset("yosinski2015", compared="full",
                note="pixels, L2 decay, blur every 4 steps, clip small norm/contribution, jitter",
                steps=512, lr=4 / 255, optimizer="sgd", image="pixel", init_sd=0.05, transforms="jitter",
                regularizers="yosinski", copies=1, octaves=1, octave_scale=1.4, ema=0.0, decay_power=1.0)
register_preset("lucid2017", compared="quick",
                note="Fourier spectrum + decorrelated colour, Adam, Lucid's standard transforms",
                steps=512, lr=0.05, optimizer="adam", image="fourier", init_sd=0.01, transforms="lucid",
                regularizers="none", copies=1, octaves=1, octave_scale=1.4, ema=0.0, decay_power=1.0)
register_preset("robust", compared="full",
                note="lucid2017 parameterization + stronger same-size transforms incl. random softening",
                base="lucid2017", transforms="robust")
register_preset("witness", compared="full",
                note="robust at twice the step size, showing the running average of the image (class images' "
                     "default)",
                base="robust", steps=320, lr=0.1, ema=0.9)
register_preset("broad", note="witness with a steeper spectrum (1/f**1.5): fewer, larger shapes; an independent "
                              "model agrees more",
                base="witness", decay_power=1.5)
register_preset("agree", note="witness with the spectrum at 1/f**1.25 (class images made for an ensemble: "
                              "lite0's default)",
                base="witness", decay_power=1.25)


def get_preset(name: "str | RenderConfig | None" = None) -> RenderConfig:
    """A preset's resolved config by name (None = DEFAULT_PRESET); a RenderConfig comes back resolved."""
    if isinstance(name, RenderConfig):
        return name.resolved()
    name = name or DEFAULT_PRESET
    if name not in PRESETS:
        raise unknown_name("preset", name, list(PRESETS))
    return PRESETS[name]
