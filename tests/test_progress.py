"""Plain-line progress for non-terminal stderr (CI logs), and the factory that picks it."""

from __future__ import annotations

import calendar
import io
import re
import sys

import pytest

from scrubber.progress import LineProgress, RichProgress, Silent, make_progress

T0 = calendar.timegm((2026, 12, 1, 10, 41, 3, 0, 0, 0))


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def _progress(interval: float = 5.0):
    clock, stream = FakeClock(), CountingStream()
    return LineProgress(stream, interval=interval, clock=clock, wall=lambda: T0 + clock.t - 100.0), clock, stream


def test_lines_at_start_end_and_at_most_every_interval():
    p, clock, stream = _progress(interval=5.0)
    with p.stage("exposure before ", total=12, unit="canaries") as advance:
        for step in range(1, 13):
            clock.t += 1.0  # one canary per second: 12 s, so a line at 5 s and 10 s only
            advance(step, 12)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "2026-12-01T10:41:03Z exposure before: started, 0/12 canaries",
        "2026-12-01T10:41:08Z exposure before: 5/12 canaries, 5.0 s",
        "2026-12-01T10:41:13Z exposure before: 10/12 canaries, 10 s",
        "2026-12-01T10:41:15Z exposure before: done, 12/12 canaries, 12 s",
    ]
    assert stream.flushes == len(lines)  # each line visible at once in a tail -f


def test_zero_interval_writes_every_advance_and_log_lines_are_stamped():
    p, clock, stream = _progress(interval=0.0)
    with p.stage("search") as advance:
        advance(1, 3)
        advance(2, 3)
    p.log("canary-1: extrapolated 3.2 bits")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5
    assert lines[0].endswith("search: started") and lines[-1] == "2026-12-01T10:41:03Z canary-1: extrapolated 3.2 bits"
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", x) for x in lines)


def test_a_failing_stage_says_so_and_reraises():
    p, clock, stream = _progress()
    with pytest.raises(KeyError):
        with p.stage("scrub", total=60):
            clock.t += 42.0
            raise KeyError("boom")
    assert stream.getvalue().splitlines()[-1].endswith("scrub: failed after 42 s")


def test_negative_interval_is_refused():
    with pytest.raises(ValueError):
        LineProgress(io.StringIO(), interval=-1)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_factory_picks_lines_off_a_terminal_bars_on_one(monkeypatch):
    assert isinstance(make_progress(True), Silent)
    monkeypatch.setenv("CI", "1")  # CI with a non-terminal stderr: lines, not silence (the bug)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    p = make_progress(False)
    assert isinstance(p, LineProgress) and p.stream is sys.stderr
    monkeypatch.setattr(sys, "stderr", FakeTTY())
    assert isinstance(make_progress(False), RichProgress)


def test_rich_bars_nest_in_one_live_display():
    from rich.console import Console

    p = RichProgress()
    out = io.StringIO()
    p.console = Console(file=out, force_terminal=True, color_system=None, width=80)
    with p.stage("exposure", total=2) as outer:
        with p.stage("canary a", total=10, unit="references") as inner:
            inner(10, 10)
        outer(1, 2)
    assert p._bar is None and "✓ canary a" in out.getvalue() and "✓ exposure" in out.getvalue()
