"""``GET /api/v1/ws``: the WebSocket feed. Parses what the client asks for and hands it to the hub.

The hub (``app.ctx.state.hub``) does the rest: snapshots, diffs, resume, slow clients. Authentication is a
middleware's business and has happened before the upgrade.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import structlog
from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import WebsocketClosed
from websockets.exceptions import ConnectionClosed

from orchestrator.api.errors import error_response
from orchestrator.api.hub import CLOSE_GOING_AWAY, Hub, View, ViewError

log = structlog.get_logger("orchestrator.api.ws")

CLOSE_POLICY_VIOLATION = 1008


WS_PATH = "/api/v1/ws"


def setup_ws(app: Sanic) -> None:
    app.add_websocket_route(websocket_feed, WS_PATH, name="websocket_feed")
    app.register_middleware(_refuse_when_full, "request")


async def _refuse_when_full(request: Request) -> HTTPResponse | None:
    """503 + Retry-After before the upgrade once ``websocket.max_clients`` are connected: every client costs
    memory and a share of each broadcast, so their number has a bound."""
    if request.path != WS_PATH:
        return None
    state = request.app.ctx.state
    limit = state.settings.websocket.max_clients
    if state.hub.client_count < limit:
        return None
    state.metrics.websocket_closes.labels("capacity").inc()
    log.warning("websocket_refused", reason="max_clients", clients=limit)
    return error_response(
        503,
        "too_many_clients",
        f"the server serves at most {limit} WebSocket clients (websocket.max_clients); try again later",
        headers={"Retry-After": "5"},
    )


class SnapshotPacer:
    """At most one fresh snapshot per ``websocket.resync_interval`` for one client: a ``resync`` or
    ``subscribe`` sooner than that is carried out when the interval has passed (the latest one wins), so a
    17-byte message cannot make the server send megabytes in a loop."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = 0.0
        self.pending: Callable[[], None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def request(self, action: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self.next_at and self.timer is None:
            self.next_at = now + self.interval
            action()
            return
        self.pending = action
        if self.timer is None:
            self.timer = loop.call_at(self.next_at, self._fire)

    def _fire(self) -> None:
        self.timer = None
        action, self.pending = self.pending, None
        if action is not None:
            self.request(action)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.pending = None


class SanicConnection:
    """A Sanic websocket as the hub's :class:`~orchestrator.api.hub.Connection`.

    ``send`` writes the hub's orjson bytes as a text frame without decoding them to ``str`` first (Sanic's
    ``send`` only makes text frames from ``str``, which it then encodes again: two copies per client of
    every message). It follows Sanic's own ``send`` and falls back to it on anything unexpected.
    """

    __slots__ = ("ws",)

    def __init__(self, ws) -> None:
        self.ws = ws

    async def send(self, message: bytes) -> None:
        ws = self.ws
        proto = getattr(ws, "ws_proto", None)
        mutex = getattr(ws, "conn_mutex", None)
        if proto is None or mutex is None or not hasattr(ws, "send_data"):
            await ws.send(message.decode())
            return
        async with mutex:
            if proto.state.name != "OPEN":
                raise ConnectionError("websocket is closed")
            proto.send_text(message)
            await ws.send_data(proto.data_to_send())

    def close(self, code: int, reason: str) -> None:
        # Writes the close frame behind whatever is buffered and lets Sanic's closer finish the TCP side:
        # never waits on a peer that may not read again.
        self.ws.end_connection(code, reason)

    @property
    def is_open(self) -> bool:
        proto = getattr(self.ws, "ws_proto", None)
        return proto is not None and proto.state.name == "OPEN"


async def websocket_feed(request: Request, ws) -> None:
    hub: Hub = request.app.ctx.state.hub
    connection = SanicConnection(ws)
    try:
        view = View.parse(request.args.get("level"), request.args.get("host"), request.args.get("external"))
    except ViewError as exc:
        await connection.send(hub.error_message(exc.code, str(exc)))
        hub.state.metrics.websocket_closes.labels("invalid_view").inc()
        await ws.close(CLOSE_POLICY_VIOLATION, "invalid view")
        return
    since, since_error = _parse_since(request.args.get("since"))
    if since_error:
        await connection.send(hub.error_message("invalid_since", since_error))
    client = hub.connect(connection, view, since)
    pacer = SnapshotPacer(request.app.ctx.state.settings.websocket.resync_interval)
    try:
        while True:
            message = await ws.recv()
            if message is None:
                continue
            _handle(hub, client, message, request.app.ctx.state.settings.websocket.max_message_size, pacer)
    except (ConnectionClosed, WebsocketClosed):
        pass  # the client went away
    except asyncio.CancelledError:
        # Sanic cancels handlers when the server stops (it would close with 1000): say "going away".
        if connection.is_open:
            connection.close(CLOSE_GOING_AWAY, "server shutting down")
        raise
    finally:
        pacer.cancel()
        hub.disconnect(client)


def _parse_since(text: str | None) -> tuple[int | None, str | None]:
    if text is None or text == "":
        return None, None
    try:
        since = int(text)
    except ValueError:
        since = -1
    if since < 0:
        return None, f"since must be a non-negative integer seq, got {text!r}; sending a snapshot"
    return since, None


def _handle(hub: Hub, client, message: str | bytes, max_size: int, pacer: SnapshotPacer) -> None:
    """One client message: ping, resync or subscribe; anything else is answered with an ``error``."""
    if len(message) > max_size:
        hub.reply(
            client, "error", {"code": "message_too_large", "message": f"messages are limited to {max_size} bytes"}
        )
        return
    try:
        parsed = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        hub.reply(client, "error", {"code": "malformed_json", "message": f"not valid JSON: {exc}"})
        return
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    if kind == "ping":
        hub.reply(client, "pong")
    elif kind == "resync":
        pacer.request(lambda: hub.resync(client))
    elif kind == "subscribe":
        try:
            view = View.parse(parsed.get("level"), parsed.get("host"), parsed.get("external"))
        except ViewError as exc:
            hub.reply(client, "error", {"code": exc.code, "message": str(exc)})
            return
        pacer.request(lambda: hub.subscribe(client, view))
    else:
        hub.reply(
            client,
            "error",
            {"code": "unknown_message", "message": 'expected {"type": "ping" | "resync" | "subscribe"}'},
        )
