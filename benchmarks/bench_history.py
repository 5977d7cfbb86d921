"""History benchmark: disk for 24 h, extra CPU per report, ``at=`` and ``changes`` latency over HTTP, 100 hosts.

Run: ``python -m benchmarks.bench_history [--hosts 100] [--minutes 70] [--samples 40] [--keep DIR | --reuse DIR]``.
``--keep DIR`` also copies the simulated history into ``DIR`` (with ``run.json``, the simulation's figures);
``--reuse DIR`` skips the simulation and measures the latencies on a copy of what ``--keep`` left there (the
disk and CPU figures are those kept), so a change to the query side can be measured in a minute.

1. **Simulated clock.** A :class:`~orchestrator.probe.fleet.Fleet` (process and container churn, short-lived
   connections) reports as real probes would, each host every 15 s (1/15 of the fleet per second), for
   ``--minutes`` of simulated time ending now. The reports go through the built-in mergers into a
   :class:`~orchestrator.topology.Topology` (the receipt time is the simulated time), which publishes once
   per simulated second, as the hub does; a :class:`~orchestrator.state.history.History` keeps every
   publication and flushes every 15 simulated seconds, as the server does. No wall clock is involved, so
   an hour takes minutes.
2. **CPU.** Per simulated second, the CPU of parsing and merging that second's reports and publishing
   (what the server does per report besides HTTP) against the CPU history adds: :meth:`History.record` on
   the loop plus the flush (encoding, compressing, writing; run inline here so its CPU is counted). The
   ratio understates the server's per-report CPU (no HTTP, no validation of the wire body, no sinks), so
   it overstates history's share.
3. **Disk.** The size of ``history.sqlite`` after the run (its write-ahead log checkpointed into it and
   truncated first), extrapolated to 24 h: the first flush (15 s) holds the keyframes of the start, while
   the fleet's first reports arrive, which a day holds once too, so 24 h ≈ size after the first flush + 24 ×
   (size per simulated hour after it).
4. **Latency.** A real server (child process, loopback) is started on that data dir and asked over HTTP
   ``GET /api/v1/query/topology?at=T`` (``level=host`` and the full view) at random simulated times, and
   ``GET /api/v1/query/changes`` over one hour ending at a random time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.bench_topology import apply
from benchmarks.common import Server, machine, percentile
from orchestrator.contract.models import Report
from orchestrator.contract.times import format_rfc3339
from orchestrator.probe.fleet import Fleet
from orchestrator.state import history as history_module
from orchestrator.state.history import History
from orchestrator.topology import Topology

FLUSH_SECONDS = 15


def simulate(hosts: int, seconds: int, data_dir: Path, start: float) -> dict:
    fleet = Fleet(hosts, seed=1)
    topology = Topology()
    history = History(data_dir / history_module.FILENAME, retention=86400.0, keyframe_interval=3600.0)
    loop = asyncio.new_event_loop()
    base_cpu = history_cpu = 0.0
    reports = order = 0
    size_after_first_keyframe = None
    for second in range(seconds):
        now = start + second
        bodies = [fleet.report_bytes(host, now) for host in range(second % 15, hosts, 15)]  # the probes' work
        if second % 15 == 0:
            gc.freeze()  # as the server does (every second there): long-lived state out of the GC's scans
        started = time.process_time()
        for body in bodies:
            order += 1
            apply(topology, Report.model_validate_json(body), order)
            reports += 1
        publication = topology.publish(now)
        base_cpu += time.process_time() - started
        started = time.process_time()
        if publication is not None:
            history.record(publication, topology)
        if second % FLUSH_SECONDS == FLUSH_SECONDS - 1 or second == seconds - 1:
            loop.run_until_complete(history.flush())
            if size_after_first_keyframe is None:
                size_after_first_keyframe = _size(history)
        history_cpu += time.process_time() - started
    loop.run_until_complete(history.flush())
    size = _size(history)
    history.close()
    loop.close()
    hourly = (size - size_after_first_keyframe) * 3600 / seconds
    return {
        "reports": reports,
        "base_cpu_per_report_ms": base_cpu / reports * 1000,
        "history_cpu_per_report_ms": history_cpu / reports * 1000,
        "size_mb": size / 2**20,
        "start_keyframe_mb": size_after_first_keyframe / 2**20,
        "day_mb": (size_after_first_keyframe + 24 * hourly) / 2**20,
        "nodes": topology.counts()["nodes"],
        "edges": topology.counts()["edges"],
    }


def _size(history: History) -> int:
    """The file's size with its write-ahead log folded in and truncated: what the history takes on disk
    (the log's own size depends on when SQLite last checkpointed it, not on what is kept)."""
    history.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in history.path.parent.glob(history_module.FILENAME + "*"))


