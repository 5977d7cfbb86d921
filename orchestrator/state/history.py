"""Topology history: every published version kept for ``history.retention``, answering "as of T" questions.

Most of what changes between two publications is metrics, ``last_seen``, ``agent_ids`` and an edge's
``connections`` count; the time series keep the metrics already. So history keeps *structure*:

- an **entry** per publication: its ``seq`` and timestamp, plus the nodes and edges whose identity or
  structure changed (appeared, vanished, or changed a structural field: a node's ``type``, ``name``,
  ``parent``, ``host``, ``metadata`` but for an interface's byte counters; an edge's ``source``, ``target``,
  ``protocol``, ``ports``), each with its
  whole body as published then (``None``: gone). A publication that changed only metrics adds its seq and
  timestamp and nothing else. Recording one is a pass over the publication's own changes: proportional to
  the change, not to the topology.
- a **keyframe** every so often: the whole topology at one publication. One is taken at the first
  publication this history sees after opening (a *reset*: a restart's restored topology is not a diff of
  what history held before), when ``history.keyframe_interval`` has passed since the last one, and when the
  structural changes since the last one reach the size of the topology then (so a keyframe's O(topology)
  cost is spread over at least as many changes, and a replay never reads more than about two topologies).

Two views are kept this way: ``process`` (everything) and ``host`` (the host level, rolled up as the live
view does; it changes rarely, which makes the host view as of T cheap). A keyframe of ``process`` is one of
every level; ``host`` also takes one of its own when its own changes reach its size (so its replays stay
short while the process level's keyframes are far apart). ``container`` is rolled up from
``process`` when asked. The topology at T is the level's newest keyframe at or before T, with the entries
after it up to T applied. In a node or edge at T, the structural fields are exact; ``metrics``,
``first_seen``, ``last_seen``, ``agent_ids``, interface byte counters and ``connections`` are as of the newer of the last keyframe and the node's last
structural change before T.

Every timestamp comes from the publications (their ``seq`` and ``timestamp``, forced non-decreasing), and
every decision (keyframes, pruning) is a function of them: servers fed the same publications hold the
same history. Nothing here reads the wall clock.

Storage: ``<data_dir>/history.sqlite`` (its own SQLite file in WAL mode, apart from the state's file, so
neither one's writes or schema wait on the other's), written by :meth:`History.flush` every
``storage.checkpoint_interval`` in a worker thread: a crash loses at most one interval, as for the rest of
the state. Keyframes are stored in parts of :data:`PART_ITEMS` items, serialized and compressed part by
part in the history's encoder thread as soon as they are taken (the GIL is released between parts and while
compressing; the bodies are let go once encoded, not kept until the flush), so the event loop is never held
by a keyframe for more than the few milliseconds a part takes; on the loop, a keyframe costs two dict copies
of the published views, made in steps of the publish. Queries run in worker threads on their own read-only
connections, with a copy of the entries not yet flushed; decoded keyframes and change blocks are shared
between queries (:class:`Decoded`). ::

    meta          key TEXT PRIMARY KEY, value TEXT      schema_version (2: keyframes per level)
    publications  seq INTEGER PRIMARY KEY, ts REAL, stamp TEXT
    keyframes     seq, level, part, reset, body         zlib(orjson {"nodes": {...}, "edges": {...}})
    changes       level, first_seq, last_seq, body      zlib(orjson [[seq, stamp, {node id: body|null},
                                                        {edge id: body|null}], ...]): one block per level
                                                        per flush, entries with changes only

Pruning (:meth:`History.prune`, run by the cleanup sweep): everything before the newest keyframe at or
before ``latest publication - retention`` is deleted, so history reaches back at least ``retention`` and at
most ``retention`` plus one keyframe interval.
"""

from __future__ import annotations

import asyncio
import bisect
import shutil
import sqlite3
import tempfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypedDict

import orjson
import structlog

from orchestrator.contract.times import parse_rfc3339
from orchestrator.runtime.collector import paused as paused_gc
from orchestrator.runtime.slicing import run_steps
from orchestrator.topology.views import Published, view_name

if TYPE_CHECKING:
    from orchestrator.settings import Settings
    from orchestrator.state import State
    from orchestrator.topology import Topology
    from orchestrator.topology.views import Publication

log = structlog.get_logger("orchestrator.state.history")

