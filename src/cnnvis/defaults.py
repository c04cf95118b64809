"""The defaults of the job specs, as plain constants: one source for every face (issue 20 item 2).

The spec classes (`cnnvis.jobs.kinds_*`) use these as their field defaults; the CLI's options show and
pass the same values without importing pydantic or torch (`cnnvis --help` stays fast); the web and the
report leave a field out to get the spec's default. One class per job kind, named after it; change a
default here and every face follows. Deliberate exceptions are named where they live and said so where
they show: the report's --quick mode, the web's quick previews (`cnnvis.web.specs`: the layer pages'
grids, the photo page's DeepDream, the study page's t-SNE image count).

Nothing here imports anything (a basics module: every layer may read it).
"""

from __future__ import annotations


class ClassImage:  # kind "class_image" (`cnnvis class`); lite0's images are made for lite0 + lite1 (jobs.judge)
    steps = 320  # at most (small nets need them); lite0 + lite1 renders stop at 192 (bench/class_independent.py)
    until_prob = 0.99
    robust_prob = 0.95
    min_steps = 192  # lite0 + lite1: lite2 agrees more than at 128 (held-out 0.966 vs 0.938); ~0.40x Lucent-512's time
    judge_prob = 0.97
    objective = "logit"


class Filters:  # kind "filters" (`cnnvis filters`); steps/size None = per layer (optvis.filters.layer_plan)
    first = 10
    batch = 16


class Dream:  # kinds "dream" and "dream_row" (`cnnvis dream`)
    octaves = 4
    octave_scale = 1.4
    steps = 10  # per octave
    step_size = 0.02
    jitter = 32
    tile = 512
    objective = "l2"


class Attribution:  # kind "attribution" (`cnnvis saliency`)
    method = "saliency"


class Deconv:  # kind "deconv" (`cnnvis deconv`)
    top = 3
    project = "sum"
    rule = "fired"


class Sanity:  # kind "sanity" (`cnnvis sanity`)
    methods = ("saliency",)
    max_steps = 16


class Occlusion:  # kind "occlusion" (`cnnvis occlusion`)
    baseline = 0.5
    batch = 32


class Inversion:  # kind "inversion" (`cnnvis invert`)
    steps = 400
    lr = 0.05
    pixel_lr = 0.02
    tv = 0.1


class Compare:  # kind "compare" (`cnnvis compare`)
    limit = 2000
    grid = 2
    steps = 64
    batch_size = 128


class RegularizerStudy:  # kind "regularizer_study" (`cnnvis regularizers`)
    steps = 128


class Embed:  # kind "embed" (`cnnvis embed`)
    limit = 2000
    perplexity = 30.0
    queries = 8
    k = 8
    grid = 20


class Evolution:  # kind "evolution" (`cnnvis evolution`)
    first = 6
    k = 3
    batch = 16


class MaxMaps:  # kind "max_maps" (`cnnvis maxmaps`)
    n = 16
    project = "max"


class TopExamples:  # kind "top_examples" (`cnnvis top-examples`)
    k = 9
    batch_size = 256


class Classify:  # kind "classify" (`cnnvis classify`)
    top = 5

