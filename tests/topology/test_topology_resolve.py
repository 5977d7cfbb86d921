"""Connection resolution: direction, listeners, address owners, loopback, externals, dedupe, updates."""

from __future__ import annotations

import orjson

from orchestrator.topology import Topology
from tests.topology.support import (
    C1,
    conn,
    host_a,
    host_b,
    host_c,
    listen,
    merge,
    proc,
    scenario,
    stamp,
)


def edges_of(topology) -> dict:
    topology.publish(0)
    return topology.snapshot()["edges"]


def test_connection_to_a_wildcard_listener_on_another_host_resolves_to_its_process():
    edge = edges_of(scenario(Topology()))["process:host-a:200->process:host-b:500"]
    assert (edge["protocol"], edge["ports"], edge["connections"]) == ("tcp", [5432], 1)


def test_both_ends_reporting_one_connection_make_one_edge_with_one_connection():
    edges = edges_of(scenario(Topology()))
    assert [e for e in edges if e.endswith("process:host-b:500")] == [
        "external:10.0.0.9->process:host-b:500",
        "process:host-a:200->process:host-b:500",
    ]
    assert edges["process:host-a:200->process:host-b:500"]["connections"] == 1


def test_loopback_resolves_within_the_reporting_host_and_is_deduped():
    edges = edges_of(scenario(Topology()))
    assert edges["process:host-a:300->process:host-a:200"]["ports"] == [9000]
    assert edges["process:host-a:300->process:host-a:200"]["connections"] == 1


def test_loopback_on_two_hosts_never_meets():
    topology = Topology()
    for order, name in enumerate(("x", "y")):
        merge(
            topology,
            {
                "agent_id": name,
                "hostname": name,
                "timestamp": "2025-10-13T00:00:00Z",
                "processes_info": {"processes": [proc(1, "srv"), proc(2, "cli")]},
                "network_info": {
                    "connections": [listen(1, "127.0.0.1", 9000), conn(2, ("127.0.0.1", 41000), ("127.0.0.1", 9000))]
                },
            },
            order,
        )
    edges = edges_of(topology)
    assert set(edges) == {"process:x:2->process:x:1", "process:y:2->process:y:1"}


def test_reporter_listening_on_the_local_port_is_the_server():
    edges = edges_of(scenario(Topology()))
    assert "external:10.0.0.9->process:host-b:500" in edges  # reported by the server only


def test_unowned_address_is_an_external_node():
    topology = scenario(Topology())
    edges = edges_of(topology)
    assert edges["process:host-a:200->external:8.8.8.8"]["ports"] == [443]
    external = topology.snapshot()["nodes"]["external:8.8.8.8"]
    assert (external["type"], external["host"], external["parent"], external["name"]) == (
        "external",
        None,
        None,
        "8.8.8.8",
    )
    assert external["agent_ids"] == ["agent-a"]


def test_owned_address_without_a_listener_resolves_to_the_host():
    assert "process:host-a:200->host:host-c" in edges_of(scenario(Topology()))


def test_container_address_resolves_to_the_listening_process_or_the_container():
    edges = edges_of(scenario(Topology()))
    assert edges["process:host-c:700->process:host-a:100"]["ports"] == [80]
    assert edges[f"process:host-c:700->container:{C1}"]["ports"] == [9999]


def test_address_claimed_by_several_other_hosts_resolves_to_the_first_claimant():
    # Owner wins (issue 16 #9): 172.17.0.1 was host-a's before host-b claimed it too; nothing listens on 8000.
    assert "process:host-c:700->host:host-a" in edges_of(scenario(Topology()))
    topology = Topology()
    merge(topology, host_b(0), 0)
    merge(topology, host_a(0), 1)
    merge(topology, host_c(0), 2)
    assert "process:host-c:700->host:host-b" in edges_of(topology)


def test_shared_address_owned_by_the_reporting_host_resolves_there():
    topology = scenario(Topology())
    body = host_a(1)
    body["network_info"]["connections"].append(conn(300, ("172.17.0.1", 42000), ("172.17.0.1", 8080)))
    body["network_info"]["connections"].append(listen(200, "0.0.0.0", 8081))
    merge(topology, body, 9)
    # 172.17.0.1 is host-a's own: resolved on host-a (no listener on 8080 at that address -> the host).
    assert "process:host-a:300->host:host-a" in edges_of(topology)


def test_udp_socket_without_remote_listens_and_protocol_is_in_the_edge_id():
    edge = edges_of(scenario(Topology()))["process:host-c:700->process:host-a:200/udp"]
    assert (edge["protocol"], edge["ports"]) == ("udp", [53])


def test_connection_of_an_unknown_pid_resolves_to_the_host():
    topology = Topology()
    merge(topology, host_b(1), 0)
    body = host_c(1)
    body["network_info"]["connections"] = [
        conn(None, ("10.0.0.3", 1234), ("10.0.0.2", 5432)),
        conn(12345, ("10.0.0.3", 1235), ("10.0.0.2", 5432)),
    ]
    merge(topology, body, 1)
    edge = edges_of(topology)["host:host-c->process:host-b:500"]
    assert edge["connections"] == 2 and edge["ports"] == [5432]


def test_a_listener_appearing_on_another_host_re_resolves_the_connection():
    topology = Topology()
    merge(topology, host_a(1), 0)
    merge(topology, host_c(1, network_info={"connections": [conn(700, ("10.0.0.3", 1), ("10.0.0.1", 7000))]}), 1)
    assert "process:host-c:700->host:host-a" in edges_of(topology)
    body = host_a(2)
    body["network_info"]["connections"].append(listen(300, "0.0.0.0", 7000))
    merge(topology, body, 2)
    edges = edges_of(topology)
    assert "process:host-c:700->process:host-a:300" in edges and "process:host-c:700->host:host-a" not in edges
    merge(topology, host_a(3), 3)  # the listener is gone again
    assert "process:host-c:700->host:host-a" in edges_of(topology)


