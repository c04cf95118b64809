"""Public helpers of the job kinds: the image side limit, photo inputs, layer and class-target resolution,
the photo spec base. Every `kinds_*` module imports these from here (none imports another's private name)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from cnnvis.errors import CnnvisError
from cnnvis.jobs.spec import Spec

# Pixels a side of any image a job puts through the network (photo inputs, renders, dream tiles).
# Measured: the activations one image keeps for the backward pass take 6.5 GiB (efficientnet_lite0)
# to 13 GiB (VGG16) at 2048 px, 26-52 GiB at 4096 px; larger sizes are refused up front.
MAX_SIDE = 2048


def _side(v: int | None, info: ValidationInfo) -> int | None:
    if v is not None and v > MAX_SIDE:
        raise PydanticCustomError(
            "too_large", "{value} pixels is too large: the limit is {limit} pixels a side (larger images need "
            "tens of GB of memory); give field '{field}' of at most {limit}",
            {"value": v, "limit": MAX_SIDE, "field": info.field_name})
    return v


Side = Annotated[int, Field(ge=8, json_schema_extra={"maximum": MAX_SIDE}), AfterValidator(_side)]  # 8..MAX_SIDE px


def load_input(ref: str):
    """'path/to/photo.jpg' or 'sample:NAME' (scikit-image's photos) -> PIL image (RGB)."""
    from cnnvis.images import load_image, sample_photo

    if ref.startswith("sample:"):
        return sample_photo(ref.split(":", 1)[1])
    return load_image(ref)


def prepare(vm, ref: str, size: int | None):
    """Photo ref -> (1, C, H, W) in [0, 1] on the model's device, resized/cropped as the model expects."""
    if size is not None and size < vm.min_size:
        raise CnnvisError(f"size {size} is too small for {vm.name}; use at least {vm.min_size}")
    return vm.preprocess.prepare(load_input(ref), size=size).to(vm.device)


def preset_name(preset: str | None) -> str:
    """None -> the default preset's name; an unknown name lists the presets."""
    from cnnvis.optvis.config import DEFAULT_PRESET, get_preset

    return get_preset(preset or DEFAULT_PRESET).preset


def preset_names() -> list[str]:
    """Every registered preset (optvis.config.register_preset), in registration order: the --preset choices."""
    from cnnvis.optvis.config import PRESETS

    return list(PRESETS)


def compared_presets(quick: bool = False) -> list[str]:
    """The presets the report's class-image section draws side by side, as each preset declares
    (`register_preset(..., compared=)`: 'quick' ones in every report, 'full' ones in the full one)."""
    from cnnvis.optvis.config import compared_presets as declared

    return declared(quick)


def target_and_layer(vm, target, layer) -> dict:
    """Spec updates for a class target (-> index) and an optional layer (-> dotted name)."""
    upd = {"target": class_target(vm, target)}
    if layer is not None:
        upd["layer"] = resolve_layers(vm, [layer])[0]
    return upd


def chosen_layers(vm, layers, all_conv: bool) -> list[str]:
    """`layers` as given, every Conv2d (all_conv) or the model's default layers."""
    from cnnvis.layers import conv_layers, default_layers

    if all_conv and layers is not None:
        raise CnnvisError("give layers or all_conv, not both")
    return conv_layers(vm) if all_conv else layers if layers is not None else default_layers(vm)


def layer_label(vm, dotted: str) -> str:
    for a, n in vm.aliases.items():
        if n == dotted:
            return a
    return dotted


def resolve_layers(vm, layers):
    from cnnvis.layers import resolve_layer

    return [resolve_layer(vm, n) for n in layers] if layers is not None else None


def class_target(vm, target):
    """Class name / index / None -> index or None; CnnvisError for a non-classifier given a class."""
    if target is None:
        return None
    if vm.task != "classification":
        raise CnnvisError(f"model {vm.name!r} is not a classifier ({vm.task}); give no target")
    return vm.class_index(target)  # an index, its digits ('144') or a name


class PhotoSpec(Spec):
    image: str  # a path, or 'sample:chelsea' for scikit-image's photos
    size: Side | None = None  # input size in pixels (default: the model's)

    def inputs(self) -> list[str]:
        return [self.image]



def describe(vm, x, target) -> tuple[str, dict]:
    """Title text and JSON info: which class a map explains, with its probability."""
    if vm.task != "classification":
        return f"{vm.name}: sum of the {vm.task} output", {"target": None}
    from cnnvis.classify import predict_probs

    probs = predict_probs(vm, x)[0]
    idx = int(probs.argmax()) if target is None else int(target)
    return (f"{vm.label(idx)} ({idx}), p={float(probs[idx]):.3f}",
            {"target": idx, "label": vm.label(idx), "prob": round(float(probs[idx]), 6), "top1": int(probs.argmax())})
