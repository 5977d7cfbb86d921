"""Attacks through the WebSocket: distinct views (2), the client cap and resync spam (12)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
import time
from collections import Counter

import httpx
import orjson
import websockets
from websockets.sync.client import connect as ws_connect

from benchmarks.common import Server, percentile
from benchmarks.hostile import (
    Options,
    Row,
    attack,
    gather_bounded,
    post,
    post_many,
    wait_until,
)
from orchestrator.probe.fleet import Fleet

# -- 2: distinct WebSocket views ---------------------------------------------------------------------------------


def _view_clients(port: int, count: int, ready, stop, out) -> None:
    """In a child process: ``count`` WebSocket clients of hosts that do not exist, each reading what it is sent."""

    async def run() -> None:
        received = Counter()
        clients = []

        async def open_one(k: int):
            url = f"ws://127.0.0.1:{port}/api/v1/ws?host=nohost-{k}"
            try:
                return await websockets.connect(url, compression=None, max_size=None, open_timeout=60)
            except Exception:  # a refused or failed client is counted, whatever the reason
                received["refused"] += 1
                return None

        clients = [c for c in await gather_bounded((open_one(k) for k in range(count)), 50) if c is not None]

        async def read(ws) -> None:
            with contextlib.suppress(Exception):
                async for _ in ws:
                    received["messages"] += 1

        readers = [asyncio.create_task(read(ws)) for ws in clients]
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        for ws in clients:
            with contextlib.suppress(Exception):
                await ws.close()
        for task in readers:
            task.cancel()
        received["connected"] = len(clients)
        out.put(dict(received))

    asyncio.run(run())


class FleetLoad:
    """Each of a fleet's hosts reports about once a second (a topology change per publish)."""

    def __init__(self, url: str, fleet: Fleet) -> None:
        self.url, self.fleet, self._stop = url, fleet, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            tick = 0
            while not self._stop.is_set():
                started = time.monotonic()
                for host in range(self.fleet.hosts):
                    with contextlib.suppress(httpx.HTTPError):
                        post(client, self.fleet.report(host, time.time()))
                tick += 1
                self._stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


class WsPinger:
    """A client of a host that does not exist sending ``ping`` every 200 ms; the round trips in ms, and the
    highest seq it was sent (the publications)."""

    def __init__(self, port: int) -> None:
        self.ws = ws_connect(f"ws://127.0.0.1:{port}/api/v1/ws?host=nohost-pinger", compression=None, max_size=None)
        self.seq, self.rtts, self._stop = 0, [], threading.Event()
        self._sent: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._writer.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for message in self.ws:
                body = orjson.loads(message)
                if body.get("type") == "pong" and self._sent is not None:
                    self.rtts.append((time.monotonic() - self._sent) * 1000)
                    self._sent = None
                self.seq = max(self.seq, body.get("seq") or 0)

    def _write(self) -> None:
        while not self._stop.wait(0.2):
            if self._sent is None or time.monotonic() - self._sent > 30:
                self._sent = time.monotonic()
                with contextlib.suppress(Exception):
                    self.ws.send('{"type": "ping"}')

    def take(self) -> list[float]:
        rtts, self.rtts = self.rtts, []
        return rtts

    def close(self) -> None:
        self._stop.set()
        self._writer.join(5)
        self.ws.close()


def cpu_per_publish(server: Server, pinger: WsPinger, publishes: int, timeout: float = 120) -> tuple[float, int]:
    """Server CPU (ms) per publication over the next ``publishes`` publications (fewer if they do not come)."""
    seq0, cpu0, deadline = pinger.seq, server.cpu_seconds(), time.monotonic() + timeout
    while pinger.seq - seq0 < publishes and time.monotonic() < deadline:
        time.sleep(0.05)
    done = pinger.seq - seq0
    return ((server.cpu_seconds() - cpu0) * 1000 / done if done else float("nan")), done


