"""Built-in sink: keeps each agent's newest report exactly as submitted (for ``…/latest``)."""

from __future__ import annotations

from orchestrator.hookspecs import hookimpl
from orchestrator.state.latest import LatestReport


@hookimpl
def receive_report(report, raw, gzipped, received_at, state):
    state.latest[report.agent_id] = LatestReport.from_raw(received_at, raw, gzipped)
