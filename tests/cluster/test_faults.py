"""Faults: a replica killed under load, NATS going away and coming back, a retried publish."""

from __future__ import annotations

import threading
import time

import httpx

from tests.cluster.conftest import cluster_stats, converged, host_report, report_seq, wait_healthy
from tests.support import post_report, report, wait_for


def _agents(url: str) -> dict[str, dict]:
    return {a["agent_id"]: a for a in httpx.get(url + "/api/v1/agents/list", timeout=10).json()["agents"]}


def _load(url: str, agent_prefix: str, accepted: dict[str, int], stop: threading.Event) -> None:
    """Post distinct reports until told to stop or the server goes away; count each 202 by agent."""
    base = time.time() - 3000
    with httpx.Client(base_url=url, timeout=5) as client:
        for i in range(100_000):
            if stop.is_set():
                return
            agent = f"{agent_prefix}-{i % 5}"
            try:
                answer = post_report(client, report(agent, ts=base + i, host_info={"cpu_percent": float(i % 100)}))
            except httpx.HTTPError:
                return  # killed: whatever was not answered 202 was not accepted
            if answer.status_code == 202:
                accepted[agent] = accepted.get(agent, 0) + 1
                accepted["max_seq"] = max(accepted.get("max_seq", 0), report_seq(answer))


def test_sigkill_of_a_replica_under_load_loses_no_accepted_report(replica_process, start_replica, tmp_path):
    victim = replica_process(tmp_path / "victim")
    survivor = start_replica()
    on_victim: dict[str, int] = {}
    on_survivor: dict[str, int] = {}
    stop = threading.Event()
    loaders = [
        threading.Thread(target=_load, args=(victim.url, "via-victim", on_victim, stop)),
        threading.Thread(target=_load, args=(survivor.url, "via-survivor", on_survivor, stop)),
    ]
    for loader in loaders:
        loader.start()
    try:
        wait_for(lambda: sum(v for k, v in on_victim.items() if k != "max_seq") >= 40, timeout=30)
        victim.proc.kill()  # SIGKILL, mid-load
        victim.proc.wait(10)
        wait_for(lambda: sum(v for k, v in on_survivor.items() if k != "max_seq") >= 80, timeout=30)
    finally:
        stop.set()
        for loader in loaders:
            loader.join(30)
    last = max(on_victim["max_seq"], on_survivor["max_seq"])
    wait_for(lambda: cluster_stats(survivor.url)["applied_seq"] >= last, timeout=30)
    agents = _agents(survivor.url)
    for agent_id, count in on_survivor.items():
        if agent_id != "max_seq":
            assert agents[agent_id]["reports_received"] == count, agent_id
    # Every 202 is there. The one report in flight at the kill may be stored without its 202 ever being sent.
    victim_counts = {a: c for a, c in on_victim.items() if a != "max_seq"}
    received = {a: agents[a]["reports_received"] for a in victim_counts}
    assert all(received[a] >= c for a, c in victim_counts.items()), (received, victim_counts)
    assert sum(received.values()) - sum(victim_counts.values()) <= 1

    restarted = replica_process(tmp_path / "victim")  # back on its own data dir; catches up by itself
    assert wait_for(lambda: converged([restarted.url, survivor.url], last), timeout=30, interval=0.2)


def test_nats_outage_refuses_writes_serves_reads_and_recovers(nats_server, replica_process, tmp_path):
    replica = replica_process(tmp_path / "replica")
    client = httpx.Client(base_url=replica.url, timeout=15)
    registered = client.post("/api/v1/agents/register", json={"agent_id": "agent-0", "hostname": "host-0"})
    assert registered.status_code == 201
    first = post_report(client, host_report(0, 1, time.time() - 30))
    assert first.status_code == 202
    wait_for(lambda: "host:host-0" in client.get("/api/v1/query/topology").json()["topology"]["nodes"], timeout=10)

    nats_server.stop()
    health = wait_for(lambda: (h := client.get("/health")).status_code == 503 and h, timeout=15)
    assert health.json()["status"] == "bus_unavailable"
    wait_for(lambda: "bus_unavailable" in client.get("/readyz").json().get("reasons", {}), timeout=15)
    refused = [
        post_report(client, host_report(0, 1, time.time() - 20)),
        client.post("/api/v1/agents/register", json={"agent_id": "agent-1", "hostname": "host-1"}),
        client.post("/api/v1/agents/heartbeat/agent-0"),
    ]
    for answer in refused:
        assert answer.status_code == 503
        assert int(answer.headers["Retry-After"]) >= 1
        assert answer.json()["error"]["code"] == "bus_unavailable"
    # Reads keep serving from the replica's copy.
    assert "host:host-0" in client.get("/api/v1/query/topology").json()["topology"]["nodes"]
    assert [a["agent_id"] for a in client.get("/api/v1/agents/list").json()["agents"]] == ["agent-0"]
    assert client.get("/api/v1/query/stats").json()["cluster"]["connected"] is False

    nats_server.start()  # same port, same store: the replica reconnects by itself
    wait_healthy(replica.url, timeout=30)
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=15)
    after = post_report(client, host_report(0, 1, time.time() - 10))
    assert after.status_code == 202
    wait_for(lambda: cluster_stats(replica.url)["applied_seq"] >= report_seq(after), timeout=15)
    agent = _agents(replica.url)["agent-0"]
    assert agent["reports_received"] == 2  # the two 202s; the refused one was never stored
    assert replica.proc.poll() is None  # it never exited
    client.close()


def test_a_retried_report_is_stored_once_whichever_replica_gets_the_retry(start_replica):
    first, second = start_replica(), start_replica()
    body = host_report(0, 1, time.time() - 5)
    answers = [
        post_report(httpx.Client(base_url=first.url), body),
        post_report(httpx.Client(base_url=first.url), body),
        post_report(httpx.Client(base_url=second.url), body, gzipped=True),
    ]
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert len({a.json()["report_id"] for a in answers}) == 1
    seq = report_seq(answers[0])
    view = wait_for(lambda: converged([first.url, second.url], seq), timeout=60)
    assert [a["reports_received"] for a in view["agents"]] == [1]
    assert all(cluster_stats(url)["applied_seq"] >= seq for url in (first.url, second.url))
