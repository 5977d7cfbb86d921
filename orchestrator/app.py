"""The app factory. Nothing happens at import time: ``create_app(settings)`` builds everything."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from sanic import Sanic

from orchestrator.api import agents, health, history, query, reports
from orchestrator.api.connections import ConnectionGuard
from orchestrator.api.errors import handle_exception
from orchestrator.api.http import setup_http
from orchestrator.api.openapi import setup_openapi
from orchestrator.api.page import setup_page
from orchestrator.api.ws import setup_ws
from orchestrator.runtime.build import build_state
from orchestrator.runtime.lifecycle import Orchestrator, clustered, configure_sanic, setup_lifecycle
from orchestrator.settings import Settings

_app_numbers = itertools.count(1)


def create_app(
    settings: Settings | None = None, extra_plugins: Iterable[tuple[str, Any]] = (), name: str | None = None
) -> Sanic:
    """A ready-to-serve app: plugins loaded, state built, routes and background work registered.

    ``extra_plugins`` are ``(name, plugin)`` pairs registered after the entry-point plugins (tests and
    embedders use it; third parties use the ``orchestrator`` entry-point group).
    """
    settings = settings or Settings()
    app = Orchestrator(name or f"orchestrator_{next(_app_numbers)}", configure_logging=False)
    configure_sanic(app, settings)
    state = build_state(settings, extra_plugins)
    app.ctx.settings = settings
    app.ctx.state = state
    app.ctx.connections = ConnectionGuard(settings.server, state.metrics)  # read by api/protocol.py
    app.ctx.tasks = []
    app.ctx.snapshots = state.hub.encoder  # whole views, encoded in slices with each item's JSON kept

    app.error_handler.add(Exception, handle_exception)
    setup_http(app)
    for bp in (health.bp, agents.bp, reports.bp, query.bp, history.bp):
        app.blueprint(bp)
    setup_ws(app)
    setup_page(app)
    setup_openapi(app)
    setup_lifecycle(app)
    app.ctx.cluster = None
    if clustered(settings):
        from orchestrator.cluster import setup_cluster  # NATS is imported only in cluster mode

        setup_cluster(app)
    return app
