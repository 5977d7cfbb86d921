"""Durable state: round trip through SQLite, incremental checkpoints, deletions, corrupt files, failures,
and a checkpoint that never stalls the event loop."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
import zlib

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from orchestrator.contract.models import Report
from orchestrator.contract.times import format_rfc3339
from orchestrator.probe.fleet import Fleet
from orchestrator.runtime.build import build_state
from orchestrator.settings import Settings
from orchestrator.state import State, persistence
from orchestrator.state.persistence import FILENAME, Store
from orchestrator.topology import EXTERNALS, LEVELS
from tests.support import post_report, report


def make_state(tmp_path, **sections) -> State:
    settings = Settings.model_validate({"storage": {"data_dir": str(tmp_path)}, **sections})
    return build_state(settings)


def report_body(agent_id: str, ts: float, processes: int = 5, cpu: float = 10.0) -> dict:
    hostname = agent_id.replace("agent", "host")
    return {
        "agent_id": agent_id,
        "hostname": hostname,
        "timestamp": format_rfc3339(ts),
        "host_info": {
            "cpu_percent": cpu,
            "memory_used": 1000,
            "net_rx_bytes": 10,
            "net_tx_bytes": 20,
            "ip_addresses": ["10.0.0.1"],
        },
        "processes_info": {"processes": [{"pid": 100 + i, "name": f"proc-{i}"} for i in range(processes)]},
        "network_info": {
            "connections": [
                {
                    "pid": 100,
                    "protocol": "tcp",
                    "local_ip": "10.0.0.1",
                    "local_port": 40000,
                    "remote_ip": "10.9.9.9",
                    "remote_port": 443,
                    "state": "ESTABLISHED",
                }
            ]
        },
    }


def apply_report(state: State, agent_id: str, now: float | None = None, **kwargs) -> None:
    """What the request handler and the ingest worker do for one accepted report."""
    now = time.time() if now is None else now
    body = report_body(agent_id, now, **kwargs)
    state.ingest.submit(Report.model_validate(body), orjson.dumps(body), now)
    state.record_report(agent_id, body["hostname"], now)
    state.ingest.apply(state.ingest.queue.get_nowait())


def stored_ids(path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute(f"SELECT agent_id FROM {table}")}


def snapshot_of(state: State) -> dict:
    return {
        "agents": {a.agent_id: a.to_state() for a in state.registry.all()},
        "latest": {k: (v.received_at, v.compressed) for k, v in state.latest.items()},
        "topology": {a: state.topology.export_agent(a) for a in state.topology.agents()},
        "timeseries": {a: state.timeseries.export_agent(a) for a in state.timeseries.get_all_agents()},
        "archive": state.archive,
        "order": state.order,
    }


def nodes_of(state: State) -> dict:
    # first_seen is not part of Topology.export_agent: a restored node is first seen at its newest report.
    return {
        node_id: {k: v for k, v in node.items() if k != "first_seen"}
        for node_id, node in state.topology.snapshot()["nodes"].items()
    }


@pytest.fixture
def store(tmp_path):
    store, problem = Store.open(tmp_path)
    assert problem is None
    yield store
    store.conn.close()


async def test_round_trip_restores_agents_reports_topology_series_archive_and_order(tmp_path, store):
    state = make_state(tmp_path)
    for agent_id in ("agent-1", "agent-2", "agent-3"):
        apply_report(state, agent_id)
    apply_report(state, "agent-1", cpu=55.5)
    assert state.archive_agent("agent-3", time.time() + 10_000)
    state.order += 7  # accepted reports still queued count too
    state.topology.publish(time.time())
    before = snapshot_of(state)

    result = await store.checkpoint(state)
    assert result.ok and result.written == 3 and not state.dirty_agents
    store.close()

    reopened, problem = Store.open(tmp_path)
    fresh = make_state(tmp_path)
    counts = reopened.restore(fresh)
    reopened.close()

    assert problem is None and counts["skipped"] == 0
    assert snapshot_of(fresh) == before
    assert fresh.archive["agent-3"].timeseries is not None
    # Published at restore: queries see the topology at once, not after the next report.
    assert nodes_of(fresh) == nodes_of(state) != {}
    assert nodes_of(fresh).keys() >= {"host:host-1", "process:host-2:100"}
    assert fresh.timeseries.get_recent_points("agent-1") == state.timeseries.get_recent_points("agent-1")


def apply_fleet_report(state: State, fleet: Fleet, host: int, now: float) -> None:
    body = fleet.report_bytes(host, now)
    state.ingest.submit(Report.model_validate_json(body), body, now + 0.5)
    state.record_report(fleet.agent_id(host), f"sim-host-{host}", now + 0.5)
    state.ingest.apply(state.ingest.queue.get_nowait())


def readers_view(state: State) -> dict:
    """What readers see of the topology, every level and a host's view, without the seq (numbered on)."""
    views = {}
    for level in LEVELS:
        for external in EXTERNALS:
            views[(level, external)] = orjson.loads(state.topology.snapshot_json(level, None, external))
        views[(level, "sim-host-2")] = orjson.loads(state.topology.snapshot_json(level, "sim-host-2"))
    for view in views.values():
        view.pop("seq")
    return views


