"""Compression benchmark: bytes on the wire for the topology views, plain vs gzip (REST) and
permessage-deflate (WebSocket), and what compressing costs per request.

A server (child process, loopback) is loaded with one realistic report per simulated host, then each view
is fetched with ``Accept-Encoding: identity`` and ``gzip`` (raw bytes counted, not decoded); the WebSocket
snapshot is read once with permessage-deflate and once without, its wire size taken from the socket's
received bytes.

    python -m benchmarks.bench_compression [--hosts 10 50] [--samples 10]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from benchmarks.bench_query import load, wait_published
from benchmarks.common import Server, percentile
from orchestrator.probe.fleet import Fleet

LEVELS = ("host", "container", "process")


def fetch(client: httpx.Client, path: str, accept: str) -> tuple[int, float]:
    started = time.perf_counter()
    with client.stream("GET", path, headers={"Accept-Encoding": accept}) as response:
        size = sum(len(chunk) for chunk in response.iter_raw())
    return size, time.perf_counter() - started


def rest_sizes(server: Server, samples: int) -> list[dict]:
    rows = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for level in LEVELS:
            path = f"/api/v1/query/topology?level={level}"
            plain = [fetch(client, path, "identity") for _ in range(samples)]
            zipped = [fetch(client, path, "gzip") for _ in range(samples)]
            rows.append(
                {
                    "level": level,
                    "plain_bytes": plain[0][0],
                    "gzip_bytes": zipped[0][0],
                    "ratio": round(plain[0][0] / zipped[0][0], 1),
                    "plain_p50_ms": round(percentile([t for _, t in plain], 50) * 1000, 1),
                    "gzip_p50_ms": round(percentile([t for _, t in zipped], 50) * 1000, 1),
                }
            )
    return rows


async def ws_frame_bytes(server: Server) -> dict:
    """Wire bytes of the first (snapshot) message, read from a raw socket under each negotiation."""
    out = {}
    host, port = "127.0.0.1", server.port
    for name, offer in (
        ("plain", ""),
        ("deflate", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"),
    ):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            (
                "GET /api/v1/ws?level=process HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"{offer}\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        negotiated = b"permessage-deflate" in head
        first = await reader.readexactly(2)
        length = first[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        await reader.readexactly(length)
        out[name] = {"negotiated": negotiated, "frame_bytes": length, "compressed": bool(first[0] & 0x40)}
        writer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    for hosts in args.hosts:
        with Server(persist=False) as server:
            fleet = Fleet(hosts)
            asyncio.run(load(server, fleet, hosts, time.time()))
            with httpx.Client(base_url=server.url, timeout=60) as client:
                wait_published(client, hosts)
            for row in rest_sizes(server, args.samples):
                print({"hosts": hosts, "rest": True, **row})
            print({"hosts": hosts, "websocket_process_snapshot": asyncio.run(ws_frame_bytes(server))})


if __name__ == "__main__":
    main()
