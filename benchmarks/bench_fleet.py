"""Fleet-size sweep: what one report costs, what the server sustains, and how its views answer, as the fleet grows.

Per fleet size (hosts of ``orchestrator.probe.fleet``: ~100 processes, ~10 containers, ~200 connections
each), one fresh server (a child process on loopback, persisting to its own data dir):

1. load: every host's first report (retried on 429), the backlog drained;
2. paced: ``--rate`` reports/s for ``--seconds`` (an open-loop schedule): server CPU per accepted report;
3. saturation: ``--connections`` closed-loop senders for ``--seconds``: accepted reports/s (the drain of the
   backlog they left counted in) and the 429 count (what one 429 costs is measured apart: a derivation from
   this run's CPU is below the noise, since a saturated server's fixed costs per report are lower than a
   paced one's);
4. RSS once the backlog is applied;
5. views, each the first read after a publish (host 0 re-reports, the next seq awaited): host view
   (``external=each`` and ``=group``), the full process view; timed to the last byte on the wire (gzipped,
   not decoded: what the server takes) and, apart, decoded by httpx (what this Python client adds);
6. four clients reading the full view in a loop for ``--seconds`` while reports keep arriving at a quarter
   of ``--rate``, a fifth pinging ``/api/v1/ping`` every 20 ms: full-view p50/p95 and ping p50/p99/max;
7. restore: SIGTERM (final checkpoint), then a new server on the same data dir: seconds from its start to
   ``/readyz`` 200 (and, for comparison, an empty server's start to its first answer).

The load generator shares the machine with the server: CPU figures come from /proc (the server process
only), latencies include the loader's scheduling. ``--write`` puts the table into ``benchmarks/RESULTS.md``
(its own section), the figures into ``benchmarks/fleet_results.json`` and the cost curve into
``benchmarks/fleet_cost.png``; ``--replot`` redraws the table and the curve from that JSON file.

    python -m benchmarks.bench_fleet --sizes 100 300 1000 3000 [--seconds 10] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime

import httpx

from benchmarks import pinger
from benchmarks.bench_ingest import Conn, build_bodies, fixed_rate, saturate
from benchmarks.bench_query import fresh_view
from benchmarks.common import REPO, Server, bucket_quantile, machine, percentile
from orchestrator.probe.fleet import Fleet

RESULTS = REPO / "benchmarks" / "RESULTS.md"
PLOT = REPO / "benchmarks" / "fleet_cost.png"
DATA = REPO / "benchmarks" / "fleet_results.json"
START, END = "<!-- fleet:start -->", "<!-- fleet:end -->"
SEED = 7  # build_bodies' fleet: the views' re-reports come from the same hosts
# Loading 3,000 hosts takes this machine 8-10 minutes and the paced phase re-reports few of them, so at the
# default 5 minutes the first hosts went stale and were archived mid-run (a 3,000-host run measured its views
# and its restore on 205k of 366k nodes). The sweep measures a fleet that stays whole.
SERVER_ENV = {"ORCHESTRATOR_AGENTS__STALE_THRESHOLD": "6h"}


async def load_all(port: int, bodies: list[bytes], connections: int) -> None:
    """Each body accepted once (202), retried after a 429."""
    pending = list(reversed(bodies))

    async def sender() -> None:
        conn = Conn(port)
        while pending:
            body = pending.pop()
            while await conn.post(body) != 202:
                await asyncio.sleep(0.05)

    await asyncio.gather(*(sender() for _ in range(connections)))


def ready_seconds(server: Server, timeout: float = 600) -> float:
    """Seconds from the server's start until ``/readyz`` answers 200 (restored and caught up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(server.url + "/readyz", timeout=5).status_code == 200:
                return time.monotonic() - server.started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server not ready in time")


