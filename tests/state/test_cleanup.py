"""Background cleanup: stale agents to the archive and back, archive expiry, the stale-ratio alert,
time-series purge, cancellation mid-sweep, metrics and stats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx
import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from orchestrator.contract.models import Report
from orchestrator.contract.times import format_rfc3339
from orchestrator.runtime.build import build_state
from orchestrator.runtime.slicing import run_steps
from orchestrator.settings import Settings
from orchestrator.state import State, cleanup
from orchestrator.state.cleanup import run_cleanup, sweep
from tests.support import make_settings, post_report, report, wait_for

T0 = time.time()  # reports are dated near the real clock: the time-series sink keeps only recent buckets


def make_state(tmp_path, stale_threshold="1s", **cleanup) -> State:
    settings = Settings.model_validate(
        {
            "storage": {"data_dir": str(tmp_path)},
            "agents": {"stale_threshold": stale_threshold},
            "cleanup": {"archive_window": "1h", **cleanup},
        }
    )
    return build_state(settings)


def apply_report(state: State, agent_id: str, seen_at: float, ts: float = T0) -> None:
    """An accepted report: the handler's registry update at ``seen_at`` (server clock), then the worker."""
    hostname = agent_id.replace("agent", "host")
    body = {
        "agent_id": agent_id,
        "hostname": hostname,
        "timestamp": format_rfc3339(ts),
        "host_info": {"cpu_percent": 12.5, "memory_used": 1000},
        "processes_info": {"processes": [{"pid": 1, "name": "init"}, {"pid": 2, "name": "sshd"}]},
    }
    state.ingest.submit(Report.model_validate(body), orjson.dumps(body), seen_at)
    state.record_report(agent_id, hostname, seen_at)
    state.ingest.apply(state.ingest.queue.get_nowait())


