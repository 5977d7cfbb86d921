"""Queries: topology views (as of a time: :mod:`orchestrator.api.history`), an agent's latest report and time series, server statistics."""

from __future__ import annotations

import asyncio
import time

import orjson
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json

from orchestrator.api import history
from orchestrator.api.agents import list_agents
from orchestrator.api.compression import StreamedAnswer
from orchestrator.api.snapshots import SLICE_ITEMS, prepare_view
from orchestrator.contract.durations import format_duration, parse_duration
from orchestrator.contract.errors import ApiError
from orchestrator.contract.times import format_rfc3339
from orchestrator.runtime.slicing import run_sliced

bp = Blueprint("query", url_prefix="/api/v1/query")
SMALL_VIEW = SLICE_ITEMS  # nodes + edges a plain (not chunked) response is built for


def _raw_json(body: bytes, status: int = 200) -> HTTPResponse:
    return HTTPResponse(body, status=status, content_type="application/json")


@bp.get("/topology")
async def topology(request: Request) -> HTTPResponse | None:
    level, external, host = history.view_params(request)
    if "at" in request.args:
        past = await history.topology_at(request, level, host, external)
        if past is not None:
            return past
    state = request.app.ctx.state
    topology = state.topology
    if host is not None:
        await prepare_view(state, level, external)  # a collapsed view's first read: built in slices
        # One host's part is small: serialized once per (seq, level, host, external), wrapped with a copy.
        return _raw_json(b'{"topology":' + topology.snapshot_json(level, host, external) + b"}")
    # A whole view can be ~100 MB: what changed since the last read is encoded (in slices when it is much),
    # the rest is kept JSON, sent in chunks with other requests served in between.
    encoded = await request.app.ctx.snapshots.encoded(state, level, external)
    if encoded.items <= SMALL_VIEW:
        return _raw_json(encoded.body())  # a plain response
    answer = await StreamedAnswer.open(request, "application/json")  # gzipped when the client accepts it
    for chunk in encoded.chunks():
        await answer.send(chunk)
        await asyncio.sleep(0)  # a chunk is ~1 MB: sent uncompressed to a fast reader, a send need not yield
    await answer.finish()
    return None  # streamed: Sanic logs an error for a response returned after it


@bp.get("/agents")
async def agents(request: Request) -> HTTPResponse | None:
    """The agent list of ``/api/v1/agents/list`` for readers: UIs hold the read token, not an agent's."""
    return await list_agents(request)


def _known_agent(state, agent_id: str) -> None:
    if not state.is_known(agent_id):
        raise ApiError(404, f"agent {agent_id!r} is unknown", code="unknown_agent")


@bp.get("/agents/<agent_id:str>/latest")
async def latest(request: Request, agent_id: str) -> HTTPResponse:
    state = request.app.ctx.state
    _known_agent(state, agent_id)
    entry = state.latest_report(agent_id)
    if entry is None:
        raise ApiError(404, f"agent {agent_id!r} has not sent a report yet", code="no_report")
    head = orjson.dumps({"agent_id": agent_id, "received_at": format_rfc3339(entry.received_at)})
    # The report as submitted: its stored bytes are spliced in, never re-serialized.
    return _raw_json(head[:-1] + b',"report":' + entry.raw() + b"}")


def _duration_param(request: Request, name: str, default: float) -> tuple[float, str]:
    text = request.args.get(name)
    if text is None:
        return default, format_duration(default)
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ApiError(400, f"{name}={text!r}: {exc}", code="bad_parameter") from None
    if value <= 0:
        raise ApiError(400, f"{name}={text!r}: must be greater than zero", code="bad_parameter")
    return value, text


@bp.get("/agents/<agent_id:str>/timeseries")
async def timeseries(request: Request, agent_id: str) -> HTTPResponse:
    state = request.app.ctx.state
    _known_agent(state, agent_id)
    storage = state.settings.storage
    duration, duration_text = _duration_param(request, "duration", storage.max_data_age)
    step, step_text = _duration_param(request, "step", storage.resolution)
    if step < storage.resolution or round(step / storage.resolution, 9) % 1:
        raise ApiError(
            400,
            f"step={step_text!r}: must be a multiple of {format_duration(storage.resolution)}",
            code="bad_parameter",
        )
    # A stale agent's history waits in the archive, still within retention: it is still answered.
    store = state.timeseries_of(agent_id)
    window = min(duration, storage.max_data_age)
    points = store.get_recent_points(agent_id, window, step, now=state.clock()) if store else []
    body = {
        "agent_id": agent_id,
        "duration": duration_text,
        "resolution": format_duration(storage.resolution),
        "step": format_duration(step),
        "points": points,
        "count": len(points),
    }
    return _raw_json(orjson.dumps(body))


@bp.get("/stats")
async def stats(request: Request) -> HTTPResponse:
    state = request.app.ctx.state
    now = time.time()
    # Sliced: at 100,000 agents each pass over them is ~15 ms (the time series' figures are kept as they change).
    counts = await run_sliced(state.agent_counts(state.clock()))
    storage = {
        **state.timeseries.stats(),
        "latest_reports": len(state.latest),
        "latest_reports_bytes": await run_sliced(state.latest_reports_bytes()),
        "archived_agents": len(state.archive),
    }
    if state.store is not None:
        storage["data_file"] = str(state.store.path)
        storage["checkpoint"] = state.store.stats()
    if state.history is not None:
        storage["history"] = state.history.stats()
    body = {
        "agents": sum(counts.values()),
        "agents_by_status": counts,
        "websocket_clients": state.hub.client_count if state.hub else 0,
        "reports_received": state.reports_received,
        "ingest_queue": state.ingest.backlog,
        "ingest_queue_bytes": state.ingest.queued_bytes,
        "seq": state.topology.seq,
        "storage": storage,
        "topology": state.topology.counts(),
        "websocket": state.hub.stats() if state.hub else {},
        "cleanup": state.cleanup_stats,
        "config": state.settings.redacted(),
        "uptime": format_duration(round(now - state.started_at)),
        "cluster": cluster.stats() if (cluster := request.app.ctx.cluster) is not None else {"mode": "single"},
    }
    return json(body)
