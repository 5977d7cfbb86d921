"""The packed snapshot: what a replica writes, another reads back as it was (no NATS needed)."""

from __future__ import annotations

import struct
import zlib

import orjson
import pytest

from orchestrator.cluster.snapshot import MAGIC, Position, SnapshotError, pack, pack_steps, unpack
from orchestrator.runtime.slicing import run_steps


def _records() -> list[dict]:
    big = orjson.dumps({"agent_id": "a", "sections": [{"nodes": [{"id": f"n{i}"} for i in range(500)]}]})
    return [
        {
            "id": "a",
            "agent": orjson.dumps({"agent_id": "a", "hostname": "h"}),  # small: stored as it is
            "latest": [12.5, b"\x1f\x8b compressed report"],
            "topology": big,  # large orjson: compressed
            "timeseries": b"\x00\x01 series blob",
            "archive": None,
        },
        {"id": "b", "agent": None, "latest": None, "topology": None, "timeseries": None, "archive": None},
    ]


def test_a_packed_snapshot_unpacks_to_the_same_position_and_records():
    position = Position("orch", applied_seq=42, clock=1_700_000_000.5, tick=7, seq=9, reports_received=3)
    data = pack(position, _records())
    assert data.startswith(MAGIC)
    assert unpack(data) == (position, _records())
    # The steps give the same bytes, one step per agent.
    assert sum(1 for _ in pack_steps(position, _records())) == 2
    assert run_steps(pack_steps(position, _records())) == data
    # The large contribution is compressed, the small registry record is not.
    assert len(data) < len(_records()[0]["topology"])
    assert _records()[0]["agent"] in data


def test_a_snapshot_with_its_small_records_compressed_still_reads():
    # Snapshots written before small records were stored as they are compressed every orjson record.
    record = orjson.dumps({"agent_id": "a", "hostname": "h"})
    blobs = [zlib.compress(record, 1)]
    document = orjson.dumps(
        {
            "position": {"stream": "orch", "applied_seq": 1},
            "agents": [{"id": "a", "agent": {"$z": 0}, "latest": None, "topology": None}],
            "blobs": [len(blobs[0])],
        }
    )
    data = MAGIC + struct.pack(">Q", len(document)) + document + blobs[0]
    position, agents = unpack(data)
    assert position.applied_seq == 1 and agents[0]["agent"] == record


@pytest.mark.parametrize("cut", [1, 20, -1])
def test_a_truncated_or_foreign_snapshot_is_refused(cut):
    data = pack(Position("orch"), _records())
    with pytest.raises(SnapshotError):
        unpack(data[:cut] if cut > 0 else data + b"padding")
    with pytest.raises(SnapshotError):
        unpack(b"PK\x03\x04 not a snapshot")


def test_a_snapshot_packed_after_the_state_moved_on_holds_the_state_it_was_gathered_at(tmp_path):
    import asyncio
    import time

    from orchestrator.cluster.snapshot import gather
    from orchestrator.probe.fleet import Fleet
    from orchestrator.state.persistence import agent_rows
    from tests.state.test_persistence import apply_fleet_report, make_state

    state = make_state(tmp_path, storage={"persist": False}, history={"enabled": False})
    fleet, now = Fleet(6, seed=5), time.time()
    for host in range(6):
        apply_fleet_report(state, fleet, host, now)
    expected = {agent_id: agent_rows(state, agent_id) for agent_id in state.topology.agents()}
    records = asyncio.run(gather(state))
    # The log goes on before the pack: every host re-reports (new sockets, new metrics), one is removed.
    for host in range(6):
        apply_fleet_report(state, fleet, host, now + 15)
    state.topology.remove_agent(fleet.agent_id(5))
    _position, agents = unpack(pack(Position("orch"), records))
    assert {agent["id"] for agent in agents} == set(expected)
    for agent in agents:
        rows = expected[agent["id"]]
        assert agent["topology"] == rows.topology[1]  # byte for byte: the export at the gather
        assert agent["agent"] == rows.agents[1] and agent["timeseries"] == rows.timeseries[1]
        assert agent["latest"] == list(rows.latest[1:])
    assert any(agent["topology"] != agent_rows(state, agent["id"]).topology[1] for agent in agents[:5])
