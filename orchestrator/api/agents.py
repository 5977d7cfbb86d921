"""Agents: register, heartbeat, fetch their configuration, list."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import orjson
from pydantic import ValidationError
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json

from orchestrator.api.compression import StreamedAnswer
from orchestrator.api.http import json_body
from orchestrator.api.identity import check_identity
from orchestrator.contract.durations import format_duration
from orchestrator.contract.errors import ApiError
from orchestrator.contract.models import AgentRegistration, error_details
from orchestrator.contract.times import format_rfc3339
from orchestrator.state.persistence import refuse_while_unavailable

bp = Blueprint("agents", url_prefix="/api/v1/agents")
LIST_SLICE = 2_000  # agents encoded per slice of GET /list


def admit(state, agent_id: str) -> None:
    """429 for a write from a new agent once ``agents.max_agents`` are known: agents are what a client can
    make the server keep (registry, time series, archive), so their number has a bound."""
    if not state.admits(agent_id):
        state.metrics.reports_rejected.labels("agent_limit").inc()
        retry = max(1, round(state.settings.storage.cleanup_interval))
        raise ApiError(
            429,
            f"the server keeps at most {state.settings.agents.max_agents} agents (agents.max_agents); "
            f"{agent_id!r} is new. Stale agents are archived and deleted by the cleanup sweep",
            code="too_many_agents",
            headers={"Retry-After": str(retry)},
        )


@bp.post("/register")
async def register(request: Request) -> HTTPResponse:
    state = request.app.ctx.state
    refuse_while_unavailable(state)
    try:
        registration = AgentRegistration.model_validate(json_body(request, state.settings.server.max_registration_size))
    except ValidationError as exc:
        raise ApiError(422, "registration failed validation", details=error_details(exc)) from None
    check_identity(request, "register", registration.agent_id, registration.hostname)
    admit(state, registration.agent_id)
    cluster = request.app.ctx.cluster
    if cluster is not None:  # stored in the cluster's log first, answered once applied here
        created, agent_body = await cluster.register(
            registration.agent_id, registration.hostname, registration.metadata
        )
    else:
        now = time.time()
        agent, created = state.register_agent(registration.agent_id, registration.hostname, registration.metadata, now)
        agent_body = agent.to_json(now, state.settings.agents.stale_threshold)
    body = {
        "status": "registered",
        "message": f"Agent {agent_body['agent_id']} registered successfully",
        "agent": agent_body,
    }
    return json(body, status=201 if created else 200)


@bp.post("/heartbeat/<agent_id:str>")
async def heartbeat(request: Request, agent_id: str) -> HTTPResponse:
    state = request.app.ctx.state
    check_identity(request, "heartbeat", agent_id, None)
    cluster = request.app.ctx.cluster
    if cluster is not None:
        seen = await cluster.heartbeat(agent_id)  # stored in the cluster's log, then applied here
    else:
        seen = time.time()
        if state.heartbeat(agent_id, seen) is None:
            seen = None
    if seen is None:
        raise ApiError(
            404, f"agent {agent_id!r} is not registered; register or send a report first", code="unknown_agent"
        )
    return json({"status": "ok", "timestamp": format_rfc3339(seen)})


@bp.get("/config/<agent_id:str>")
async def config(request: Request, agent_id: str) -> HTTPResponse:
    settings = request.app.ctx.settings.agents
    agent = request.app.ctx.state.registry.get(agent_id)
    metadata = agent.metadata if agent else {}
    report_interval, heartbeat_interval = settings.report_interval, settings.heartbeat_interval
    features = dict(settings.features)
    # Label overrides ("environment=edge", matched against the agent's metadata) first, in file order,
    # then the agent's own: the most specific wins.
    matching = [o for key, o in settings.overrides.items() if "=" in key and _has_label(metadata, key)]
    if agent_id in settings.overrides:
        matching.append(settings.overrides[agent_id])
    for override in matching:
        report_interval = override.report_interval or report_interval
        heartbeat_interval = override.heartbeat_interval or heartbeat_interval
        features.update(override.features)
    return json(
        {
            "agent_id": agent_id,
            "report_interval": format_duration(report_interval),
            "heartbeat_interval": format_duration(heartbeat_interval),
            "server_time": format_rfc3339(time.time()),
            "features": features,
        }
    )


@bp.get("/list")
async def list_agents(request: Request) -> HTTPResponse | None:
    state = request.app.ctx.state
    wanted = request.args.get("status")
    if wanted not in (None, "online", "stale"):
        raise ApiError(400, f"status must be online or stale, got {wanted!r}", code="bad_parameter")
    listed = state.listed_agents()
    slices = _agent_slices(listed, state.clock(), state.settings.agents.stale_threshold, wanted)
    if len(listed) <= LIST_SLICE:
        agents = next(slices, [])
        return json({"agents": agents, "count": len(agents)})
    # 100k agents are ~40 MB of JSON: encoded a slice at a time, sent as it goes, other requests served between.
    answer = await StreamedAnswer.open(request, "application/json")  # gzipped when the client accepts it
    await answer.send(b'{"agents":[')
    count = 0
    for agents in slices:
        if agents:
            await answer.send((b"," if count else b"") + orjson.dumps(agents)[1:-1])
            count += len(agents)
        await asyncio.sleep(0)
    await answer.send(b'],"count":' + str(count).encode() + b"}")
    await answer.finish()
    return None  # streamed: Sanic logs an error for a response returned after it


def _agent_slices(listed: list, now: float, threshold: float, wanted: str | None) -> Iterator[list[dict]]:
    for start in range(0, len(listed), LIST_SLICE):
        agents = [agent.to_json(now, threshold) for agent in listed[start : start + LIST_SLICE]]
        yield [agent for agent in agents if agent["status"] == wanted] if wanted else agents


def _has_label(metadata: dict, label: str) -> bool:
    key, _, value = label.partition("=")
    return key in metadata and str(metadata[key]).lower() == value.lower()
