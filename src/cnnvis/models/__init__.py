"""Model registry, preprocessing, labels and weight import. See `registry` for the API."""

from cnnvis.models.labels import class_index, imagenet_labels, label_of
from cnnvis.models.preprocess import Preprocess
from cnnvis.models.registry import (
    DEFAULT_MODEL,
    VisModel,
    as_vismodel,
    infer_channels,
    list_models,
    load,
    model_info,
    register_model,
    vgg_aliases,
    wrap,
)

__all__ = [
    "DEFAULT_MODEL", "Preprocess", "VisModel", "as_vismodel", "class_index", "infer_channels", "imagenet_labels", "label_of",
    "list_models", "load", "model_info", "register_model", "vgg_aliases", "wrap",
]
