"""Views (process / container / host, host filter) and diffs that replay to the snapshot."""

from __future__ import annotations

import random

import pytest

from orchestrator.topology import LEVELS, Contribution, NodeIn, Topology
from tests.topology.support import (
    C1,
    apply_diff,
    host_a,
    host_b,
    host_c,
    merge,
    proc,
    scenario,
)


@pytest.fixture
def topology():
    topology = scenario(Topology())
    topology.publish(0)
    return topology


def test_container_view_collapses_processes_into_their_container_or_host(topology):
    view = topology.snapshot("container")
    assert not any(node["type"] == "process" for node in view["nodes"].values())
    assert f"container:{C1}" in view["nodes"] and "external:8.8.8.8" in view["nodes"]
    edges = view["edges"]
    rolled = edges[f"host:host-c->container:{C1}"]
    assert (rolled["ports"], rolled["connections"]) == ([80, 9999], 2)
    assert "host:host-a->host:host-a" not in edges  # the loopback self-loop disappears


def test_host_view_keeps_hosts_and_externals_and_rolls_edges_up(topology):
    view = topology.snapshot("host")
    assert {node["type"] for node in view["nodes"].values()} == {"host", "external"}
    edges = view["edges"]
    assert (edges["host:host-c->host:host-a"]["ports"], edges["host:host-c->host:host-a"]["connections"]) == (
        [80, 8000, 9999],
        3,
    )
    assert edges["host:host-c->host:host-a/udp"]["ports"] == [53]
    assert "host:host-a->host:host-b" in edges and "external:10.0.0.9->host:host-b" in edges
    assert all(edge["source"] in view["nodes"] and edge["target"] in view["nodes"] for edge in edges.values())


def test_rolled_up_edge_keeps_the_newest_last_seen(topology):
    merge(topology, host_c(7), 9)
    topology.publish(0)
    assert topology.snapshot("host")["edges"]["host:host-c->host:host-a"]["last_seen"] == "2025-10-13T00:00:07.000Z"


def test_host_filter_keeps_that_hosts_nodes_and_edges_touching_them(topology):
    view = topology.snapshot("process", "host-b")
    assert set(view["nodes"]) == {"host:host-b", "process:host-b:500"}
    assert set(view["edges"]) == {"process:host-a:200->process:host-b:500", "external:10.0.0.9->process:host-b:500"}
    host_view = topology.snapshot("host", "host-c")
    assert set(host_view["nodes"]) == {"host:host-c"}
    assert "host:host-a->host:host-c" in host_view["edges"] and "host:host-c->host:host-a" in host_view["edges"]


def test_a_whole_view_taken_in_steps_is_the_snapshot_and_stays_as_taken(topology, monkeypatch):
    from orchestrator.topology import views

    monkeypatch.setattr(views, "COPY_ITEMS", 2)  # several steps even for this small topology
    for level in LEVELS:
        for external in ("each", "group"):
            steps = topology.snapshot_steps(level, external)
            taken = None
            while taken is None:
                try:
                    next(steps)
                except StopIteration as done:
                    taken = done.value
            assert taken == topology.snapshot(level, None, external)
            assert topology.snapshot(level, None, external) is taken  # the copy this seq serves
    before = topology.snapshot("host")
    kept = (dict(before["nodes"]), dict(before["edges"]))
    merge(topology, host_a(second=30, processes_info={"processes": [proc(1, "new-only")]}), order=90)
    topology.publish(30)
    assert topology.snapshot("host") is not before  # a new seq: a new copy
    assert (before["nodes"], before["edges"]) == kept  # a reader still sending it sees the version it took


def test_unknown_level_is_an_error(topology):
    with pytest.raises(ValueError):
        topology.snapshot("pod")


def test_reparenting_a_process_moves_its_rolled_up_edges(topology):
    body = host_a(1)
    body["processes_info"]["processes"][1] = proc(200, "app", C1)  # app now runs in the web container
    merge(topology, body, 9)
    topology.publish(0)
    edges = topology.snapshot("container")["edges"]
    assert f"container:{C1}->host:host-b" in edges and "host:host-a->host:host-b" not in edges


def _mutations():
    """Reports that add, change, re-parent and remove nodes and edges, in a fixed pseudo-random order."""
    rng = random.Random(7)
    bodies = []
    for second in range(1, 25):
        choice = rng.randrange(6)
        if choice == 0:
            body = host_a(second)
            body["processes_info"]["processes"] = body["processes_info"]["processes"][: rng.randrange(1, 5)]
        elif choice == 1:
            body = host_b(second)
            body["network_info"]["connections"] = body["network_info"]["connections"][: rng.randrange(0, 4)]
        elif choice == 2:
            body = host_c(second, host_info={"ip_addresses": rng.choice([[], ["10.0.0.3"]])})
        elif choice == 3:
            body = host_a(second)
            body["processes_info"]["processes"][1] = proc(200, "app", rng.choice([C1, None]))
        elif choice == 4:
            body = host_a(second, docker_info={"containers": []})
        else:
            body = ("remove", rng.choice(["agent-a", "agent-b", "agent-c"]))
        bodies.append(body)
    return bodies


def feed(topology, order, body):
    """Apply one of :func:`_mutations` (a report body, or ``("remove", agent)``), every third one with a
    scenario re-report too, and publish."""
    if isinstance(body, tuple):
        topology.remove_agent(body[1])
    else:
        merge(topology, body, order)
    if order % 3 == 0:
        scenario(topology, second=order, order=order * 10)
    return topology.publish(0)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("host", [None, "host-a", "host-c"])