async def test_a_fleet_restores_every_level_agent_and_series_as_it_was(tmp_path, store):
    fleet, now = Fleet(8, seed=2, processes=20, containers=3, connections=40), time.time()
    state = make_state(tmp_path)
    for host in range(8):
        apply_fleet_report(state, fleet, host, now)
    for host in (1, 4, 6):  # re-reports: first_seen kept, connections replaced
        apply_fleet_report(state, fleet, host, now + 15)
    state.topology.publish(now)
    before, views = snapshot_of(state), readers_view(state)
    assert (await store.checkpoint(state)).ok
    store.close()

    reopened, _problem = Store.open(tmp_path)
    fresh = make_state(tmp_path)
    counts = reopened.restore(fresh)
    reopened.close()
    assert counts["skipped"] == 0 and counts["topology"] == 8
    assert readers_view(fresh) == views
    assert snapshot_of(fresh) == before


async def test_a_topology_row_that_cannot_be_imported_is_skipped_and_the_rest_restored(tmp_path, store):
    state = make_state(tmp_path)
    for agent_id in ("agent-1", "agent-2"):
        apply_report(state, agent_id)
    await store.checkpoint(state)
    broken = zlib.compress(orjson.dumps({"agent_id": "agent-2", "sections": [{"section": "host_info"}]}))
    with store.conn:
        store.conn.execute("UPDATE topology SET contribution = ? WHERE agent_id = 'agent-2'", (broken,))

    fresh = make_state(tmp_path)
    with capture_logs() as logs:
        counts = store.restore(fresh)
    assert counts["skipped"] == 1 and counts["topology"] == 1 and counts["agents"] == 2
    assert fresh.topology.agents() == ["agent-1"]
    assert any(e["event"] == "restore_row_skipped" and e["agent_id"] == "agent-2" for e in logs)


async def test_seq_after_a_crash_is_past_every_seq_the_crashed_server_could_publish(tmp_path, store):
    state = make_state(tmp_path)
    state.store = store
    store.restore(state)  # reserves the first block of seq on disk
    apply_report(state, "agent-1")
    assert (await store.checkpoint(state)).ok
    # Then checkpoints stop (a crash is coming): the server publishes as long as it may.
    published = []
    for cpu in range(1, 1000):
        apply_report(state, "agent-1", cpu=float(cpu))
        if state.topology.publish(time.time()) is None:
            break  # past the reservation on disk: nothing more is published
        published.append(state.topology.seq)
    assert published and len(published) < 999
    store.conn.close()  # the crash: no final checkpoint

    fresh = make_state(tmp_path)
    reopened, _ = Store.open(tmp_path)
    reopened.restore(fresh)
    reopened.close()
    assert fresh.topology.seq > max(published)


