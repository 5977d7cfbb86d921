"""Built-in sink: each report's host metrics go into the agent's 15-second time series."""

from __future__ import annotations

from orchestrator.contract.models import count_items
from orchestrator.hookspecs import hookimpl


def report_metrics(report) -> dict:
    """The time-series metrics a report carries; a missing section leaves its metrics out (None)."""
    host = report.host_info
    metrics: dict = {}
    if host is not None:
        metrics.update(
            cpu_percent=host.cpu_percent,
            memory_used=host.memory_used,
            memory_percent=host.memory_percent,
            load1=host.load_avg[0] if host.load_avg else None,
            net_rx_bytes=host.net_rx_bytes,
            net_tx_bytes=host.net_tx_bytes,
        )
    network = report.network_info
    if network is not None and network.interfaces and metrics.get("net_rx_bytes") is None:
        # A probe without host counters still has per-interface ones.
        rx = [i.rx_bytes for i in network.interfaces if i.rx_bytes is not None]
        tx = [i.tx_bytes for i in network.interfaces if i.tx_bytes is not None]
        metrics.update(net_rx_bytes=sum(rx) if rx else None, net_tx_bytes=sum(tx) if tx else None)
    counts = count_items(report)
    if report.processes_info is not None:
        metrics["process_count"] = counts["processes"]
    if report.docker_info is not None:
        metrics["container_count"] = counts["containers"]
    if network is not None:
        metrics["connection_count"] = counts["connections"]
    return metrics


@hookimpl
def receive_report(report, received_at, state):
    state.timeseries.add_report(report.agent_id, report.epoch, report_metrics(report), now=received_at)
