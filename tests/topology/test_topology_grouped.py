"""``external=group``: public external addresses folded into one ``external:internet`` node, edges rolled up
onto it, private addresses kept one node each; every level and host filter, diffs that replay to the
snapshot, and a view first read mid-stream equal to one maintained all along."""

from __future__ import annotations

import random

import pytest

from orchestrator.topology import INTERNET, LEVELS, Topology
from tests.topology.support import apply_diff, conn, host_a, listen, merge, proc, scenario, stamp

PUBLIC = [("8.8.8.8", 443), ("1.1.1.1", 443), ("1.1.1.1", 80), ("2001:4860::8888", 443)]
NOT_PUBLIC = [
    ("192.168.1.5", 80),  # private
    ("100.64.1.1", 22),  # CGNAT
    ("169.254.169.254", 80),  # link-local
    ("fd00::5", 443),  # ULA
    ("fe80::1", 8080),  # IPv6 link-local
]


def host_d(second=0, public=PUBLIC, not_public=NOT_PUBLIC, inbound=True, udp=True):
    """A host whose process 800 talks to the internet and to unprobed internal services."""
    local = ("10.0.0.4", 0)
    connections = [listen(800, "0.0.0.0", 8443)]
    for index, remote in enumerate([*public, *not_public]):
        connections.append(conn(800, (local[0], 41000 + index), remote))
    if inbound:
        connections.append(conn(800, ("10.0.0.4", 8443), ("9.9.9.9", 50000)))  # a client on the internet
    if udp:
        connections.append(conn(800, ("10.0.0.4", 42000), ("203.0.113.5", 53), "udp", ""))
    return {
        "agent_id": "agent-d",
        "hostname": "host-d",
        "timestamp": stamp(second),
        "host_info": {"ip_addresses": ["10.0.0.4"]},
        "processes_info": {"processes": [proc(800, "proxy"), proc(801, "idle")]},
        "network_info": {"connections": connections},
    }


def fleet() -> Topology:
    topology = scenario(Topology())
    merge(topology, host_d(), 5)
    topology.publish(0)
    return topology


def test_public_externals_become_one_internet_node_and_their_edges_roll_up():
    topology = fleet()
    each = topology.snapshot("process")
    grouped = topology.snapshot("process", external="group")
    internet = grouped["nodes"][INTERNET]
    assert (internet["type"], internet["name"], internet["host"], internet["parent"]) == (
        "external",
        "Internet",
        None,
        None,
    )
    assert internet["agent_ids"] == ["agent-a", "agent-d"]
    public_ids = {f"external:{ip}" for ip in ("8.8.8.8", "1.1.1.1", "2001:4860::8888", "9.9.9.9", "203.0.113.5")}
    assert public_ids <= set(each["nodes"]) and not public_ids & set(grouped["nodes"])
    assert internet["last_seen"] == max(each["nodes"][n]["last_seen"] for n in public_ids)
    out = grouped["edges"][f"process:host-d:800->{INTERNET}"]
    assert (out["source"], out["target"], out["connections"], out["ports"]) == (
        "process:host-d:800",
        INTERNET,
        4,
        [80, 443],
    )
    assert grouped["edges"][f"process:host-d:800->{INTERNET}/udp"]["ports"] == [53]
    assert grouped["edges"][f"{INTERNET}->process:host-d:800"]["ports"] == [8443]
    assert f"process:host-a:200->{INTERNET}" in grouped["edges"]
    assert all(e["source"] in grouped["nodes"] and e["target"] in grouped["nodes"] for e in grouped["edges"].values())


def test_private_loopback_link_local_cgnat_and_ula_addresses_stay_one_node_each():
    grouped = fleet().snapshot("process", external="group")
    for ip, _port in NOT_PUBLIC:
        assert f"external:{ip}" in grouped["nodes"]
        assert f"process:host-d:800->external:{ip}" in grouped["edges"]
    assert "external:10.0.0.9" in grouped["nodes"]  # host-b's unprobed client


