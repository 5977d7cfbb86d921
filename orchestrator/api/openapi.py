"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 document of every endpoint, built from one table.

**Adding an endpoint?** Add one :class:`Endpoint` to ``ENDPOINTS`` below (its response body as a model in
``orchestrator/contract/responses.py``), a ``### `METHOD /path``` section to ``docs/api.md``, and run
``python -m orchestrator.api.openapi`` to rewrite ``docs/openapi.json`` and ``docs/schemas/``.
``tests/api/test_openapi.py`` fails, saying what to add, when a served route is missing from the table, a
documented one is not served, or a file is stale.

The document is open like ``/health``: it describes the API and holds no data, and a UI team generating a
client must be able to fetch it before it has a token. Which paths need which token is not declared per
entry: it is derived from the same prefixes the auth middleware checks (``api/http.py``).
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from sanic import HTTPResponse, Request, Sanic

from orchestrator import __version__
from orchestrator.api.http import AGENT_PATHS, READ_PATHS
from orchestrator.contract import messages, responses
from orchestrator.contract.models import AgentRegistration, Report
from orchestrator.contract.schemas import SCHEMAS, json_schema

PATH = "/api/v1/openapi.json"
DOCS = Path(__file__).resolve().parents[2] / "docs"
CONTRACT_VERSION = "1.1"


@dataclass(frozen=True)
class Param:
    """A path or query parameter. ``example`` is shown in the document and used by the test that calls each path."""

    name: str
    description: str
    where: Literal["path", "query"] = "query"
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    example: str | None = None
    required: bool = False


@dataclass(frozen=True)
class Endpoint:
    """One operation. ``response`` is the success body: a model, a media type for a non-JSON body, or None.

    ``also`` are further statuses answered with the same body (``{200: "already known"}``); ``errors`` the
    statuses answered with the error body (401 is added for token-guarded paths, 400 where there are
    query parameters, by :func:`document`).
    """

    method: Literal["GET", "POST"]
    path: str  # OpenAPI form: /api/v1/agents/heartbeat/{agent_id}
    summary: str
    tag: str
    status: int = 200
    response: type[BaseModel] | str | None = None
    description: str = ""
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    body_example: dict[str, Any] | None = None
    also: dict[int, str] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    websocket: bool = False


LEVEL = Param(
    "level",
    "process (default: everything), container (processes collapsed into their container or host) or host "
    "(containers and processes collapsed into their host). Edges are rolled up the same way.",
    schema={"type": "string", "enum": list(get_args(responses.Level)), "default": "process"},
)
EXTERNAL = Param(
    "external",
    "each (default): one node per external address; group: every public one (not private, loopback, "
    "link-local, CGNAT 100.64.0.0/10, ULA fc00::/7 or unspecified) folded into external:internet, their "
    "edges rolled up onto it.",
    schema={"type": "string", "enum": list(get_args(responses.External)), "default": "each"},
)
HOST = Param("host", "Only this host's nodes, and every edge with at least one end among them.")
TIME = {"type": "string", "format": "date-time"}
AT = Param(
    "at",
    "The topology as published at this RFC 3339 time (the last publication at or before it); at or after the "
    "latest publication, the current topology (v1.1, history).",
    schema=TIME,
)
HISTORY_ERRORS = {404: "history_unavailable: before the oldest history held (named in the message), or history off"}
AGENT_ID = Param("agent_id", "The agent's id.", where="path", example="agent-1", required=True)
AGENT_STATUS = Param("status", "Only agents with this status.", schema={"type": "string", "enum": ["online", "stale"]})
UNKNOWN_AGENT = {404: "unknown_agent: the agent never registered or reported"}
STORAGE_UNAVAILABLE = (
    "storage_unavailable: the data dir cannot be written (disk full, read-only, storage.max_file_size); "
    "refused before decoding until a checkpoint succeeds again; retry after Retry-After seconds"
)
IDENTITY = {
    403: "identity_not_permitted: the agent token is bound (auth.agent_tokens) to other agent ids or hostnames, "
    "or, bound by agent ids only, names a host another agent reports; details name the field. Nothing is changed"
}
TOO_MANY_AGENTS = "too_many_agents: a new agent once agents.max_agents are known (Retry-After: the cleanup interval)"
BODY_ERRORS = {
    400: "malformed_json, or a gzip body that does not inflate",
    413: "payload_too_large: the body (or what it inflates to) is over the limit",
    415: "unsupported_media_type: not application/json, or an encoding other than gzip",
    422: "validation_failed: details name each bad field by its path",
}
REPORT_EXAMPLE = {
    "agent_id": "agent-1",
    "hostname": "host-1",
    "timestamp": "2025-10-13T00:00:00Z",
    "host_info": {"os": "linux", "cpu_count": 8, "cpu_percent": 12.5, "ip_addresses": ["10.0.0.5"]},
    "processes_info": {"processes": [{"pid": 4242, "name": "nginx", "cgroup": "0::/system.slice/nginx.service"}]},
    "network_info": {
        "connections": [
            {"pid": 4242, "protocol": "tcp", "local_ip": "0.0.0.0", "local_port": 80, "state": "LISTEN"},
        ]
    },
}

