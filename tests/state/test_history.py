"""History against the live topology it kept: at every publication of a churning fleet, the topology as of
that time has the live structure in every view, whether read from memory or from the file, across
keyframes; and two servers fed the same publications answer byte for byte the same."""

from __future__ import annotations

import orjson
import pytest

from orchestrator.contract.models import Report
from orchestrator.contract.times import parse_rfc3339
from orchestrator.probe.fleet import Fleet
from orchestrator.state.history import EDGE_FIELDS, NODE_FIELDS, History
from orchestrator.topology import Topology
from tests.topology.support import merge_parsed

T0 = 1_760_000_000.0
VIEWS = [(level, external) for level in ("process", "container", "host") for external in ("each", "group")]


def structure(snapshot: dict) -> tuple[dict, dict]:
    """What history keeps exactly: the structural fields of each node and edge."""
    nodes = {node_id: tuple(repr(node[f]) for f in NODE_FIELDS) for node_id, node in snapshot["nodes"].items()}
    edges = {eid: tuple(repr(edge[f]) for f in EDGE_FIELDS) for eid, edge in snapshot["edges"].items()}
    return nodes, edges


def run_fleet(tmp_path, seconds: int, keyframe_interval: float = 20.0, every: int = 7):
    """A small churning fleet reporting every 15 s, published every simulated second into a history;
    returns it, and the live structure of every view at every ``every``-th publication."""
    fleet = Fleet(3, seed=2, containers=3, processes=12, connections=12)
    topology = Topology()
    history = History(tmp_path / "history.sqlite", retention=86400.0, keyframe_interval=keyframe_interval)
    topology.publish_listeners.append(history.record)
    live = {}
    order = 0
    for second in range(seconds):
        now = T0 + second * 5  # each host reports every 15 s: one in three each step
        for host in range(second % 3, 3, 3):
            order += 1
            merge_parsed(topology, Report.model_validate_json(fleet.report_bytes(host, now)), order, now)
        publication = topology.publish(now)
        if publication is not None and publication.seq % every == 0:
            live[publication.timestamp] = {view: structure(topology.snapshot(view[0], None, view[1])) for view in VIEWS}
    return history, live


async def answers(history: History, live: dict) -> dict:
    return {(stamp, view): await history.topology_at(history_time(stamp), *view) for stamp in live for view in VIEWS}


def history_time(stamp: str) -> float:
    return parse_rfc3339(stamp)


@pytest.mark.parametrize("flushed", [False, True], ids=["in memory", "from the file"])
async def test_topology_at_each_publication_has_the_live_structure_in_every_view(tmp_path, flushed):
    history, live = run_fleet(tmp_path, 240)
    if flushed:
        await history.flush()
    for stamp, views in live.items():
        for view, expected in views.items():
            past = await history.topology_at(history_time(stamp), *view)
            assert past["timestamp"] == stamp
            assert structure(past) == expected, (stamp, view)
    history.close()


async def test_the_same_publications_give_the_same_history(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, live = run_fleet(tmp_path / "a", 120)
    second, _ = run_fleet(tmp_path / "b", 120)
    await second.flush()  # flushed or not, the answers are the same
    one, other = await answers(first, live), await answers(second, live)
    assert [(key, orjson.dumps(body)) for key, body in one.items()] == [
        (key, orjson.dumps(body)) for key, body in other.items()
    ]
    start, end = history_time(min(live)), history_time(max(live))
    assert await first.changes(start, end, "process") == await second.changes(start, end, "process")
    first.close()
    second.close()
