"""The built-in ``host_info`` merger: the reporting host's node, its facts, metrics and addresses.

Every built-in merger also contributes a bare host stub with its section, so a host exists while any
section of its agent does; this one adds what ``host_info`` knows.
"""

from __future__ import annotations

from orchestrator.hookspecs import hookimpl
from orchestrator.topology import Contribution, NodeIn, host_id

SECTION = "host_info"
# Values that change report to report are metrics; the rest (and every unknown field) is metadata.
_METRICS = (
    "uptime_s",
    "cpu_percent",
    "load_avg",
    "memory_total",
    "memory_used",
    "memory_percent",
    "disk_total",
    "disk_used",
    "net_rx_bytes",
    "net_tx_bytes",
)


def host_contribution(hostname: str, host_info) -> Contribution:
    fields = host_info.model_dump(exclude_none=True)
    metrics = {name: fields.pop(name) for name in _METRICS if name in fields}
    node_id = host_id(hostname)
    node = NodeIn(id=node_id, type="host", name=hostname, host=hostname, metadata=fields, metrics=metrics)
    addresses = tuple((ip, node_id) for ip in dict.fromkeys(host_info.ip_addresses))
    return Contribution(nodes=(node,), addresses=addresses)


@hookimpl
def merge_report(report, context):
    if report.host_info is None:
        return
    context.contribute(SECTION, host_contribution(report.hostname, report.host_info))
