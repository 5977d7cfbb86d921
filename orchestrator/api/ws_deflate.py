"""permessage-deflate (RFC 7692) on the WebSocket feed.

Sanic 25 hands the handshake to the ``websockets`` package but offers it no extensions, so every frame goes
out uncompressed (a 50-host snapshot is over 1 MB; topology JSON deflates about tenfold). This protocol
does the same handshake with permessage-deflate available: a client that offers it (browsers, the
``websockets`` client by default) gets compressed frames, a client that does not is served plain.

Memory per connection is kept small the way ``websockets`` recommends (12-bit windows, ``memLevel`` 5:
about 64 KB per client instead of ~320 KB at zlib's defaults); level 1, because every client's copy of a
message is compressed separately and the publish tick must stay short at 1,000 clients.
"""

from __future__ import annotations

from collections.abc import Sequence

from sanic.exceptions import SanicException
from sanic.log import websockets_logger
from sanic.server.protocols.websocket_protocol import WebSocketProtocol
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

WINDOW_BITS = 12
COMPRESS_SETTINGS = {"memLevel": 5, "level": 1}


def deflate_extension() -> ServerPerMessageDeflateFactory:
    return ServerPerMessageDeflateFactory(
        server_max_window_bits=WINDOW_BITS,
        client_max_window_bits=WINDOW_BITS,
        compress_settings=COMPRESS_SETTINGS,
    )


class DeflateWebSocketProtocol(WebSocketProtocol):
    """Sanic's WebSocket protocol with permessage-deflate negotiated at the handshake (when
    ``app.config.WEBSOCKET_COMPRESSION`` is true, the default)."""

    async def websocket_handshake(self, request, subprotocols: Sequence[str] | None = None):
        enabled = getattr(request.app.config, "WEBSOCKET_COMPRESSION", True)
        try:
            ws_proto = ServerProtocol(
                extensions=[deflate_extension()] if enabled else None,
                subprotocols=[Subprotocol(s) for s in subprotocols] if subprotocols is not None else None,
                max_size=self.websocket_max_size,
                state=State.OPEN,
                logger=websockets_logger,
            )
            resp = ws_proto.accept(self.sanic_request_to_ws_request(request))
        except Exception:
            raise SanicException("Failed to open a WebSocket connection.", status_code=500) from None
        if not 100 <= resp.status_code <= 299:
            raise SanicException(bytes(resp.body or b""), resp.status_code)
        head = f"HTTP/1.1 {resp.status_code} {resp.reason_phrase}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in resp.headers.items()) + "\r\n"
        await self.send(head.encode())
        self.websocket = WebsocketImplProtocol(
            ws_proto,
            ping_interval=self.websocket_ping_interval,
            ping_timeout=self.websocket_ping_timeout,
            close_timeout=self.websocket_timeout,
        )
        loop = getattr(getattr(request, "transport", None), "loop", None)
        await self.websocket.connection_made(self, loop=loop)
        self.websocket_url = self._http.request.url
        self.websocket_peer = f"{id(self):X}"[-5:-1] + "unx"
        if ip := self._http.request.client_ip:
            self.websocket_peer = f"{ip}:{self._http.request.port}"
        self.log_websocket("OPEN")
        return self.websocket
