"""Unit tests for the WebSocket hub (orchestrator.api.hub), against a small fake topology and fake sockets."""

from __future__ import annotations

import asyncio
import importlib
import time
from types import SimpleNamespace

import orjson
import pytest

from orchestrator.api.hub import MAX_IDLE_VIEWS, PUBLISH_SLICE_SECONDS, Hub, View, ViewError
from orchestrator.runtime.metrics import create_metrics
from orchestrator.settings import Settings

LEVEL_TYPES = {"process": {"host", "container", "process"}, "container": {"host", "container"}, "host": {"host"}}


# -- fakes --------------------------------------------------------------------------------------------


def in_view(node: dict, level: str, host: str | None) -> bool:
    return node["type"] in LEVEL_TYPES[level] and (host is None or node["host"] == host)


class FakePublication:
    def __init__(self, seq: int, before: dict, after: dict) -> None:
        self.seq, self.timestamp = seq, f"2025-10-13T00:00:{seq % 60:02d}Z"
        self._before, self._after = before, after
        self.diff_calls = 0

    def diff(self, level: str = "process", host: str | None = None, external: str = "each") -> dict:
        self.diff_calls += 1  # the fake has no externals: grouped or not, the same nodes
        before = {k: v for k, v in self._before.items() if in_view(v, level, host)}
        after = {k: v for k, v in self._after.items() if in_view(v, level, host)}
        return {
            "from_seq": self.seq - 1,
            "nodes": {
                "added": {k: v for k, v in after.items() if k not in before},
                "updated": {k: v for k, v in after.items() if k in before and before[k] != v},
                "removed": sorted(k for k in before if k not in after),
            },
            "edges": {"added": {}, "updated": {}, "removed": []},
        }

    def catch_up_steps(self, level: str, external: str = "each"):
        yield from ()  # the fake's diffs need no view built first

    def changed_ids(self, name: str = "process"):
        level = name.partition("+")[0]
        before = {k: v for k, v in self._before.items() if in_view(v, level, None)}
        after = {k: v for k, v in self._after.items() if in_view(v, level, None)}
        return iter([k for k in before.keys() | after.keys() if before.get(k) != after.get(k)]), iter(())


class FakeTopology:
    """The topology's publishing API over a dict of nodes (no edges)."""

    def __init__(self) -> None:
        self.seq = 0
        self.live: dict[str, dict] = {}
        self.published: dict[str, dict] = {}
        self.publications: list[FakePublication] = []
        self.publishing = False  # its publish is one step: readers never find it part-way
        self.timestamp = "2025-10-13T00:00:00Z"
        self.publish_listeners: list = []

    def set(self, node_id: str, host: str, value: int = 0) -> None:
        self.live[node_id] = {"id": node_id, "type": node_id.split(":")[0], "host": host, "value": value}

    def remove(self, node_id: str) -> None:
        del self.live[node_id]

    def publish(self, now: float) -> FakePublication | None:
        if self.live == self.published:
            return None
        self.seq += 1
        publication = FakePublication(self.seq, self.published, dict(self.live))
        self.published = dict(self.live)
        self.publications.append(publication)
        for listener in self.publish_listeners:
            listener(publication, self)
        return publication

    def publish_steps(self, now: float, slice_seconds: float):
        yield  # one slice, so the hub's sliced driver is exercised too
        return self.publish(now)

    def view_in_use(self, level: str = "process", external: str = "each") -> bool:
        return True  # the fake's views are filters: nothing to build

    def view_steps(self, level: str = "process", external: str = "each"):
        yield from ()

    def view_maps(self, level: str = "process", external: str = "each") -> tuple[dict, dict]:
        return {k: v for k, v in self.published.items() if in_view(v, level, None)}, {}

    def snapshot(self, level: str = "process", host: str | None = None, external: str = "each") -> dict:
        return {
            "nodes": {k: v for k, v in self.published.items() if in_view(v, level, host)},
            "edges": {},
            "timestamp": "2025-10-13T00:00:00Z",
            "seq": self.seq,
        }

    def snapshot_json(self, level: str = "process", host: str | None = None, external: str = "each") -> bytes:
        return orjson.dumps(self.snapshot(level, host), option=orjson.OPT_SORT_KEYS)

    def counts(self) -> dict:
        types = [n["type"] for n in self.published.values()]
        return {
            "nodes": len(types),
            "edges": 0,
            "hosts": types.count("host"),
            "containers": types.count("container"),
            "processes": types.count("process"),
            "externals": 0,
        }


