"""Health, liveness, readiness, ping and Prometheus metrics: always open, never behind a token."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json

from orchestrator import __version__
from orchestrator.contract.durations import format_duration
from orchestrator.runtime.readiness import readiness
from orchestrator.runtime.slicing import run_sliced

bp = Blueprint("health")


@bp.get("/health")
async def health(request: Request) -> HTTPResponse:
    state = request.app.ctx.state
    uptime = time.time() - state.started_at
    unavailable = state.store.unavailable if state.store is not None else None
    cluster = request.app.ctx.cluster
    status = "shutting_down" if state.shutting_down else "storage_unavailable" if unavailable else None
    if status is None and cluster is not None:
        status = cluster.health()  # catching_up, bus_unavailable
    status = status or "healthy"
    body = {
        "status": status,
        "version": __version__,
        "uptime": format_duration(round(uptime)),
        "uptime_seconds": round(uptime, 3),
        "agents": sum((await run_sliced(state.agent_counts(state.clock()))).values()),
        "ingest_queue": state.ingest.backlog if state.ingest else 0,
    }
    if unavailable:
        body["reason"] = unavailable  # reports and registrations get 503 until a checkpoint succeeds again
    if cluster is not None:
        body["cluster"] = cluster.stats()
    return json(body, status=200 if status == "healthy" else 503)


@bp.get("/livez")
async def livez(request: Request) -> HTTPResponse:
    """Liveness: the event loop answers. Restart the server only when this fails."""
    return json({"status": "alive"})


@bp.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    """Readiness: 200 when the server should get traffic, else 503 with the reasons (starting, restoring,
    catching up, shutting down, unable to persist)."""
    reasons = readiness(request.app.ctx.state)
    if not reasons:
        return json({"status": "ready"})
    return json({"status": "not_ready", "reasons": reasons}, status=503)


@bp.get("/api/v1/ping")
async def ping(request: Request) -> HTTPResponse:
    return json({"message": "pong"})


@bp.get("/metrics")
async def metrics(request: Request) -> HTTPResponse:
    state = request.app.ctx.state
    counts = await run_sliced(state.agent_counts(state.clock()))
    for status, count in counts.items():
        state.metrics.agents.labels(status).set(count)
    return HTTPResponse(generate_latest(state.metrics.registry), content_type=CONTENT_TYPE_LATEST)
