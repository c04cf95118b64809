"""The judge policy of class images: the default recipe and side, which second classifier witnesses a
model's class images (`default_judge`) and loading it (`load_judge`)."""

from __future__ import annotations

CLASS_PRESET = "witness"  # the class image's default recipe (see optvis.presets)
CLASS_SIDE = 224  # the largest default class image side (a net made for 28-px digits gets 28-px images)


def load_judge(vm, ctx, name: str | None):
    """The judge model `name` (None/'none': no judge), as the runner loaded it (ctx.models) or loaded
    here; checked against `vm` (a classifier of the same classes, not `vm` itself)."""
    from cnnvis.optvis.robustness import check_judge

    if name in (None, "none"):
        return None
    judge = ctx.models.get(name)
    if judge is None:  # run outside the runner
        from cnnvis.models import load

        judge = load(name, device=vm.device)
    check_judge(vm, judge)
    return judge


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
