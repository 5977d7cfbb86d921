"""Runs every benchmark and writes their tables into benchmarks/RESULTS.md with the machine, versions and date.

    python -m benchmarks.run_all            # everything (about 15 minutes on 2 cores)
    python -m benchmarks.run_all --quick    # smaller fleets, for a smoke run

Each benchmark is a plain script that prints a markdown table; this runs them one after another (never in
parallel: they would measure each other) and replaces the generated part of RESULTS.md, between the
``<!-- results:start -->`` and ``<!-- results:end -->`` markers. The analysis above the markers is
written by people and kept.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version

from benchmarks.common import REPO, machine

RESULTS = REPO / "benchmarks" / "RESULTS.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"

FULL = [
    ("Ingest (server CPU per report, accepted reports/s, POST latency)", "bench_ingest", ["--hosts", "100", "1000"]),
    ("Topology queries over HTTP, server memory, time-series queries", "bench_query", ["--hosts", "10", "100", "1000"]),
    ("WebSocket fan-out to 1,000 clients", "bench_ws", ["--clients", "1000", "--rounds", "10"]),
    ("Topology engine in-process (apply, publish, snapshot, RSS)", "bench_topology", ["100", "1000"]),
    ("Checkpoint and restore at 1,000 agents", "bench_checkpoint", ["--agents", "1000"]),
    ("Time-series store", "bench_timeseries", ["--agents", "1000"]),
]
QUICK = {
    "bench_ingest": ["--hosts", "100", "--seconds", "4"],
    "bench_query": ["--hosts", "10", "100", "--samples", "5"],
    "bench_ws": ["--clients", "100", "--rounds", "3"],
    "bench_checkpoint": ["--agents", "100"],
    "bench_topology": ["100"],
    "bench_timeseries": ["--agents", "100"],
}


def run(module: str, args: list[str]) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        return f"**failed** (exit {done.returncode}):\n\n```\n{done.stderr[-3000:]}\n```", elapsed
    return done.stdout.strip(), elapsed


def header() -> str:
    commit = (
        subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        or "unknown"
    )
    libs = ", ".join(f"{name} {version(name)}" for name in ("sanic", "pydantic", "orjson", "numpy", "pluggy"))
    return (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit `{commit}` on {machine()}; "
        f"{libs}. Server and load generator share the machine, talking over 127.0.0.1."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="benchmark modules to run (default: all)")
    args = parser.parse_args()
    sections = [header()]
    for title, module, bench_args in FULL:
        if args.only and module not in args.only:
            continue
        output, elapsed = run(module, QUICK[module] if args.quick else bench_args)
        print(f"## {title}\n\n{output}\n", flush=True)
        command = " ".join(["python -m", f"benchmarks.{module}", *(QUICK[module] if args.quick else bench_args)])
        sections.append(f"### {title}\n\n`{command}` ({elapsed:.0f} s)\n\n{output}")
    text = RESULTS.read_text() if RESULTS.exists() else f"# Benchmark results\n\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    generated, _, tail = rest.partition(END)
    if args.only:  # keep the other benchmarks' last results, replace these
        kept = {part.split("\n", 1)[0]: "### " + part.strip() for part in generated.split("\n### ")[1:]}
        for section in sections[1:]:
            kept[section.split("\n", 1)[0].removeprefix("### ")] = section
        sections = [
            f"{sections[0]} (Only {', '.join(args.only)} rerun then; the others are from an earlier run.)",
            *kept.values(),
        ]
    RESULTS.write_text(f"{head}{START}\n" + "\n\n".join(sections) + f"\n{END}{tail}")


if __name__ == "__main__":
    main()
