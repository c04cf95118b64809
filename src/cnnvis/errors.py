"""User-facing errors: one clear line naming the problem and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnvisError(Exception):
    """A problem with the user's input. The CLI prints it on one line and exits with code 2."""


class CnnvisWarning(UserWarning):
    """Something the user should know that did not stop the work (the CLI prints it as one line)."""


class UnknownNameError(CnnvisError, KeyError):
    """An unknown model, layer or class name; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def unknown_name(kind: str, name: str, valid: Iterable[str], *, hint: str = "", show: int = 12) -> UnknownNameError:
    """Build an error for an unknown `name` of `kind`, suggesting close matches among `valid`."""
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.5)
    msg = f"unknown {kind} {name!r}"
    if close:
        msg += f"; did you mean: {', '.join(close)}?"
    elif valid:
        shown = ", ".join(valid[:show]) + (f", ... ({len(valid)} in all)" if len(valid) > show else "")
        msg += f"; valid: {shown}"
    if hint:
        msg += f" ({hint})"
    return UnknownNameError(msg)


def whole_number(text: str, *, signed: bool = True, digits: int = 18) -> int | None:
    """'144', ' -3 ' -> the int; None for anything else: other Unicode digits ('²', '٣', which
    str.isdigit accepts and int() may refuse), more than `digits` digits, a sign when not `signed`."""
    t = text.strip()
    body = t[1:] if signed and t.startswith("-") else t
    if not body or len(body) > digits or not (body.isascii() and body.isdigit()):
        return None
    return int(t)


_TOO_SMALL = ("Kernel size can't be greater than actual input size", "Output size is too small",
              "smaller than kernel size", "Calculated padded input size per channel")


def too_small(e: BaseException, what: str) -> CnnvisError | None:
    """torch's error for an input smaller than a kernel or a pool of the model -> one line saying so (None
    for any other error)."""
    msg = str(e)
    if isinstance(e, RuntimeError) and any(s in msg for s in _TOO_SMALL):
        first = msg.strip().splitlines()[0][:160]
        return CnnvisError(f"{what} is too small for this model (torch: {first}); give a larger image or size")
    return None
