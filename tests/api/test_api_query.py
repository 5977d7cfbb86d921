"""Query API: topology views and filter, latest report, time series, stats."""

from __future__ import annotations

import logging
import time

import pytest

from tests.api.test_api_http import assert_error
from tests.support import post_report, report, wait_for

CID = "c" * 64


def fleet(http):
    """Two hosts: a container on host-1 with a server process, a client on host-2 connecting to it."""
    now = time.time()
    post_report(
        http,
        report(
            "agent-1",
            ts=now,
            host_info={
                "ip_addresses": ["10.0.0.1"],
                "cpu_percent": 10.0,
                "memory_used": 100,
                "net_rx_bytes": 1000,
                "net_tx_bytes": 10,
            },
            docker_info={"containers": [{"id": CID, "name": "db"}]},
            processes_info={"processes": [{"pid": 5, "name": "postgres", "container_id": CID}]},
            network_info={"connections": [{"pid": 5, "local_ip": "0.0.0.0", "local_port": 5432, "state": "LISTEN"}]},
        ),
    )
    post_report(
        http,
        report(
            "agent-2",
            ts=now,
            host_info={"ip_addresses": ["10.0.0.2"]},
            processes_info={"processes": [{"pid": 9, "name": "app"}]},
            network_info={
                "connections": [
                    {
                        "pid": 9,
                        "local_ip": "10.0.0.2",
                        "local_port": 40000,
                        "remote_ip": "10.0.0.1",
                        "remote_port": 5432,
                        "state": "ESTABLISHED",
                    }
                ]
            },
        ),
    )
    return wait_for(lambda: len((t := topo(http))["edges"]) == 1 and t)


def topo(http, **params):
    response = http.get("/api/v1/query/topology", params=params)
    assert response.status_code == 200
    return response.json()["topology"]


def test_process_level_has_everything_and_a_cross_host_edge(http):
    t = fleet(http)
    assert {"host:host-1", "host:host-2", f"container:{CID}", "process:host-1:5", "process:host-2:9"} == set(t["nodes"])
    edge = next(iter(t["edges"].values()))
    assert (edge["source"], edge["target"], edge["ports"], edge["connections"]) == (
        "process:host-2:9",
        "process:host-1:5",
        [5432],
        1,
    )
    assert t["timestamp"].endswith("Z")


def test_host_and_container_levels_roll_up(http):
    fleet(http)
    hosts = topo(http, level="host")
    assert set(hosts["nodes"]) == {"host:host-1", "host:host-2"}
    assert [(e["source"], e["target"]) for e in hosts["edges"].values()] == [("host:host-2", "host:host-1")]
    containers = topo(http, level="container")
    assert set(containers["nodes"]) == {"host:host-1", "host:host-2", f"container:{CID}"}
    assert [(e["source"], e["target"]) for e in containers["edges"].values()] == [("host:host-2", f"container:{CID}")]


def test_host_filter_keeps_its_nodes_and_their_edges(http):
    fleet(http)
    only = topo(http, host="host-2")
    assert set(only["nodes"]) == {"host:host-2", "process:host-2:9"}
    assert len(only["edges"]) == 1  # the far end lies outside the response, as the contract says


def test_bad_level_is_400(http):
    assert_error(http.get("/api/v1/query/topology?level=galaxy"), 400, "bad_parameter")


def test_latest_report_is_returned_as_submitted(http):
    body = report(host_info={"os": "linux"}, custom={"nested": [1, 2]})
    post_report(http, body)
    latest = wait_for(lambda: (r := http.get("/api/v1/query/agents/agent-1/latest")).status_code == 200 and r.json())
    assert latest["report"] == body
    assert_error(http.get("/api/v1/query/agents/ghost/latest"), 404)


