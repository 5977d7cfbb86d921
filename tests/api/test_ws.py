"""Integration tests for ``GET /api/v1/ws``: a real server, real sockets, real WebSocket frames."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support import make_settings, report


@pytest.fixture
def start_ws_server(start_server):
    def start(**websocket):
        return start_server(make_settings(websocket={"broadcast_interval": "50ms", **websocket}))

    return start


@pytest.fixture
def ws_server(start_ws_server):
    return start_ws_server()


def ws_url(server, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/api/v1/ws" + (f"?{query}" if query else "")


async def recv(ws, timeout: float = 5.0) -> dict:
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws, kind: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = await recv(ws, max(0.01, deadline - time.monotonic()))
        if message["type"] == kind:
            return message


async def post(server, body: dict) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.post(
            "/api/v1/reports", content=orjson.dumps(body), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 202, response.text


async def rest_topology(server, query: str = "") -> dict:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.get("/api/v1/query/topology" + (f"?{query}" if query else ""))
    assert response.status_code == 200
    return response.json()["topology"]


def host_report(n: int, pids=(100,), connections=(), cpu: float = 1.0, containers=(), cmdline: str = "") -> dict:
    return report(
        f"agent-{n}",
        f"host-{n}",
        host_info={"cpu_percent": cpu, "ip_addresses": [f"10.0.0.{n}"]},
        docker_info={
            "containers": [
                {"id": cid * 64, "name": f"c{cid}", "image": "nginx", "state": "running"} for cid in containers
            ]
        },
        processes_info={
            "processes": [
                {
                    "pid": pid,
                    "name": f"p{pid}",
                    "cpu_percent": cpu,
                    "cmdline": cmdline,
                    **({"container_id": containers[0] * 64} if containers and pid % 2 else {}),
                }
                for pid in pids
            ]
        },
        network_info={"connections": list(connections)},
    )


def listen(pid: int, port: int) -> dict:
    return {"pid": pid, "protocol": "tcp", "local_ip": "0.0.0.0", "local_port": port, "state": "LISTEN"}


def connect_to(pid: int, n: int, port: int) -> dict:
    return {
        "pid": pid,
        "protocol": "tcp",
        "local_ip": "10.0.0.9",
        "local_port": 40000 + pid,
        "remote_ip": f"10.0.0.{n}",
        "remote_port": port,
        "state": "ESTABLISHED",
    }


class Mirror:
    """A client's copy of the topology: the first snapshot plus every diff, checked to chain by seq."""

    def __init__(self, snapshot_message: dict) -> None:
        assert snapshot_message["type"] == "topology_update"
        self.seq = snapshot_message["seq"]
        self.nodes = dict(snapshot_message["payload"]["nodes"])
        self.edges = dict(snapshot_message["payload"]["edges"])

    def apply(self, message: dict) -> None:
        if message["type"] != "topology_diff":
            return
        diff = message["payload"]
        assert diff["from_seq"] == self.seq, "a diff went missing"
        self.seq = message["seq"]
        for items, section in ((self.nodes, diff["nodes"]), (self.edges, diff["edges"])):
            items.update(section["added"])
            items.update(section["updated"])
            for item_id in section["removed"]:
                del items[item_id]

    async def follow_until(self, ws, seq: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.seq < seq:
            self.apply(await recv(ws, max(0.01, deadline - time.monotonic())))


async def wait_quiet(server, checks: int = 4) -> int:
    """Wait until the published seq stops moving; return it."""
    last, same = -1, 0
    while same < checks:
        await asyncio.sleep(0.06)
        seq = server.call(lambda: server.state.topology.seq)
        same = same + 1 if seq == last else 0
        last = seq
    return last


# -- snapshot and diffs -------------------------------------------------------------------------------


async def test_first_message_is_a_topology_update_snapshot(ws_server):
    await post(ws_server, host_report(1))
    await wait_quiet(ws_server)
    async with websockets.connect(ws_url(ws_server)) as ws:
        first = await recv(ws)
    assert first["type"] == "topology_update"
    assert {"nodes", "edges", "timestamp"} <= set(first["payload"])
    assert "host:host-1" in first["payload"]["nodes"] and first["seq"] >= 1


@pytest.mark.parametrize("query", ["", "level=host&external=group", "level=container"])
async def test_a_whole_views_first_snapshot_is_the_rest_bodys_bytes_at_the_same_seq(ws_server, query):
    # Encoded in slices for the feed as for REST (one encoder, each item's JSON kept): the same bytes.
    for n in range(1, 6):
        await post(ws_server, host_report(n, pids=(100, 101, 102), containers=(str(n),)))
    await wait_quiet(ws_server)
    async with httpx.AsyncClient(base_url=ws_server.url, timeout=10) as http:
        for _attempt in range(3):  # a publish between the two reads: read both again
            async with websockets.connect(ws_url(ws_server, query), compression=None) as ws:
                message = await asyncio.wait_for(ws.recv(), 5)
            rest = (await http.get("/api/v1/query/topology" + (f"?{query}" if query else ""))).content
            message = message.encode() if isinstance(message, str) else message
            if orjson.loads(message)["seq"] == orjson.loads(rest)["topology"]["seq"]:
                break
    head, _, payload = message.partition(b',"payload":')
    assert head.startswith(b'{"type":"topology_update"') and payload[-1:] == b"}"
    assert payload[:-1] == rest[len(b'{"topology":') : -1]


@pytest.mark.parametrize("level", ["process", "container", "host"])
async def test_diffs_applied_in_order_equal_rest_topology_at_same_seq(ws_server, level):
    async with websockets.connect(ws_url(ws_server, f"level={level}")) as ws:
        mirror = Mirror(await recv(ws))
        steps = [
            host_report(1, pids=(100, 101), connections=[listen(101, 5432)], containers=("a",)),
            host_report(2, pids=(200,), connections=[connect_to(200, 1, 5432)]),
            host_report(1, pids=(101,), connections=[listen(101, 5432)], cpu=50.0, containers=("a",)),  # 100 gone
            host_report(2, pids=(200,), connections=[]),  # the edge goes
            host_report(3, pids=(300,), connections=[connect_to(300, 9, 443)]),  # to an external node
        ]
        removed_seen = False
        for body in steps:
            await post(ws_server, body)
            seq = await wait_quiet(ws_server, checks=2)
            before = set(mirror.nodes) | set(mirror.edges)
            await mirror.follow_until(ws, seq)
            removed_seen |= bool(before - set(mirror.nodes) - set(mirror.edges))
            rest = await rest_topology(ws_server, f"level={level}")
            assert rest["seq"] == mirror.seq
            assert mirror.nodes == rest["nodes"]
            assert mirror.edges == rest["edges"]
        assert removed_seen


def to_public(pid: int, ip: str, port: int, n: int = 3) -> dict:
    return {
        "pid": pid,
        "protocol": "tcp",
        "local_ip": f"10.0.0.{n}",
        "local_port": 30000 + port,
        "remote_ip": ip,
        "remote_port": port,
        "state": "ESTABLISHED",
    }


@pytest.mark.parametrize("level", ["process", "host"])
@pytest.mark.parametrize("subscribe", [False, True])
async def test_grouped_diffs_applied_in_order_equal_grouped_rest_topology_at_same_seq(ws_server, level, subscribe):
    query = f"level={level}" + ("" if subscribe else "&external=group")
    async with websockets.connect(ws_url(ws_server, query)) as ws:
        first = await recv(ws)
        if subscribe:
            await ws.send(orjson.dumps({"type": "subscribe", "level": level, "external": "group"}))
            first = await recv_type(ws, "topology_update")
        mirror = Mirror(first)
        steps = [
            host_report(3, pids=(300,), connections=[to_public(300, "8.8.8.8", 443), to_public(300, "1.1.1.1", 80)]),
            host_report(
                4, pids=(400,), connections=[to_public(400, "8.8.4.4", 443, 4), to_public(400, "10.9.9.9", 22, 4)]
            ),
            host_report(
                3, pids=(300,), connections=[to_public(300, "8.8.8.8", 443), to_public(300, "192.168.0.8", 80)]
            ),
            host_report(4, pids=(400,), connections=[]),
            host_report(3, pids=(300,), connections=[]),  # the internet node goes
        ]
        internet_seen = False
        for body in steps:
            await post(ws_server, body)
            seq = await wait_quiet(ws_server, checks=2)
            await mirror.follow_until(ws, seq)
            rest = await rest_topology(ws_server, f"level={level}&external=group")
            assert rest["seq"] == mirror.seq
            assert mirror.nodes == rest["nodes"]
            assert mirror.edges == rest["edges"]
            internet_seen |= "external:internet" in mirror.nodes
            assert not any(node_id.startswith("external:8.") for node_id in mirror.nodes)
        assert internet_seen and "external:internet" not in mirror.nodes


async def test_host_filter_view_gets_only_that_hosts_nodes(ws_server):
    async with websockets.connect(ws_url(ws_server, "host=host-2")) as ws:
        mirror = Mirror(await recv(ws))
        await post(ws_server, host_report(1))
        await post(ws_server, host_report(2, pids=(200, 201)))
        await mirror.follow_until(ws, await wait_quiet(ws_server))
        assert mirror.nodes == (await rest_topology(ws_server, "host=host-2"))["nodes"]
        assert {node["host"] for node in mirror.nodes.values()} == {"host-2"}


async def test_report_update_carries_the_summary(ws_server):
    async with websockets.connect(ws_url(ws_server)) as ws:
        await recv(ws)
        await post(ws_server, host_report(1, pids=(1, 2, 3)))
        update = await recv_type(ws, "report_update")
    assert update["payload"]["agent_id"] == "agent-1"
    assert update["payload"]["report"] | {"timestamp": None} == {
        "hostname": "host-1",
        "timestamp": None,
        "containers": 0,
        "processes": 3,
        "connections": 0,
    }


# -- client messages ----------------------------------------------------------------------------------


async def test_ping_gets_pong(ws_server):
    async with websockets.connect(ws_url(ws_server)) as ws:
        await recv(ws)
        await ws.send('{"type": "ping"}')
        pong = await recv_type(ws, "pong")
    assert {"seq", "timestamp", "payload"} <= set(pong)


async def test_resync_gets_fresh_snapshot(ws_server):
    async with websockets.connect(ws_url(ws_server)) as ws:
        await recv(ws)
        await post(ws_server, host_report(1))
        seq = await wait_quiet(ws_server)
        await ws.send('{"type": "resync"}')
        snapshot = await recv_type(ws, "topology_update")
    assert snapshot["seq"] == seq and "host:host-1" in snapshot["payload"]["nodes"]


async def test_subscribe_switches_to_the_new_views_snapshot_and_diffs(ws_server):
    await post(ws_server, host_report(1, pids=(100, 101)))
    await wait_quiet(ws_server)
    async with websockets.connect(ws_url(ws_server)) as ws:
        assert "process:host-1:100" in (await recv(ws))["payload"]["nodes"]
        await ws.send('{"type": "subscribe", "level": "host"}')
        mirror = Mirror(await recv_type(ws, "topology_update"))
        assert set(mirror.nodes) == {"host:host-1"}
        await post(ws_server, host_report(2, pids=(200,)))
        await mirror.follow_until(ws, await wait_quiet(ws_server))
        assert set(mirror.nodes) == {"host:host-1", "host:host-2"}


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        "[1, 2]",
        '{"type": "dance"}',
        '{"no_type": 1}',
        '{"type": "subscribe", "level": "galaxy"}',
        '"ping"',
        b"\x00\x01binary",
    ],
)
async def test_invalid_message_gets_error_and_connection_stays_open(ws_server, message):
    async with websockets.connect(ws_url(ws_server)) as ws:
        await recv(ws)
        await ws.send(message)
        error = await recv_type(ws, "error")
        assert set(error["payload"]) == {"code", "message"}
        await ws.send('{"type": "ping"}')
        assert (await recv_type(ws, "pong"))["type"] == "pong"