FILENAME = "history.sqlite"
SCHEMA_VERSION = "2"
# Version 2 lets the host level keep keyframes of its own between the whole ones: a version 1 file (every
# keyframe of every level) is a valid version 2 file, so migrating it is naming it so. A version 1 server
# would misread a version 2 file (it looks keyframes up without a level), so the version changes.
MIGRATIONS = {"1": ()}
KEPT_LEVELS = ("process", "host")
RECORD_STEP = 2_048  # changes compared between two yields of a stepped record (~3 ms)
NODE_FIELDS = ("type", "name", "parent", "host", "metadata")
EDGE_FIELDS = ("source", "target", "protocol", "ports")
COUNTERS = frozenset({"rx_bytes", "tx_bytes"})  # an interface's counters in a host's metadata: metrics
PART_ITEMS = 2000  # nodes or edges per keyframe part: ~1 MB of JSON, a few ms to encode or decode
EDGES_PART, EDGES_PART_END, NODES_PART = b'{"edges":{', b'},"nodes":{}}', b'{"edges":{},"nodes":{'
ENCODE_ITEMS = 1000  # nodes or edges an answer encodes in one orjson call (about a millisecond, holding the GIL)
MIN_KEYFRAME_CHANGES = 1000
# A level takes a keyframe when its structural changes since the last one reach this share of its size then:
# a replay reads at most a quarter of a topology's worth of entries after its keyframe. (At the whole size,
# a replay at 100 hosts read ~40,000 entries in ~150 blocks, 150-300 ms cold; a quarter costs ~1.3 MB more
# disk an hour there, and a keyframe's CPU spread over 7,000 changes instead of 28,000.)
KEYFRAME_SHARE = 0.25
# Nodes and edges of decoded keyframes and change blocks kept for the next queries, per level (a decoded item
# takes ~1.2 KB: at most ~75 MB per level; at 100 hosts the process level holds one keyframe and its blocks,
# the host level, ~18,000 items with its edges to externals, about three keyframes).
DECODED_ITEMS = {"process": 60_000, "host": 60_000}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS publications (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, stamp TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS publications_ts ON publications (ts);
CREATE TABLE IF NOT EXISTS keyframes (
    seq INTEGER NOT NULL, level TEXT NOT NULL, part INTEGER NOT NULL, reset INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (seq, level, part)
);
CREATE TABLE IF NOT EXISTS changes (
    level TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (level, first_seq)
);
"""

# A node or edge as published (the contract's ``<node>``/``<edge>``), and a view's nodes or edges by id.
Body: TypeAlias = dict[str, Any]
Section: TypeAlias = dict[str, Body]
# A publication's structural changes to a section: id -> the body as published then, None: gone.
SectionChanges: TypeAlias = dict[str, Body | None]
LevelChanges: TypeAlias = tuple[SectionChanges, SectionChanges]  # a kept level's (nodes, edges) changes
BlockEntry: TypeAlias = tuple[int, SectionChanges, SectionChanges]  # (seq, nodes, edges) of a change block


class ChangedIds(TypedDict):
    added: list[str]
    removed: list[str]
    updated: list[str]


class TopologyAt(TypedDict):
    """:meth:`History.topology_at`: a view as published at a time."""

    nodes: Section
    edges: Section
    timestamp: str
    seq: int


class NetChanges(TypedDict):
    """:meth:`History.changes`: the views at both ends (``(nodes, edges)``) and the ids that differ."""

    from_seq: int
    to_seq: int
    before: tuple[Section, Section]
    after: tuple[Section, Section]
    nodes: ChangedIds
    edges: ChangedIds


class NodeEvent(TypedDict):
    """One of :meth:`History.node_events`: ``node`` is the new body (the last one for ``removed``)."""

    timestamp: str
    seq: int
    change: Literal["added", "removed", "updated"]
    node: Body


class HistoryUnavailable(LookupError):
    """A time before the oldest history still held (``oldest`` is the oldest time that can be asked for,
    ``None`` when there is no history at all)."""

    def __init__(self, oldest: str | None) -> None:
        super().__init__(oldest)
        self.oldest = oldest


class UnknownNode(LookupError):
    """A node id never seen within the window asked for."""


def node_changed(old: Body | None, new: Body | None) -> bool:
    """Whether a node changed in identity or structure (appeared, vanished or a structural field; in
    ``metadata``, an interface's byte counters are metrics, not structure: see :func:`metadata_changed`)."""
    if old is None or new is None:
        return old is not new
    # Spelt out, not a loop over NODE_FIELDS: this runs for every changed node of every publication.
    return (
        old["name"] != new["name"]
        or old["parent"] != new["parent"]
        or old["host"] != new["host"]
        or old["type"] != new["type"]
        or (old["metadata"] is not new["metadata"] and metadata_changed(old["metadata"], new["metadata"]))
    )


def metadata_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """``metadata`` changed other than in its interfaces' byte counters. A host's ``interfaces`` (from its
    ``network_info``) carry ``rx_bytes``/``tx_bytes``, which grow with every report: counted as structure,
    every host would change at every report (most of what history kept, and an ``updated`` host in every
    ``changes``). An interface appearing, vanishing or being renamed is a change."""
    if old == new:
        return False
    if old.keys() != new.keys():
        return True
    return any(
        old[key] != new[key] and (key != "interfaces" or _interfaces(old[key]) != _interfaces(new[key])) for key in old
    )


def _interfaces(interfaces: object) -> object:
    if not isinstance(interfaces, list):
        return interfaces
    return [
        {key: value for key, value in interface.items() if key not in COUNTERS}
        if isinstance(interface, dict)
        else interface
        for interface in interfaces
    ]


def edge_changed(old: Body | None, new: Body | None) -> bool:
    """Whether an edge (two bodies of one id) changed in structure (:data:`EDGE_FIELDS`). Its id is made of
    its source, target and protocol, one to one, so for one id only its ports can differ: they are compared
    first (most often the very same list, shared between versions), the rest only when they are equal."""
    if old is None or new is None:
        return old is not new
    if old["ports"] is not new["ports"] and old["ports"] != new["ports"]:
        return True
    return bool(old["source"] != new["source"] or old["target"] != new["target"] or old["protocol"] != new["protocol"])


@dataclass(frozen=True, slots=True)
class Entry:
    """One publication: ``changes`` maps a kept level to ``(nodes, edges)`` ({id: body or None}); ``None``
    for a reset (the keyframe taken at this seq replaces whatever came before)."""

    seq: int
    ts: float
    stamp: str
    changes: dict[str, LevelChanges] | None


@dataclass(slots=True, eq=False)
class Keyframe:
    """A keyframe recorded and not flushed yet. It is encoded in the history's encoder thread as soon as it
    is recorded, not at the next flush: until then ``views`` keeps the published bodies of its publication
    alive while the live version replaces them (at 1,000 hosts every body within one report interval), which
    made the flush interval's worth of replaced bodies the server's memory high-water mark. Once ``parts`` is
    set, ``views`` is emptied (replaced, never mutated: a reader holding the old dict keeps reading it)."""

    seq: int
    ts: float
    stamp: str
    reset: bool
    # level -> (nodes, edges): copies of the published views' dicts (the bodies are shared)
    views: dict[str, tuple[Section, Section]]
    levels: frozenset[str] = frozenset()
    parts: dict[str, list[bytes]] | None = None  # level -> its parts as stored (see _keyframe_parts)
    encoding: Future[None] | None = None

    def __post_init__(self) -> None:
        self.levels = frozenset(self.views)

    def encode(self) -> None:
        """Encode every level into its stored parts and let go of the bodies (in the encoder thread)."""
        self.parts = {level: list(_keyframe_parts(nodes, edges)) for level, (nodes, edges) in self.views.items()}
        self.views = {}

    def sections(self, level: str) -> tuple[Section, Section] | None:
        """The level's nodes and edges while the bodies are held, else None (decode :attr:`parts`)."""
        return self.views.get(level)


@dataclass(frozen=True, slots=True)
class Point:
    """A publication history can answer for."""

    seq: int
    ts: float
    stamp: str


class History:
    """The history of one server. Owned by the event loop: :meth:`record` is called with each publication,
    :meth:`flush` writes, the query methods read (in worker threads)."""

    def __init__(
        self,
        path: Path,
        retention: float,
        keyframe_interval: float,
        temporary: bool = False,
        min_keyframe_changes: int = MIN_KEYFRAME_CHANGES,
        keyframe_share: float = KEYFRAME_SHARE,
    ) -> None:
        self.path = Path(path)
        self.retention = retention
        self.keyframe_interval = keyframe_interval
        self.min_keyframe_changes = min_keyframe_changes
        self.keyframe_share = keyframe_share
        self._temporary = temporary
        self.conn = _connect(self.path)
        self._lock = asyncio.Lock()  # one writer at a time on self.conn
        self._pending: list[Entry] = []
        self._pending_keyframes: list[Keyframe] = []
        # One thread, so keyframes are encoded in the order they were taken (and at most one at a time).
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-keyframes")
        self._reset_due = True  # the first publication seen after opening is a reset keyframe
        self._changes_since_keyframe = dict.fromkeys(KEPT_LEVELS, 0)
        self._keyframe_items = dict.fromkeys(KEPT_LEVELS, 0)
        self.flushes = 0
        self.pruned = 0
        self.decoded = {level: Decoded(DECODED_ITEMS[level]) for level in KEPT_LEVELS}
        self.oldest, self.latest, self._last_keyframe = _load_bounds(self.conn)
        self.sorted_from = int(
            self.conn.execute("SELECT value FROM meta WHERE key = 'sorted_keyframes_from'").fetchone()[0]
        )

    @classmethod
    def open(cls, settings: Settings) -> History:
        """``<data_dir>/history.sqlite``, or a temporary one when the state is not persisted."""
        history = settings.history
        if settings.storage.persist:
            data_dir = Path(settings.storage.data_dir)
            data_dir.mkdir(parents=True, exist_ok=True)
            return cls(data_dir / FILENAME, history.retention, history.keyframe_interval)
        directory = Path(tempfile.mkdtemp(prefix="orchestrator-history-"))
        return cls(directory / FILENAME, history.retention, history.keyframe_interval, temporary=True)

    @property
    def last_seq(self) -> int:
        return self.latest.seq if self.latest else 0

    # -- recording (on the loop, once per publication) -------------------------------------------------------

    def record(self, publication: Publication, topology: Topology) -> None:
        """Keep ``publication`` (the latest; ``topology`` is its :class:`~orchestrator.topology.Topology`).
        Never raises: a failure is logged and the next publication is a reset keyframe."""
        run_steps(self.record_steps(publication, topology))

    def record_steps(self, publication: Publication, topology: Topology) -> Generator[None, None, None]:
        """:meth:`record` as a generator of steps, a yield every :data:`RECORD_STEP` changes: the topology's
        publish listener, driven by a stepped publish while it still holds the published version still (at
        1,000 hosts a publication's ~90,000 changes took ~100 ms of the loop in one step)."""
        try:
            yield from self._record_steps(publication, topology)
        except Exception as exc:
            self._reset_due = True
            log.error("history_record_failed", seq=publication.seq, error=repr(exc), exc_info=exc)

    def _record_steps(self, publication: Publication, topology: Topology) -> Generator[None, None, None]:
        seq = publication.seq
        ts = parse_rfc3339(publication.timestamp)
        if self.latest is not None:
            ts = max(ts, self.latest.ts)
        reset = self._reset_due or self.latest is None or seq != self.latest.seq + 1
        changes: dict[str, LevelChanges] = {}
        # A reset keeps keyframes of every level and no changes: those of a restore's first publication (the
        # whole topology) would cost a pass over it per level for nothing.
        for level in () if reset else KEPT_LEVELS:
            node_changes, edge_changes = publication.changes(level)
            nodes: SectionChanges = {}
            for start in range(0, len(node_changes), RECORD_STEP):
                yield
                nodes.update(
                    (node_id, new)
                    for node_id, old, new in node_changes[start : start + RECORD_STEP]
                    if node_changed(old, new)
                )
            edges: SectionChanges = {}
            for start in range(0, len(edge_changes), RECORD_STEP):
                yield
                edges.update(
                    (eid, new) for eid, old, new in edge_changes[start : start + RECORD_STEP] if edge_changed(old, new)
                )
            changes[level] = (nodes, edges)
            self._changes_since_keyframe[level] += len(nodes) + len(edges)
        point = Point(seq, ts, publication.timestamp)
        levels = self._keyframe_levels(reset, ts)
        if levels:
            views: dict[str, tuple[Section, Section]] = {}
            for level in levels:
                # Copied in steps (the publish holds the version still): in one go, the two copies held
                # the loop 220-250 ms at 1,000 hosts.
                snapshot = yield from topology.snapshot_steps(level)
                views[level] = (snapshot["nodes"], snapshot["edges"])
                self._changes_since_keyframe[level] = 0
                self._keyframe_items[level] = len(snapshot["nodes"]) + len(snapshot["edges"])
            keyframe = Keyframe(seq, ts, point.stamp, reset, views)
            keyframe.encoding = self._encoder.submit(keyframe.encode)
            self._pending_keyframes.append(keyframe)
            if levels == KEPT_LEVELS:
                self._last_keyframe = point
            if self.oldest is None:
                self.oldest = point
        self._reset_due = False
        self._pending.append(Entry(seq, ts, point.stamp, None if reset else changes))
        self.latest = point

    def _keyframe_levels(self, reset: bool, ts: float) -> tuple[str, ...]:
        """The levels to take a keyframe of now: all of them at a reset, every ``keyframe_interval`` and when
        the process level's structural changes since its last keyframe reach ``keyframe_share`` of its size
        then; the host level alone also when its own changes reach that share of its own size (it is small,
        so its replay stays short)."""
        since = self._changes_since_keyframe

        def due(level: str) -> bool:
            return since[level] >= max(self.min_keyframe_changes, self.keyframe_share * self._keyframe_items[level])

        if (
            reset
            or self._last_keyframe is None
            or ts - self._last_keyframe.ts >= self.keyframe_interval
            or due("process")
        ):
            return KEPT_LEVELS
        return tuple(level for level in KEPT_LEVELS[1:] if due(level))

    # -- writing ---------------------------------------------------------------------------------------------

    async def flush(self) -> int:
        """Write what was recorded since the last flush (one transaction, in a worker thread); returns how
        many publications were written. A failed write is logged and retried at the next flush."""
        async with self._lock:
            self._drop_failed_keyframes()
            entries, keyframes = list(self._pending), list(self._pending_keyframes)
            if not entries and not keyframes:
                return 0
            try:
                await asyncio.to_thread(_write, self.conn, entries, keyframes)
            except Exception as exc:
                log.error("history_flush_failed", publications=len(entries), error=repr(exc), exc_info=exc)
                return 0
            # Only now: a query started meanwhile finds each entry either in the file or in its copy.
            del self._pending[: len(entries)]
            del self._pending_keyframes[: len(keyframes)]
            self.flushes += 1
            return len(entries)

    def _drop_failed_keyframes(self) -> None:
        """A keyframe whose encoding failed is not written; the next publication is a reset keyframe (as after
        any failure to record), so the history after it stays whole."""
        for keyframe in list(self._pending_keyframes):
            encoding = keyframe.encoding
            if encoding is None or not encoding.done() or encoding.exception() is None:
                continue
            log.error("history_keyframe_failed", seq=keyframe.seq, error=repr(encoding.exception()))
            self._pending_keyframes.remove(keyframe)
            self._reset_due = True

    async def run(self, interval: float) -> None:
        """Flush every ``interval`` until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.flush()

    async def prune(self) -> int:
        """Delete what lies before the newest keyframe at or before ``latest - retention`` (the cleanup
        sweep calls this); returns how many publications were deleted."""
        if self.latest is None:
            return 0
        await self.flush()
        async with self._lock:
            cutoff = self.latest.ts - self.retention
            deleted, oldest = await asyncio.to_thread(_prune, self.conn, cutoff)
        if oldest is not None:
            self.oldest = oldest
        if deleted:
            for decoded in self.decoded.values():
                decoded.drop_before(oldest.seq if oldest else self.last_seq + 1)
        self.pruned += deleted
        if deleted:
            log.info("history_pruned", publications=deleted, oldest=self.oldest.stamp if self.oldest else None)
        return deleted

    def close(self) -> None:
        """Fold the WAL into the file and close (after the last flush). A temporary history is deleted."""
        self._encoder.shutdown(wait=True, cancel_futures=True)
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("history_wal_checkpoint_failed", error=repr(exc))
        self.conn.close()
        if self._temporary:
            shutil.rmtree(self.path.parent, ignore_errors=True)

    def stats(self) -> dict[str, Any]:
        files = [self.path, self.path.with_name(self.path.name + "-wal")]
        return {
            "path": str(self.path),
            "size_bytes": sum(p.stat().st_size for p in files if p.exists()),
            "oldest": self.oldest.stamp if self.oldest else None,
            "latest_seq": self.last_seq,
            "unflushed_publications": len(self._pending),
            "flushes": self.flushes,
            "pruned_publications": self.pruned,
        }

    # -- reading (each query in a worker thread) ---------------------------------------------------------------

    def _reader(self) -> _Reader:
        return _Reader(
            self.path, tuple(self._pending), tuple(self._pending_keyframes), self.oldest, self.decoded, self.sorted_from
        )

    def check_time(self, ts: float) -> None:
        """:raises HistoryUnavailable: when ``ts`` lies before the oldest history held."""
        if self.oldest is None or ts < self.oldest.ts:
            raise HistoryUnavailable(self.oldest.stamp if self.oldest else None)

    async def topology_at(self, ts: float, level: str, external: str = "each") -> TopologyAt:
        """A view (``level``, ``external`` as for the live topology) as published at ``ts``: ``{"nodes",
        "edges", "timestamp", "seq"}``, not filtered by host. :raises HistoryUnavailable:"""
        self.check_time(ts)
        return await asyncio.to_thread(self._reader().topology_at, ts, level, external)

    async def topology_at_json(self, ts: float, level: str, external: str = "each") -> bytes:
        """:meth:`topology_at` as the body of ``GET /api/v1/query/topology?at=``: ``{"topology": …}`` with
        sorted keys, the bytes the live answer would have had. :raises HistoryUnavailable:"""
        self.check_time(ts)
        return await asyncio.to_thread(self._reader().topology_at_json, ts, level, external)

    async def changes(self, start: float, end: float, level: str, external: str = "each") -> NetChanges:
        """The net difference of the ``level`` view between ``start`` and ``end``: ``{"from_seq", "to_seq",
        "before", "after", "nodes", "edges"}`` where ``nodes``/``edges`` are ``{"added", "removed", "updated"}``
        id sets and ``before``/``after`` the views to take the bodies from. :raises HistoryUnavailable:"""
        self.check_time(start)
        return await asyncio.to_thread(self._reader().changes, start, end, level, external)

    async def node_events(self, node_id: str, start: float | None, end: float) -> list[NodeEvent]:
        """A node's structural events between ``start`` (the oldest history when None or earlier) and
        ``end``. :raises UnknownNode: when it never existed within the window."""
        if self.oldest is None:
            raise UnknownNode(node_id)
        start = self.oldest.ts if start is None else max(start, self.oldest.ts)
        return await asyncio.to_thread(self._reader().node_events, node_id, start, end)


def open_history(state: State) -> History:
    """Open the state's history and keep every publication from now on (before the restore publishes the
    restored topology, so that one is kept too). Publications are numbered after the last one held."""
    history = state.history = History.open(state.settings)
    state.topology.resume_seq(history.last_seq)
    state.topology.publish_listeners.append(history.record_steps)
    log.info("history_opened", path=str(history.path), oldest=history.oldest.stamp if history.oldest else None)
    return history


# -- reading ------------------------------------------------------------------------------------------------


class Decoded:
    """One level's decoded keyframes and change blocks, shared by the queries (worker threads): reading one
    from the file costs decompressing and decoding it, and most queries ask for the same few. Keys name what
    the file holds under them (``("keyframe", seq)``, ``("block", first_seq, last_seq)``), which never changes
    while it is held; what pruning deletes is dropped (:meth:`drop_before`). Bounded by the number of nodes
    and edges held, least recently used dropped first (one per level, so that full views do not push the
    small host keyframes out). The values are shared: read only."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._held: OrderedDict[tuple[Any, ...], tuple[Any, int]] = OrderedDict()
        self._items = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], read: Callable[[], Any]) -> Any:
        """The value held under ``key``, else ``read()`` (outside the lock: two queries may both read it)."""
        with self._lock:
            held = self._held.get(key)
            if held is not None:
                self._held.move_to_end(key)
                return held[0]
        value = read()
        size = _size(value)
        with self._lock:
            if key not in self._held and size <= self.max_items:
                self._held[key] = (value, size)
                self._items += size
                while self._items > self.max_items:
                    _key, (_value, dropped) = self._held.popitem(last=False)
                    self._items -= dropped
        return value

    def drop_before(self, seq: int) -> None:
        """Forget everything pruning deleted: keyframes before ``seq``, blocks ending before it."""
        with self._lock:
            for key in [key for key in self._held if key[-1] < seq]:
                self._items -= self._held.pop(key)[1]


