"""Graceful shutdown and durability through a real process: SIGTERM, in-flight requests, restart."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx
import orjson
from websockets.sync.client import connect

from tests.support import report, wait_for


def raw_request_start(port: int, body: bytes) -> socket.socket:
    """Send the headers and half the body of a report: a request that is in flight."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[: len(body) // 2])
    return sock


def test_sigterm_lets_in_flight_requests_finish_and_refuses_new_ones(tmp_path, server_process):
    server = server_process("--data-dir", str(tmp_path)).wait_healthy()
    body = orjson.dumps(report("inflight", host_info={"os": "linux"}))
    sock = raw_request_start(server.port, body)
    time.sleep(0.2)
    server.proc.send_signal(15)
    time.sleep(0.5)
    # New connections are refused while the in-flight request is still being served.
    try:
        refused = httpx.get(server.url + "/health", timeout=1).status_code == 503
    except httpx.HTTPError:
        refused = True
    assert refused
    sock.sendall(body[len(body) // 2 :])
    answer = sock.recv(65536).decode()
    sock.close()
    assert answer.startswith("HTTP/1.1 202"), answer
    assert "connection: close" in answer.lower()  # draining: the connection is not kept for more requests
    assert server.proc.communicate(timeout=60)[0] is not None and server.proc.returncode == 0
    # The report answered 202 during the shutdown survived it.
    again = server_process("--data-dir", str(tmp_path)).wait_healthy()
    latest = httpx.get(again.url + "/api/v1/query/agents/inflight/latest")
    assert latest.status_code == 200 and latest.json()["report"]["host_info"] == {"os": "linux"}


def test_restart_with_the_same_data_dir_brings_everything_back(tmp_path, server_process):
    server = server_process("--data-dir", str(tmp_path)).wait_healthy()
    now = time.time()
    with httpx.Client(base_url=server.url) as client:
        client.post(
            "/api/v1/agents/register", json={"agent_id": "agent-1", "hostname": "host-1", "metadata": {"v": "1"}}
        )
        for i in range(3):
            client.post(
                "/api/v1/reports",
                content=orjson.dumps(
                    report(
                        ts=now - 30 + 15 * i,
                        host_info={"cpu_percent": 10.0 * i, "ip_addresses": ["10.0.0.1"]},
                        processes_info={"processes": [{"pid": 42, "name": "db"}]},
                    )
                ),
                headers={"Content-Type": "application/json"},
            )
        time.sleep(0.3)
        before = {
            path: client.get(path).json()
            for path in (
                "/api/v1/agents/list",
                "/api/v1/query/agents/agent-1/latest",
                "/api/v1/query/agents/agent-1/timeseries",
                "/api/v1/query/topology",
            )
        }
    assert server.terminate() == 0
    again = server_process("--data-dir", str(tmp_path)).wait_healthy()
    with httpx.Client(base_url=again.url) as client:
        after = {path: client.get(path).json() for path in before}
    assert after["/api/v1/agents/list"] == before["/api/v1/agents/list"]
    assert after["/api/v1/query/agents/agent-1/latest"] == before["/api/v1/query/agents/agent-1/latest"]
    assert (
        after["/api/v1/query/agents/agent-1/timeseries"]["points"]
        == before["/api/v1/query/agents/agent-1/timeseries"]["points"]
    )
    assert after["/api/v1/query/topology"]["topology"]["nodes"] == before["/api/v1/query/topology"]["topology"]["nodes"]
    assert before["/api/v1/query/agents/agent-1/timeseries"]["count"] == 3


def test_sigterm_under_continuous_load_loses_no_accepted_report(tmp_path, server_process):
    server = server_process("--data-dir", str(tmp_path)).wait_healthy()
    accepted: list[str] = []
    stop = threading.Event()

    def load(worker: int):
        with httpx.Client(base_url=server.url, timeout=5) as client:
            for i in range(100_000):
                if stop.is_set():
                    return
                agent = f"load-{worker}-{i}"
                try:
                    response = client.post(
                        "/api/v1/reports",
                        content=orjson.dumps(report(agent, host_info={})),
                        headers={"Content-Type": "application/json"},
                    )
                except httpx.HTTPError:
                    return  # the server has gone: the load is over
                if response.status_code == 202:
                    accepted.append(agent)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    # SIGTERM once the load is well under way (a count, not a time: a loaded machine accepts fewer per second).
    wait_for(lambda: len(accepted) > 50, timeout=60)
    assert server.terminate() == 0
    stop.set()
    for thread in threads:
        thread.join(10)
    assert len(accepted) > 50
    again = server_process("--data-dir", str(tmp_path)).wait_healthy()
    agents = {a["agent_id"] for a in httpx.get(again.url + "/api/v1/agents/list").json()["agents"]}
    assert set(accepted) <= agents
    with httpx.Client(base_url=again.url) as client:
        for agent in accepted[-20:]:
            assert client.get(f"/api/v1/query/agents/{agent}/latest").status_code == 200


def test_a_ui_resuming_across_a_restart_gets_a_fresh_snapshot(tmp_path, server_process):
    server = server_process("--data-dir", str(tmp_path)).wait_healthy()
    with httpx.Client(base_url=server.url) as client:
        for i in range(3):
            client.post(
                "/api/v1/reports",
                content=orjson.dumps(report(host_info={"cpu_percent": float(i)})),
                headers={"Content-Type": "application/json"},
            )
            time.sleep(0.15)  # a broadcast tick (50 ms here) apart: one publication each
        seen = client.get("/api/v1/query/topology").json()["topology"]["seq"]
    assert server.terminate() == 0

    again = server_process("--data-dir", str(tmp_path)).wait_healthy()
    with httpx.Client(base_url=again.url) as client:
        # The next report changes the topology; its seq must not collide with one the UI already saw.
        client.post(
            "/api/v1/reports",
            content=orjson.dumps(report(host_info={"cpu_percent": 99.0})),
            headers={"Content-Type": "application/json"},
        )
        time.sleep(0.3)
        assert client.get("/api/v1/query/topology").json()["topology"]["seq"] > seen
    with connect(again.url.replace("http", "ws") + f"/api/v1/ws?since={seen}") as ws:
        first = orjson.loads(ws.recv(timeout=5))
    assert first["type"] == "topology_update" and first["seq"] > seen
    assert first["payload"]["nodes"]["host:host-1"]["metrics"]["cpu_percent"] == 99.0


def test_sighup_is_logged_and_ignored_and_loses_nothing(tmp_path, server_process):
    server = server_process("--data-dir", str(tmp_path)).wait_healthy()
    with httpx.Client(base_url=server.url) as client:
        for i in range(5):
            assert (
                client.post("/api/v1/reports", json=report(f"agent-{i}", host_info={"os": "linux"})).status_code == 202
            )
        server.proc.send_signal(signal.SIGHUP)
        # Still serving, and still taking reports, after the signal.
        assert client.post("/api/v1/reports", json=report("agent-after-hup")).status_code == 202
        assert client.get("/health").status_code == 200
    assert server.proc.poll() is None
    assert server.terminate() == 0
    events = [orjson.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert any(e["event"] == "sighup_ignored" for e in events)

    again = server_process("--data-dir", str(tmp_path)).wait_healthy()
    listed = httpx.get(again.url + "/api/v1/agents/list").json()
    assert {a["agent_id"] for a in listed["agents"]} == {*(f"agent-{i}" for i in range(5)), "agent-after-hup"}