async def test_message_over_max_message_size_gets_error_from_the_handler():
    from orchestrator.api.hub import View
    from orchestrator.api.ws import SnapshotPacer, _handle
    from tests.api.test_hub import FakeConnection, make_hub, settle

    hub = make_hub(max_message_size=1024)
    conn = FakeConnection()
    client = hub.connect(conn, View())
    _handle(hub, client, '{"type": "ping", "pad": "' + "x" * 2000 + '"}', 1024, SnapshotPacer(0.0))
    await settle()
    assert conn.messages[-1]["payload"]["code"] == "message_too_large" and hub.client_count == 1


async def test_oversized_message_gets_error_and_connection_stays_open(start_ws_server):
    server = start_ws_server(max_message_size=1024)
    async with websockets.connect(ws_url(server)) as ws:
        await recv(ws)
        await ws.send('{"type": "ping", "pad": "' + "x" * 2000 + '"}')
        assert (await recv_type(ws, "error"))["payload"]["code"] == "message_too_large"


async def test_invalid_level_on_connect_gets_error_then_close_1008(ws_server):
    async with websockets.connect(ws_url(ws_server, "level=planet")) as ws:
        error = await recv(ws)
        assert error["type"] == "error" and error["payload"]["code"] == "invalid_level"
        with pytest.raises(ConnectionClosed):
            await recv(ws)
    assert ws.close_code == 1008


