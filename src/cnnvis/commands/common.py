"""Options shared by sub-commands (--model, --weights, --device, --seed, --json)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import click

from cnnvis.models import DEFAULT_MODEL

COMMANDS: list = []  # this module defines helpers only


def model_options(fn: Callable) -> Callable:
    """Add --model, --weights and --device."""
    fn = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")(fn)
    fn = click.option(
        "--weights", default=None, metavar="PATH|random",
        help="Local weights: .pth/.pt state_dict, .safetensors, or Keras VGG16 .h5; 'random' = untrained.",
    )(fn)
    fn = click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
                      help="Model name (see `cnnvis models`).")(fn)
    return fn


def load_model(model: str, weights: str | None, device: str):
    """Load a registry model for a CLI command."""
    from cnnvis.models import load

    return load(model, weights=weights, device=device)


def seed_option(fn: Callable) -> Callable:
    return click.option("--seed", default=0, show_default=True, type=int, help="Random seed (reproducible output).")(fn)


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(fn)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def no_progress() -> bool:
    return bool(os.environ.get("CNNVIS_NO_PROGRESS"))


def parse_ints(s: str | None, what: str) -> list[int] | None:
    """'0,5,9' -> [0, 5, 9]; None stays None; anything else is a CnnvisError naming the option."""
    from cnnvis.errors import CnnvisError

    if s is None:
        return None
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise CnnvisError(f"{what} must be comma-separated integers, e.g. 0,5,9; got {s!r}") from None
    if not out:
        raise CnnvisError(f"{what} is empty")
    return out
