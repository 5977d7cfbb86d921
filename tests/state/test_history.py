"""History against the live topology it kept: at every publication of a churning fleet, the topology as of
that time has the live structure in every view, whether read from memory or from the file, across
keyframes; and two servers fed the same publications answer byte for byte the same."""

from __future__ import annotations

import sqlite3

import orjson
import pytest

from orchestrator.contract.models import Report
from orchestrator.contract.times import parse_rfc3339
from orchestrator.probe.fleet import Fleet
from orchestrator.state.history import EDGE_FIELDS, NODE_FIELDS, SCHEMA_VERSION, History, HistoryUnavailable
from orchestrator.topology import Topology
from tests.topology.support import merge_parsed

T0 = 1_760_000_000.0
VIEWS = [(level, external) for level in ("process", "container", "host") for external in ("each", "group")]


def canonical(value) -> bytes:
    """A field's value as JSON with sorted keys: what it says, not the order its keys were made in (keyframes
    are stored in key order)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def structure(snapshot: dict) -> tuple[dict, dict]:
    """What history keeps exactly: the structural fields of each node and edge (in a host's metadata, its
    interfaces without their byte counters)."""
    nodes = {
        node_id: tuple(canonical(structural(node, f)) for f in NODE_FIELDS)
        for node_id, node in snapshot["nodes"].items()
    }
    edges = {eid: tuple(canonical(edge[f]) for f in EDGE_FIELDS) for eid, edge in snapshot["edges"].items()}
    return nodes, edges


class Churn:
    """A small churning fleet reporting every 15 s, published every 5 simulated seconds into ``history``."""

    def __init__(self, history: History, stepped: bool = False) -> None:
        self.fleet = Fleet(3, seed=2, containers=3, processes=12, connections=12)
        self.topology = Topology()
        # stepped: recorded as the server does, in steps of a publish driven a step at a time
        self.topology.publish_listeners.append(history.record_steps if stepped else history.record)
        self.stepped, self.recording_steps = stepped, 0
        self.step = self.order = 0

    def publish(self, now: float):
        if not self.stepped:
            return self.topology.publish(now)
        steps, seq = self.topology.publish_steps(now, slice_seconds=0.0), self.topology.seq
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            if self.topology.seq > seq:  # published, still being recorded
                self.recording_steps += 1

    def run(self, steps: int, every: int = 7) -> dict:
        """``steps`` more steps; the live structure of every view at every ``every``-th publication."""
        live = {}
        for step in range(self.step, self.step + steps):
            now = T0 + step * 5  # each host reports every 15 s: one in three each step
            for host in range(step % 3, 3, 3):
                self.order += 1
                report = Report.model_validate_json(self.fleet.report_bytes(host, now))
                merge_parsed(self.topology, report, self.order, now)
            publication = self.publish(now)
            if publication is not None and publication.seq % every == 0:
                live[publication.timestamp] = {
                    view: structure(self.topology.snapshot(view[0], None, view[1])) for view in VIEWS
                }
        self.step += steps
        return live


def run_fleet(tmp_path, seconds: int, keyframe_interval: float = 20.0, every: int = 7, **options):
    """A history of ``seconds`` steps of :class:`Churn`; returns it, and the live structure of every view at
    every ``every``-th publication."""
    history = History(tmp_path / "history.sqlite", retention=86400.0, keyframe_interval=keyframe_interval, **options)
    return history, Churn(history).run(seconds, every)


def structural(node: dict, field: str):
    value = node[field]
    if field == "metadata" and "interfaces" in value:
        interfaces = [{k: v for k, v in i.items() if k not in ("rx_bytes", "tx_bytes")} for i in value["interfaces"]]
        return {**value, "interfaces": interfaces}
    return value


async def answers(history: History, live: dict) -> dict:
    return {(stamp, view): await history.topology_at(history_time(stamp), *view) for stamp in live for view in VIEWS}


def history_time(stamp: str) -> float:
    return parse_rfc3339(stamp)


def encoded(history: History) -> None:
    """Wait until every keyframe taken so far is encoded (its bodies let go): the encoder is one thread, so a
    task submitted now runs after them."""
    history._encoder.submit(lambda: None).result()


@pytest.mark.parametrize("flushed", ["no", "encoded", "yes"], ids=["in memory", "in memory, encoded", "from the file"])
async def test_topology_at_each_publication_has_the_live_structure_in_every_view(tmp_path, flushed):
    history, live = run_fleet(tmp_path, 240)
    if flushed == "encoded":
        encoded(history)
    if flushed == "yes":
        await history.flush()
    for stamp, views in live.items():
        for view, expected in views.items():
            past = await history.topology_at(history_time(stamp), *view)
            assert past["timestamp"] == stamp
            assert structure(past) == expected, (stamp, view)
    history.close()


@pytest.mark.parametrize("stepped", [False, True], ids=["recorded in one go", "recorded in steps"])
async def test_the_same_publications_give_the_same_history(tmp_path, stepped):
    # The second is recorded the way the server records: in steps of the publish, the loop served between.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, live = run_fleet(tmp_path / "a", 120)
    second = History(tmp_path / "b" / "history.sqlite", retention=86400.0, keyframe_interval=20.0)
    churn = Churn(second, stepped)
    churn.run(120)
    assert (churn.recording_steps > 100) is stepped  # the loop had its turns while each publication was recorded
    await second.flush()  # flushed or not, the answers are the same
    one, other = await answers(first, live), await answers(second, live)
    assert [(key, canonical(body)) for key, body in one.items()] == [
        (key, canonical(body)) for key, body in other.items()
    ]
    start, end = history_time(min(live)), history_time(max(live))
    assert await first.changes(start, end, "process") == await second.changes(start, end, "process")
    first.close()
    second.close()


async def assert_answers_are_live(history: History, live: dict) -> None:
    for stamp, views in live.items():
        for view, expected in views.items():
            past = await history.topology_at(history_time(stamp), *view)
            assert (past["timestamp"], structure(past)) == (stamp, expected), (stamp, view)


@pytest.mark.parametrize("flushed", [False, True], ids=["in memory", "from the file"])
async def test_host_keyframes_between_the_whole_ones_answer_every_view_alike(tmp_path, flushed):
    # No interval keyframes: each level takes one when its changes reach its size (the host level alone, often).
    history, live = run_fleet(
        tmp_path, 150, keyframe_interval=86400.0, every=5, min_keyframe_changes=5, keyframe_share=1.0
    )
    if flushed:
        await history.flush()
        with sqlite3.connect(history.path) as conn:
            own = conn.execute(
                "SELECT seq FROM keyframes WHERE level = 'host' EXCEPT SELECT seq FROM keyframes WHERE level = 'process'"
            ).fetchall()
        assert own  # host keyframes of its own, between the whole ones
    await assert_answers_are_live(history, live)
    history.close()


async def test_decoded_keyframes_and_blocks_serve_no_stale_answer_after_new_keyframes_and_pruning(tmp_path):
    history = History(tmp_path / "history.sqlite", retention=86400.0, keyframe_interval=20.0)
    churn = Churn(history)
    early = churn.run(60, every=3)
    await history.flush()
    await assert_answers_are_live(history, early)  # reads (and keeps) the keyframes and blocks they need
    late = churn.run(60, every=3)  # new keyframes, entries and blocks after the ones kept
    await history.flush()
    await assert_answers_are_live(history, {**early, **late})
    cutoff = min(late)
    history.retention = history.latest.ts - history_time(cutoff)
    assert await history.prune() > 0
    for stamp in early:
        if history_time(stamp) < history.oldest.ts:
            with pytest.raises(HistoryUnavailable):
                await history.topology_at(history_time(stamp), "process")
    held = {stamp: views for stamp, views in {**early, **late}.items() if history_time(stamp) >= history.oldest.ts}
    assert set(late) <= set(held)
    await assert_answers_are_live(history, held)
    history.close()


async def test_a_version_1_file_is_migrated_and_answers_as_before(tmp_path):
    history, live = run_fleet(tmp_path, 60, every=5)
    await history.flush()
    history.close()
    with sqlite3.connect(tmp_path / "history.sqlite") as conn:  # what a version 1 server left
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    again = History(tmp_path / "history.sqlite", retention=86400.0, keyframe_interval=20.0)
    await assert_answers_are_live(again, live)
    again.close()
    with sqlite3.connect(tmp_path / "history.sqlite") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (SCHEMA_VERSION,)


@pytest.mark.parametrize("flushed", [False, True], ids=["in memory", "from the file"])
@pytest.mark.parametrize(
    "keyframes",
    [{"keyframe_interval": 1e6, "min_keyframe_changes": 10**6}, {"keyframe_interval": 40.0}],
    ids=["one", "many"],
)
async def test_changes_is_the_net_difference_of_the_views_at_its_two_ends(tmp_path, flushed, keyframes):
    # With one keyframe, every window is answered from one replay comparing only the ids it touched; with
    # many, most windows cross keyframes. Each must name exactly what differs between at=from and at=to.
    history = History(tmp_path / "history.sqlite", retention=86400.0, **keyframes)
    churn = Churn(history)
    churn.fleet = Fleet(4, seed=5, containers=4, processes=40, connections=40)  # nodes and edges churn in 200 steps
    live = churn.run(200, every=9)
    if flushed:
        await history.flush()
    stamps = sorted(live)
    windows = [
        (stamps[i], stamps[j]) for i in range(len(stamps)) for j in (i + 1, i + 4, len(stamps) - 1) if j < len(stamps)
    ]
    changed = 0
    for start, end in windows:
        for view in VIEWS:
            net = await history.changes(history_time(start), history_time(end), *view)
            before = structure(await history.topology_at(history_time(start), *view))
            after = structure(await history.topology_at(history_time(end), *view))
            for index, section in enumerate(("nodes", "edges")):
                old, new = before[index], after[index]
                expected = {
                    "added": sorted(new.keys() - old.keys()),
                    "removed": sorted(old.keys() - new.keys()),
                    "updated": sorted(i for i in new.keys() & old.keys() if new[i] != old[i]),
                }
                assert net[section] == expected, (start, end, view, section)
                changed += any(expected.values())
    assert changed > len(windows)  # the windows hold changes to find
    history.close()


@pytest.mark.parametrize("flushed", [False, True], ids=["in memory", "from the file"])
async def test_topology_at_json_is_the_answer_topology_at_gives_byte_for_byte(tmp_path, flushed):
    # A kept level that nothing changed after its keyframe is spliced from the keyframe's stored parts; the
    # rest are decoded, replayed and encoded. Both must give the bytes of the decoded view, keys sorted.
    history, live = run_fleet(tmp_path, 150, keyframe_interval=40.0, every=4)
    if flushed:
        await history.flush()
    for stamp in live:
        for view in VIEWS:
            answer = await history.topology_at_json(history_time(stamp), *view)
            past = await history.topology_at(history_time(stamp), *view)
            assert answer == orjson.dumps({"topology": past}, option=orjson.OPT_SORT_KEYS), (stamp, view)
    history.close()