# Every route the app serves, in the order docs/api.md presents them.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/api/v1/agents/register",
        "Register an agent, or re-announce a restarted one",
        "agents",
        status=201,
        response=responses.Registered,
        body=AgentRegistration,
        body_example={"agent_id": "agent-1", "hostname": "host-1", "metadata": {"version": "1.0.0"}},
        also={200: "The agent was already known (registering again is how a restarted probe re-announces itself)."},
        errors={**BODY_ERRORS, **IDENTITY, 429: TOO_MANY_AGENTS, 503: STORAGE_UNAVAILABLE},
    ),
    Endpoint(
        "POST",
        "/api/v1/agents/heartbeat/{agent_id}",
        "Tell the server the agent is alive",
        "agents",
        response=responses.HeartbeatAck,
        params=(AGENT_ID,),
        errors={**IDENTITY, **UNKNOWN_AGENT},
    ),
    Endpoint(
        "GET",
        "/api/v1/agents/config/{agent_id}",
        "The configuration the agent should run with",
        "agents",
        response=responses.AgentConfig,
        description="From agents.* settings; label overrides (key=value against the agent's metadata) apply first, "
        "then the agent's own override. Answered for unknown agents too, with the defaults.",
        params=(AGENT_ID,),
    ),
    Endpoint(
        "GET",
        "/api/v1/agents/list",
        "Every agent, online and stale (archived ones included)",
        "agents",
        response=responses.AgentList,
        params=(AGENT_STATUS,),
    ),
    Endpoint(
        "POST",
        "/api/v1/reports",
        "Submit a report",
        "reports",
        status=202,
        response=responses.ReportAccepted,
        description="A report answered 202 is never lost afterwards. A report from an unknown agent registers it. "
        "The body may be gzip (Content-Encoding: gzip).",
        body=Report,
        body_example=REPORT_EXAMPLE,
        errors={
            **BODY_ERRORS,
            **IDENTITY,
            429: "overloaded: the ingest queue is full (cluster mode: the log this replica has not applied); or "
            + TOO_MANY_AGENTS
            + ". Retry after Retry-After seconds",
            503: "shutting_down: a graceful shutdown has begun; retry after Retry-After seconds (another replica). "
            + STORAGE_UNAVAILABLE,
        },
    ),
    Endpoint(
        "GET",
        "/api/v1/query/topology",
        "The published topology",
        "query",
        response=responses.TopologyResponse,
        params=(LEVEL, HOST, EXTERNAL, AT),
        errors=HISTORY_ERRORS,
    ),
    Endpoint(
        "GET",
        "/api/v1/query/changes",
        "What changed in the topology between two times (v1.1, history)",
        "query",
        response=responses.Changes,
        description="The net difference between the topology at `from` and at `to`: a node or edge that appeared "
        "and vanished in between is in neither list. See docs/history.md.",
        params=(
            Param("from", "The earlier time (RFC 3339).", schema=TIME, example="2025-10-13T00:00:00Z", required=True),
            Param("to", "The later time (RFC 3339; default now).", schema=TIME),
            LEVEL,
            HOST,
            EXTERNAL,
        ),
        errors=HISTORY_ERRORS,
    ),
    Endpoint(
        "GET",
        "/api/v1/query/nodes/{node_id}/history",
        "One node's structural events (v1.1, history)",
        "query",
        response=responses.NodeHistory,
        description="Added, updated (type, name, parent, host or metadata) and removed events, oldest first. "
        "See docs/history.md.",
        params=(
            Param("node_id", "The node's id, URL-encoded.", where="path", example="host:host-1", required=True),
            Param("from", "Start of the window (RFC 3339; default: the oldest history).", schema=TIME),
            Param("to", "End of the window (RFC 3339; default now).", schema=TIME),
        ),
        errors={404: "unknown_node: the node did not exist within the window"},
    ),
    Endpoint(
        "GET",
        "/api/v1/query/agents",
        "The agent list of /api/v1/agents/list, for readers",
        "query",
        response=responses.AgentList,
        description="The same answer as GET /api/v1/agents/list, behind the read token (UIs hold a read token, "
        "not an agent's).",
        params=(AGENT_STATUS,),
    ),
    Endpoint(
        "GET",
        "/api/v1/query/agents/{agent_id}/latest",
        "The agent's latest report, as submitted",
        "query",
        response=responses.LatestReport,
        params=(AGENT_ID,),
        errors={404: "unknown_agent, or no_report: the agent has not sent a report yet"},
    ),
    Endpoint(
        "GET",
        "/api/v1/query/agents/{agent_id}/timeseries",
        "The agent's time series, oldest point first",
        "query",
        response=responses.Timeseries,
        params=(
            AGENT_ID,
            Param("duration", "How far back (default: the retention, storage.max_data_age).", example="1h"),
            Param("step", "Average buckets over this step, a multiple of storage.resolution (15s).", example="1m"),
        ),
        errors=UNKNOWN_AGENT,
    ),
    Endpoint(
        "GET", "/api/v1/query/stats", "Server statistics and the effective settings", "query", response=responses.Stats
    ),
    Endpoint(
        "GET",
        "/api/v1/ws",
        "The live topology over WebSocket",
        "websocket",
        status=101,
        description="Upgrades to a WebSocket. The server's messages are `WebSocketServerMessage` (a topology_update "
        "first), a client may send `WebSocketClientMessage`s; see x-websocket and docs/api.md. Browsers pass the "
        "read token as ?token=.",
        params=(
            LEVEL,
            HOST,
            EXTERNAL,
            Param(
                "since",
                "The last seq the client saw: the missed diffs are replayed when still held, else a "
                "fresh snapshot is sent.",
                schema={"type": "integer", "minimum": 0},
            ),
            Param("token", "The read token, for browsers (they cannot set headers on a WebSocket)."),
        ),
        errors={
            426: "error: a plain HTTP request without the WebSocket upgrade",
            503: "too_many_clients: websocket.max_clients are connected (refused before the upgrade); Retry-After",
        },
        websocket=True,
    ),
    Endpoint(
        "GET",
        "/",
        "The built-in page: a live view of the topology",
        "page",
        response="text/html; charset=utf-8",
        description="Static; it reads everything through this API and loads nothing from outside the server.",
    ),
    Endpoint("GET", "/ui", "Redirects to the page", "page", status=302),
    Endpoint(
        "GET",
        "/ui/config.json",
        "What the page needs to know before its first read",
        "page",
        response=responses.PageConfig,
    ),
    Endpoint(
        "GET",
        "/ui/{file}",
        "The page's static assets (ES modules, CSS)",
        "page",
        response="*/*",
        params=(Param("file", "The asset's path under orchestrator/web/.", where="path", example="app.js"),),
        errors={404: "not_found: no such asset"},
    ),
    Endpoint(
        "GET",
        "/health",
        "Liveness; 503 once a graceful shutdown has begun or while the data dir cannot be written",
        "health",
        response=responses.Health,
        also={
            503: "status shutting_down: a graceful shutdown has begun; status storage_unavailable (with reason): "
            "the data dir cannot be written, reports and registrations are refused until a checkpoint succeeds."
        },
    ),
    Endpoint(
        "GET",
        "/livez",
        "Liveness: the event loop answers (restart the server only when this fails)",
        "health",
        response=responses.Liveness,
    ),
    Endpoint(
        "GET",
        "/readyz",
        "Readiness: whether the server should get traffic now",
        "health",
        response=responses.Readiness,
        also={503: "not_ready, with the reasons."},
    ),
    Endpoint("GET", "/api/v1/ping", "pong", "health", response=responses.Pong),
    Endpoint(
        "GET",
        "/metrics",
        "Prometheus metrics",
        "health",
        response="text/plain; version=0.0.4; charset=utf-8",
    ),
    Endpoint(
        "GET",
        PATH,
        "This document",
        "health",
        response="application/json",
        description="The OpenAPI 3.1 document of this server (also docs/openapi.json in the repository).",
    ),
)

