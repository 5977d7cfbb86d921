"""The server's state, in one place with one owner: the app's event loop.

Nothing here knows HTTP, and the package imports neither sanic nor pluggy. Request handlers read the state
and change it only through the named operations of :class:`State` (:meth:`State.register_agent`,
:meth:`State.heartbeat`, :meth:`State.record_report`, :meth:`State.next_order`); besides those, the ingest
worker (mergers and sinks), the publisher, the cleanup sweep and the restore at start-up write it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import structlog

from orchestrator.contract.times import format_rfc3339
from orchestrator.runtime.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.state.agents import COUNT_STEP, Agent, AgentRegistry
from orchestrator.state.archive import ArchivedAgent
from orchestrator.state.latest import LatestReport
from orchestrator.state.timeseries import TimeSeriesStore
from orchestrator.topology import Topology

if TYPE_CHECKING:
    from pluggy import PluginManager
    from pydantic import BaseModel

    from orchestrator.api.hub import Hub
    from orchestrator.pipeline.host import Hooks
    from orchestrator.pipeline.ingest import Ingest
    from orchestrator.state.history import History
    from orchestrator.state.persistence import Store

__all__ = ["ArchivedAgent", "LatestReport", "State"]
log = structlog.get_logger("orchestrator.state")


class CleanupStats(TypedDict, total=False):
    """A cleanup sweep's statistics, as ``/api/v1/query/stats`` shows them under ``cleanup`` (empty before the
    first sweep)."""

    last_run: str
    duration_ms: float
    known: int
    stale: int
    archived: int
    deleted: int
    purged_points: int
    history_pruned_publications: int
    archive_size: int
    stale_ratio: float
    stale_ratio_alert: bool


@dataclass(eq=False)
class State:
    """Everything the server knows. Built by :func:`orchestrator.runtime.build.build_state`, which also sets
    :attr:`hooks`, :attr:`ingest` and :attr:`hub` (they need the state to exist first)."""

    settings: Settings
    metrics: Metrics
    plugins: PluginManager  # the loaded plugins; hooks are called through ``hooks``
    # Sections plugins claimed (``register_sections``): name → the model that validates it.
    sections: dict[str, type[BaseModel]] = field(default_factory=dict)
    registry: AgentRegistry = field(default_factory=AgentRegistry)
    topology: Topology = field(default_factory=Topology)
    timeseries: TimeSeriesStore = field(init=False)
    latest: dict[str, LatestReport] = field(default_factory=dict)
    # Agents removed by cleanup, restorable while the archive window lasts.
    archive: dict[str, ArchivedAgent] = field(default_factory=dict)
    # Agents whose state changed since the last checkpoint.
    dirty_agents: set[str] = field(default_factory=set)
    order: int = 0  # arrival counter of accepted reports; breaks timestamp ties (later received wins)
    reports_received: int = 0
    started_at: float = field(default_factory=time.time)
    shutting_down: bool = False
    # Why the server should not get traffic yet (reason code → message); see orchestrator/runtime/readiness.py.
    not_ready: dict[str, str] = field(default_factory=lambda: {"starting": "the server is starting"})
    store: Store | None = None  # when persistence is on, from start-up
    history: History | None = None  # when history is on, from start-up
    cleanup_stats: CleanupStats = field(default_factory=lambda: CleanupStats())
    # Held by whoever changes the live topology across an await (the ingest worker's slices, a sweep's
    # batches) or reads it across one (the sliced publish), so none of them sees the others half-done.
    topology_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    hooks: Hooks = field(init=False)
    # "Now" on the state side: the wall clock, or in cluster mode the log's clock (orchestrator.cluster),
    # so replicas that applied the same messages answer the same statuses and time-series windows.
    clock: Callable[[], float] = time.time
    ingest: Ingest = field(init=False)
    hub: Hub = field(init=False)

    def __post_init__(self) -> None:
        storage = self.settings.storage
        self.timeseries = TimeSeriesStore(max_data_age=storage.max_data_age, resolution=storage.resolution)

    # -- what the request side does ------------------------------------------------------------------------

    def register_agent(self, agent_id: str, hostname: str, metadata: dict[str, Any], now: float) -> tuple[Agent, bool]:
        """``/register`` at server time ``now``: register or re-announce (an archived agent comes back first).

        :return: the agent and whether it is new.
        """
        self.restore_archived(agent_id)
        agent, created = self.registry.register(agent_id, hostname, metadata, now)
        self.dirty_agents.add(agent_id)
        return agent, created

    def admits(self, agent_id: str) -> bool:
        """Whether a write from ``agent_id`` may be taken: a known agent always, a new one while fewer than
        ``agents.max_agents`` are known (registered and archived)."""
        if self.is_known(agent_id):
            return True
        return len(self.registry) + len(self.archive) < self.settings.agents.max_agents

    def heartbeat(self, agent_id: str, now: float) -> Agent | None:
        """A heartbeat at server time ``now``; ``None`` when the agent is neither registered nor archived."""
        self.restore_archived(agent_id)
        agent = self.registry.heartbeat(agent_id, now)
        if agent is not None:
            self.dirty_agents.add(agent_id)
        return agent

    def next_order(self) -> int:
        """Number a report being accepted: the arrival counter that breaks timestamp ties."""
        self.order += 1
        return self.order

    def record_report(self, agent_id: str, hostname: str, now: float) -> Agent:
        """A report was accepted (202) at server time ``now``: the agent is seen (registered implicitly on
        its first report, restored from the archive) and the report counted. The ingest worker applies it."""
        self.restore_archived(agent_id)
        agent = self.registry.record_report(agent_id, hostname, now)
        self.reports_received += 1
        self.metrics.reports_received.inc()
        return agent

    # -- what the request side reads -------------------------------------------------------------------------

    def is_known(self, agent_id: str) -> bool:
        """Registered, or archived (stale) but still within the archive window."""
        return agent_id in self.registry or agent_id in self.archive

    def agents_json(self, now: float) -> list[dict[str, Any]]:
        """Every known agent in the contract's ``<agent>`` shape: the live ones, then the archived (stale)."""
        threshold = self.settings.agents.stale_threshold
        return [agent.to_json(now, threshold) for agent in self.listed_agents()]

    def listed_agents(self) -> list[Agent | ArchivedAgent]:
        """What :meth:`agents_json` lists, in its order, each with ``to_json(now, stale_threshold)``: a list
        of its own, so a reader may encode it a slice at a time while agents come and go."""
        agents: list[Agent | ArchivedAgent] = list(self.registry.all())
        agents += [self.archive[agent_id] for agent_id in sorted(self.archive) if agent_id not in self.registry]
        return agents

    def agent_counts(self, now: float) -> Generator[None, None, dict[str, int]]:
        """Known agents by status, the archived ones (still listed) among the stale: in steps, for
        ``run_sliced`` (a request handler) or ``run_steps``."""
        counts = yield from self.registry.count_by_status(now, self.settings.agents.stale_threshold)
        for index, agent_id in enumerate(list(self.archive), 1):
            counts["stale"] += agent_id not in self.registry
            if not index % COUNT_STEP:
                yield
        return counts

    def latest_reports_bytes(self) -> Generator[None, None, int]:
        """The latest reports' compressed size, in steps."""
        total = 0
        for index, entry in enumerate(list(self.latest.values()), 1):
            total += len(entry.compressed)
            if not index % COUNT_STEP:
                yield
        return total

    def latest_report(self, agent_id: str) -> LatestReport | None:
        """The agent's newest report as submitted; a stale agent's last word comes from the archive."""
        entry = self.latest.get(agent_id)
        if entry is None and agent_id in self.archive:
            entry = self.archive[agent_id].latest
        return entry

    def timeseries_of(self, agent_id: str) -> TimeSeriesStore | None:
        """The store holding the agent's history: the live one, or for an archived agent a store of its own
        made from its retained history (``None`` when it has none)."""
        if self.timeseries.has_agent(agent_id):
            return self.timeseries
        archived = self.archive.get(agent_id)
        if archived is None or archived.timeseries is None:
            return None
        storage = self.settings.storage
        store = TimeSeriesStore(storage.max_data_age, storage.resolution)
        try:
            store.import_agent(agent_id, archived.timeseries)
        except ValueError:  # archived under another resolution: restore_archived drops it too
            return None
        return store

    # -- the archive (the cleanup sweep, and an archived agent that comes back) -----------------------------

    def archive_agent(self, agent_id: str, now: float) -> bool:
        """Move a stale agent out of the live state into the archive. False when it is gone or was seen
        again (a heartbeat may arrive while the sweep yields)."""
        agent = self.registry.get(agent_id)
        if agent is None or now - agent.last_seen <= self.settings.agents.stale_threshold:
            return False
        self.registry.remove(agent_id)
        self.topology.remove_agent(agent_id)
        self.archive[agent_id] = ArchivedAgent(
            agent, now, self.timeseries.delete_agent(agent_id), self.latest.pop(agent_id, None)
        )
        self.dirty_agents.add(agent_id)
        return True

    def delete_archived(self, agent_id: str) -> bool:
        """Forget an archived agent for good (its archive window is over); False when it is not archived."""
        if self.archive.pop(agent_id, None) is None:
            return False
        self.dirty_agents.add(agent_id)
        return True

    def restore_archived(self, agent_id: str) -> bool:
        """Bring an archived agent back: its registry entry with its counters, time-series history, latest
        report. Every operation that registers, heartbeats or reports for an agent does this first.

        :return: whether the agent was in the archive.
        """
        archived = self.archive.pop(agent_id, None)
        if archived is None:
            return False
        live = self.registry.get(agent_id)
        if live is None:
            self.registry.restore(archived.agent)
        else:  # re-created meanwhile: keep the live entry, continue the archived one's history
            live.registered_at = min(live.registered_at, archived.agent.registered_at)
            live.reports_received += archived.agent.reports_received
        if archived.timeseries is not None and not self.timeseries.has_agent(agent_id):
            try:
                self.timeseries.import_agent(agent_id, archived.timeseries)
            except ValueError as exc:  # e.g. archived under another resolution: the history is lost, not the agent
                log.warning("archived_series_dropped", agent_id=agent_id, error=repr(exc))
        if archived.latest is not None and agent_id not in self.latest:
            self.latest[agent_id] = archived.latest
        self.dirty_agents.add(agent_id)
        log.info("agent_restored", agent_id=agent_id, archived_at=format_rfc3339(archived.archived_at))
        return True
