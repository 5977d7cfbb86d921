"""Where the topology's memory goes: bytes per node and per edge, by tracemalloc, for a fleet of N hosts.

Run: ``python -m benchmarks.bench_memory [hosts ...]`` (default: 100). Each size runs in its own
interpreter. The fleet is :class:`orchestrator.probe.fleet.Fleet` (the one every benchmark uses), merged
through the four built-in mergers and published once, then re-reported once (a steady state holds one
generation of contributions and bodies, not two); the report objects are dropped before measuring.

Every live allocation is attributed to the function that made it (tracemalloc's innermost frame in the
server's own code). Functions that build nodes (node inputs from the mergers, node state, node bodies) count
towards bytes per node; functions that build connections, edges and their resolution indexes towards bytes per
edge; the published views' indexes (per-host sets, roll-up members) are shown apart. RSS is the process's.
"""

from __future__ import annotations

import ast
import gc
import os
import sys
import time
import tracemalloc
from collections import Counter
from functools import cache
from pathlib import Path

from orchestrator.contract.models import Report
from orchestrator.pipeline.ingest import MergeContext
from orchestrator.probe.fleet import Fleet
from orchestrator.topology import Topology
from orchestrator_plugins import docker_topology, host_topology, network_topology, process_topology
from orchestrator_plugins.cgroup_container_id import container_id_from_cgroup

MERGERS = (host_topology, docker_topology, process_topology, network_topology)
T0 = 1_760_000_000.0
ROOT = Path(__file__).resolve().parents[1]
# Functions (by name) whose allocations are nodes' (everything else in the engine is connections and edges').
NODE_FUNCTIONS = {
    "process_contribution",
    "_process_nodes",
    "_metadata",
    "host_contribution",
    "docker_contribution",
    "container_nodes",
    "_replace_nodes",
    "__init__@_NodeState",
    "node_body",
    "_single_holder_body",
    "_agent_list",
    "_apply_nodes",
    "_external_body",
    "rfc3339",
    "host_id",
}


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@cache
def functions_of(filename: str) -> list[tuple[int, int, str]]:
    """(first line, last line, name) of every function in a file, classes' methods as name@Class."""
    tree = ast.parse(Path(filename).read_text())
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = f"{item.name}@{node.name}" if item.name == "__init__" else item.name
                    spans.append((item.lineno, item.end_lineno, name))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            spans.append((node.lineno, node.end_lineno, node.name))
    return spans


def function_at(filename: str, lineno: int) -> str:
    best = None
    for first, last, name in functions_of(filename):
        if first <= lineno <= last and (best is None or first > best[0]):
            best = (first, name)
    return best[1] if best else "<module>"


def side(frame) -> tuple[str, str]:
    """(side, where) of an allocation: side is node, edge, view or report (values parsed by pydantic and
    kept by the contributions: names, command lines, metadata, addresses)."""
    filename = frame.filename
    if "site-packages" in filename:
        return "report", f"{filename.split('site-packages/')[1].split('/')[0]} (parsed report values kept)"
    relative = os.path.relpath(filename, ROOT)
    function = function_at(filename, frame.lineno) if filename.endswith(".py") else "?"
    where = f"{relative}:{function}"
    if relative.startswith("orchestrator/topology/views.py"):
        return ("node" if function in NODE_FUNCTIONS else "view"), where
    return ("node" if function in NODE_FUNCTIONS else "edge"), where


def load(hosts: int) -> Topology:
    fleet = Fleet(hosts, seed=1)
    extract = {}
    topology = Topology()
    for round_index in range(2):
        for host in range(hosts):
            report = Report.model_validate_json(fleet.report_bytes(host, T0 + 15 * round_index))
            cgroups = extract

            def extractor(cgroup: str, cgroups=cgroups) -> str | None:
                if cgroup not in cgroups:
                    cgroups[cgroup] = container_id_from_cgroup(cgroup)
                return cgroups[cgroup]

            context = MergeContext(report, round_index * hosts + host, report.epoch, extractor, topology)
            for merger in MERGERS:
                merger.merge_report(report=report, context=context)
        topology.publish(T0 + 15 * round_index)
    del fleet, report
    return topology


def measure(hosts: int) -> dict:
    gc.collect()
    rss_before = rss_mb()
    tracemalloc.start(8)
    started = time.perf_counter()
    topology = load(hosts)
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    counts = topology.counts()
    by_side: Counter = Counter()
    by_where: Counter = Counter()
    own = str(ROOT)
    for stat in snapshot.statistics("traceback"):
        frames = [
            frame
            for frame in reversed(stat.traceback)
            if frame.filename.startswith(own)
            and "/benchmarks/" not in frame.filename
            # the one-to-many index helpers serve the engine and the views alike: their caller decides
            and function_at(frame.filename, frame.lineno) not in ("multi_add", "multi_discard")
        ]
        frame = frames[0] if frames else None
        if frame is None:
            continue  # the harness itself (fleet generator, parsed reports dropped meanwhile)
        kind, where = side(frame)
        by_side[kind] += stat.size
        by_where[where] += stat.size
    return {
        "hosts": hosts,
        "counts": counts,
        "sides": by_side,
        "top": by_where.most_common(14),
        "rss": rss_mb(),
        "rss_before": rss_before,
        "seconds": time.perf_counter() - started,
    }


def main(hosts: int) -> None:
    result = measure(hosts)
    counts, sides = result["counts"], result["sides"]
    total = sum(sides.values())
    print(f"### {hosts} hosts: {counts['nodes']:,} nodes, {counts['edges']:,} edges (tracemalloc, 8 frames)\n")
    print("| | MiB | bytes per |")
    print("|---|---|---|")
    print(
        f"| nodes (inputs, state, bodies) | {sides['node'] / 2**20:.1f} | {sides['node'] / counts['nodes']:.0f} per node |"
    )
    print(
        f"| connections and edges (records, resolution indexes, bodies) | {sides['edge'] / 2**20:.1f} | "
        f"{sides['edge'] / counts['edges']:.0f} per edge |"
    )
    print(
        f"| published views' indexes (per host, roll-ups) | {sides['view'] / 2**20:.1f} | "
        f"{sides['view'] / (counts['nodes'] + counts['edges']):.0f} per node or edge |"
    )
    print(
        f"| values parsed from reports, kept by contributions | {sides['report'] / 2**20:.1f} | "
        f"{sides['report'] / counts['nodes']:.0f} per node |"
    )
    print(f"| all traced | {total / 2**20:.1f} | {total / counts['nodes']:.0f} per node |")
    print(f"| RSS of the process (before the topology: {result['rss_before']:.0f}) | {result['rss']:.0f} | |")
    print("\n| where (file: function) | MiB |\n|---|---|")
    for where, size in result["top"]:
        print(f"| {where} | {size / 2**20:.1f} |")
    print()


if __name__ == "__main__":
    sizes = [int(arg) for arg in sys.argv[1:] if arg != "--one"] or [100]
    if len(sizes) > 1:
        import subprocess

        for size in sizes:
            subprocess.run([sys.executable, "-m", "benchmarks.bench_memory", "--one", str(size)], check=True)
    else:
        main(sizes[0])