def _size(value: Any) -> int:
    if isinstance(value, tuple):  # a keyframe: (nodes, edges)
        return len(value[0]) + len(value[1])
    return sum(len(nodes) + len(edges) for _seq, nodes, edges in value)  # a block


class _Reader:
    """One query's view of the history: the file (its own read-only connection) plus a copy of what was
    recorded but not flushed yet. Runs in a worker thread."""

    def __init__(
        self,
        path: Path,
        pending: tuple[Entry, ...],
        keyframes: tuple[Keyframe, ...],
        oldest: Point | None,
        decoded: dict[str, Decoded],
        sorted_from: int,
    ) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self.sorted_from = sorted_from
        self.decoded = decoded
        self.pending = pending
        self.pending_seqs = [entry.seq for entry in pending]
        self.keyframes = keyframes
        self.oldest = oldest

    def close(self) -> None:
        self.conn.close()

    # -- points in time

    def point_at(self, ts: float) -> Point:
        """The last publication at or before ``ts``."""
        pending = self.pending
        if pending and pending[0].ts <= ts:
            index = bisect.bisect_right([entry.ts for entry in pending], ts) - 1
            entry = pending[index]
            return Point(entry.seq, entry.ts, entry.stamp)
        row = self.conn.execute(
            "SELECT seq, ts, stamp FROM publications WHERE ts <= ? ORDER BY ts DESC, seq DESC LIMIT 1", (ts,)
        ).fetchone()
        if row is None:
            raise HistoryUnavailable(self.oldest.stamp if self.oldest else None)
        return Point(*row)

    def stamp_of(self, seq: int) -> tuple[float, str]:
        index = bisect.bisect_left(self.pending_seqs, seq)
        if index < len(self.pending) and self.pending[index].seq == seq:
            return self.pending[index].ts, self.pending[index].stamp
        row: tuple[float, str] | None = self.conn.execute(
            "SELECT ts, stamp FROM publications WHERE seq = ?", (seq,)
        ).fetchone()
        if row is None:
            raise HistoryUnavailable(self.oldest.stamp if self.oldest else None)  # pruned meanwhile
        return row

    # -- keyframes and entries

    def keyframe_seq(self, seq: int, level: str) -> int:
        """The newest keyframe of ``level`` at or before ``seq``."""
        held = [keyframe.seq for keyframe in self.keyframes if keyframe.seq <= seq and level in keyframe.levels]
        if held:
            return max(held)
        newest: int | None = self.conn.execute(
            "SELECT MAX(seq) FROM keyframes WHERE level = ? AND seq <= ?", (level, seq)
        ).fetchone()[0]
        if newest is None:
            raise HistoryUnavailable(self.oldest.stamp if self.oldest else None)
        return newest

    def keyframe(self, seq: int, level: str) -> tuple[Section, Section]:
        """The nodes and edges of the keyframe of ``level`` at ``seq`` (shared with other queries: read only)."""
        read = lambda: self._read_keyframe(seq, level)  # noqa: E731
        pending = next((k for k in self.keyframes if k.seq == seq and level in k.levels), None)
        if pending is not None:
            sections = pending.sections(level)
            if sections is not None:
                return sections
            parts = pending.parts
            assert parts is not None  # set before the bodies are let go
            read = lambda: _decode_parts(parts[level])  # noqa: E731 (what the file will give once flushed)
        held: tuple[Section, Section] = self.decoded[level].get(("keyframe", seq), read)
        return held

    def _read_keyframe(self, seq: int, level: str) -> tuple[Section, Section]:
        rows = self.conn.execute(
            "SELECT body FROM keyframes WHERE seq = ? AND level = ? ORDER BY part", (seq, level)
        ).fetchall()
        if not rows:
            raise HistoryUnavailable(self.oldest.stamp if self.oldest else None)  # pruned meanwhile
        return _decode_parts(body for (body,) in rows)

    def entries(
        self, level: str, after: int, upto: int
    ) -> Iterator[tuple[int, SectionChanges | None, SectionChanges | None]]:
        """``(seq, nodes, edges)`` of each publication in ``(after, upto]`` with structural changes, oldest
        first; ``nodes`` is None for a reset. (The bodies are shared with other queries: read only.)"""
        first_pending = self.pending[0].seq if self.pending else upto + 1
        rows = self.conn.execute(
            "SELECT first_seq, last_seq FROM changes WHERE level = ? AND last_seq > ? AND first_seq <= ?"
            " ORDER BY first_seq",
            (level, after, min(upto, first_pending - 1)),
        ).fetchall()
        resets = self._resets(after, min(upto, first_pending - 1))
        for first_seq, last_seq in rows:
            for seq, nodes, edges in self.block(level, first_seq, last_seq):
                while resets and resets[0] < seq:
                    yield resets.pop(0), None, None
                if after < seq <= upto and seq < first_pending:
                    yield seq, nodes, edges
        yield from ((seq, None, None) for seq in resets)
        for entry in self.pending:
            if after < entry.seq <= upto:
                if entry.changes is None:
                    yield entry.seq, None, None
                else:
                    nodes, edges = entry.changes[level]
                    if nodes or edges:
                        yield entry.seq, nodes, edges

    def block(self, level: str, first_seq: int, last_seq: int) -> list[BlockEntry]:
        """The entries of one change block, ``[(seq, nodes, edges), ...]``, decoded once for all queries."""

        def read() -> list[BlockEntry]:
            (body,) = self.conn.execute(
                "SELECT body FROM changes WHERE level = ? AND first_seq = ?", (level, first_seq)
            ).fetchone()
            return [(seq, nodes, edges) for seq, _stamp, nodes, edges in orjson.loads(zlib.decompress(body))]

        held: list[BlockEntry] = self.decoded[level].get(("block", first_seq, last_seq), read)
        return held

    def _resets(self, after: int, upto: int) -> list[int]:
        rows = self.conn.execute(
            "SELECT DISTINCT seq FROM keyframes WHERE reset = 1 AND seq > ? AND seq <= ? ORDER BY seq", (after, upto)
        )
        return [row[0] for row in rows]

    def state(self, level: str, seq: int) -> tuple[Section, Section]:
        """The nodes and edges of a kept level at ``seq``: the keyframe before it, replayed."""
        start = self.keyframe_seq(seq, level)
        held_nodes, held_edges = self.keyframe(start, level)
        return self.replayed(level, (dict(held_nodes), dict(held_edges)), start, seq)[0]

    def replayed(
        self, level: str, state: tuple[Section, Section], after: int, upto: int
    ) -> tuple[tuple[Section, Section], tuple[set[str], set[str]]]:
        """``state`` (a kept level at ``after``, changed in place) with the entries in ``(after, upto]``
        applied, and the ids those entries touched."""
        nodes, edges = state
        touched_nodes: set[str] = set()
        touched_edges: set[str] = set()
        for entry_seq, node_changes, edge_changes in self.entries(level, after, upto):
            if node_changes is None or edge_changes is None:  # a reset (none after the newest keyframe)
                held_nodes, held_edges = self.keyframe(entry_seq, level)
                touched_nodes.update(nodes, held_nodes)
                touched_edges.update(edges, held_edges)
                nodes, edges = dict(held_nodes), dict(held_edges)
            else:
                _apply(nodes, node_changes)
                _apply(edges, edge_changes)
                touched_nodes.update(node_changes)
                touched_edges.update(edge_changes)
        return (nodes, edges), (touched_nodes, touched_edges)

    def view(self, level: str, external: str, seq: int) -> tuple[Section, Section]:
        """A view at ``seq``: a kept level as kept, the others rolled up from the nearest kept one (grouping
        public externals on the host level rolls the kept host level up: the same result, far less work)."""
        kept = _kept_level(level, external)
        return _rolled_up(level, external, kept, self.state(kept, seq))

    # -- the three questions

    def topology_at(self, ts: float, level: str, external: str) -> TopologyAt:
        try:
            with paused_gc():  # decoding allocates ~1 KB per item, all acyclic: collector passes cost ~half
                point = self.point_at(ts)
                nodes, edges = self.view(level, external, point.seq)
            return {"nodes": nodes, "edges": edges, "timestamp": point.stamp, "seq": point.seq}
        finally:
            self.close()

    def topology_at_json(self, ts: float, level: str, external: str) -> bytes:
        try:
            with paused_gc():
                point = self.point_at(ts)
                sections = self._stored_view(level, external, point.seq)
                if sections is None:
                    sections = encode_sections(*self.view(level, external, point.seq))
            return topology_json(sections, point.seq, point.stamp)
        finally:
            self.close()

    def _stored_view(self, level: str, external: str, seq: int) -> bytes | None:
        """``"edges":{…},"nodes":{…}`` of a kept level at ``seq`` spliced from its keyframe's stored parts,
        when nothing changed after that keyframe (the host level, nearly always): nothing is decoded or
        encoded again. None when that does not hold or the keyframe is not stored in key order."""
        if external != "each" or level not in KEPT_LEVELS:
            return None
        start = self.keyframe_seq(seq, level)
        if start < self.sorted_from or any(k.seq == start for k in self.keyframes) or self._changed(level, start, seq):
            return None
        rows = self.conn.execute(
            "SELECT body FROM keyframes WHERE seq = ? AND level = ? ORDER BY part", (start, level)
        ).fetchall()
        edges, nodes = [], []
        for (body,) in rows[1:]:  # the first part is the empty topology
            part = zlib.decompress(body)
            if part.startswith(NODES_PART):  # first: an edge part's prefix is a node part's too
                nodes.append(part[len(NODES_PART) : -2])
            else:
                edges.append(part[len(EDGES_PART) : -len(EDGES_PART_END)])
        if not rows:
            return None  # pruned meanwhile: the decoding path says so
        return b'"edges":{' + b",".join(edges) + b'},"nodes":{' + b",".join(nodes) + b"}"

    def _changed(self, level: str, after: int, upto: int) -> bool:
        """Whether entries of ``level`` in ``(after, upto]`` may hold structural changes (a block that only
        overlaps the range counts: the answer is then built the long way)."""
        if any(
            after < entry.seq <= upto and (entry.changes is None or any(entry.changes[level])) for entry in self.pending
        ):
            return True
        row = self.conn.execute(
            "SELECT 1 FROM changes WHERE level = ? AND last_seq > ? AND first_seq <= ? LIMIT 1", (level, after, upto)
        ).fetchone()
        return row is not None

    def changes(self, start: float, end: float, level: str, external: str) -> NetChanges:
        try:
            with paused_gc():
                return self._changes(start, end, level, external)
        finally:
            self.close()

    def _changes(self, start: float, end: float, level: str, external: str) -> NetChanges:
        """Both ends from one replay when no keyframe of the level lies between them (the view at ``end`` is
        the one at ``start`` plus the entries between: what ``at=end`` answers, since it replays from the
        same keyframe), and then only the ids those entries touched are compared."""
        first, last = self.point_at(start), self.point_at(end)
        kept = _kept_level(level, external)
        before_state = self.state(kept, first.seq)
        touched: tuple[set[str], set[str]] | None = None
        if self.keyframe_seq(last.seq, kept) == self.keyframe_seq(first.seq, kept):
            copied = dict(before_state[0]), dict(before_state[1])
            after_state, touched = self.replayed(kept, copied, first.seq, last.seq)
        else:
            after_state = self.state(kept, last.seq)
        before = _rolled_up(level, external, kept, before_state)
        after = _rolled_up(level, external, kept, after_state)
        if before is not before_state:  # rolled up: new bodies, which the touched ids do not name
            touched = None
        return {
            "from_seq": first.seq,
            "to_seq": last.seq,
            "before": before,
            "after": after,
            "nodes": _net(before[0], after[0], node_changed, touched[0] if touched else None),
            "edges": _net(before[1], after[1], edge_changed, touched[1] if touched else None),
        }

    def node_events(self, node_id: str, start: float, end: float) -> list[NodeEvent]:
        try:
            with paused_gc():
                return self._node_events(node_id, start, end)
        finally:
            self.close()

    def _node_events(self, node_id: str, start: float, end: float) -> list[NodeEvent]:
        first, last = self.point_at(start), self.point_at(end)
        kseq = self.keyframe_seq(first.seq, "process")
        body = self.keyframe(kseq, "process")[0].get(node_id)
        for seq, nodes, _edges in self.entries("process", kseq, first.seq):
            if nodes is None:  # a reset (none after the newest keyframe): the node as that keyframe holds it
                body = self.keyframe(seq, "process")[0].get(node_id)
            elif node_id in nodes:
                body = nodes[node_id]
        seen = body is not None
        events: list[NodeEvent] = []
        for seq, nodes, _edges in self.entries("process", first.seq, last.seq):
            new: Body | None
            if nodes is None:  # a reset: the node as that keyframe holds it
                new = self.keyframe(seq, "process")[0].get(node_id)
            elif node_id in nodes:
                new = nodes[node_id]
            else:
                continue
            shown = new if new is not None else body  # a removed node is shown as it was last
            if shown is not None and node_changed(body, new):
                _ts, stamp = self.stamp_of(seq)
                change: Literal["added", "removed", "updated"] = (
                    "added" if body is None else "removed" if new is None else "updated"
                )
                events.append({"timestamp": stamp, "seq": seq, "change": change, "node": shown})
            body = new
            seen = True
        if not seen:
            raise UnknownNode(node_id)
        return events


