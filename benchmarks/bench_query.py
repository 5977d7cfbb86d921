"""Query benchmark: topology view latency and server memory as the fleet grows, time-series query latency.

For each fleet size the server (a child process, on loopback) is loaded with one realistic report per host
(``orchestrator.probe.fleet``), then ``GET /api/v1/query/topology`` is timed per level:
- "fresh": the first request after a publish (one host re-reports, the next seq is awaited), which pays
  for building and serializing the view;
- "cached": repeated requests at the same seq (served from the per-seq cache).
Also: RSS of the server per size, and ``…/timeseries`` p95 for an agent holding a full hour (240 points).

    python benchmarks/bench_query.py [--hosts 10 100 1000] [--samples 20]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import itertools
import time

import httpx

from benchmarks.common import Server, last_byte_ms, percentile
from orchestrator.probe.fleet import Fleet

LEVELS = ("host", "container", "process")


async def load(server: Server, fleet: Fleet, hosts: int, now: float) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        sem = asyncio.Semaphore(16)

        async def post(i: int) -> None:
            body = gzip.compress(fleet.report_bytes(i, now), 1)
            async with sem:
                while True:
                    response = await client.post(
                        "/api/v1/reports",
                        content=body,
                        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                    )
                    if response.status_code == 202:
                        return
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))

        await asyncio.gather(*(post(i) for i in range(hosts)))


def wait_published(client: httpx.Client, hosts: int) -> dict:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        stats = client.get("/api/v1/query/stats").json()
        if stats["topology"]["hosts"] >= hosts and stats["ingest_queue"] == 0:
            time.sleep(1.5)  # one more broadcast interval: the last applied reports are published
            return client.get("/api/v1/query/stats").json()
        time.sleep(0.5)
    raise RuntimeError("fleet was not published in time")


def timed_get(client: httpx.Client, path: str) -> tuple[float, int]:
    t = time.perf_counter()
    response = client.get(path)
    elapsed = time.perf_counter() - t
    assert response.status_code == 200, response.text[:200]
    return elapsed * 1000, len(response.content)


_clock = itertools.count(1)


def fresh_view(
    client: httpx.Client, fleet: Fleet, level: str, now: float, extra: str = "", wire: bool = False
) -> tuple[float, int]:
    """Make the topology change (host 0 re-reports, newer), wait for the new seq, then time the first request
    (``extra``: more query parameters, e.g. ``&external=group``): decoded by httpx, or with ``wire`` to its
    last byte on the wire (gzipped, not decoded: :func:`benchmarks.common.last_byte_ms`)."""
    seq = client.get("/api/v1/query/stats").json()["seq"]
    client.post(
        "/api/v1/reports",
        content=fleet.report_bytes(0, now + next(_clock)),
        headers={"Content-Type": "application/json"},
    )
    deadline = time.monotonic() + 60
    while client.get("/api/v1/query/stats").json()["seq"] == seq:
        if time.monotonic() > deadline:
            raise RuntimeError("the topology did not change")
        time.sleep(0.02)
    path = f"/api/v1/query/topology?level={level}{extra}"
    if wire:
        return last_byte_ms(str(client.base_url).rstrip("/"), path)
    return timed_get(client, path)


def run(hosts: int, samples: int) -> dict:
    fleet = Fleet(hosts, seed=3)
    now = time.time()
    result: dict = {"hosts": hosts}
    with Server(persist=False) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        asyncio.run(load(server, fleet, hosts, now))
        stats = wait_published(client, hosts)
        result.update(
            nodes=stats["topology"]["nodes"],
            edges=stats["topology"]["edges"],
            processes=stats["topology"]["processes"],
            rss_mb=server.rss_mb(),
        )
        for level in LEVELS:
            fresh = [fresh_view(client, fleet, level, now) for _ in range(samples)]
            cached = [timed_get(client, f"/api/v1/query/topology?level={level}")[0] for _ in range(samples)]
            result[level] = {
                "fresh_p50": percentile([f[0] for f in fresh], 50),
                "fresh_p95": percentile([f[0] for f in fresh], 95),
                "cached_p50": percentile(cached, 50),
                "cached_p95": percentile(cached, 95),
                "bytes": fresh[-1][1],
            }
        result["rss_after_mb"] = server.rss_mb()
    return result


def timeseries_p95(samples: int) -> dict:
    fleet = Fleet(1, seed=5)
    end = (time.time() // 15) * 15
    with Server(persist=False) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for k in range(240):  # one report per 15 s bucket over the last hour
            client.post(
                "/api/v1/reports",
                content=fleet.report_bytes(0, end - 15 * (239 - k)),
                headers={"Content-Type": "application/json"},
            )
        agent = fleet.agent_id(0)
        # Wait for the worker to apply all 240 (the oldest may already fall outside the retained hour).
        while client.get("/api/v1/query/stats").json()["ingest_queue"]:
            time.sleep(0.1)
        plain = [timed_get(client, f"/api/v1/query/agents/{agent}/timeseries")[0] for _ in range(samples * 5)]
        stepped = [timed_get(client, f"/api/v1/query/agents/{agent}/timeseries?step=1m")[0] for _ in range(samples * 5)]
    return {
        "p50": percentile(plain, 50),
        "p95": percentile(plain, 95),
        "step_p50": percentile(stepped, 50),
        "step_p95": percentile(stepped, 95),
    }


def table(results: list[dict], series: dict) -> str:
    lines = [
        "| hosts | nodes / edges (process nodes) | level | fresh p50 / p95 | cached p50 / p95 | response | server RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for level in LEVELS:
            v = r[level]
            lines.append(
                f"| {r['hosts']} | {r['nodes']} / {r['edges']} ({r['processes']}) | {level} | "
                f"{v['fresh_p50']:.1f} / {v['fresh_p95']:.1f} ms | {v['cached_p50']:.1f} / "
                f"{v['cached_p95']:.1f} ms | {v['bytes'] / 1024:.0f} KB | {r['rss_mb']:.0f} MB |"
            )
    lines += [
        "",
        "| time series (1 agent, 240 points) | p50 | p95 |",
        "|---|---|---|",
        f"| `…/timeseries?duration=1h` | {series['p50']:.2f} ms | {series['p95']:.2f} ms |",
        f"| `…/timeseries?duration=1h&step=1m` | {series['step_p50']:.2f} ms | {series['step_p95']:.2f} ms |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    results = [run(h, args.samples) for h in args.hosts]
    print(table(results, timeseries_p95(args.samples)))


if __name__ == "__main__":
    main()
