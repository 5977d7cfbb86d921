"""The bulk import of an empty topology (a restart, a replica's snapshot) builds what importing agent by agent
builds: the same published bytes at every level, the same exports, and the same topology after the next
live changes (so its indexes are the ones the incremental path keeps)."""

from __future__ import annotations

import orjson
import pytest

from orchestrator.contract.models import Report
from orchestrator.probe.fleet import Fleet
from orchestrator.topology import EXTERNALS, LEVELS, Topology
from tests.topology.support import merge

START = 1_760_000_000.0
HOSTS = 10


def fleet_report(fleet: Fleet, host: int, now: float, **changes) -> dict:
    return {**fleet.report(host, now), **changes}


def impostor(fleet: Fleet, now: float) -> dict:
    """Host 0's report under another name: its containers (owned by host 0) and its addresses (host 0's and
    every Docker host's bridge address) are contested claims."""
    return fleet_report(fleet, 0, now, agent_id="impostor", hostname="impostor")


class Live:
    """A topology fed reports in order, received half a second after their timestamps."""

    def __init__(self) -> None:
        self.topology = Topology()
        self.order = 0

    def apply(self, topology: Topology, body: dict) -> None:
        self.order += 1
        received = Report.model_validate(body).epoch + 0.5
        merge(topology, body, self.order, received_at=received)


def build_live(fleet: Fleet) -> Live:
    live = Live()
    for host in range(HOSTS):
        live.apply(live.topology, fleet.report(host, START))
    live.apply(live.topology, impostor(fleet, START + 1))
    live.topology.publish(0)
    # Later rounds: contributions replaced, first_seen kept, connections that come and go.
    for round_ in (1, 2):
        for host in range(round_, HOSTS, 3):
            live.apply(live.topology, fleet.report(host, START + 15 * round_))
        live.topology.publish(0)
    return live


def exported(topology: Topology) -> list[tuple[str, dict]]:
    """Every agent's export as the data dir keeps it (through JSON)."""
    return [(agent, orjson.loads(orjson.dumps(topology.export_agent(agent)))) for agent in topology.agents()]


def agent_by_agent(agents: list[tuple[str, dict]]) -> Topology:
    restored = Topology()
    for agent, data in agents:
        restored.import_agent(agent, data)
    restored.publish(0)
    return restored


def in_bulk(agents: list[tuple[str, dict]]) -> Topology:
    restored = Topology()
    restored.import_agents(agents)
    restored.publish(0)
    return restored


def published(topology: Topology) -> dict:
    """What readers see: every level with externals each and grouped, two hosts' views, every export."""
    views: dict = {}
    for level in LEVELS:
        for external in EXTERNALS:
            views[f"{level}/{external}"] = orjson.loads(topology.snapshot_json(level, None, external))
        for host in ("sim-host-0", "impostor"):
            views[f"{level}/{host}"] = orjson.loads(topology.snapshot_json(level, host))
    for view in views.values():
        view.pop("seq")  # the live topology published more versions
    views["exports"] = {agent: topology.export_agent(agent) for agent in topology.agents()}
    return views


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet(HOSTS, seed=5, processes=30, containers=3, connections=60)


def test_the_fleet_has_what_a_restore_must_keep(fleet):
    live = build_live(fleet).topology
    nodes = orjson.loads(live.snapshot_json())["nodes"]
    exports = [data for _agent, data in exported(live)]
    assert any(node["type"] == "container" for node in nodes.values())
    assert any(node["type"] == "external" for node in nodes.values())
    assert any(node["first_seen"] != node["last_seen"] for node in nodes.values())
    assert any(data.get("claims") for data in exports)  # contested addresses and their claims' order


def test_bulk_import_publishes_what_importing_agent_by_agent_publishes(fleet):
    live = build_live(fleet).topology
    agents = exported(live)
    bulk, incremental = in_bulk(agents), agent_by_agent(agents)
    for level in LEVELS:
        for external in EXTERNALS:
            assert bulk.snapshot_json(level, None, external) == incremental.snapshot_json(level, None, external)
    assert bulk.counts() == incremental.counts()
    for section in ("nodes", "edges"):  # a snapshot's dicts in the same order
        assert list(bulk.snapshot()[section]) == list(incremental.snapshot()[section])
    assert published(bulk) == published(incremental) == published(live)


def test_bulk_import_in_reverse_order_publishes_the_same(fleet):
    agents = exported(build_live(fleet).topology)
    assert published(in_bulk(agents[::-1])) == published(agent_by_agent(agents[::-1]))


def test_after_a_bulk_import_live_changes_give_what_they_give_the_live_topology(fleet):
    live = build_live(fleet)
    agents = exported(live.topology)
    restored = [in_bulk(agents), agent_by_agent(agents)]
    order = live.order
    for topology in (live.topology, *restored):
        live.order = order
        # New reports (connections re-resolved against the imported indexes), the impostor leaving and
        # coming back with a later claim, a host gone entirely.
        for host in (0, 4, 7):
            live.apply(topology, fleet.report(host, START + 45))
        topology.remove_agent("impostor")
        topology.remove_agent("sim-host-5")
        topology.publish(0)
        live.apply(topology, impostor(fleet, START + 46))
        topology.publish(0)
    assert published(restored[0]) == published(restored[1]) == published(live.topology)


def test_an_agent_that_cannot_be_imported_is_reported_and_the_others_are_imported(fleet):
    agents = exported(build_live(fleet).topology)
    broken = [
        (agent, {"sections": [{"section": "host_info"}]} if agent == "sim-host-3" else data) for agent, data in agents
    ]
    failed: list[str] = []
    restored = Topology()
    restored.import_agents(broken, on_error=lambda agent, exc: failed.append(agent))
    restored.publish(0)
    assert failed == ["sim-host-3"]
    assert restored.agents() == sorted(agent for agent, _data in agents if agent != "sim-host-3")
    with pytest.raises(KeyError):
        Topology().import_agents(broken)