async def test_a_file_without_a_reservation_resumes_past_its_seq_with_a_margin(tmp_path, store):
    state = make_state(tmp_path)
    apply_report(state, "agent-1")
    state.topology.publish(time.time())
    assert (await store.checkpoint(state)).ok
    saved = state.topology.seq
    store.conn.execute("DELETE FROM meta WHERE key = 'seq_reserved'")  # as written before reservations
    store.conn.commit()
    store.close()

    fresh = make_state(tmp_path)
    reopened, _ = Store.open(tmp_path)
    reopened.restore(fresh)
    reopened.close()
    assert fresh.topology.seq == saved + persistence.seq_margin(fresh.settings) + 1  # the restore publishes once


async def test_incremental_checkpoint_writes_only_dirty_agents(tmp_path, store):
    state = make_state(tmp_path)
    apply_report(state, "agent-1")
    apply_report(state, "agent-2")
    await store.checkpoint(state)

    state.registry.get("agent-2").hostname = "not-marked-dirty"
    apply_report(state, "agent-1", processes=9)
    result = await store.checkpoint(state)

    assert (result.written, result.deleted) == (1, 0)
    with sqlite3.connect(store.path) as conn:
        records = {k: orjson.loads(v) for k, v in conn.execute("SELECT agent_id, record FROM agents")}
    assert records["agent-2"]["hostname"] == "host-2"  # untouched: it was not dirty
    assert records["agent-1"]["reports_received"] == 2
    assert (await store.checkpoint(state)).written == 0  # nothing dirty, nothing written


async def test_rows_of_deleted_agents_are_removed(tmp_path, store):
    state = make_state(tmp_path)
    for agent_id in ("agent-1", "agent-2"):
        apply_report(state, agent_id)
    await store.checkpoint(state)

    state.archive_agent("agent-1", time.time() + 10_000)
    await store.checkpoint(state)
    assert stored_ids(store.path, "archive") == {"agent-1"}
    assert stored_ids(store.path, "agents") == stored_ids(store.path, "topology") == {"agent-2"}

    state.delete_archived("agent-1")
    result = await store.checkpoint(state)
    assert result.deleted == 1
    for table in ("agents", "latest", "topology", "timeseries", "archive"):
        assert "agent-1" not in stored_ids(store.path, table)


async def test_agent_removed_without_being_marked_dirty_still_loses_its_rows(tmp_path, store):
    state = make_state(tmp_path)
    apply_report(state, "agent-1")
    apply_report(state, "agent-2")
    await store.checkpoint(state)

    state.registry.remove("agent-2")
    state.topology.remove_agent("agent-2")
    state.timeseries.delete_agent("agent-2")
    del state.latest["agent-2"]
    assert not state.dirty_agents
    result = await store.checkpoint(state)

    assert result.deleted == 1
    for table in ("agents", "latest", "topology", "timeseries"):
        assert stored_ids(store.path, table) == {"agent-1"}


async def test_checkpoint_without_restore_never_deletes_what_is_stored(tmp_path, store):
    state = make_state(tmp_path)
    apply_report(state, "agent-1")
    await store.checkpoint(state)
    store.close()

    reopened, _ = Store.open(tmp_path)  # an app that forgot restore() must not wipe the file
    await reopened.checkpoint(make_state(tmp_path))
    reopened.close()
    assert stored_ids(tmp_path / FILENAME, "agents") == {"agent-1"}


def corrupt_files(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name)