async def test_invalid_external_on_connect_gets_error_then_close_1008(ws_server):
    async with websockets.connect(ws_url(ws_server, "external=some")) as ws:
        error = await recv(ws)
        assert error["type"] == "error" and error["payload"]["code"] == "invalid_external"
        with pytest.raises(ConnectionClosed):
            await recv(ws)
    assert ws.close_code == 1008


async def test_invalid_external_in_subscribe_gets_error_and_keeps_the_view(ws_server):
    async with websockets.connect(ws_url(ws_server, "external=group")) as ws:
        await recv(ws)
        await ws.send('{"type": "subscribe", "level": "host", "external": "grouped"}')
        error = await recv_type(ws, "error")
        assert error["payload"]["code"] == "invalid_external"
        await post(ws_server, host_report(1, pids=(100,)))
        assert "process:host-1:100" in (await recv_type(ws, "topology_diff"))["payload"]["nodes"]["added"]


async def test_invalid_since_gets_error_then_snapshot(ws_server):
    async with websockets.connect(ws_url(ws_server, "since=yesterday")) as ws:
        assert (await recv(ws))["type"] == "error"
        assert (await recv(ws))["type"] == "topology_update"


# -- resume -------------------------------------------------------------------------------------------


async def test_resume_from_held_seq_gets_only_the_missed_diffs(ws_server):
    async with websockets.connect(ws_url(ws_server)) as ws:
        mirror = Mirror(await recv(ws))
        await post(ws_server, host_report(1))
        await mirror.follow_until(ws, await wait_quiet(ws_server))
    left_at = mirror.seq
    for n in (2, 3):
        await post(ws_server, host_report(n))
        await wait_quiet(ws_server, checks=2)
    current = await wait_quiet(ws_server)
    async with websockets.connect(ws_url(ws_server, f"since={left_at}")) as ws:
        replayed = [await recv(ws) for _ in range(current - left_at)]
        assert [m["type"] for m in replayed] == ["topology_diff"] * (current - left_at)
        for message in replayed:
            mirror.apply(message)
        assert mirror.nodes == (await rest_topology(ws_server))["nodes"]
        with pytest.raises(asyncio.TimeoutError):
            await recv(ws, timeout=0.2)  # nothing else: no snapshot


