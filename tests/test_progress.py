"""cnnvis.progress: the one writer of progress. The lines a log gets are pinned here, byte for byte, with a
clock the test sets (no timings): the job runner's, the training's and the render-all engine's."""

from __future__ import annotations

import io
import sys

import pytest

from cnnvis import progress
from cnnvis.progress import Bar, progress_iter, wrap


class Clock:
    def __init__(self, monkeypatch, t: float = 100.0) -> None:
        self.t = t
        monkeypatch.setattr(progress.time, "perf_counter", lambda: self.t)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Log:
    def __init__(self, capsys) -> None:
        self.capsys = capsys

    def lines(self) -> list[str]:
        return self.capsys.readouterr().err.splitlines()


@pytest.fixture
def log(monkeypatch, capsys):
    """stderr as a log file (pytest's capture: not a terminal), a line every 5 s."""
    monkeypatch.setattr(progress, "LINE_EVERY", 5.0)
    return Log(capsys)


def test_steps_lines_with_and_without_a_total(monkeypatch, log):
    clock = Clock(monkeypatch)
    bar = Bar(4, "epoch 1/2", "step")
    for k in range(4):
        clock.t += 3
        bar.update(1, f"loss {1 / (k + 1):.3f}")
    bar.close()
    nototal = Bar(None, "classify")
    clock.t += 6
    nototal.update(2)
    assert log.lines() == ["epoch 1/2: 2/4 loss 0.500 (6 s)", "epoch 1/2: 4/4 loss 0.250 (12 s)",
                                           "classify: 2 (6 s)"]


def test_eta_lines_count_only_this_runs_units(monkeypatch, log):
    clock = Clock(monkeypatch)
    bar = Bar(10, unit="channels", style="eta", skipped=4)
    clock.t += 2
    bar.update(1)  # under 5 s: no line
    clock.t += 4
    bar.update(2, "1 failed")
    clock.t += 1
    bar.update(3)  # the last units: a line however soon
    assert log.lines() == ["7/10 channels (6 s, ETA 6 s) 1 failed", "10/10 channels (7 s, ETA 0 s)"]
    assert bar.eta(clock.t) == 0


def test_wrap_ends_with_a_done_line_only_after_a_whole_run(monkeypatch, log):
    clock = Clock(monkeypatch)
    got = []
    for x in wrap(range(3), desc="class goldfish", end_line=True):
        clock.t += 4
        got.append(x)
    assert got == [0, 1, 2]
    assert log.lines() == ["class goldfish: 2/3 (8 s)", "class goldfish: done, 3 in 12 s"]
    for x in wrap(range(3), desc="stopped", end_line=True):
        clock.t += 6
        if x == 1:
            break
    assert log.lines() == ["stopped: 1/3 (6 s)"]  # no 'done' for a run that was left


def test_the_job_contexts_bar_writes_the_same_lines(monkeypatch, log):
    from cnnvis.jobs.runner import JobContext

    clock = Clock(monkeypatch)
    seen = []
    for _ in JobContext(True, desc="sanity").bar(range(2)):
        clock.t += 5
        seen.append(1)
    assert log.lines() == ["sanity: 1/2 (5 s)", "sanity: 2/2 (10 s)", "sanity: done, 2 in 10 s"]
    calls = []
    for _ in JobContext(lambda d, t, desc: calls.append((d, t, desc)), desc="job").bar(iter("ab"), desc="x"):
        pass
    assert calls == [(1, None, "x"), (2, None, "x")]


def test_progress_iter_is_silent_in_a_log_and_a_bar_on_a_terminal(monkeypatch, log):
    Clock(monkeypatch)
    progress.LINE_EVERY = 0.0
    assert list(progress_iter(range(5), total=5, desc="render", progress=True)) == list(range(5))
    assert log.lines() == []  # lines=False: nothing in a log
    assert progress_iter(r := range(3), progress=None) is r
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert list(progress_iter(range(5), total=5, desc="render", progress=True)) == list(range(5))
    text = tty.getvalue()
    assert "render:   0%" in text and "0/5 [" in text and "\r" in text  # a frozen clock: the first draw


def test_a_disabled_bar_counts_and_writes_nothing(monkeypatch, log):
    clock = Clock(monkeypatch)
    bar = Bar(100, style="eta", enabled=False)
    clock.t += 10
    bar.update(20)
    assert log.lines() == [] and bar.done == 20 and bar.eta(clock.t) == pytest.approx(10 / 20 * 80)
    progress.say("not this", enabled=False)
    progress.say("this line")
    assert log.lines() == ["this line"]


def test_the_terminal_bar_shows_the_note_every_postfix_every_units(monkeypatch):
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    with Bar(20, "epoch 1/1", "step", postfix_every=10, mininterval=0) as bar:
        for i in range(20):
            bar.update(1, f"acc {i}")
    text = tty.getvalue()
    assert "acc 9" in text and "acc 5" not in text and "acc 10" not in text and "20/20 [" in text