@attack("views", "2")
def attack_views(opts: Options) -> list[Row]:
    count, publishes = opts.n(2_000), 10
    with opts.server({"ORCHESTRATOR_WEBSOCKET__MAX_CLIENTS": str(count + 100)}) as server:
        load = FleetLoad(server.url, Fleet(20, seed=2))
        pinger = WsPinger(server.port)
        try:
            wait_until(lambda: pinger.seq > 1, 60)
            alone, _ = cpu_per_publish(server, pinger, publishes)
            rtt_alone = pinger.take()
            spawn = multiprocessing.get_context("spawn")  # not fork: this process has threads running
            ready, stop, out = spawn.Event(), spawn.Event(), spawn.Queue()
            child = spawn.Process(target=_view_clients, args=(server.port, count, ready, stop, out))
            opened = time.monotonic()
            child.start()
            ready.wait(600)
            opened = time.monotonic() - opened
            pinger.take()
            crowded, seen = cpu_per_publish(server, pinger, publishes)
            rtt_crowded = pinger.take()
            stop.set()
            clients = out.get(timeout=120)
            child.join(60)
        finally:
            load.stop()
            pinger.close()
    return [
        Row(
            f"{clients.get('connected', 0):,} WebSocket clients of absent hosts (`?host=nohost-<k>`, opened in "
            f"{opened:.0f} s) + 20 reporting hosts: server CPU per publish",
            "1.6 s",
            f"{crowded:.0f} ms (same load without those clients: {alone:.0f} ms; over {seen} publishes)",
            "a view's diff reads only its host's changes; the empty diff is encoded once",
        ),
        Row(
            "… ping round trip meanwhile (p50 / max, under load)",
            "stalled 1.8 s",
            f"{percentile(rtt_crowded, 50):.0f} / {max(rtt_crowded, default=float('nan')):.0f} ms "
            f"(without them {percentile(rtt_alone, 50):.0f} / {max(rtt_alone, default=float('nan')):.0f} ms)",
        ),
    ]


# -- 12: WebSocket clients and resync -------------------------------------------------------------------------------


@attack("websocket", "12")
def attack_websocket(opts: Options) -> list[Row]:
    cap, tries = 200, 300
    with opts.server({"ORCHESTRATOR_WEBSOCKET__MAX_CLIENTS": str(cap)}, persist=False) as server:
        rss0 = server.rss_mb()

        async def crowd() -> tuple[Counter, float]:
            statuses: Counter = Counter()
            opened = []
            for _ in range(tries):
                try:
                    ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/api/v1/ws", compression=None)
                    await ws.recv()
                    opened.append(ws)
                    statuses[101] += 1
                except websockets.exceptions.InvalidStatus as exc:
                    statuses[exc.response.status_code] += 1
                except (OSError, websockets.exceptions.WebSocketException) as exc:
                    statuses[type(exc).__name__] += 1
            rss = server.rss_mb()
            for ws in opened:
                await ws.close()
            return statuses, rss

        statuses, rss1 = asyncio.run(crowd())
    hosts = opts.n(100)
    with opts.server(persist=False) as server:
        fleet = Fleet(hosts, seed=12)
        now = time.time()
        post_many(server.url, (orjson.dumps(fleet.report(h, now)) for h in range(hosts)))
        server.wait_drained(300)
        time.sleep(2)

        async def spam(seconds: float = 10.0) -> tuple[int, int, int, int]:
            url = f"ws://127.0.0.1:{server.port}/api/v1/ws"
            async with websockets.connect(url, compression=None, max_size=None) as ws:
                snapshot = len(await ws.recv())
                received = [0, 0]
                sent = 0
                end = time.monotonic() + seconds

                async def read() -> None:
                    with contextlib.suppress(Exception):
                        async for message in ws:
                            received[0] += len(message)
                            received[1] += '"topology_update"' in message[:100]

                reader = asyncio.create_task(read())
                while time.monotonic() < end:
                    await ws.send('{"type": "resync"}')
                    sent += 1
                    await asyncio.sleep(0.001)
                reader.cancel()
                return snapshot, received[0], received[1], sent

        snapshot, received, snapshots, sent = asyncio.run(spam())
    accepted = statuses.get(101, 0)
    return [
        Row(
            f"{tries} WebSocket clients against `websocket.max_clients` {cap}: answers",
            "no cap (~30 KB each)",
            f"{dict(statuses)}; RSS {((rss1 - rss0) * 1e3 / max(accepted, 1)):.0f} KB per client",
            "`websocket.max_clients` (10,000): 503 `too_many_clients` + Retry-After before the upgrade",
        ),
        Row(
            f"10 s of `resync` spam ({sent:,} 17-byte messages) at {hosts} hosts (snapshot {snapshot / 1e6:.1f} MB): bytes sent",
            "9 GiB (an 11 MB snapshot per message)",
            f"{received / 1e6:.0f} MB, {snapshots} snapshots",
            "`websocket.resync_interval` (1 s): one snapshot per interval, the rest coalesce",
        ),
    ]
