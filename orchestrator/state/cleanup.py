"""Background cleanup: stale agents leave the topology for the archive, the archive expires, old
time-series slots are cleared, topology history older than its retention is pruned.

An agent is stale when the server has not seen it (heartbeat or report, by the server's clock) for more
than ``agents.stale_threshold``. A stale agent's topology contributions are removed and its registry
entry, time-series history and latest report are moved into ``state.archive`` as an
:class:`~orchestrator.state.archive.ArchivedAgent` (:meth:`State.archive_agent`), where they wait
``cleanup.archive_window`` for the agent to come back (:meth:`State.restore_archived`) before being deleted
for good. Archived agents are still listed, as ``stale`` (:meth:`State.agents_json`).

The sweep works in batches of at most ``cleanup.batch_size`` agents and at most ~10 ms, and yields to the
loop between batches.
Each agent is archived or deleted in one synchronous step, so a sweep cancelled between batches (at
shutdown) leaves every agent either fully moved or untouched.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import structlog

from orchestrator.contract.times import format_rfc3339
from orchestrator.runtime.slicing import TimeSlice
from orchestrator.state import CleanupStats, State

log = structlog.get_logger("orchestrator.state.cleanup")

# Longest stretch of sweeping before yielding to requests, whatever the batch size.
SWEEP_BUDGET_SECONDS = 0.010


async def run_cleanup(state: State) -> None:
    """Sweep every ``storage.cleanup_interval`` until cancelled. The first sweep waits one interval, so
    agents restored at start-up get the time to check in again. A failed sweep is logged, not fatal."""
    interval = state.settings.storage.cleanup_interval
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep(state, time.time())
        except Exception as exc:
            log.error("cleanup_failed", error=repr(exc), exc_info=exc)


async def sweep(state: State, now: float) -> CleanupStats:
    """One cleanup pass at server time ``now``; returns (and stores in ``state.cleanup_stats``) its
    statistics."""
    started = time.perf_counter()
    settings = state.settings
    known = len(state.registry)
    threshold = settings.agents.stale_threshold
    stale = [a.agent_id for a in state.registry.all() if now - a.last_seen > threshold]
    archived = await _in_batches(state, stale, lambda agent_id: state.archive_agent(agent_id, now))
    state.metrics.cleanup_removed.labels("archived").inc(archived)

    window = settings.cleanup.archive_window
    expired = [agent_id for agent_id, archived in state.archive.items() if now - archived.archived_at > window]
    deleted = await _in_batches(state, expired, state.delete_archived)
    state.metrics.cleanup_removed.labels("deleted").inc(deleted)

    purged = state.timeseries.purge_expired(now)
    state.metrics.cleanup_purged_points.inc(purged)
    # By the publications' own clock, not ``now``: replicas fed the same publications prune alike.
    history_pruned = await state.history.prune() if state.history is not None else 0

    duration = time.perf_counter() - started
    ratio = archived / known if known else 0.0
    alert = ratio > settings.cleanup.stale_alert_ratio
    stats: CleanupStats = {
        "last_run": format_rfc3339(now),
        "duration_ms": round(duration * 1000, 2),
        "known": known,
        "stale": archived,
        "archived": archived,
        "deleted": deleted,
        "purged_points": purged,
        "history_pruned_publications": history_pruned,
        "archive_size": len(state.archive),
        "stale_ratio": round(ratio, 4),
        "stale_ratio_alert": alert,
    }
    _record(state, stats, duration, alert)
    return stats


def _record(state: State, stats: CleanupStats, duration: float, alert: bool) -> None:
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


async def _in_batches(state: State, agent_ids: list[str], step: Callable[[str], bool]) -> int:
    """Apply ``step`` to each id, yielding to the loop after ``cleanup.batch_size`` ids or
    :data:`SWEEP_BUDGET_SECONDS`, whichever comes first; count the steps that acted.

    The time budget matters: removing an agent from a big topology costs milliseconds (its connections
    are resolved again), so 500 agents in one go would stall the loop for seconds.
    """
    size = state.settings.cleanup.batch_size
    done = 0
    pending = deque(agent_ids)
    stretch = TimeSlice(SWEEP_BUDGET_SECONDS)
    while pending:
        # A batch holds the topology lock: a publish in slices never reads the topology mid-batch.
        async with state.topology_lock:
            stretch.restart()
            for _ in range(size):  # at least one step per batch, whatever the budget
                done += bool(step(pending.popleft()))
                if not pending or stretch.due():
                    break
        if pending:
            await stretch.pause()
    return done