async def reads_under_load(server: Server, bodies: list[bytes], seconds: float, rate: float) -> dict:
    """Four clients fetch the full view in a loop, reports arrive at ``rate``, a pinger in its own process
    (:mod:`benchmarks.pinger`: in this loop it would wait for the readers' bodies too) pings every 20 ms; the
    server's own loop lag (``app_event_loop_lag_seconds``) over the same time says how long it held its loop."""
    views: list[float] = []
    deadline = time.perf_counter() + seconds
    lag_before = server.histogram("app_event_loop_lag_seconds")

    async def reader(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            response = await client.get("/api/v1/query/topology")
            assert response.status_code == 200
            views.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=8)
    ping_process = pinger.start(server.url, seconds)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(reader(client) for _ in range(4)), fixed_rate(server.port, bodies, rate, seconds))
    pings = await asyncio.to_thread(pinger.collect, ping_process)
    lag_after = server.histogram("app_event_loop_lag_seconds")
    return {
        "reads": len(views),
        "view_p50_ms": percentile(views, 50) * 1000,
        "view_p95_ms": percentile(views, 95) * 1000,
        "ping_p50_ms": percentile(pings, 50) * 1000,
        "ping_p99_ms": percentile(pings, 99) * 1000,
        "ping_max_ms": max(pings, default=float("nan")) * 1000,
        "loop_lag_p99_le_ms": bucket_quantile(lag_before, lag_after, 99) * 1000,
        "loop_lag_max_le_ms": bucket_quantile(lag_before, lag_after, 100) * 1000,
    }


