"""The log-line sampler: the first lines of each key per window, then one count of what was left out."""

from __future__ import annotations

from orchestrator.runtime.sampling import LineSampler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sampler(lines: int = 3, window: float = 60.0):
    clock, summaries = Clock(), []
    return LineSampler(lines, window, lambda *summary: summaries.append(summary), clock), clock, summaries


def test_the_first_lines_of_a_key_pass_and_the_rest_are_counted_for_the_window():
    lines, clock, summaries = sampler()
    assert [lines.admit("a") for _ in range(5)] == [True, True, True, False, False]
    assert lines.admit("b")  # keys are sampled apart
    clock.now += 59
    assert not lines.admit("a")
    lines.close_ended()
    assert summaries == []  # the window is still open
    clock.now += 1
    lines.close_ended()
    assert summaries == [("a", 3, 60.0)]  # "b" left nothing out: no summary


def test_a_line_after_the_window_opens_a_new_one_and_summarises_the_old():
    lines, clock, summaries = sampler(lines=1)
    assert lines.admit("a") and not lines.admit("a")
    clock.now += 61
    assert lines.admit("a")
    assert summaries == [("a", 1, 60.0)]
    assert not lines.admit("a")
    lines.flush()
    assert summaries == [("a", 1, 60.0), ("a", 1, 60.0)]


def test_a_window_of_zero_lets_every_line_through():
    lines, _clock, summaries = sampler(lines=1, window=0.0)
    assert all(lines.admit("a") for _ in range(100))
    lines.flush()
    assert summaries == []