def _apply(items: Section, changes: SectionChanges) -> None:
    for item_id, body in changes.items():
        if body is None:
            items.pop(item_id, None)
        else:
            items[item_id] = body


def _net(
    before: Section, after: Section, changed: Callable[[Body, Body], bool], ids: set[str] | None = None
) -> ChangedIds:
    """Ids added, removed and structurally updated between two versions of a section; ``ids``, when given,
    holds every id whose body may differ (the others are the same objects in both)."""
    if ids is not None:
        added = [item_id for item_id in ids if item_id in after and item_id not in before]
        removed = [item_id for item_id in ids if item_id in before and item_id not in after]
        candidates: Iterator[str] | list[str] = [item_id for item_id in ids if item_id in after]
    else:
        added = [item_id for item_id in after if item_id not in before]
        removed = [item_id for item_id in before if item_id not in after]
        candidates = iter(after)
    updated = [
        item_id
        for item_id in candidates
        if item_id in before and before[item_id] is not after[item_id] and changed(before[item_id], after[item_id])
    ]  # a body shared by both versions is unchanged
    return {"added": sorted(added), "removed": sorted(removed), "updated": sorted(updated)}


def _kept_level(level: str, external: str) -> str:
    """The kept level a view is read from: itself, else the host level for host views (grouping public
    externals on it is the same result as on the process level, for far less work), else the process level."""
    if external == "each" and level in KEPT_LEVELS:
        return level
    return "host" if level == "host" else "process"


