"""Durable state: one SQLite file in WAL mode, written by incremental checkpoints.

Why SQLite: it is boring, embedded and transactional, it ships with Python, and it needs no service to
run next to the server. WAL mode lets a checkpoint's single transaction commit with one fsync
(``synchronous=FULL`` is affordable at one commit per checkpoint interval), and a torn write never
leaves a half-written state: a reopened file holds the last committed checkpoint.

What is stored (``<data_dir>/orchestrator.db``, schema version :data:`SCHEMA_VERSION`)::

    meta        key TEXT PRIMARY KEY, value TEXT           schema_version, order, seq, seq_reserved,
                                                           saved_at
    agents      agent_id PRIMARY KEY, record BLOB          orjson of Agent.to_state()
    latest      agent_id PRIMARY KEY, received_at REAL,    the newest report, zlib-compressed as held
                report BLOB                                in memory (LatestReport.compressed)
    topology    agent_id PRIMARY KEY, contribution BLOB    zlib(orjson of Topology.export_agent()),
                                                           compressed off the loop (55 KB -> 9 KB)
    timeseries  agent_id PRIMARY KEY, series BLOB          TimeSeriesStore.export_agent() blob
    archive     agent_id PRIMARY KEY, archived_at REAL,    an ArchivedAgent (orchestrator.state.archive):
                agent BLOB, series BLOB NULL,              registry entry (orjson), time-series blob,
                latest_received_at REAL NULL,              latest report
                latest_report BLOB NULL

Each table holds at most one row per agent, so a checkpoint of agent ``a`` is, per table, "upsert the
row if the state has it, delete it otherwise". That one rule covers new, changed, removed and archived
agents alike.

Checkpoints are incremental: only ``state.dirty_agents`` (swapped for an empty set) plus agents that
left the state without being marked dirty are written. Their data is gathered *on* the event loop (the
state's only owner), a few milliseconds at a time with ``await asyncio.sleep(0)`` in between, and
written *off* the loop (``asyncio.to_thread``) in bounded transactions of at most
:data:`CHUNK_BYTES` (and :data:`CHUNK_AGENTS` agents) each: on a disk that is nearly full, the chunks
that fit are saved. The agents of a failed chunk go back into the dirty set, so the next checkpoint
retries them.

The crash window. A checkpoint first waits until the ingest worker has applied every report accepted
before it started (its *durable point*), then gathers. Once it has committed, every report answered 202
before its durable point is on disk. Checkpoints are scheduled from the durable point of the last
*successful* one, start to start, and begin early by twice the longest of the last
:data:`RECENT_CHECKPOINTS` checkpoints' durations, so the next one has committed within
``storage.checkpoint_interval`` of the last durable point: a SIGKILL loses only reports younger than one
interval (while checkpoints take less than half of it). The longest, not the last: under load one
checkpoint's wall time varies threefold (84-303 ms in ten rounds), and a lead from a short one let a report
2.04 s old be lost at a 2 s interval.

When a checkpoint fails (disk full, read-only, I/O error, ``storage.max_file_size`` reached) the store
is *unavailable* until one succeeds: :attr:`Store.unavailable` says why, ``/health`` answers 503 with that
reason, and reports and registrations are refused with 503 + ``Retry-After`` (the server never answers
202 for what it cannot keep). A failing store is retried every :data:`FAILING_RETRY_SECONDS` at most.

``seq`` is never reused. Every transaction records ``seq_reserved`` in ``meta``: a number ahead of the
published ``seq`` by :func:`seq_headroom`. The engine never publishes past the reservation that is on
disk (``Topology.seq_ceiling``), and a restarted server numbers from the stored reservation on (after
reserving a new block before its first publication), so no client can have seen a ``seq`` the restarted
server will issue again: a client resuming with ``since=`` gets a fresh snapshot.

A file that is not a database, fails ``PRAGMA quick_check`` or carries an unknown schema version is
moved aside (``orchestrator.db.corrupt-<UTC timestamp>`` with its ``-wal``/``-shm``), logged with
``data_file_corrupt``, and the server starts empty: a bad file never becomes a crash loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import sqlite3
import time
import zlib
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeAlias, TypedDict, TypeVar

import orjson
import structlog

from orchestrator.contract.errors import ApiError
from orchestrator.contract.times import format_rfc3339
from orchestrator.runtime.slicing import TimeSlice, run_sliced, run_steps
from orchestrator.state.agents import Agent
from orchestrator.state.archive import ArchivedAgent
from orchestrator.state.latest import LatestReport
from orchestrator.topology import export

if TYPE_CHECKING:
    from orchestrator.settings import Settings
    from orchestrator.state import State

log = structlog.get_logger("orchestrator.state.persistence")

SCHEMA_VERSION = 1
FILENAME = "orchestrator.db"
_SQLITE_HEADER = b"SQLite format 3\x00"
_CORRUPT_ERRORS = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
# Longest stretch of on-loop gathering before the checkpoint yields to requests.
GATHER_BUDGET_SECONDS = 0.004
RECENT_CHECKPOINTS = 8  # checkpoints whose longest duration sets how early the next one starts
# One transaction holds at most this many bytes of rows (and agents): on a nearly full disk, what fits is saved.
CHUNK_BYTES = 4 * 1024 * 1024
CHUNK_AGENTS = 200
# A failing store is tried again this often at most (or every checkpoint interval, if shorter).
FAILING_RETRY_SECONDS = 5.0
# The reason code in state.not_ready (GET /readyz) while checkpoints fail.
NOT_READY_REASON = "storage_unavailable"
# Longest wait for the ingest worker to apply what was accepted before a checkpoint started.
INGEST_WAIT_SECONDS = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (agent_id TEXT PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS latest (agent_id TEXT PRIMARY KEY, received_at REAL NOT NULL, report BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS topology (agent_id TEXT PRIMARY KEY, contribution BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS timeseries (agent_id TEXT PRIMARY KEY, series BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS archive (
    agent_id TEXT PRIMARY KEY, archived_at REAL NOT NULL, agent BLOB NOT NULL,
    series BLOB, latest_received_at REAL, latest_report BLOB
);
"""
_AGENT_TABLES = ("agents", "latest", "topology", "timeseries", "archive")
_UPSERT = {
    "agents": "INSERT OR REPLACE INTO agents VALUES (?, ?)",
    "latest": "INSERT OR REPLACE INTO latest VALUES (?, ?, ?)",
    "topology": "INSERT OR REPLACE INTO topology VALUES (?, ?)",
    "timeseries": "INSERT OR REPLACE INTO timeseries VALUES (?, ?)",
    "archive": "INSERT OR REPLACE INTO archive VALUES (?, ?, ?, ?, ?, ?)",
}


