"""Liveness, ping and Prometheus metrics: always open, never behind a token."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json

from orchestrator import __version__
from orchestrator.contract.durations import format_duration

bp = Blueprint("health")


@bp.get("/health")
async def health(request: Request) -> HTTPResponse:
    state = request.app.ctx.state
    uptime = time.time() - state.started_at
    body = {
        "status": "shutting_down" if state.shutting_down else "healthy",
        "version": __version__,
        "uptime": format_duration(round(uptime)),
        "uptime_seconds": round(uptime, 3),
        "agents": sum(state.agent_counts(time.time()).values()),
        "ingest_queue": state.ingest.backlog if state.ingest else 0,
    }
    return json(body, status=503 if state.shutting_down else 200)


@bp.get("/api/v1/ping")
async def ping(request: Request) -> HTTPResponse:
    return json({"message": "pong"})


@bp.get("/metrics")
async def metrics(request: Request) -> HTTPResponse:
    state = request.app.ctx.state
    counts = state.agent_counts(time.time())
    for status, count in counts.items():
        state.metrics.agents.labels(status).set(count)
    return HTTPResponse(generate_latest(state.metrics.registry), content_type=CONTENT_TYPE_LATEST)
