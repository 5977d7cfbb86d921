"""How long single big requests hold the event loop (issue 16 #6): a second client pings while they run.

A server (child process, persistence on) holds a synthetic fleet (``--hosts``, default 300). A pinger sends
``GET /api/v1/ping`` every 10 ms on its own keep-alive connection; each scenario reports the slowest ping
answered while it ran (what every other client waited at worst) and the scenario's own duration:

- ``report at the limits``: one POST of a report at the item limits (``Fleet(2, processes=10_000,
  connections=50_000, containers=100)``, ~9 MB of JSON, gzip), timed from the POST until the worker has
  applied it and a publication includes it;
- ``first level=<l> read``: the first ``GET /api/v1/query/topology?level=<l>`` after that publication;
- ``registration at the size limit``: a registration with ``server.max_registration_size`` of metadata,
  and one of 8 MiB (refused with 413 before it is parsed).

    python -m benchmarks.bench_loop [--hosts 300] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import time

import httpx
import orjson

from benchmarks.common import Server, machine
from orchestrator.probe.fleet import Fleet

PING_INTERVAL = 0.01


class Pinger:
    """Pings until stopped; :meth:`worst` is the slowest answer among the pings sent in a window."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, float]] = []  # (sent at, seconds to the answer)
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as client:
            while True:
                sent = time.perf_counter()
                await client.get("/api/v1/ping")
                self.samples.append((sent, time.perf_counter() - sent))
                await asyncio.sleep(PING_INTERVAL)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def worst(self, since: float, until: float) -> float:
        return max((took for sent, took in self.samples if since <= sent <= until), default=float("nan"))


async def wait_applied(client: httpx.AsyncClient, seq_before: int) -> None:
    """Until the backlog is empty and a publication newer than ``seq_before`` is out."""
    while True:
        health = (await client.get("/health")).json()
        if health["ingest_queue"] == 0:
            stats = (await client.get("/api/v1/query/stats")).json()
            if stats["seq"] > seq_before:
                return
        await asyncio.sleep(0.02)


async def scenario(pinger: Pinger, name: str, work) -> dict:
    await asyncio.sleep(0.1)  # a few pings before, so the window starts with the pinger waiting
    start = time.perf_counter()
    await work()
    end = time.perf_counter()
    await asyncio.sleep(0.05)
    return {"scenario": name, "seconds": end - start, "worst_ping_ms": pinger.worst(start, end) * 1000}


async def run(server: Server, hosts: int) -> list[dict]:
    now = time.time()
    fleet = Fleet(hosts, seed=1)
    big = Fleet(2, seed=3, processes=10_000, connections=50_000, containers=100).report(0, now)
    big["agent_id"] = big["hostname"] = "limits-host"
    big_body = gzip.compress(orjson.dumps(big), 1)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    results = []
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        for i in range(hosts):
            body = gzip.compress(fleet.report_bytes(i, now), 1)
            assert (await client.post("/api/v1/reports", content=body, headers=headers)).status_code == 202
        await wait_applied(client, 0)
        pinger = Pinger(server.url)
        pinger.start()

        async def post_big() -> None:
            seq = (await client.get("/api/v1/query/stats")).json()["seq"]
            response = await client.post("/api/v1/reports", content=big_body, headers=headers)
            assert response.status_code == 202, response.text
            await wait_applied(client, seq)

        results.append(
            await scenario(pinger, f"report at the limits ({len(orjson.dumps(big)) / 1e6:.1f} MB of JSON)", post_big)
        )
        for level in ("container", "host"):

            async def read(level: str = level) -> None:
                assert (await client.get("/api/v1/query/topology", params={"level": level})).status_code == 200

            results.append(await scenario(pinger, f"first level={level} read after it", read))
        limit = (await client.get("/api/v1/query/stats")).json()["config"]["server"]["max_registration_size"]
        for size, expected in ((limit - 200, 201), (8 << 20, 413)):
            metadata = {f"k{i}": "v" * 50 for i in range(size // 60)}

            async def register(metadata: dict = metadata, expected: int = expected) -> None:
                body = {"agent_id": f"reg-{len(metadata)}", "hostname": "reg-host", "metadata": metadata}
                response = await client.post(
                    "/api/v1/agents/register",
                    content=orjson.dumps(body),
                    headers=headers | {"Content-Encoding": "identity"},
                )
                assert response.status_code in (expected, 200), response.status_code

            label = f"registration of {size >> 10} KiB"
            results.append(await scenario(pinger, label, register))
        await pinger.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(f"_{machine()}_\n")
    print(f"{args.hosts} hosts; the slowest ping answered while each request ran (ping every 10 ms)\n")
    print("| scenario | run | duration | slowest ping |\n|---|---|---|---|")
    for attempt in range(1, args.repeat + 1):
        with Server(start_timeout=180) as server:
            for row in asyncio.run(run(server, args.hosts)):
                print(
                    f"| {row['scenario']} | {attempt} | {row['seconds'] * 1000:.0f} ms | {row['worst_ping_ms']:.0f} ms |"
                )


if __name__ == "__main__":
    main()
