"""The WebSocket messages of ``GET /api/v1/ws`` as pydantic models: the source of their JSON Schemas.

The hub writes these messages itself (orjson, once per view); the models describe them for clients and
``tests/api/test_openapi.py`` checks real frames against them. Server messages share one envelope
``{"type", "seq", "timestamp", "payload"}``; ``type`` tells them apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from orchestrator.contract.responses import Body, Edge, External, Level, Node, ServerTime


class _Envelope(Body):
    seq: int = Field(description="The topology version the message belongs to; +1 per publication.")
    timestamp: ServerTime


class SnapshotPayload(Body):
    nodes: dict[str, Node]
    edges: dict[str, Edge]
    timestamp: ServerTime
    seq: int


class TopologyUpdate(_Envelope):
    """A full snapshot of the client's view: first after connecting, after a resync, after falling behind."""

    type: Literal["topology_update"]
    payload: SnapshotPayload


class NodeChanges(Body):
    added: dict[str, Node]
    updated: dict[str, Node]
    removed: list[str]


class EdgeChanges(Body):
    added: dict[str, Edge]
    updated: dict[str, Edge]
    removed: list[str]


class DiffPayload(Body):
    from_seq: int = Field(description="The seq this diff applies to (always the message's seq - 1).")
    nodes: NodeChanges
    edges: EdgeChanges


class TopologyDiff(_Envelope):
    """What changed in the client's view since ``payload.from_seq``: one per publication."""

    type: Literal["topology_diff"]
    payload: DiffPayload


class ReportSummary(Body):
    hostname: str
    timestamp: str = Field(description="The report's own timestamp, as the probe sent it.")
    containers: int
    processes: int
    connections: int


class ReportUpdatePayload(Body):
    agent_id: str
    report: ReportSummary


class ReportUpdate(_Envelope):
    """An agent's latest accepted report, in summary (at most one per agent per broadcast interval)."""

    type: Literal["report_update"]
    payload: ReportUpdatePayload


class PongMessage(_Envelope):
    """The answer to a client's ``ping``."""

    type: Literal["pong"]
    payload: dict[str, Any]


WS_ERROR_CODES = (
    "invalid_level",
    "invalid_external",
    "invalid_since",
    "message_too_large",
    "malformed_json",
    "unknown_message",
)


class ErrorPayload(Body):
    code: str = Field(description="One of " + ", ".join(WS_ERROR_CODES) + ".", examples=list(WS_ERROR_CODES))
    message: str


class ErrorMessage(_Envelope):
    """A client message the server could not use; the connection stays open (except after a bad ``level`` on
    connect, which closes it with 1008; so does a bad ``external``)."""

    type: Literal["error"]
    payload: ErrorPayload


ServerMessage = Annotated[
    TopologyUpdate | TopologyDiff | ReportUpdate | PongMessage | ErrorMessage, Field(discriminator="type")
]


class Ping(Body):
    """Answered with a ``pong`` message."""

    type: Literal["ping"]


class Resync(Body):
    """Asks for a fresh ``topology_update``; pending diffs are superseded by it."""

    type: Literal["resync"]


class Subscribe(Body):
    """Switches the connection to another view: its snapshot next, then its diffs."""

    type: Literal["subscribe"]
    level: Level | None = Field(default=None, description="Default process.")
    host: str | None = Field(default=None, description="Only this host's nodes and their edges.")
    external: External | None = Field(
        default=None, description="each (default) or group: public external addresses as one external:internet node."
    )


ClientMessage = Annotated[Ping | Resync | Subscribe, Field(discriminator="type")]

SERVER_MESSAGES = (TopologyUpdate, TopologyDiff, ReportUpdate, PongMessage, ErrorMessage)
CLIENT_MESSAGES = (Ping, Resync, Subscribe)
