"""Progress on stderr: the one place cnnvis writes it (torch-free).

    with Bar(100, "epoch 1/8", unit="step") as bar:     # tqdm on a terminal, else a line every LINE_EVERY s
        for k in range(100):
            bar.update(1, f"loss {loss:.3f}")
    for x in wrap(items, desc="classify"): ...           # the same, around an iterable
    say("resuming runs/mnist after epoch 3 of 8")        # one line

Compute code never prints: it takes `progress` (None, True or a tqdm-like callable) and hands it to
`progress_iter`, or a callable it is given. The lines in a log (stderr not a terminal) are:

    style 'steps':  "{desc}: {done}/{total} {note} ({s} s)"   ("{desc}: {done} ({s} s)" without a total)
    end_line:       "{desc}: done, {n} in {s} s"               (after a wrap that ran LINE_EVERY s or more)
    style 'eta':    "{done}/{total} {unit} ({s} s, ETA {eta} s) {note}"   (also when the last unit is done)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

# seconds between progress lines when stderr is not a terminal (each bar reads it when made)
LINE_EVERY = float(os.environ.get("CNNVIS_PROGRESS_EVERY", "10"))

Progress = bool | Callable[..., Iterable] | None


def say(msg: str, enabled: bool = True) -> None:
    """One line on stderr (flushed), when `enabled`."""
    if enabled:
        print(msg, file=sys.stderr, flush=True)


class Bar:
    """A progress bar on stderr: tqdm on a terminal; else, with `lines`, a plain line at most every
    LINE_EVERY seconds (a log, CI); nothing when not `enabled` (it still counts: `done`, `eta`).

    style 'steps' (lines "desc: done/total note (s)") or 'eta' (lines "done/total unit (s, ETA s) note",
    also one when the last unit is done). skipped: units done before this run (resumed work): shown as
    done, left out of the rate. postfix_every: a note goes on the terminal bar every that many units
    (and at the last). end_line: `finish()` writes "desc: done, n in s" after a run of LINE_EVERY s or more.
    """

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", *, enabled: bool = True,
                 lines: bool = True, leave: bool = False, style: Literal["steps", "eta"] = "steps",
                 end_line: bool = False, postfix_every: int = 1, skipped: int = 0, mininterval: float = 0.5) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled, self.lines, self.style, self.end_line = enabled, lines, style, end_line
        self.postfix_every = postfix_every
        self.done = self.skipped = skipped
        self.t0 = self.last = time.perf_counter()
        self.every = LINE_EVERY
        self.tq = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            # initial: the stored units show as done, and tqdm's rate counts only this run's
            self.tq = tqdm(total=total, initial=skipped, desc=desc, unit=unit, leave=leave, dynamic_ncols=True,
                           mininterval=mininterval)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, note: str = "") -> None:
        """`n` more units done; `note`: the running numbers (loss, failures) shown with them."""
        self.done += n
        if not self.enabled:
            return
        if self.tq is not None:
            self.tq.update(n)
            if note and (self.done % self.postfix_every == 0 or self.done >= (self.total or 0)):
                self.tq.set_postfix_str(note, refresh=False)
            return
        if not self.lines:
            return
        now = time.perf_counter()
        if now - self.last >= self.every or (self.style == "eta" and self.done >= self.total):
            self.last = now
            say(self.line(now, note))

    def eta(self, now: float) -> float:
        """Seconds left: this run's time per unit done (skipped units excluded) x units left."""
        ran = self.done - self.skipped
        return (now - self.t0) / ran * (self.total - self.done) if ran else float("nan")

    def line(self, now: float, note: str = "") -> str:
        """The plain line for a log (see the module doc)."""
        el = now - self.t0
        if self.style == "eta":
            return f"{self.done}/{self.total} {self.unit} ({el:.0f} s, ETA {self.eta(now):.0f} s)" \
                   + (" " + note if note else "")
        of = f"/{self.total}" if self.total else ""
        return f"{self.desc}: {self.done}{of}{' ' + note if note else ''} ({el:.0f} s)"

    def finish(self) -> None:
        """The end of a run that went to its end: the end line (with `end_line`), then `close`."""
        if self.end_line and self.enabled and self.tq is None and self.lines:
            if time.perf_counter() - self.t0 >= self.every and self.done:
                say(f"{self.desc}: done, {self.done} in {time.perf_counter() - self.t0:.0f} s")
        self.close()

    def close(self) -> None:
        if self.tq is not None:
            self.tq.close()
            self.tq = None


def wrap(iterable: Iterable, total: int | None = None, desc: str = "", **bar) -> Iterator:
    """Yield the items of `iterable` with a `Bar(total, desc, **bar)` (total: len(iterable) when it has
    one), made when the first item is asked for; a unit is counted when the next is asked for."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    b = Bar(total, desc, **bar)
    try:
        for item in iterable:
            yield item
            b.update(1)
    except BaseException:
        b.close()
        raise
    b.finish()


def progress_iter(iterable: Iterable, *, total: int | None = None, desc: str = "", progress: Progress = None) -> Iterable:
    """`iterable` with progress: a bar on a terminal when `progress` is True (nothing in a log), or the
    tqdm-like callable `progress(iterable, total=, desc=)` (a job's `ctx.bar`); None/False: as it is."""
    if not progress:
        return iterable
    if progress is True:
        return wrap(iterable, total, desc, lines=False, mininterval=0.1)
    return progress(iterable, total=total, desc=desc)