@contextlib.contextmanager
def capture_info_logs():
    """capture_logs, with info events too whatever level the test session's logging filters at."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**saved)


def sample(state: State, name: str, **labels) -> float | None:
    return state.metrics.registry.get_sample_value(name, labels or None)


def fully_live(state: State, agent_id: str) -> bool:
    return (
        agent_id in state.registry
        and agent_id in state.topology.agents()
        and state.timeseries.has_agent(agent_id)
        and agent_id in state.latest
        and agent_id not in state.archive
    )


def fully_archived(state: State, agent_id: str) -> bool:
    return (
        agent_id in state.archive
        and agent_id not in state.registry
        and agent_id not in state.topology.agents()
        and not state.timeseries.has_agent(agent_id)
        and agent_id not in state.latest
    )


async def test_stale_agents_leave_the_topology_and_go_to_the_archive(tmp_path):
    state = make_state(tmp_path)
    apply_report(state, "agent-old", seen_at=T0 - 5)
    apply_report(state, "agent-new", seen_at=T0)
    state.topology.publish(T0)
    assert "host:host-old" in state.topology.snapshot()["nodes"]

    stats = await sweep(state, now=T0 + 0.5)

    assert stats["stale"] == stats["archived"] == 1
    assert fully_archived(state, "agent-old") and fully_live(state, "agent-new")
    record = state.archive["agent-old"]
    assert record.archived_at == T0 + 0.5 and record.agent.reports_received == 1
    assert record.timeseries and record.latest
    assert "agent-old" in state.dirty_agents  # persistence moves its rows
    state.topology.publish(T0 + 0.5)
    nodes = state.topology.snapshot()["nodes"]
    assert "host:host-old" not in nodes and "process:host-old:1" not in nodes and "host:host-new" in nodes


async def test_archived_agents_are_listed_as_stale_in_the_agent_shape(tmp_path):
    state = make_state(tmp_path)
    apply_report(state, "agent-1", seen_at=T0 - 5)
    await sweep(state, now=T0)

    listed = state.agents_json(T0)

    assert [a["agent_id"] for a in listed] == ["agent-1"]
    assert listed[0]["status"] == "stale" and listed[0]["reports_received"] == 1
    assert set(listed[0]) == {
        "agent_id",
        "hostname",
        "metadata",
        "registered_at",
        "last_seen",
        "last_report_at",
        "reports_received",
        "status",
    }


async def test_agent_that_comes_back_is_restored_with_its_history(tmp_path):
    state = make_state(tmp_path)
    apply_report(state, "agent-1", seen_at=T0 - 5, ts=T0 - 20)
    points = state.timeseries.get_recent_points("agent-1")
    await sweep(state, now=T0)
    state.dirty_agents.clear()

    assert state.restore_archived("agent-1") is True
    apply_report(state, "agent-1", seen_at=T0 + 1, ts=T0)

    assert fully_live(state, "agent-1") and not [a for a in state.agents_json(T0 + 1) if a["status"] == "stale"]
    assert state.registry.get("agent-1").reports_received == 2  # counting continues
    history = state.timeseries.get_recent_points("agent-1")
    assert history[0] == points[0] and len(history) == 2
    assert "agent-1" in state.dirty_agents
    assert state.restore_archived("agent-1") is False  # nothing archived any more


async def test_restore_merges_into_an_agent_recreated_meanwhile(tmp_path):
    state = make_state(tmp_path)
    apply_report(state, "agent-1", seen_at=T0 - 5)
    await sweep(state, now=T0)
    state.registry.record_report("agent-1", "host-1", T0 + 1)  # re-created around the archive (e.g. a restored file)

    assert state.restore_archived("agent-1")
    assert state.registry.get("agent-1").reports_received == 2
    assert state.registry.get("agent-1").registered_at == T0 - 5


async def test_archive_expiry_deletes_for_good(tmp_path):
    state = make_state(tmp_path)
    apply_report(state, "agent-1", seen_at=T0 - 5)
    await sweep(state, now=T0)
    state.dirty_agents.clear()

    kept = await sweep(state, now=T0 + 3599)
    gone = await sweep(state, now=T0 + 3601)

    assert kept["deleted"] == 0 and gone["deleted"] == 1 and gone["archive_size"] == 0
    assert "agent-1" not in state.archive and "agent-1" in state.dirty_agents
    assert state.restore_archived("agent-1") is False
    assert sample(state, "app_cleanup_removed_total", stage="deleted") == 1


async def test_alert_fires_when_the_stale_share_passes_the_ratio(tmp_path):
    state = make_state(tmp_path, stale_alert_ratio=0.5)
    for i in range(3):
        apply_report(state, f"agent-old-{i}", seen_at=T0 - 5)
    apply_report(state, "agent-new", seen_at=T0)

    with capture_logs() as logs:
        stats = await sweep(state, now=T0)

    assert stats["stale_ratio"] == 0.75 and stats["stale_ratio_alert"] is True
    assert sample(state, "app_cleanup_stale_ratio_alert") == 1
    warning = next(e for e in logs if e["event"] == "cleanup_stale_ratio_alert")
    assert warning["log_level"] == "warning" and warning["stale"] == 3 and warning["known"] == 4

    await sweep(state, now=T0 + 0.5)
    assert sample(state, "app_cleanup_stale_ratio_alert") == 0


async def test_share_at_the_ratio_does_not_alert(tmp_path):
    state = make_state(tmp_path, stale_alert_ratio=0.5)
    apply_report(state, "agent-old", seen_at=T0 - 5)
    apply_report(state, "agent-new", seen_at=T0)
    assert (await sweep(state, now=T0))["stale_ratio_alert"] is False
    assert sample(state, "app_cleanup_stale_ratio_alert") == 0


async def test_expired_time_series_slots_are_purged(tmp_path):
    state = make_state(tmp_path, stale_threshold="24h")
    apply_report(state, "agent-1", seen_at=T0, ts=T0 - 30)
    apply_report(state, "agent-1", seen_at=T0, ts=T0)
    later = T0 + state.settings.storage.max_data_age + 60

    stats = await sweep(state, now=later)

    assert stats["purged_points"] == 2 and stats["stale"] == 0
    assert state.timeseries.get_recent_points("agent-1", now=later) == []
    assert sample(state, "app_cleanup_purged_points_total") == 2


async def test_cancellation_mid_sweep_leaves_each_agent_live_or_archived(tmp_path):
    state = make_state(tmp_path, batch_size=1)
    agents = [f"agent-{i}" for i in range(10)]
    for agent_id in agents:
        apply_report(state, agent_id, seen_at=T0 - 5)

    task = asyncio.create_task(sweep(state, now=T0))
    for _ in range(4):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    archived = [a for a in agents if fully_archived(state, a)]
    live = [a for a in agents if fully_live(state, a)]
    assert archived and live and len(archived) + len(live) == len(agents)
    assert set(archived) <= state.dirty_agents
    finished = await sweep(state, now=T0)  # the next sweep finishes the job
    assert finished["archived"] == len(live) and all(fully_archived(state, a) for a in agents)


async def test_sweep_yields_between_batches(tmp_path):
    state = make_state(tmp_path, batch_size=2)
    for i in range(10):
        apply_report(state, f"agent-{i}", seen_at=T0 - 5)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    await sweep(state, now=T0)
    ticking.cancel()
    assert ticks >= 5


async def test_metrics_and_stats_are_updated(tmp_path):
    state = make_state(tmp_path)
    apply_report(state, "agent-old", seen_at=T0 - 5)
    apply_report(state, "agent-new", seen_at=T0)

    with capture_info_logs() as logs:
        await sweep(state, now=T0)

    assert sample(state, "app_cleanup_runs_total") == 1
    assert sample(state, "app_cleanup_duration_seconds_count") == 1
    assert sample(state, "app_cleanup_stale_agents") == 1
    assert sample(state, "app_cleanup_removed_total", stage="archived") == 1
    stats = state.cleanup_stats
    assert stats["last_run"] == format_rfc3339(T0) and stats["duration_ms"] >= 0
    assert (stats["stale"], stats["archived"], stats["deleted"], stats["archive_size"]) == (1, 1, 0, 1)
    event = next(e for e in logs if e["event"] == "cleanup_sweep")
    assert event["log_level"] == "info" and event["archived"] == 1 and "duration_ms" in event


async def test_run_cleanup_sweeps_every_interval_and_stops_when_cancelled(tmp_path):
    state = make_state(tmp_path)
    state.settings.storage.cleanup_interval = 0.05
    apply_report(state, "agent-1", seen_at=time.time() - 5)

    task = asyncio.create_task(run_cleanup(state))
    deadline = time.monotonic() + 10  # a bounded wait for two sweeps (a fixed sleep failed on a loaded machine)
    while sample(state, "app_cleanup_runs_total") < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert sample(state, "app_cleanup_runs_total") >= 2
    assert "agent-1" in state.archive


async def test_run_cleanup_survives_a_failing_sweep(tmp_path, monkeypatch):
    state = make_state(tmp_path)
    state.settings.storage.cleanup_interval = 0.05

    def broken(now=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(state.timeseries, "purge_expired", broken)
    with capture_logs() as logs:
        task = asyncio.create_task(run_cleanup(state))
        deadline = time.monotonic() + 10  # a bounded wait for two failed sweeps (not a sleep: CI is loaded)
        while sum(e["event"] == "cleanup_failed" for e in logs) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sum(e["event"] == "cleanup_failed" for e in logs) >= 2


async def test_sweep_also_yields_when_a_batch_runs_over_its_time_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(cleanup, "SWEEP_BUDGET_SECONDS", 0.0)
    state = make_state(tmp_path, batch_size=1000)
    for i in range(6):
        apply_report(state, f"agent-{i}", seen_at=T0 - 5)
    turns = []

    async def ticker():
        while True:
            turns.append(len(state.archive))
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    await sweep(state, now=T0)
    ticking.cancel()
    assert len(set(turns)) >= 5  # the ticker ran between single agents despite the batch size


async def test_archived_agents_count_as_stale_and_keep_their_time_series(tmp_path):
    state = make_state(tmp_path)
    apply_report(state, "agent-1", seen_at=T0 - 5, ts=T0 - 20)
    apply_report(state, "agent-2", seen_at=T0, ts=T0)
    points = state.timeseries.get_recent_points("agent-1", 3600)
    await sweep(state, now=T0)

    assert fully_archived(state, "agent-1")
    assert run_steps(state.agent_counts(T0)) == {"online": 1, "stale": 1}
    archived = state.timeseries_of("agent-1")
    assert archived is not None and archived.get_recent_points("agent-1", 3600) == points != []
    assert state.timeseries_of("agent-2") is state.timeseries  # live: not in the archive
    assert state.timeseries_of("agent-unknown") is None


def test_a_stale_agent_is_counted_and_its_history_still_answered_over_http(start_server):
    server = start_server(make_settings(agents={"stale_threshold": "1s"}, storage={"cleanup_interval": "200ms"}))
    with httpx.Client(base_url=server.url) as http:
        post_report(http, report("agent-1", host_info={"cpu_percent": 12.5}))
        wait_for(lambda: http.get("/api/v1/query/agents/agent-1/timeseries").json()["count"] == 1)
        wait_for(lambda: http.get("/api/v1/query/stats").json()["agents_by_status"]["stale"] == 1, 10)
        assert http.get("/api/v1/query/stats").json()["agents"] == 1
        assert http.get("/health").json()["agents"] == 1
        assert 'app_agents_total{status="stale"} 1.0' in http.get("/metrics").text
        series = http.get("/api/v1/query/agents/agent-1/timeseries").json()
        assert series["count"] == 1 and series["points"][0]["cpu_percent"] == 12.5
