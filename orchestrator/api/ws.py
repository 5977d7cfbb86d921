"""``GET /api/v1/ws``: the WebSocket feed. Parses what the client asks for and hands it to the hub.

The hub (``app.ctx.state.hub``) does the rest: snapshots, diffs, resume, slow clients. Authentication is a
middleware's business and has happened before the upgrade.
"""

from __future__ import annotations

import asyncio

import orjson
import structlog
from sanic import Request, Sanic
from sanic.exceptions import WebsocketClosed
from websockets.exceptions import ConnectionClosed

from orchestrator.api.hub import CLOSE_GOING_AWAY, Hub, View, ViewError

log = structlog.get_logger("orchestrator.api.ws")

CLOSE_POLICY_VIOLATION = 1008


def setup_ws(app: Sanic) -> None:
    app.add_websocket_route(websocket_feed, "/api/v1/ws", name="websocket_feed")


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
    try:
        while True:
            message = await ws.recv()
            if message is None:
                continue
            _handle(hub, client, message, request.app.ctx.state.settings.websocket.max_message_size)
    except (ConnectionClosed, WebsocketClosed):
        pass  # the client went away
    except asyncio.CancelledError:
        # Sanic cancels handlers when the server stops (it would close with 1000): say "going away".
        if connection.is_open:
            connection.close(CLOSE_GOING_AWAY, "server shutting down")
        raise
    finally:
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


def _handle(hub: Hub, client, message: str | bytes, max_size: int) -> None:
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
        hub.resync(client)
    elif kind == "subscribe":
        try:
            view = View.parse(parsed.get("level"), parsed.get("host"), parsed.get("external"))
        except ViewError as exc:
            hub.reply(client, "error", {"code": exc.code, "message": str(exc)})
            return
        hub.subscribe(client, view)
    else:
        hub.reply(
            client,
            "error",
            {"code": "unknown_message", "message": 'expected {"type": "ping" | "resync" | "subscribe"}'},
        )
