"""The judge policy of class images: the default recipe and side, which models a class image is made
for besides the model (`default_ensemble`), which second classifier witnesses a model's class images
(`default_judge`) and loading them (`load_members`, `load_judge`)."""

from __future__ import annotations

CLASS_PRESET = "witness"  # the class image's default recipe for a model alone (see optvis.presets)
ENSEMBLE_PRESET = "agree"  # ... and for one made for an ensemble (default_ensemble: lite0 + lite1)
CLASS_SIDE = 224  # the largest default class image side (a net made for 28-px digits gets 28-px images)


def load_judge(vm, ctx, name: str | None):
    """The judge model `name` (None/'none': no judge), as the runner loaded it (ctx.models) or loaded
    here; checked against `vm` (a classifier of the same classes, not `vm` itself)."""
    from cnnvis.optvis.robustness import check_judge

    if name in (None, "none"):
        return None
    judge = _second_model(vm, ctx, name)
    check_judge(vm, judge)
    return judge


def _second_model(vm, ctx, name: str):
    """Model `name` as the runner loaded it beside `vm` (ctx.models), or loaded here (run outside the runner)."""
    m = ctx.models.get(name)
    if m is None:
        from cnnvis.models import load

        m = load(name, device=vm.device)
    return m


def default_judge(vm) -> str:
    """The witness of a model's class images: the other embedded EfficientNet-Lite for an ImageNet
    classifier (lite1 for lite0, else lite0); 'none' for other label sets."""
    from cnnvis.models.labels import imagenet_labels

    if vm.task != "classification":
        return "none"
    if vm.name == "efficientnet_lite0":
        return "efficientnet_lite1"
    if vm.labels is not None and list(vm.labels) == list(imagenet_labels()):
        return "efficientnet_lite0"
    return "none"


def default_ensemble(vm) -> list[str]:
    """The models whose logits a class image of `vm` is also made for (their mean with vm's): lite1 for
    lite0 (an image two separately trained models agree on convinces a third, efficientnet_lite2:
    bench/class_independent.py); none for any other model."""
    return ["efficientnet_lite1"] if vm.name == "efficientnet_lite0" and vm.task == "classification" else []


def class_judge(vm, ensemble: list[str] | None = None) -> str:
    """The default judge of `vm`'s class images made with `ensemble` (None: default_ensemble(vm)): the
    default witness, or 'none' when it is a member (it gave gradients: its view is no longer a check)."""
    ens = default_ensemble(vm) if ensemble is None else ensemble
    j = default_judge(vm)
    return "none" if j in ens else j


def load_members(vm, ctx, names: list[str]) -> list:
    """The ensemble's other members, as the runner loaded them (ctx.models) or loaded here (checked with vm
    by `cnnvis.models.ensemble.ensemble`: classifiers of the same labels, not vm itself)."""
    return [_second_model(vm, ctx, name) for name in names]
