"""The attribution methods by name: each class registers itself and says what it can do.

    @register_method
    class Ones(Attribution):
        name, title = "ones", "ones (example)"
        def _attribute(self, x, target): return torch.ones_like(x)

    list_methods()                    -> ['saliency', 'gradxinput', ...]  (registration order)
    list_methods(takes_layer=True)    -> the CAM family (their `layer` is where the map is computed)
    list_methods(report="cams")       -> the methods drawn in the report's CAM grid
    method_class('ig').returns_delta  -> True
    method('gradcam', vm, layer='conv5_3') -> a GradCAM

Every list of methods (CLI --method, job validation, the web picker, the report grids, the
parametrized tests) is derived from here, in registration order.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from cnnvis.attribution.base import Attribution

A = TypeVar("A", bound="type[Attribution]")

_METHODS: dict[str, type[Attribution]] = {}  # registration order = listing order
METHODS = types.MappingProxyType(_METHODS)  # a live read-only view (old `from cnnvis.attribution import METHODS`)


def register_method(cls: A) -> A:
    """Class decorator: register `cls` under its own class attribute `name` (unique)."""
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs its own class attribute `name` (the --method name) to be registered")
    if name in _METHODS and _METHODS[name] is not cls:
        raise ValueError(f"attribution method {name!r} is already registered ({_METHODS[name].__name__})")
    _METHODS[name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a registered method (for tests that register a throwaway one)."""
    _METHODS.pop(name, None)


def method_class(name: str) -> type[Attribution]:
    """The class registered as `name`; a one-line CnnvisError listing the names otherwise."""
    if name not in _METHODS:
        from cnnvis.errors import unknown_name

        raise unknown_name("attribution method", name, list(_METHODS))
    return _METHODS[name]


def list_methods(*, takes_layer: bool | None = None, report: str | None = None) -> list[str]:
    """Registered method names in registration order; `takes_layer`: only those whose `layer` option
    is where the map is computed (True) or the others (False); `report`: only those drawn in that
    report grid ('maps' or 'cams')."""
    return [n for n, c in _METHODS.items()
            if (takes_layer is None or c.takes_layer == takes_layer) and (report is None or report in c.report)]


def method(name: str, model, **options) -> Attribution:
    """Build a method by name ('saliency', 'ig', 'gradcam', ...) with its options."""
    from cnnvis.errors import CnnvisError

    cls = method_class(name)
    try:
        return cls(model, **options)
    except TypeError as e:
        raise CnnvisError(f"bad option for method {name!r}: {e}") from None
