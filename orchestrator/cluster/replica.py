"""One replica of a cluster: writes go to the log, the state is what the log says.

The request side hands writes to :class:`Replica` (:meth:`register`, :meth:`heartbeat`,
:meth:`submit_report`), which publishes them to JetStream and answers only after the PubAck. Nothing
writes the state but :meth:`Replica._follow`, which reads the whole stream in order and applies each
message through the same operations and pipeline as the single server, with two rules that make every
replica that applied the same messages hold the same state:

- **The receipt clock is the log's.** A message's receipt time is the time JetStream stored it (never
  below the previous message's), the report's arrival ``order`` is its stream sequence.
- **Time passes only through the log.** Every replica offers a clock tick every broadcast interval,
  ``<stream>.clock.<k>`` with ``k = floor(wall clock / interval)`` and ``Nats-Msg-Id: clock-<k>``, so the
  stream keeps one per ``k`` (a tick older than the last applied one, from a replica whose clock lags, is
  ignored). At a tick every replica, at the same log position: runs the cleanup sweep when the tick enters
  a new ``storage.cleanup_interval`` slot, publishes the topology (``seq`` therefore counts publications
  in the log and means the same version on every replica), and takes a snapshot when the tick enters a new
  ``cluster.snapshot_interval`` slot. Reads that depend on "now" (agent status, time-series windows) use
  the log's clock too (``state.clock``).

Catch-up: at start the replica loads the newer of its data dir's snapshot and the object store's, then
replays the stream from the message after it. ``/health`` says ``catching_up`` until it has applied the
stream as it was when the reader was (re)created, ``bus_unavailable`` while NATS cannot be reached.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import math
import os
import socket
import time
import uuid
import zlib
from dataclasses import replace
from pathlib import Path

import orjson
import structlog

from orchestrator.cluster.bus import Bus, BusUnavailable, PayloadTooLarge, Stored, subject_token
from orchestrator.cluster.snapshot import Position, SnapshotError, gather, pack_steps, restore, unpack
from orchestrator.contract.errors import ApiError
from orchestrator.contract.times import format_rfc3339
from orchestrator.pipeline.decode import parse_report
from orchestrator.pipeline.ingest import Accepted
from orchestrator.runtime.collector import restoring
from orchestrator.runtime.slicing import TimeSlice, run_sliced
from orchestrator.state.agents import Agent
from orchestrator.state.cleanup import sweep

log = structlog.get_logger("orchestrator.cluster.replica")

APPLY_SLICE_SECONDS = 0.005
PARSED_CACHE = 2048  # reports published here, kept parsed until applied (saves parsing them twice)
SNAPSHOT_FILE = "cluster-snapshot.bin"
IDLE_FETCHES_BEFORE_RESET = 5  # empty one-second fetches in a row: the consumer may be gone (NATS restarted)
_MISSING = object()
READINESS = {
    "bus_unavailable": "NATS JetStream cannot be reached: writes are refused, reads serve this replica's copy",
    "catching_up": "replaying the cluster's log",
}


class Replica:
    def __init__(self, state) -> None:
        self.state = state
        settings = self.settings = state.settings
        self.bus = Bus(settings)
        self.stream = settings.cluster.stream
        self.replica_id = settings.cluster.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self.position = Position(stream=self.stream)
        self.stream_seq = 0
        self.published_through = 0  # queries show the log up to this sequence (the last tick applied)
        self.catch_up_target: int | None = None  # the stream's last seq when the reader was made
        self.tick_interval = settings.websocket.broadcast_interval
        self.data_file = Path(settings.storage.data_dir) / SNAPSHOT_FILE if settings.storage.persist else None
        self._waiters: list[tuple[int, int, asyncio.Future]] = []  # heap of (seq, n, future)
        self._waiter_numbers = 0
        self._outcomes: dict[int, object] = {}
        self._parsed: dict[str, object] = {}
        self._save_task: asyncio.Task | None = None
        self.snapshots_taken = 0
        self.snapshot_loaded: str | None = None  # "local", "object_store" or None
        self.closed = False
        self._tasks: list[asyncio.Task] = []

    # -- status --------------------------------------------------------------------------------------

    def clock(self) -> float:
        """The log's clock: what "now" is on the state side of a replica (0 before any message)."""
        return self.position.clock

    @property
    def caught_up(self) -> bool:
        return self.catch_up_target is not None and self.position.applied_seq >= self.catch_up_target

    def health(self) -> str | None:
        """``bus_unavailable``, ``catching_up``, or None when healthy."""
        if not self.bus.available:
            return "bus_unavailable"
        if not self.caught_up:
            return "catching_up"
        return None

    def _note_readiness(self) -> None:
        """Keep ``state.not_ready`` (``/readyz``) in step with :meth:`health`."""
        reasons = self.state.not_ready
        problem = self.health()
        for reason, text in READINESS.items():
            if reason == problem:
                reasons[reason] = text
            else:
                reasons.pop(reason, None)

    def stats(self) -> dict:
        applied = self.position.applied_seq
        stream_seq = max(self.stream_seq, applied)  # the newest of: its fetches' pending counts, its PubAcks
        return {
            "mode": "nats",
            "replica_id": self.replica_id,
            "stream": self.stream,
            "applied_seq": applied,
            "stream_seq": stream_seq,
            "lag": self.unapplied(),
            "published_through": self.published_through,
            "connected": self.bus.available,
            "caught_up": self.caught_up,
            "clock": format_rfc3339(self.position.clock) if self.position.clock else None,
            "snapshots_taken": self.snapshots_taken,
            "snapshot_loaded": self.snapshot_loaded,
        }

    # -- writes (the request side) -------------------------------------------------------------------

    async def register(self, agent_id: str, hostname: str, metadata: dict) -> tuple[bool, dict]:
        """Store a registration, wait until it is applied here; (created, the agent's body)."""
        payload = orjson.dumps({"agent_id": agent_id, "hostname": hostname, "metadata": metadata})
        predicted = not self.state.is_known(agent_id)
        ack = await self._publish("register", agent_id, payload, f"g-{uuid.uuid4().hex}")
        created = await self._applied(ack.seq)
        agent = self.state.registry.get(agent_id)
        if created is _MISSING or agent is None:  # not applied here in time: answer from what was stored
            now = self.clock() or time.time()
            created, agent = predicted, Agent(agent_id, hostname, now, now, dict(metadata))
        return bool(created), agent.to_json(self.clock(), self.settings.agents.stale_threshold)

    async def heartbeat(self, agent_id: str) -> float | None:
        """Store a heartbeat; its receipt time, or None when the agent is unknown (404) at that point of the
        log. Known or not is decided where the heartbeat lands in the log, not by this replica's copy: a
        registration stored through another replica just before is already there."""
        ack = await self._publish("heartbeat", agent_id, orjson.dumps({"agent_id": agent_id}), f"h-{uuid.uuid4().hex}")
        found = await self._applied(ack.seq)
        if found is _MISSING:  # not applied here in time: this copy's word
            found = self.state.is_known(agent_id)
        agent = self.state.registry.get(agent_id)
        if not found:
            return None
        return agent.last_seen if agent is not None else self.clock()

    async def submit_report(self, report, raw: bytes, gzipped: bytes | None) -> str:
        """Store a validated report; its report id once JetStream acknowledged it (the 202 may follow).

        The message id is the report's content hash: a probe (or a proxy) retrying the same report after
        a lost answer is stored once."""
        payload = gzipped if gzipped is not None else zlib.compress(raw, 1)
        msg_id = "r-" + hashlib.blake2b(raw, digest_size=16).hexdigest()
        if len(self._parsed) < PARSED_CACHE:
            self._parsed[msg_id] = report
        try:
            ack = await self._publish("report", report.agent_id, payload, msg_id)
        except ApiError:
            self._parsed.pop(msg_id, None)
            raise
        if ack.duplicate:
            self._parsed.pop(msg_id, None)
        return f"{self.stream}-{ack.seq}"

    async def _publish(self, kind: str, agent_id: str, payload: bytes, msg_id: str):
        try:
            return self._saw(await self.bus.publish(kind, subject_token(agent_id), payload, msg_id))
        except PayloadTooLarge as exc:
            raise ApiError(413, f"message too large for the cluster's NATS server: {exc}") from None
        except BusUnavailable as exc:
            raise ApiError(
                503,
                f"the cluster's log (NATS JetStream) did not store this write; nothing was accepted ({exc})",
                code="bus_unavailable",
                headers={"Retry-After": str(max(1, round(self.settings.server.retry_after)))},
            ) from None

    def _saw(self, ack):
        """Note the stream's head from a PubAck: the lag (and the door's bound on it) counts what this
        replica stored but has not fetched yet, not only what its last fetch said was pending."""
        self.stream_seq = max(self.stream_seq, ack.seq)
        return ack

    def unapplied(self) -> int:
        """Messages of the log known to be stored and not applied here yet (the lag)."""
        return max(0, self.stream_seq - self.position.applied_seq)

    async def _applied(self, seq: int):
        """Wait until ``seq`` is applied here (at most ``publish_timeout``); its outcome, or _MISSING."""
        if self.position.applied_seq >= seq:
            return self._outcomes.pop(seq, _MISSING)
        future = asyncio.get_running_loop().create_future()
        self._waiter_numbers += 1
        heapq.heappush(self._waiters, (seq, self._waiter_numbers, future))
        try:
            return await asyncio.wait_for(future, self.settings.cluster.publish_timeout)
        except TimeoutError:
            return _MISSING

    def _wake_waiters(self) -> None:
        applied = self.position.applied_seq
        while self._waiters and self._waiters[0][0] <= applied:
            seq, _, future = heapq.heappop(self._waiters)
            outcome = self._outcomes.pop(seq, _MISSING)
            if not future.done():
                future.set_result(outcome)

    # -- the clock -----------------------------------------------------------------------------------

    async def offer_ticks(self) -> None:
        """Offer the log a clock tick every broadcast interval (every replica does; one is stored)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.closed:
            if self.bus.available:
                k = math.floor(time.time() / self.tick_interval)
                try:
                    self._saw(await self.bus.publish("clock", str(k), orjson.dumps({"k": k}), f"clock-{k}"))
                except BusUnavailable as exc:
                    log.debug("tick_not_stored", k=k, error=str(exc))
            next_at = max(next_at + self.tick_interval, loop.time())
            await asyncio.sleep(next_at - loop.time())

    # -- start-up ------------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.run(), name="cluster-follow"),
            loop.create_task(self.offer_ticks(), name="cluster-ticks"),
        ]

    async def run(self) -> None:
        """Connect, load the best snapshot, then follow the stream forever (through any outage)."""
        connecting = asyncio.ensure_future(self.bus.connect_forever())
        try:
            await asyncio.wait_for(asyncio.shield(connecting), self.settings.cluster.publish_timeout)
        except TimeoutError:
            log.warning("nats_unreachable_at_start", url=self.settings.cluster.nats_url)
        await self._load_snapshot()
        await connecting
        await self._follow()

    async def _load_snapshot(self) -> None:
        local = await asyncio.to_thread(self._read_local)
        remote_position = None
        if self.bus.available:
            try:
                remote_position = Position.parse(await self.bus.snapshot_description())
            except Exception as exc:
                log.warning("snapshot_info_failed", error=repr(exc))
        local_seq = local[0].applied_seq if local else -1
        chosen, source = local, "local"
        download_ms = unpack_ms = 0.0
        if remote_position is not None and remote_position.applied_seq > local_seq:
            try:
                started = time.perf_counter()
                data = await self.bus.get_snapshot()
                downloaded = time.perf_counter()
                chosen, source = (unpack(data), "object_store") if data else (local, "local")
                download_ms, unpack_ms = (downloaded - started) * 1000, (time.perf_counter() - downloaded) * 1000
            except (SnapshotError, Exception) as exc:
                log.error("snapshot_download_failed", error=repr(exc))
        if chosen is None:
            return
        position, agents = chosen
        if position.stream != self.stream:
            log.warning("snapshot_of_another_stream", stream=position.stream)
            return
        started = time.perf_counter()
        with restoring(freeze=self.settings.server.tune_gc):
            restore(self.state, position, agents)
        self.position = position
        self.published_through = position.applied_seq  # taken right after a tick's publish
        self.snapshot_loaded = source
        log.info(
            "snapshot_loaded",
            source=source,
            applied_seq=position.applied_seq,
            agents=len(agents),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),  # the restore
            download_ms=round(download_ms, 1),
            unpack_ms=round(unpack_ms, 1),
        )

    def _read_local(self):
        if self.data_file is None or not self.data_file.exists():
            return None
        try:
            return unpack(self.data_file.read_bytes())
        except (OSError, SnapshotError) as exc:
            log.error("local_snapshot_unreadable", path=str(self.data_file), error=repr(exc))
            return None

    # -- following the log ---------------------------------------------------------------------------

    async def _follow(self) -> None:
        reader, generation, idle = None, -1, 0
        while not self.closed:
            self._note_readiness()
            if not self.bus.available:
                reader = None
                await asyncio.sleep(0.05)
                continue
            if reader is None or generation != self.bus.generation:
                try:
                    reader, generation = await self._new_reader()
                except Exception as exc:
                    log.warning("stream_reader_failed", error=repr(exc))
                    reader = None
                    await asyncio.sleep(self.settings.cluster.reconnect_wait)
                    continue
            try:
                messages = await self.bus.fetch(reader, timeout=1.0)
            except Exception as exc:
                log.warning("stream_fetch_failed", error=repr(exc))
                reader = None
                continue
            if not messages:
                idle += 1
                if idle >= IDLE_FETCHES_BEFORE_RESET:
                    reader, idle = None, 0
                continue
            idle = 0
            await self._apply(messages)
            self._note_readiness()
            last = messages[-1]
            self.stream_seq = max(self.stream_seq, last.seq + last.pending)
            self.state.metrics.replica_lag.set(self.unapplied())

    async def _new_reader(self):
        generation = self.bus.generation
        first, last = await self.bus.stream_state()
        applied = self.position.applied_seq
        if last < applied:
            log.error("stream_behind_state", stream_last_seq=last, applied_seq=applied)
        elif first > applied + 1 and last >= first:
            log.error("log_gap", first_seq=first, applied_seq=applied, message="messages this state lacks are gone")
        reader = await self.bus.reader(applied + 1)
        self.catch_up_target = last
        self.stream_seq = max(self.stream_seq, last)
        log.info("stream_reader", start_seq=applied + 1, stream_last_seq=last, generation=generation)
        return reader, generation

    async def _apply(self, messages: list[Stored]) -> None:
        state, index = self.state, 0
        stretch = TimeSlice(APPLY_SLICE_SECONDS)
        while index < len(messages):
            async with state.topology_lock:  # a sliced publish or sweep never sees a message half-applied
                stretch.restart()
                while index < len(messages) and not stretch.due():
                    message = messages[index]
                    if message.kind == "clock" and message.seq > self.position.applied_seq:
                        break
                    index += 1
                    self._apply_write(message)
            if index < len(messages) and messages[index].kind == "clock":
                await self._apply_clock(messages[index])
                index += 1
            self._wake_waiters()
            await stretch.pause()

    def _apply_write(self, message: Stored) -> None:
        position = self.position
        if message.seq <= position.applied_seq:
            return
        position.clock = max(position.clock, message.stored_at)
        apply = _APPLY.get(message.kind)
        outcome = None
        try:
            if apply is not None:
                outcome = apply(self, message, position.clock)
        except Exception as exc:
            # Deterministic all the same: every replica fails on the same message the same way.
            log.error("apply_failed", seq=message.seq, kind=message.kind, error=repr(exc))
        position.applied_seq = message.seq
        if self._waiters and self._waiters[0][0] <= message.seq:
            self._outcomes[message.seq] = outcome

    def _apply_register(self, message: Stored, now: float) -> bool:
        body = orjson.loads(message.payload)
        _agent, created = self.state.register_agent(body["agent_id"], body["hostname"], body["metadata"], now)
        return created

    def _apply_heartbeat(self, message: Stored, now: float) -> bool:
        return self.state.heartbeat(orjson.loads(message.payload)["agent_id"], now) is not None

    def _apply_report(self, message: Stored, now: float) -> None:
        state = self.state
        raw = zlib.decompress(message.payload, wbits=47)  # gzip or zlib
        report = self._parsed.pop(message.msg_id, None) if message.msg_id else None
        if report is None:
            report = parse_report(raw, state.sections, self.settings.server.max_json_depth)
        state.record_report(report.agent_id, report.hostname, now)
        state.order = message.seq  # the stream's order is the arrival order
        state.ingest.apply(Accepted(report, raw, message.payload, now, message.seq))

    async def _apply_clock(self, message: Stored) -> None:
        position = self.position
        position.clock = max(position.clock, message.stored_at)
        position.applied_seq = message.seq
        try:
            k = int(orjson.loads(message.payload)["k"])
        except (ValueError, KeyError, TypeError):
            return
        if k <= position.tick:
            return  # offered late by a replica whose clock lags: time has already passed it
        position.tick = k
        now = position.clock
        await self._sweep_if_due(now)
        await self.state.hub.tick_in_slices(now, remember=self.caught_up)  # no resume diffs of a replay
        position.seq = self.state.topology.seq
        self.published_through = message.seq
        slot = math.floor(now / self.settings.cluster.snapshot_interval)
        if position.snapshot_slot is None:
            position.snapshot_slot = slot
        elif slot > position.snapshot_slot:
            position.snapshot_slot = slot
            await self._snapshot()

    async def _sweep_if_due(self, now: float) -> None:
        position = self.position
        slot = math.floor(now / self.settings.storage.cleanup_interval)
        if position.sweep_slot is None:
            position.sweep_slot = slot  # the first tick: agents get a whole interval to show up
            return
        if slot <= position.sweep_slot:
            return
        position.sweep_slot = slot
        try:
            await sweep(self.state, now)
        except Exception as exc:
            log.error("cleanup_failed", error=repr(exc), exc_info=exc)

    # -- snapshots -----------------------------------------------------------------------------------

    async def _snapshot(self) -> None:
        """Gather the state here (the log waits), pack and save it in the background."""
        if self._save_task is not None and not self._save_task.done():
            log.warning("snapshot_skipped", reason="the previous one is still being saved")
            return
        position = replace(self.position)
        started = time.perf_counter()
        records = await gather(self.state)
        gathered = time.perf_counter() - started  # the log waited this long
        self._save_task = asyncio.get_running_loop().create_task(
            self._save(position, records, gathered), name="snapshot"
        )

    async def _save(self, position: Position, records: list[dict], gathered: float) -> None:
        started = time.perf_counter()
        try:
            data = await run_sliced(pack_steps(position, records))
            packed = time.perf_counter()
            if self.data_file is not None:
                await asyncio.to_thread(_write_atomically, self.data_file, data)
            written = time.perf_counter()
            uploaded = False
            if self.bus.available:
                stored = Position.parse(await self.bus.snapshot_description())
                if stored is None or stored.applied_seq < position.applied_seq:
                    await self.bus.put_snapshot(data, position.describe())
                    uploaded = True
            self.snapshots_taken += 1
            log.info(
                "snapshot_saved",
                applied_seq=position.applied_seq,
                bytes=len(data),
                uploaded=uploaded,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
                gather_ms=round(gathered * 1000, 1),  # before duration_ms, while the log waited
                pack_ms=round((packed - started) * 1000, 1),
                upload_ms=round((time.perf_counter() - written) * 1000, 1),
            )
        except Exception as exc:
            log.error("snapshot_failed", applied_seq=position.applied_seq, error=repr(exc))

    async def close(self) -> None:
        """Stop following and ticking (the state stays as applied), finish a snapshot being saved, disconnect."""
        self.closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._save_task is not None and not self._save_task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._save_task), 10)
            except Exception as exc:
                log.warning("snapshot_unfinished_at_shutdown", error=repr(exc))
        for _, _, future in self._waiters:
            if not future.done():
                future.set_result(_MISSING)
        await self.bus.close()


_APPLY = {
    "register": Replica._apply_register,
    "heartbeat": Replica._apply_heartbeat,
    "report": Replica._apply_report,
}


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