def views(server: Server, hosts: int, samples: int) -> dict:
    """Each view read first after a publish, ``samples`` times to its last byte on the wire (gzipped, what the
    server takes: the table's figure) and as many times decoded by httpx (what this Python client takes),
    after a first read (timed apart: it builds what the later ones keep)."""
    fleet = Fleet(hosts, seed=SEED)
    now = time.time()  # fresh_view posts host 0 at now + 1, + 2, …: newer each time, so the topology changes
    out = {}
    with httpx.Client(base_url=server.url, timeout=300) as client:
        for name, level, extra, count in (
            ("host", "host", "", samples),
            ("host_group", "host", "&external=group", samples),
            ("full", "process", "", max(3, samples // 4)),
        ):
            # The first read builds what later ones keep (a collapsed view, each item's JSON): timed apart.
            first = fresh_view(client, fleet, level, now, extra, wire=True)
            wire = [fresh_view(client, fleet, level, now, extra, wire=True) for _ in range(count)]
            decoded = [fresh_view(client, fleet, level, now, extra) for _ in range(count)]
            out[name] = {
                "p50_ms": percentile([t[0] for t in wire], 50),
                "p95_ms": percentile([t[0] for t in wire], 95),
                "wire_bytes": wire[-1][1],
                "first_ms": first[0],
                "decoded_p95_ms": percentile([t[0] for t in decoded], 95),
                "bytes": decoded[-1][1],
            }
    return out


def run(hosts: int, seconds: float, connections: int, rate: float, samples: int) -> dict:
    bodies = build_bodies(hosts, rounds=max(3, 3000 // hosts))
    result: dict = {"hosts": hosts}
    with Server(env=SERVER_ENV) as server:
        t = time.perf_counter()
        asyncio.run(load_all(server.port, bodies[:hosts], connections))
        server.wait_drained(600)
        result["load_s"] = time.perf_counter() - t
        paced_bodies = bodies[hosts:]

        cpu0 = server.cpu_seconds()
        paced = asyncio.run(fixed_rate(server.port, paced_bodies, rate, seconds))
        server.wait_drained(600)
        result["cpu_ms"] = (server.cpu_seconds() - cpu0) * 1000 / max(1, paced["accepted"])
        result["paced_p99_ms"] = paced["p99_ms"]

        cpu0 = server.cpu_seconds()
        sat = asyncio.run(saturate(server.port, bodies, seconds, connections))
        drain_s = server.wait_drained(600)
        cpu_ms = (server.cpu_seconds() - cpu0) * 1000  # the saturated run and its drain
        result["sustained_per_s"] = sat["accepted"] / (sat["seconds"] + drain_s)
        result["throttled"] = sat["throttled"]
        result["saturated_cpu_ms"] = cpu_ms / max(1, sat["accepted"])
        time.sleep(1.5)
        result["rss_mb"] = server.rss_mb()
        stats = server.stats()
        result["nodes"], result["edges"] = stats["topology"]["nodes"], stats["topology"]["edges"]

        result["views"] = views(server, hosts, samples)
        result["under_reads"] = asyncio.run(reads_under_load(server, paced_bodies, seconds, max(1.0, rate / 4)))
        server.wait_drained(600)
        before_stop = server.stats()["topology"]["nodes"]
        data_dir = server.data_dir
        server.proc.terminate()  # the final checkpoint; the data dir stays for the restart
        server.proc.wait(300)
        with Server(data_dir=data_dir, start_timeout=600, env=SERVER_ENV) as restored:
            result["restore_s"] = ready_seconds(restored)
            result["restored_nodes"] = restored.stats()["topology"]["nodes"]
            if result["restored_nodes"] != before_stop:
                print(f"warning: {before_stop} nodes before the restart, {result['restored_nodes']} after")
    with Server() as empty:
        result["empty_start_s"] = ready_seconds(empty)
    return result


def table(results: list[dict], rate: float, connections: int) -> str:
    lines = [
        f"| hosts | nodes / edges | CPU per accepted report (paced {rate:.0f}/s) | saturation ({connections} conn.): "
        "reports/s, 429s, CPU per accepted report | RSS | host view p95 (each / group), to the last byte [decoded by "
        "httpx] | full view p95 (size), to the last byte [decoded] | "
        "4 readers of the full view: view p50 / p95, ping p50 / p99 / max, server loop lag p99 / max ≤ | "
        "restore (empty start) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        v, u = r["views"], r["under_reads"]
        saturated = f"{r['saturated_cpu_ms']:.2f} ms" if r.get("saturated_cpu_ms") is not None else "—"
        lines.append(
            f"| {r['hosts']:,} | {r['nodes']:,} / {r['edges']:,} | {r['cpu_ms']:.2f} ms | "
            f"{r['sustained_per_s']:.0f}/s, {r['throttled']:,}, {saturated} | {r['rss_mb']:.0f} MB | "
            f"{v['host']['p95_ms']:.0f} / {v['host_group']['p95_ms']:.0f} ms{decoded_text(v, 'host', 'host_group')} | "
            f"{v['full']['p95_ms']:.0f} ms ({v['full']['bytes'] / 1e6:.0f} MB){decoded_text(v, 'full')} | "
            f"{u['view_p50_ms']:.0f} / {u['view_p95_ms']:.0f} ms, {u['ping_p50_ms']:.1f} / "
            f"{u['ping_p99_ms']:.1f} / {u['ping_max_ms']:.0f} ms ({u['reads']} reads){lag_text(u)} | "
            f"{r['restore_s']:.1f} s ({r['empty_start_s']:.1f} s) |"
        )
    return "\n".join(lines)


def decoded_text(views: dict, *names: str) -> str:
    if "decoded_p95_ms" not in views[names[0]]:  # measured before the wire figure: the p95 was httpx's
        return ""
    return " [" + " / ".join(f"{views[name]['decoded_p95_ms']:.0f}" for name in names) + " ms]"


def lag_text(under_reads: dict) -> str:
    if "loop_lag_p99_le_ms" not in under_reads:  # measured before the server's loop lag was read
        return ""
    return f", lag {under_reads['loop_lag_p99_le_ms']:.0f} / {under_reads['loop_lag_max_le_ms']:.0f} ms"


def reads_only(hosts: int, seconds: float, connections: int, rate: float) -> dict:
    """Only phases 1 and 6: the fleet loaded, then the full view read under load (``--reads-only``)."""
    bodies = build_bodies(hosts, rounds=max(3, 3000 // hosts))
    with Server(env=SERVER_ENV) as server:
        asyncio.run(load_all(server.port, bodies[:hosts], connections))
        server.wait_drained(600)
        return asyncio.run(reads_under_load(server, bodies[hosts:], seconds, max(1.0, rate / 4)))


def plot(results: list[dict]) -> None:
    import matplotlib  # the bench extra: pip install -e '.[bench]'

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hosts = [r["hosts"] for r in results]
    fig, cost = plt.subplots(figsize=(7, 4.2), dpi=110)
    cost.plot(hosts, [r["cpu_ms"] for r in results], "o-", color="tab:blue", label="CPU per accepted report")
    cost.set_xscale("log")
    cost.set_xticks(hosts, [f"{h:,}" for h in hosts])
    cost.set_xlabel("hosts in the fleet (100 processes, 10 containers, 200 connections each)")
    cost.set_ylabel("server CPU per accepted report (ms)", color="tab:blue")
    cost.set_ylim(bottom=0)
    rate = cost.twinx()
    rate.plot(hosts, [r["sustained_per_s"] for r in results], "s--", color="tab:orange", label="saturation")
    rate.set_ylabel("accepted reports/s at saturation", color="tab:orange")
    rate.set_ylim(bottom=0)
    fig.suptitle("Cost per report as the fleet grows (2 shared cores, loader on the same machine)", fontsize=10)
    fig.tight_layout()
    fig.savefig(PLOT)


def write(text: str, measured: str) -> None:
    stamp = f"_Generated by `python -m benchmarks.bench_fleet --write`, measured {measured}._"
    section = f"{START}\n{stamp}\n\n{text}\n\n![cost curve](fleet_cost.png)\n{END}"
    current = RESULTS.read_text() if RESULTS.exists() else ""
    if START in current and END in current:
        head, rest = current.split(START, 1)
        current = head + section + rest.split(END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n## Fleet-size sweep\n\n" + section + "\n"
    RESULTS.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 3000])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=40, help="paced reports/s")
    parser.add_argument("--samples", type=int, default=12, help="reads per view (the full view: a quarter)")
    parser.add_argument("--write", action="store_true", help="update RESULTS.md, fleet_results.json, fleet_cost.png")
    parser.add_argument(
        "--merge", action="store_true", help="with --write: keep the saved results of the sizes not run now"
    )
    parser.add_argument("--replot", action="store_true", help="only redraw RESULTS.md's table and the curve from JSON")
    parser.add_argument("--reads-only", action="store_true", help="only the full view read under load, printed")
    args = parser.parse_args()
    if args.reads_only:
        for hosts in args.sizes:
            print(hosts, json.dumps(reads_only(hosts, args.seconds, args.connections, args.rate)), flush=True)
        return
    if args.replot:
        saved = json.loads(DATA.read_text())
        write(table(saved["results"], saved["rate"], saved["connections"]), saved["measured"])
        plot(saved["results"])
        return
    results = []
    for hosts in args.sizes:
        results.append(run(hosts, args.seconds, args.connections, args.rate, args.samples))
        print(table(results[-1:], args.rate, args.connections).splitlines()[-1], flush=True)
    text = table(results, args.rate, args.connections)
    print(text)
    if args.write:
        when, where = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", machine()
        measured = f"{when}; {where}"
        if args.merge and DATA.exists():
            saved = json.loads(DATA.read_text())
            run_now = {r["hosts"] for r in results}
            kept = [r for r in saved["results"] if r["hosts"] not in run_now]
            if kept:
                sizes = ", ".join(f"{r['hosts']:,}" for r in kept)
                measured = f"{saved['measured'].split('; ', 1)[0]} ({sizes} hosts) and {when} (the rest); {where}"
            results = sorted(kept + results, key=lambda r: r["hosts"])
            text = table(results, args.rate, args.connections)
        saved = {"measured": measured, "rate": args.rate, "connections": args.connections, "results": results}
        DATA.write_text(json.dumps(saved, indent=1) + "\n")  # first: a missing matplotlib loses nothing
        write(text, measured)
        plot(results)


if __name__ == "__main__":
    main()
