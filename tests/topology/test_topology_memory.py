"""Memory the engine gives back (issue 16 #10), measured with tracemalloc: what a client or a probe makes grow
must shrink again once it is gone, or stay bounded."""

from __future__ import annotations

import gc
import tracemalloc

from orchestrator.topology import Topology
from tests.topology.support import conn, merge, proc, stamp


def _report(second: int, ports: range) -> dict:
    return {
        "agent_id": "agent-p",
        "hostname": "host-p",
        "timestamp": stamp(second % 60),
        "processes_info": {"processes": [proc(1, "client")]},
        "network_info": {
            "connections": [conn(1, ("10.0.0.1", 40000 + i), ("203.0.113.7", p)) for i, p in enumerate(ports)]
        },
    }


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_port_lists_of_gone_edges_are_given_back():
    topology = Topology()
    merge(topology, _report(0, range(1, 3)), 0)
    topology.publish(0)
    topology.remove_agent("agent-p")
    topology.publish(0)
    tracemalloc.start()
    try:
        before = _traced()
        for step in range(1, 201):  # every report another set of 150 server ports: another port list
            merge(topology, _report(step, range(step * 150, step * 150 + 150)), step)
            topology.publish(0)
        assert len(topology.snapshot()["edges"]) == 1
        topology.remove_agent("agent-p")
        topology.publish(0)
        assert topology.snapshot()["nodes"] == {}
        grown = _traced() - before
    finally:
        tracemalloc.stop()
    assert grown < 200_000, f"{grown} bytes kept with no nodes left"  # unpruned: ~480 KB, growing per report


def test_snapshots_of_many_distinct_hosts_stay_bounded():
    topology = Topology()
    merge(topology, _report(0, range(1, 3)), 0)
    topology.publish(0)
    topology.snapshot_json("process", "host-p")
    tracemalloc.start()
    try:
        before = _traced()
        for k in range(3000):  # an idle server asked for 3,000 hosts: nothing publishes in between
            assert b'"nodes":{}' in topology.snapshot_json("process", f"nohost-{k}")
            topology.snapshot("host", f"nohost-{k}")
        grown = _traced() - before
    finally:
        tracemalloc.stop()
    # A bounded cache: at most a few hundred KB (orjson's buffers are 4 KB each); unbounded, ~14 MB.
    assert grown < 600_000, f"{grown} bytes kept for 3,000 host= snapshots"
