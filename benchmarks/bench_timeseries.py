"""Benchmark the time-series store: 1,000 agents × 240 points.

Run: ``python benchmarks/bench_timeseries.py [--agents N] [--queries N]``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc

from orchestrator.state.timeseries import TimeSeriesStore

T0 = 1_760_313_600.0


def report_metrics(i: int) -> dict[str, float]:
    return {
        "cpu_percent": 10.0 + i % 50,
        "memory_used": 6_442_450_944 + i,
        "memory_percent": 38.4,
        "load1": 0.5,
        "net_rx_bytes": 918_273_645 + 150_000 * i,
        "net_tx_bytes": 123_456_789 + 20_000 * i,
        "process_count": 300 + i % 3,
        "container_count": 12,
        "connection_count": 80 + i % 7,
    }


def fill(store: TimeSeriesStore, agents: int, points: int, now: float) -> float:
    """Fill every agent; return the mean add_report cost in seconds."""
    names = [f"agent-{a}" for a in range(agents)]
    reports = [report_metrics(i) for i in range(points)]
    start = time.perf_counter()
    for i, metrics in enumerate(reports):
        ts = now - 15 * (points - 1 - i) + 2.5
        for name in names:
            store.add_report(name, ts, metrics, now=now)
    return (time.perf_counter() - start) / (agents * points)


def query_latencies(store: TimeSeriesStore, agents: int, queries: int, step: float, now: float) -> list[float]:
    rng = random.Random(1)
    latencies = []
    for _ in range(queries):
        agent = f"agent-{rng.randrange(agents)}"
        start = time.perf_counter()
        store.get_recent_points(agent, duration=3600.0, step=step, now=now)
        latencies.append(time.perf_counter() - start)
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=1_000)
    parser.add_argument("--queries", type=int, default=2_000)
    args = parser.parse_args()
    now = T0 + 3600.0
    store = TimeSeriesStore()
    points = store.capacity

    add_cost = fill(store, args.agents, points, now)
    # Rings are preallocated, so one point per agent allocates what a full hour does; measured on a
    # separate store because tracemalloc would slow the timed fill.
    tracemalloc.start()
    measured = TimeSeriesStore()
    fill(measured, args.agents, 1, now)
    allocated, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del measured

    rows = [("add_report (per call)", f"{add_cost * 1e6:.2f} µs", "")]
    for label, step in (("get_recent_points 1h, step 15s", 15.0), ("get_recent_points 1h, step 1m", 60.0)):
        latencies = query_latencies(store, args.agents, args.queries, step, now)
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        rows.append((label, f"p50 {p50 * 1e6:.0f} µs", f"p95 {p95 * 1e6:.0f} µs"))
    rows.append(("memory per agent (ring data)", f"{store.bytes_per_agent:,} B", ""))
    rows.append(("memory per agent (tracemalloc)", f"{allocated / args.agents:,.0f} B", ""))
    rows.append((f"total, {args.agents:,} agents (tracemalloc)", f"{allocated / 2**20:.1f} MiB", ""))

    print(f"{args.agents:,} agents × {points} points, {args.queries:,} queries per row\n")
    print("| measure | value | |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