def _rolled_up(level: str, external: str, kept: str, state: tuple[Section, Section]) -> tuple[Section, Section]:
    """The view (``level``, ``external``) of ``state``, a kept level: itself when it is that view."""
    if external == "each" and level == kept:
        return state
    return rolled_up("process+group" if level == "host" else view_name(level, external), *state)


def rolled_up(name: str, nodes: Section, edges: Section) -> tuple[Section, Section]:
    """The view ``name`` (:func:`~orchestrator.topology.views.view_name`) of base ``nodes``/``edges``, by the
    live views' own one-pass build."""
    view = Published().build_view(name, nodes, edges)
    return view.nodes, view.edges


def filter_host(nodes: Section, edges: Section, host: str) -> tuple[Section, Section]:
    """Only ``host``'s nodes and every edge with at least one end among them (the live ``host=`` filter)."""
    kept = {node_id: node for node_id, node in sorted(nodes.items()) if node["host"] == host}
    kept_edges = {eid: edge for eid, edge in sorted(edges.items()) if edge["source"] in kept or edge["target"] in kept}
    return kept, kept_edges


# -- the file -----------------------------------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the history file. A file that cannot be read as this history is moved aside."""
    try:
        return _open(path)
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", None) not in {"SQLITE_CORRUPT", "SQLITE_NOTADB", None}:
            raise
        moved = path.with_name(path.name + ".corrupt")
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                source.replace(moved.with_name(moved.name + suffix))
        log.error("history_file_corrupt", path=str(path), problem=str(exc), moved_to=str(moved))
        return _open(path)


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if not conn.execute("SELECT name FROM sqlite_master WHERE name = 'meta'").fetchone():
            with conn:  # a new file: one transaction, one fsync (an existing one costs none at start-up)
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        if version in MIGRATIONS:
            with conn:
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
            log.info("history_schema_migrated", path=str(path), from_version=version, to_version=SCHEMA_VERSION)
            version = SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"unknown history schema version {version!r}")
        if not conn.execute("SELECT 1 FROM meta WHERE key = 'sorted_keyframes_from'").fetchone():
            # Keyframes written from here on are in key order (see _keyframe_parts); older ones may not be.
            newest = conn.execute("SELECT MAX(seq) FROM keyframes").fetchone()[0]
            with conn:
                conn.execute("INSERT INTO meta VALUES ('sorted_keyframes_from', ?)", (str((newest or 0) + 1),))
    except BaseException:
        conn.close()
        raise
    return conn


