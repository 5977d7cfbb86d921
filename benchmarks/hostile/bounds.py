"""Attacks on what one request or connection may cost: made-up methods (1), the ingest queue (3), slow and
idle connections (4), single requests that stall the loop (6), first reads of collapsed views (6)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections import Counter

import httpx
import orjson

from benchmarks.common import Server, percentile
from benchmarks.hostile import (
    MIB,
    PLAIN,
    Options,
    PeakRss,
    Row,
    attack,
    gather_bounded,
    max_size_report,
    mb,
    post,
    post_many,
    report,
    restamp,
    stall_during,
    timed,
    tiny_reports,
)
from orchestrator.probe.fleet import Fleet

# -- 1: made-up HTTP methods --------------------------------------------------------------------------------------


async def odd_methods(port: int, count: int, connections: int = 8) -> Counter:
    """``count`` requests, each with another made-up method, to /health over keep-alive connections."""
    statuses: Counter = Counter()

    async def worker(first: int) -> None:
        reader = writer = None
        for k in range(first, count, connections):
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"M{k:05d}X /health HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"content-length: *(\d+)", head, re.I)
                await reader.readexactly(int(length.group(1)) if length else 0)
                statuses[int(head.split()[1])] += 1
                if b"connection: close" in head.lower():
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                statuses["closed"] += 1
                writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    return statuses


def scrape(server: Server) -> tuple[int, float, float, int]:
    """/metrics once: (bytes, wall ms, server CPU ms, distinct method label values)."""
    cpu, started = server.cpu_seconds(), time.monotonic()
    text = httpx.get(server.url + "/metrics", headers=PLAIN, timeout=120).text
    wall, cpu = (time.monotonic() - started) * 1000, (server.cpu_seconds() - cpu) * 1000
    return len(text.encode()), wall, cpu, len(set(re.findall(r'method="([^"]*)"', text)))


@attack("methods", "1")
def attack_methods(opts: Options) -> list[Row]:
    count = opts.n(20_000)
    with opts.server() as server:
        size0, *_ = scrape(server)
        rss0 = server.rss_mb()
        statuses = asyncio.run(odd_methods(server.port, count))
        rss1 = server.rss_mb()
        scrapes = [scrape(server) for _ in range(3)]
    size1, _, _, methods = scrapes[-1]
    wall = percentile([s[1] for s in scrapes], 50)
    cpu = sum(s[2] for s in scrapes) / len(scrapes)  # /proc counts CPU in 10 ms ticks: the mean of three
    answered = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str))
    return [
        Row(
            f"{count:,} requests with made-up methods to /health ({answered}): /metrics size",
            "37 MiB, growing",
            f"{size0 / 1024:.0f} KiB → {size1 / 1024:.0f} KiB ({methods} method label values)",
            "made-up methods counted as `other`",
        ),
        Row("… server RSS growth", "+91 MB", f"{rss1 - rss0:+.1f} MB"),
        Row(
            "… one scrape afterwards",
            "2.9 s loop stall",
            f"{wall:.0f} ms wall (median of 3), {cpu:.0f} ms server CPU (mean)",
        ),
    ]


# -- 3: reports at the item limits faster than they are applied ---------------------------------------------------


@attack("queue", "3")
def attack_queue(opts: Options) -> list[Row]:
    body, posters, seconds = max_size_report(), 12, 20.0
    statuses: Counter = Counter()
    retry_after: Counter = Counter()
    queued_bytes: list[int] = []
    with opts.server() as server:
        rss0 = server.rss_mb()
        peak = PeakRss(server)
        end = time.monotonic() + seconds

        def poster() -> None:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                while time.monotonic() < end:
                    try:
                        answer = post(client, restamp(body, time.time()))
                    except httpx.HTTPError as exc:
                        statuses[type(exc).__name__] += 1
                        continue
                    statuses[answer.status_code] += 1
                    if answer.status_code in (429, 503):
                        retry_after[answer.headers.get("Retry-After")] += 1
                        time.sleep(0.2)  # a hostile client: far sooner than Retry-After says

        def watch() -> None:
            while time.monotonic() < end:
                with contextlib.suppress(httpx.HTTPError, KeyError):
                    queued_bytes.append(
                        httpx.get(server.url + "/api/v1/query/stats", timeout=30).json()["ingest_queue_bytes"]
                    )
                time.sleep(0.5)

        threads = [threading.Thread(target=poster) for _ in range(posters)] + [threading.Thread(target=watch)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with contextlib.suppress(RuntimeError, httpx.HTTPError):
            server.wait_drained(300)
        top = peak.stop()
    answered = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str))
    return [
        Row(
            f"{posters} clients posting a {len(body) / 1e6:.1f} MB report at the item limits for {seconds:.0f} s: "
            "server RSS",
            "312 MB → 2.2 GB with 19 queued (~50 GB for a full queue of 500)",
            f"{mb(rss0)} → peak {mb(top)}; queue bytes seen ≤ {max(queued_bytes, default=0) / MIB:.1f} MiB",
            "`server.ingest_queue_bytes` (32 MiB of decoded JSON)",
        ),
        Row(
            "… what the clients got",
            "202 for every report",
            f"{answered}; Retry-After {dict(retry_after) or '—'}",
            "429 `ingest_queue_full` + Retry-After, decided before the body is read",
        ),
    ]


# -- 4: slow and idle connections --------------------------------------------------------------------------------


async def trickling(port: int, duration: float) -> float:
    """Seconds a connection sending one header byte a second stays open (``duration`` if the server never
    closes it)."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0.0
    try:
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 10_000:
            writer.write(bytes([byte]))
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 1.0) or reader.at_eof():
                    break
            if time.monotonic() - started >= duration:
                break
    except OSError:
        pass
    finally:
        writer.close()
    return min(duration, time.monotonic() - started)