async def test_resume_from_too_old_seq_gets_snapshot(start_ws_server):
    server = start_ws_server(history_size=2)
    async with websockets.connect(ws_url(server)) as ws:
        await recv(ws)
        for n in range(1, 6):
            await post(server, host_report(n))
            await wait_quiet(server, checks=2)
    async with websockets.connect(ws_url(server, "since=1")) as ws:
        snapshot = await recv(ws)
    assert snapshot["type"] == "topology_update" and snapshot["seq"] >= 5
    assert len(snapshot["payload"]["nodes"]) >= 5


# -- many and slow clients ----------------------------------------------------------------------------


async def test_hundred_concurrent_clients_all_receive_each_update(ws_server):
    clients = [await websockets.connect(ws_url(ws_server)) for _ in range(100)]
    try:
        mirrors = [Mirror(await recv(ws)) for ws in clients]
        assert ws_server.call(lambda: ws_server.state.hub.client_count) == 100
        for n in (1, 2, 3):
            await post(ws_server, host_report(n))
            seq = await wait_quiet(ws_server, checks=2)
            await asyncio.gather(*(m.follow_until(ws, seq) for m, ws in zip(mirrors, clients)))
        rest = await rest_topology(ws_server)
        assert all(m.nodes == rest["nodes"] and m.seq == rest["seq"] for m in mirrors)
    finally:
        await asyncio.gather(*(ws.close() for ws in clients))


async def test_slow_client_does_not_delay_others_and_is_resynced_or_closed_1013(start_ws_server):
    server = start_ws_server(buffer_size=2, slow_client_timeout="500ms")
    # A peer that stops reading: a tiny receive buffer and a one-message client-side queue.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    # Uncompressed: these repetitive diffs deflate so well that a compressing peer's buffers would not fill.
    slow = await websockets.connect(ws_url(server), sock=sock, max_queue=1, max_size=None, compression=None)
    fast = await websockets.connect(ws_url(server), max_size=None)
    try:
        mirror = Mirror(await recv(fast))
        cmdline = "x" * 400
        for step in range(12):  # ~300 KB per diff: the slow peer's buffers fill within a few ticks
            seq = server.call(lambda: server.state.topology.seq) + 1
            await post(server, host_report(1, pids=range(step * 700, step * 700 + 700), cmdline=cmdline))
            await mirror.follow_until(fast, seq, timeout=3)  # the fast client keeps up, in order
            await asyncio.sleep(0.1)
        drops = server.state.metrics.registry.get_sample_value("app_websocket_dropped_total")
        assert drops and drops > 0
        outcome = None
        try:
            while outcome is None:
                message = await recv(slow, timeout=5)
                if message["type"] == "topology_update" and message["seq"] > 1:
                    outcome = "resynced"
        except ConnectionClosed:
            outcome = slow.close_code
        assert outcome in ("resynced", 1013)
    finally:
        await fast.close()
        await slow.close()


