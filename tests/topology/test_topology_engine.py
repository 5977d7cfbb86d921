"""The topology engine: node merge rules, section replacement, ordering, determinism, persistence."""

from __future__ import annotations

import orjson

from orchestrator.contract.times import format_rfc3339, parse_rfc3339
from orchestrator.topology import Contribution, NodeIn, Topology
from tests.topology.support import (
    C1,
    C2,
    drive,
    host_a,
    host_b,
    host_c,
    merge,
    proc,
    scenario,
    stamp,
)

NODE_FIELDS = ["id", "type", "name", "parent", "host", "agent_ids", "metadata", "metrics", "first_seen", "last_seen"]


def published(*bodies) -> Topology:
    topology = Topology()
    for order, body in enumerate(bodies):
        merge(topology, body, order)
    topology.publish(0)
    return topology


def test_nodes_have_the_contract_shape_ids_and_parents():
    topology = scenario(Topology())
    topology.publish(0)
    nodes = topology.snapshot()["nodes"]
    for node in nodes.values():
        assert list(node) == NODE_FIELDS
    assert nodes["host:host-a"]["parent"] is None
    assert nodes[f"container:{C1}"]["parent"] == "host:host-a"
    assert nodes["process:host-a:100"]["parent"] == f"container:{C1}"
    assert nodes["process:host-a:200"]["parent"] == "host:host-a"
    assert all(node["parent"] is None or node["parent"] in nodes for node in nodes.values())


def test_unknown_report_fields_become_metadata_and_numbers_metrics():
    nodes = published(host_a()).snapshot()["nodes"]
    host = nodes["host:host-a"]
    assert host["metadata"]["rack"] == "r1" and host["metadata"]["os"] == "linux"
    assert host["metadata"]["interfaces"] == [{"name": "eth0", "rx_bytes": 1, "tx_bytes": 2}]
    assert host["metrics"] == {"cpu_percent": 10.0}
    assert nodes[f"container:{C1}"]["metadata"]["image"] == "nginx"
    assert nodes[f"container:{C1}"]["metrics"] == {"cpu_percent": 1.5}
    assert nodes["process:host-a:200"]["metadata"] == {"user": "svc"}


def test_container_seen_only_through_a_cgroup_is_a_stub_node_under_its_host():
    node = published(host_a()).snapshot()["nodes"][f"container:{C2}"]
    assert (node["type"], node["parent"], node["host"]) == ("container", "host:host-a", "host-a")
    assert node["name"] == C2[:12]


RECEIVED = parse_rfc3339("2026-10-13T00:00:00Z")  # the server's clock: a year after the probes' timestamps


def test_first_and_last_seen_come_from_receipt_times():
    topology = Topology()
    merge(topology, host_a(1), 0, RECEIVED + 1)
    merge(topology, host_a(5), 1, RECEIVED + 5)
    topology.publish(999_999_999)
    node = topology.snapshot()["nodes"]["process:host-a:200"]
    assert node["first_seen"] == "2026-10-13T00:00:01.000Z"
    assert node["last_seen"] == "2026-10-13T00:00:05.000Z"
    assert topology.snapshot()["timestamp"] == "2026-10-13T00:00:05.000Z"


def test_contribute_without_seen_falls_back_to_the_report_timestamp():
    topology = Topology()
    topology.contribute("a", "h", "s", _epoch(1), 0, Contribution(nodes=(NodeIn("x:1"),)))
    topology.contribute("a", "h", "s", _epoch(5), 1, Contribution(nodes=(NodeIn("x:1"),)))
    topology.publish(0)
    node = topology.snapshot()["nodes"]["x:1"]
    assert (node["first_seen"], node["last_seen"]) == (format_rfc3339(_epoch(1)), format_rfc3339(_epoch(5)))


