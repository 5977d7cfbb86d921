"""Benchmark durable state: full and incremental checkpoints, on-loop stalls, restore, file size; and a
cleanup sweep that archives the whole fleet.

Each agent gets a realistic state: one synthetic fleet report (100 processes, 200 connections, 10
containers by default) validated and applied through the real pipeline (mergers, time-series and
latest-report sinks), plus a full hour of time-series points (240 buckets).

Run: ``python benchmarks/bench_checkpoint.py [--agents N]``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from pathlib import Path

import orjson
from structlog.testing import capture_logs

from benchmarks.common import with_stall_probe
from orchestrator.contract.models import Report
from orchestrator.probe.fleet import Fleet
from orchestrator.runtime.build import build_state
from orchestrator.settings import Settings
from orchestrator.state import State
from orchestrator.state.cleanup import sweep
from orchestrator.state.persistence import Store
from orchestrator_plugins.timeseries_sink import report_metrics


def make_state(data_dir: Path) -> State:
    settings = Settings.model_validate({"storage": {"data_dir": str(data_dir)}})
    return build_state(settings)


def apply(state: State, fleet: Fleet, index: int, now: float) -> Report:
    """What the report handler and the ingest worker do with one accepted report."""
    body = fleet.report(index, now)
    raw = orjson.dumps(body)
    report = Report.model_validate_json(raw)
    state.ingest.submit(report, raw, now)
    state.record_report(report.agent_id, report.hostname, now)
    state.ingest.apply(state.ingest.queue.get_nowait())
    return report


def populate(state: State, fleet: Fleet, now: float) -> None:
    for index in range(fleet.hosts):
        report = apply(state, fleet, index, now)
        metrics = report_metrics(report)
        for back in range(1, state.timeseries.capacity):  # the rest of the hour of history
            state.timeseries.add_report(report.agent_id, now - 15 * back, metrics, now=now)
    state.topology.publish(now)


def db_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def main(agents: int) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    data_dir = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    now = time.time()
    start = time.perf_counter()
    fleet = Fleet(agents)
    state = make_state(data_dir)
    populate(state, fleet, now)
    rows.append(
        (f"build state ({agents} agents via the pipeline + 240 points each)", f"{time.perf_counter() - start:.1f} s")
    )

    # A heap this size (millions of topology objects) makes any full GC pass a long pause, whoever
    # allocates when it comes due; run it now so the checkpoint rows measure the checkpoint itself.
    start = time.perf_counter()
    gc.collect()
    rows.append(
        (
            "full GC pass over this heap (any allocation may trigger one)",
            f"{(time.perf_counter() - start) * 1000:.0f} ms",
        )
    )

    store, _ = Store.open(data_dir)
    result, elapsed, stall = await with_stall_probe(store.checkpoint(state, full=True))
    assert result.ok and result.written == agents
    rows += [
        (f"full checkpoint ({agents} agents)", f"{elapsed * 1000:.0f} ms"),
        ("  longest on-loop stall (ticker)", f"{stall * 1000:.1f} ms"),
        ("  longest gather step (checkpoint's own count)", f"{result.longest_step * 1000:.1f} ms"),
    ]
    rows.append(("DB size after full checkpoint (db + wal)", f"{db_size(store.path) / 1e6:.1f} MB"))

    later = now + 15
    for index in range(0, agents, max(1, agents // 100))[:100]:
        apply(state, fleet, index, later)
    dirty = len(state.dirty_agents)
    result, elapsed, stall = await with_stall_probe(store.checkpoint(state))
    assert result.ok and result.written == dirty
    rows += [
        (f"incremental checkpoint ({dirty} dirty)", f"{elapsed * 1000:.0f} ms"),
        ("  longest on-loop stall (ticker)", f"{stall * 1000:.1f} ms"),
    ]
    store.close()
    rows.append(("DB size after close (WAL folded in)", f"{db_size(store.path) / 1e6:.1f} MB"))

    reopened, problem = Store.open(data_dir)
    assert problem is None
    fresh = make_state(data_dir)
    start = time.perf_counter()
    with capture_logs() as logs:
        counts = reopened.restore(fresh)
    rows.append(
        (
            f"restore ({counts['agents']} agents, incl. topology publish)",
            f"{(time.perf_counter() - start) * 1000:.0f} ms",
        )
    )
    restored = next(e for e in logs if e["event"] == "state_restored")
    rows.append(("  of which topology import + publish", f"{restored['topology_ms'] + restored['publish_ms']:.0f} ms"))
    assert counts["skipped"] == 0 and len(fresh.registry) == agents

    rows += await sweep_all(fresh, later)
    reopened.close()
    return rows


async def sweep_all(state: State, now: float) -> list[tuple[str, str]]:
    """A sweep long after the last report: every agent goes to the archive."""
    stats, elapsed, stall = await with_stall_probe(sweep(state, now + state.settings.agents.stale_threshold + 1))
    batch = state.settings.cleanup.batch_size
    return [
        (f"cleanup sweep archiving {stats['archived']} agents (batch {batch})", f"{elapsed * 1000:.0f} ms"),
        ("  longest on-loop stall (ticker)", f"{stall * 1000:.1f} ms"),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    args = parser.parse_args()
    with capture_logs():  # the per-event logs would drown the table
        table = asyncio.run(main(args.agents))
    print("| measure | value |\n|---|---|")
    for name, value in table:
        print(f"| {name} | {value} |")
