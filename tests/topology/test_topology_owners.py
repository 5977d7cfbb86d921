"""Owner wins (issue 16 #9): an address or a container another host owns keeps its owner; the conflicting
claim is ignored for that part of the report, reported to ``on_conflict``, and the owner survives a restore."""

from __future__ import annotations

import orjson

from orchestrator.topology import Topology
from tests.topology.support import C1, conn, host_a, listen, merge, proc, stamp


def victim(second=0, order=0):
    return {
        "agent_id": "agent-db",
        "hostname": "db",
        "timestamp": stamp(second),
        "host_info": {"ip_addresses": ["10.0.0.6"]},
        "docker_info": {"containers": [{"id": C1, "name": "pg", "ip_addresses": ["172.18.0.5"]}]},
        "processes_info": {"processes": [proc(5432, "postgres", C1)]},
        "network_info": {"connections": [listen(5432, "0.0.0.0", 5432)]},
    }


def client(second=0):
    return {
        "agent_id": "agent-app",
        "hostname": "app",
        "timestamp": stamp(second),
        "host_info": {"ip_addresses": ["10.0.0.5"]},
        "processes_info": {"processes": [proc(5120, "api")]},
        "network_info": {
            "connections": [
                conn(5120, ("10.0.0.5", 43512), ("10.0.0.6", 5432)),
                conn(5120, ("10.0.0.5", 43513), ("172.18.0.5", 5432)),
            ]
        },
    }


def attacker(second=0, **sections):
    return {"agent_id": "agent-evil", "hostname": "evil", "timestamp": stamp(second), **sections}


def published(topology) -> dict:
    topology.publish(0)
    return topology.snapshot()


def recording(topology) -> list:
    calls: list = []
    topology.on_conflict = lambda *call: calls.append(call)
    return calls


def test_an_address_another_host_owns_keeps_its_owner_and_the_claim_is_reported_once():
    topology = Topology()
    calls = recording(topology)
    merge(topology, victim(), 1)
    merge(topology, client(), 2)
    stolen = {"ip_addresses": ["10.0.0.6", "172.18.0.5", "10.6.6.6"]}
    merge(topology, attacker(1, host_info=stolen), 3)
    merge(topology, attacker(2, host_info=stolen), 4)  # the same claim again: not reported again
    edges = published(topology)["edges"]
    assert "process:app:5120->process:db:5432" in edges  # not external:10.0.0.6, not evil's
    assert f"process:app:5120->container:{C1}" not in edges  # the container's own address: still resolved
    assert sorted(calls) == [
        ("ip", "10.0.0.6", "agent-evil", "evil", "db"),
        ("ip", "172.18.0.5", "agent-evil", "evil", "db"),
    ]


def test_the_claimant_becomes_the_owner_once_the_owner_lets_the_address_go():
    topology = Topology()
    merge(topology, victim(), 1)
    merge(topology, client(), 2)
    merge(topology, attacker(1, host_info={"ip_addresses": ["10.0.0.6"]}), 3)
    body = victim(1)
    body["host_info"] = {"ip_addresses": ["10.0.0.7"]}  # the victim moved to another address
    merge(topology, body, 4)
    assert "process:app:5120->host:evil" in published(topology)["edges"]


def test_a_container_another_host_places_stays_there_and_the_claimants_process_stays_home():
    topology = Topology()
    calls = recording(topology)
    merge(topology, victim(), 1)
    fake = {"processes": [proc(1, "evil", C1), proc(2, "evil-too", container_id=C1)]}
    merge(topology, attacker(1, processes_info=fake, docker_info={"containers": [{"id": C1, "name": "mine"}]}), 2)
    merge(topology, attacker(2, processes_info=fake), 3)  # repeated: reported once per claim
    nodes = published(topology)["nodes"]
    container = nodes[f"container:{C1}"]
    assert (container["parent"], container["host"], container["name"]) == ("host:db", "db", "pg")
    assert container["agent_ids"] == ["agent-db"]
    assert nodes["process:evil:1"]["parent"] == "host:evil" and nodes["process:evil:2"]["parent"] == "host:evil"
    assert calls == [("container", C1, "agent-evil", "evil", "db")] * 2  # docker_info and processes_info


def test_two_agents_on_one_host_share_its_containers_and_addresses():
    topology = Topology()
    calls = recording(topology)
    merge(topology, victim(), 1)
    second_probe = {
        "agent_id": "agent-db-procs",
        "hostname": "db",
        "timestamp": stamp(1),
        "host_info": {"ip_addresses": ["10.0.0.6"]},
        "processes_info": {"processes": [proc(77, "sidecar", C1)]},
    }
    merge(topology, second_probe, 2)
    nodes = published(topology)["nodes"]
    assert nodes[f"container:{C1}"]["agent_ids"] == ["agent-db", "agent-db-procs"]
    assert nodes["process:db:77"]["parent"] == f"container:{C1}"
    assert calls == []


def test_who_owns_a_contested_address_survives_export_and_import_in_any_order():
    live = Topology()
    merge(live, victim(), 1)
    merge(live, attacker(1, host_info={"ip_addresses": ["10.0.0.6"]}), 2)
    merge(live, victim(2), 3)  # the owner reports again: its claim is still the older one
    merge(live, attacker(3, host_info={"ip_addresses": ["10.0.0.6"]}), 4)
    merge(live, client(4), 5)
    exported = [(agent, orjson.loads(orjson.dumps(live.export_agent(agent)))) for agent in live.agents()]
    for agents in (exported, exported[::-1]):
        restored = Topology()
        restored.import_agents(agents)
        assert "process:app:5120->process:db:5432" in published(restored)["edges"]
        assert published(restored)["edges"] == published(live)["edges"]


def test_the_same_reports_give_the_same_owners_whatever_the_batching():
    # Owners are a function of the reports and their order only (cluster replicas build identical bytes).
    bodies = [victim(), attacker(1, host_info={"ip_addresses": ["10.0.0.6", "172.17.0.1"]}), host_a(2), client(3)]
    first, second = Topology(), Topology()
    for order, body in enumerate(bodies, 1):
        merge(first, body, order)
        merge(second, body, order)
        if order == 2:
            second.publish(0)
    assert {key: published(first)[key] for key in ("nodes", "edges")} == {
        key: published(second)[key] for key in ("nodes", "edges")
    }
    assert "process:app:5120->process:db:5432" in published(first)["edges"]
