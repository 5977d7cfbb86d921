"""The server's state assembled with its plugins, ingest queue and hub: what an app serves, usable without
HTTP (tests, benchmarks, tools)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from orchestrator.api.hub import Hub
from orchestrator.pipeline.host import Hooks, configure_plugins, get_plugin_manager
from orchestrator.pipeline.ingest import Ingest
from orchestrator.runtime.metrics import create_metrics
from orchestrator.settings import Settings
from orchestrator.state import State
from orchestrator.state.conflicts import ConflictLog


def build_state(settings: Settings, extra_plugins: Iterable[tuple[str, Any]] = ()) -> State:
    """The server's state with its plugins loaded, ingest queue and hub: what an app serves, usable without
    HTTP (tests, benchmarks, tools)."""
    pm = get_plugin_manager(settings, extra_plugins)
    state = State(settings=settings, metrics=create_metrics(), plugins=pm)
    state.sections = configure_plugins(pm, settings)
    state.hooks = Hooks(pm, settings.pipeline.order, state.metrics)
    state.ingest = Ingest(state)
    state.hub = Hub(state)
    state.topology.on_conflict = ConflictLog(state.metrics)
    return state
