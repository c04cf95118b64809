"""Model registry, preprocessing, labels and weight import. See `registry` for the API."""

from cnnvis.models.archs import build_arch, list_archs, register_arch
from cnnvis.models.checkpoint import load_checkpoint, save_checkpoint
from cnnvis.models.labels import class_index, imagenet_labels, label_of
from cnnvis.models.preprocess import Preprocess
from cnnvis.models.registry import (
    DEFAULT_MODEL,
    VisModel,
    as_vismodel,
    check_channels,
    infer_channels,
    list_models,
    load,
    model_info,
    register_model,
    vgg_aliases,
    wrap,
)

__all__ = [
    "DEFAULT_MODEL", "Preprocess", "VisModel", "as_vismodel", "check_channels", "class_index", "infer_channels", "imagenet_labels", "label_of",
    "list_models", "load", "model_info", "register_model", "vgg_aliases", "wrap",
    "build_arch", "list_archs", "register_arch", "load_checkpoint", "save_checkpoint",
]