def test_garbage_file_is_set_aside_and_the_store_starts_empty(tmp_path):
    (tmp_path / FILENAME).write_bytes(b"this is not a database, just garbage bytes " * 200)
    (tmp_path / (FILENAME + "-wal")).write_bytes(b"junk")

    with capture_logs() as logs:
        store, problem = Store.open(tmp_path)

    assert problem and "not a database" in problem
    moved = corrupt_files(tmp_path)
    assert len(moved) == 2 and moved[0].startswith(FILENAME + ".corrupt-") and moved[1].endswith("-wal")
    event = next(e for e in logs if e["event"] == "data_file_corrupt")
    assert event["log_level"] == "error" and event["problem"] == problem
    assert store.restore(make_state(tmp_path))["agents"] == 0
    store.close()


async def test_truncated_database_is_set_aside_and_the_store_starts_empty(tmp_path, store):
    state = make_state(tmp_path)
    for i in range(40):
        apply_report(state, f"agent-{i}", processes=50)
    await store.checkpoint(state)
    store.close()
    path = tmp_path / FILENAME
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)

    reopened, problem = Store.open(tmp_path)

    assert problem is not None
    assert corrupt_files(tmp_path)
    fresh = make_state(tmp_path)
    assert reopened.restore(fresh)["agents"] == 0 and len(fresh.registry) == 0
    reopened.close()


def test_unknown_schema_version_is_set_aside(tmp_path):
    Store.open(tmp_path)[0].close()
    with sqlite3.connect(tmp_path / FILENAME) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")

    store, problem = Store.open(tmp_path)
    assert "schema version" in problem and corrupt_files(tmp_path)
    store.close()


async def test_undecodable_row_is_skipped_and_the_rest_restored(tmp_path, store):
    state = make_state(tmp_path)
    apply_report(state, "agent-1")
    apply_report(state, "agent-2")
    await store.checkpoint(state)
    with store.conn:
        store.conn.execute("UPDATE timeseries SET series = x'00' WHERE agent_id = 'agent-2'")

    fresh = make_state(tmp_path)
    with capture_logs() as logs:
        counts = store.restore(fresh)
    assert counts["skipped"] == 1 and counts["agents"] == 2
    assert fresh.timeseries.get_all_agents() == ["agent-1"]
    assert any(e["event"] == "restore_row_skipped" and e["agent_id"] == "agent-2" for e in logs)


async def test_failed_checkpoint_puts_the_dirty_agents_back(tmp_path, store, monkeypatch):
    state = make_state(tmp_path)
    apply_report(state, "agent-1")
    apply_report(state, "agent-2")

    def broken_write(rows, meta):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_write_chunk", broken_write)
    with capture_logs() as logs:
        result = await store.checkpoint(state)

    assert not result.ok
    assert state.dirty_agents == {"agent-1", "agent-2"}
    assert state.metrics.registry.get_sample_value("app_checkpoint_failures_total") == 1
    assert any(e["event"] == "checkpoint_failed" and e["log_level"] == "error" for e in logs)

    monkeypatch.undo()
    assert (await store.checkpoint(state)).written == 2
    assert stored_ids(store.path, "agents") == {"agent-1", "agent-2"}


async def test_checkpoint_is_timed(tmp_path, store):
    state = make_state(tmp_path)
    apply_report(state, "agent-1")
    await store.checkpoint(state)
    assert state.metrics.registry.get_sample_value("app_checkpoint_duration_seconds_count") == 1
    assert store.path.stat().st_size > 0


async def test_checkpoint_does_not_block_the_loop(tmp_path, store, monkeypatch):
    state = make_state(tmp_path)
    for i in range(200):
        apply_report(state, f"agent-{i}", processes=20)
    real_write = store._write_chunk

    writes: list[tuple[float, float]] = []

    def slow_write(rows, meta):
        started = time.perf_counter()
        time.sleep(0.2)  # a slow disk: the loop must keep serving meanwhile
        writes.append((started, time.perf_counter()))
        return real_write(rows, meta)

    monkeypatch.setattr(store, "_write_chunk", slow_write)
    monkeypatch.setattr(persistence, "GATHER_BUDGET_SECONDS", 0.0005)
    ticks: list[float] = []

    async def ticker():
        while True:
            await asyncio.sleep(0)
            ticks.append(time.perf_counter())

    ticking = asyncio.create_task(ticker())
    result = await store.checkpoint(state)
    ticking.cancel()

    assert result.ok and result.written == 200 and result.seconds >= 0.2
    assert len(ticks) > 100  # it kept ticking through gathering and the write
    # The loop ran while every write was under way: no write held it. (Not a bound on gaps: on a loaded
    # machine the scheduler alone can pause the whole process longer than any bound a test could pick.)
    assert writes and all(any(start < tick < end for tick in ticks) for start, end in writes)


