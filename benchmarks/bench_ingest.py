"""Ingest benchmark: sustained accepted reports/s and POST latency for realistic reports, over loopback.

The server runs as a child process; the load generator (this process) replays pre-built gzip reports of a
synthetic fleet (``orchestrator.probe.fleet``: ~100 processes, ~200 connections, ~10 containers per host) over
keep-alive HTTP/1.1 connections with a minimal asyncio client, so that the loader costs little of the CPU
it shares with the server.

Two phases per fleet size:
1. saturation: ``--connections`` closed-loop senders for ``--seconds``: accepted reports/s (202), 429s, POST
   p50/p99; then the wait until the backlog the run left queued is applied. The sustained rate counts that
   wait (accepted / (run + drain)), and so does the server's CPU ms per accepted report (from /proc);
2. half rate, from an empty backlog: an open-loop schedule at half the sustained rate: POST p50/p99 (the
   latency a fleet sees).

    python benchmarks/bench_ingest.py [--hosts 100 1000] [--seconds 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import time

from benchmarks.common import Server, bucket_quantile, percentile
from orchestrator.probe.fleet import Fleet


def build_bodies(hosts: int, rounds: int) -> list[bytes]:
    fleet = Fleet(hosts, seed=7)
    start = time.time() - rounds * 15
    bodies = []
    for r in range(rounds):
        for i in range(hosts):
            bodies.append(gzip.compress(fleet.report_bytes(i, start + r * 15 + i * 15 / hosts), 1))
    return bodies


class Conn:
    """One keep-alive HTTP/1.1 connection that posts gzip JSON and reads the status."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader = self.writer = None

    async def post(self, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (
            f"POST /api/v1/reports HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return int(status_line.split()[1])


async def saturate(port: int, bodies: list[bytes], seconds: float, connections: int) -> dict:
    latencies: list[float] = []
    counts = {202: 0, 429: 0, "other": 0}
    deadline = time.perf_counter() + seconds
    cursor = iter(range(10**9))

    async def sender():
        conn = Conn(port)
        while time.perf_counter() < deadline:
            body = bodies[next(cursor) % len(bodies)]
            t = time.perf_counter()
            status = await conn.post(body)
            latencies.append(time.perf_counter() - t)
            counts[status if status in counts else "other"] += 1
            if status == 429:
                await asyncio.sleep(0.05)

    start = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    return {
        "accepted_per_s": counts[202] / elapsed,
        "accepted": counts[202],
        "seconds": elapsed,
        "throttled": counts[429],
        "other": counts["other"],
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


async def fixed_rate(port: int, bodies: list[bytes], rate: float, seconds: float) -> dict:
    latencies: list[float] = []
    statuses: list[int] = []
    pool: list[Conn] = []
    total = int(rate * seconds)

    async def one(i: int, at: float):
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        conn = pool.pop() if pool else Conn(port)
        t = time.perf_counter()
        statuses.append(await conn.post(bodies[i % len(bodies)]))
        latencies.append(time.perf_counter() - t)
        pool.append(conn)

    start = time.perf_counter() + 0.2
    await asyncio.gather(*(one(i, start + i / rate) for i in range(total)))
    return {
        "rate": rate,
        "sent": total,
        "accepted": statuses.count(202),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def run(hosts: int, seconds: float, connections: int) -> dict:
    bodies = build_bodies(hosts, rounds=max(2, 3000 // hosts))
    raw = len(gzip.decompress(bodies[0]))
    with Server() as server:
        asyncio.run(saturate(server.port, bodies[:hosts], 2, connections))  # warm-up: every host known
        cpu0 = server.cpu_seconds()
        sat = asyncio.run(saturate(server.port, bodies, seconds, connections))
        drain_s = server.wait_drained()
        cpu_ms = (server.cpu_seconds() - cpu0) * 1000 / max(1, sat["accepted"])
        sustained = sat["accepted"] / (sat["seconds"] + drain_s)
        lag0 = server.histogram("app_event_loop_lag_seconds")
        half = asyncio.run(fixed_rate(server.port, bodies, max(1.0, sustained / 2), seconds))
        lag1 = server.histogram("app_event_loop_lag_seconds")
        half["loop_lag_p99_ms"] = bucket_quantile(lag0, lag1, 99) * 1000
        server.wait_drained()
        time.sleep(1.5)
        stats = server.stats()
        rss = server.rss_mb()
    return {
        "hosts": hosts,
        "report_kb": raw / 1024,
        "gzip_kb": len(bodies[0]) / 1024,
        **sat,
        "cpu_ms_per_report": cpu_ms,
        "half": half,
        "drain_s": drain_s,
        "sustained_per_s": sustained,
        "rss_mb": rss,
        "nodes": stats["topology"]["nodes"],
        "edges": stats["topology"]["edges"],
        "server_received": stats["reports_received"],
    }


def table(results: list[dict]) -> str:
    lines = [
        "| hosts | report (JSON / gzip) | sustained reports/s (202s during the run, drain after) | 429s | POST p50 / p99 at saturation | "
        "at half rate: rate, p50 / p99 (event-loop lag p99 ≤) | server CPU per report | RSS | nodes / edges |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        h = r["half"]
        lines.append(
            f"| {r['hosts']} | {r['report_kb']:.0f} KB / {r['gzip_kb']:.0f} KB | {r['sustained_per_s']:.0f} "
            f"({r['accepted_per_s']:.0f}/s, {r['drain_s']:.1f} s) | "
            f"{r['throttled']} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms | {h['rate']:.0f}/s: "
            f"{h['p50_ms']:.1f} / {h['p99_ms']:.1f} ms ({h['loop_lag_p99_ms']:.0f} ms) | {r['cpu_ms_per_report']:.2f} ms | {r['rss_mb']:.0f} MB | "
            f"{r['nodes']} / {r['edges']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    results = [run(h, args.seconds, args.connections) for h in args.hosts]
    print(table(results))


if __name__ == "__main__":
    main()
