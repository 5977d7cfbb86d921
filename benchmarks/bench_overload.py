"""Goodput under overload: does the accepted rate hold when four times more reports arrive than fit?

Per fleet size (hosts of ``orchestrator.probe.fleet``), one fresh server (a child process on loopback):

1. load: every host's first report, the backlog drained;
2. capacity: ``--connections`` closed-loop senders for ``--seconds`` (as ``bench_ingest``): accepted reports/s,
   the drain of the backlog they left counted in;
3. overload: an open-loop schedule of ``--factor`` × capacity reports/s for ``--seconds`` over at most
   ``--over-connections`` connections, a 429 not backed off (each send is its own request at its own time,
   as a fleet of probes whose clocks do not know about each other; "sent" says what the schedule achieved):
   accepted reports/s (drain counted in), the share of capacity that is, the 429s, POST
   p50 / p99 of the 202s and of the 429s. (What one 429 costs is measured apart by ``bench_fleet``: here the
   accepted reports cost less than in the capacity run, since more of them are coalesced, so a difference
   of the two runs' CPU says nothing about the refusals.)

Issue 11 asks for goodput ≥ 90 % of capacity at four times the load.

    python -m benchmarks.bench_overload [--sizes 100 1000] [--seconds 20] [--factor 4]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks.bench_fleet import load_all
from benchmarks.bench_ingest import Conn, build_bodies, saturate
from benchmarks.common import Server, machine, percentile


async def open_loop(port: int, bodies: list[bytes], rate: float, seconds: float, connections: int) -> dict:
    """``rate`` × ``seconds`` posts, each at its own time, over at most ``connections`` connections (a post
    whose time comes while all are busy goes out on the first one free: without a bound the load generator,
    on the same two cores, opened thousands and measured its own scheduling)."""
    answers: dict[int, list[float]] = {}
    pool: list[Conn] = []
    free = asyncio.Semaphore(connections)
    total = int(rate * seconds)

    async def one(i: int, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        async with free:
            await post(i)

    async def post(i: int) -> None:
        reused = bool(pool)
        conn = pool.pop() if pool else Conn(port)
        started = time.perf_counter()
        try:
            status = await conn.post(bodies[i % len(bodies)])
        except (ConnectionError, asyncio.IncompleteReadError, IndexError):
            if not reused:
                answers.setdefault(0, []).append(time.perf_counter() - started)  # 0: reset, no answer
                return
            # The server closed an idle kept-alive connection (timeout, or shed at the connection cap) before
            # reading this request: a client opens a new one and sends again, as HTTP clients do.
            conn = Conn(port)
            status = await conn.post(bodies[i % len(bodies)])
        answers.setdefault(status, []).append(time.perf_counter() - started)
        pool.append(conn)

    start = time.perf_counter() + 0.2
    await asyncio.gather(*(one(i, start + i / rate) for i in range(total)))
    return {"sent": total, "seconds": time.perf_counter() - start, "answers": answers}


def run(hosts: int, seconds: float, connections: int, factor: float, over_connections: int) -> dict:
    bodies = build_bodies(hosts, rounds=max(3, 3000 // hosts))
    with Server() as server:
        asyncio.run(load_all(server.port, bodies[:hosts], connections))
        server.wait_drained(600)

        sat = asyncio.run(saturate(server.port, bodies, seconds, connections))
        drain = server.wait_drained(600)
        capacity = sat["accepted"] / (sat["seconds"] + drain)

        over = asyncio.run(open_loop(server.port, bodies, factor * capacity, seconds, over_connections))
        drain = server.wait_drained(600)
    answers = over["answers"]
    accepted, refused = answers.get(202, []), answers.get(429, [])
    goodput = len(accepted) / (over["seconds"] + drain)
    others = {status: len(times) for status, times in answers.items() if status not in (202, 429)}
    return {
        "hosts": hosts,
        "capacity": capacity,
        "offered": factor * capacity,
        "goodput": goodput,
        "share": goodput / capacity,
        "refused": len(refused),
        "others": others,
        "accepted_p50_ms": percentile(accepted, 50) * 1000,
        "accepted_p99_ms": percentile(accepted, 99) * 1000,
        "refused_p50_ms": percentile(refused, 50) * 1000,
        "refused_p99_ms": percentile(refused, 99) * 1000,
        "sent_per_s": over["sent"] / over["seconds"],
    }


def table(results: list[dict], factor: float) -> str:
    lines = [
        f"| hosts | capacity (closed loop) | offered ({factor:g}×), sent | accepted under overload | share of capacity | "
        "429s | POST p50 / p99: 202 · 429 | other answers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['hosts']:,} | {r['capacity']:.0f}/s | {r['offered']:.0f}/s, {r['sent_per_s']:.0f}/s | {r['goodput']:.0f}/s | "
            f"{100 * r['share']:.0f} % | {r['refused']:,} | {r['accepted_p50_ms']:.1f} / {r['accepted_p99_ms']:.0f} ms · "
            f"{r['refused_p50_ms']:.1f} / {r['refused_p99_ms']:.0f} ms | "
            f"{r['others'] or 'none'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--factor", type=float, default=4)
    parser.add_argument("--over-connections", type=int, default=64, help="connections of the overload phase")
    args = parser.parse_args()
    results = []
    for hosts in args.sizes:
        results.append(run(hosts, args.seconds, args.connections, args.factor, args.over_connections))
        print(table(results[-1:], args.factor).splitlines()[-1], flush=True)
    print(machine())
    print(table(results, args.factor))


if __name__ == "__main__":
    main()
