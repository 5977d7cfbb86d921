"""The first read of a collapsed view (``level=container``/``host``) builds it in slices of the loop: other
requests are answered meanwhile, and readers arriving together get the same, whole view."""

from __future__ import annotations

import asyncio
import http.client
import select
import time

import httpx
import orjson
import pytest
import websockets

from orchestrator.probe.fleet import Fleet
from orchestrator.state.history import rolled_up
from tests.support import make_settings, wait_for

HOSTS = 40


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    # Few hosts, many processes and connections each: a view that takes a while to build, quick to load.
    return Fleet(HOSTS, seed=6, processes=200, connections=800)


@pytest.fixture(scope="module")
def reports(fleet) -> list[bytes]:
    now = time.time()
    return [fleet.report_bytes(index, now) for index in range(fleet.hosts)]


@pytest.fixture
def loaded(start_server, reports):
    """A server holding the fleet, published, no collapsed view read yet. History off: it keeps the host
    level in use (it records it every publish), so a first ``level=host`` read would build nothing."""
    server = start_server(make_settings(history={"enabled": False}))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for body in reports:
            response = client.post("/api/v1/reports", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 202, response.text

        def published() -> bool:
            # Every report applied and every host published: nothing changes from here on, the seq stays.
            stats = client.get("/api/v1/query/stats").json()
            return stats["ingest_queue"] == 0 and stats["topology"]["hosts"] == HOSTS

        wait_for(published, timeout=60)
    return server


def test_a_ping_is_answered_while_a_first_level_host_read_is_built(loaded):
    reader = http.client.HTTPConnection("127.0.0.1", loaded.port, timeout=60)
    pinger = http.client.HTTPConnection("127.0.0.1", loaded.port, timeout=60)
    for connection in (reader, pinger):  # both connected and served once: no accept between them below
        connection.request("GET", "/api/v1/ping")
        connection.getresponse().read()
    try:
        reader.request("GET", "/api/v1/query/topology?level=host")
        answered_first = 0  # pings sent after the read and answered before its first byte came back
        while not select.select([reader.sock], [], [], 0)[0] and answered_first < 10_000:
            pinger.request("GET", "/api/v1/ping")
            response = pinger.getresponse()
            assert response.status == 200 and response.read()
            if select.select([reader.sock], [], [], 0)[0]:
                break  # the read started answering before this ping's answer came: not counted
            answered_first += 1
        response = reader.getresponse()
        view = orjson.loads(response.read())["topology"]
        assert response.status == 200 and len(view["nodes"]) >= HOSTS and len(view["edges"]) > 2_000
        # Built in one go, the view held the loop: a ping sent meanwhile waited for the whole read to be answered
        # (only the first ping, sent along with the read, could be taken before it; in practice none was).
        assert answered_first >= 2, answered_first
    finally:
        reader.close()
        pinger.close()


async def test_first_reads_arriving_together_get_the_same_whole_view(loaded):
    query = {"level": "container", "external": "group"}
    async with httpx.AsyncClient(base_url=loaded.url, timeout=60) as client:
        base = (await client.get("/api/v1/query/topology")).json()["topology"]  # the process level: no build

        async def read() -> bytes:
            response = await client.get("/api/v1/query/topology", params=query)
            assert response.status_code == 200
            return response.content

        async def snapshot_over_websocket() -> dict:
            url = f"ws://127.0.0.1:{loaded.port}/api/v1/ws?level=container&external=group"
            async with websockets.connect(url, max_size=None) as ws:
                message = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
            assert message["type"] == "topology_update"
            return message["payload"]

        answers = await asyncio.gather(read(), read(), snapshot_over_websocket(), read())
    first, second, pushed, third = answers
    assert first == second == third
    view = orjson.loads(first)["topology"]
    assert view["seq"] == base["seq"] == pushed["seq"]
    assert pushed["nodes"] == view["nodes"] and pushed["edges"] == view["edges"]
    nodes, edges = rolled_up("container+group", base["nodes"], base["edges"])
    assert view["nodes"] == nodes and view["edges"] == edges  # whole: the one-pass build of the same version
    assert len(edges) > 1_000


async def test_a_read_during_a_publish_applied_in_steps_gets_the_whole_new_version(fleet, reports):
    # A big change is applied to the published version in slices of the loop; a reader arriving between two
    # of them waits on the lock and gets the new version whole, never half of the change.
    from types import SimpleNamespace

    from orchestrator.api.snapshots import prepare_view
    from orchestrator.contract.models import Report
    from orchestrator.runtime.slicing import run_sliced
    from orchestrator.topology import Topology
    from tests.topology.support import merge_parsed

    later = [fleet.report_bytes(index, time.time() + 300) for index in range(8)]  # churned, new figures

    def loaded() -> Topology:
        topology = Topology()
        for order, body in enumerate(reports[:8], 1):
            merge_parsed(topology, Report.model_validate_json(body), order)
        topology.publish(0)
        topology.snapshot("host")  # in use: the publish maintains it, in steps
        for order, body in enumerate(later, 100):
            merge_parsed(topology, Report.model_validate_json(body), order)
        return topology

    reference, topology = loaded(), loaded()
    reference.publish(0)
    state = SimpleNamespace(topology=topology, topology_lock=asyncio.Lock())

    async def publish() -> None:
        async with state.topology_lock:  # as the hub's tick does
            await run_sliced(topology.publish_steps(0, slice_seconds=0.0), seconds=0.0)

    publishing = asyncio.get_running_loop().create_task(publish())
    while not topology.publishing:
        await asyncio.sleep(0)
    await prepare_view(state, "host")
    assert not topology.publishing and topology.seq == 2
    assert topology.snapshot_json("host") == reference.snapshot_json("host")
    await publishing