TAGS = {
    "agents": "Probes register, heartbeat and fetch their configuration (agent token).",
    "reports": "Probes submit what they saw (agent token).",
    "query": "UIs read the topology, reports, time series and statistics (read token).",
    "websocket": "The live topology (read token).",
    "page": "Open: the built-in web page and its assets.",
    "health": "Open: health, ping, metrics and this document.",
}
REQUEST_MODELS = (Report, AgentRegistration, *messages.CLIENT_MESSAGES)
MESSAGE_UNIONS = {
    "WebSocketServerMessage": messages.SERVER_MESSAGES,
    "WebSocketClientMessage": messages.CLIENT_MESSAGES,
}


def auth_of(path: str) -> str | None:
    """The token a path needs when tokens are configured: the auth middleware's own prefixes."""
    if path.startswith(AGENT_PATHS):
        return "agentToken"
    if path.startswith(READ_PATHS):
        return "readToken"
    return None


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(body: type[BaseModel] | str, example: dict[str, Any] | None = None) -> dict[str, Any]:
    if isinstance(body, str):
        media_type = body.split(";")[0]
        return {media_type: {"schema": {"type": "object"} if media_type == "application/json" else {"type": "string"}}}
    media: dict[str, Any] = {"schema": _ref(body)}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    success: dict[str, Any] = {"description": endpoint.summary}
    if endpoint.response is not None:
        success["content"] = _content(endpoint.response)
    answers: dict[str, Any] = {str(endpoint.status): success}
    for status, text in endpoint.also.items():
        answers[str(status)] = {**success, "description": text}
    errors = dict(endpoint.errors)
    if any(p.where == "query" and p.name != "token" for p in endpoint.params) and not endpoint.websocket:
        errors.setdefault(400, "bad_parameter: a parameter with a value that is not allowed")
    token = auth_of(endpoint.path)
    if token is not None:
        errors.setdefault(401, "unauthorized: tokens are configured and the request has none, or a wrong one")
    for status in sorted(errors):
        answers[str(status)] = {"description": errors[status], "content": _content(responses.ErrorBody)}
    operation: dict[str, Any] = {
        "operationId": endpoint.path.strip("/").replace("/", "_").replace("{", "").replace("}", "").replace(".", "_")
        + f"_{endpoint.method.lower()}",
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "responses": dict(sorted(answers.items())),
    }
    if endpoint.description:
        operation["description"] = endpoint.description
    if endpoint.params:
        operation["parameters"] = [_parameter(p) for p in endpoint.params]
    if endpoint.body is not None:
        operation["requestBody"] = {"required": True, "content": _content(endpoint.body, endpoint.body_example)}
    # Open while no token of that kind is configured: the empty requirement says so.
    operation["security"] = [{token: []}, {}] if token else []
    if endpoint.websocket:
        operation["x-websocket"] = {
            "server_messages": {"$ref": "#/components/schemas/WebSocketServerMessage"},
            "client_messages": {"$ref": "#/components/schemas/WebSocketClientMessage"},
        }
    return operation


