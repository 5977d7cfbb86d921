"""``orchestrator simulate``: run a synthetic fleet (``fleet.Fleet``) against a server.

Every simulated host is an ``AgentClient`` on one shared keep-alive connection pool: it registers, fetches
its configuration, then posts a gzip report every interval and heartbeats, exactly like the real probe
(``client.run_agent``). Hosts start at a random phase of the interval and drift ±10% per cycle, so the
server sees a fleet, not a metronome. Overload answers (429/503) are waited out as ``Retry-After`` asks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time

import httpx
import structlog

from orchestrator import __version__
from orchestrator.contract.durations import parse_duration
from orchestrator.probe.client import (
    AgentClient,
    AgentConfig,
    ClientError,
    ClientStats,
    check_server_url,
    make_http,
    run_agent,
)
from orchestrator.probe.fleet import Fleet
from orchestrator.probe.host_probe import add_log_level

log = structlog.get_logger()

SUMMARY_EVERY_S = 10.0
CYCLE_JITTER = 0.1
METADATA = {"version": __version__, "environment": "simulation"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="server base URL, e.g. http://localhost:8080")
    parser.add_argument("--hosts", type=int, default=10, help="number of simulated hosts (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="fleet seed: same seed, same fleet (default 0)")
    parser.add_argument("--interval", help="report interval, e.g. 15s (default: the server's, else 15s)")
    parser.add_argument("--duration", help="stop after this long, e.g. 5m (default: until Ctrl-C)")
    parser.add_argument("--token", help="agent token (default: $ORCHESTRATOR_AGENT_TOKEN)")
    parser.add_argument("--containers", type=int, default=10, help="containers per host (default 10)")
    parser.add_argument("--processes", type=int, default=100, help="processes per host (default 100)")
    parser.add_argument("--connections", type=int, default=200, help="connections per host (default 200)")
    add_log_level(parser)


def _seconds(name: str, text: str | None) -> float | None:
    if not text:
        return None
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError("must be positive")
    return seconds


def run(args: argparse.Namespace, *, transport: httpx.AsyncBaseTransport | None = None) -> int:
    """Entry point of ``orchestrator simulate``: 0 when it ran, 1 when the server refused it, 2 on bad usage."""
    try:
        check_server_url(args.server)
        interval, duration = _seconds("interval", args.interval), _seconds("duration", args.duration)
        if args.hosts < 1 or min(args.containers, args.processes, args.connections) < 0:
            raise ValueError("--hosts must be at least 1; --containers/--processes/--connections not negative")
    except ValueError as exc:
        print(f"orchestrator simulate: {exc}", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("ORCHESTRATOR_AGENT_TOKEN")
    started = time.monotonic()
    fleet = Fleet(
        args.hosts, seed=args.seed, containers=args.containers, processes=args.processes, connections=args.connections
    )
    log.info("simulate.fleet_built", hosts=args.hosts, seconds=round(time.monotonic() - started, 2))
    try:
        stats = asyncio.run(
            simulate(
                fleet,
                args.server,
                token=token,
                interval=interval,
                duration=duration,
                transport=transport,
                seed=args.seed,
            )
        )
    except ClientError as exc:  # the server refused the fleet (bad token, ...): retrying will not help
        print(f"orchestrator simulate: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 1 if stats.refused else 0


async def simulate(
    fleet: Fleet,
    server: str,
    *,
    token: str | None = None,
    interval: float | None = None,
    duration: float | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    seed: int = 0,
) -> ClientStats:
    """Run every host of ``fleet`` until ``duration`` passes, SIGINT/SIGTERM, or cancellation."""
    stats = ClientStats()
    async with make_http(server, token=token, transport=transport, max_connections=fleet.hosts) as http:
        config = await _fleet_config(http, fleet, stats, seed)
        period = interval or config.report_interval
        hosts = [
            asyncio.create_task(_run_host(http, fleet, i, stats, config, period, seed)) for i in range(fleet.hosts)
        ]
        summary = asyncio.create_task(_summaries(stats, fleet.hosts))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        stopped = asyncio.create_task(stop.wait())
        log.info("simulate.started", hosts=fleet.hosts, server=server, interval=period)
        try:
            # Hosts only end by themselves when the server refuses them (ClientError): then stop them all.
            await asyncio.wait([stopped, *hosts], timeout=duration, return_when=asyncio.FIRST_COMPLETED)
            for host in hosts:
                if host.done() and not host.cancelled() and host.exception() is not None:
                    stats.refused += 1
                    log.error("simulate.host_refused", error=str(host.exception()))
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            for task in (*hosts, summary, stopped):
                task.cancel()
            await asyncio.gather(*hosts, summary, stopped, return_exceptions=True)
    log.info("simulate.finished", hosts=fleet.hosts, **stats.as_dict())
    return stats


async def _fleet_config(http: httpx.AsyncClient, fleet: Fleet, stats: ClientStats, seed: int) -> AgentConfig:
    """The first host's configuration stands for the fleet's (they share one server configuration)."""
    first = AgentClient(
        http, fleet.agent_id(0), fleet.agent_id(0), metadata=METADATA, stats=stats, rng=random.Random(seed)
    )
    await first.register()
    return await first.fetch_config()


async def _run_host(
    http: httpx.AsyncClient, fleet: Fleet, index: int, stats: ClientStats, config: AgentConfig, period: float, seed: int
) -> None:
    rng = random.Random(f"simulate:{seed}:{index}")
    # gzip level 1: a sixth of the JSON's size at a third of level 6's CPU; thousands of hosts share a core.
    client = AgentClient(
        http, fleet.agent_id(index), fleet.agent_id(index), metadata=METADATA, stats=stats, rng=rng, compresslevel=1
    )

    async def next_report() -> bytes:
        return fleet.report_bytes(index, time.time())

    await run_agent(
        client,
        next_report,
        report_interval=period,
        jitter=CYCLE_JITTER,
        initial_delay=rng.uniform(0, period),
        rng=rng,
        config=config,
    )


async def _summaries(stats: ClientStats, hosts: int) -> None:
    started, last_posted = time.monotonic(), 0
    while True:
        await asyncio.sleep(SUMMARY_EVERY_S)
        elapsed = time.monotonic() - started
        log.info(
            "simulate.summary",
            hosts=hosts,
            elapsed_s=round(elapsed),
            posted=stats.posted,
            accepted=stats.accepted,
            rejected=stats.rejected,
            retried=stats.retried,
            heartbeats=stats.heartbeats,
            rate=round((stats.posted - last_posted) / SUMMARY_EVERY_S, 1),
        )
        last_posted = stats.posted
