"""Benchmark the crash window: SIGKILL a loaded server again and again, restart it on the same data dir, and
measure what was lost.

Each round starts ``orchestrator serve`` (127.0.0.1 only) on one data dir, drives it with reports from a
synthetic fleet (one connection posting as fast as the server answers, every report a topology change) and one
WebSocket client that remembers the highest ``seq`` it was sent, then SIGKILLs it at a random moment and
restarts it. It counts, per round: the age of the oldest report answered 202 that the restarted server no
longer has (the crash window actually seen; it must stay under ``storage.checkpoint_interval``), and whether a
client resuming with ``since=<last seq it saw>`` was sent anything but a fresh snapshot numbered past it (a
reused seq).

Run: ``python -m benchmarks.bench_crash [--rounds 10] [--interval 2s] [--hosts 100]``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson
from websockets.sync.client import connect

from benchmarks.common import REPO, Server
from orchestrator.contract.times import parse_rfc3339
from orchestrator.probe.fleet import Fleet


def start(data_dir: str, interval: str, repo: Path = REPO) -> tuple[Server, str, int]:
    env = {"ORCHESTRATOR_STORAGE__CHECKPOINT_INTERVAL": interval}
    server = Server(env=env, data_dir=data_dir, start_timeout=120, repo=repo)
    return server, server.url, server.port


class Load:
    """Fleet reports as fast as one connection goes; per host, the 202s with their receipt times."""

    def __init__(self, url: str, fleet: Fleet, counter: list[int]) -> None:
        self.url, self.fleet, self.counter = url, fleet, counter
        self.accepted: dict[str, list[tuple[float, float]]] = {}  # agent -> [(monotonic 202 time, report epoch)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.stop.is_set():
                self.counter[0] += 1
                host = self.counter[0] % self.fleet.hosts
                # Strictly increasing across rounds: a report is identified by its timestamp (ms precision).
                epoch = self.counter[1] = max(self.counter[1] + 0.001, time.time())
                body = self.fleet.report(host, epoch)
                try:
                    answer = client.post(
                        "/api/v1/reports", content=orjson.dumps(body), headers={"Content-Type": "application/json"}
                    )
                except httpx.HTTPError:
                    return
                if answer.status_code == 202:
                    self.accepted.setdefault(body["agent_id"], []).append((time.monotonic(), epoch))


class Watcher:
    def __init__(self, port: int) -> None:
        self.seen = 0
        self.ws = connect(f"ws://127.0.0.1:{port}/api/v1/ws?level=host", open_timeout=10, max_size=None)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            for message in self.ws:
                self.seen = max(self.seen, orjson.loads(message)["seq"])


def lost_ages(url: str, load: Load, killed_at: float) -> list[float]:
    """Ages (at the kill) of the newest 202'd report of each agent the restarted server no longer has."""
    ages = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for agent_id, answers in load.accepted.items():
            latest = client.get(f"/api/v1/query/agents/{agent_id}/latest")
            kept = 0.0
            if latest.status_code == 200:
                kept = parse_rfc3339(latest.json()["report"]["timestamp"])
            ages += [killed_at - at for at, epoch in answers if epoch > kept + 0.0005]
    return ages


def last_checkpoint_ms(url: str) -> float | None:
    """How long the server's last checkpoint took (the window holds while it is under half the interval)."""
    try:
        stats = httpx.get(url + "/api/v1/query/stats", timeout=10).json()
    except httpx.HTTPError:
        return None
    return (stats.get("storage", {}).get("checkpoint") or {}).get("last_checkpoint_ms")


def run(rounds: int, interval: str, hosts: int, seed: int, repo: Path = REPO) -> list[tuple]:
    """One row per round: (round, 202s, lost, oldest lost s, last seq seen, seq after restart, reused, restart s,
    the last checkpoint's duration in ms before the kill)."""
    rng = random.Random(seed)
    data_dir = tempfile.mkdtemp(prefix="bench-crash-")
    fleet = Fleet(hosts, processes=30, containers=3, connections=40)
    counter = [0, 0.0]  # reports sent, the last report timestamp
    rows = []
    proc, url, port = start(data_dir, interval, repo)
    for number in range(1, rounds + 1):
        load, watcher = Load(url, fleet, counter), Watcher(port)
        load.thread.start()
        watcher.thread.start()
        time.sleep(rng.uniform(3.0, 6.0))
        checkpoint_ms = last_checkpoint_ms(url)
        killed_at = time.monotonic()
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(10)
        load.stop.set()
        load.thread.join(10)
        watcher.thread.join(10)
        started = time.monotonic()
        proc, url, port = start(data_dir, interval, repo)
        restart = time.monotonic() - started
        ages = lost_ages(url, load, killed_at)
        with connect(f"ws://127.0.0.1:{port}/api/v1/ws?level=host&since={watcher.seen}", max_size=None) as ws:
            first = orjson.loads(ws.recv(timeout=30))
        reused = first["type"] != "topology_update" or first["seq"] <= watcher.seen
        accepted = sum(map(len, load.accepted.values()))
        oldest = max(ages, default=0.0)
        rows.append((number, accepted, len(ages), oldest, watcher.seen, first["seq"], reused, restart, checkpoint_ms))
    proc.stop()
    return rows


def main(rounds: int, interval: str, hosts: int, seed: int) -> None:
    rows = run(rounds, interval, hosts, seed)
    print(f"checkpoint_interval {interval}, {hosts} hosts, {rounds} SIGKILLs\n")
    print(
        "| round | 202s | lost | oldest lost (s) | last seq seen | seq after restart | seq reused | restart (s) "
        "| last checkpoint (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for number, accepted, lost, oldest, seen, after, reused, restart, checkpoint_ms in rows:
        print(
            f"| {number} | {accepted} | {lost} | {oldest:.2f} | {seen} | {after} | {'yes' if reused else 'no'} "
            f"| {restart:.1f} | {checkpoint_ms} |"
        )
    worst = max(row[3] for row in rows)
    print(f"\noldest lost report over all rounds: {worst:.2f} s; seq reused in {sum(row[6] for row in rows)} rounds")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--interval", default="2s")
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    main(args.rounds, args.interval, args.hosts, args.seed)
