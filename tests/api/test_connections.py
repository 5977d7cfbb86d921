"""Connections within bounds (issue 16 #4): a request arrives whole within ``server.request_timeout`` however
slowly it trickles; idle and slow connections are shed before they lock new clients out, below the descriptor
limit; the bytes of unfinished bodies are bounded server-wide. Raw sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket

import httpx
import orjson
import websockets
from structlog.testing import capture_logs

from tests.runtime.test_metrics import samples, scrape
from tests.support import make_settings, report, wait_for

JSON = {"Content-Type": "application/json"}
REGISTRATION = orjson.dumps({"agent_id": "agent-1", "hostname": "host-1"})


async def read_answer(reader: asyncio.StreamReader, within: float) -> tuple[int, dict, dict]:
    """The status, headers and JSON body of the one answer on a raw connection, read until the server closes."""
    raw = await asyncio.wait_for(reader.read(), within)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, orjson.loads(body)


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """Send ``data`` a byte at a time: each byte restarts Sanic's own request timeout."""
    for byte in data:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(every)


async def test_a_request_trickling_in_is_answered_408_at_the_deadline(start_server):
    server = start_server(make_settings(server={"request_timeout": "1s"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    # Headers a byte every 50 ms: 400 bytes would take 20 s, the deadline is 1 s from the first byte.
    sending = asyncio.create_task(trickle(writer, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 360, 0.05))
    try:
        status, _, body = await read_answer(reader, within=15)
    finally:
        sending.cancel()
        writer.close()
    assert status == 408
    assert body["error"]["code"] == "request_timeout"
    assert "server.request_timeout" in body["error"]["message"]


async def test_a_body_trickling_in_is_answered_408_at_the_deadline(start_server):
    server = start_server(make_settings(server={"request_timeout": "1s"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
    )
    sending = asyncio.create_task(trickle(writer, b" " * 400, 0.05))
    try:
        status, _, body = await read_answer(reader, within=15)
    finally:
        sending.cancel()
        writer.close()
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert shed(server, "request_timeout") == 1


def open_connections(server, state: str) -> float:
    return samples(scrape(server)["app_http_connections_open"], state=state)[0].value


def shed(server, reason: str) -> float:
    return samples(scrape(server)["app_http_connections_shed"], reason=reason)[0].value


async def test_idle_and_slow_connections_beyond_the_cap_are_shed_so_new_clients_get_in(start_server):
    with capture_logs() as logs:
        server = start_server(make_settings(server={"max_open_connections": 20}))
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(30)]  # connect, say nothing
        slow = []
        for _ in range(10):  # half a request each
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            slow.append((reader, writer))
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await client.get("/health")).status_code == 200
            registered = await client.post("/api/v1/agents/register", content=REGISTRATION, headers=JSON)
            assert registered.status_code == 201
            posted = await client.post("/api/v1/reports", content=orjson.dumps(report()), headers=JSON)
            assert posted.status_code == 202, posted.text
        families = scrape(server)
        assert samples(families["app_http_connections_shed"], reason="idle")[0].value >= 10
        assert sum(s.value for s in families["app_http_connections_open"].samples) <= 20
        assert samples(families["app_http_connections_limit"])[0].value == 20
        wait_for(lambda: [e for e in logs if e["event"] == "connections_shed"])
    shed_lines = [e for e in logs if e["event"] == "connections_shed"]
    assert len(shed_lines) < 10, "one line per shed connection would let a flood flood the log"
    assert shed_lines[0]["limit"] == 20 and shed_lines[0]["idle"] >= 1
    for _, writer in idle + slow:
        writer.close()


async def test_a_slow_request_shed_at_the_cap_is_answered_503_with_retry_after(start_server):
    server = start_server(make_settings(server={"max_open_connections": 2}))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
    await writer.drain()
    wait_for(lambda: open_connections(server, "arriving") == 1)
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/api/v1/ws") as ws:
        await ws.recv()  # the second connection, busy: only the slow one can make room now
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await client.get("/health")).status_code == 200
        status, headers, body = await read_answer(reader, within=10)
    assert status == 503 and headers["retry-after"] == "1"
    assert body["error"]["code"] == "too_many_connections"
    assert wait_for(lambda: shed(server, "slow") == 1)
    writer.close()


async def test_when_every_connection_is_busy_a_new_one_is_answered_503_with_retry_after(start_server):
    server = start_server(make_settings(server={"max_open_connections": 2}))
    url = f"ws://127.0.0.1:{server.port}/api/v1/ws"
    async with websockets.connect(url) as first, websockets.connect(url) as second:
        await first.recv(), await second.recv()  # both snapshots: two busy connections, nothing to shed
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            refused = await client.get("/health")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "too_many_connections"

    def counted():
        # /metrics is refused too until the WebSockets' connections are gone.
        if httpx.get(server.url + "/metrics").status_code != 200:
            return False
        return shed(server, "refused") >= 1

    wait_for(counted)


async def test_unfinished_bodies_past_the_budget_shed_the_largest_and_a_small_post_gets_in(start_server):
    budget = 1024 * 1024
    server = start_server(make_settings(server={"max_pending_body_bytes": budget}))
    head = (
        b"POST /api/v1/agents/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000\r\n\r\n"
    )

    def pending() -> float:
        return samples(scrape(server)["app_http_request_body_pending_bytes"])[0].value

    holders = []
    for n in range(4):  # ~1 MB each of 10 MB bodies that never finish: from the second on, past the budget
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head + b" " * 1_040_000)
        await writer.drain()
        holders.append((reader, writer))
        wait_for(lambda: pending() == 1_040_000 and shed(server, "body_bytes") == n, timeout=15)  # noqa: B023 (called at once)
    # A 20 KB registration is past the budget too: the largest holder goes, not the newcomer.
    padded = orjson.dumps({"agent_id": "agent-1", "hostname": "host-1", "metadata": {"pad": "x" * 20_000}})
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        registered = await client.post("/api/v1/agents/register", content=padded, headers=JSON)
    assert registered.status_code == 201
    for reader, _ in holders:  # each was the largest when another went past the budget
        status, headers, body = await read_answer(reader, within=15)
        assert status == 503 and headers["retry-after"] == "1"
        assert body["error"]["code"] == "request_bodies_full"
    assert shed(server, "body_bytes") == 4 and pending() == 0
    for _, writer in holders:
        writer.close()


def test_under_a_low_descriptor_limit_idle_connections_cannot_lock_out_health_and_reports(server_process):
    # A soft limit the server cannot raise (hard = soft = 256): the cap goes below it, so 300 idle
    # connections are shed instead of the accept loop failing with EMFILE and every new client waiting.
    server = server_process(open_files=256).wait_healthy()
    limit = samples(scrape(server)["app_http_connections_limit"])[0].value
    assert limit <= 256 - 64
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/health").status_code == 200
            assert client.post("/api/v1/reports", content=orjson.dumps(report()), headers=JSON).status_code == 202
        assert shed(server, "idle") >= 300 - limit
    finally:
        for sock in idle:
            sock.close()
