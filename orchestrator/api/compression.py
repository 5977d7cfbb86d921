"""gzip for REST answers, when the client accepts it and the body is large enough to be worth it.

Topology JSON deflates about tenfold (the 10-host process view: ~1 MB → under 100 KB), so a dashboard
polling it over a slow link waits a tenth as long. Small answers go out plain: compressing a 300-byte ack
costs more than it saves. Bodies of 64 KB or more are compressed in a worker thread (zlib releases the
GIL), so the event loop keeps serving meanwhile, and the last few are kept compressed: many readers of the
same view at the same seq compress it once. Bodies of a megabyte or more and streamed answers are deflated
by ISA-L (``isal``, standard gzip output, the GIL released too): at its level 1 a 10 MB full view takes
7.5 ms instead of zlib level 1's 51 ms, and comes out 6 % smaller; a 2.8 MB history answer 1.9 ms
instead of 9.2. Smaller bodies keep zlib level 6 (ISA-L's best ratio is 13 % behind it on a 55 KB report).

Streamed answers (``request.respond()`` then ``send``) are not touched by the middleware: their headers are
out before the body exists. A handler that streams opens a :class:`StreamedAnswer` instead, which gzips the
chunks as one stream when the client accepts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections import OrderedDict
from typing import Any

from isal import isal_zlib
from sanic import Request, Sanic
from sanic.response import BaseHTTPResponse

LEVEL = 6  # zlib: ~12x on topology JSON (see benchmarks/RESULTS.md)
# Bodies of a megabyte or more (whole views, history answers) and streamed answers: ISA-L at level 1. A 10
# MB full view at 100 hosts: zlib took ~120 ms of CPU at level 6 and ~40-51 ms at level 1; ISA-L 7.5 ms.
LARGE_LEVEL = 1
LARGE_SIZE = 1 << 20
THREAD_SIZE = 64 * 1024
CACHE_ENTRIES = 8
COMPRESSIBLE = ("application/json", "text/", "application/javascript", "image/svg+xml")


def setup_compression(app: Sanic) -> None:
    app.ctx.gzip_cache = GzipCache()
    app.register_middleware(compress_response, "response")


def accepts_gzip(request: Request) -> bool:
    """Whether the request's ``Accept-Encoding`` allows gzip (an explicit ``q=0`` refuses it)."""
    for part in request.headers.get("accept-encoding", "").lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            try:
                return not params or float(q) > 0
            except ValueError:
                return True
    return False


async def compress_response(request: Request, response: BaseHTTPResponse) -> None:
    server = request.app.ctx.settings.server
    if response is None or not server.gzip:
        return
    body = response.body
    if body is None:  # streamed: headers are already decided
        return
    if not _worth_compressing(request, response, body, server.gzip_min_size):
        if len(body) >= server.gzip_min_size and _compressible(response):
            response.headers["Vary"] = _vary(response)
        return
    response.body = await request.app.ctx.gzip_cache.compress(bytes(body))
    response.headers["Content-Encoding"] = "gzip"
    response.headers["Vary"] = _vary(response)


def _worth_compressing(request: Request, response: BaseHTTPResponse, body: bytes, min_size: int) -> bool:
    return (
        len(body) >= min_size
        and request.method != "HEAD"
        and response.status not in (204, 206, 304)
        and "content-encoding" not in response.headers
        and _compressible(response)
        and accepts_gzip(request)
    )


def _compressible(response: BaseHTTPResponse) -> bool:
    return (response.content_type or "").startswith(COMPRESSIBLE)


def _vary(response: BaseHTTPResponse) -> str:
    current = response.headers.get("vary", "")
    if "accept-encoding" in current.lower():
        return current
    return f"{current}, Accept-Encoding" if current else "Accept-Encoding"


class GzipCache:
    """The last few large bodies, compressed, by their digest."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self._entries = entries
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()

    async def compress(self, body: bytes) -> bytes:
        if len(body) < THREAD_SIZE:
            return gzip_bytes(body)
        key = hashlib.blake2b(body, digest_size=16).digest()
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        compressed = await asyncio.to_thread(gzip_bytes, body)
        self._cache[key] = compressed
        while len(self._cache) > self._entries:
            self._cache.popitem(last=False)
        return compressed


def gzip_bytes(body: bytes) -> bytes:
    """``body`` as one gzip member: by zlib at :data:`LEVEL`, from :data:`LARGE_SIZE` by ISA-L at
    :data:`LARGE_LEVEL`."""
    compressor = _gzip_compressor(large=len(body) >= LARGE_SIZE)
    return compressor.compress(body) + compressor.flush()  # type: ignore[no-any-return]


def _gzip_compressor(large: bool) -> Any:
    if large:
        return isal_zlib.compressobj(LARGE_LEVEL, isal_zlib.DEFLATED, 31)
    return zlib.compressobj(LEVEL, zlib.DEFLATED, 31)  # 31: a gzip header and trailer


class GzipChunks:
    """One gzip stream over the chunks of a streamed answer: ``headers()`` for ``request.respond``,
    ``compress(chunk)`` for each chunk, ``finish()`` for the last bytes. With ``enabled=False`` it
    passes chunks through unchanged. Compressed as large bodies are: only whole views and lists are streamed."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._compressor = _gzip_compressor(large=True) if enabled else None

    @classmethod
    def for_request(cls, request: Request) -> GzipChunks:
        return cls(request.app.ctx.settings.server.gzip and accepts_gzip(request))

    def headers(self) -> dict[str, str]:
        return {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if self.enabled else {}

    async def compress(self, chunk: bytes) -> bytes:
        if self._compressor is None:
            return chunk
        if len(chunk) >= THREAD_SIZE:
            return await asyncio.to_thread(self._compressor.compress, chunk)
        return self._compressor.compress(chunk)

    def finish(self) -> bytes:
        return self._compressor.flush() if self._compressor is not None else b""


class StreamedAnswer:
    """A chunked answer, gzipped as one stream for clients that accept it::

    answer = await StreamedAnswer.open(request, "application/json")
    await answer.send(chunk)  # as many as needed
    await answer.finish()
    return None  # the answer went out: a returned response would make Sanic log an error for each one
    """

    def __init__(self, response, gzip: GzipChunks) -> None:
        self.response = response
        self._gzip = gzip

    @classmethod
    async def open(cls, request: Request, content_type: str) -> StreamedAnswer:
        gzip = GzipChunks.for_request(request)
        return cls(await request.respond(content_type=content_type, headers=gzip.headers()), gzip)

    async def send(self, chunk: bytes) -> None:
        data = await self._gzip.compress(chunk)
        if data:  # zlib keeps small inputs until it has a block's worth
            await self.response.send(data)

    async def finish(self) -> None:
        tail = self._gzip.finish()
        if tail:
            await self.response.send(tail)
        await self.response.eof()
