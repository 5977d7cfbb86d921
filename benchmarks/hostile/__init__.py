"""The attacks of issue 16, one module per kind, and what they share: options, rows, a registry, and helpers
that drive a real server (``benchmarks.common.Server``). Run them with ``python -m benchmarks.bench_hostile``."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from benchmarks import pinger
from benchmarks.common import REPO, Server
from orchestrator.contract.times import format_rfc3339

JSON = {"Content-Type": "application/json"}
PLAIN = {"Accept-Encoding": "identity"}  # sizes on the wire as they are, not gzipped
MIB = 1 << 20


@dataclass
class Options:
    repo: Path = REPO
    scale: float = 1.0
    logs: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-hostile-")))

    def n(self, count: int, least: int = 1) -> int:
        return max(least, round(count * self.scale))

    def server(self, env: dict | None = None, **kwargs) -> Server:
        return Server(env=self.known(env or {}), start_timeout=120, repo=self.repo, **kwargs)

    def known(self, env: dict) -> dict:
        """``env`` without the settings another checkout does not have (it would refuse to start on them)."""
        if self.repo == REPO:
            return env
        names = (self.repo / "orchestrator" / "settings.py").read_text()
        kept = {k: v for k, v in env.items() if "__" not in k or k.rsplit("__", 1)[1].lower() in names}
        for dropped in sorted(set(env) - set(kept)):
            print(f"# {dropped} left out: {self.repo.name} has no such setting", file=sys.stderr)
        return kept


@dataclass
class Row:
    attack: str
    before: str  # the figure at 992cc38
    after: str  # measured by this run
    bound: str = ""  # the setting or mechanism that holds it


ATTACKS: dict[str, tuple[str, Callable[[Options], list[Row]]]] = {}


def attack(name: str, finding: str):
    def register(run: Callable[[Options], list[Row]]) -> Callable[[Options], list[Row]]:
        ATTACKS[name] = (finding, run)
        return run

    return register


# -- helpers ----------------------------------------------------------------------------------------------------


def report(agent: str, host: str | None = None, ts: float | None = None, **sections) -> dict:
    return {
        "agent_id": agent,
        "hostname": host or agent.replace("agent", "host"),
        "timestamp": format_rfc3339(time.time() if ts is None else ts),
        **sections,
    }


def post(client: httpx.Client, body: dict | bytes, **headers) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post("/api/v1/reports", content=content, headers={**JSON, **headers})


def mb(value: float) -> str:
    return f"{value:.0f} MB" if abs(value) >= 10 else f"{value:.1f} MB"


class PeakRss:
    """Samples a process's RSS every 50 ms in a thread; ``peak`` in MB."""

    def __init__(self, server: Server) -> None:
        self.server, self.peak, self._stop = server, server.rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError, ValueError):
                self.peak = max(self.peak, self.server.rss_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return self.peak


@contextlib.contextmanager
def stall_during(url: str):
    """The longest ping while the block runs (a second client's view of the loop), into ``result[0]`` in ms.
    The pinger is a process of its own (:mod:`benchmarks.pinger`): a thread here would wait for this process's
    own work too (encoding an 8 MiB registration body held its interpreter lock for ~0.4 s)."""
    process, result = pinger.start_open(url), [float("nan")]
    time.sleep(0.5)  # started and pinging
    try:
        yield result
    finally:
        latencies = pinger.stop(process)
        result[0] = max(latencies, default=float("nan")) * 1000


async def gather_bounded(coroutines, limit: int) -> list:
    gate = asyncio.Semaphore(limit)

    async def one(coroutine):
        async with gate:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


def post_many(url: str, bodies, concurrency: int = 8) -> Counter:
    """POST every report body (bytes) with ``concurrency`` keep-alive connections; statuses counted."""

    async def run() -> Counter:
        statuses: Counter = Counter()
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as c:

            async def one(body: bytes) -> None:
                try:
                    statuses[(await c.post("/api/v1/reports", content=body, headers=JSON)).status_code] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

            await gather_bounded((one(b) for b in bodies), concurrency * 2)
        return statuses

    return asyncio.run(run())


def tiny_reports(count: int, prefix: str = "agent-t"):
    now = time.time()
    for k in range(count):
        yield orjson.dumps(report(f"{prefix}{k}", f"host-t{k}", now, host_info={"cpu_percent": 1.0}))


def max_size_report(agent: str = "agent-big") -> bytes:
    """A report at the default per-report limits (10,000 processes, 50,000 connections, 5,000 containers),
    padded to just under ``server.max_body_size`` (10 MiB), like the issue's 10.4 MB one."""
    processes = [{"pid": i + 1, "name": f"worker-{i}", "cmdline": f"/usr/bin/worker --id {i} "} for i in range(10_000)]
    connections = [
        {
            "pid": i % 10_000 + 1,
            "protocol": "tcp",
            "local_ip": "10.9.0.1",
            "local_port": 1024 + i % 60_000,
            "remote_ip": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            "remote_port": 443,
            "state": "ESTABLISHED",
        }
        for i in range(50_000)
    ]
    containers = [{"id": f"{i:064x}", "name": f"c-{i}", "image": "registry.example/app:1"} for i in range(5_000)]
    body = report(
        agent,
        processes_info={"processes": processes},
        network_info={"connections": connections},
        docker_info={"containers": containers},
    )
    pad = (10_400_000 - len(orjson.dumps(body))) // len(processes)  # the 10.4 MB
    for process in processes:
        process["cmdline"] += "x" * pad
    return orjson.dumps(body)


def restamp(body: bytes, ts: float) -> bytes:
    return re.sub(rb'"timestamp":"[^"]*"', b'"timestamp":"' + format_rfc3339(ts).encode() + b'"', body, count=1)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            value = predicate()
            if value:
                return value
        time.sleep(interval)
    return None


def agent_ids(url: str) -> set[str]:
    listed = httpx.get(url + "/api/v1/agents/list", timeout=60).json()
    return {a["agent_id"] for a in listed["agents"]}


def topology(url: str, **params) -> dict:
    return httpx.get(url + "/api/v1/query/topology", params=params, timeout=60).json()["topology"]


def timed(call: Callable[[], httpx.Response]) -> tuple[int, float]:
    started = time.monotonic()
    return call().status_code, (time.monotonic() - started) * 1000


def settled(url: str, node: str) -> dict:
    return view_when(url, lambda view: node in view["nodes"])


def view_when(url: str, ready: Callable[[dict], bool], timeout: float = 20, **params) -> dict:
    """The topology once ``ready(view)`` holds (or as it is after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not ready(view := topology(url, **params)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return view
