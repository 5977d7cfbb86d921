"""Hostile connections (issue 16 #4): trickling requests, idle connections at a low descriptor limit, half-sent
large bodies, and the 5,000 idle connections that must keep working.

    python -m benchmarks.bench_connections                 # every scenario against this checkout
    python -m benchmarks.bench_connections --repo /path/to/other/checkout trickle lockout bodies idle5000

``--repo`` runs the server from another checkout (its ``orchestrator`` package), to measure before and after
on the same machine. Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from pathlib import Path

import httpx
import orjson

from benchmarks.common import REPO, Server, machine, percentile

REPORT = orjson.dumps(
    {"agent_id": "bench-1", "hostname": "bench-host-1", "timestamp": "2030-01-01T00:00:00Z"}
)  # refused 422 (future) or accepted: either way an answer


class Child(Server):
    """The server from ``repo``, killed at the end (a graceful stop would wait out the hostile connections)."""

    def __init__(self, repo: Path, env: dict | None = None, open_files: int | None = None) -> None:
        super().__init__(env, start_timeout=60, repo=repo, open_files=open_files)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self.stop()


async def closed_after(port: int, every: float, end: float) -> float | None:
    """Send a request's header a byte every ``every`` s until ``end``: the seconds from its first byte until the
    server answered or closed, ``inf`` if it was still open at ``end``, None if it never connected."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), max(0.1, end - time.monotonic())
        )
    except (OSError, TimeoutError):
        return None
    header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 10_000
    first = time.monotonic()
    try:
        for byte in header:
            writer.write(bytes([byte]))
            try:
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), every) or reader.at_eof():
                    return time.monotonic() - first  # an answer (408/503) or the server closed
            except TimeoutError:
                pass
            except OSError:
                return time.monotonic() - first
            if time.monotonic() > end:
                return float("inf")
    finally:
        writer.close()
    return float("inf")


async def trickle(repo: Path, connections: int, timeout: float, duration: float) -> None:
    env = {"ORCHESTRATOR_SERVER__REQUEST_TIMEOUT": f"{timeout:g}s"}
    with Child(repo, env) as server:
        end = time.monotonic() + duration
        results = await asyncio.gather(*(closed_after(server.port, 1.0, end) for _ in range(connections)))
    times = [t for t in results if t is not None]
    cut = [t for t in times if t != float("inf")]
    print(
        f"trickle: {connections} connections ({len(times)} connected), a header byte a second, request_timeout "
        f"{timeout:g} s, run {duration:g} s: cut {len(cut)}"
        + (f" after p50 {percentile(cut, 50):.1f} s, max {max(cut):.1f} s of their first byte" if cut else "")
        + f"; still open at the end {len(times) - len(cut)}"
    )


async def fresh_requests(url: str, duration: float) -> tuple[int, int, list[float]]:
    """A fresh connection every 0.5 s, alternately GET /health and POST a report: (answered, tried, latencies)."""
    answered = tried = 0
    latencies = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        tried += 1
        start = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                if tried % 2:
                    response = await client.get(url + "/health")
                else:
                    response = await client.post(
                        url + "/api/v1/reports", content=REPORT, headers={"Content-Type": "application/json"}
                    )
            if response.status_code < 500:
                answered += 1
                latencies.append(time.monotonic() - start)
        except httpx.HTTPError:
            pass
        await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - start)))
    return answered, tried, latencies


async def lockout(repo: Path, open_files: int, idle: int, duration: float, slow: bool) -> None:
    with Child(repo, open_files=open_files) as server:

        async def connect() -> asyncio.StreamWriter | None:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), 5)
            except (TimeoutError, OSError):
                return None
            if slow:
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            return writer

        held = [w for w in await asyncio.gather(*(connect() for _ in range(idle))) if w is not None]
        fds = server.open_fds()
        answered, tried, latencies = await fresh_requests(server.url, duration)
        for writer in held:
            writer.close()
    kind = "half-sent requests" if slow else "idle connections"
    print(
        f"lockout: soft=hard limit {open_files}, {idle} {kind} opened ({len(held)} connected, server fds {fds}): "
        f"fresh /health + POST answered {answered}/{tried} over {duration:g} s"
        + (f", p50 {percentile(latencies, 50) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms" if latencies else "")
    )


async def half_sent_body(port: int, path: str, chunked: bool, send: int) -> None:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: 10000000\r\n"
    writer.write(
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing + b"\r\n"
    )
    piece = b" " * (256 * 1024)
    try:
        for _ in range(send // len(piece)):
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
        await asyncio.sleep(3600)  # hold it, unfinished
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def bodies(repo: Path, connections: int, path: str, chunked: bool) -> None:
    with Child(repo) as server:
        before = server.rss_mb()
        tasks = [
            asyncio.create_task(half_sent_body(server.port, path, chunked, 9 * 1024 * 1024)) for _ in range(connections)
        ]
        peak = before
        quiet_since = time.monotonic()
        end = time.monotonic() + 60
        while time.monotonic() < end and time.monotonic() - quiet_since < 5:  # until RSS is flat for 5 s
            await asyncio.sleep(0.5)
            rss = server.rss_mb()
            if rss > peak + 1:
                peak, quiet_since = rss, time.monotonic()
        answered, tried, _ = await fresh_requests(server.url, 3)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    framing = "chunked" if chunked else "Content-Length 10 MB"
    print(
        f"bodies: {connections} × 9 MiB of unfinished 10 MB bodies ({framing}) to {path}: RSS {before:.0f} → "
        f"peak {peak:.0f} MB (+{peak - before:.0f} MB); fresh /health + POST meanwhile {answered}/{tried}"
    )


async def idle5000(repo: Path, connections: int) -> None:
    with Child(repo) as server:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(connections)]
        answered, tried, latencies = await fresh_requests(server.url, 5)
        # Are the idle ones still open? A closed one reads EOF at once.
        alive = 0
        for reader, _ in held:
            try:
                await asyncio.wait_for(reader.read(1), 0.001)
            except TimeoutError:
                alive += 1
        for _, writer in held:
            writer.close()
    print(
        f"idle5000: {connections} idle connections (enough descriptors), default cap: still open {alive}, "
        f"fresh /health + POST {answered}/{tried}, p50 {percentile(latencies, 50) * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", default=["trickle", "lockout", "bodies", "idle5000"])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose server to run")
    parser.add_argument("--trickle-connections", type=int, default=2000)
    parser.add_argument("--trickle-timeout", type=float, default=10.0)
    parser.add_argument("--trickle-duration", type=float, default=30.0)
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    print(f"{machine()}; server from {args.repo}; load average at start {os.getloadavg()}")
    for scenario in args.scenarios:
        if scenario == "trickle":
            asyncio.run(trickle(args.repo, args.trickle_connections, args.trickle_timeout, args.trickle_duration))
        elif scenario == "lockout":
            asyncio.run(lockout(args.repo, 1024, 1100, 15, slow=False))
            asyncio.run(lockout(args.repo, 1024, 1100, 15, slow=True))
        elif scenario == "bodies":
            asyncio.run(bodies(args.repo, 200, "/api/v1/agents/register", chunked=False))
            asyncio.run(bodies(args.repo, 200, "/api/v1/reports", chunked=True))
        elif scenario == "idle5000":
            asyncio.run(idle5000(args.repo, 5000))
        else:
            parser.error(f"unknown scenario {scenario!r}")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
