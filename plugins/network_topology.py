"""The built-in ``network_info`` merger: the host's sockets (listeners and connections) for edge
resolution, and its interfaces as host metadata."""

from __future__ import annotations

import sys

from orchestrator.hookspecs import hookimpl
from orchestrator.topology import ConnectionIn, Contribution, NodeIn, host_id

SECTION = "network_info"


def network_contribution(hostname: str, network_info) -> Contribution:
    intern = sys.intern  # the same few addresses repeat across thousands of sockets
    # A generator: the engine consumes it in steps (a report may hold 50,000 connections).
    connections = (
        ConnectionIn(c.pid, c.protocol, intern(c.local_ip), c.local_port, intern(c.remote_ip), c.remote_port, c.state)
        for c in network_info.connections
    )
    interfaces = [interface.model_dump(exclude_none=True) for interface in network_info.interfaces]
    host = NodeIn(
        id=host_id(hostname),
        type="host",
        name=hostname,
        host=hostname,
        metadata={"interfaces": interfaces} if interfaces else None,
    )
    return Contribution(nodes=(host,), connections=connections)


@hookimpl
def merge_report(report, context):
    if report.network_info is None:
        return
    context.contribute(SECTION, network_contribution(report.hostname, report.network_info))
