"""Conflicting claims (issue 16 #9): a report claiming an address or a container another host owns.

The topology engine keeps the owner and tells :class:`ConflictLog` (``Topology.on_conflict``); this counts
each claim in ``app_conflicting_claims_total{kind}`` and logs it once per (claimant host, kind, value), at
most ``lines`` lines per ``window`` seconds: a Docker fleet's hosts all claim ``172.17.0.1``, and a
thousand of them starting at once must not write a thousand lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from orchestrator.runtime.metrics import Metrics

log = structlog.get_logger("orchestrator.state.conflicts")


class ConflictLog:
    def __init__(
        self,
        metrics: Metrics,
        *,
        lines: int = 20,
        window: float = 60.0,
        remembered: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._lines, self._window, self._remembered, self._clock = lines, window, remembered, clock
        self._logged: set[tuple[str, str, str]] = set()  # bounded: cleared when full (a claim may log again)
        self._window_start = float("-inf")
        self._written = 0
        self._suppressed = 0

    def __call__(self, kind: str, value: str, agent_id: str, hostname: str, owner: str) -> None:
        self._metrics.conflicting_claims.labels(kind).inc()
        key = (hostname, kind, value)
        if key in self._logged:
            return
        if len(self._logged) >= self._remembered:
            self._logged.clear()
        self._logged.add(key)
        now = self._clock()
        if now - self._window_start >= self._window:
            self._window_start, self._written = now, 0
        if self._written >= self._lines:
            self._suppressed += 1
            return
        self._written += 1
        log.warning(
            "conflicting_claim",
            kind=kind,
            value=value,
            agent_id=agent_id,
            hostname=hostname,
            owner=owner,
            suppressed=self._suppressed,  # claims not logged since the last line (the metric counts them all)
        )
        self._suppressed = 0
