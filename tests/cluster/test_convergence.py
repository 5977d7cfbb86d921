"""Replicas that applied the same log answer the same: nodes, edges, agents (with status), time series."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.cluster.conftest import cluster_stats, converged, host_report, report_seq
from tests.support import post_report, wait_for


@pytest.mark.parametrize("replicas", [2, 3])
def test_replicas_converge_while_every_replica_takes_writes(start_replica, replicas):
    servers = [start_replica() for _ in range(replicas)]
    clients = [httpx.Client(base_url=s.url, timeout=10) for s in servers]
    hosts, rounds = 6, 3
    last_seq = 0
    try:
        for index in range(hosts):  # registrations and heartbeats go to every replica in turn
            client = clients[index % replicas]
            answer = client.post(
                "/api/v1/agents/register",
                json={"agent_id": f"agent-{index}", "hostname": f"host-{index}", "metadata": {"rack": str(index)}},
            )
            assert answer.status_code == 201
            assert clients[(index + 1) % replicas].post(f"/api/v1/agents/heartbeat/agent-{index}").status_code == 200
        start = time.time() - 60
        for round_ in range(rounds):
            for index in range(hosts):
                client = clients[(index + round_) % replicas]
                answer = post_report(client, host_report(index, hosts, start + 15 * round_, load=round_ + 1))
                assert answer.status_code == 202
                last_seq = max(last_seq, report_seq(answer))
        view = wait_for(lambda: converged([s.url for s in servers], last_seq), timeout=30, interval=0.1)
    finally:
        for client in clients:
            client.close()
    assert len(view["agents"]) == hosts
    assert {agent["status"] for agent in view["agents"]} == {"online"}
    assert all(agent["reports_received"] == rounds for agent in view["agents"])
    assert len([n for n in view["nodes"].values() if n["type"] == "host"]) == hosts
    assert len(view["edges"]) == hosts  # the ring: each host's app connects to the next host's db
    assert all(len(points) == rounds for points in view["timeseries"].values())


def test_a_registration_answers_201_then_200_whichever_replica_gets_it(start_replica):
    first, second = start_replica(), start_replica()
    body = {"agent_id": "agent-1", "hostname": "host-1", "metadata": {}}
    created = httpx.post(first.url + "/api/v1/agents/register", json=body)
    again = httpx.post(second.url + "/api/v1/agents/register", json=body)
    assert (created.status_code, again.status_code) == (201, 200)
    assert created.json()["agent"]["registered_at"] == again.json()["agent"]["registered_at"]


def test_stats_show_the_replica_position_in_the_log(start_replica):
    server = start_replica(replica_id="replica-a")
    answer = post_report(httpx.Client(base_url=server.url), host_report(0, 1, time.time()))
    seq = report_seq(answer)
    stats = wait_for(lambda: (s := cluster_stats(server.url))["applied_seq"] >= seq and s)
    assert stats["mode"] == "nats"
    assert stats["replica_id"] == "replica-a"
    assert stats["stream"] == "ORCHESTRATOR"
    assert stats["lag"] == stats["stream_seq"] - stats["applied_seq"] >= 0
    metrics = httpx.get(server.url + "/metrics").text
    assert any(line.startswith("app_replica_lag_messages ") for line in metrics.splitlines())
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
