"""What a client can make the server keep has a bound, and hitting it is a clear refusal (issue 16)."""

from __future__ import annotations

import asyncio
import unicodedata

import httpx
import orjson
import pytest
import websockets

from tests.support import make_settings, post_report, report, wait_for


def register(client: httpx.Client, agent_id: str, hostname: str = "h") -> httpx.Response:
    return client.post("/api/v1/agents/register", json={"agent_id": agent_id, "hostname": hostname})


def test_a_new_agent_beyond_max_agents_is_refused_and_known_ones_keep_writing(start_server):
    server = start_server(make_settings(agents={"max_agents": 2}))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert register(client, "a-1").status_code == 201
        assert post_report(client, report("a-2")).status_code == 202
        for refused in (register(client, "a-3"), post_report(client, report("a-3"))):
            assert refused.status_code == 429 and refused.headers["retry-after"].isdigit()
            assert refused.json()["error"]["code"] == "too_many_agents"
            assert "agents.max_agents" in refused.json()["error"]["message"]
        assert post_report(client, report("a-1")).status_code == 202
        assert register(client, "a-2").status_code == 200
        agents = client.get("/api/v1/agents/list").json()
        assert sorted(a["agent_id"] for a in agents["agents"]) == ["a-1", "a-2"]
        metrics = client.get("/metrics").text
        assert 'app_reports_rejected_total{reason="agent_limit"} 2.0' in metrics


@pytest.mark.parametrize("hostname", ["evil\nhost", "nul\x00host", "tab\thost", "del\x7fhost"])
def test_hostnames_with_control_characters_are_refused(http, hostname):
    response = post_report(http, report("agent-1", hostname=hostname))
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "hostname"
    assert register(http, "agent-1", hostname).status_code == 422


def test_look_alike_hostnames_are_one_host(http):
    composed = unicodedata.normalize("NFC", "café")
    decomposed = unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    for agent_id, hostname in (("agent-1", decomposed), ("agent-2", composed)):
        body = report(agent_id, hostname=hostname, host_info={"os": "linux"})
        assert post_report(http, body).status_code == 202

    def hosts():
        nodes = http.get("/api/v1/query/topology", params={"level": "host"}).json()["topology"]["nodes"]
        return [n for n in nodes if n.startswith("host:")]

    assert wait_for(lambda: len(http.get("/api/v1/agents/list").json()["agents"]) == 2)
    assert wait_for(hosts) == [f"host:{composed}"]
    names = {a["hostname"] for a in http.get("/api/v1/agents/list").json()["agents"]}
    assert names == {composed}


async def test_websocket_clients_beyond_max_clients_are_refused_before_the_upgrade(start_server):
    server = start_server(make_settings(websocket={"max_clients": 1, "broadcast_interval": "50ms"}))
    url = server.url.replace("http://", "ws://") + "/api/v1/ws"
    async with websockets.connect(url) as first:
        assert orjson.loads(await first.recv())["type"] == "topology_update"
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "5"
        assert orjson.loads(refused.value.response.body)["error"]["code"] == "too_many_clients"

    # The slot is free again once the first client left.
    async def second_connects():
        for _ in range(100):
            try:
                async with websockets.connect(url) as again:
                    return orjson.loads(await again.recv())["type"]
            except websockets.exceptions.InvalidStatus:
                await asyncio.sleep(0.05)
        return None

    assert await second_connects() == "topology_update"


async def test_resync_requests_are_paced_to_one_snapshot_per_interval(start_server):
    server = start_server(make_settings(websocket={"resync_interval": "1m", "broadcast_interval": "50ms"}))
    url = server.url.replace("http://", "ws://") + "/api/v1/ws"
    async with websockets.connect(url) as ws:
        assert orjson.loads(await ws.recv())["type"] == "topology_update"
        for _ in range(50):
            await ws.send('{"type": "resync"}')
        await ws.send('{"type": "ping"}')
        kinds = []
        while "pong" not in kinds or kinds.count("topology_update") < 1:
            kinds.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"])
        # One snapshot for the first resync; the other 49 wait for the interval (a minute) and coalesce.
        await ws.send('{"type": "ping"}')
        while kinds.count("pong") < 2:
            kinds.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"])
        assert kinds.count("topology_update") == 1


def test_the_server_raises_its_open_files_limit_to_the_hard_limit(server_process):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, hard, 1024) - 1  # below the hard limit, as the common default is
    # The child inherits the soft limit in force when it starts; this process gets its own back at once.
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        proc = server_process()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    proc.wait_healthy()
    with open(f"/proc/{proc.proc.pid}/limits") as limits_file:
        limits = limits_file.read()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert line.split()[3] == line.split()[4] == str(hard)