def test_timeseries_points_and_rates(http):
    base = (time.time() // 15) * 15 - 60
    for i, (rx, cpu) in enumerate([(1000, 10.0), (2500, 20.0), (100, 30.0)]):
        post_report(
            http,
            report(
                ts=base + 15 * i,
                host_info={"cpu_percent": cpu, "net_rx_bytes": rx, "net_tx_bytes": 0, "load_avg": [1.0, 0, 0]},
            ),
        )
    body = wait_for(
        lambda: (r := http.get("/api/v1/query/agents/agent-1/timeseries")).json()["count"] == 3 and r.json()
    )
    assert body["resolution"] == "15s" and body["duration"] == "1h"
    points = body["points"]
    assert [p["cpu_percent"] for p in points] == [10.0, 20.0, 30.0]
    assert [p["net_rx_rate"] for p in points] == [None, 100.0, None]  # the counter reset yields no rate
    assert points[0]["memory_used"] is None and points[0]["load1"] == 1.0
    stepped = http.get("/api/v1/query/agents/agent-1/timeseries?duration=5m&step=1m").json()
    assert stepped["count"] >= 1 and stepped["duration"] == "5m"


@pytest.mark.parametrize(
    "query", ["duration=abc", "duration=0s", "duration=-5m", "step=20s", "step=0s", "step=1ns", "step=1ms"]
)
def test_timeseries_bad_parameters_are_400(http, query):
    post_report(http, report(host_info={"cpu_percent": 1.0}))
    wait_for(lambda: http.get("/api/v1/query/agents/agent-1/latest").status_code == 200)
    assert_error(http.get(f"/api/v1/query/agents/agent-1/timeseries?{query}"), 400, "bad_parameter")


def test_timeseries_of_unknown_agent_is_404(http):
    assert_error(http.get("/api/v1/query/agents/ghost/timeseries"), 404, "unknown_agent")


def test_stats_show_counts_and_redacted_config(start_server):
    import httpx

    from tests.support import make_settings

    server = start_server(make_settings(auth={"read_tokens": ["topsecret"]}))
    with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer topsecret"}) as client:
        fleet(client)
        stats = client.get("/api/v1/query/stats").json()
    assert stats["agents"] == 2 and stats["reports_received"] == 2 and stats["websocket_clients"] == 0
    assert stats["topology"]["hosts"] == 2 and stats["topology"]["processes"] == 2
    assert stats["config"]["auth"]["read_tokens"] == ["***"] and "topsecret" not in str(stats)
    assert stats["uptime"].endswith("s") and "storage" in stats and "cleanup" in stats


def test_a_stale_agent_is_archived_but_its_last_report_and_listing_remain(start_server):
    import httpx

    from tests.support import make_settings

    server = start_server(make_settings(agents={"stale_threshold": "1s"}, storage={"cleanup_interval": "200ms"}))
    with httpx.Client(base_url=server.url) as client:
        post_report(client, report(host_info={"os": "linux"}))
        wait_for(lambda: "host:host-1" in topo(client)["nodes"])
        wait_for(lambda: "agent-1" in server.state.archive, timeout=10)
        assert (
            "host:host-1"
            not in wait_for(lambda: (t := topo(client)) and "host:host-1" not in t["nodes"] and t)["nodes"]
        )
        listed = client.get("/api/v1/agents/list?status=stale").json()
        assert [a["agent_id"] for a in listed["agents"]] == ["agent-1"]
        latest = client.get("/api/v1/query/agents/agent-1/latest")
        assert latest.status_code == 200 and latest.json()["report"]["host_info"] == {"os": "linux"}
        # It comes back: restored, with its report count carried on.
        post_report(client, report(host_info={"os": "linux"}))
        agent = wait_for(lambda: list(client.get("/api/v1/agents/list?status=online").json()["agents"]))[0]
        assert agent["agent_id"] == "agent-1" and agent["reports_received"] == 2


def _internet_fleet(http):
    """host-1 connects to two public addresses (three sockets) and to a private one nobody probes."""
    remotes = [("8.8.8.8", 443), ("1.1.1.1", 443), ("1.1.1.1", 80), ("192.168.7.7", 5432), ("100.64.0.9", 22)]
    connections = [
        {
            "pid": 5,
            "local_ip": "10.0.0.1",
            "local_port": 41000 + index,
            "remote_ip": ip,
            "remote_port": port,
            "state": "ESTABLISHED",
        }
        for index, (ip, port) in enumerate(remotes)
    ]
    post_report(
        http,
        report(
            "agent-1",
            host_info={"ip_addresses": ["10.0.0.1"]},
            processes_info={"processes": [{"pid": 5, "name": "app"}]},
            network_info={"connections": connections},
        ),
    )
    return wait_for(lambda: len((t := topo(http))["edges"]) == len(remotes) - 1 and t)  # 1.1.1.1: one edge


def test_external_group_rolls_public_addresses_into_the_internet_node(http):
    each = _internet_fleet(http)
    assert {"external:8.8.8.8", "external:1.1.1.1"} <= set(each["nodes"])
    grouped = topo(http, external="group")
    assert grouped["seq"] == each["seq"]
    internet = grouped["nodes"]["external:internet"]
    assert (internet["type"], internet["name"], internet["agent_ids"]) == ("external", "Internet", ["agent-1"])
    assert "external:8.8.8.8" not in grouped["nodes"] and "external:1.1.1.1" not in grouped["nodes"]
    edge = grouped["edges"]["process:host-1:5->external:internet"]
    assert (edge["connections"], edge["ports"]) == (3, [80, 443])
    # Private and CGNAT addresses stay one node per address.
    assert {"external:192.168.7.7", "external:100.64.0.9"} <= set(grouped["nodes"])
    assert "process:host-1:5->external:192.168.7.7" in grouped["edges"]
    assert topo(http, external="each") == each


def test_external_group_combines_with_level_and_host(http):
    _internet_fleet(http)
    hosts = topo(http, level="host", external="group")
    assert set(hosts["nodes"]) == {"host:host-1", "external:internet", "external:192.168.7.7", "external:100.64.0.9"}
    assert hosts["edges"]["host:host-1->external:internet"]["connections"] == 3
    only = topo(http, level="host", host="host-1", external="group")
    assert set(only["nodes"]) == {"host:host-1"} and "host:host-1->external:internet" in only["edges"]


@pytest.mark.parametrize("value", ["all", "GROUP", "none"])
def test_unknown_external_value_is_400(http, value):
    assert_error(http.get(f"/api/v1/query/topology?external={value}"), 400, "bad_parameter")


def _post_fleet(client, fleet, now: float, hosts) -> None:
    for index in hosts:
        response = client.post(
            "/api/v1/reports", content=fleet.report_bytes(index, now), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 202, response.text


def _check_consistent(view: dict) -> None:
    """One published seq: every edge's ends and every node's parent are nodes of the same body."""
    nodes, edges = view["nodes"], view["edges"]
    assert isinstance(view["seq"], int) and view["timestamp"]
    for edge_id, edge in edges.items():
        assert edge["id"] == edge_id and edge["source"] in nodes and edge["target"] in nodes, edge_id
    for node_id, node in nodes.items():
        assert node["id"] == node_id and (node["parent"] is None or node["parent"] in nodes), node_id


def test_a_large_full_view_is_streamed_with_the_same_bytes_as_one_host_at_a_time(http, caplog):
    from orchestrator.probe.fleet import Fleet

    fleet = Fleet(12, seed=3)
    _post_fleet(http, fleet, time.time(), range(12))
    wait_for(lambda: topo(http, level="host")["nodes"].get("host:" + fleet.report(11, time.time())["hostname"]))
    view = http.get("/api/v1/query/topology")
    assert view.status_code == 200 and view.headers["content-type"] == "application/json"
    assert "content-length" not in view.headers  # chunked: sent as it is encoded
    body = view.json()["topology"]
    assert len(body["nodes"]) + len(body["edges"]) > 2_000
    _check_consistent(body)
    # The streamed body is the view itself: each host's part, asked separately, is in it as it is.
    hostname = fleet.report(0, time.time())["hostname"]
    part = http.get("/api/v1/query/topology", params={"host": hostname}).json()["topology"]
    if part["seq"] == body["seq"]:
        assert part["nodes"].items() <= body["nodes"].items() and part["edges"].items() <= body["edges"].items()
    assert list(body["nodes"]) == sorted(body["nodes"]) and list(body["edges"]) == sorted(body["edges"])
    # A streamed answer is complete without an error in the server's log (Sanic logs one per answer when the
    # handler also returns the response it streamed).
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_full_view_read_while_reports_keep_arriving_is_one_consistent_topology(start_server):
    import threading

    import httpx

    from orchestrator.probe.fleet import Fleet

    server = start_server()
    fleet = Fleet(12, seed=5)
    stop = threading.Event()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        _post_fleet(client, fleet, time.time(), range(12))
        wait_for(lambda: len(topo(client, level="host")["nodes"]) >= 12)

        def keep_reporting() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as writer:
                rounds = 0
                while not stop.is_set():
                    rounds += 1
                    _post_fleet(writer, fleet, time.time() + rounds, range(rounds % 12, rounds % 12 + 1))

        writer = threading.Thread(target=keep_reporting)
        writer.start()
        try:
            seqs = set()
            for _ in range(6):
                view = client.get("/api/v1/query/topology").json()["topology"]
                _check_consistent(view)
                seqs.add(view["seq"])
                wait_for(lambda seq=view["seq"]: client.get("/api/v1/query/stats").json()["seq"] > seq, timeout=10)
        finally:
            stop.set()
            writer.join(30)
    assert len(seqs) == 6  # every read saw a later publication than the one before, whole