def test_a_report_from_a_skewed_clock_is_last_seen_when_received():
    # The probes' clocks are a year behind the server's: liveness must not say "a year ago".
    topology = Topology()
    merge(topology, host_a(1), 0, RECEIVED)
    merge(topology, host_b(1), 1, RECEIVED + 5)
    topology.publish(0)
    snapshot = topology.snapshot()
    received, later = format_rfc3339(RECEIVED), format_rfc3339(RECEIVED + 5)
    for node_id in ("host:host-a", f"container:{C1}", "process:host-a:200", "external:8.8.8.8"):
        node = snapshot["nodes"][node_id]
        assert (node["first_seen"], node["last_seen"]) == (received, received), node_id
    assert snapshot["nodes"]["process:host-b:500"]["last_seen"] == later
    assert snapshot["edges"]["process:host-a:200->external:8.8.8.8"]["last_seen"] == received
    # Reported by both ends: last seen at the later receipt.
    assert snapshot["edges"]["process:host-a:200->process:host-b:500"]["last_seen"] == later
    assert snapshot["timestamp"] == later
    # The same sockets again (the engine's re-report fast path): edges and externals move with the receipt.
    merge(topology, host_a(2), 2, RECEIVED + 9)
    topology.publish(0)
    snapshot = topology.snapshot()
    again = format_rfc3339(RECEIVED + 9)
    assert snapshot["edges"]["process:host-a:200->external:8.8.8.8"]["last_seen"] == again
    assert snapshot["edges"]["process:host-a:200->process:host-b:500"]["last_seen"] == again
    assert snapshot["nodes"]["external:8.8.8.8"]["last_seen"] == again
    assert snapshot["nodes"]["external:8.8.8.8"]["first_seen"] == received
    assert snapshot["nodes"]["process:host-a:200"]["first_seen"] == received


def test_the_newer_report_wins_the_fields_even_when_received_earlier():
    topology = Topology()
    newer = host_a(9, agent_id="agent-a2")
    newer["docker_info"]["containers"][0]["name"] = "web-renamed"
    merge(topology, newer, 0, RECEIVED)
    merge(topology, host_a(1), 1, RECEIVED + 5)  # an older report, received later
    topology.publish(0)
    node = topology.snapshot()["nodes"][f"container:{C1}"]
    assert node["name"] == "web-renamed" and node["agent_ids"] == ["agent-a", "agent-a2"]
    assert node["first_seen"] == format_rfc3339(RECEIVED)
    assert node["last_seen"] == format_rfc3339(RECEIVED + 5)


def test_receipt_time_never_breaks_ties():
    topology = Topology()
    high = Contribution(nodes=(NodeIn("x:1", type="x", name="high"),), priority=5)
    low = Contribution(nodes=(NodeIn("x:1", type="x", name="low"),), priority=0)
    topology.contribute("a", "h", "s_high", 1.0, 0, high, seen=100.0)
    topology.contribute("a", "h", "s_low", 1.0, 0, low, seen=200.0)
    topology.publish(0)
    node = topology.snapshot()["nodes"]["x:1"]
    assert node["name"] == "high" and node["last_seen"] == format_rfc3339(200.0)


def test_vanished_process_container_and_connection_are_gone_at_once():
    topology = published(host_a(1), host_b(1))
    body = host_a(2)
    body["processes_info"]["processes"] = [p for p in body["processes_info"]["processes"] if p["pid"] != 300]
    body["docker_info"]["containers"] = []
    body["processes_info"]["processes"] = [p for p in body["processes_info"]["processes"] if p["pid"] != 100]
    body["network_info"]["connections"] = body["network_info"]["connections"][:4]
    merge(topology, body, 5)
    topology.publish(0)
    snapshot = topology.snapshot()
    assert "process:host-a:300" not in snapshot["nodes"]
    assert f"container:{C1}" not in snapshot["nodes"]
    assert "external:8.8.8.8" not in snapshot["nodes"]
    # host-b still reports its end of the postgres connection: the edge stays, from host-b's view.
    assert "external:10.0.0.1" not in snapshot["nodes"]
    assert "host:host-a->process:host-b:500" in snapshot["edges"]


