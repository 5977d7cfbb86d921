"""An agent's export in steps: the data of the export in one go, byte for byte, and many steps for an agent
with thousands of processes and connections (a checkpoint serves requests between them)."""

from __future__ import annotations

import orjson
import pytest

from orchestrator.contract.models import Report
from orchestrator.probe.fleet import Fleet
from orchestrator.topology import Topology, export
from tests.topology.support import drive, merge_parsed

NOW = 1_760_000_000.0


def fleet_topology(fleet: Fleet) -> Topology:
    topology = Topology()
    for index in range(fleet.hosts):
        merge_parsed(topology, Report.model_validate_json(fleet.report_bytes(index, NOW)), index + 1)
    topology.publish(0)
    return topology


@pytest.fixture(scope="module")
def fleet() -> Topology:
    """20 generated hosts: containers, cross-host connections, contested addresses, externals."""
    return fleet_topology(Fleet(20, seed=3))


@pytest.fixture(scope="module")
def big() -> Topology:
    """One host with 2,000 processes and 5,000 connections (~5,000 first_seen entries)."""
    return fleet_topology(Fleet(1, seed=3, processes=2000, connections=5000, containers=20))


def test_every_agent_of_a_fleet_exports_in_steps_the_bytes_it_exports_in_one_go(fleet):
    assert len(fleet.agents()) == 20
    for agent in fleet.agents():
        exported, _yields = drive(fleet.export_agent_steps(agent))
        assert orjson.dumps(exported) == orjson.dumps(fleet.export_agent(agent))
    assert any("claims" in fleet.export_agent(agent) for agent in fleet.agents())  # contested addresses too


def test_a_big_agent_exports_in_many_steps_the_bytes_it_exports_in_one_go(big):
    (agent,) = big.agents()
    exported, yields = drive(big.export_agent_steps(agent))
    assert yields > 100  # the loop gets its turn between them
    assert orjson.dumps(exported) == orjson.dumps(big.export_agent(agent))
    first_seen = list(exported["first_seen"])
    assert len(first_seen) > export.SORT_RUN and first_seen == sorted(first_seen)  # sorted in several runs


@pytest.mark.parametrize("run", [1, 7, 1000])
def test_first_seen_comes_out_sorted_however_its_ids_are_sorted_in_runs(big, monkeypatch, run):
    # Sorted a run at a time, the runs merged two by two: an odd number of runs, several merge rounds.
    (agent,) = big.agents()
    expected = orjson.dumps(big.export_agent(agent))
    monkeypatch.setattr(export, "SORT_RUN", run)
    exported, _yields = drive(big.export_agent_steps(agent))
    assert orjson.dumps(exported) == expected


@pytest.mark.parametrize("items", [1, 3, export.ENCODE_ITEMS])
def test_an_export_encoded_in_steps_is_the_bytes_of_orjson_dumps(fleet, big, monkeypatch, items):
    # What a checkpoint stores: long lists and maps encoded a part at a time, then copied into the whole.
    monkeypatch.setattr(export, "ENCODE_ITEMS", items)
    for topology in (fleet, big):
        for agent in topology.agents():
            data = topology.export_agent(agent)
            assert drive(export.json_steps(data))[0] == orjson.dumps(data)


def test_a_big_agents_export_is_encoded_in_several_steps(big):
    (agent,) = big.agents()
    assert drive(export.json_steps(big.export_agent(agent)))[1] > 1


def test_an_agent_that_holds_nothing_exports_none_in_steps_too(fleet):
    assert drive(fleet.export_agent_steps("nobody")) == (None, 0)