async def test_a_big_agents_checkpoint_serves_other_tasks_between_its_steps_and_holds_the_topology_lock(
    tmp_path, store, monkeypatch
):
    # An agent at the item limits takes ~0.4 s to export (this one is smaller): the checkpoint hands the
    # loop to other tasks between the steps of its export, but holds the topology lock from the first to
    # the last (a merge waits: the agent is never read half-merged), and stores what the export in one go
    # encodes to, byte for byte.
    state = make_state(tmp_path)
    fleet = Fleet(1, seed=3, processes=2000, connections=5000, containers=20)
    big, now = fleet.agent_id(0), time.time()
    raw = fleet.report_bytes(0, now)
    state.ingest.submit(Report.model_validate_json(raw), raw, now)
    state.ingest.apply(state.ingest.queue.get_nowait())
    apply_report(state, "agent-1")
    events: list = []
    export_steps = state.topology.export_agent_steps

    def recorded_steps(agent_id):
        steps = export_steps(agent_id)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            events.append(("step", agent_id))
            yield

    async def other_requests():
        while True:
            events.append("other")
            await asyncio.sleep(0)

    async def merges():  # what the ingest worker does for each report
        while True:
            async with state.topology_lock:
                events.append("merge")
            await asyncio.sleep(0)

    monkeypatch.setattr(state.topology, "export_agent_steps", recorded_steps)
    monkeypatch.setattr(persistence, "GATHER_BUDGET_SECONDS", 0.0)  # every step uses up its stretch
    others = [asyncio.create_task(other_requests()), asyncio.create_task(merges())]
    result = await store.checkpoint(state)
    for task in others:
        task.cancel()

    assert result.ok and result.written == 2
    steps = [index for index, event in enumerate(events) if event == ("step", big)]
    assert len(steps) > 100
    assert all("other" in events[start:end] for start, end in itertools.pairwise(steps))
    assert "merge" not in events[steps[0] : steps[-1]]
    assert "merge" in events[: steps[0]] and "merge" in events[steps[-1] :]  # the lock is let go between agents
    with sqlite3.connect(store.path) as conn:
        (stored,) = conn.execute("SELECT contribution FROM topology WHERE agent_id = ?", (big,)).fetchone()
    assert zlib.decompress(stored) == orjson.dumps(state.topology.export_agent(big))


async def test_cancelled_checkpoint_waits_for_its_write_and_keeps_the_agents_dirty(tmp_path, store, monkeypatch):
    state = make_state(tmp_path)
    apply_report(state, "agent-1")
    real_write = store._write_chunk
    finished = []

    def slow_write(rows, meta):
        time.sleep(0.1)
        size = real_write(rows, meta)
        finished.append(True)
        return size

    monkeypatch.setattr(store, "_write_chunk", slow_write)
    task = asyncio.create_task(store.checkpoint(state))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert finished  # the connection is free again: the thread's write ended before the cancel did
    assert state.dirty_agents == {"agent-1"}  # the shutdown checkpoint writes it again, to be sure
    monkeypatch.undo()
    assert (await store.checkpoint(state)).ok