def test_a_section_absent_from_a_report_leaves_earlier_data_alone():
    topology = published(
        host_a(1),
        {
            "agent_id": "agent-a",
            "hostname": "host-a",
            "timestamp": stamp(2),
            "host_info": {"ip_addresses": ["10.0.0.1"]},
        },
    )
    assert "process:host-a:200" in topology.snapshot()["nodes"]
    assert "process:host-a:200->external:8.8.8.8" in topology.snapshot()["edges"]


def test_an_older_report_is_ignored():
    topology = Topology()
    merge(topology, host_a(5), 0)
    older = host_a(3)
    older["processes_info"]["processes"] = [proc(999, "ghost")]
    merge(topology, older, 1)
    topology.publish(0)
    nodes = topology.snapshot()["nodes"]
    assert "process:host-a:999" not in nodes and "process:host-a:200" in nodes


def test_same_timestamp_later_order_wins():
    topology = Topology()
    merge(topology, host_a(5), 0)
    newer = host_a(5)
    newer["processes_info"]["processes"] = [proc(200, "renamed")]
    merge(topology, newer, 1)
    topology.publish(0)
    assert topology.snapshot()["nodes"]["process:host-a:200"]["name"] == "renamed"


def test_overlapping_agents_carry_both_ids_and_newest_field_wins():
    second = host_a(9, agent_id="agent-a2")
    second["docker_info"]["containers"][0]["name"] = "web-renamed"
    topology = published(host_a(1), second)
    node = topology.snapshot()["nodes"][f"container:{C1}"]
    assert node["agent_ids"] == ["agent-a", "agent-a2"] and node["name"] == "web-renamed"
    merge(topology, host_a(10), 2)  # agent-a is now the newest word on the name
    topology.publish(0)
    assert topology.snapshot()["nodes"][f"container:{C1}"]["name"] == "web"
    topology.remove_agent("agent-a")
    topology.publish(0)
    node = topology.snapshot()["nodes"][f"container:{C1}"]
    assert node["agent_ids"] == ["agent-a2"] and node["name"] == "web-renamed"


def test_a_plugin_section_reparents_containers_under_pods_by_priority():
    topology = published(host_a(1))
    pod = Contribution(
        nodes=(
            NodeIn("pod:default/web", type="pod", name="web", parent="host:host-a", host="host-a"),
            NodeIn(f"container:{C1}", parent="pod:default/web"),
        ),
        priority=10,
    )
    topology.contribute("agent-a", "host-a", "kubernetes_info", _epoch(1), 0, pod)
    topology.publish(0)
    nodes = topology.snapshot()["nodes"]
    assert nodes["pod:default/web"]["type"] == "pod"
    assert nodes[f"container:{C1}"]["parent"] == "pod:default/web"
    assert nodes[f"container:{C1}"]["name"] == "web"  # docker's fields it did not set survive
    host_view = topology.snapshot("host")["nodes"]
    assert "pod:default/web" not in host_view and "host:host-a" in host_view
    topology.contribute("agent-a", "host-a", "kubernetes_info", _epoch(2), 1, None)
    topology.publish(0)
    assert topology.snapshot()["nodes"][f"container:{C1}"]["parent"] == "host:host-a"


def _epoch(second: int) -> float:
    from orchestrator.contract.times import parse_rfc3339

    return parse_rfc3339(stamp(second))


def test_priority_breaks_exact_ties_only():
    topology = Topology()
    low = Contribution(nodes=(NodeIn("x:1", type="x", name="low"),), priority=0)
    high = Contribution(nodes=(NodeIn("x:1", type="x", name="high"),), priority=5)
    topology.contribute("a", "h", "s_high", 1.0, 0, high)
    topology.contribute("a", "h", "s_low", 1.0, 0, low)  # registered later, but lower priority
    topology.publish(0)
    assert topology.snapshot()["nodes"]["x:1"]["name"] == "high"
    topology.contribute("a", "h", "s_low", 2.0, 1, low)  # newer beats priority
    topology.publish(0)
    assert topology.snapshot()["nodes"]["x:1"]["name"] == "low"


