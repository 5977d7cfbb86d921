"""Topology engine benchmark on a realistic fleet: report apply, publish, uncached snapshots, memory.

Run: ``/work/venv/bin/python benchmarks/bench_topology.py [hosts ...]`` (default: 100 1000).
Reports come from :class:`orchestrator.probe.fleet.Fleet` (~100 processes, ~10 containers and ~200 sockets per
host, connections aimed at other hosts' real listeners) and go through the four built-in mergers, timed
together (pydantic parsing excluded: it happens before the merge in the server too). Prints a markdown table.

- first apply: every host's first report into an empty topology; then the first publish (a restore);
- steady state: rounds of ``hosts * 1/15`` agents re-reporting 15 s later (one second of a fleet reporting
  every 15 s: new metrics, a few processes come and go), each round followed by one publish; first with
  the collapsed views idle (nobody reads them: not maintained), then RSS, then the one-pass build of each
  collapsed view, then rounds with every level's diff asked at each publish (views in use: maintained
  incrementally; the first of those rounds, which builds them, reported apart);
- snapshot_json per level, uncached (the per-seq cache is cleared, and a collapsed view dropped, first);
- RSS of the process with everything loaded and published (report objects dropped), and the RSS the
  harness itself held before the topology (imports and the fleet generator: part of the first figure);
- restore: every agent exported, then ``import_agents`` into an empty topology and its first publish
  (what persistence's restore does; measured last, it holds a second topology).
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time

import orjson

from orchestrator.contract.models import Report
from orchestrator.pipeline.ingest import MergeContext
from orchestrator.probe.fleet import Fleet
from orchestrator.topology import Topology
from orchestrator_plugins import (
    docker_topology,
    host_topology,
    network_topology,
    process_topology,
)
from orchestrator_plugins.cgroup_container_id import container_id_from_cgroup

MERGERS = (host_topology, docker_topology, process_topology, network_topology)
T0 = 1_760_000_000.0
ROUNDS = 6


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


_cgroups: dict[str, str | None] = {}


def extract(cgroup: str) -> str | None:
    # The server caches the extraction per distinct cgroup text; so does this.
    if cgroup not in _cgroups:
        _cgroups[cgroup] = container_id_from_cgroup(cgroup)
    return _cgroups[cgroup]


def apply(topology: Topology, report: Report, order: int) -> float:
    context = MergeContext(report, order, report.epoch, extract, topology)  # epoch parsed first, as in the server
    start = time.perf_counter()
    for merger in MERGERS:
        merger.merge_report(report=report, context=context)
    return (time.perf_counter() - start) * 1000


def timed_ms(function) -> float:
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1000


def percentile(values: list[float], fraction: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * fraction))]


def bench(hosts: int) -> dict:
    fleet = Fleet(hosts, seed=1)
    gc.collect()
    rss_before = rss_mb()  # imports and the fleet generator: part of the RSS below, not the topology's
    topology = Topology()
    order = 0
    first = []
    for host in range(hosts):
        report = Report.model_validate_json(fleet.report_bytes(host, T0))
        order += 1
        first.append(apply(topology, report, order))
    del report
    first_publish = timed_ms(lambda: topology.publish(T0))
    per_round = max(1, hosts // 15)
    round_index = 0

    def rounds(count: int, read_views: bool, fleet: Fleet = fleet) -> tuple[list, list]:
        nonlocal order, round_index
        publishes, diffs = [], []
        for _ in range(count):
            index = round_index
            round_index += 1
            now = T0 + 15 * (index + 1)
            reporting = [(index * per_round + k) % hosts for k in range(per_round)]
            reports = [Report.model_validate_json(fleet.report_bytes(host, now)) for host in reporting]
            for report in reports:
                order += 1
                steady.append(apply(topology, report, order))
            del reports
            publication = None

            def publish(now=now):
                nonlocal publication
                publication = topology.publish(now)

            publishes.append(timed_ms(publish))
            levels = ("process", "container", "host") if read_views else ("process",)
            diffs.append(
                timed_ms(lambda publication=publication, levels=levels: [publication.diff(level) for level in levels])
            )
        return publishes, diffs

    steady = []
    # Collapsed views idle (no client reads them: not maintained), then in use (diffs of all three levels
    # every publish, like the hub with clients on every level: maintained incrementally; the first round
    # pays their one-pass builds, so it is left out of the figures).
    idle_publishes, _ = rounds(ROUNDS, read_views=False)
    gc.collect()
    rss_idle = rss_mb()
    published = topology._published
    builds = {}
    for level in ("container", "host"):
        times = [
            timed_ms(lambda level=level: published.build_view(level, published.nodes, published.edges))
            for _ in range(5)
        ]
        builds[level] = (statistics.median(times), max(times))
    first_use = rounds(1, read_views=True)
    publishes, diffs = rounds(ROUNDS, read_views=True)
    result = {
        "hosts": hosts,
        "counts": topology.counts(),
        "first": first,
        "steady": steady,
        "first_publish": first_publish,
        "per_round": per_round,
        "publishes": publishes,
        "diffs": diffs,
        "idle_publishes": idle_publishes,
        "first_use": (first_use[0][0], first_use[1][0]),
        "builds": builds,
        "rss_idle": rss_idle,
    }
    for level in ("process", "container", "host"):
        runs = 5 if hosts >= 1000 and level != "host" else 20
        times, size = [], 0
        for _ in range(runs):
            topology._snapshot_json.clear()  # uncached: the cost a new seq pays once
            topology._snapshots.clear()
            if level != "process":
                published.views.pop(level, None)  # and the view not in use: built from the base
            times.append(timed_ms(lambda level=level: topology.snapshot_json(level)))
        size = len(topology.snapshot_json(level))
        result[f"json_{level}"] = (statistics.median(times), percentile(times, 0.95), size)
    times = []
    filter_host = fleet.agent_id(1)
    for _ in range(20):
        topology._snapshot_json.clear()
        topology._snapshots.clear()
        times.append(timed_ms(lambda: topology.snapshot_json("process", filter_host)))
    result["json_filter"] = (statistics.median(times), percentile(times, 0.95), 0)
    del fleet
    gc.collect()
    result["rss"] = rss_mb()
    result["rss_before"] = rss_before
    result["restore"] = restore(topology)
    return result


def restore(topology: Topology) -> tuple[float, float]:
    """What persistence's restore does: every agent exported, decoded and imported into an empty
    topology, then the first publish; (import ms, publish ms). Measured after RSS (it holds two copies)."""
    exported = [(agent, orjson.loads(orjson.dumps(topology.export_agent(agent)))) for agent in topology.agents()]
    restored = Topology()
    imported = timed_ms(lambda: restored.import_agents(exported))
    published = timed_ms(lambda: restored.publish(T0))
    assert restored.counts() == topology.counts()
    return imported, published


def main(sizes: list[int]) -> None:
    rows = []
    for hosts in sizes:
        rows.append(bench(hosts))  # one size at a time, in a fresh process each, for an honest RSS
    print("| metric | " + " | ".join(f"{row['hosts']} hosts" for row in rows) + " |")
    print("|---|" + "---|" * len(rows))

    def line(name, render):
        print(f"| {name} | " + " | ".join(render(row) for row in rows) + " |")

    line("nodes / edges", lambda r: f"{r['counts']['nodes']:,} / {r['counts']['edges']:,}")
    line(
        "processes / containers / externals",
        lambda r: f"{r['counts']['processes']:,} / {r['counts']['containers']:,} / {r['counts']['externals']:,}",
    )
    line(
        "apply first report p50 / p95 (ms)",
        lambda r: f"{statistics.median(r['first']):.2f} / {percentile(r['first'], 0.95):.2f}",
    )
    line(
        "apply re-report (steady) p50 / p95 (ms)",
        lambda r: f"{statistics.median(r['steady']):.2f} / {percentile(r['steady'], 0.95):.2f}",
    )
    line("first publish after bulk load (ms)", lambda r: f"{r['first_publish']:.0f}")
    line("restore: import_agents / first publish (ms)", lambda r: f"{r['restore'][0]:.0f} / {r['restore'][1]:.0f}")
    line(
        "publish after N re-reports, collapsed views idle p50 / max (ms)",
        lambda r: f"N={r['per_round']}: {statistics.median(r['idle_publishes']):.1f} / {max(r['idle_publishes']):.1f}",
    )
    line("RSS after publishing, collapsed views idle (MB)", lambda r: f"{r['rss_idle']:.0f}")
    for level in ("container", "host"):
        line(
            f"{level} view one-pass build p50 / max (ms)",
            lambda r, level=level: f"{r['builds'][level][0]:.1f} / {r['builds'][level][1]:.1f}",
        )
    line(
        "first publish + diffs once views are first read (ms)",
        lambda r: f"{r['first_use'][0]:.1f} + {r['first_use'][1]:.1f}",
    )
    line(
        "publish after N re-reports, views in use p50 / max (ms)",
        lambda r: f"N={r['per_round']}: {statistics.median(r['publishes']):.1f} / {max(r['publishes']):.1f}",
    )
    line("diffs, 3 levels, per publish, views in use p50 (ms)", lambda r: f"{statistics.median(r['diffs']):.1f}")
    for level in ("process", "container", "host"):
        line(
            f"snapshot_json {level} uncached p50 / p95 (ms), size",
            lambda r, level=level: (
                f"{r[f'json_{level}'][0]:.1f} / {r[f'json_{level}'][1]:.1f}, {r[f'json_{level}'][2] / 2**20:.1f} MiB"
            ),
        )
    line(
        "snapshot_json process, host filter p50 / p95 (ms)",
        lambda r: f"{r['json_filter'][0]:.2f} / {r['json_filter'][1]:.2f}",
    )
    line("RSS, everything loaded and published, all views in use (MB)", lambda r: f"{r['rss']:.0f}")
    line("RSS before the topology: imports + fleet generator (MB)", lambda r: f"{r['rss_before']:.0f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and "--one" not in sys.argv:
        # RSS is per process: run each size in its own interpreter and print one table per size.
        import subprocess

        for arg in sys.argv[1:]:
            subprocess.run([sys.executable, __file__, "--one", arg], check=True)
    else:
        main([int(arg) for arg in sys.argv[1:] if arg != "--one"] or [100])
