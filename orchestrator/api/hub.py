"""The real-time hub: publishes the topology every broadcast interval and fans the changes out to WebSocket clients.

One task (:meth:`Hub.run`) owns the rhythm: every ``websocket.broadcast_interval`` it freezes the live topology
into a new published version (REST queries read that version, so this runs with or without clients), then,
for each view that has clients, serializes the view's diff *once* and puts the same bytes on every subscribed
client's queue. Each client has a bounded queue and its own sender task, so a slow socket only ever delays
itself.

Decisions worth knowing:

- **Every publication is one diff per view, even an empty one.** ``payload.from_seq`` is always ``seq - 1``,
  so a client can check it missed nothing and always knows the ``seq`` to resume from.
- **report_update coalescing:** ``note_report`` keeps the latest summary per agent; each tick sends one
  ``report_update`` per agent that reported since the last tick (latest summary wins), after the tick's diff,
  so the topology a client holds already contains the report. A client viewing one host only gets the
  summaries of that host.
- **Slow clients:** when a client's queue is full its pending messages are dropped (``websocket_drops``), it
  gets nothing more until it has drained, then one fresh ``topology_update``. A client still behind after
  ``slow_client_timeout`` is closed with 1013 (``websocket_closes{reason="slow"}``).
- **History for resume:** each tracked view keeps its last ``history_size`` serialized diffs. A view stays
  tracked while it has clients and for ``history_size`` publications after its last client left (so a lone
  client that reconnects can still resume); at most ``MAX_IDLE_VIEWS`` idle views are kept.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

import orjson
import structlog

from orchestrator.api.snapshots import Encoded, SnapshotEncoder, prepare_view
from orchestrator.contract.durations import format_duration
from orchestrator.contract.times import format_rfc3339
from orchestrator.runtime.slicing import TimeSlice
from orchestrator.topology import EXTERNALS, LEVELS

log = structlog.get_logger("orchestrator.api.hub")

MAX_IDLE_VIEWS = 64
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
PUBLISH_SLICE_SECONDS = 0.005


class ViewError(ValueError):
    """A view the client asked for that does not exist (bad ``level``, ``host`` or ``external``)."""

    def __init__(self, message: str, code: str = "invalid_level") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class View:
    """What a client watches: a topology level, optionally one host's nodes only, external addresses one
    node each or the public ones grouped into ``external:internet``."""

    level: str = "process"
    host: str | None = None
    external: str = "each"

    @classmethod
    def parse(cls, level: Any, host: Any, external: Any = None) -> View:
        level = "process" if level in (None, "") else level
        if level not in LEVELS:
            raise ViewError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        if host is not None and not isinstance(host, str):
            raise ViewError("host must be a hostname string")
        external = "each" if external in (None, "") else external
        if external not in EXTERNALS:
            raise ViewError(f"external must be one of {', '.join(EXTERNALS)}, got {external!r}", "invalid_external")
        return cls(level, host or None, external)

    @property
    def key(self) -> str:
        key = f"{self.level}:{self.host or '*'}"
        return key if self.external == "each" else f"{key}:group"


class Connection(Protocol):
    """The transport side of a client (a Sanic websocket in production, a fake in unit tests)."""

    async def send(self, message: bytes) -> None:
        """Send one JSON text frame; raises when the connection is gone."""

    def close(self, code: int, reason: str) -> None:
        """Start closing with ``code`` now, without waiting on the peer (it may never read again)."""


@dataclass(eq=False, slots=True)
class Client:
    connection: Connection
    view: View
    queue: deque = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    needs_snapshot: bool = True
    behind_since: float | None = None  # loop time at which the queue overflowed; None while keeping up
    sender: asyncio.Task | None = None
    closed: bool = False


@dataclass(eq=False, slots=True)
class ViewState:
    clients: set = field(default_factory=set)
    history: deque = field(default_factory=deque)  # (seq, serialized topology_diff), contiguous seqs
    idle_publications: int = 0
    pinned: bool = False  # tracked with or without clients (see Hub.keep_history)


class Hub:
    def __init__(self, state) -> None:
        self.state = state
        ws = state.settings.websocket
        self.interval = ws.broadcast_interval
        self.buffer_size = ws.buffer_size
        self.history_size = ws.history_size
        self.slow_client_timeout = ws.slow_client_timeout
        metrics = state.metrics
        self._clients_gauge = metrics.websocket_clients
        self._drops = metrics.websocket_drops
        self._sent = {
            kind: metrics.websocket_messages.labels(kind)
            for kind in ("topology_update", "topology_diff", "report_update", "pong", "error")
        }
        self._closes = metrics.websocket_closes
        self._broadcast_seconds = metrics.broadcast_seconds
        self._nodes_gauge = {
            plural: metrics.topology_nodes.labels(kind)
            for kind, plural in (
                ("host", "hosts"),
                ("container", "containers"),
                ("process", "processes"),
                ("external", "externals"),
            )
        }
        self._edges_gauge = metrics.topology_edges
        self._clients: set[Client] = set()
        self._views: dict[View, ViewState] = {}
        self._pending_reports: dict[str, dict] = {}
        self._snapshots: dict[View, bytes] = {}  # topology_update messages at self._snapshot_seq
        self._snapshot_seq = -1
        # Whole views encoded in slices, each item's JSON kept between seqs; shared with REST's whole views.
        self.encoder = SnapshotEncoder()
        self._published_at: str | None = None
        self._closing = False
        self._counts = {"messages": 0, "drops": 0, "slow_closes": 0, "publications": 0}

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Publish and broadcast every broadcast interval until cancelled."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            try:
                await self.tick_in_slices(time.time())
            except Exception as exc:
                log.error("broadcast_failed", error=repr(exc), exc_info=exc)
            next_tick = max(next_tick + self.interval, loop.time())
            await asyncio.sleep(next_tick - loop.time())

    async def tick_in_slices(self, now: float, remember: bool = True) -> None:
        """One publish + broadcast, a large publish spread over slices of the event loop (requests are
        served in between), holding ``state.topology_lock`` so the live topology stays still while it is
        read; CPU time measured when anything was published or sent.

        ``remember=False`` (a replica replaying the log) builds no diff for a view without clients and
        drops the diffs it held: nobody can be resuming from publications a replica is still catching up
        on, and a later ``since`` into them gets a fresh ``topology_update``, as the contract allows."""
        async with self.state.topology_lock:
            publication, cpu = await _sliced(self.state.topology.publish_steps(now, PUBLISH_SLICE_SECONDS))
            if publication is not None:
                # A view watched but not read at seq - 1 (a client whose snapshot is still to come) has no
                # changes in this publication: its diff builds it at seq - 1 first. Done here in slices, not
                # in one go by _publish.
                for view, view_state in list(self._views.items()):
                    if remember or view_state.clients:
                        cpu += (await _sliced(publication.catch_up_steps(view.level, view.external)))[1]
        self._broadcast(publication, now, time.thread_time() - cpu, remember)

    def _broadcast(self, publication, now: float, started: float, remember: bool = True) -> None:
        if publication is not None:
            self._publish(publication, remember)
        sent_reports = self._send_report_updates(now)
        self._close_slow_clients()
        if publication is not None or sent_reports:
            self._broadcast_seconds.observe(time.thread_time() - started)

    def _publish(self, publication, remember: bool = True) -> None:
        self._counts["publications"] += 1
        self._published_at = publication.timestamp
        self._update_gauges()
        empty = None  # the one serialized empty diff of this publication, shared by every view it is
        for view, view_state in list(self._views.items()):
            if not remember and not view_state.clients:
                view_state.history.clear()  # the chain breaks here: older diffs no longer lead to seq
                continue
            payload = publication.diff(level=view.level, host=view.host, external=view.external)
            if _is_empty(payload):
                if empty is None:
                    empty = self._diff_message(publication, payload)
                message = empty
            else:
                message = self._diff_message(publication, payload)
            self._remember(view_state, publication.seq, message)
            if view_state.clients:
                self._fan_out(view_state.clients, message, "topology_diff")
            else:
                view_state.idle_publications += 1
                if view_state.idle_publications > self.history_size and not view_state.pinned:
                    del self._views[view]

    @staticmethod
    def _diff_message(publication, payload: dict) -> bytes:
        return orjson.dumps(
            {"type": "topology_diff", "seq": publication.seq, "timestamp": publication.timestamp, "payload": payload}
        )

    def _remember(self, view_state: ViewState, seq: int, message: bytes) -> None:
        if self.history_size == 0:
            return
        history = view_state.history
        if history and history[-1][0] != seq - 1:
            history.clear()  # a gap (e.g. seq restored at start-up): older diffs no longer chain
        history.append((seq, message))
        if len(history) > self.history_size:
            history.popleft()

    def _update_gauges(self) -> None:
        counts = self.state.topology.counts()
        for plural, gauge in self._nodes_gauge.items():
            gauge.set(counts.get(plural, 0))
        self._edges_gauge.set(counts.get("edges", 0))

    def _fan_out(self, clients, message: bytes, kind: str) -> None:
        queued = 0
        for client in clients:
            queued += self._enqueue(client, message)
        if queued:
            self._sent[kind].inc(queued)
            self._counts["messages"] += queued

    def _enqueue(self, client: Client, message: bytes) -> int:
        """Queue a message for a client; on overflow drop what it has pending and resync it later."""
        if client.closed:
            return 0
        if client.needs_snapshot:
            # Whatever it would get now is already in the snapshot it is waiting for.
            if client.behind_since is not None:
                self._drop(1)
            return 0
        if len(client.queue) >= self.buffer_size:
            self._drop(len(client.queue) + 1)
            client.queue.clear()
            client.needs_snapshot = True
            if client.behind_since is None:
                client.behind_since = asyncio.get_running_loop().time()
            return 0
        client.queue.append(message)
        client.wakeup.set()
        return 1

    def _drop(self, count: int) -> None:
        self._drops.inc(count)
        self._counts["drops"] += count

    def _close_slow_clients(self) -> None:
        if not self._clients:
            return
        deadline = asyncio.get_running_loop().time() - self.slow_client_timeout
        for client in [c for c in self._clients if c.behind_since is not None and c.behind_since < deadline]:
            log.info("websocket_slow_client_closed", view=client.view.key)
            self._counts["slow_closes"] += 1
            self._close(client, CLOSE_TRY_AGAIN_LATER, "too slow to keep up", "slow")

    # -- report summaries ----------------------------------------------------------------------------

    def note_report(self, agent_id: str, summary: dict) -> None:
        """Remember an accepted report's summary for the next tick (the latest per agent wins)."""
        if self._clients:
            self._pending_reports[agent_id] = summary

    def _send_report_updates(self, now: float) -> int:
        if not self._pending_reports:
            return 0
        pending, self._pending_reports = self._pending_reports, {}
        if not self._clients:
            return 0
        seq, timestamp = self.state.topology.seq, format_rfc3339(now)
        for agent_id, summary in pending.items():
            message = orjson.dumps(
                {
                    "type": "report_update",
                    "seq": seq,
                    "timestamp": timestamp,
                    "payload": {"agent_id": agent_id, "report": summary},
                }
            )
            hostname = summary.get("hostname")
            for view, view_state in self._views.items():
                if view_state.clients and (view.host is None or view.host == hostname):
                    self._fan_out(view_state.clients, message, "report_update")
        return len(pending)

    # -- clients -------------------------------------------------------------------------------------

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def connect(self, connection: Connection, view: View, since: int | None = None) -> Client:
        """Register a client: it first gets the diffs it missed since ``since`` when the view's history
        holds all of them, else a fresh ``topology_update``."""
        client = Client(connection, view)
        if self._closing:
            client.closed = True
            connection.close(CLOSE_GOING_AWAY, "server shutting down")
            return client
        view_state = self._track(view)
        view_state.clients.add(client)
        self._clients.add(client)
        self._clients_gauge.set(len(self._clients))
        if since is not None:
            missed = self._missed(view_state, since)
            if missed is not None:
                client.needs_snapshot = False
                client.queue.extend(missed)
                self._sent["topology_diff"].inc(len(missed))
        client.sender = asyncio.get_running_loop().create_task(self._send_loop(client), name="ws-sender")
        client.wakeup.set()
        return client

    def _track(self, view: View) -> ViewState:
        view_state = self._views.get(view)
        if view_state is None:
            self._evict_idle_views()
            view_state = self._views[view] = ViewState()
        view_state.idle_publications = 0
        return view_state

    def keep_history(self, view: View) -> None:
        """Track ``view`` from now on, with or without clients. A replica of a cluster does this for the
        default view: a UI behind a load balancer that resumes here with a ``since`` it got from another
        replica then gets the missed diffs, which every replica numbers alike."""
        self._track(view).pinned = True

    def _evict_idle_views(self) -> None:
        idle = [view for view, vs in self._views.items() if not vs.clients and not vs.pinned]
        for view in idle[: max(0, len(idle) - MAX_IDLE_VIEWS + 1)]:
            del self._views[view]  # dicts keep insertion order: the oldest idle views go first

    def _missed(self, view_state: ViewState, since: int) -> list[bytes] | None:
        """The serialized diffs after ``since`` up to the current seq, or None when they are not all held."""
        current = self.state.topology.seq
        if since == current:
            return []
        history = view_state.history
        if since > current or not history or history[-1][0] != current or history[0][0] > since + 1:
            return None
        missed = [message for _, message in islice(history, since + 1 - history[0][0], None)]
        return missed if len(missed) <= self.buffer_size else None

    def disconnect(self, client: Client) -> None:
        """Forget a client (idempotent): its queue, its sender task, its place in its view."""
        if client not in self._clients:
            client.closed = True
            return
        client.closed = True
        self._clients.discard(client)
        view_state = self._views.get(client.view)
        if view_state is not None:
            view_state.clients.discard(client)
        client.queue.clear()
        if client.sender is not None and client.sender is not asyncio.current_task():
            client.sender.cancel()
        client.sender = None
        self._clients_gauge.set(len(self._clients))

    def _close(self, client: Client, code: int, reason: str, label: str) -> None:
        self.disconnect(client)
        self._closes.labels(label).inc()
        try:
            client.connection.close(code, reason)
        except Exception as exc:
            log.debug("websocket_close_failed", error=repr(exc))

    async def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        """Close every client (graceful shutdown); clients connecting afterwards are closed at once."""
        self._closing = True
        clients = list(self._clients)
        for client in clients:
            self._close(client, code, reason, "shutdown")
        await asyncio.sleep(0)  # let the cancelled sender tasks finish
        log.info("websocket_clients_closed", count=len(clients), code=code)

    # -- what clients ask for ------------------------------------------------------------------------

    def resync(self, client: Client) -> None:
        """Send a fresh ``topology_update`` next; pending diffs are superseded by it."""
        if client.closed:
            return
        client.queue.clear()
        client.needs_snapshot = True
        client.wakeup.set()

    def subscribe(self, client: Client, view: View) -> None:
        """Switch a client to another view; it gets that view's snapshot, then its diffs."""
        if client.closed:
            return
        if view != client.view:
            old = self._views.get(client.view)
            if old is not None:
                old.clients.discard(client)
            client.view = view
            self._track(view).clients.add(client)
        self.resync(client)

    def reply(self, client: Client, kind: str, payload: dict | None = None) -> None:
        """Queue a small direct answer (``pong``, ``error``) behind what the client already has queued."""
        if client.closed:
            return
        if len(client.queue) >= self.buffer_size:
            self._drop(1)  # it is not reading: the overflow of its diffs will resync or close it
            return
        client.queue.append(self.message(kind, payload))
        client.wakeup.set()
        self._sent[kind].inc()

    def message(self, kind: str, payload: dict | None = None) -> bytes:
        """A serialized envelope at the current seq."""
        return orjson.dumps(
            {
                "type": kind,
                "seq": self.state.topology.seq,
                "timestamp": format_rfc3339(time.time()),
                "payload": payload or {},
            }
        )

    def error_message(self, code: str, message: str) -> bytes:
        return self.message("error", {"code": code, "message": message})

    # -- sending -------------------------------------------------------------------------------------

    def _snapshot_message(self, view: View, encoded: Encoded | None) -> bytes:
        """The view's ``topology_update`` at ``encoded``'s seq (a whole view: the encoder's, the bytes of
        ``Topology.snapshot_json``) or, for one host's part, at the current seq; built once per seq and view."""
        topology = self.state.topology
        seq = topology.seq if encoded is None else encoded.seq
        if seq != self._snapshot_seq:
            self._snapshots.clear()
            self._snapshot_seq = seq
        message = self._snapshots.get(view)
        if message is None:
            stamp = self._published_at or format_rfc3339(time.time())
            head = b'{"type":"topology_update","seq":%d,"timestamp":%b,"payload":' % (seq, orjson.dumps(stamp))
            if encoded is None:
                body = topology.snapshot_json(level=view.level, host=view.host, external=view.external)
                message = head + body + b"}"
            else:  # ~25 MB for the grouped host view at 1,000 hosts: the kept fragments, joined once
                message = encoded.body(head)
            if len(self._snapshots) >= MAX_IDLE_VIEWS:
                self._snapshots.clear()
            self._snapshots[view] = message
        return message

    async def _send_loop(self, client: Client) -> None:
        """The client's own sender. A pending snapshot goes first: whenever one is due the queue holds no
        diffs (they were dropped or superseded), at most small replies that must not precede it."""
        connection, queue = client.connection, client.queue
        try:
            while not client.closed:
                if client.needs_snapshot:
                    view = client.view
                    encoded = None
                    if view.host is None:  # what changed encoded (a collapsed view built in slices)
                        encoded = await self.encoder.encoded(self.state, view.level, view.external)
                    else:
                        await prepare_view(self.state, view.level, view.external)  # a collapsed view: in slices
                    if client.closed or client.view != view:
                        continue  # gone, or subscribed to another view meanwhile: that one's snapshot is due
                    # Taken at the current seq (no await since the view was made ready or copied); diffs
                    # after it queue up behind it from now on, while it is encoded and sent.
                    client.needs_snapshot = False
                    self._sent["topology_update"].inc()
                    await connection.send(self._snapshot_message(view, encoded))
                    if not client.needs_snapshot:
                        client.behind_since = None
                    continue
                if queue:
                    await connection.send(queue.popleft())
                    continue
                client.wakeup.clear()
                await client.wakeup.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("websocket_send_failed", error=repr(exc))
            self.disconnect(client)

    # -- introspection -------------------------------------------------------------------------------

    def stats(self) -> dict:
        views: dict[str, int] = {}
        for view, view_state in self._views.items():
            if view_state.clients:
                views[view.key] = len(view_state.clients)
        return {
            "clients": len(self._clients),
            "views": views,
            "behind": sum(1 for c in self._clients if c.behind_since is not None),
            "seq": self.state.topology.seq,
            "tracked_views": len(self._views),
            "history_size": self.history_size,
            "broadcast_interval": format_duration(self.interval),
            **self._counts,
        }


async def _sliced(steps) -> tuple[Any, float]:
    """Run a generator of steps on the loop in slices of :data:`PUBLISH_SLICE_SECONDS` (other tasks run in
    between); its return value and the thread CPU time its steps took."""
    cpu = 0.0
    stretch = TimeSlice(PUBLISH_SLICE_SECONDS)
    while True:
        started = time.thread_time()
        try:
            next(steps)
        except StopIteration as done:
            return done.value, cpu + time.thread_time() - started
        cpu += time.thread_time() - started
        if stretch.due():
            await stretch.pause()


def _is_empty(diff: dict) -> bool:
    return not any(diff[part][kind] for part in ("nodes", "edges") for kind in ("added", "updated", "removed"))
