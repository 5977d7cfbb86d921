"""Topology engine benchmark: report apply, publish, uncached snapshot serialisation, memory.

Run: ``/work/venv/bin/python benchmarks/bench_topology.py [hosts ...]`` (default: 100 1000).
Each host: 100 processes (10 containers, half the processes in them), ~200 sockets per report: 10
listeners, ~95 outgoing connections to other hosts' listeners, 5 to external addresses, plus the server
ends of the connections other hosts open to it. Prints a markdown table.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import sys
import time
from types import SimpleNamespace

from orchestrator.models import Report
from orchestrator.topology import Topology
from orchestrator_plugins import docker_topology, host_topology, network_topology, process_topology

MERGERS = (host_topology, docker_topology, process_topology, network_topology)
PROCESSES, CONTAINERS, LISTENERS, OUTGOING, EXTERNAL = 100, 10, 10, 95, 5


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def host_ip(index: int) -> str:
    return f"10.{index // 65536}.{index // 256 % 256}.{index % 256}"


def container_full_id(host: int, index: int) -> str:
    return f"{host:032x}{index:032x}"


def plan_connections(hosts: int, rng: random.Random) -> list[list[dict]]:
    """Per host, its sockets: listeners, client ends of its outgoing connections, server ends of incoming."""
    sockets: list[list[dict]] = [[] for _ in range(hosts)]
    for host in range(hosts):
        for index in range(LISTENERS):
            sockets[host].append({"pid": 1000 + index, "protocol": "tcp", "local_ip": "0.0.0.0",
                                  "local_port": 5000 + index, "state": "LISTEN"})
    for host in range(hosts):
        for index in range(OUTGOING + EXTERNAL):
            pid, port = 1000 + rng.randrange(PROCESSES), 30000 + index
            if index >= OUTGOING:
                sockets[host].append({"pid": pid, "protocol": "tcp", "local_ip": host_ip(host), "local_port": port,
                                      "remote_ip": f"203.0.{index}.{rng.randrange(256)}", "remote_port": 443,
                                      "state": "ESTABLISHED"})
                continue
            server = rng.choice([h for h in (rng.randrange(hosts), rng.randrange(hosts)) if h != host] or [0])
            server_port = 5000 + rng.randrange(LISTENERS)
            sockets[host].append({"pid": pid, "protocol": "tcp", "local_ip": host_ip(host), "local_port": port,
                                  "remote_ip": host_ip(server), "remote_port": server_port,
                                  "state": "ESTABLISHED"})
            sockets[server].append({"pid": 1000 + server_port - 5000, "protocol": "tcp",
                                    "local_ip": host_ip(server), "local_port": server_port,
                                    "remote_ip": host_ip(host), "remote_port": port, "state": "ESTABLISHED"})
    return sockets


def report_body(host: int, second: int, sockets: list[dict]) -> dict:
    hostname = f"host-{host:04d}"
    containers = [container_full_id(host, index) for index in range(CONTAINERS)]
    processes = []
    for index in range(PROCESSES):
        process = {"pid": 1000 + index, "ppid": 1, "name": f"proc-{index % 17}", "user": "svc",
                   "cmdline": f"/usr/bin/proc-{index % 17} --flag", "cpu_percent": 0.5, "memory_rss": 1 << 20,
                   "threads": 4}
        if index % 2:
            process["container_id"] = containers[index % CONTAINERS]
        processes.append(process)
    return {
        "agent_id": f"agent-{host:04d}", "hostname": hostname,
        "timestamp": f"2025-10-13T00:{second // 60:02d}:{second % 60:02d}Z",
        "host_info": {"os": "linux", "cpu_percent": 12.5, "memory_used": 1 << 30, "ip_addresses": [host_ip(host)]},
        "docker_info": {"containers": [{"id": cid, "name": f"c{index}", "image": "img:1", "state": "running",
                                        "ip_addresses": []} for index, cid in enumerate(containers)]},
        "processes_info": {"processes": processes},
        "network_info": {"connections": sockets, "interfaces": [{"name": "eth0", "rx_bytes": 1, "tx_bytes": 2}]},
    }


def apply(topology: Topology, report: Report, order: int) -> float:
    context = SimpleNamespace(order=order, container_id=lambda process: process.container_id)
    start = time.perf_counter()
    for merger in MERGERS:
        merger.merge_report(report=report, topology=topology, context=context)
    return time.perf_counter() - start


def timed(function, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return times


def bench(hosts: int) -> dict:
    rng = random.Random(hosts)
    sockets = plan_connections(hosts, rng)
    gc.collect()
    rss_before = rss_mb()
    topology = Topology()
    apply_times = []
    for host in range(hosts):
        report = Report.model_validate(report_body(host, 0, sockets[host]))
        apply_times.append(apply(topology, report, host) * 1000)
    start = time.perf_counter()
    topology.publish(0)
    first_publish = (time.perf_counter() - start) * 1000
    # Steady state: 10% of the hosts report again (new timestamps, same content), then publish.
    again = rng.sample(range(hosts), max(1, hosts // 10))
    reapply = []
    for order, host in enumerate(again, start=hosts):
        report = Report.model_validate(report_body(host, 15, sockets[host]))
        reapply.append(apply(topology, report, order) * 1000)
    start = time.perf_counter()
    publication = topology.publish(15)
    publish_10pct = (time.perf_counter() - start) * 1000
    diff_ms = timed(lambda: publication._build_diff("process", None), 1)[0]  # noqa: SLF001 - uncached
    del sockets
    gc.collect()
    result = {
        "hosts": hosts, "counts": topology.counts(), "rss_topology": rss_mb() - rss_before, "rss": rss_mb(),
        "apply_p50": statistics.median(apply_times), "apply_p95": _p95(apply_times),
        "reapply_p50": statistics.median(reapply), "publish_full": first_publish,
        "publish_10pct": publish_10pct, "diff_process": diff_ms,
    }
    published = topology._published  # noqa: SLF001 - the uncached path the cache sits in front of
    for level in ("process", "container", "host"):
        runs = 5 if hosts >= 1000 and level != "host" else 20
        times = timed(lambda: published.snapshot_json(level, None), runs)
        result[f"json_{level}"] = (statistics.median(times), _p95(times), len(published.snapshot_json(level, None)))
    times = timed(lambda: published.snapshot_json("process", "host-0001"), 20)
    result["json_filter"] = (statistics.median(times), _p95(times), 0)
    return result


def _p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.95))]


def main(sizes: list[int]) -> None:
    rows = [bench(hosts) for hosts in sizes]
    print("| metric | " + " | ".join(f"{row['hosts']} hosts" for row in rows) + " |")
    print("|---|" + "---|" * len(rows))

    def line(name, render):
        print(f"| {name} | " + " | ".join(render(row) for row in rows) + " |")

    line("nodes / edges", lambda r: f"{r['counts']['nodes']:,} / {r['counts']['edges']:,}")
    line("processes / containers / externals",
         lambda r: f"{r['counts']['processes']:,} / {r['counts']['containers']:,} / {r['counts']['externals']:,}")
    line("apply one report p50 / p95 (ms)", lambda r: f"{r['apply_p50']:.2f} / {r['apply_p95']:.2f}")
    line("re-apply (steady state) p50 (ms)", lambda r: f"{r['reapply_p50']:.2f}")
    line("first publish (ms)", lambda r: f"{r['publish_full']:.0f}")
    line("publish after 10% of hosts report (ms)", lambda r: f"{r['publish_10pct']:.0f}")
    line("diff build, process level (ms)", lambda r: f"{r['diff_process']:.1f}")
    for level in ("process", "container", "host"):
        line(f"snapshot_json {level} p50 / p95 (ms), size",
             lambda r, level=level: f"{r[f'json_{level}'][0]:.1f} / {r[f'json_{level}'][1]:.1f}, "
                                    f"{r[f'json_{level}'][2] / 2**20:.1f} MiB")
    line("snapshot_json process, host filter p50 / p95 (ms)",
         lambda r: f"{r['json_filter'][0]:.2f} / {r['json_filter'][1]:.2f}")
    line("RSS total / topology share (MB)", lambda r: f"{r['rss']:.0f} / {r['rss_topology']:.0f}")


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [100, 1000])