# One row of each agent table, as written and as read back (a column SQLite may hold NULL is ``| None``).
AgentRow: TypeAlias = tuple[str, bytes]  # agent_id, orjson of Agent.to_state()
LatestRow: TypeAlias = tuple[str, float, bytes]  # agent_id, received_at, the compressed report
TopologyRow: TypeAlias = tuple[str, bytes]  # agent_id, orjson of the contribution (zlib-compressed on disk)
TimeseriesRow: TypeAlias = tuple[str, bytes]  # agent_id, TimeSeriesStore.export_agent() blob
# agent_id, archived_at, agent (orjson), series, latest_received_at, latest_report
ArchiveRow: TypeAlias = tuple[str, float, bytes, bytes | None, float | None, bytes | None]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Meta(TypedDict):
    """What a checkpoint writes to ``meta`` (besides ``saved_at``)."""

    order: int
    seq: int
    seq_reserved: int


class CorruptStore(Exception):
    """The data file cannot be trusted; the message says why."""


class StorageUnavailable(Exception):
    """The data dir cannot be opened or written; the message is the one line an operator sees."""


@dataclass(slots=True)
class AgentRows:
    """One agent's rows as gathered on the loop: ``None`` for a table means "delete its row"."""

    agent_id: str
    agents: AgentRow | None
    latest: LatestRow | None
    topology: TopologyRow | None
    timeseries: TimeseriesRow | None
    archive: ArchiveRow | None

    def is_empty(self) -> bool:
        return all(getattr(self, table) is None for table in _AGENT_TABLES)

    def size(self) -> int:
        """Bytes of blobs in these rows (the topology's before compression)."""
        return 64 + sum(
            len(value)
            for table in _AGENT_TABLES
            for value in (getattr(self, table) or ())
            if isinstance(value, (bytes, bytearray))
        )