def test_publish_returns_none_and_keeps_seq_when_nothing_changed():
    topology = Topology()
    assert topology.seq == 0 and topology.publish(0) is None
    scenario(topology)
    publication = topology.publish(0)
    assert publication.seq == 1 == topology.seq
    assert topology.publish(0) is None and topology.seq == 1
    scenario(topology)  # the same reports again, same timestamps: nothing to publish
    assert topology.publish(0) is None


def test_remove_agent_drops_its_nodes_and_edges():
    topology = scenario(Topology())
    topology.remove_agent("agent-c")
    topology.publish(0)
    snapshot = topology.snapshot()
    assert topology.agents() == ["agent-a", "agent-b"]
    assert not any("host-c" in node_id for node_id in snapshot["nodes"])
    assert "external:172.17.0.1" not in snapshot["nodes"]
    assert not any(edge["source"].startswith("process:host-c") for edge in snapshot["edges"].values())


def test_counts_describe_the_published_state():
    topology = scenario(Topology())
    assert topology.counts()["nodes"] == 0
    topology.publish(0)
    assert topology.counts() == {"nodes": 13, "edges": 9, "hosts": 3, "containers": 2, "processes": 6, "externals": 2}


def test_same_reports_in_different_batches_publish_identical_bytes():
    reports = [host_a(1), host_b(1), host_c(2), host_a(3), host_b(4)]
    reports[3]["processes_info"]["processes"].pop()
    one = Topology()
    for order, body in enumerate(reports):
        merge(one, body, order)
        one.publish(1000 + order)
    other = Topology()
    for order, body in enumerate(reports):
        merge(other, body, order)
    other.publish(5)
    for level in ("process", "container", "host"):
        a, b = orjson.loads(one.snapshot_json(level)), orjson.loads(other.snapshot_json(level))
        assert (a["nodes"], a["edges"], a["timestamp"]) == (b["nodes"], b["edges"], b["timestamp"])
    # Same number of publishes, different points: identical bytes, seq included.
    third = Topology()
    for order, body in enumerate(reports):
        merge(third, body, order)
        if order in (0, 4):
            third.publish(7)
    fourth = Topology()
    for order, body in enumerate(reports):
        merge(fourth, body, order)
        if order in (2, 4):
            fourth.publish(99)
    assert third.snapshot_json() == fourth.snapshot_json()
    assert third.snapshot_json("host", "host-a") == fourth.snapshot_json("host", "host-a")


def test_snapshots_handed_out_never_change():
    topology = scenario(Topology(), second=1)
    topology.publish(0)
    held = topology.snapshot()
    frozen = orjson.dumps(held)
    node = held["nodes"]["process:host-a:200"]
    frozen_node = dict(node)
    merge(topology, host_a(5, processes_info={"processes": [proc(200, "changed")]}), 9)
    topology.remove_agent("agent-b")
    topology.publish(0)
    assert orjson.dumps(held) == frozen and node == frozen_node
    assert topology.snapshot()["nodes"]["process:host-a:200"]["name"] == "changed"


def test_snapshot_json_is_cached_per_seq():
    topology = scenario(Topology())
    topology.publish(0)
    first = topology.snapshot_json("container")
    assert topology.snapshot_json("container") is first
    assert orjson.loads(first)["seq"] == 1
    merge(topology, host_a(9), 9)
    topology.publish(0)
    assert orjson.loads(topology.snapshot_json("container"))["seq"] == 2


def test_export_import_round_trip_rebuilds_the_same_topology():
    topology = scenario(Topology())
    topology.publish(0)
    restored = Topology()
    for agent in topology.agents():
        exported = orjson.loads(orjson.dumps(topology.export_agent(agent)))
        restored.import_agent(agent, exported)
    restored.publish(0)
    assert restored.snapshot_json() == topology.snapshot_json()
    assert topology.export_agent("nobody") is None


