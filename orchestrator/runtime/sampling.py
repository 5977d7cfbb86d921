"""Repeated log lines sampled: the first few per window for each key, then one line saying how many were left out.

A client can send a thousand bad requests a second; one log line each would drown the log (and cost the
server more than refusing them). :class:`LineSampler` lets the first ``lines`` lines of each key (the
request log uses route and status) through per ``window`` seconds; the rest are counted, and when the
window ends one summary is handed to the ``summarise`` callback with the count. Keys are the caller's
bounded values (route patterns, status codes), so the sampler's own memory is bounded too.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Window:
    ends: float
    seen: int = 0
    suppressed: int = 0


class LineSampler:
    """At most ``lines`` lines per ``window`` seconds per key (``window`` 0: every line). A window whose
    lines were left out ends with one ``summarise(key, suppressed, window)`` call: from a timer on the
    running event loop, at the key's next line if that comes first, or from :meth:`flush`."""

    def __init__(
        self,
        lines: int,
        window: float,
        summarise: Callable[[Hashable, int, float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lines = lines
        self.window = window
        self._summarise = summarise
        self._clock = clock
        self._windows: dict[Hashable, _Window] = {}

    def admit(self, key: Hashable) -> bool:
        """Whether this line of ``key`` is to be logged (else it is counted for the window's summary)."""
        if self.window <= 0:
            return True
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now >= window.ends:
            self._close(key, window)
            window = None
        if window is None:
            window = self._windows[key] = _Window(now + self.window)
        window.seen += 1
        if window.seen <= self.lines:
            return True
        if not window.suppressed:
            self._call_at_end(window.ends - now)
        window.suppressed += 1
        return False

    def close_ended(self) -> None:
        """Summarise every window that has ended."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            if now >= window.ends:
                self._close(key, window)

    def flush(self) -> None:
        """Summarise every window now, ended or not (the server is stopping)."""
        for key, window in list(self._windows.items()):
            self._close(key, window)

    def _close(self, key: Hashable, window: _Window) -> None:
        del self._windows[key]
        if window.suppressed:
            self._summarise(key, window.suppressed, self.window)

    def _call_at_end(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a unit test): the key's next line or flush() summarises
            return
        # An empty context: the summary is nobody's request, so it carries no request's log fields.
        loop.call_later(delay + 0.01, self.close_ended, context=contextvars.Context())
