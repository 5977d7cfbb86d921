"""Restore at start-up (issue 11 item 6): how long a server takes to come back from its data dir.

Per fleet size (hosts of ``orchestrator.probe.fleet``: ~100 processes, ~10 containers, ~200 connections
each), a server (a child process on loopback) is loaded once with ``--rounds`` reports per host and stopped
with SIGTERM (its final checkpoint); that data dir is kept. Each run then starts a fresh server on a copy of
it and measures the seconds from its start to ``/readyz`` 200, its RSS right after, and the per-table split
of the restore from its ``state_restored`` log line. The loaded server's published views (four levels,
without ``seq``) are compared with the restored server's: a restore that gives back anything else fails.

``--data DIR`` keeps the loaded data dirs (``DIR/<hosts>``) and reuses them on the next run, so only the
restarts are timed; ``--repo PATH`` runs another checkout's server on the same files (before / after).

    python -m benchmarks.bench_restore --hosts 100 300 1000 [--runs 3] [--data /tmp/restore-data]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from benchmarks.bench_fleet import load_all, ready_seconds
from benchmarks.bench_ingest import build_bodies
from benchmarks.common import REPO, Server, machine

VIEWS = ("", "?level=host", "?level=container", "?level=process&external=group")
INFO_LOGS = {"ORCHESTRATOR_LOG_LEVEL": "info", "ORCHESTRATOR_LOG_FORMAT": "json"}


def views(server: Server) -> dict[str, bytes]:
    """Each view's nodes, edges and timestamp as bytes (``seq`` numbers on after a restart)."""
    parts = {}
    with httpx.Client(base_url=server.url, timeout=600) as client:
        for view in VIEWS:
            body = client.get("/api/v1/query/topology" + view).json()["topology"]
            parts[view] = orjson.dumps({k: body[k] for k in ("nodes", "edges", "timestamp")})
        parts["agents"] = without_status(client.get("/api/v1/agents/list").content)
    return parts


def without_status(listed: bytes) -> bytes:
    """The agents list without each agent's ``status`` (online or stale: a function of the time of the read)."""
    agents = orjson.loads(listed)
    for agent in agents["agents"]:
        agent.pop("status", None)
    return orjson.dumps(agents)


def settled_views(server: Server) -> dict[str, bytes]:
    """The views once two reads a broadcast tick apart agree (everything applied is published)."""
    previous = views(server)
    while True:
        time.sleep(1.5)
        current = views(server)
        if current == previous:
            return current
        previous = current


def load(data_dir: Path, hosts: int, rounds: int) -> dict[str, bytes]:
    bodies = build_bodies(hosts, rounds=rounds)
    with Server(data_dir=str(data_dir), start_timeout=600) as server:
        asyncio.run(load_all(server.port, bodies, 8))
        server.wait_drained(1200)
        before = settled_views(server)
        server.proc.terminate()  # the final checkpoint
        server.proc.wait(600)
    return before


def restart(source: Path, repo: Path, expected: dict[str, bytes] | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="orch-restore-") as tmp:
        copy = Path(tmp) / "data"
        shutil.copytree(source, copy)
        log_path = Path(tmp) / "server.log"
        server = Server(data_dir=str(copy), start_timeout=600, repo=repo, env=INFO_LOGS, stderr=log_path)
        try:
            result = {"ready_s": ready_seconds(server), "rss_mb": server.rss_mb()}
            if expected is not None:
                after = views(server)
                result["same"] = after == expected
                result["diff"] = [view for view in expected if after.get(view) != expected[view]]
        finally:
            server.proc.kill()  # no final checkpoint: the copy is thrown away
            server.proc.wait()
            server.stop()
        for line in log_path.read_text().splitlines():
            if '"state_restored"' in line:
                event = orjson.loads(line)
                result["split"] = {k: v for k, v in event.items() if k.endswith("_ms")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000])
    parser.add_argument("--rounds", type=int, default=2, help="reports per host before the stop")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, help="keep (and reuse) the loaded data dirs here")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose server restarts")
    args = parser.parse_args()
    print(machine(), f"load average {os.getloadavg()[0]:.1f}")
    keep = args.data or Path(tempfile.mkdtemp(prefix="orch-restore-data-"))
    for hosts in args.hosts:
        source = keep / str(hosts)
        expected_file = keep / f"{hosts}.views.json"
        if not (source / "orchestrator.db").exists():
            started = time.perf_counter()
            expected = load(source, hosts, args.rounds)
            expected_file.write_bytes(orjson.dumps({k: v.decode() for k, v in expected.items()}))
            print(f"{hosts} hosts loaded in {time.perf_counter() - started:.0f} s")
        stored = orjson.loads(expected_file.read_bytes()) if expected_file.exists() else None
        expected = {k: v.encode() for k, v in stored.items()} if stored else None
        if expected is not None:
            expected["agents"] = without_status(expected["agents"])
        for run in range(args.runs):
            result = restart(source, args.repo, expected)
            print(f"{hosts} hosts, run {run + 1}: load {os.getloadavg()[0]:.1f}, {orjson.dumps(result).decode()}")
    if args.data is None:
        shutil.rmtree(keep)


if __name__ == "__main__":
    main()