@dataclass(slots=True)
class CheckpointResult:
    ok: bool
    written: int = 0  # agents with at least one row after the checkpoint
    deleted: int = 0  # agents whose every row was deleted
    seconds: float = 0.0
    longest_step: float = 0.0  # longest on-loop stretch of the checkpoint without a yield


class Store:
    """The SQLite file of one server. Owned by the event loop; the connection is used by one thread at a
    time (restore at start-up on the loop, then one checkpoint at a time in a worker thread)."""

    def __init__(self, path: Path, max_file_size: int = 0) -> None:
        self.path = Path(path)
        self.conn = _connect(self.path, max_file_size)
        self._lock = asyncio.Lock()
        # Agent ids with at least one row, known since restore(): an id that leaves the state without
        # being marked dirty is found by comparing with it, so its rows are deleted all the same.
        self._stored_ids: set[str] = set()
        self._saved_order: int | None = None  # the order of the last checkpoint written
        self.seq_reserved = 0  # the highest seq the file allows publishing (see the module docstring)
        self.checkpoints = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.unavailable: str | None = None  # why the last checkpoint failed; None once one succeeds
        self.last_checkpoint_at: float | None = None  # wall clock of the last successful checkpoint's end
        self.last_checkpoint_seconds: float | None = None
        self._recent_seconds: deque[float] = deque(maxlen=RECENT_CHECKPOINTS)  # durations, for the lead
        self.last_checkpoint_bytes = 0
        self.bytes_written = 0
        self.durable_at: float | None = None  # wall clock of the last successful durable point
        self._durable_loop_at: float | None = None  # the same, on the loop's clock (scheduling)

    # -- opening ----------------------------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: str | Path, max_file_size: int = 0) -> tuple[Store, str | None]:
        """Open (or create) ``<data_dir>/orchestrator.db``.

        :return: the store and ``None``, or a fresh empty store and the problem found with the old file,
            which was moved aside.
        """
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / FILENAME
        try:
            return cls(path, max_file_size), None
        except sqlite3.DatabaseError as exc:
            # Locked, busy, unreadable: not the file's fault. Setting it aside would lose good data.
            if getattr(exc, "sqlite_errorname", None) not in _CORRUPT_ERRORS:
                raise
            problem = str(exc) or type(exc).__name__
        except CorruptStore as exc:
            problem = str(exc)
        moved = _move_aside(path)
        log.error(
            "data_file_corrupt",
            path=str(path),
            problem=problem,
            moved_to=str(moved),
            action="starting with empty state",
        )
        return cls(path, max_file_size), problem

    # -- restore ----------------------------------------------------------------------------------------

    def restore(self, state: State) -> dict[str, int]:
        """Load everything stored into ``state`` (empty, before the server serves), reserve the next block
        of ``seq`` on disk, then publish the topology so queries see it at once. A row that cannot be
        decoded is logged and skipped.

        :return: how many rows of each table were restored, and how many were skipped.
        :raises sqlite3.Error: when the reservation cannot be written (the data dir is full or read-only).
        """
        counts = dict.fromkeys(_AGENT_TABLES, 0) | {"skipped": 0}
        timings: dict[str, float] = {}
        # Topology rows are decoded first and imported together: the engine imports an empty topology in
        # bulk and resolves every connection once (the import's resolution is counted in topology_ms).
        contributions: list[tuple[str, dict[str, Any]]] = []
        # A row comes out of SQLite untyped; each loader takes its table's row (AgentRow, LatestRow, ...).
        loaders: dict[str, Callable[[State, Any], None]] = {
            "agents": _restore_agent,
            "latest": _restore_latest,
            "topology": lambda _state, row: contributions.append((row[0], _decode_topology(row))),
            "timeseries": _restore_timeseries,
            "archive": _restore_archive,
        }

        def skip(table: str, agent_id: str, exc: Exception) -> None:
            counts["skipped"] += 1
            log.error("restore_row_skipped", table=table, agent_id=agent_id, error=repr(exc))

        def import_failed(agent_id: str, exc: Exception) -> None:
            counts["topology"] -= 1
            skip("topology", agent_id, exc)

        collecting = gc.isenabled()
        gc.disable()  # millions of small acyclic objects: collector passes would cost more than the restore
        try:
            for table, restore_row in loaders.items():
                started = time.perf_counter()
                for row in self.conn.execute(f"SELECT * FROM {table}"):
                    self._stored_ids.add(row[0])
                    try:
                        restore_row(state, row)
                    except Exception as exc:
                        skip(table, row[0], exc)
                    else:
                        counts[table] += 1
                if table == "topology":
                    state.topology.import_agents(contributions, on_error=import_failed)
                    contributions.clear()
                timings[f"{table}_ms"] = round((time.perf_counter() - started) * 1000, 1)
            meta: dict[str, str] = dict(self.conn.execute("SELECT key, value FROM meta"))
            state.order = max(state.order, int(meta.get("order", 0)))
            self._resume_seq(state, meta)
            started = time.perf_counter()
            state.topology.publish(time.time())
            timings["publish_ms"] = round((time.perf_counter() - started) * 1000, 1)
        finally:
            if collecting:
                gc.enable()
        log.info("state_restored", path=str(self.path), order=state.order, seq=state.topology.seq, **counts, **timings)
        return counts

    def _resume_seq(self, state: State, meta: dict[str, str]) -> None:
        """Number on from the stored reservation (no client can have seen a seq beyond it), after
        reserving the next block on disk (before the first publication)."""
        if "seq_reserved" in meta:
            resumed = int(meta["seq_reserved"])
        elif "seq" in meta:  # a file from before reservations: the old margin is the best there is
            resumed = int(meta["seq"]) + seq_margin(state.settings)
        else:
            resumed = 0
        state.topology.resume_seq(resumed)
        reserved = resumed + seq_headroom(state.settings)
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('seq_reserved', ?)", (str(reserved),))
        self._reserved(state, reserved)

    def _reserved(self, state: State, reserved: int) -> None:
        self.seq_reserved = max(self.seq_reserved, reserved)
        state.topology.seq_ceiling = self.seq_reserved

    # -- checkpoints ------------------------------------------------------------------------------------

    async def checkpoint(self, state: State, full: bool = False) -> CheckpointResult:
        """Write what changed since the last checkpoint (everything with ``full``) in bounded transactions.

        Never raises for a failed write: it is logged, counted in ``app_checkpoint_failures_total``, the
        store turns :attr:`unavailable` and the failed agents go back into ``state.dirty_agents``.
        Cancelling it while the write runs waits for the write to end (the thread cannot be stopped), so
        the connection is never used twice at once.
        """
        async with self._lock:
            start = time.perf_counter()
            durable_at, durable_loop_at = time.time(), asyncio.get_running_loop().time()
            await _applied_until_now(state)
            ids = self._take_ids(state, full)
            reserve = state.topology.seq + seq_headroom(state.settings)
            idle = not ids and state.order == self._saved_order and not self._reservation_low(state)
            if idle and self.unavailable is None:  # nothing happened: no transaction, no fsync
                self._durable(durable_at, durable_loop_at)
                return CheckpointResult(ok=True)
            try:
                rows, longest = await _gather(state, sorted(ids))
                order = state.order  # after gathering: never below an order any gathered data carries
                meta: Meta = {
                    "order": order,
                    "seq": state.topology.seq,
                    "seq_reserved": max(reserve, self.seq_reserved),
                }
                outcomes = await _finish_in_thread(self._write_chunks, chunked(rows), meta)
            except BaseException as exc:
                state.dirty_agents |= ids
                if not isinstance(exc, Exception):
                    raise  # cancelled: the ids are back, the caller's cancellation goes on
                return self._failed(state, ids, exc, start)
            failed = [(chunk, error) for chunk, error, _size in outcomes if error is not None]
            for chunk, _error in failed:
                state.dirty_agents.update(r.agent_id for r in chunk)
            saved = [(chunk, size) for chunk, error, size in outcomes if error is None]
            written = sum(self._remember(chunk) for chunk, _size in saved)
            if saved:
                self._saved_order = order
                self._reserved(state, meta["seq_reserved"])
                self.bytes_written += sum(size for _chunk, size in saved)
            if failed:
                agents = sum(len(chunk) for chunk, _error in failed)
                return self._failed(state, agents, failed[0][1], start, saved=written)
            seconds = time.perf_counter() - start
            self._succeeded(state, seconds, sum(size for _chunk, size in saved))
            self._durable(durable_at, durable_loop_at)
            result = CheckpointResult(True, written, len(rows) - written, seconds, longest)
            if rows:
                log.debug(
                    "checkpoint",
                    agents=len(rows),
                    written=written,
                    deleted=result.deleted,
                    transactions=len(outcomes),
                    duration_ms=round(seconds * 1000, 1),
                    longest_step_ms=round(longest * 1000, 2),
                )
            return result

    def _reservation_low(self, state: State) -> bool:
        return self.seq_reserved - state.topology.seq < seq_headroom(state.settings) // 2

    def _durable(self, wall: float, loop_time: float) -> None:
        self.durable_at, self._durable_loop_at = wall, loop_time

    def _succeeded(self, state: State, seconds: float, size: int) -> None:
        if self.unavailable is not None:
            log.info("storage_available", path=str(self.path), failed_checkpoints=self.consecutive_failures)
        self.unavailable = None
        state.not_ready.pop(NOT_READY_REASON, None)
        self.consecutive_failures = 0
        self.checkpoints += 1
        self.last_checkpoint_at, self.last_checkpoint_seconds = time.time(), seconds
        self._recent_seconds.append(seconds)
        self.last_checkpoint_bytes = size
        state.metrics.checkpoint_seconds.observe(seconds)
        state.metrics.storage_available.set(1)

    def _failed(
        self, state: State, agents: set[str] | int, exc: BaseException, start: float, saved: int = 0
    ) -> CheckpointResult:
        count = agents if isinstance(agents, int) else len(agents)
        self.failures += 1
        self.consecutive_failures += 1
        first = self.unavailable is None
        self.unavailable = f"checkpoint failed: {_describe(exc)}"
        state.not_ready[NOT_READY_REASON] = f"the data dir cannot be written ({self.unavailable})"
        state.metrics.checkpoint_failures.inc()
        state.metrics.storage_available.set(0)
        # The first failure with its traceback; the retries of a full disk in one line each.
        log.error(
            "checkpoint_failed",
            agents=count,
            saved_agents=saved,
            error=repr(exc),
            consecutive_failures=self.consecutive_failures,
            **({"exc_info": exc} if first else {}),
        )
        return CheckpointResult(ok=False, written=saved, seconds=time.perf_counter() - start)

    async def run(self, state: State) -> None:
        """Checkpoint until cancelled, start to start: see :meth:`next_delay`."""
        loop = asyncio.get_running_loop()
        if self._durable_loop_at is None:
            self._durable(time.time(), loop.time())  # restored at start-up: on disk as of now
        while True:
            await asyncio.sleep(self.next_delay(state.settings.storage.checkpoint_interval, loop.time()))
            await self.checkpoint(state)

    def next_delay(self, interval: float, now: float) -> float:
        """Seconds until the next checkpoint starts: one interval after the last durable point, less twice
        the longest recent checkpoint's duration (so it has committed by then) but never more than half an
        interval early; a failing store is retried sooner.

        The cap: a checkpoint that took half an interval or more (under saturation its wait for the ingest
        backlog alone can take 5 s) cannot keep the one-interval window anyway, and with a whole interval
        of lead the next ones started at once, back to back: idle ones return without a yield, so the loop
        spun on them and served everything else at half speed for seconds after a burst."""
        if self.unavailable is not None:
            return min(interval, FAILING_RETRY_SECONDS)
        lead = min(interval / 2, 2 * max(self._recent_seconds, default=0.0))
        return max(0.0, (self._durable_loop_at or now) + interval - lead - now)

    def close(self) -> None:
        """Fold the WAL into the main file and close. Call after the last checkpoint has returned."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("wal_checkpoint_failed", error=repr(exc))
        self.conn.close()

    def stats(self) -> dict[str, Any]:
        """The ``storage.checkpoint`` part of the stats endpoint."""
        size = sum(p.stat().st_size for p in _files(self.path) if p.exists())
        return {
            "backend": "sqlite",
            "path": str(self.path),
            "size_bytes": size,
            "stored_agents": len(self._stored_ids),
            "available": self.unavailable is None,
            "unavailable_reason": self.unavailable,
            "checkpoints": self.checkpoints,
            "checkpoint_failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_checkpoint_at": _rfc3339_or_none(self.last_checkpoint_at),
            "last_checkpoint_ms": (
                round(self.last_checkpoint_seconds * 1000, 1) if self.last_checkpoint_seconds is not None else None
            ),
            "last_checkpoint_bytes": self.last_checkpoint_bytes,
            "bytes_written": self.bytes_written,
            "durable_until": _rfc3339_or_none(self.durable_at),
            "seq_reserved": self.seq_reserved,
        }

    # -- internals --------------------------------------------------------------------------------------

    def _take_ids(self, state: State, full: bool) -> set[str]:
        dirty, state.dirty_agents = state.dirty_agents, set()
        live = _live_ids(state)
        ids = dirty | (self._stored_ids - live)
        return ids | live if full else ids

    def _remember(self, rows: list[AgentRows]) -> int:
        written = 0
        for agent_rows in rows:
            if agent_rows.is_empty():
                self._stored_ids.discard(agent_rows.agent_id)
            else:
                self._stored_ids.add(agent_rows.agent_id)
                written += 1
        return written

    def _write_chunks(
        self, chunks: list[list[AgentRows]], meta: Meta
    ) -> list[tuple[list[AgentRows], sqlite3.Error | None, int]]:
        """Each chunk in its own transaction, the meta rows in each (runs in a worker thread): a chunk
        that does not fit fails alone. No rows at all still writes the meta rows (the reservation).

        :return: ``(chunk, error or None, bytes)`` per chunk.
        """
        outcomes: list[tuple[list[AgentRows], sqlite3.Error | None, int]] = []
        for chunk in chunks or [[]]:
            try:
                outcomes.append((chunk, None, self._write_chunk(chunk, meta)))
            except sqlite3.Error as exc:
                outcomes.append((chunk, exc, 0))
        return outcomes

    def _write_chunk(self, rows: list[AgentRows], meta: Meta) -> int:
        """One transaction; returns the bytes of blobs written."""
        size = 0
        with self.conn:
            for table in _AGENT_TABLES:
                upserts = [getattr(r, table) for r in rows if getattr(r, table) is not None]
                if table == "topology":
                    upserts = [(agent_id, zlib.compress(contribution, 1)) for agent_id, contribution in upserts]
                size += sum(len(v) for row in upserts for v in row if isinstance(v, (bytes, bytearray)))
                deletes = [(r.agent_id,) for r in rows if getattr(r, table) is None]
                if upserts:
                    self.conn.executemany(_UPSERT[table], upserts)
                if deletes:
                    self.conn.executemany(f"DELETE FROM {table} WHERE agent_id = ?", deletes)
            self.conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [*((key, str(value)) for key, value in meta.items()), ("saved_at", repr(time.time()))],
            )
        return size


def refuse_while_unavailable(state: State) -> None:
    """Refuse (503 + ``Retry-After``) a report or registration the data dir could not keep: called before
    the request is decoded, so a refusal costs next to nothing.

    :raises ApiError: while the last checkpoint failed.
    """
    store = state.store
    if store is None or store.unavailable is None:
        return
    state.metrics.storage_refused.inc()
    retry = max(1, round(state.settings.server.retry_after))
    raise ApiError(
        503,
        f"the server cannot store data right now ({store.unavailable}); retry later",
        code="storage_unavailable",
        headers={"Retry-After": str(retry)},
    )


def chunked(rows: list[AgentRows]) -> list[list[AgentRows]]:
    """``rows`` in runs of at most :data:`CHUNK_BYTES` (an agent bigger than that alone) and :data:`CHUNK_AGENTS`."""
    chunks: list[list[AgentRows]] = []
    size = 0
    for agent_rows in rows:
        rows_size = agent_rows.size()
        if not chunks or size + rows_size > CHUNK_BYTES or len(chunks[-1]) >= CHUNK_AGENTS:
            chunks.append([])
            size = 0
        chunks[-1].append(agent_rows)
        size += rows_size
    return chunks


def seq_headroom(settings: Settings) -> int:
    """How far ahead of the published ``seq`` each checkpoint reserves: publications of eight checkpoint
    intervals (one per broadcast tick at most), so failing checkpoints hold publications back only after
    eight intervals of failures, not at once."""
    interval: float = settings.storage.checkpoint_interval
    tick: float = settings.websocket.broadcast_interval
    return math.ceil(8 * interval / tick) + 64


def seq_margin(settings: Settings) -> int:
    """For a file written before reservations existed: how far past its stored ``seq`` a restarted server
    numbers (the publications of one checkpoint interval after it, one per broadcast tick at most)."""
    interval: float = settings.storage.checkpoint_interval
    tick: float = settings.websocket.broadcast_interval
    return math.ceil(interval / tick) + 1


async def _applied_until_now(state: State) -> None:
    """Wait until the ingest worker has applied every report accepted so far (bounded): what a checkpoint
    started now gathers then holds every report answered 202 before now."""
    ingest = state.ingest
    target = state.order
    deadline = time.monotonic() + INGEST_WAIT_SECONDS
    while ingest.backlog and ingest.applied_order < target:
        if time.monotonic() > deadline:
            log.warning("checkpoint_ingest_behind", backlog=ingest.backlog, waited_s=INGEST_WAIT_SECONDS)
            return
        await asyncio.sleep(0.005)


def _describe(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc) or type(exc).__name__


def _rfc3339_or_none(at: float | None) -> str | None:
    return format_rfc3339(at) if at is not None else None


# -- gathering (on the loop) ------------------------------------------------------------------------------


async def _gather(state: State, ids: list[str]) -> tuple[list[AgentRows], float]:
    """Each agent's rows, serialised on the loop (the state may not be read from another thread),
    yielding whenever a stretch exceeds the budget. Returns the rows and the longest stretch. An agent
    whose rows fail is left out (and stays dirty); everyone else is still written.

    The topology lock is held from an agent's first step to its last: the ingest worker merges a large
    report in several steps under it, and an agent's contributions are never read half-merged. An agent
    at the report limits takes ~0.4 s to export: its steps hand the loop to requests (not the lock) between
    slices. Between agents, the lock is let go whenever a stretch is used up."""
    rows: list[AgentRows] = []
    stretch = TimeSlice(GATHER_BUDGET_SECONDS)
    pending = iter(ids)
    more = True
    while more:
        async with state.topology_lock:
            stretch.restart()
            for agent_id in pending:
                try:
                    rows.append(await run_sliced(agent_rows_steps(state, agent_id), stretch=stretch))
                except Exception as exc:
                    # It stays dirty: tried again next time (its next report may fix it), logged and counted.
                    state.dirty_agents.add(agent_id)
                    state.metrics.checkpoint_failures.inc()
                    log.error("checkpoint_agent_failed", agent_id=agent_id, error=repr(exc))
                if stretch.due():
                    break
            else:
                more = False
        if more:
            await stretch.pause()
    stretch.restart()
    return rows, stretch.longest


def agent_rows(state: State, agent_id: str) -> AgentRows:
    """An agent's rows in one go (a cluster snapshot)."""
    return run_steps(agent_rows_steps(state, agent_id))


