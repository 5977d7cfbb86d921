"""The bodies the server answers with, as pydantic models: the source of the JSON Schemas in the OpenAPI document.

The server writes these bodies itself (orjson, spliced bytes): the models are never on the hot path. They say
what a client can rely on, and ``tests/api/test_openapi.py`` validates real answers against them, so they
cannot drift from what is sent. Every model allows fields it does not name: the contract grows by adding.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict  # pydantic reads typing.TypedDict only from Python 3.12

# What the server writes (``contract.times.format_rfc3339``): RFC 3339, UTC, ``Z``.
ServerTime = Annotated[str, Field(json_schema_extra={"format": "date-time"}, examples=["2025-10-13T00:00:00.000Z"])]
GoDuration = Annotated[str, Field(description="A Go-style duration: 500ms, 15s, 5m, 1h30m.", examples=["15s"])]
Level = Literal["process", "container", "host"]
External = Literal["each", "group"]


class Body(BaseModel):
    """A JSON object of the API: it may carry fields not named here, and readers must accept them (the contract
    grows by adding)."""

    model_config = ConfigDict(extra="allow")


class ErrorDetail(Body):
    field: str = Field(description="The bad field's JSON path, e.g. network_info.connections.3.remote_port.")
    message: str


class ErrorInfo(Body):
    code: str = Field(description="A machine code: see docs/api.md, 'Errors'.", examples=["bad_parameter"])
    message: str
    details: list[ErrorDetail] | None = Field(default=None, description="On 422: one entry per bad field.")


class ErrorBody(Body):
    """Every error, at every status."""

    error: ErrorInfo


class Agent(Body):
    agent_id: str
    hostname: str
    metadata: dict[str, str | int | float | bool]
    registered_at: ServerTime
    last_seen: ServerTime
    last_report_at: ServerTime | None
    reports_received: int
    status: Literal["online", "stale"]


class Registered(Body):
    status: Literal["registered"]
    message: str
    agent: Agent


class HeartbeatAck(Body):
    status: Literal["ok"]
    timestamp: ServerTime


class AgentConfig(Body):
    agent_id: str
    report_interval: GoDuration
    heartbeat_interval: GoDuration
    server_time: ServerTime
    features: dict[str, Any]


class AgentList(Body):
    agents: list[Agent]
    count: int


class ReportAccepted(Body):
    status: Literal["accepted"]
    message: str
    report_id: str


class Node(Body):
    id: str = Field(examples=["process:host-1:4242"])
    type: str = Field(description="host, container, process or external (plugins may add types).")
    name: str | None
    parent: str | None = Field(description="The id of the node this one runs in; never a missing node.")
    host: str | None
    agent_ids: list[str]
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    first_seen: ServerTime
    last_seen: ServerTime


class Edge(Body):
    id: str = Field(examples=["process:host-1:5120->process:host-2:880"])
    source: str = Field(description="The client end's node id.")
    target: str = Field(description="The server end's node id.")
    protocol: str
    ports: list[int]
    connections: int
    last_seen: ServerTime


class Topology(Body):
    nodes: dict[str, Node]
    edges: dict[str, Edge]
    timestamp: ServerTime = Field(
        description="When this version was published (1970-01-01T00:00:00.000Z before the first publication)."
    )
    seq: int = Field(description="The published version's sequence number (the WebSocket's seq).")


class TopologyResponse(Body):
    topology: Topology


class NodeChanges(Body):
    added: dict[str, Node] = Field(description="Nodes there at `to` and not at `from`, as at `to`.")
    removed: dict[str, Node] = Field(description="Nodes there at `from` and not at `to`, as at `from`.")
    updated: dict[str, Node] = Field(
        description="Nodes whose type, name, parent, host or metadata differ, as at `to` (metrics, first_seen, "
        "last_seen and agent_ids never count)."
    )


class EdgeChanges(Body):
    added: dict[str, Edge]
    removed: dict[str, Edge]
    updated: dict[str, Edge] = Field(description="Edges whose protocol or ports differ (connections never count).")


class Changes(Body):
    from_: ServerTime = Field(alias="from")
    to: ServerTime
    from_seq: int = Field(description="The seq of the publication answering for `from`.")
    to_seq: int = Field(description="The seq of the publication answering for `to`.")
    nodes: NodeChanges
    edges: EdgeChanges


class NodeEvent(Body):
    timestamp: ServerTime = Field(description="The publication's timestamp.")
    seq: int
    change: Literal["added", "updated", "removed"]
    node: Node = Field(description="The node after the change (for removed: as it was last).")


class NodeHistory(Body):
    node_id: str
    events: list[NodeEvent] = Field(description="Oldest first.")


class LatestReport(Body):
    agent_id: str
    received_at: ServerTime
    report: dict[str, Any] = Field(description="The report exactly as submitted (see the Report schema).")


# The time-series store (state/timeseries.py) builds these dicts: this is their one definition.
class TimeseriesPoint(TypedDict):
    """One point: a 15-second bucket (or a step group of buckets) and its metrics, null where no report in it
    carried the metric."""

    timestamp: ServerTime  # the start of the bucket or step group
    cpu_percent: float | None
    memory_used: int | None
    memory_percent: float | None
    load1: float | None
    net_rx_rate: float | None
    net_tx_rate: float | None
    process_count: int | None
    container_count: int | None
    connection_count: int | None


class Timeseries(Body):
    agent_id: str
    duration: GoDuration
    resolution: GoDuration
    step: GoDuration
    points: list[TimeseriesPoint]
    count: int


class Stats(Body):
    agents: int
    agents_by_status: dict[str, int]
    websocket_clients: int
    reports_received: int
    ingest_queue: int
    ingest_queue_bytes: int = Field(description="Decoded JSON bytes of the reports not applied yet.")
    seq: int
    storage: dict[str, Any]
    topology: dict[str, int]
    websocket: dict[str, Any]
    cleanup: dict[str, Any]
    config: dict[str, Any] = Field(description="The effective settings, tokens redacted.")
    uptime: GoDuration
    cluster: dict[str, Any] = Field(
        description='{"mode": "single"}, or in cluster mode {"mode": "nats", "replica_id", "stream", "applied_seq", '
        '"stream_seq", "lag", ...}: this replica\'s position in the shared log.'
    )


class Health(Body):
    status: str = Field(
        description="healthy (200); shutting_down (503) once a graceful shutdown has begun; storage_unavailable "
        "(503) while the data dir cannot be written; in cluster mode catching_up (503) while the replica replays "
        "the log and bus_unavailable (503) while NATS cannot be reached."
    )
    version: str
    uptime: GoDuration
    uptime_seconds: float
    agents: int
    ingest_queue: int
    reason: str | None = Field(
        default=None, description="With storage_unavailable: why the last checkpoint failed (one line)."
    )
    cluster: dict[str, Any] | None = Field(None, description="Cluster mode only: as in stats.")


class PageConfig(Body):
    read_token_required: bool = Field(description="Whether the page must ask for a read token before reading.")


class Liveness(Body):
    status: Literal["alive"]


class Readiness(Body):
    status: Literal["ready", "not_ready"]
    reasons: dict[str, str] | None = Field(
        default=None,
        description="With not_ready: reason code (starting, restoring, catching_up, shutting_down, ...) to one line "
        "for the operator.",
    )


class Pong(Body):
    message: Literal["pong"]