async def test_run_checkpoints_periodically_until_cancelled(tmp_path, store):
    state = make_state(tmp_path, storage={"data_dir": str(tmp_path), "checkpoint_interval": "1s"})
    apply_report(state, "agent-1")
    task = asyncio.create_task(store.run(state))
    await asyncio.sleep(1.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stored_ids(store.path, "agents") == {"agent-1"}


def test_a_locked_database_is_an_error_not_a_corrupt_file(tmp_path, monkeypatch):
    Store.open(tmp_path)[0].close()

    def locked(path, max_file_size=0):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(persistence, "_connect", locked)
    with pytest.raises(sqlite3.OperationalError):
        Store.open(tmp_path)
    assert not corrupt_files(tmp_path) and (tmp_path / FILENAME).exists()


async def test_idle_checkpoint_writes_nothing(tmp_path, store):
    state = make_state(tmp_path)
    apply_report(state, "agent-1")
    await store.checkpoint(state)
    saved_at = store.conn.execute("SELECT value FROM meta WHERE key = 'saved_at'").fetchone()

    result = await store.checkpoint(state)

    assert result.ok and result.written == result.deleted == 0
    assert state.metrics.registry.get_sample_value("app_checkpoint_duration_seconds_count") == 1  # no second one
    assert store.conn.execute("SELECT value FROM meta WHERE key = 'saved_at'").fetchone() == saved_at


async def test_an_agent_that_cannot_be_serialised_does_not_stop_the_others(tmp_path, store, monkeypatch):
    state = make_state(tmp_path)
    apply_report(state, "agent-1")
    apply_report(state, "agent-2")
    export_steps = state.topology.export_agent_steps

    def poisoned(agent_id):
        if agent_id == "agent-1":
            raise TypeError("Integer exceeds 64-bit range")
        return export_steps(agent_id)

    monkeypatch.setattr(state.topology, "export_agent_steps", poisoned)
    with capture_logs() as logs:
        result = await store.checkpoint(state)

    assert result.ok and stored_ids(store.path, "agents") == {"agent-2"}
    assert state.dirty_agents == {"agent-1"}  # tried again next time
    assert any(e["event"] == "checkpoint_agent_failed" and e["agent_id"] == "agent-1" for e in logs)
    monkeypatch.undo()
    assert (await store.checkpoint(state)).written == 1
    assert stored_ids(store.path, "agents") == {"agent-1", "agent-2"}


async def test_cancel_during_a_failing_write_still_cancels_and_keeps_the_agents_dirty(tmp_path, store, monkeypatch):
    state = make_state(tmp_path)
    apply_report(state, "agent-1")

    def failing_write(rows, meta):
        time.sleep(0.1)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_write_chunk", failing_write)
    task = asyncio.create_task(store.checkpoint(state))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert state.dirty_agents == {"agent-1"}


# -- through a real server process -----------------------------------------------------------------------


def test_sigkill_loses_at_most_the_last_checkpoint_interval(tmp_path, server_process):
    env = {"ORCHESTRATOR_STORAGE__CHECKPOINT_INTERVAL": "1s"}
    server = server_process("--data-dir", str(tmp_path), env=env).wait_healthy()
    with httpx.Client(base_url=server.url) as client:
        assert post_report(client, report("agent-early", host_info={"cpu_percent": 5.0})).status_code == 202
        time.sleep(2.5)  # at least one checkpoint after the report was applied
    server.kill()  # SIGKILL: no graceful shutdown, no final checkpoint

    again = server_process("--data-dir", str(tmp_path)).wait_healthy()
    listed = httpx.get(again.url + "/api/v1/agents/list").json()
    assert [a["agent_id"] for a in listed["agents"]] == ["agent-early"]


def test_server_starts_empty_on_a_corrupt_data_file(tmp_path, server_process):
    (tmp_path / FILENAME).write_bytes(b"\x00garbage" * 1000)
    server = server_process("--data-dir", str(tmp_path)).wait_healthy()
    assert httpx.get(server.url + "/api/v1/agents/list").json()["count"] == 0
    assert corrupt_files(tmp_path)
