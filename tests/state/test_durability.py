"""Durability through real servers: a data dir that cannot be written refuses instead of losing, the
crash window and seq after SIGKILL under load, and a restore that gives back the very same topology."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time

import httpx
import orjson
import pytest
from websockets.sync.client import connect

from orchestrator.probe.fleet import Fleet
from orchestrator.state import persistence
from orchestrator.state.persistence import Store
from tests.state.test_persistence import apply_report, make_state, stored_ids
from tests.support import REPO, make_settings, post_report, report, wait_for


def big_report(agent_id: str, processes: int = 150) -> dict:
    """A report whose stored rows take a few KB (names that do not compress to nothing)."""
    names = [os.urandom(12).hex() for _ in range(processes)]
    return report(
        agent_id,
        host_info={"cpu_percent": 1.0},
        processes_info={"processes": [{"pid": 100 + i, "name": name} for i, name in enumerate(names)]},
    )


def health(url: str) -> httpx.Response:
    return httpx.get(url + "/health", timeout=5)


def assert_refused_with_503(client: httpx.Client) -> None:
    for answer in (
        post_report(client, report("agent-late")),
        client.post("/api/v1/agents/register", json={"agent_id": "agent-late", "hostname": "host-late"}),
    ):
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "1"
        assert answer.json()["error"]["code"] == "storage_unavailable"


# -- a full data file ------------------------------------------------------------------------------------


def test_a_data_file_at_its_size_cap_turns_health_503_and_refuses_reports_and_registrations(tmp_path, start_server):
    settings = make_settings(tmp_path, storage={"checkpoint_interval": "1s", "max_file_size": 128 * 1024})
    server = start_server(settings)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        accepted = 0
        while health(server.url).status_code == 200:
            answer = post_report(client, big_report(f"agent-{accepted}"))
            if answer.status_code == 503:
                break  # refused: the checkpoint failed between the health check and this report
            assert answer.status_code == 202 and accepted < 2000, answer.text
            accepted += 1
        body = wait_for(lambda: (r := health(server.url)).status_code == 503 and r.json(), timeout=15)
        assert body["status"] == "storage_unavailable"
        assert "database or disk is full" in body["reason"]
        assert_refused_with_503(client)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "storage_unavailable" in ready.json()["reasons"]

        checkpoint = client.get("/api/v1/query/stats").json()["storage"]["checkpoint"]
        assert checkpoint["available"] is False and checkpoint["checkpoint_failures"] >= 1
        assert "database or disk is full" in checkpoint["unavailable_reason"]
        assert checkpoint["consecutive_failures"] >= 1 and checkpoint["durable_until"] is not None
        metrics = client.get("/metrics").text
        assert "app_storage_available 0.0" in metrics
        refused = next(line for line in metrics.splitlines() if line.startswith("app_storage_refused_total "))
        assert float(refused.split()[1]) >= 2  # the two above, and the report that met the failure, if one did


async def test_a_checkpoint_too_big_for_the_disk_still_saves_the_transactions_that_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(persistence, "CHUNK_AGENTS", 5)
    store, _ = Store.open(tmp_path, max_file_size=160 * 1024)
    state = make_state(tmp_path)
    state.store = store
    store.restore(state)
    for i in range(60):
        apply_report(state, f"agent-{i:02d}", processes=150)

    result = await store.checkpoint(state)

    saved = stored_ids(store.path, "latest")
    assert not result.ok and store.unavailable is not None
    assert 0 < len(saved) < 60 and result.written == len(saved)
    assert state.dirty_agents == {f"agent-{i:02d}" for i in range(60)} - saved  # the rest is tried again
    store.conn.close()


async def test_after_a_checkpoint_slower_than_the_interval_the_next_ones_are_still_half_an_interval_apart(
    tmp_path, monkeypatch
):
    """A checkpoint that waited long (behind an ingest backlog, a loaded disk) must not make the next ones
    start back to back: they would spin the event loop."""
    store, _ = Store.open(tmp_path)
    state = make_state(tmp_path, storage={"data_dir": str(tmp_path), "checkpoint_interval": "1s"})
    state.store = store
    store.restore(state)
    apply_report(state, "agent-1")
    gather = persistence._gather
    started: list[float] = []

    async def slow_once(state, ids):
        if len(started) == 1:
            await asyncio.sleep(1.2)  # longer than the interval
        return await gather(state, ids)

    real_checkpoint = store.checkpoint

    async def counted(state, full=False):
        started.append(time.monotonic())
        return await real_checkpoint(state, full)

    monkeypatch.setattr(persistence, "_gather", slow_once)
    monkeypatch.setattr(store, "checkpoint", counted)
    runner = asyncio.ensure_future(store.run(state))
    await asyncio.sleep(0.1)
    await counted(state)  # the slow one
    first = time.monotonic()
    apply_report(state, "agent-2")
    await asyncio.sleep(2.0)
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    after = [t for t in started if t >= first]
    assert 1 <= len(after) <= 5, f"{len(after)} checkpoints started in 2 s at a 1 s interval"
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(after))
    assert stored_ids(store.path, "latest") == {"agent-1", "agent-2"}
    store.conn.close()


# -- a full disk (a real small filesystem; needs root to mount it) ----------------------------------------


@contextlib.contextmanager
def small_disk(path, size: str = "8m"):
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path) -> None:
    """Take every free byte of the filesystem holding ``path``."""
    with open(path, "wb", buffering=0) as filler:  # unbuffered: nothing left to flush at close
        for block in (65536, 512):
            with contextlib.suppress(OSError):
                while True:
                    filler.write(b"\xff" * block)


def test_a_full_disk_refuses_until_space_is_freed_and_loses_no_accepted_report(tmp_path, server_process):
    with small_disk(tmp_path / "disk") as disk:
        data_dir = str(disk / "data")
        env = {"ORCHESTRATOR_STORAGE__CHECKPOINT_INTERVAL": "1s"}
        server = server_process("--data-dir", data_dir, env=env).wait_healthy()
        accepted: list[str] = []
        try:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for i in range(10):
                    assert post_report(client, big_report(f"agent-{i}")).status_code == 202
                    accepted.append(f"agent-{i}")
                fill(disk / "filler")
                for i in range(10, 2000):
                    if post_report(client, big_report(f"agent-{i}")).status_code != 202:
                        break
                    accepted.append(f"agent-{i}")
                    if health(server.url).status_code == 503:
                        break
                body = wait_for(lambda: (r := health(server.url)).status_code == 503 and r.json(), timeout=60)
                assert body["status"] == "storage_unavailable" and "full" in body["reason"]
                assert_refused_with_503(client)

                (disk / "filler").unlink()  # the operator frees space: the next checkpoint succeeds
                wait_for(lambda: health(server.url).status_code == 200, timeout=60)
                for i in range(3):
                    assert post_report(client, big_report(f"agent-after-{i}")).status_code == 202
                    accepted.append(f"agent-after-{i}")
            assert server.terminate() == 0
        finally:
            server.kill()
        again = server_process("--data-dir", data_dir).wait_healthy()
        try:
            listed = httpx.get(again.url + "/api/v1/agents/list", timeout=10).json()
            assert {a["agent_id"] for a in listed["agents"]} == set(accepted)
        finally:
            again.kill()


def serve_once(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "serve", "--host", "127.0.0.1", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_starting_on_a_full_disk_exits_2_with_one_line(tmp_path):
    with small_disk(tmp_path / "disk", size="1m") as disk:
        fill(disk / "filler")
        done = serve_once("--data-dir", str(disk / "data"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchestrator: data dir ") and "Traceback" not in done.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only mode")
def test_starting_on_a_read_only_data_dir_exits_2_with_one_line(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o500)
    try:
        done = serve_once("--data-dir", str(data_dir))
    finally:
        data_dir.chmod(0o700)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchestrator: data dir ") and "Traceback" not in done.stderr


# -- the crash window and seq after SIGKILL under load ------------------------------------------------------


class Load:
    """Reports from a few agents as fast as one connection goes; remembers when each 202 arrived."""

    def __init__(self, url: str, agents: int = 20) -> None:
        self.url, self.agents = url, agents
        self.accepted: dict[str, list[tuple[float, int]]] = {f"agent-{i}": [] for i in range(agents)}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            for number in range(1, 1_000_000):
                if self.stop.is_set():
                    return
                agent_id = f"agent-{number % self.agents}"
                body = report(agent_id, host_info={"cpu_percent": float(number)})
                try:
                    answer = post_report(client, body)
                except httpx.HTTPError:
                    return  # killed
                if answer.status_code == 202:
                    self.accepted[agent_id].append((time.monotonic(), number))


class Watcher:
    """A WebSocket client that remembers the highest seq it was sent."""

    def __init__(self, ws_url: str) -> None:
        self.seen = 0
        self.ws = connect(ws_url, open_timeout=10)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            for message in self.ws:
                self.seen = max(self.seen, orjson.loads(message)["seq"])


def test_sigkill_under_load_keeps_every_report_older_than_one_interval_and_never_reuses_a_seq(tmp_path, server_process):
    interval = 1.0
    env = {"ORCHESTRATOR_STORAGE__CHECKPOINT_INTERVAL": "1s"}
    server = server_process("--data-dir", str(tmp_path), env=env).wait_healthy()
    load = Load(server.url)
    watcher = Watcher(f"ws://127.0.0.1:{server.port}/api/v1/ws")
    try:
        load.thread.start()
        watcher.thread.start()
        wait_for(lambda: sum(map(len, load.accepted.values())) >= 300 and watcher.seen >= 30, timeout=30)
        killed_at = time.monotonic()
        server.kill()
    finally:
        load.stop.set()
        server.kill()
    load.thread.join(10)
    watcher.thread.join(10)
    last_seen = watcher.seen

    again = server_process("--data-dir", str(tmp_path), env=env).wait_healthy()
    with httpx.Client(base_url=again.url, timeout=10) as client:
        for agent_id, answers in load.accepted.items():
            old_enough = [number for at, number in answers if killed_at - at > interval]
            if not old_enough:
                continue
            latest = client.get(f"/api/v1/query/agents/{agent_id}/latest")
            assert latest.status_code == 200, (agent_id, latest.text)
            assert latest.json()["report"]["host_info"]["cpu_percent"] >= max(old_enough), agent_id
    # A client resuming with the last seq it saw gets a fresh snapshot numbered past it, never a diff.
    with connect(f"ws://127.0.0.1:{again.port}/api/v1/ws?since={last_seen}", open_timeout=10) as ws:
        first = orjson.loads(ws.recv(timeout=10))
    assert first["type"] == "topology_update" and first["seq"] > last_seen


# -- restore gives back the very same topology ---------------------------------------------------------------


VIEWS = ["", "?level=host", "?level=container", "?host=sim-host-3"]


def topology_parts(client: httpx.Client) -> dict[str, bytes]:
    """The published topology of each view, as bytes, without the seq (numbered on after a restart)."""
    parts = {}
    for view in VIEWS:
        body = client.get("/api/v1/query/topology" + view).json()["topology"]
        parts[view] = orjson.dumps({"nodes": body["nodes"], "edges": body["edges"], "timestamp": body["timestamp"]})
    return parts


def test_restore_gives_the_same_topology_bytes_as_the_ingest_that_built_it(tmp_path, start_server):
    fleet = Fleet(6, processes=30, containers=3, connections=60)
    settings = make_settings(tmp_path)
    first = start_server(settings)
    with httpx.Client(base_url=first.url, timeout=10) as client:
        now = time.time()
        for host in range(6):
            assert post_report(client, fleet.report(host, now)).status_code == 202
        for host in range(3):  # re-reports: contributions replaced, first_seen kept
            assert post_report(client, fleet.report(host, now + 1)).status_code == 202
        wait_for(lambda: client.get("/api/v1/query/stats").json()["ingest_queue"] == 0)
        previous: list[dict] = [{}]

        def published_everything() -> dict | None:  # two reads a broadcast tick apart agree
            parts, previous[0] = previous[0], topology_parts(client)
            return parts if parts == previous[0] else None

        before = wait_for(published_everything, interval=0.2)
    first.stop()  # graceful: the final checkpoint

    second = start_server(make_settings(tmp_path))
    with httpx.Client(base_url=second.url, timeout=10) as client:
        after = topology_parts(client)
    assert orjson.loads(before[""])["nodes"]  # a real topology, not two empty ones
    assert after == before