class FakeConnection:
    """Records what the hub sends. ``stall()`` makes ``send`` block like a peer that stopped reading."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self._open = asyncio.Event()
        self._open.set()

    @property
    def messages(self) -> list[dict]:
        return [orjson.loads(m) for m in self.raw]

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    def stall(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def send(self, message: bytes) -> None:
        await self._open.wait()
        if self.closed:
            raise ConnectionError("closed")
        self.raw.append(message)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def make_hub(**websocket) -> Hub:
    settings = Settings.model_validate(
        {"websocket": {"broadcast_interval": "50ms", **websocket}, "storage": {"persist": False}}
    )
    state = SimpleNamespace(
        settings=settings, metrics=create_metrics(), topology=FakeTopology(), hub=None, topology_lock=asyncio.Lock()
    )
    state.hub = Hub(state)
    return state.hub


def metric(hub: Hub, name: str, **labels) -> float:
    return hub.state.metrics.registry.get_sample_value(name, labels) or 0.0


async def settle() -> None:
    """Let every sender task run until it waits again."""
    for _ in range(20):  # a whole view's snapshot is copied and encoded in slices: a few turns of the loop
        await asyncio.sleep(0)


def apply_diff(nodes: dict, diff: dict) -> None:
    nodes.update(diff["nodes"]["added"])
    nodes.update(diff["nodes"]["updated"])
    for node_id in diff["nodes"]["removed"]:
        del nodes[node_id]


# -- views --------------------------------------------------------------------------------------------


def test_view_defaults_to_process_level_of_every_host():
    assert View.parse(None, None) == View("process", None)
    assert View.parse("host", "") == View("host", None)


@pytest.mark.parametrize("level", ["hosts", "pod", 3])
def test_view_rejects_unknown_level(level):
    with pytest.raises(ViewError):
        View.parse(level, None)


# -- snapshot and diffs -------------------------------------------------------------------------------


async def test_new_client_gets_topology_update_at_current_seq_first():
    hub = make_hub()
    hub.state.topology.set("host:a", "a")
    await hub.tick_in_slices(1.0)
    conn = FakeConnection()
    hub.connect(conn, View())
    await settle()
    (first,) = conn.messages
    assert first["type"] == "topology_update" and first["seq"] == 1
    assert set(first["payload"]["nodes"]) == {"host:a"}
    assert {"nodes", "edges", "timestamp"} <= set(first["payload"])


async def test_diffs_applied_in_order_equal_the_published_snapshot_including_removals():
    hub = make_hub()
    topo = hub.state.topology
    conn = FakeConnection()
    hub.connect(conn, View())
    await settle()
    steps = [
        lambda: topo.set("host:a", "a"),
        lambda: topo.set("process:a:1", "a"),
        lambda: topo.set("process:a:1", "a", 5),
        lambda: topo.remove("process:a:1"),
        lambda: topo.set("host:b", "b"),
    ]
    for step in steps:
        step()
        await hub.tick_in_slices(1.0)
        await settle()
    first, *diffs = conn.messages
    nodes = dict(first["payload"]["nodes"])
    seq = first["seq"]
    for diff in diffs:
        assert diff["type"] == "topology_diff" and diff["payload"]["from_seq"] == seq
        seq = diff["seq"]
        apply_diff(nodes, diff["payload"])
    assert seq == topo.seq == 5
    assert nodes == topo.snapshot()["nodes"]


async def test_diff_is_computed_and_serialized_once_per_view_for_all_its_clients():
    hub = make_hub()
    conns = [FakeConnection() for _ in range(5)]
    for conn in conns:
        hub.connect(conn, View())
    hub.connect(FakeConnection(), View("host"))
    await settle()
    hub.state.topology.set("host:a", "a")
    await hub.tick_in_slices(1.0)
    await settle()
    assert hub.state.topology.publications[-1].diff_calls == 2  # one per view
    diffs = [conn.raw[-1] for conn in conns]
    assert all(message is diffs[0] for message in diffs)  # the very same bytes object


async def test_a_watched_views_catch_up_runs_in_slices_before_its_diff(monkeypatch):
    # A view whose client's snapshot is still to come was not read at seq - 1: its diff first builds it. The
    # tick does that in slices of the loop (another task runs between them), then asks the diff.
    hub = make_hub()
    hub.connect(FakeConnection(), View("host"))
    events: list = []
    diff = FakePublication.diff

    def catch_up_steps(publication, level, external="each"):
        for step in range(3):
            events.append(("catch_up", level, step))
            time.sleep(PUBLISH_SLICE_SECONDS)  # a step of a large build: its slice is used up
            yield

    def recorded_diff(publication, level="process", host=None, external="each"):
        events.append(("diff", level))
        return diff(publication, level, host, external)

    monkeypatch.setattr(FakePublication, "catch_up_steps", catch_up_steps)
    monkeypatch.setattr(FakePublication, "diff", recorded_diff)

    async def other_requests():
        while True:
            events.append("other")
            await asyncio.sleep(0)

    other = asyncio.get_running_loop().create_task(other_requests())
    hub.state.topology.set("host:a", "a")
    await hub.tick_in_slices(1.0)
    other.cancel()
    steps = [events.index(("catch_up", "host", step)) for step in range(3)]
    assert "other" in events[steps[0] : steps[1]] and "other" in events[steps[1] : steps[2]]
    assert events.index(("diff", "host")) > steps[2]


async def test_empty_diff_still_sent_so_seq_chain_has_no_gaps():
    hub = make_hub()
    conn = FakeConnection()
    hub.connect(conn, View("process", "b"))
    await settle()
    hub.state.topology.set("host:a", "a")  # another host: nothing in this view changes
    await hub.tick_in_slices(1.0)
    await settle()
    diff = conn.messages[-1]
    assert diff["type"] == "topology_diff" and diff["seq"] == 1 and diff["payload"]["from_seq"] == 0
    assert diff["payload"]["nodes"] == {"added": {}, "updated": {}, "removed": []}


async def test_publishing_goes_on_without_clients_and_updates_gauges():
    hub = make_hub()
    hub.state.topology.set("host:a", "a")
    hub.state.topology.set("process:a:1", "a")
    await hub.tick_in_slices(1.0)
    assert hub.state.topology.seq == 1
    assert metric(hub, "app_topology_nodes", type="process") == 1
    assert metric(hub, "app_topology_nodes", type="host") == 1
    assert metric(hub, "app_websocket_broadcast_seconds_count") == 1


async def test_run_loop_publishes_every_interval():
    hub = make_hub(broadcast_interval="10ms")
    task = asyncio.create_task(hub.run())
    try:
        hub.state.topology.set("host:a", "a")
        await asyncio.sleep(0.05)
        assert hub.state.topology.seq == 1
        hub.state.topology.set("host:b", "b")
        await asyncio.sleep(0.05)
        assert hub.state.topology.seq == 2
    finally:
        task.cancel()


async def test_run_loop_survives_a_failing_tick():
    hub = make_hub(broadcast_interval="10ms")
    calls = []

    def broken(now):
        calls.append(now)
        raise RuntimeError("boom")

    hub.state.topology.publish = broken
    task = asyncio.create_task(hub.run())
    await asyncio.sleep(0.05)
    task.cancel()
    assert len(calls) >= 2


# -- views and client requests ------------------------------------------------------------------------


async def test_host_level_client_sees_only_host_nodes_and_host_filter_only_that_host():
    hub = make_hub()
    host_level, only_b = FakeConnection(), FakeConnection()
    hub.connect(host_level, View("host"))
    hub.connect(only_b, View("process", "b"))
    await settle()
    topo = hub.state.topology
    for node_id, host in (("host:a", "a"), ("process:a:1", "a"), ("host:b", "b"), ("process:b:1", "b")):
        topo.set(node_id, host)
    await hub.tick_in_slices(1.0)
    await settle()
    assert set(host_level.messages[-1]["payload"]["nodes"]["added"]) == {"host:a", "host:b"}
    assert set(only_b.messages[-1]["payload"]["nodes"]["added"]) == {"host:b", "process:b:1"}


async def test_subscribe_switches_view_and_sends_its_snapshot():
    hub = make_hub()
    topo = hub.state.topology
    topo.set("host:a", "a")
    topo.set("process:a:1", "a")
    await hub.tick_in_slices(1.0)
    conn = FakeConnection()
    client = hub.connect(conn, View())
    await settle()
    hub.subscribe(client, View("host"))
    await settle()
    assert conn.types() == ["topology_update", "topology_update"]
    assert set(conn.messages[-1]["payload"]["nodes"]) == {"host:a"}
    topo.set("process:a:2", "a")
    topo.set("host:b", "b")
    await hub.tick_in_slices(1.0)
    await settle()
    assert set(conn.messages[-1]["payload"]["nodes"]["added"]) == {"host:b"}
    assert hub.stats()["views"] == {"host:*": 1}


async def test_resync_sends_fresh_snapshot():
    hub = make_hub()
    conn = FakeConnection()
    client = hub.connect(conn, View())
    await settle()
    hub.state.topology.set("host:a", "a")
    await hub.tick_in_slices(1.0)
    hub.resync(client)
    await settle()
    # The queued diff is superseded by the snapshot at the same seq.
    assert conn.types() == ["topology_update", "topology_update"]
    assert conn.messages[-1]["seq"] == 1 and "host:a" in conn.messages[-1]["payload"]["nodes"]


async def test_reply_pong_and_error_use_the_envelope():
    hub = make_hub()
    conn = FakeConnection()
    client = hub.connect(conn, View())
    await settle()
    hub.reply(client, "pong")
    hub.reply(client, "error", {"code": "unknown_message", "message": "?"})
    await settle()
    pong, error = conn.messages[1:]
    assert pong["type"] == "pong" and {"seq", "timestamp", "payload"} <= set(pong)
    assert error["payload"] == {"code": "unknown_message", "message": "?"}


async def test_answer_sent_before_first_snapshot_does_not_overtake_it():
    hub = make_hub()
    conn = FakeConnection()
    client = hub.connect(conn, View())
    hub.reply(client, "pong")  # before the sender task ever ran
    await settle()
    assert conn.types() == ["topology_update", "pong"]


# -- report updates -----------------------------------------------------------------------------------


async def test_report_updates_are_coalesced_to_the_latest_summary_per_agent_per_tick():
    hub = make_hub()
    conn = FakeConnection()
    hub.connect(conn, View())
    await settle()
    for i in range(5):
        hub.note_report("agent-1", {"hostname": "a", "processes": i})
    hub.note_report("agent-2", {"hostname": "b", "processes": 9})
    await hub.tick_in_slices(1.0)
    await settle()
    updates = [m for m in conn.messages if m["type"] == "report_update"]
    assert [(u["payload"]["agent_id"], u["payload"]["report"]["processes"]) for u in updates] == [
        ("agent-1", 4),
        ("agent-2", 9),
    ]
    await hub.tick_in_slices(2.0)
    await settle()
    assert len([m for m in conn.messages if m["type"] == "report_update"]) == 2  # nothing new, nothing sent


async def test_report_update_follows_the_diff_that_contains_the_report():
    hub = make_hub()
    conn = FakeConnection()
    hub.connect(conn, View())
    await settle()
    hub.state.topology.set("host:a", "a")
    hub.note_report("agent-1", {"hostname": "a"})
    await hub.tick_in_slices(1.0)
    await settle()
    assert conn.types() == ["topology_update", "topology_diff", "report_update"]
    assert conn.messages[-1]["seq"] == conn.messages[-2]["seq"] == 1


async def test_host_filtered_client_gets_only_its_hosts_report_updates():
    hub = make_hub()
    conn = FakeConnection()
    hub.connect(conn, View("process", "b"))
    await settle()
    hub.note_report("agent-1", {"hostname": "a"})
    hub.note_report("agent-2", {"hostname": "b"})
    await hub.tick_in_slices(1.0)
    await settle()
    assert [m["payload"]["agent_id"] for m in conn.messages if m["type"] == "report_update"] == ["agent-2"]


async def test_report_summaries_are_not_kept_without_clients():
    hub = make_hub()
    hub.note_report("agent-1", {"hostname": "a"})  # nobody is watching: dropped
    conn = FakeConnection()
    hub.connect(conn, View())
    await hub.tick_in_slices(1.0)
    await settle()
    assert "report_update" not in conn.types()


# -- resume -------------------------------------------------------------------------------------------


async def publish_steps(hub: Hub, count: int) -> None:
    topology = hub.state.topology
    for _ in range(count):
        name = f"h{topology.seq}"  # a new host per step: every step publishes
        topology.set(f"host:{name}", name)
        await hub.tick_in_slices(float(topology.seq))
        await settle()


async def test_resume_from_held_seq_replays_only_the_missed_diffs():
    hub = make_hub(history_size=10)
    watcher = FakeConnection()
    hub.connect(watcher, View())  # keeps the view tracked
    await publish_steps(hub, 6)
    conn = FakeConnection()
    hub.connect(conn, View(), since=3)
    await settle()
    assert conn.types() == ["topology_diff"] * 3
    assert [m["seq"] for m in conn.messages] == [4, 5, 6]
    assert conn.messages[0]["payload"]["from_seq"] == 3


async def test_resume_from_current_seq_sends_nothing_until_the_next_diff():
    hub = make_hub()
    hub.connect(FakeConnection(), View())
    await publish_steps(hub, 2)
    conn = FakeConnection()
    hub.connect(conn, View(), since=2)
    await settle()
    assert conn.raw == []


@pytest.mark.parametrize("since", [1, 99])
async def test_resume_from_too_old_or_unknown_seq_gets_snapshot(since):
    hub = make_hub(history_size=3)
    hub.connect(FakeConnection(), View())
    await publish_steps(hub, 6)  # history holds seqs 4..6
    conn = FakeConnection()
    hub.connect(conn, View(), since=since)
    await settle()
    assert conn.types() == ["topology_update"]
    assert conn.messages[0]["seq"] == 6


async def test_lone_client_can_resume_after_reconnecting():
    hub = make_hub(history_size=10)
    first = FakeConnection()
    client = hub.connect(first, View("host"))
    await publish_steps(hub, 2)
    hub.disconnect(client)
    await publish_steps(hub, 2)  # published while nobody watched
    again = FakeConnection()
    hub.connect(again, View("host"), since=first.messages[-1]["seq"])
    await settle()
    assert [m["seq"] for m in again.messages] == [3, 4]


async def test_a_replay_keeps_no_resume_diffs_for_a_pinned_view_but_serves_its_clients():
    hub = make_hub(history_size=10)
    hub.keep_history(View())  # a replica's default view
    watcher = FakeConnection()
    hub.connect(watcher, View("host"))  # a client connected while the replica catches up
    await publish_steps(hub, 2)  # live: seqs 1, 2 held
    topology = hub.state.topology
    for _ in range(3):  # replayed publications, seqs 3..5
        topology.set(f"host:r{topology.seq}", f"r{topology.seq}")
        await hub.tick_in_slices(float(topology.seq), remember=False)
        await settle()
    assert [m["seq"] for m in watcher.messages] == [1, 2, 3, 4, 5]  # its snapshot, then every diff
    await publish_steps(hub, 2)  # caught up: seqs 6, 7 held again
    into_replay, after_it = FakeConnection(), FakeConnection()
    hub.connect(into_replay, View(), since=3)
    hub.connect(after_it, View(), since=6)
    await settle()
    assert into_replay.types() == ["topology_update"]  # never a chain with a hole in it
    assert into_replay.messages[0]["seq"] == 7
    assert [(m["type"], m["seq"]) for m in after_it.messages] == [("topology_diff", 7)]


async def test_idle_views_are_forgotten_after_history_size_publications_and_bounded_in_number():
    hub = make_hub(history_size=2)
    client = hub.connect(FakeConnection(), View("host"))
    hub.disconnect(client)
    await publish_steps(hub, 3)
    assert hub.stats()["tracked_views"] == 0
    # Forgotten: a client resuming that view within the history gets a snapshot, not the missed diffs.
    resumed = FakeConnection()
    resuming = hub.connect(resumed, View("host"), since=hub.state.topology.seq - 1)
    await settle()
    assert resumed.types() == ["topology_update"]
    hub.disconnect(resuming)
    for i in range(MAX_IDLE_VIEWS + 10):
        hub.disconnect(hub.connect(FakeConnection(), View("process", f"h{i}")))
    assert hub.stats()["tracked_views"] <= MAX_IDLE_VIEWS


# -- slow clients -------------------------------------------------------------------------------------


async def test_slow_client_does_not_delay_others_and_is_resynced_once_it_drains():
    hub = make_hub(buffer_size=3, slow_client_timeout="10s")
    fast, slow = FakeConnection(), FakeConnection()
    hub.connect(fast, View())
    hub.connect(slow, View())
    await settle()
    slow.stall()
    await publish_steps(hub, 10)
    assert fast.types() == ["topology_update"] + ["topology_diff"] * 10
    assert metric(hub, "app_websocket_dropped_total") > 0
    assert hub.stats()["behind"] == 1
    slow.resume()
    await settle()
    # The diff in flight when it stalled, then a fresh snapshot at the current seq, and it keeps up again.
    assert slow.types()[-1] == "topology_update" and slow.messages[-1]["seq"] == 10
    assert hub.stats()["behind"] == 0
    await publish_steps(hub, 1)
    assert slow.messages[-1]["type"] == "topology_diff" and slow.messages[-1]["payload"]["from_seq"] == 10


async def test_client_still_behind_after_slow_timeout_is_closed_with_1013():
    hub = make_hub(buffer_size=2, slow_client_timeout="100ms")
    fast, slow = FakeConnection(), FakeConnection()
    hub.connect(fast, View())
    hub.connect(slow, View())
    await settle()
    slow.stall()
    await publish_steps(hub, 5)
    assert slow.closed is None
    await asyncio.sleep(0.15)
    await hub.tick_in_slices(9.0)
    assert slow.closed is not None and slow.closed[0] == 1013
    assert metric(hub, "app_websocket_closed_total", reason="slow") == 1
    assert hub.client_count == 1 and metric(hub, "app_websocket_clients") == 1


async def test_many_clients_all_receive_each_update():
    hub = make_hub()
    conns = [FakeConnection() for _ in range(100)]
    for conn in conns:
        hub.connect(conn, View())
    await settle()
    await publish_steps(hub, 3)
    assert all(conn.types() == ["topology_update"] + ["topology_diff"] * 3 for conn in conns)
    assert metric(hub, "app_websocket_messages_total", type="topology_diff") == 300


# -- lifecycle ----------------------------------------------------------------------------------------


async def test_thousand_connect_disconnect_cycles_leak_no_tasks_or_queues():
    hub = make_hub()
    await settle()
    baseline = len(asyncio.all_tasks())
    for i in range(1000):
        conn = FakeConnection()
        client = hub.connect(conn, View("host" if i % 2 else "process"))
        if i % 3 == 0:
            await asyncio.sleep(0)  # sometimes let its sender start and send the snapshot
        hub.disconnect(client)
        if i % 100 == 0:
            hub.state.topology.set(f"host:h{i}", f"h{i}")
            await hub.tick_in_slices(float(i))
    await settle()
    assert len(asyncio.all_tasks()) == baseline
    assert hub.client_count == 0 and metric(hub, "app_websocket_clients") == 0
    assert hub.stats()["views"] == {} and hub.stats()["tracked_views"] <= 2


async def test_failed_send_disconnects_the_client():
    hub = make_hub()
    conn = FakeConnection()
    conn.closed = (1006, "")  # the peer vanished: send raises
    hub.connect(conn, View())
    await settle()
    assert hub.client_count == 0


async def test_close_all_closes_every_client_with_1001_and_refuses_new_ones():
    hub = make_hub()
    conns = [FakeConnection() for _ in range(3)]
    for conn in conns:
        hub.connect(conn, View())
    await settle()
    await hub.close_all(1001)
    assert [conn.closed[0] for conn in conns] == [1001] * 3
    assert hub.client_count == 0
    late = FakeConnection()
    hub.connect(late, View())
    assert late.closed[0] == 1001 and hub.client_count == 0
    assert metric(hub, "app_websocket_closed_total", reason="shutdown") == 3


async def test_stats_reports_clients_per_view():
    hub = make_hub()
    hub.connect(FakeConnection(), View())
    hub.connect(FakeConnection(), View())
    hub.connect(FakeConnection(), View("host", "a"))
    stats = hub.stats()
    assert stats["clients"] == 3 and stats["views"] == {"process:*": 2, "host:a": 1}


# -- the sink plugin ----------------------------------------------------------------------------------


def test_websocket_sink_hands_the_report_summary_to_the_hub():
    from orchestrator.contract.models import Report

    sink = importlib.import_module("orchestrator_plugins.websocket_sink")
    noted = []
    state = SimpleNamespace(hub=SimpleNamespace(note_report=lambda agent, summary: noted.append((agent, summary))))
    report = Report.model_validate(
        {
            "agent_id": "agent-1",
            "hostname": "host-1",
            "timestamp": "2025-10-13T00:00:00Z",
            "processes_info": {"processes": [{"pid": 1, "name": "init"}]},
        }
    )
    sink.receive_report(report=report, raw=b"", state=state)
    assert noted == [
        (
            "agent-1",
            {
                "hostname": "host-1",
                "timestamp": "2025-10-13T00:00:00Z",
                "containers": 0,
                "processes": 1,
                "connections": 0,
            },
        )
    ]
    sink.receive_report(report=report, raw=b"", state=SimpleNamespace(hub=None))  # no hub: nothing to do
