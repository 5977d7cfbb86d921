"""Background cleanup: stale agents leave the topology for the archive, the archive expires, old
time-series slots are cleared.

An agent is stale when the server has not seen it (heartbeat or report, by the server's clock) for more
than ``agents.stale_threshold``. A stale agent's topology contributions are removed and its registry
entry, time-series history and latest report are moved into ``state.archive``, where they wait
``cleanup.archive_window`` for the agent to come back (:func:`restore_agent`) before being deleted for
good. Archived agents are still listed, as ``stale`` (:func:`archived_agents_json`).

An archive record (also what :mod:`orchestrator.state.persistence` stores)::

    {"agent": Agent.to_state(), "archived_at": float, "timeseries": bytes | None,
     "latest_received_at": float | None, "latest_report": bytes | None}   # zlib, as in LatestReport

The sweep works in batches of at most ``cleanup.batch_size`` agents and at most ~10 ms, and yields to the
loop between batches.
Each agent is archived or deleted in one synchronous step, so a sweep cancelled between batches (at
shutdown) leaves every agent either fully moved or untouched.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import structlog

from orchestrator.contract.times import format_rfc3339
from orchestrator.state import LatestReport
from orchestrator.state.agents import Agent
from orchestrator.state.timeseries import TimeSeriesStore

log = structlog.get_logger("orchestrator.state.cleanup")

# Longest stretch of sweeping before yielding to requests, whatever the batch size.
SWEEP_BUDGET_SECONDS = 0.010


async def run_cleanup(state) -> None:
    """Sweep every ``storage.cleanup_interval`` until cancelled. The first sweep waits one interval, so
    agents restored at start-up get the time to check in again. A failed sweep is logged, not fatal."""
    interval = state.settings.storage.cleanup_interval
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep(state, time.time())
        except Exception as exc:
            log.error("cleanup_failed", error=repr(exc), exc_info=exc)


async def sweep(state, now: float) -> dict[str, Any]:
    """One cleanup pass at server time ``now``; returns (and stores in ``state.cleanup_stats``) its
    statistics."""
    started = time.perf_counter()
    settings = state.settings
    known = len(state.registry)
    threshold = settings.agents.stale_threshold
    stale = [a.agent_id for a in state.registry.all() if now - a.last_seen > threshold]
    archived = await _in_batches(state, stale, lambda agent_id: archive_agent(state, agent_id, now))
    state.metrics.cleanup_removed.labels("archived").inc(archived)

    window = settings.cleanup.archive_window
    expired = [agent_id for agent_id, record in state.archive.items() if now - record["archived_at"] > window]
    deleted = await _in_batches(state, expired, lambda agent_id: delete_archived(state, agent_id))
    state.metrics.cleanup_removed.labels("deleted").inc(deleted)

    purged = state.timeseries.purge_expired(now)
    state.metrics.cleanup_purged_points.inc(purged)

    duration = time.perf_counter() - started
    ratio = archived / known if known else 0.0
    alert = ratio > settings.cleanup.stale_alert_ratio
    stats = {
        "last_run": format_rfc3339(now),
        "duration_ms": round(duration * 1000, 2),
        "known": known,
        "stale": archived,
        "archived": archived,
        "deleted": deleted,
        "purged_points": purged,
        "archive_size": len(state.archive),
        "stale_ratio": round(ratio, 4),
        "stale_ratio_alert": alert,
    }
    _record(state, stats, duration, alert)
    return stats


def _record(state, stats: dict, duration: float, alert: bool) -> None:
    metrics = state.metrics
    metrics.cleanup_runs.inc()
    metrics.cleanup_seconds.observe(duration)
    metrics.cleanup_stale_agents.set(stats["stale"])
    metrics.cleanup_stale_ratio_alert.set(1 if alert else 0)
    state.cleanup_stats = stats
    log.info("cleanup_sweep", **stats)
    if alert:
        log.warning(
            "cleanup_stale_ratio_alert",
            stale=stats["stale"],
            known=stats["known"],
            stale_ratio=stats["stale_ratio"],
            threshold=state.settings.cleanup.stale_alert_ratio,
        )


async def _in_batches(state, agent_ids: list[str], step) -> int:
    """Apply ``step`` to each id, yielding to the loop after ``cleanup.batch_size`` ids or
    :data:`SWEEP_BUDGET_SECONDS`, whichever comes first; count the steps that acted.

    The time budget matters: removing an agent from a big topology costs milliseconds (its connections
    are resolved again), so 500 agents in one go would stall the loop for seconds.
    """
    size = state.settings.cleanup.batch_size
    done = 0
    pending = deque(agent_ids)
    while pending:
        # A batch holds the topology lock: a publish in slices never reads the topology mid-batch.
        async with state.topology_lock:
            started = time.perf_counter()
            for _ in range(size):  # at least one step per batch, whatever the budget
                done += bool(step(pending.popleft()))
                if not pending or time.perf_counter() - started >= SWEEP_BUDGET_SECONDS:
                    break
        if pending:
            await asyncio.sleep(0)
    return done


def archive_agent(state, agent_id: str, now: float) -> bool:
    """Move a stale agent out of the live state into the archive. False when it is gone or was seen
    again (a heartbeat may arrive while the sweep yields)."""
    agent = state.registry.get(agent_id)
    if agent is None or now - agent.last_seen <= state.settings.agents.stale_threshold:
        return False
    state.registry.remove(agent_id)
    state.topology.remove_agent(agent_id)
    latest = state.latest.pop(agent_id, None)
    state.archive[agent_id] = {
        "agent": agent.to_state(),
        "archived_at": now,
        "timeseries": state.timeseries.delete_agent(agent_id),
        "latest_received_at": latest.received_at if latest is not None else None,
        "latest_report": latest.compressed if latest is not None else None,
    }
    state.dirty_agents.add(agent_id)
    return True


def delete_archived(state, agent_id: str) -> bool:
    if state.archive.pop(agent_id, None) is None:
        return False
    state.dirty_agents.add(agent_id)
    return True


def restore_agent(state, agent_id: str) -> bool:
    """Bring an archived agent back (registry entry with its counters, time-series history, latest
    report). Call before touching the registry for an agent that registers, heartbeats or reports.

    :return: whether the agent was in the archive.
    """
    record = state.archive.pop(agent_id, None)
    if record is None:
        return False
    archived = Agent(**record["agent"])
    live = state.registry.get(agent_id)
    if live is None:
        state.registry.restore(archived)
    else:  # re-created meanwhile: keep the live entry, continue the archived one's history
        live.registered_at = min(live.registered_at, archived.registered_at)
        live.reports_received += archived.reports_received
    series = record.get("timeseries")
    if series is not None and not state.timeseries.has_agent(agent_id):
        try:
            state.timeseries.import_agent(agent_id, series)
        except ValueError as exc:  # e.g. archived under another resolution: the history is lost, not the agent
            log.warning("archived_series_dropped", agent_id=agent_id, error=repr(exc))
    if record.get("latest_report") is not None and agent_id not in state.latest:
        state.latest[agent_id] = LatestReport(record["latest_received_at"], record["latest_report"])
    state.dirty_agents.add(agent_id)
    log.info("agent_restored", agent_id=agent_id, archived_at=format_rfc3339(record["archived_at"]))
    return True


def agent_counts(state, now: float) -> dict[str, int]:
    """Known agents by status, the archived ones (still listed) among the stale."""
    counts = state.registry.count_by_status(now, state.settings.agents.stale_threshold)
    counts["stale"] += sum(1 for agent_id in state.archive if agent_id not in state.registry)
    return counts


def archived_timeseries(state, agent_id: str) -> TimeSeriesStore | None:
    """An archived agent's retained history, as a store of its own to query (None when there is none)."""
    record = state.archive.get(agent_id)
    if record is None or record.get("timeseries") is None:
        return None
    storage = state.settings.storage
    store = TimeSeriesStore(storage.max_data_age, storage.resolution)
    try:
        store.import_agent(agent_id, record["timeseries"])
    except ValueError:  # archived under another resolution: restore_agent drops it too
        return None
    return store


def archived_agents_json(state, now: float) -> list[dict]:
    """Archived agents in the contract's ``<agent>`` shape, status ``stale``, sorted by id."""
    threshold = state.settings.agents.stale_threshold
    return [
        _stale_json(state.archive[agent_id]["agent"], now, threshold)
        for agent_id in sorted(state.archive)
        if agent_id not in state.registry
    ]


def _stale_json(record: dict, now: float, threshold: float) -> dict:
    body = Agent(**record).to_json(now, threshold)
    body["status"] = "stale"
    return body
