"""What the routes of one app share, passed explicitly: `WebContext` (in `app.state.ctx`; a route asks for
it with `ctx: WebContext = Depends(get_ctx)`).

    ctx.served      mid -> ServedModel (the models named on the command line, in order)
    ctx.model_of()  a model id (or ref, or None: the default) -> ServedModel; 404 otherwise
    ctx.store, ctx.jobs (JobManager), ctx.fast_pool (classify's own model copies), ctx.cache
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request


@dataclass
class ServedModel:
    """A model named on the command line: its URL id, how it was named (ref), the loaded VisModel."""

    mid: str
    ref: str
    vm: Any
    default: bool = False
    data: str | None = None  # dataset for top examples / the study (given for it and fitting, or its training data)
    layers: list[dict] = field(default_factory=list)
    data_note: str | None = None  # what the data is, or why this model has none
    evaluate_note: str | None = None  # why its accuracy cannot be measured on that data (None: it can)

    def info(self) -> dict:
        vm = self.vm
        return {"id": self.mid, "name": vm.name, "task": vm.task, "input_shape": list(vm.input_shape),
                "n_classes": len(vm.labels) if vm.labels is not None else None, "default": self.default,
                "data": self.data, "data_note": self.data_note, "evaluate_note": self.evaluate_note,
                "description": getattr(vm, "description", "") or ""}


@dataclass
class WebContext:
    """The state of one app: served models, the store, the job manager, the cache folder and limits."""

    served: dict[str, ServedModel]
    store: Any
    jobs: Any
    cache: Path
    fast_pool: Any
    data: str | None = None  # the --data given for every model (None: each checkpoint's own)
    max_upload_mb: int = 20
    costs: Any = None  # CostBook: measured seconds per channel of the layer pages
    opened: dict = field(default_factory=dict)  # (dataset ref, split) -> an open dataset (the t-SNE hover)
    opened_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def default_mid(self) -> str:
        return next(iter(self.served))

    @property
    def by_ref(self) -> dict[str, ServedModel]:
        return {s.ref: s for s in self.served.values()}

    @property
    def uploads(self) -> Path:
        return self.cache / "uploads"

    def model_of(self, mid: str | None) -> ServedModel:
        """The served model of a model id, or of its ref as named on the command line; None/'': the default."""
        if mid is None or mid == "":
            return self.served[self.default_mid]
        if mid in self.served:
            return self.served[mid]
        by_ref = self.by_ref
        if mid in by_ref:  # a served model's ref (specs.layer_page_spec uses refs)
            return by_ref[mid]
        raise HTTPException(404, f"unknown model {mid!r}; served models: {', '.join(self.served)}")


_NAME_RE = re.compile(r"[A-Za-z_][\w.]*\w")


def alias_text(m: ServedModel | None, text: str) -> str:
    """`text` (a progress line) with each dotted layer name of `m` that has an alias shown as its alias
    ('features.21 (again)' -> 'conv4_3 (again)'): the pages name layers by alias."""
    if m is None or not text:
        return text
    aliases = {r["name"]: r["alias"] for r in m.layers if r.get("alias") and r["alias"] != r["name"]}
    return _NAME_RE.sub(lambda mt: aliases.get(mt.group(0), mt.group(0)), text) if aliases else text


def get_ctx(request: Request) -> WebContext:
    """FastAPI dependency: the app's WebContext."""
    return request.app.state.ctx


# ---------------------------------------------------------------------- serving a model
def is_registered(ref: str) -> bool:
    """A registry name (else a checkpoint path), as `cnnvis.models.load` decides (`models.refs`)."""
    from cnnvis.models.refs import is_registered as registered

    return registered(ref)


def mid_for(ref: str, taken: set[str]) -> str:
    """A URL id for a model ref: a registry name as is, a checkpoint by its folder (or file stem) name."""
    from cnnvis.models.refs import short_name

    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", short_name(ref)).strip("-.") or "model"
    mid, i = base, 2
    while mid in taken:
        mid, i = f"{base}-{i}", i + 1
    return mid


def training_block(ref: str) -> dict | None:
    """A `cnnvis train` checkpoint's 'training' block of its model.json (None for others; `models.refs`)."""
    from cnnvis.models.refs import training_block as block

    return block(ref)


def training_data(ref: str) -> str | None:
    """The dataset a checkpoint was trained on (its model.json's training.data), else None."""
    t = training_block(ref)
    d = t.get("data") if t else None
    return d if isinstance(d, str) else None


def embedded(name: str) -> bool:
    """A registry model whose weights ship inside the installed packages (no file path, no download)."""
    from cnnvis.models.refs import is_embedded

    return is_embedded(name)


def embedded_judges(vm) -> list[str]:
    """The judges of `vm` the server offers without a download: the jobs' default witness
    (`cnnvis.jobs.judge.default_judge`: efficientnet_lite1 for lite0, lite0 for other ImageNet classifiers)
    when its weights ship inside the package; [] for other label sets."""
    from cnnvis.jobs.judge import default_judge

    j = default_judge(vm)
    return [j] if j != "none" and embedded(j) and j != vm.name else []


def layer_rows(infos) -> list[dict]:
    return [{"name": i.name, "alias": i.alias, "type": i.kind, "shape": list(i.shape) if i.shape else None,
             "stage": i.name.split(".")[0]} for i in infos]