def agent_rows_steps(state: State, agent_id: str) -> Generator[None, None, AgentRows]:
    """An agent's rows as a generator of steps: its topology contribution is exported and encoded a few
    hundred items at a time (``Topology.export_agent_steps``, ``topology.export.json_steps``: the bytes of
    ``orjson.dumps`` of the export), the rest (small) in the last step. The state must stay still until
    it ends (``_gather`` holds the topology lock)."""
    contribution = yield from state.topology.export_agent_steps(agent_id)
    encoded = (yield from export.json_steps(contribution)) if contribution is not None else None
    return rows_with(state, agent_id, encoded)


def rows_with(state: State, agent_id: str, encoded: bytes | None) -> AgentRows:
    """The agent's rows, with ``encoded`` (its export's JSON, or None) as its topology row: all but that
    one are small, and read in one go."""
    agent = state.registry.get(agent_id)
    latest = state.latest.get(agent_id)
    series = state.timeseries.export_agent(agent_id) if state.timeseries.has_agent(agent_id) else None
    archived = state.archive.get(agent_id)
    return AgentRows(
        agent_id,
        agents=(agent_id, orjson.dumps(agent.to_state())) if agent is not None else None,
        latest=(agent_id, latest.received_at, latest.compressed) if latest is not None else None,
        topology=(agent_id, encoded) if encoded is not None else None,
        timeseries=(agent_id, series) if series is not None else None,
        archive=_archive_row(agent_id, archived) if archived is not None else None,
    )


