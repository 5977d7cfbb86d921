"""Built-in validator: the per-report item limits and the contract's clock rule.

Item limits keep one report from costing the server more than the operator allows (``server.max_*``);
a timestamp more than five minutes ahead of the server's clock is refused (the contract's "Clocks").
"""

from __future__ import annotations

import time

from orchestrator.contract.models import count_items
from orchestrator.hookspecs import hookimpl

MAX_CLOCK_AHEAD = 300.0


@hookimpl
def validate_report(report, settings):
    problems = []
    limits = settings.server
    counts = count_items(report)
    for kind, path, limit in (
        ("processes", "processes_info.processes", limits.max_processes),
        ("connections", "network_info.connections", limits.max_connections),
        ("containers", "docker_info.containers", limits.max_containers),
    ):
        if counts[kind] > limit:
            problems.append((path, f"{counts[kind]} {kind} exceed the limit of {limit} per report"))
    ahead = report.epoch - time.time()
    if ahead > MAX_CLOCK_AHEAD:
        problems.append(("timestamp", f"is {ahead:.0f}s ahead of the server clock; at most 300s is allowed"))
    return problems or None
