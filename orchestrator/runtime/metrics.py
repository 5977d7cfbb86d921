"""Prometheus metrics, one registry per app so two apps in one process never collide."""

from __future__ import annotations

import asyncio
import platform
import time
from dataclasses import dataclass

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from orchestrator import __version__

# The method label takes only these; anything else a client sends is counted as "other", so made-up
# methods cannot grow the label set (each new value is a new series, kept for the life of the process).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Label values known up front: their series exist (at 0) from the start, so rate() and alerts see them
# before the first event.
KNOWN_LABELS = {
    "agents": ("online", "stale"),
    "reports_rejected": ("validation", "agent_limit"),
    "conflicting_claims": ("ip", "container"),
    "websocket_closes": ("slow", "shutdown", "invalid_view", "capacity"),
    "cleanup_removed": ("archived", "deleted"),
    "connections_shed": ("idle", "slow", "refused", "request_timeout", "body_bytes"),
}


def method_label(method: str) -> str:
    """The ``method`` label of a request: the method itself when it is a standard one, else ``other``."""
    return method if method in HTTP_METHODS else "other"


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    http_duration: Histogram
    connections_open: Gauge
    connections_limit: Gauge
    connections_shed: Counter
    request_body_bytes: Gauge
    agents: Gauge
    reports_received: Counter
    reports_rejected: Counter
    identity_refused: Counter
    conflicting_claims: Counter
    reports_throttled: Counter
    ingest_queue: Gauge
    ingest_queue_capacity: Gauge
    ingest_queue_bytes: Gauge
    reports_coalesced: Counter
    ingest_seconds: Histogram
    plugin_errors: Counter
    topology_nodes: Gauge
    topology_edges: Gauge
    websocket_clients: Gauge
    websocket_messages: Counter
    websocket_drops: Counter
    websocket_closes: Counter
    broadcast_seconds: Histogram
    cleanup_runs: Counter
    cleanup_seconds: Histogram
    cleanup_stale_agents: Gauge
    cleanup_removed: Counter
    cleanup_purged_points: Counter
    cleanup_stale_ratio_alert: Gauge
    checkpoint_seconds: Histogram
    checkpoint_failures: Counter
    storage_available: Gauge
    storage_refused: Counter
    loop_lag: Histogram
    build_info: Gauge
    replica_lag: Gauge


