"""JSON Schemas of what probes send and of every WebSocket message, generated from the pydantic models.

``docs/schemas/<name>.json`` holds each one (``python -m orchestrator.api.openapi`` writes them, a test keeps
them current); the OpenAPI document carries the same schemas as components.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from orchestrator.contract import messages
from orchestrator.contract.models import AgentRegistration, Report

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# file name (without .json) -> the type its schema is generated from
SCHEMAS: dict[str, Any] = {
    "report": Report,
    "agent_registration": AgentRegistration,
    "ws_server_message": messages.ServerMessage,
    "ws_client_message": messages.ClientMessage,
    "ws_topology_update": messages.TopologyUpdate,
    "ws_topology_diff": messages.TopologyDiff,
    "ws_report_update": messages.ReportUpdate,
    "ws_pong": messages.PongMessage,
    "ws_error": messages.ErrorMessage,
    "ws_client_ping": messages.Ping,
    "ws_client_resync": messages.Resync,
    "ws_client_subscribe": messages.Subscribe,
}


def json_schema(kind: Any) -> dict[str, Any]:
    """A standalone JSON Schema (2020-12) of a model or an annotated type, its sub-schemas under ``$defs``."""
    return {"$schema": DIALECT, **TypeAdapter(kind).json_schema()}
