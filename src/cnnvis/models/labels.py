"""ImageNet class names and name <-> index look-up (e.g. 144 <-> 'pelican')."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from cnnvis.errors import CnnvisError, unknown_name, whole_number


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names in the standard (sorted wnid) order."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def class_index(target: str | int, labels: Sequence[str] | None, num_classes: int | None = None) -> int:
    """Resolve a class given as an index (144, '144') or a name ('pelican', 'golden_retriever')."""
    n = num_classes if num_classes is not None else (len(labels) if labels else None)
    idx = target if isinstance(target, int) else whole_number(str(target))
    if idx is not None:
        if n is not None and not 0 <= idx < n:
            raise CnnvisError(f"class index {idx} is out of range; this model has classes 0..{n - 1}")
        return idx
    if not labels:
        raise CnnvisError(f"class {target!r} given by name, but this model has no class names; give an index")
    normed = [_norm(x) for x in labels]
    key = _norm(str(target))
    if key in normed:
        return normed.index(key)
    # unique prefix/word match, e.g. 'retriever' is ambiguous, 'pelican' exact
    hits = [i for i, x in enumerate(normed) if key in x.split(" ") or x.startswith(key)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        names = ", ".join(labels[i] for i in hits[:8])
        raise CnnvisError(f"class {target!r} is ambiguous: {names}; give the full name or an index")
    raise unknown_name("class", str(target), list(labels), hint="give a class name or an index")


def label_of(idx: int, labels: Sequence[str] | None) -> str:
    """Class name for `idx`, or 'class <idx>' when the model has no names."""
    return labels[idx] if labels and 0 <= idx < len(labels) else f"class {idx}"