def _load_bounds(conn: sqlite3.Connection) -> tuple[Point | None, Point | None, Point | None]:
    """The oldest keyframe, the latest publication and the latest keyframe held in the file."""

    def point(sql: str) -> Point | None:
        row = conn.execute(sql).fetchone()
        return Point(*row) if row else None

    whole = "(SELECT {}(seq) FROM keyframes WHERE level = 'process')"  # a process keyframe: of every level
    oldest = point(f"SELECT p.seq, p.ts, p.stamp FROM publications p WHERE p.seq = {whole.format('MIN')}")
    latest = point("SELECT seq, ts, stamp FROM publications ORDER BY seq DESC LIMIT 1")
    last_keyframe = point(f"SELECT p.seq, p.ts, p.stamp FROM publications p WHERE p.seq = {whole.format('MAX')}")
    return oldest, latest, last_keyframe


def _write(conn: sqlite3.Connection, entries: list[Entry], keyframes: list[Keyframe]) -> None:
    """One flush, in one transaction (runs in a worker thread, after the keyframes' own encoding)."""
    for keyframe in keyframes:
        assert keyframe.encoding is not None
        keyframe.encoding.result()  # raises what the encoding raised: this flush fails, the next drops it
    parts = [
        (keyframe.seq, level, number, int(keyframe.reset), body)
        for keyframe in keyframes
        for level, level_parts in (keyframe.parts or {}).items()
        for number, body in enumerate(level_parts)
    ]
    blocks = []
    for level in KEPT_LEVELS:
        changed = [
            [entry.seq, entry.stamp, *entry.changes[level]]
            for entry in entries
            if entry.changes is not None and (entry.changes[level][0] or entry.changes[level][1])
        ]
        if changed:
            blocks.append((level, changed[0][0], changed[-1][0], zlib.compress(orjson.dumps(changed), 6)))
    with conn:
        conn.executemany(
            "INSERT OR REPLACE INTO publications VALUES (?, ?, ?)", [(e.seq, e.ts, e.stamp) for e in entries]
        )
        conn.executemany("INSERT OR REPLACE INTO keyframes VALUES (?, ?, ?, ?, ?)", parts)
        conn.executemany("INSERT OR REPLACE INTO changes VALUES (?, ?, ?, ?)", blocks)


