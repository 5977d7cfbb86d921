"""The reference probe and the simulator against a real server: what a user sees in the five-minute tour."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx

from tests.support import REPO, wait_for


def topology(url: str, **params) -> dict:
    return httpx.get(url + "/api/v1/query/topology", params=params, timeout=10).json()["topology"]


def run_probe(server, *args: str) -> subprocess.CompletedProcess:
    """``orchestrator probe --server <server> ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "probe", "--server", server.url, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )


def test_probe_reports_this_machine_and_our_listening_socket_becomes_an_edge_target(server):
    # A listening socket in this test process, and a connection to it from this same process.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    try:
        done = run_probe(server, "--once", "--agent-id", "live-probe")
        assert done.returncode == 0, done.stderr
        hostname = httpx.get(server.url + "/api/v1/agents/list").json()["agents"][0]["hostname"]
        me = f"process:{hostname}:{os.getpid()}"
        nodes = wait_for(lambda: me in (t := topology(server.url))["nodes"] and t)["nodes"]
        assert nodes[me]["parent"] in nodes and nodes[f"host:{hostname}"]["type"] == "host"
        assert len([n for n in nodes if n.startswith("process:")]) > 3  # the machine's real processes
        edges = topology(server.url)["edges"]
        to_me = [e for e in edges.values() if e["target"] == me and port in e["ports"]]
        assert to_me, "the test's listening socket was not resolved as an edge target"
        latest = httpx.get(server.url + "/api/v1/query/agents/live-probe/latest").json()["report"]
        assert any(c["local_port"] == port and c["state"] == "LISTEN" for c in latest["network_info"]["connections"])
    finally:
        for sock in (client, accepted, listener):
            sock.close()


def test_simulated_fleet_has_cross_host_edges_and_container_parents(server):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "simulate",
            "--server",
            server.url,
            "--hosts",
            "5",
            "--interval",
            "1s",
            "--duration",
            "3s",
            "--processes",
            "30",
            "--connections",
            "40",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr

    def five_hosts():
        t = topology(server.url)
        return sum(n.startswith("host:") for n in t["nodes"]) == 5 and t

    t = wait_for(five_hosts)
    nodes, edges = t["nodes"], t["edges"]
    in_containers = [n for n in nodes.values() if n["type"] == "process" and n["parent"].startswith("container:")]
    assert in_containers and all(nodes[n["parent"]]["parent"] == f"host:{n['host']}" for n in in_containers)
    cross = [
        e
        for e in edges.values()
        if e["source"].startswith("process:")
        and e["target"].startswith("process:")
        and nodes[e["source"]]["host"] != nodes[e["target"]]["host"]
    ]
    assert cross, "no process-to-process edge crosses hosts"
    hosts = topology(server.url, level="host")
    assert any(e["source"] != e["target"] for e in hosts["edges"].values())


def test_probe_once_prints_its_summary_on_stdout_and_logs_nothing_routine(server):
    done = run_probe(server, "--once", "--agent-id", "quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("report of ") and "processes_info" in done.stdout
    assert done.stderr == ""  # no per-request lines from the HTTP client at the default level


def test_probe_logs_go_to_stderr_at_the_chosen_level(server):
    done = run_probe(server, "--once", "--agent-id", "chatty", "--log-level", "debug")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("report of ")  # stdout is the summary only
    assert "[debug" in done.stderr  # e.g. asyncio's "Using selector" line, always written at debug