def test_diffs_replayed_in_order_give_the_snapshot_at_each_seq(level, host):
    topology = scenario(Topology())
    topology.publish(0)
    replayed = topology.snapshot(level, host)
    for order, body in enumerate(_mutations(), start=10):
        publication = feed(topology, order, body)
        if publication is None:
            continue
        diff = publication.diff(level, host)
        assert diff["from_seq"] == publication.seq - 1
        replayed = apply_diff(replayed, diff)
        expected = topology.snapshot(level, host)
        assert replayed["nodes"] == expected["nodes"]
        assert replayed["edges"] == expected["edges"]


def test_diff_reports_removals_and_updates():
    topology = scenario(Topology())
    topology.publish(0)
    topology.remove_agent("agent-c")
    diff = topology.publish(0).diff()
    assert "process:host-c:700" in diff["nodes"]["removed"]
    assert "process:host-c:700->process:host-a:100" in diff["edges"]["removed"]
    assert publication_is_cached(topology)


def publication_is_cached(topology) -> bool:
    merge(topology, host_a(30), 99)
    publication = topology.publish(0)
    return publication.diff("host", "host-a") is publication.diff("host", "host-a")


def test_pod_reparenting_shows_in_the_container_view_diff():
    topology = scenario(Topology())
    topology.publish(0)
    before = topology.snapshot("container")
    pod = Contribution(
        nodes=(
            NodeIn("pod:web", type="pod", parent="host:host-a", host="host-a"),
            NodeIn(f"container:{C1}", parent="pod:web"),
        ),
        priority=10,
    )
    topology.contribute("agent-a", "host-a", "kubernetes_info", 2e9, 99, pod)
    publication = topology.publish(0)
    diff = publication.diff("container")
    assert "pod:web" in diff["nodes"]["added"]
    assert diff["nodes"]["updated"][f"container:{C1}"]["parent"] == "pod:web"
    assert apply_diff(before, diff)["nodes"] == topology.snapshot("container")["nodes"]


def test_a_self_loop_edge_can_disappear():
    # Fuzzing found it: a process connected over loopback to its own listener is an edge from the process
    # to itself; when the connection went away, publishing crashed un-indexing the same end twice.
    from tests.topology.support import conn, listen

    topology = Topology()
    body = {
        "agent_id": "a",
        "hostname": "h",
        "timestamp": "2025-10-13T00:00:01Z",
        "processes_info": {"processes": [proc(1, "init")]},
        "network_info": {"connections": [listen(1, "0.0.0.0", 80), conn(1, ("::1", 5000), ("::1", 80), "tcp6")]},
    }
    merge(topology, body, 0)
    topology.publish(0)
    assert "process:h:1->process:h:1" in topology.snapshot()["edges"]
    body = dict(body, timestamp="2025-10-13T00:00:02Z")
    body["network_info"] = {"connections": [listen(1, "0.0.0.0", 80)]}
    merge(topology, body, 1)
    topology.publish(0)
    assert topology.snapshot()["edges"] == {}


@pytest.mark.parametrize("level", ["process", "container"])
def test_an_edge_follows_its_end_to_another_host_in_the_host_filter(level):
    topology = scenario(Topology())
    topology.publish(0)
    before = {host: topology.snapshot(level, host) for host in ("host-a", "host-z")}
    edge = f"process:host-c:700->container:{C1}" if level == "process" else f"host:host-c->container:{C1}"
    assert edge in before["host-a"]["edges"] and edge not in before["host-z"]["edges"]
    # Only the container's host changes (a plugin moves it); its edges stay exactly the same.
    moved = Contribution(nodes=(NodeIn(f"container:{C1}", host="host-z"),), priority=10)
    topology.contribute("agent-a", "host-a", "mover", 2e9, 99, moved)
    publication = topology.publish(0)
    for host in ("host-a", "host-z"):
        expected = topology.snapshot(level, host)
        assert (edge in expected["edges"]) == (host == "host-z")
        replayed = apply_diff(before[host], publication.diff(level, host))
        assert replayed["edges"] == expected["edges"] and replayed["nodes"] == expected["nodes"]


def test_a_host_filtered_diff_reads_only_the_changes_of_that_host(monkeypatch):
    # Issue 16 #2: every distinct ``host=`` view used to walk every change of the publication, so 2,000 views
    # of hosts that don't exist multiplied the publish cost by 2,000. Counted here (not timed): the change
    # records a diff looks at.
    from orchestrator.topology import views

    topology = scenario(Topology())
    topology.publish(0)
    scenario(topology, second=5, order=50)
    topology.remove_agent("agent-c")
    publication = topology.publish(0)
    looked_at = []
    record = views._record
    monkeypatch.setattr(views, "_record", lambda *args: looked_at.append(args[1]) or record(*args))
    empty = {"added": {}, "updated": {}, "removed": []}
    for k in range(2000):
        assert publication.diff("process", f"nohost-{k}") == {
            "from_seq": publication.seq - 1,
            "nodes": empty,
            "edges": empty,
        }
    assert looked_at == []
    whole = publication.diff("process")
    looked_at.clear()
    only_b = publication.diff("process", "host-b")
    assert 0 < len(looked_at) < len(whole["nodes"]["updated"]) + len(whole["edges"]["updated"])
    assert set(only_b["nodes"]["updated"]) == {
        n for n, body in whole["nodes"]["updated"].items() if body["host"] == "host-b"
    }
