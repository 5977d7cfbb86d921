"""The server's connection protocol: Sanic's HTTP/1.1 (and WebSocket, with permessage-deflate) protocol that
reports each connection's life to the app's :class:`~orchestrator.api.connections.ConnectionGuard`: accepted,
a request's first byte, the request arrived whole, body bytes held, answered and idle, closed."""

from __future__ import annotations

import asyncio

from sanic.http import Http, Stage

from orchestrator.api.connections import ARRIVING, BUSY, IDLE, LINGER, ConnectionGuard
from orchestrator.api.ws_deflate import DeflateWebSocketProtocol
from orchestrator.contract.errors import ApiError


class GuardedHttp(Http):
    """Sanic's request/response cycle, telling the protocol where a request stands."""

    protocol: GuardedProtocol

    def init_for_request(self) -> None:
        super().init_for_request()
        self.protocol.next_request()

    async def http1_request_header(self) -> None:
        await super().http1_request_header()
        if not self.request_body:
            self.protocol.request_whole()

    async def read(self) -> bytes | None:
        data = await super().read()
        # Bytes read while the handler runs are kept by it; after the answer they are being discarded.
        if data and self.stage is Stage.HANDLER:
            try:
                self.protocol.guard.hold_body(self.protocol, len(data))
            except ApiError:
                self.protocol.cut_short = True
                self.keep_alive = False
                self.request_body = None  # answered and closed: the rest is not read
                raise
        if not self.request_body or (self.request_body is True and not self.request_bytes_left):
            self.protocol.request_whole()
        return data


class GuardedProtocol(DeflateWebSocketProtocol):
    """One connection, counted and bounded by the app's guard (``app.ctx.connections``)."""

    HTTP_CLASS = GuardedHttp
    # Sanic's metaclass gives every class empty __slots__: what a connection keeps must be named here.
    __slots__ = ("began", "body_held", "cut_short", "deadline", "guard", "lingering", "phase", "refused")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.guard: ConnectionGuard = self.app.ctx.connections
        self.phase = IDLE
        self.began = 0.0
        self.body_held = 0
        self.deadline: asyncio.TimerHandle | None = None
        self.refused = False  # answered 503 at once, never served
        self.cut_short = False  # a request in progress answered 408/503 by the guard, the rest not read
        self.lingering = False

    def connection_made(self, transport) -> None:
        if self.guard.admit(self):
            super().connection_made(transport)
            return
        # Nothing could be shed: answer 503 before reading anything.
        self.refused = True
        self.guard.refused()
        transport.write(self.guard.refusal)
        if not self._linger(transport):
            transport.close()

    def _linger(self, transport) -> bool:
        """Half-close after the answer and read and discard what the client still sends for a moment: closing
        with unread bytes would send a reset, and the client could lose the answer to it."""
        if not transport.can_write_eof() or not self.guard.start_linger():
            return False
        self.lingering = True
        transport.write_eof()
        self.loop.call_later(LINGER, _abort, transport)
        return True

    def close(self, timeout: float | None = None) -> None:
        if self.cut_short and self.websocket is None and self.transport is not None:
            self.cut_short = False
            if not self.transport.is_closing() and self._linger(self.transport):
                if self._callback_check_timeouts:
                    self._callback_check_timeouts.cancel()
                return
        super().close(timeout)

    def data_received(self, data: bytes) -> None:
        if self.refused or self.lingering:
            return
        if self.phase is IDLE and data:
            self.guard.begin(self)
        super().data_received(data)

    def eof_received(self) -> bool | None:
        if self.refused or self.lingering:
            return False  # the client is done too: close
        return super().eof_received()

    def connection_lost(self, exc) -> None:
        if self.lingering:
            self.guard.linger_done()
        if self.refused:
            return
        self.guard.lost(self)
        super().connection_lost(exc)

    def next_request(self) -> None:
        """The cycle is ready for the next request: one already buffered has begun, else the connection idles."""
        if self.phase is BUSY:
            if self.recv_buffer:
                self.guard.begin(self)
            else:
                self.guard.rest(self)

    def request_whole(self) -> None:
        if self.phase is ARRIVING:
            self.guard.whole(self)

    def cut(self, error: ApiError) -> None:
        """End the request in progress: answered with ``error`` when a response can still be written, then
        closed without reading the rest."""
        self.cut_short = True
        http = self._http
        if http is not None:
            http.exception = error
            http.keep_alive = False
            http.request_body = None
        if self._task is not None:
            self._task.cancel()
        else:
            self.close()


def _abort(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.abort()