def _keyframe_parts(nodes: Section, edges: Section) -> Iterator[bytes]:
    """The keyframe in parts of at most :data:`PART_ITEMS` nodes or edges, each encoded and compressed on
    its own (the GIL is free between parts and during compression). Items go in key order and keys are
    sorted, as the live answer has them, so that a view the keyframe answers alone is its parts spliced
    (:meth:`_Reader._stored_view`): edge parts are ``{"edges":{…},"nodes":{}}``, node parts
    ``{"edges":{},"nodes":{…}}``."""
    yield zlib.compress(orjson.dumps({"nodes": {}, "edges": {}}), 6)  # an empty topology still has a part
    for name, section in (("nodes", nodes), ("edges", edges)):
        items = sorted(section.items())
        for start in range(0, len(items), PART_ITEMS):
            part = {"nodes": {}, "edges": {}, name: dict(items[start : start + PART_ITEMS])}
            yield zlib.compress(orjson.dumps(part, option=orjson.OPT_SORT_KEYS), 6)


def _decode_parts(parts: Iterable[bytes]) -> tuple[Section, Section]:
    """The nodes and edges of a keyframe's stored parts."""
    nodes: Section = {}
    edges: Section = {}
    for body in parts:
        part = orjson.loads(zlib.decompress(body))
        nodes.update(part["nodes"])
        edges.update(part["edges"])
    return nodes, edges


