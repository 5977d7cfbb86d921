"""Many agents with tiny reports (issue 16 #7): memory per agent, and what ``GET /api/v1/query/stats`` costs.

Each agent sends one report with a few host metrics (no processes, containers or connections) through the
real pipeline in process (validation, the ingest queue, mergers and sinks), then the topology is published.
Reported: RSS before and after, the time-series store's memory, and the ``/stats`` handler at that size:
its wall time and the longest stretch it held the event loop (a ticker task measures the gaps).

Run: ``python -m benchmarks.bench_agents [--agents 100000]``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
from types import SimpleNamespace

import orjson

from benchmarks.common import with_stall_probe
from orchestrator.api.query import stats
from orchestrator.contract.models import Report
from orchestrator.contract.times import format_rfc3339
from orchestrator.runtime.build import build_state
from orchestrator.settings import Settings


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def tiny_report(index: int, now: float) -> bytes:
    return orjson.dumps(
        {
            "agent_id": f"tiny-{index}",
            "hostname": f"tiny-host-{index}",
            "timestamp": format_rfc3339(now),
            "host_info": {"cpu_percent": 1.5, "memory_used": 1 << 30, "memory_percent": 12.5},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100_000)
    args = parser.parse_args()
    settings = Settings.model_validate({"storage": {"persist": False}, "agents": {"max_agents": args.agents}})
    state = build_state(settings)
    gc.collect()
    before = rss_mb()
    now = time.time()
    start = time.perf_counter()
    for index in range(args.agents):
        raw = tiny_report(index, now)
        report = Report.model_validate_json(raw)
        state.ingest.submit(report, raw, now)
        state.record_report(report.agent_id, report.hostname, now)
        state.ingest.apply(state.ingest.queue.get_nowait())
    state.topology.publish(now)
    fill_s = time.perf_counter() - start
    gc.collect()
    after = rss_mb()
    request = SimpleNamespace(app=SimpleNamespace(ctx=SimpleNamespace(state=state, cluster=None)))
    runs = [asyncio.run(with_stall_probe(stats(request)))[1:] for _ in range(3)]
    series = state.timeseries.stats()
    rows = [
        ("agents (one tiny report each)", f"{args.agents:,}"),
        ("fill, in process", f"{fill_s:.1f} s"),
        ("RSS before / after", f"{before:.0f} / {after:.0f} MB"),
        ("RSS per agent", f"{(after - before) * 2**20 / args.agents:,.0f} B"),
        (
            "time-series data",
            f"{series['memory_bytes'] / 2**20:.1f} MiB ({series['memory_bytes'] / args.agents:,.0f} B per agent)",
        ),
        ("/stats handler, wall (3 runs)", ", ".join(f"{elapsed * 1000:.0f} ms" for elapsed, _ in runs)),
        ("/stats handler, longest loop hold", ", ".join(f"{hold * 1000:.1f} ms" for _, hold in runs)),
    ]
    print("| measure | value |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()
