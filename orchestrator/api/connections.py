"""The server's connections, kept within bounds: a whole-request deadline, a cap on open connections that
sheds idle and slow ones before a new client is turned away, and a budget for the bytes of unfinished bodies.

Sanic's ``REQUEST_TIMEOUT`` restarts with every byte received, so a client sending one byte a second held its
connection for good; nothing capped connections below the descriptor limit, so at the common soft limit of
1,024 about a thousand idle or trickling connections locked every new client out (the accept loop fails with
EMFILE, silently); and 200 connections each holding 9 MiB of an unfinished body added 1.8 GB. Here:

- **Deadline.** A request must arrive whole (headers and body) within ``server.request_timeout`` from its
  first byte, however slowly the bytes trickle: it is answered 408 and the connection closed.
- **Cap.** At most ``server.max_open_connections`` connections are open, and never more than the descriptor
  limit minus headroom for the data dir, NATS, plugins and refusals (:func:`connection_limit`). A connection
  beyond the cap first sheds the oldest idle keep-alive connection (a client that connected and sent nothing
  is idle too), then the request that has been arriving the longest (the slowest, answered 503); only when
  every connection is busy (a handler running, a WebSocket) is the newcomer answered 503 + ``Retry-After``.
- **Body budget.** The bytes of request bodies that have not arrived whole are at most
  ``server.max_pending_body_bytes`` together. Bytes past the budget shed the body holding the most (answered
  503 + ``Retry-After``), which is the newcomer itself when it is the largest. Shedding the largest holder,
  rather than refusing whoever comes next, means stalled multi-megabyte bodies cannot keep small reports out:
  each one shed costs its sender the megabytes again, and the deadline ends each within one request timeout.

Every shed or refused connection is counted in ``app_http_connections_shed_total{reason}`` and logged in one
``connections_shed`` line per ``LOG_EVERY`` seconds at most (a flood must not flood the log).
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Protocol

import orjson
import structlog

from orchestrator.contract.errors import ApiError

if TYPE_CHECKING:
    from orchestrator.runtime.metrics import Metrics
    from orchestrator.settings import ServerSettings

log = structlog.get_logger("orchestrator.api.connections")

IDLE, ARRIVING, BUSY, GONE = "idle", "arriving", "busy", "gone"
SHED_REASONS = ("idle", "slow", "refused", "request_timeout", "body_bytes")
LOG_EVERY = 10.0  # seconds between two connections_shed lines
LINGER = 2.0  # seconds an answered 408/503 connection is read (and discarded) so the client sees it, not a reset


class Guarded(Protocol):
    """What the guard needs of a connection (``api/protocol.py``'s ``GuardedProtocol``)."""

    phase: str
    began: float
    body_held: int
    deadline: asyncio.TimerHandle | None
    loop: asyncio.AbstractEventLoop

    def close(self, timeout: float | None = None) -> None: ...

    def cut(self, error: ApiError) -> None: ...


def connection_limit(configured: int, soft_limit: int) -> tuple[int, int]:
    """The cap in force and the descriptors kept out of it, for ``server.max_open_connections`` and the soft
    limit on open files: an eighth of the descriptors (at least 64) stay for the data dir and its WAL, the
    history file, NATS, plugins, the log and the connections being refused."""
    if soft_limit == resource.RLIM_INFINITY or soft_limit <= 0:
        return configured, 64
    headroom = max(64, soft_limit // 8)
    return max(1, min(configured, soft_limit - headroom)), headroom


class ConnectionGuard:
    """The bookkeeping of every open connection of one app. The event loop is the lock: every method runs
    on it, from the protocol's callbacks or a timer."""

    def __init__(self, server: ServerSettings, metrics: Metrics) -> None:
        self.settings = server
        self.metrics = metrics
        self.limit = server.max_open_connections
        self.linger_limit = 16
        self.open = 0
        self.lingering = 0
        self.body_bytes = 0
        # Oldest first: an idle connection by when it became idle, an arriving one by its request's first byte.
        self.idle: OrderedDict[Guarded, None] = OrderedDict()
        self.arriving: OrderedDict[Guarded, None] = OrderedDict()
        self._unlogged: Counter[str] = Counter()
        self._log_pending = False
        self._last_log: float | None = None
        self.refusal = _refusal_bytes(server.retry_after)
        metrics.connections_limit.set(self.limit)
        # Read at scrape time: nothing to update per connection.
        metrics.connections_open.labels(IDLE).set_function(lambda: len(self.idle))
        metrics.connections_open.labels(ARRIVING).set_function(lambda: len(self.arriving))
        metrics.connections_open.labels(BUSY).set_function(lambda: self.open - len(self.idle) - len(self.arriving))
        metrics.request_body_bytes.set_function(lambda: self.body_bytes)

    def fit_to_descriptors(self, soft_limit: int) -> None:
        """Bring the cap below the descriptor limit in force (called at start-up, after raising it)."""
        self.limit, headroom = connection_limit(self.settings.max_open_connections, soft_limit)
        self.linger_limit = max(16, headroom // 4)
        self.metrics.connections_limit.set(self.limit)
        log.info(
            "connection_limit",
            limit=self.limit,
            configured=self.settings.max_open_connections,
            open_files_limit=soft_limit,
        )

    # -- a connection's life ------------------------------------------------------------------------------

    def admit(self, conn: Guarded) -> bool:
        """Count a new connection in, shedding others to make room; False when none can be shed."""
        while self.open >= self.limit:
            if self.idle:
                self.shed(next(iter(self.idle)), "idle")
            elif self.arriving:
                self.shed(next(iter(self.arriving)), "slow", self._overloaded("too_many_connections", "connections"))
            else:
                return False
        self.open += 1
        conn.phase = IDLE
        self.idle[conn] = None
        return True

    def begin(self, conn: Guarded) -> None:
        """The first byte of a request: its deadline starts."""
        self.idle.pop(conn, None)
        conn.phase = ARRIVING
        conn.began = conn.loop.time()
        self.arriving[conn] = None
        conn.deadline = conn.loop.call_at(conn.began + self.settings.request_timeout, self._overdue, conn)

    def whole(self, conn: Guarded) -> None:
        """The request arrived whole (headers, and the body if any): no deadline until the next one."""
        self.arriving.pop(conn, None)
        self._stop_clock(conn)
        conn.phase = BUSY

    def rest(self, conn: Guarded) -> None:
        """Answered, and nothing more has arrived: an idle keep-alive connection."""
        conn.phase = IDLE
        self.idle[conn] = None

    def lost(self, conn: Guarded) -> None:
        if conn.phase is not GONE:
            self._forget(conn)

    def hold_body(self, conn: Guarded, size: int) -> None:
        """``size`` more bytes of ``conn``'s unfinished body are held; past the budget, shed the largest holders.

        :raises ApiError: 503 when ``conn`` itself holds the most (it is cut by the caller's exception).
        """
        if conn.phase is not ARRIVING:
            return
        conn.body_held += size
        self.body_bytes += size
        # One body alone may always arrive (any body within server.max_body_size can get in).
        while self.body_bytes > self.settings.max_pending_body_bytes and self.body_bytes > conn.body_held:
            largest = max(self.arriving, key=_body_held)
            error = self._overloaded("request_bodies_full", "pending body bytes")
            if largest is conn:
                self._forget(conn)
                self._count("body_bytes")
                raise error
            self.shed(largest, "body_bytes", error)

    def shed(self, conn: Guarded, reason: str, error: ApiError | None = None) -> None:
        """Close ``conn`` now: answered with ``error`` when it has a request in progress, else just closed."""
        self._forget(conn)
        self._count(reason)
        if error is None:
            conn.close()
        else:
            conn.cut(error)

    def refused(self) -> None:
        """A new connection answered 503 at once: nothing could be shed."""
        self._count("refused")

    def start_linger(self) -> bool:
        """Whether an answered connection may stay open ``LINGER`` s more, reading and discarding (the
        descriptors for that come out of the headroom kept below the descriptor limit)."""
        if self.lingering < self.linger_limit:
            self.lingering += 1
            return True
        return False

    def linger_done(self) -> None:
        self.lingering -= 1

    # -- inside -------------------------------------------------------------------------------------------

    def _overdue(self, conn: Guarded) -> None:
        if conn.phase is ARRIVING:
            timeout = self.settings.request_timeout
            message = f"the request did not arrive whole within server.request_timeout ({timeout:g} s)"
            self.shed(conn, "request_timeout", ApiError(408, message))

    def _forget(self, conn: Guarded) -> None:
        self.idle.pop(conn, None)
        self.arriving.pop(conn, None)
        self._stop_clock(conn)
        conn.phase = GONE
        self.open -= 1

    def _stop_clock(self, conn: Guarded) -> None:
        if conn.deadline is not None:
            conn.deadline.cancel()
            conn.deadline = None
        self.body_bytes -= conn.body_held
        conn.body_held = 0

    def _overloaded(self, code: str, what: str) -> ApiError:
        retry = str(max(1, round(self.settings.retry_after)))
        message = f"the server is at its limit of {what}; retry later"
        return ApiError(503, message, code=code, headers={"Retry-After": retry})

    def _count(self, reason: str) -> None:
        self.metrics.connections_shed.labels(reason).inc()
        self._unlogged[reason] += 1
        if self._log_pending:
            return
        loop = asyncio.get_running_loop()
        wait = 0.0 if self._last_log is None else self._last_log + LOG_EVERY - loop.time()
        self._log_pending = True
        loop.call_later(max(0.0, wait), self._log_shed)

    def _log_shed(self) -> None:
        self._log_pending = False
        self._last_log = asyncio.get_running_loop().time()
        shed, self._unlogged = dict(self._unlogged), Counter()
        log.warning(
            "connections_shed",
            **shed,
            open=self.open,
            limit=self.limit,
            pending_body_bytes=self.body_bytes,
            message="idle, slow or oversized connections closed to keep the server reachable",
        )


def _body_held(conn: Guarded) -> int:
    return conn.body_held


def _refusal_bytes(retry_after: float) -> bytes:
    """The whole 503 answer to a connection the cap has no room for, written before its request is read."""
    body = orjson.dumps(
        {
            "error": {
                "code": "too_many_connections",
                "message": "the server is at its limit of open connections and none is idle; retry later",
            }
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {max(1, round(retry_after))}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body