# -- lifecycle ----------------------------------------------------------------------------------------


async def test_connect_disconnect_cycles_leave_no_clients_or_tasks(ws_server):
    async def server_tasks() -> int:
        await asyncio.sleep(0.3)
        return ws_server.call(lambda: len(asyncio.all_tasks(ws_server.loop)))

    async with websockets.connect(ws_url(ws_server)) as ws:  # warm up
        await recv(ws)
    baseline = await server_tasks()
    for _ in range(4):
        batch = [await websockets.connect(ws_url(ws_server)) for _ in range(50)]
        await asyncio.gather(*(recv(ws) for ws in batch))
        await asyncio.gather(*(ws.close() for ws in batch))
    await asyncio.sleep(0.3)
    assert ws_server.call(lambda: ws_server.state.hub.client_count) == 0
    assert await server_tasks() <= baseline
    async with httpx.AsyncClient(base_url=ws_server.url) as http:
        metrics = (await http.get("/metrics")).text
    assert "app_websocket_clients 0.0" in metrics


async def test_client_that_stops_answering_protocol_pings_is_dropped(start_ws_server):
    server = start_ws_server(ping_interval="500ms", ping_timeout="500ms")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    deadline = time.monotonic() + 5
    while server.call(lambda: server.state.hub.client_count) != 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert server.call(lambda: server.state.hub.client_count) == 1
    while server.call(lambda: server.state.hub.client_count) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # never reads, never answers a ping
    assert server.call(lambda: server.state.hub.client_count) == 0
    writer.close()


async def test_websocket_clients_gauge_follows_connections(ws_server):
    async def gauge() -> float:
        async with httpx.AsyncClient(base_url=ws_server.url) as http:
            text = (await http.get("/metrics")).text
        return float(next(line.split()[1] for line in text.splitlines() if line.startswith("app_websocket_clients ")))

    async with websockets.connect(ws_url(ws_server)) as one, websockets.connect(ws_url(ws_server)) as two:
        await recv(one), await recv(two)
        assert await gauge() == 2
    await asyncio.sleep(0.2)
    assert await gauge() == 0


async def test_graceful_stop_closes_clients_with_1001(ws_server):
    clients = [await websockets.connect(ws_url(ws_server)) for _ in range(3)]
    for ws in clients:
        await recv(ws)
    await asyncio.get_running_loop().run_in_executor(None, ws_server.stop)
    for ws in clients:
        with pytest.raises(ConnectionClosed):
            while True:
                await recv(ws, timeout=5)
        assert ws.close_code == 1001


async def test_permessage_deflate_is_negotiated_when_offered_and_plain_clients_still_work(ws_server):
    await post(ws_server, report("agent-1"))
    async with websockets.connect(ws_url(ws_server, "level=host")) as deflating:
        assert "permessage-deflate" in deflating.response.headers.get("Sec-WebSocket-Extensions", "")
        assert (await recv(deflating))["type"] == "topology_update"
    async with websockets.connect(ws_url(ws_server, "level=host"), compression=None) as plain:
        assert "Sec-WebSocket-Extensions" not in plain.response.headers
        assert (await recv(plain))["type"] == "topology_update"


async def test_compression_can_be_turned_off(start_ws_server):
    server = start_ws_server(compression=False)
    async with websockets.connect(ws_url(server, "level=host")) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert (await recv(ws))["type"] == "topology_update"


async def test_websocket_query_token_is_accepted(start_server):
    server = start_server(make_settings(auth={"read_tokens": ["r"]}))
    async with websockets.connect(ws_url(server, "level=host&token=r")) as ws:
        assert (await recv(ws))["type"] == "topology_update"
    with pytest.raises(websockets.exceptions.InvalidStatus):
        async with websockets.connect(ws_url(server, "level=host&token=wrong")):
            pass
