"""Re-exports of the job kinds that lived here before issue 19 split them by capability (old private names
included), for importers not yet moved: `jobs.helpers`, `jobs.judge`, `kinds_model`, `kinds_optvis`,
`kinds_dream`, `kinds_attribution`. To be deleted once nothing imports it."""

from cnnvis.jobs.helpers import (  # noqa: F401
    MAX_SIDE, PhotoSpec, Side, chosen_layers, class_target, describe, layer_label, load_input, prepare, preset_name,
    resolve_layers, target_and_layer,
)
from cnnvis.jobs.judge import CLASS_PRESET, CLASS_SIDE, default_judge, load_judge  # noqa: F401
from cnnvis.jobs.kinds_model import ClassifySpec  # noqa: F401
from cnnvis.jobs.kinds_optvis import ClassImageSpec, FiltersSpec, image_stats  # noqa: F401
from cnnvis.jobs.kinds_dream import DreamSpec  # noqa: F401
from cnnvis.jobs.kinds_attribution import AttributionSpec, DeconvSpec, SanitySpec  # noqa: F401

_PhotoSpec, _layer_label, _resolve_layers, _class_target = PhotoSpec, layer_label, resolve_layers, class_target
_chosen_layers, _target_and_layer = chosen_layers, target_and_layer