def latencies(data_dir: Path, start: float, seconds: int, samples: int) -> dict:
    rng = random.Random(1)
    figures: dict[str, list[float]] = {"host": [], "process": [], "changes": []}
    with Server(data_dir=str(data_dir)) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        for _ in range(samples):
            at = format_rfc3339(start + rng.uniform(60, seconds - 1))
            for level in ("host", "process"):
                figures[level].append(_timed(client, "/api/v1/query/topology", {"at": at, "level": level}))
            end = rng.uniform(3600, seconds - 1) if seconds > 3600 else seconds - 1
            window = {"from": format_rfc3339(start + end - min(3600, end)), "to": format_rfc3339(start + end)}
            figures["changes"].append(_timed(client, "/api/v1/query/changes", window))
    return {name: (percentile(values, 50), percentile(values, 95)) for name, values in figures.items()}


def _timed(client: httpx.Client, path: str, params: dict) -> float:
    started = time.perf_counter()
    response = client.get(path, params=params)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{path} {params}: {response.status_code} {response.text[:200]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=70)
    parser.add_argument("--samples", type=int, default=40)
    kept = parser.add_mutually_exclusive_group()
    kept.add_argument("--keep", type=Path, help="keep the simulated history (and its figures) in this directory")
    kept.add_argument("--reuse", type=Path, help="measure the latencies on the history --keep left here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orch-history-bench-") as directory:
        data_dir = Path(directory)
        if args.reuse:
            run = json.loads((args.reuse / "run.json").read_text())
            shutil.copy(args.reuse / history_module.FILENAME, data_dir)  # the server writes to its copy only
        else:
            seconds = int(args.minutes * 60)
            start = time.time() - seconds - 60  # a history ending a minute ago (at= must not be in the future)
            run = simulate(args.hosts, seconds, data_dir, start)
            run.update(hosts=args.hosts, seconds=seconds, start=start)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(data_dir / history_module.FILENAME, args.keep)
                (args.keep / "run.json").write_text(json.dumps(run))
        lat = latencies(data_dir, run["start"], run["seconds"], args.samples)
    print(f"Machine: {machine()} (shared with other work while measuring)")
    minutes = run["seconds"] / 60
    print(f"{run['hosts']} hosts, {minutes:g} simulated minutes: {run['nodes']} nodes, {run['edges']} edges\n")
    print("| figure | measured | target |\n|---|---|---|")
    print(
        f"| disk for 24 h (extrapolated) | {run['day_mb']:.0f} MB ({run['size_mb']:.1f} MB after the run, "
        f"{run['start_keyframe_mb']:.1f} MB of it the start keyframe) | ≤ 200 MB |"
    )
    share = run["history_cpu_per_report_ms"] / run["base_cpu_per_report_ms"] * 100
    print(
        f"| extra CPU per report | {run['history_cpu_per_report_ms']:.3f} ms on "
        f"{run['base_cpu_per_report_ms']:.3f} ms (parse + merge + publish) = {share:.1f} % | ≤ 10 % |"
    )
    for name, label, target in (
        ("host", "`at=` host view (level=host) p50 / p95", "≤ 50 ms"),
        ("process", "`at=` full view p50 / p95", "≤ 500 ms"),
        ("changes", "`changes` over 1 h p50 / p95", "≤ 500 ms"),
    ):
        p50, p95 = lat[name]
        print(f"| {label} | {p50:.1f} / {p95:.1f} ms | {target} |")


if __name__ == "__main__":
    main()
