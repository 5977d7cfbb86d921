"""Shared builders for the topology tests: reports as dicts, merged through the four built-in mergers."""

from __future__ import annotations

from orchestrator.contract.models import Report
from orchestrator.pipeline.ingest import MergeContext
from orchestrator_plugins import (
    docker_topology,
    host_topology,
    network_topology,
    process_topology,
)
from orchestrator_plugins.cgroup_container_id import container_id_from_cgroup

MERGERS = (host_topology, docker_topology, process_topology, network_topology)
C1 = "a" * 64
C2 = "b" * 64


def stamp(second: int) -> str:
    return f"2025-10-13T00:00:{second:02d}Z"


def merge(topology, body: dict, order: int, received_at: float | None = None) -> Report:
    return merge_parsed(topology, Report.model_validate(body), order, received_at)


def merge_parsed(topology, report: Report, order: int, received_at: float | None = None) -> Report:
    """Through the built-in mergers, as the ingest worker does; received at ``received_at``, by default at
    the report's own timestamp (a probe whose clock is in sync)."""
    seen = report.epoch if received_at is None else received_at
    context = MergeContext(report, order, seen, container_id_from_cgroup, topology)
    for merger in MERGERS:
        merger.merge_report(report=report, context=context)
    return report


def proc(pid, name, container=None, **extra):
    body = {"pid": pid, "name": name, **extra}
    if container:
        body["cgroup"] = f"0::/system.slice/docker-{container}.scope"
    return body


def listen(pid, ip, port, protocol="tcp"):
    if protocol.startswith("udp"):
        return {"pid": pid, "protocol": protocol, "local_ip": ip, "local_port": port}
    return {"pid": pid, "protocol": protocol, "local_ip": ip, "local_port": port, "state": "LISTEN"}


def conn(pid, local, remote, protocol="tcp", state="ESTABLISHED"):
    (lip, lport), (rip, rport) = local, remote
    return {
        "pid": pid,
        "protocol": protocol,
        "local_ip": lip,
        "local_port": lport,
        "remote_ip": rip,
        "remote_port": rport,
        "state": state,
    }


def host_a(second=0, **overrides):
    body = {
        "agent_id": "agent-a",
        "hostname": "host-a",
        "timestamp": stamp(second),
        "host_info": {"os": "linux", "cpu_percent": 10.0, "ip_addresses": ["10.0.0.1", "172.17.0.1"], "rack": "r1"},
        "docker_info": {
            "containers": [
                {"id": C1, "name": "web", "image": "nginx", "ip_addresses": ["172.17.0.2"], "cpu_percent": 1.5}
            ]
        },
        "processes_info": {
            "processes": [
                proc(100, "nginx", C1),
                proc(200, "app", user="svc"),
                proc(300, "cron"),
                proc(400, "worker", C2),
            ]
        },
        "network_info": {
            "connections": [
                listen(100, "0.0.0.0", 80),
                listen(200, "10.0.0.1", 8080),
                listen(200, "127.0.0.1", 9000),
                listen(200, "0.0.0.0", 53, "udp"),
                conn(200, ("10.0.0.1", 40000), ("10.0.0.2", 5432)),  # to host-b's postgres
                conn(300, ("127.0.0.1", 41000), ("127.0.0.1", 9000)),  # loopback, client end
                conn(200, ("127.0.0.1", 9000), ("127.0.0.1", 41000)),  # loopback, server end
                conn(200, ("10.0.0.1", 40001), ("8.8.8.8", 443)),  # external
                conn(200, ("10.0.0.1", 40002), ("10.0.0.3", 22)),  # host-c, nothing listens
            ],
            "interfaces": [{"name": "eth0", "rx_bytes": 1, "tx_bytes": 2}],
        },
    }
    body.update(overrides)
    return body


def host_b(second=0, **overrides):
    body = {
        "agent_id": "agent-b",
        "hostname": "host-b",
        "timestamp": stamp(second),
        "host_info": {"ip_addresses": ["10.0.0.2", "172.17.0.1"]},
        "processes_info": {"processes": [proc(500, "postgres")]},
        "network_info": {
            "connections": [
                listen(500, "::", 5432, "tcp6"),
                conn(500, ("10.0.0.2", 5432), ("10.0.0.1", 40000)),  # server end of host-a's
                conn(500, ("10.0.0.2", 5432), ("10.0.0.9", 50000)),  # client nobody owns
            ]
        },
    }
    body.update(overrides)
    return body


def host_c(second=0, **overrides):
    body = {
        "agent_id": "agent-c",
        "hostname": "host-c",
        "timestamp": stamp(second),
        "host_info": {"ip_addresses": ["10.0.0.3"]},
        "processes_info": {"processes": [proc(700, "client")]},
        "network_info": {
            "connections": [
                conn(700, ("10.0.0.3", 33000), ("172.17.0.1", 8000)),  # claimed by a, then b: a's
                conn(700, ("10.0.0.3", 33001), ("10.0.0.1", 53), "udp", ""),  # udp to host-a's wildcard
                conn(700, ("10.0.0.3", 33002), ("172.17.0.2", 80)),  # container IP, nginx listens
                conn(700, ("10.0.0.3", 33003), ("172.17.0.2", 9999)),  # container IP, nothing listens
            ]
        },
    }
    body.update(overrides)
    return body


def scenario(topology, second=0, order=0):
    merge(topology, host_a(second), order)
    merge(topology, host_b(second), order + 1)
    merge(topology, host_c(second), order + 2)
    return topology


def apply_diff(snapshot: dict, diff: dict) -> dict:
    nodes, edges = dict(snapshot["nodes"]), dict(snapshot["edges"])
    for items, section in ((nodes, diff["nodes"]), (edges, diff["edges"])):
        items.update(section["added"])
        items.update(section["updated"])
        for item_id in section["removed"]:
            del items[item_id]
    return {"nodes": nodes, "edges": edges}


def drive(steps, stop_after=None):
    """Run a generator of steps to its end, as the loop would between requests: its value and its yields (or
    close it after ``stop_after`` yields: then None)."""
    yields = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value, yields
        yields += 1
        if stop_after is not None and yields >= stop_after:
            steps.close()
            return None, yields
