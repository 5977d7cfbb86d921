"""The built-in WebSocket sink: tells the hub about each accepted report, for ``report_update`` messages.

The hub coalesces: it sends the latest summary per agent once per broadcast interval, so this stays one dict
write per report however many arrive.
"""

from __future__ import annotations

from orchestrator.hookspecs import hookimpl
from orchestrator.pipeline.ingest import report_summary


@hookimpl
def receive_report(report, raw, state):
    if state.hub is not None:
        state.hub.note_report(report.agent_id, report_summary(report))
