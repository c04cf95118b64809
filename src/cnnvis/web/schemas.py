"""The JSON shapes of the API: pydantic response models (they make /openapi.json) and the documented
request body of POST /api/jobs (a job spec of any kind; `job_body_schema`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelInfo(BaseModel):
    id: str
    name: str
    task: str
    input_shape: list[int]
    n_classes: int | None
    default: bool
    data: str | None = None  # the dataset of its top examples and study (one that fits it), or None
    data_note: str | None = None  # what that data is, or why the model has none
    evaluate_note: str | None = None  # why the model cannot be scored on that data (labels), or None
    description: str = ""


class LayerOut(BaseModel):
    name: str
    alias: str
    type: str
    shape: list[int] | None
    stage: str


class ClassOut(BaseModel):
    index: int
    label: str


class PhotoOut(BaseModel):
    ref: str
    name: str
    url: str


class UploadOut(BaseModel):
    ref: str
    width: int
    height: int


class Pred(BaseModel):
    index: int
    label: str
    prob: float


class ClassifyOut(BaseModel):
    model: str
    top: list[Pred]
    ref: str


class Progress(BaseModel):
    done: int
    total: int | None
    desc: str


class ResultOut(BaseModel):
    key: str
    kind: str
    data: dict
    files: dict[str, str]
    main: str | None


class JobOut(BaseModel):
    id: str
    kind: str | None
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: Progress
    error: str | None
    result: ResultOut | None
    lane: Literal["render", "interactive"] | None = None  # page renders vs quick jobs (never behind a render)
    waiting: str | None = None  # why a queued job waits
    created: float | None = None  # seconds since the epoch: submitted, started, ended (None: not yet)
    started: float | None = None
    ended: float | None = None


def job_body_schema(model_ids: list[str]) -> dict:
    """The OpenAPI schema of a job request body: 'kind', 'model' and every field any kind has, each with
    the JSON types some kind accepts for it (GET /api/kinds has each kind's exact schema)."""
    from cnnvis.jobs import KINDS

    types: dict[str, set[str]] = {}
    for cls in KINDS.values():
        for name, prop in cls.model_json_schema().get("properties", {}).items():
            alts = prop.get("anyOf", [prop])
            types.setdefault(name, set()).update(a.get("type", "string") for a in alts)  # enums/$refs: strings
    props: dict[str, dict] = {name: {"type": sorted(t) if len(t) > 1 else next(iter(t))}
                              for name, t in sorted(types.items()) if name not in ("model", "weights")}
    props["kind"] = {"type": "string", "enum": sorted(KINDS)}
    props["model"] = {"type": ["string", "null"], "enum": [*model_ids, None]}
    props["weights"] = {"type": "null", "description": "not settable here: the server runs only its own models"}
    return {"type": "object", "required": ["kind"], "additionalProperties": True,
            "description": "A job spec: 'kind', 'model' (a model id; default: the first model) and the kind's "
                           "fields (GET /api/kinds). Photo fields take 'upload:<sha256>' (POST /api/uploads) or "
                           "'sample:NAME'.",
            "properties": props}