@pytest.mark.parametrize("level", LEVELS)
def test_grouping_combines_with_every_level_and_the_host_filter(level):
    topology = fleet()
    grouped = topology.snapshot(level, external="group")
    assert INTERNET in grouped["nodes"]
    assert not any(node_id.startswith("external:8.") for node_id in grouped["nodes"])
    # A host process collapses into its host at the container level too.
    source = {"process": "process:host-d:800", "container": "host:host-d", "host": "host:host-d"}[level]
    assert grouped["edges"][f"{source}->{INTERNET}"]["connections"] == 4
    only_d = topology.snapshot(level, "host-d", external="group")
    assert f"{source}->{INTERNET}" in only_d["edges"] and INTERNET not in only_d["nodes"]
    assert all(node["host"] == "host-d" for node in only_d["nodes"].values())


def test_unknown_external_value_is_an_error():
    with pytest.raises(ValueError):
        fleet().snapshot("process", external="all")


def test_the_internet_node_goes_when_its_last_public_peer_goes():
    topology = fleet()
    topology.snapshot("host", external="group")
    merge(topology, host_a(1, network_info={"connections": []}), 20)
    merge(topology, host_d(1, public=[], inbound=False, udp=False), 21)
    publication = topology.publish(0)
    diff = publication.diff("host", external="group")
    assert INTERNET in diff["nodes"]["removed"]
    assert INTERNET not in topology.snapshot("host", external="group")["nodes"]
    assert "external:192.168.1.5" in topology.snapshot("host", external="group")["nodes"]


def _mutations():
    rng = random.Random(11)
    bodies = []
    for second in range(1, 30):
        choice = rng.randrange(4)
        if choice == 0:
            public = rng.sample(PUBLIC, rng.randrange(len(PUBLIC) + 1))
            body = host_d(second, public=public, inbound=rng.random() < 0.5, udp=rng.random() < 0.5)
        elif choice == 1:
            body = host_d(second, not_public=rng.sample(NOT_PUBLIC, rng.randrange(len(NOT_PUBLIC) + 1)))
        elif choice == 2:
            body = host_a(second) if rng.random() < 0.5 else host_a(second, network_info={"connections": []})
        else:
            body = ("remove", rng.choice(["agent-a", "agent-d"]))
        bodies.append(body)
    return bodies


def _feed(topology, order, body):
    if isinstance(body, tuple):
        topology.remove_agent(body[1])
    else:
        merge(topology, body, order)
    if order % 4 == 0:
        merge(topology, host_d(order % 60), order * 10)
    return topology.publish(0)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("host", [None, "host-a", "host-d"])
def test_grouped_diffs_replay_to_the_grouped_snapshot_at_each_seq(level, host):
    topology = fleet()
    replayed = topology.snapshot(level, host, external="group")
    published = 0
    for order, body in enumerate(_mutations(), start=10):
        publication = _feed(topology, order, body)
        if publication is None:
            continue
        published += 1
        replayed = apply_diff(replayed, publication.diff(level, host, external="group"))
        expected = topology.snapshot(level, host, external="group")
        assert replayed["nodes"] == expected["nodes"] and replayed["edges"] == expected["edges"]
    assert published >= 10


@pytest.mark.parametrize("level", LEVELS)
def test_a_grouped_view_read_now_and_then_equals_one_maintained_all_along(level):
    maintained, lazy = fleet(), fleet()
    maintained.snapshot(level, external="group")
    for step, (order, body) in enumerate(enumerate(_mutations(), start=10)):
        publication = _feed(maintained, order, body)
        lazy_publication = _feed(lazy, order, body)
        if publication is not None:
            publication.diff(level, external="group")  # read at every seq: maintained incrementally
        if step % 5 == 4:
            # Read after idle publishes: the lazy view is built afresh from the base.
            assert lazy.snapshot(level, external="group") == maintained.snapshot(level, external="group")
            if lazy_publication is not None:
                assert lazy_publication.diff(level, external="group") == publication.diff(level, external="group")