def _archive_row(agent_id: str, archived: ArchivedAgent) -> ArchiveRow:
    latest = archived.latest
    return (
        agent_id,
        archived.archived_at,
        orjson.dumps(archived.agent.to_state()),
        archived.timeseries,
        latest.received_at if latest is not None else None,
        latest.compressed if latest is not None else None,
    )


def _live_ids(state: State) -> set[str]:
    ids = {agent.agent_id for agent in state.registry.all()}
    ids.update(state.latest, state.archive, state.topology.agents(), state.timeseries.get_all_agents())
    return ids


async def _finish_in_thread(func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run ``func`` in a worker thread; if cancelled meanwhile, wait for the thread to end before the
    cancellation goes on, so the connection is free when the caller's next step (the shutdown
    checkpoint) starts."""
    future = asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        if future.exception() is not None:  # its agents are put back by the caller all the same
            log.error("checkpoint_failed", error=repr(future.exception()), cancelled=True)
        raise


# -- restoring rows ---------------------------------------------------------------------------------------


def _restore_agent(state: State, row: AgentRow) -> None:
    state.registry.restore(Agent(**orjson.loads(row[1])))


def _restore_latest(state: State, row: LatestRow) -> None:
    state.latest[row[0]] = LatestReport(float(row[1]), bytes(row[2]))


def _decode_topology(row: TopologyRow) -> dict[str, Any]:
    data = orjson.loads(zlib.decompress(row[1]))
    if not isinstance(data, dict) or not isinstance(data.get("sections"), list):
        raise ValueError("not an exported contribution")
    return data


def _restore_timeseries(state: State, row: TimeseriesRow) -> None:
    state.timeseries.import_agent(row[0], bytes(row[1]))


def _restore_archive(state: State, row: ArchiveRow) -> None:
    agent_id, archived_at, agent, series, latest_received_at, latest_report = row
    latest = None
    if latest_report is not None:
        if latest_received_at is None:  # never written so: the row is skipped, as any undecodable one
            raise ValueError("archive row has a latest report without its received_at")
        latest = LatestReport(float(latest_received_at), bytes(latest_report))
    state.archive[agent_id] = ArchivedAgent(
        Agent(**orjson.loads(agent)), float(archived_at), bytes(series) if series is not None else None, latest
    )


# -- the file ---------------------------------------------------------------------------------------------


def _connect(path: Path, max_file_size: int = 0) -> sqlite3.Connection:
    """Open, check and (for a new file) initialise the database. :raises CorruptStore:"""
    _check_header(path)
    # The default isolation level opens a transaction at the first write; "with conn:" commits it.
    conn = sqlite3.connect(path, check_same_thread=False)
    try:
        if max_file_size:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(1, max_file_size // page_size)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA journal_size_limit=67108864")  # don't let one big checkpoint's WAL linger
        checked = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if checked != ["ok"]:
            raise CorruptStore(f"PRAGMA quick_check failed: {'; '.join(checked[:3])}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            with conn:
                _init_schema(conn)
        _check_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_header(path: Path) -> None:
    # Checked before SQLite opens the file: SQLite would discard a -wal it cannot read, and the
    # operator should get every file back as it was.
    try:
        with open(path, "rb") as f:
            header = f.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    if header and header != _SQLITE_HEADER:
        raise CorruptStore("file is not a database (bad header)")


def _init_schema(conn: sqlite3.Connection) -> None:
    for statement in filter(str.strip, _SCHEMA.split(";")):
        conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


def _check_schema(conn: sqlite3.Connection) -> None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:
        row = None
    version = row[0] if row else None
    if version != str(SCHEMA_VERSION):
        raise CorruptStore(f"unknown schema version {version!r} (this server reads {SCHEMA_VERSION})")
    missing = set(_AGENT_TABLES) - {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    if missing:
        raise CorruptStore(f"tables missing: {', '.join(sorted(missing))}")


def _files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def _move_aside(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for source, suffix in zip(_files(path), ("", "-wal", "-shm")):
        if source.exists():
            source.replace(target.with_name(target.name + suffix))
    return target