def create_metrics() -> Metrics:
    # Counters' *_created series double the output and nobody graphs them. The switch is process-wide in
    # prometheus_client; every registry of ours wants it off.
    prometheus_client.disable_created_metrics()
    r = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds, ...
    metrics = Metrics(
        registry=r,
        http_duration=Histogram(
            "app_http_request_duration_seconds",
            "HTTP request duration",
            ["method", "route", "status"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ),
        connections_open=Gauge(
            "app_http_connections_open",
            "Open HTTP and WebSocket connections: idle (keep-alive, or nothing sent yet), arriving (a request "
            "not received whole yet), busy (being handled or answered, WebSockets)",
            ["state"],
            registry=r,
        ),
        connections_limit=Gauge(
            "app_http_connections_limit",
            "Open connections allowed: server.max_open_connections, lowered to fit the descriptor limit",
            registry=r,
        ),
        connections_shed=Counter(
            "app_http_connections_shed_total",
            "Connections closed or refused to keep the server reachable (cap, deadline, body budget)",
            ["reason"],
            registry=r,
        ),
        request_body_bytes=Gauge(
            "app_http_request_body_pending_bytes",
            "Bytes of request bodies held that have not arrived whole yet (server.max_pending_body_bytes)",
            registry=r,
        ),
        agents=Gauge("app_agents_total", "Known agents", ["status"], registry=r),
        reports_received=Counter("app_reports_received_total", "Reports accepted (202)", registry=r),
        reports_rejected=Counter("app_reports_rejected_total", "Reports refused", ["reason"], registry=r),
        identity_refused=Counter(
            "app_identity_refused_total",
            "Writes refused 403 because the agent token may not speak for the agent or host they name",
            ["endpoint", "field"],
            registry=r,
        ),
        conflicting_claims=Counter(
            "app_conflicting_claims_total",
            "Claims ignored because another host owns the address or container (owner wins)",
            ["kind"],
            registry=r,
        ),
        reports_throttled=Counter(
            "app_reports_throttled_total", "Reports refused with 429/503 (queue full or shutting down)", registry=r
        ),
        ingest_queue=Gauge("app_ingest_queue_depth", "Accepted reports waiting to be applied", registry=r),
        ingest_queue_capacity=Gauge(
            "app_ingest_queue_capacity", "Reports the ingest backlog may hold (server.ingest_queue_size)", registry=r
        ),
        ingest_queue_bytes=Gauge(
            "app_ingest_queue_bytes", "Decoded JSON bytes of the accepted reports not applied yet", registry=r
        ),
        reports_coalesced=Counter(
            "app_reports_coalesced_total",
            "Reports not merged because a later queued report of the agent replaced every section",
            registry=r,
        ),
        ingest_seconds=Histogram(
            "app_ingest_apply_seconds",
            "Time to merge a report and run its sinks",
            registry=r,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
        ),
        plugin_errors=Counter(
            "app_plugin_errors_total", "Exceptions raised by plugins", ["plugin", "hook"], registry=r
        ),
        topology_nodes=Gauge("app_topology_nodes", "Nodes in the published topology", ["type"], registry=r),
        topology_edges=Gauge("app_topology_edges", "Edges in the published topology", registry=r),
        websocket_clients=Gauge("app_websocket_clients", "Connected WebSocket clients", registry=r),
        websocket_messages=Counter(
            "app_websocket_messages_total", "Messages queued to WebSocket clients", ["type"], registry=r
        ),
        websocket_drops=Counter(
            "app_websocket_dropped_total", "Diffs dropped for clients too slow to keep up", registry=r
        ),
        websocket_closes=Counter(
            "app_websocket_closed_total", "WebSocket connections closed by the server", ["reason"], registry=r
        ),
        broadcast_seconds=Histogram(
            "app_websocket_broadcast_seconds",
            "CPU time of one publish + broadcast",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
        ),
        cleanup_runs=Counter("app_cleanup_runs_total", "Cleanup sweeps", registry=r),
        cleanup_seconds=Histogram("app_cleanup_duration_seconds", "Cleanup sweep duration", registry=r),
        cleanup_stale_agents=Gauge("app_cleanup_stale_agents", "Agents marked stale at the last sweep", registry=r),
        cleanup_removed=Counter(
            "app_cleanup_removed_total", "Agents removed from the topology or deleted", ["stage"], registry=r
        ),
        cleanup_purged_points=Counter(
            "app_cleanup_purged_points_total", "Expired time-series slots cleared", registry=r
        ),
        cleanup_stale_ratio_alert=Gauge(
            "app_cleanup_stale_ratio_alert", "1 while the stale share exceeds cleanup.stale_alert_ratio", registry=r
        ),
        checkpoint_seconds=Histogram("app_checkpoint_duration_seconds", "Checkpoint duration", registry=r),
        checkpoint_failures=Counter("app_checkpoint_failures_total", "Checkpoints that failed", registry=r),
        storage_available=Gauge(
            "app_storage_available", "1 while checkpoints succeed; 0 while the data dir cannot be written", registry=r
        ),
        storage_refused=Counter(
            "app_storage_refused_total",
            "Reports and registrations refused with 503 while the data dir cannot be written",
            registry=r,
        ),
        loop_lag=Histogram(
            "app_event_loop_lag_seconds",
            "How late a timer on the event loop fires: the longest a request can wait behind work on the loop",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        ),
        build_info=Gauge(
            "app_build_info", "Always 1; the labels say which build runs", ["version", "python"], registry=r
        ),
        replica_lag=Gauge(
            "app_replica_lag_messages",
            "Messages of the cluster's stream this replica has not applied yet (0 in single-server mode)",
            registry=r,
        ),
    )
    metrics.build_info.labels(__version__, platform.python_version()).set(1)
    for name, values in KNOWN_LABELS.items():
        family = getattr(metrics, name)
        for value in values:
            family.labels(value)
    for endpoint in ("register", "heartbeat", "report"):
        for field in ("agent_id", "hostname"):
            metrics.identity_refused.labels(endpoint, field)
    return metrics


async def watch_loop_lag(metrics: Metrics, interval: float = 0.1) -> None:
    """Sample the event loop's lateness: everything (HTTP, merges, publishes, WebSocket sends) shares one
    loop, so this is the first thing to look at when POST latency grows."""
    while True:
        start = time.perf_counter()
        await asyncio.sleep(interval)
        metrics.loop_lag.observe(max(0.0, time.perf_counter() - start - interval))
