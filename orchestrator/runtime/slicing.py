"""Time slicing: long work on the event loop done in stretches, with the loop handed to requests between.

Every loop-bound job that can grow with the fleet (applying a burst of reports, publishing a big change,
a cleanup sweep, gathering a checkpoint) runs through one :class:`TimeSlice`: work while :meth:`due` is
false, then :meth:`pause` (async code) or ``yield`` and :meth:`restart` (a generator driven by the loop).
Work written as a generator of steps serves both ways: the loop drives it a slice at a time, and
:func:`run_steps` runs it in one go where nothing waits (start-up, the shutdown drain, a benchmark).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager
from typing import TypeVar

T = TypeVar("T")
SLICE_SECONDS = 0.005  # what one stretch of a request's sliced work may take


class TimeSlice:
    """A stretch of at most ``seconds`` of work; :attr:`longest` is the longest stretch so far."""

    __slots__ = ("longest", "seconds", "started")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.longest = 0.0
        self.started = time.perf_counter()

    def due(self) -> bool:
        """The stretch has used its time: yield the loop now."""
        return time.perf_counter() - self.started >= self.seconds

    def restart(self) -> None:
        """Start a new stretch (after yielding), remembering how long the last one took."""
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.started)
        self.started = now

    async def pause(self) -> None:
        """Yield the loop to whatever is waiting (requests, other tasks), then start a new stretch."""
        self.restart()
        await asyncio.sleep(0)
        self.started = time.perf_counter()


def run_steps(steps: Generator[None, None, T]) -> T:
    """Run a generator of steps to its end in one go; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def stretched(
    steps: Generator[None, None, T], stretch: TimeSlice, between: Callable[[], AbstractContextManager] | None = None
) -> Generator[None, None, T]:
    """``steps`` as steps that yield only once ``stretch`` is used up (a stepped job made of stepped parts:
    the driver sees one yield per slice, not one per part's step), inside ``between()`` while yielded (the
    collector lifted: ``Paused.lifted``); their return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if stretch.due():
            if between is None:
                yield
            else:
                with between():
                    yield
            stretch.restart()


async def run_sliced(
    steps: Generator[None, None, T], seconds: float = SLICE_SECONDS, stretch: TimeSlice | None = None
) -> T:
    """Run a generator of steps on the loop, yielding it to others whenever a stretch has used ``seconds``;
    its return value. ``stretch``: the caller's own, instead of a new one, when the steps are part of a
    longer job (a checkpoint's gathering): the job's work before and after them counts in its stretches."""
    stretch = TimeSlice(seconds) if stretch is None else stretch
    slices = stretched(steps, stretch)
    while True:
        try:
            next(slices)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await stretch.pause()
