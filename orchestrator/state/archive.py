"""The archive: agents the cleanup sweep found stale, kept for ``cleanup.archive_window`` so an agent that
comes back gets its counters, history and latest report back (see :mod:`orchestrator.state.cleanup`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.state.agents import Agent
from orchestrator.state.latest import LatestReport


@dataclass(slots=True)
class ArchivedAgent:
    """A stale agent out of the live state: its registry entry, when it was archived, its time-series
    history (:meth:`TimeSeriesStore.delete_agent`'s export, or ``None``) and its latest report."""

    agent: Agent
    archived_at: float
    timeseries: bytes | None = None
    latest: LatestReport | None = None

    def to_json(self, now: float, stale_threshold: float) -> dict[str, Any]:
        """The contract's ``<agent>`` shape; an archived agent is always ``stale``."""
        body = self.agent.to_json(now, stale_threshold)
        body["status"] = "stale"
        return body