def _parameter(param: Param) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": param.name,
        "in": param.where,
        "required": param.required or param.where == "path",
        "description": param.description,
        "schema": param.schema,
    }
    if param.example is not None:
        out["example"] = param.example
    return out


def _component_schemas() -> dict[str, Any]:
    models: list[type[BaseModel]] = [*REQUEST_MODELS, *messages.SERVER_MESSAGES, responses.ErrorBody]
    models += [e.response for e in ENDPOINTS if isinstance(e.response, type)]
    unique = list(dict.fromkeys(models))
    _, defs = models_json_schema([(m, "validation") for m in unique], ref_template="#/components/schemas/{model}")
    schemas = dict(sorted(defs["$defs"].items()))
    for name, members in MESSAGE_UNIONS.items():
        schemas[name] = {
            "oneOf": [_ref(m) for m in members],
            "discriminator": {
                "propertyName": "type",
                "mapping": {get_args(m.model_fields["type"].annotation)[0]: _ref(m)["$ref"] for m in members},
            },
        }
    return schemas


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (static: built once per process)."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    bearer = "Authorization: Bearer <token>; required only when auth.{kind}_tokens are configured."
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Orchestrator",
            "version": __version__,
            "summary": "The central app server of an infrastructure monitoring platform.",
            "description": f"Wire contract v{CONTRACT_VERSION}; the reference is docs/api.md. Every error body is "
            "ErrorBody. JSON in and out, UTF-8; timestamps RFC 3339 UTC; durations Go-style (15s, 5m, 1h30m).",
        },
        "x-contract-version": CONTRACT_VERSION,
        "tags": [{"name": name, "description": text} for name, text in TAGS.items()],
        "paths": paths,
        "components": {
            "schemas": _component_schemas(),
            "securitySchemes": {
                "agentToken": {"type": "http", "scheme": "bearer", "description": bearer.format(kind="agent")},
                "readToken": {"type": "http", "scheme": "bearer", "description": bearer.format(kind="read")},
            },
        },
    }


@functools.cache
def document_json() -> bytes:
    return orjson.dumps(document())


async def openapi_json(request: Request) -> HTTPResponse:
    return HTTPResponse(document_json(), content_type="application/json")


def setup_openapi(app: Sanic) -> None:
    app.add_route(openapi_json, PATH, methods=["GET"], name="openapi")


def generated_files() -> dict[Path, str]:
    """Every file ``python -m orchestrator.api.openapi`` writes, with its current content."""
    files = {DOCS / "openapi.json": _pretty(document())}
    for name, kind in SCHEMAS.items():
        files[DOCS / "schemas" / f"{name}.json"] = _pretty(json_schema(kind))
    return files


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    for path, text in generated_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    sys.exit(0)