async def fresh_health(url: str, seconds: float) -> tuple[int, int]:
    """A fresh connection every 0.25 s asking /health (2 s timeout): (answered, tried)."""
    answered = tried = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tried += 1
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=2) as client:
                answered += (await client.get(url + "/health")).status_code < 500
        await asyncio.sleep(0.25)
    return answered, tried


async def hold(port: int, count: int, prefix: bytes = b"", body: int = 0) -> list[asyncio.StreamWriter]:
    async def one() -> asyncio.StreamWriter | None:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(prefix)
            for _ in range(body // (256 * 1024)):
                writer.write(b" " * (256 * 1024))
                await asyncio.wait_for(writer.drain(), 10)
            return writer
        except (OSError, TimeoutError):
            return None

    return [w for w in await gather_bounded((one() for _ in range(count)), 100) if w is not None]


@attack("connections", "4")
def attack_connections(opts: Options) -> list[Row]:
    rows = []
    trickle_n, duration = opts.n(500), 20.0
    with opts.server({"ORCHESTRATOR_SERVER__REQUEST_TIMEOUT": "5s"}) as server:
        times = asyncio.run(
            (lambda: gather_bounded((trickling(server.port, duration) for _ in range(trickle_n)), trickle_n))()
        )
    rows.append(
        Row(
            f"{trickle_n} connections sending a header byte a second, request_timeout 5 s, for {duration:.0f} s: "
            "time open",
            "2,000 stayed open 85 s (the timeout reset by every byte)",
            f"p50 {percentile(times, 50):.1f} s, max {max(times):.1f} s, open at the end {sum(t >= duration for t in times)}",
            "`server.request_timeout` for the whole request",
        )
    )
    limit = 1024
    with opts.server(open_files=limit) as server:

        async def lockout() -> tuple[int, int, int, int]:
            held = await hold(server.port, 1_100)
            fds = len(os.listdir(f"/proc/{server.proc.pid}/fd"))
            answered, tried = await fresh_health(server.url, 10)
            for writer in held:
                writer.close()
            return len(held), fds, answered, tried

        held, fds, answered, tried = asyncio.run(lockout())
    rows.append(
        Row(
            f"1,100 idle connections, server started under soft = hard descriptor limit {limit}: fresh /health answered",
            "none (every fresh /health and POST locked out, nothing logged)",
            f"{answered}/{tried} over 10 s ({held} idle connected, server fds {fds})",
            "a connection cap below the descriptor limit; idle ones shed first",
        )
    )
    bodies = opts.n(100)
    with opts.server() as server:
        rss0 = server.rss_mb()
        head = b"POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"

        async def half_sent() -> int:
            held = await hold(server.port, bodies, head, 9 * MIB)
            await asyncio.sleep(2)
            count = len(held)
            for writer in held:
                writer.close()
            return count

        rss1 = [0.0]
        peak = PeakRss(server)
        sent = asyncio.run(half_sent())
        rss1[0] = peak.stop()
    rows.append(
        Row(
            f"{bodies} connections each holding 9 MiB of an unfinished 10 MB body: server RSS growth",
            "200 such: +1.8 GB",
            f"{sent} got their 9 MiB in: peak {rss1[0] - rss0:+.0f} MB",
            "a budget for unfinished bodies",
        )
    )
    return rows


# -- 6: single requests that stall the loop ---------------------------------------------------------------------


@attack("stalls", "6")
def attack_stalls(opts: Options) -> list[Row]:
    hosts, agents = opts.n(100), opts.n(20_000)
    rows = []
    with opts.server() as server, httpx.Client(base_url=server.url, timeout=300) as client:
        fleet = Fleet(hosts, seed=6)
        now = time.time()
        post_many(server.url, (orjson.dumps(fleet.report(h, now)) for h in range(hosts)))
        server.wait_drained(300)
        big = max_size_report()
        unknown_list = orjson.dumps(report("agent-u1", unknown=[0] * 1_400_000))
        unknown_object = orjson.dumps(report("agent-u2", unknown={f"k{i}": 0 for i in range(600_000)}))
        metadata = {
            "agent_id": "agent-meta",
            "hostname": "host-meta",
            "metadata": {f"k{i}": "v" * 8 for i in range(8 * MIB // 16)},
        }
        cases = (
            ("POST of a max-size report (applied meanwhile)", "1.2–1.3 s", lambda: post(client, big), True),
            ("a 1.4M-item unknown field", "0.6 s", lambda: post(client, unknown_list), True),
            ("a 600k-key unknown object", "0.5 s", lambda: post(client, unknown_object), True),
            (
                "registering 8 MiB of metadata",
                "0.4 s",
                lambda: client.post("/api/v1/agents/register", json=metadata),
                False,
            ),
        )
        for name, before, call, drain in cases:
            with stall_during(server.url) as stall:
                try:
                    status, took = timed(call)
                    if drain:
                        server.wait_drained(300)
                except httpx.HTTPError as exc:  # a server that does not answer in time is a figure too
                    status = type(exc).__name__
            rows.append(
                Row(
                    f"{name} ({hosts}-host fleet): longest ping meanwhile", before, f"{stall[0]:.0f} ms (HTTP {status})"
                )
            )
        for level in ("container", "host"):
            post(client, fleet.report(1, time.time() + 30))
            server.wait_drained(60)
            time.sleep(1.5)  # a publish in between
            with stall_during(server.url) as stall:
                status, took = timed(lambda level=level: client.get("/api/v1/query/topology", params={"level": level}))
            rows.append(
                Row(
                    f"first `level={level}` read after a publish: longest ping meanwhile",
                    "0.27–0.36 s",
                    f"{stall[0]:.0f} ms (read {took:.0f} ms)",
                )
            )
        post_many(server.url, tiny_reports(agents))
        server.wait_drained(300)
        with stall_during(server.url) as stall:
            status, took = timed(lambda: client.get("/api/v1/agents/list"))
        rows.append(
            Row(
                f"`/agents/list` at {agents + hosts + 3:,} agents: longest ping meanwhile",
                "1.0 s at 100k agents (0.3 s at 50k)",
                f"{stall[0]:.0f} ms (list {took:.0f} ms)",
            )
        )
    for row in rows:
        row.after += " (under load)"
    rows[0].bound = "items merged in slices; the loop yields every few ms"
    return rows


VIEWS = (("container", "each"), ("host", "each"), ("host", "group"))


@attack("firstreads", "6")
def attack_first_reads(opts: Options) -> list[Row]:
    """The issue's fleet (300 hosts of 100 processes, 10 containers, 200 connections): the longest ping while
    the first read of each collapsed view after a publish is answered, with history on (the default: it keeps
    the host level in use, so that read builds nothing) and off (every collapsed view built on first read)."""
    hosts = opts.n(300)
    fleet = Fleet(hosts, seed=6)
    rows = []
    for history in ("on", "off"):
        env = {} if history == "on" else {"ORCHESTRATOR_HISTORY__ENABLED": "false"}
        with opts.server(env) as server, httpx.Client(base_url=server.url, timeout=300) as client:
            now = time.time()
            post_many(server.url, (orjson.dumps(fleet.report(h, now)) for h in range(hosts)))
            server.wait_drained(300)
            for round_, (level, external) in enumerate(VIEWS, 1):
                post(client, fleet.report(1, now + 15 * round_))  # a change, then a publish (1 s interval)
                server.wait_drained(60)
                time.sleep(1.5)
                params = {"level": level, "external": external}
                with stall_during(server.url) as stall:
                    status, took = timed(lambda params=params: client.get("/api/v1/query/topology", params=params))
                name = f"level={level}" + ("&external=group" if external == "group" else "")
                rows.append(
                    Row(
                        f"first `{name}` read after a publish, {hosts} hosts, history {history}: longest ping meanwhile",
                        "0.27–0.36 s",
                        f"{stall[0]:.0f} ms (HTTP {status}, read {took:.0f} ms)",
                        "collapsed view built in slices under the topology lock",
                    )
                )
    return rows
