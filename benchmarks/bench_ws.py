"""WebSocket fan-out benchmark: how long from a report's 202 until the LAST of N clients has the diff with it.

Starts ``python -m orchestrator serve`` as a child process on 127.0.0.1 (short broadcast interval through
``ORCHESTRATOR_WEBSOCKET__BROADCAST_INTERVAL``), optionally preloads a topology, connects N WebSocket clients
from this one asyncio process, then for each round posts a report for a new host and times, per client, the
arrival of the ``topology_diff`` that adds it. The server's CPU time per publish + broadcast comes from its
own ``app_websocket_broadcast_seconds`` histogram; its whole-process CPU per round (which includes writing
the frames to N sockets) from ``/proc``. Prints a markdown table and stops by itself.

    python benchmarks/bench_ws.py [--clients 1000] [--rounds 10] [--preload-hosts 20] [--interval 1s]

Clients and server share this machine's cores, so latencies include the clients' own receive work
(kept small: frames are matched as bytes, not parsed). "202 → client" includes the wait for the next
broadcast tick (0 to one interval, by design); "first → last" is the fan-out itself.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import time
from pathlib import Path

import httpx
import orjson
import websockets

from benchmarks.common import Server


def process_cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads, in ns resolution (``/proc/<pid>/stat`` only has 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def host_report(name: str, processes: int) -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "agent_id": f"agent-{name}",
        "hostname": name,
        "timestamp": now,
        "host_info": {"cpu_percent": 10.0, "ip_addresses": []},
        "processes_info": {
            "processes": [
                {"pid": pid, "name": f"proc-{pid}", "cpu_percent": 0.5, "memory_rss": 1 << 20}
                for pid in range(1, processes + 1)
            ]
        },
    }


async def broadcast_histogram(http: httpx.AsyncClient) -> tuple[float, float]:
    text = (await http.get("/metrics")).text
    values = {}
    for line in text.splitlines():
        for name in ("app_websocket_broadcast_seconds_sum", "app_websocket_broadcast_seconds_count"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    return values.get("app_websocket_broadcast_seconds_sum", 0.0), values.get(
        "app_websocket_broadcast_seconds_count", 0.0
    )


class Fleet:
    """N connected clients; ``arm(marker)`` then each client notes when a diff containing the marker arrives."""

    def __init__(self) -> None:
        self.sockets: list = []
        self.marker: bytes | None = None
        self.arrivals: list[float] = []
        self.done = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    async def connect(self, url: str, count: int) -> None:
        for start in range(0, count, 100):  # in batches: the listen backlog is finite
            batch = await asyncio.gather(
                *(websockets.connect(url, max_size=None, ping_interval=None) for _ in range(min(100, count - start)))
            )
            for ws in batch:
                await ws.recv(decode=False)  # the first snapshot
            self.sockets.extend(batch)
        self.tasks = [asyncio.create_task(self._read(ws)) for ws in self.sockets]

    async def _read(self, ws) -> None:
        seen: bytes | None = None
        while True:
            frame = await ws.recv(decode=False)
            marker = self.marker
            if (
                marker is not None
                and marker != seen
                and frame.startswith(b'{"type":"topology_diff"')
                and marker in frame
            ):
                seen = marker
                self.arrivals.append(time.perf_counter())
                if len(self.arrivals) == len(self.sockets):
                    self.done.set()

    def arm(self, marker: bytes) -> None:
        self.marker, self.arrivals = marker, []
        self.done.clear()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)


async def run(args) -> list[dict]:
    env = {"ORCHESTRATOR_WEBSOCKET__BROADCAST_INTERVAL": args.interval, "ORCHESTRATOR_WEBSOCKET__BUFFER_SIZE": "1024"}
    fleet = Fleet()
    with Server(env=env) as server:
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                for i in range(args.preload_hosts):
                    assert (
                        await http.post(
                            "/api/v1/reports",
                            content=orjson.dumps(host_report(f"pre-{i}", args.processes)),
                            headers={"Content-Type": "application/json"},
                        )
                    ).status_code == 202
                await asyncio.sleep(3 * parse_seconds(args.interval))
                await fleet.connect(f"ws://127.0.0.1:{server.port}/api/v1/ws", args.clients)
                rounds = []
                for r in range(args.rounds):
                    rounds.append(await one_round(http, fleet, server.proc.pid, f"bench-{r}", args))
                    # A random phase against the broadcast tick, so the wait for the next tick is sampled fairly.
                    await asyncio.sleep(parse_seconds(args.interval) * (0.5 + random.random()))
                return rounds
        finally:
            await fleet.close()


async def one_round(http: httpx.AsyncClient, fleet: Fleet, pid: int, hostname: str, args) -> dict:
    hist_before = await broadcast_histogram(http)
    cpu_before = process_cpu_seconds(pid)
    fleet.arm(f'"host:{hostname}"'.encode())
    body = orjson.dumps(host_report(hostname, args.processes))
    response = await http.post("/api/v1/reports", content=body, headers={"Content-Type": "application/json"})
    accepted = time.perf_counter()
    assert response.status_code == 202, response.text
    await asyncio.wait_for(fleet.done.wait(), 60)
    cpu_after = process_cpu_seconds(pid)
    await asyncio.sleep(0.05)
    hist_after = await broadcast_histogram(http)
    broadcasts = hist_after[1] - hist_before[1]
    return {
        "first": fleet.arrivals[0] - accepted,
        "last": fleet.arrivals[-1] - accepted,
        "broadcast_cpu": (hist_after[0] - hist_before[0]) / broadcasts if broadcasts else float("nan"),
        "broadcasts": broadcasts,
        "server_cpu": cpu_after - cpu_before,
    }


def parse_seconds(text: str) -> float:
    from orchestrator.contract.durations import parse_duration

    return parse_duration(text)


def table(args, rounds: list[dict]) -> str:
    def ms(values):
        return f"{statistics.median(values) * 1000:.1f} / {max(values) * 1000:.1f}"

    lines = [
        (
            f"WebSocket fan-out: {args.clients} clients, {args.rounds} rounds, broadcast interval {args.interval}, "
            f"{args.preload_hosts} preloaded hosts × {args.processes} processes, new host with {args.processes} processes"
        ),
        "",
        "| measure | median / max |",
        "|---|---|",
        f"| 202 → first client has the diff (ms) | {ms([r['first'] for r in rounds])} |",
        f"| 202 → LAST client has the diff (ms) | {ms([r['last'] for r in rounds])} |",
        f"| first → last client: the fan-out itself (ms) | {ms([r['last'] - r['first'] for r in rounds])} |",
        (
            f"| server CPU per publish+broadcast, `app_websocket_broadcast_seconds` (ms) | "
            f"{ms([r['broadcast_cpu'] for r in rounds if r['broadcasts']])} |"
        ),
        f"| server process CPU per round, incl. writing {args.clients} frames (ms) | {ms([r['server_cpu'] for r in rounds])} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--preload-hosts", type=int, default=20)
    parser.add_argument("--processes", type=int, default=50)
    parser.add_argument("--interval", default="1s", help="broadcast interval (Go-style duration)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, args.clients * 2 + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    print(table(args, asyncio.run(run(args))))


if __name__ == "__main__":
    main()