def test_an_address_owner_disappearing_turns_the_end_external():
    topology = scenario(Topology())
    assert "process:host-a:200->host:host-c" in edges_of(topology)
    merge(topology, host_c(1, host_info={"ip_addresses": []}), 9)
    edges = edges_of(topology)
    assert "process:host-a:200->external:10.0.0.3" in edges
    assert "process:host-a:200->host:host-c" not in edges


def test_a_process_vanishing_moves_its_connections_to_the_host():
    topology = scenario(Topology())
    body = host_b(1)
    body["processes_info"]["processes"] = []
    merge(topology, body, 9)
    edges = edges_of(topology)
    assert "process:host-a:200->host:host-b" in edges
    assert "process:host-a:200->process:host-b:500" not in edges


def test_client_end_seen_only_by_the_server_resolves_to_the_owning_host():
    topology = Topology()
    merge(topology, host_a(1, network_info={"connections": []}), 0)
    merge(topology, host_b(1), 1)
    assert "host:host-a->process:host-b:500" in edges_of(topology)


def test_ipv4_mapped_addresses_and_tcp6_are_normalised():
    topology = Topology()
    merge(topology, host_b(1), 0)
    merge(
        topology,
        host_c(1, network_info={"connections": [conn(700, ("::ffff:10.0.0.3", 1), ("::ffff:10.0.0.2", 5432), "tcp6")]}),
        1,
    )
    edge = edges_of(topology)["process:host-c:700->process:host-b:500"]
    assert edge["protocol"] == "tcp"


def test_re_reports_that_only_refresh_connections_match_a_full_re_resolution():
    from orchestrator.contract.models import Report
    from orchestrator.probe.fleet import Fleet
    from tests.topology.support import merge_parsed

    fleet, topology = Fleet(12, seed=3), Topology()
    rounds = [range(12), [3, 1, 4], [5, 9, 2, 6], [0, 7, 1], [8, 2, 11, 3]]
    order = 0
    for index, hosts in enumerate(rounds):
        for host in hosts:
            order += 1
            # Out-of-order timestamps across agents: the newest record of a connection changes hands.
            now = 1_760_000_000.0 + 15 * index + (host % 3) * 0.01 - order * 0.001
            merge_parsed(topology, Report.model_validate_json(fleet.report_bytes(host, now)), order)
        topology.publish(0)
    # Resolved from scratch: every agent exported and imported into an empty topology (a restore resolves
    # every connection once, after the last agent).
    from_scratch = Topology()
    from_scratch.import_agents([(agent, topology.export_agent(agent)) for agent in topology.agents()])
    from_scratch.publish(0)
    assert orjson.loads(from_scratch.snapshot_json())["edges"] == orjson.loads(topology.snapshot_json())["edges"]


def _host(hostname: str, ip: str, connections=()) -> dict:
    return {
        "agent_id": "agent-" + hostname.replace(">", "").replace("/", "-"),
        "hostname": hostname,
        "timestamp": stamp(1),
        "host_info": {"ip_addresses": [ip]},
        "network_info": {"connections": list(connections)},
    }


def test_hostnames_with_arrows_colons_and_slashes_never_merge_two_connections_into_one_edge():
    # Issue 16 (Low): "host:x" -> "host:y->host:z" and "host:x->host:y" -> "host:z" were both the edge
    # "host:x->host:y->host:z" (one edge, two connections); a tcp edge to host "q/udp" was the udp edge to "q".
    topology = Topology()
    for order, body in enumerate(
        [
            _host("x", "10.1.0.1", [conn(None, ("10.1.0.1", 40000), ("10.1.0.2", 80))]),
            _host("y->host:z", "10.1.0.2"),
            _host("x->host:y", "10.1.0.3", [conn(None, ("10.1.0.3", 40001), ("10.1.0.4", 80))]),
            _host("z", "10.1.0.4"),
            _host("p", "10.1.0.5", [conn(None, ("10.1.0.5", 40002), ("10.1.0.6", 80))]),
            _host("q/udp", "10.1.0.6"),
            _host("r", "10.1.0.7", [conn(None, ("10.1.0.7", 40003), ("10.1.0.8", 53), "udp", "")]),
            _host("q", "10.1.0.8"),
        ]
    ):
        merge(topology, body, order)
    topology.publish(0)
    edges = topology.snapshot()["edges"]
    ends = sorted((edge["source"], edge["target"], edge["protocol"], edge["connections"]) for edge in edges.values())
    assert ends == [
        ("host:p", "host:q/udp", "tcp", 1),
        ("host:r", "host:q", "udp", 1),
        ("host:x", "host:y->host:z", "tcp", 1),
        ("host:x->host:y", "host:z", "tcp", 1),
    ]
    assert all(edge_id == edge["id"] for edge_id, edge in edges.items())
    assert "host:r->host:q/udp" in edges  # ordinary names keep the documented src->dst form


def test_one_connection_reported_with_and_without_a_pid_still_resolves():
    # A real host can list one socket twice, once with its process and once without (no permission to see
    # the owner): the records of one connection then differ only by pid, one of them None.
    topology = Topology()
    body = host_a()
    socket = conn(200, ("10.0.0.1", 40000), ("10.0.0.2", 5432))
    body["network_info"]["connections"] += [socket, {**socket, "pid": None}]
    merge(topology, body, order=1)
    merge(topology, host_b(), order=2)
    edges = edges_of(topology)  # resolved (it used to raise inside the merger and leave the edge out)
    assert [e for e in edges if e.endswith("->process:host-b:500") and "host-a" in e]
