"""Durable state: one SQLite file in WAL mode, written by incremental checkpoints.

Why SQLite: it is boring, embedded and transactional, it ships with Python, and it needs no service to
run next to the server. WAL mode lets a checkpoint's single transaction commit with one fsync
(``synchronous=FULL`` is affordable at one commit per checkpoint interval), and a torn write never
leaves a half-written state: a reopened file holds the last committed checkpoint.

What is stored (``<data_dir>/orchestrator.db``, schema version :data:`SCHEMA_VERSION`)::

    meta        key TEXT PRIMARY KEY, value TEXT           schema_version, order, saved_at
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
written *off* the loop (``asyncio.to_thread``) in one transaction. A failed checkpoint puts the agents
back into the dirty set, so the next one retries them.

A file that is not a database, fails ``PRAGMA quick_check`` or carries an unknown schema version is
moved aside (``orchestrator.db.corrupt-<UTC timestamp>`` with its ``-wal``/``-shm``), logged with
``data_file_corrupt``, and the server starts empty: a bad file never becomes a crash loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import structlog

from orchestrator.runtime.slicing import TimeSlice
from orchestrator.state.agents import Agent
from orchestrator.state.archive import ArchivedAgent
from orchestrator.state.latest import LatestReport

log = structlog.get_logger("orchestrator.state.persistence")

SCHEMA_VERSION = 1
FILENAME = "orchestrator.db"
_SQLITE_HEADER = b"SQLite format 3\x00"
_CORRUPT_ERRORS = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
# Longest stretch of on-loop gathering before the checkpoint yields to requests.
GATHER_BUDGET_SECONDS = 0.004

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


class CorruptStore(Exception):
    """The data file cannot be trusted; the message says why."""


@dataclass(slots=True)
class AgentRows:
    """One agent's rows as gathered on the loop: ``None`` for a table means "delete its row"."""

    agent_id: str
    agents: tuple | None
    latest: tuple | None
    topology: tuple | None
    timeseries: tuple | None
    archive: tuple | None

    def is_empty(self) -> bool:
        return all(getattr(self, table) is None for table in _AGENT_TABLES)


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

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.conn = _connect(self.path)
        self._lock = asyncio.Lock()
        # Agent ids with at least one row, known since restore(): an id that leaves the state without
        # being marked dirty is found by comparing with it, so its rows are deleted all the same.
        self._stored_ids: set[str] = set()
        self._saved_order: int | None = None  # the order of the last checkpoint written

    # -- opening ----------------------------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: str | Path) -> tuple[Store, str | None]:
        """Open (or create) ``<data_dir>/orchestrator.db``.

        :return: the store and ``None``, or a fresh empty store and the problem found with the old file,
            which was moved aside.
        """
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / FILENAME
        try:
            return cls(path), None
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
        return cls(path), problem

    # -- restore ----------------------------------------------------------------------------------------

    def restore(self, state) -> dict[str, int]:
        """Load everything stored into ``state`` (empty, before the server serves), then publish the
        topology so queries see it at once. A row that cannot be decoded is logged and skipped.

        :return: how many rows of each table were restored, and how many were skipped.
        """
        counts = dict.fromkeys(_AGENT_TABLES, 0) | {"skipped": 0}
        timings: dict[str, float] = {}
        loaders = {
            "agents": _restore_agent,
            "latest": _restore_latest,
            "topology": _restore_topology,
            "timeseries": _restore_timeseries,
            "archive": _restore_archive,
        }
        for table, restore_row in loaders.items():
            started = time.perf_counter()
            for row in self.conn.execute(f"SELECT * FROM {table}"):
                self._stored_ids.add(row[0])
                try:
                    restore_row(state, row)
                except Exception as exc:
                    counts["skipped"] += 1
                    log.error("restore_row_skipped", table=table, agent_id=row[0], error=repr(exc))
                else:
                    counts[table] += 1
            timings[f"{table}_ms"] = round((time.perf_counter() - started) * 1000, 1)
        meta = dict(self.conn.execute("SELECT key, value FROM meta"))
        state.order = max(state.order, int(meta.get("order", 0)))
        if "seq" in meta:
            state.topology.resume_seq(int(meta["seq"]) + seq_margin(state.settings))
        started = time.perf_counter()
        state.topology.publish(time.time())
        timings["publish_ms"] = round((time.perf_counter() - started) * 1000, 1)
        log.info("state_restored", path=str(self.path), order=state.order, **counts, **timings)
        return counts

    # -- checkpoints ------------------------------------------------------------------------------------

    async def checkpoint(self, state, full: bool = False) -> CheckpointResult:
        """Write what changed since the last checkpoint (everything with ``full``) in one transaction.

        Never raises for a failed write: it is logged, counted in ``app_checkpoint_failures_total`` and
        its agents go back into ``state.dirty_agents``. Cancelling it while the write runs waits for the
        write to end (the thread cannot be stopped), so the connection is never used twice at once.
        """
        async with self._lock:
            start = time.perf_counter()
            ids = self._take_ids(state, full)
            if not ids and state.order == self._saved_order:
                return CheckpointResult(ok=True)  # nothing happened: no transaction, no fsync
            try:
                rows, longest = await _gather(state, sorted(ids))
                order = state.order  # after gathering: never below an order any gathered data carries
                await _finish_in_thread(self._write, rows, order, state.topology.seq)
            except BaseException as exc:
                state.dirty_agents |= ids
                if not isinstance(exc, Exception):
                    raise  # cancelled: the ids are back, the caller's cancellation goes on
                state.metrics.checkpoint_failures.inc()
                log.error("checkpoint_failed", agents=len(ids), error=repr(exc), exc_info=exc)
                return CheckpointResult(ok=False, seconds=time.perf_counter() - start)
            seconds = time.perf_counter() - start
            written = self._remember(rows)
            self._saved_order = order
            state.metrics.checkpoint_seconds.observe(seconds)
            result = CheckpointResult(True, written, len(rows) - written, seconds, longest)
            if rows:
                log.debug(
                    "checkpoint",
                    agents=len(rows),
                    written=written,
                    deleted=result.deleted,
                    duration_ms=round(seconds * 1000, 1),
                    longest_step_ms=round(longest * 1000, 2),
                )
            return result

    async def run(self, state) -> None:
        """Checkpoint every ``storage.checkpoint_interval`` until cancelled."""
        interval = state.settings.storage.checkpoint_interval
        while True:
            await asyncio.sleep(interval)
            await self.checkpoint(state)

    def close(self) -> None:
        """Fold the WAL into the main file and close. Call after the last checkpoint has returned."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("wal_checkpoint_failed", error=repr(exc))
        self.conn.close()

    # -- internals --------------------------------------------------------------------------------------

    def _take_ids(self, state, full: bool) -> set[str]:
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

    def _write(self, rows: list[AgentRows], order: int, seq: int) -> None:
        """One transaction (runs in a worker thread)."""
        with self.conn:
            for table in _AGENT_TABLES:
                upserts = [getattr(r, table) for r in rows if getattr(r, table) is not None]
                if table == "topology":
                    upserts = [(agent_id, zlib.compress(contribution, 1)) for agent_id, contribution in upserts]
                deletes = [(r.agent_id,) for r in rows if getattr(r, table) is None]
                if upserts:
                    self.conn.executemany(_UPSERT[table], upserts)
                if deletes:
                    self.conn.executemany(f"DELETE FROM {table} WHERE agent_id = ?", deletes)
            self.conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("order", str(order)), ("seq", str(seq)), ("saved_at", repr(time.time()))],
            )


def seq_margin(settings) -> int:
    """How far past the stored ``seq`` a restarted server numbers: after a crash, clients may have seen
    the publications of up to one checkpoint interval after it (one per broadcast tick at most), and a
    resumed ``since`` must not match a number that now means something else. A WebSocket client resuming
    across a restart therefore always gets a fresh snapshot."""
    return math.ceil(settings.storage.checkpoint_interval / settings.websocket.broadcast_interval) + 1


# -- gathering (on the loop) ------------------------------------------------------------------------------


async def _gather(state, ids: list[str]) -> tuple[list[AgentRows], float]:
    """Each agent's rows, serialised on the loop (the state may not be read from another thread),
    yielding whenever a stretch exceeds the budget. Returns the rows and the longest stretch. An agent
    whose rows fail is left out (and stays dirty); everyone else is still written."""
    rows: list[AgentRows] = []
    stretch = TimeSlice(GATHER_BUDGET_SECONDS)
    for agent_id in ids:
        try:
            rows.append(agent_rows(state, agent_id))
        except Exception as exc:
            # It stays dirty: tried again next time (its next report may fix it), logged and counted each time.
            state.dirty_agents.add(agent_id)
            state.metrics.checkpoint_failures.inc()
            log.error("checkpoint_agent_failed", agent_id=agent_id, error=repr(exc))
        if stretch.due():
            await stretch.pause()
    stretch.restart()
    return rows, stretch.longest


def agent_rows(state, agent_id: str) -> AgentRows:
    agent = state.registry.get(agent_id)
    latest = state.latest.get(agent_id)
    contribution = state.topology.export_agent(agent_id)
    series = state.timeseries.export_agent(agent_id) if state.timeseries.has_agent(agent_id) else None
    archived = state.archive.get(agent_id)
    return AgentRows(
        agent_id,
        agents=(agent_id, orjson.dumps(agent.to_state())) if agent is not None else None,
        latest=(agent_id, latest.received_at, latest.compressed) if latest is not None else None,
        topology=(agent_id, orjson.dumps(contribution)) if contribution is not None else None,
        timeseries=(agent_id, series) if series is not None else None,
        archive=_archive_row(agent_id, archived) if archived is not None else None,
    )


def _archive_row(agent_id: str, archived: ArchivedAgent) -> tuple:
    latest = archived.latest
    return (
        agent_id,
        archived.archived_at,
        orjson.dumps(archived.agent.to_state()),
        archived.timeseries,
        latest.received_at if latest is not None else None,
        latest.compressed if latest is not None else None,
    )


def _live_ids(state) -> set[str]:
    ids = {agent.agent_id for agent in state.registry.all()}
    ids.update(state.latest, state.archive, state.topology.agents(), state.timeseries.get_all_agents())
    return ids


async def _finish_in_thread(func, *args) -> None:
    """Run ``func`` in a worker thread; if cancelled meanwhile, wait for the thread to end before the
    cancellation goes on, so the connection is free when the caller's next step (the shutdown
    checkpoint) starts."""
    future = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        if future.exception() is not None:  # its agents are put back by the caller all the same
            log.error("checkpoint_failed", error=repr(future.exception()), cancelled=True)
        raise


# -- restoring rows ---------------------------------------------------------------------------------------


def _restore_agent(state, row) -> None:
    state.registry.restore(Agent(**orjson.loads(row[1])))


def _restore_latest(state, row) -> None:
    state.latest[row[0]] = LatestReport(float(row[1]), bytes(row[2]))


def _restore_topology(state, row) -> None:
    state.topology.import_agent(row[0], orjson.loads(zlib.decompress(row[1])))


def _restore_timeseries(state, row) -> None:
    state.timeseries.import_agent(row[0], bytes(row[1]))


def _restore_archive(state, row) -> None:
    agent_id, archived_at, agent, series, latest_received_at, latest_report = row
    state.archive[agent_id] = ArchivedAgent(
        Agent(**orjson.loads(agent)),
        float(archived_at),
        bytes(series) if series is not None else None,
        LatestReport(float(latest_received_at), bytes(latest_report)) if latest_report is not None else None,
    )


# -- the file ---------------------------------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    """Open, check and (for a new file) initialise the database. :raises CorruptStore:"""
    _check_header(path)
    # The default isolation level opens a transaction at the first write; "with conn:" commits it.
    conn = sqlite3.connect(path, check_same_thread=False)
    try:
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