def test_export_import_round_trips_receipt_times():
    topology = Topology()
    merge(topology, host_a(1), 0, RECEIVED + 1)
    merge(topology, host_c(2), 1, RECEIVED + 2)
    merge(topology, host_b(4), 2, RECEIVED + 4)
    merge(topology, host_a(5), 3, RECEIVED + 5)
    topology.publish(0)
    exported = {agent: orjson.loads(orjson.dumps(topology.export_agent(agent))) for agent in topology.agents()}
    assert {section["seen"] for section in exported["agent-a"]["sections"]} == {RECEIVED + 5}
    restored = Topology()
    for agent, data in exported.items():
        restored.import_agent(agent, data)
    restored.publish(0)
    for level in ("process", "container", "host"):
        assert restored.snapshot_json(level) == topology.snapshot_json(level)
    node = restored.snapshot()["nodes"]["process:host-a:200"]
    assert (node["first_seen"], node["last_seen"]) == (format_rfc3339(RECEIVED + 1), format_rfc3339(RECEIVED + 5))
    assert restored.snapshot()["nodes"]["external:8.8.8.8"]["first_seen"] == format_rfc3339(RECEIVED + 1)


def test_data_exported_without_receipt_times_imports_with_report_timestamps():
    topology = Topology()
    merge(topology, host_a(5), 0, RECEIVED)
    data = orjson.loads(orjson.dumps(topology.export_agent("agent-a")))
    for section in data["sections"]:
        del section["seen"]  # exported before receipt times were kept
    data["first_seen"] = {node_id: _epoch(5) for node_id in data["first_seen"]}  # report-based, as it was
    restored = Topology()
    restored.import_agent("agent-a", data)
    restored.publish(0)
    node = restored.snapshot()["nodes"]["process:host-a:200"]
    assert node["first_seen"] == node["last_seen"] == format_rfc3339(_epoch(5))
    assert restored.snapshot()["timestamp"] == format_rfc3339(_epoch(5))


def test_export_import_keeps_first_seen_across_several_reports():
    from tests.topology.support import conn

    topology = Topology()
    merge(topology, host_a(1), 0)
    merge(topology, host_c(2), 1)
    later = host_a(3)
    later["processes_info"]["processes"].append(proc(600, "late"))
    later["network_info"]["connections"].append(conn(600, ("10.0.0.1", 40009), ("1.2.3.4", 443)))
    merge(topology, later, 2)
    merge(topology, host_b(4), 3)
    merge(topology, host_a(5), 4)
    merge(topology, host_c(6), 5)
    topology.publish(0)
    assert orjson.loads(topology.snapshot_json())["nodes"]["process:host-a:200"]["first_seen"].endswith("01.000Z")
    restored = Topology()
    for agent in reversed(topology.agents()):
        restored.import_agent(agent, orjson.loads(orjson.dumps(topology.export_agent(agent))))
    restored.publish(0)
    for level in ("process", "container", "host"):
        for host in (None, "host-a", "host-c"):
            assert restored.snapshot_json(level, host) == topology.snapshot_json(level, host)


def big_fleet(topology, hosts=30):
    for order in range(hosts):
        merge(
            topology,
            {
                **host_a(),
                "agent_id": f"a{order}",
                "hostname": f"h{order}",
                "processes_info": {"processes": [proc(p, f"p{p}") for p in range(1, 200)]},
            },
            order,
        )


def test_publishing_in_slices_gives_the_same_version_as_publishing_at_once():
    whole, sliced = Topology(), Topology()
    big_fleet(whole)
    big_fleet(sliced)
    whole.publish(0)
    publication, yields = drive(sliced.publish_steps(0, slice_seconds=0.0))
    assert yields > 0 and publication.seq == whole.seq == 1
    for level in ("process", "container", "host"):
        assert sliced.snapshot_json(level) == whole.snapshot_json(level)


def test_a_sliced_publish_cut_short_publishes_nothing_and_loses_nothing():
    topology = Topology()
    big_fleet(topology)
    publication, _ = drive(topology.publish_steps(0, slice_seconds=0.0), stop_after=1)
    assert publication is None and topology.seq == 0 and topology.snapshot()["nodes"] == {}
    topology.publish(0)
    reference = Topology()
    big_fleet(reference)
    reference.publish(0)
    assert topology.snapshot_json() == reference.snapshot_json()