def encode_sections(nodes: Section, edges: Section) -> bytes:
    """``"edges":{…},"nodes":{…}``, keys sorted: the inside of a topology answer."""
    return b'"edges":' + encode_items(edges) + b',"nodes":' + encode_items(nodes)


def topology_json(sections: bytes, seq: int, stamp: str) -> bytes:
    """``{"topology": …}`` around :func:`encode_sections`' bytes, as the live answer has it."""
    tail = orjson.dumps({"seq": seq, "timestamp": stamp}, option=orjson.OPT_SORT_KEYS)
    return b'{"topology":{' + sections + b"," + tail[1:] + b"}"


def encode_items(items: Section) -> bytes:
    """``orjson.dumps(items, option=OPT_SORT_KEYS)``, :data:`ENCODE_ITEMS` items per call (a worker thread
    lets the loop take the GIL between calls)."""
    keys = sorted(items)
    parts = [
        orjson.dumps({key: items[key] for key in keys[start : start + ENCODE_ITEMS]}, option=orjson.OPT_SORT_KEYS)[1:-1]
        for start in range(0, len(keys), ENCODE_ITEMS)
    ]
    return b"{" + b",".join(parts) + b"}"


def _prune(conn: sqlite3.Connection, cutoff: float) -> tuple[int, Point | None]:
    row = conn.execute(
        "SELECT MAX(k.seq) FROM keyframes k JOIN publications p ON p.seq = k.seq WHERE k.level = 'process' AND p.ts <= ?",
        (cutoff,),
    ).fetchone()
    if row[0] is None:
        return 0, None
    keep = row[0]
    with conn:
        deleted = conn.execute("DELETE FROM publications WHERE seq < ?", (keep,)).rowcount
        conn.execute("DELETE FROM keyframes WHERE seq < ?", (keep,))
        conn.execute("DELETE FROM changes WHERE last_seq < ?", (keep,))
    oldest = conn.execute("SELECT seq, ts, stamp FROM publications WHERE seq = ?", (keep,)).fetchone()
    return deleted, Point(*oldest) if oldest else None
