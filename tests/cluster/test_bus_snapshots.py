"""The snapshot store on a real JetStream: what one replica puts, another gets back whole, or not at all."""

from __future__ import annotations

import asyncio
import os

import nats
import pytest

from orchestrator.cluster.bus import SNAPSHOT_OBJECT, Bus
from tests.cluster.conftest import cluster_settings


async def _bus(url: str) -> Bus:
    bus = Bus(cluster_settings(url))
    await asyncio.wait_for(bus.connect_forever(), 20)
    assert bus.available
    return bus


def test_a_snapshot_of_many_chunks_comes_back_whole_and_replaced_by_a_newer_one(nats_server):
    async def scenario() -> None:
        writer, reader = await _bus(nats_server.url), await _bus(nats_server.url)
        try:
            assert await reader.get_snapshot() is None and await reader.snapshot_description() is None
            first = os.urandom(3 * writer.nc.max_payload + 12_345)  # several chunks, the last one partial
            await writer.put_snapshot(first, '{"applied_seq": 1}')
            info = await writer.snapshots.get_info(SNAPSHOT_OBJECT)
            assert info.chunks == 4  # chunks near max_payload, not nats-py's 128 KiB (which would be 25)
            assert await reader.get_snapshot() == first
            assert await reader.snapshot_description() == '{"applied_seq": 1}'
            second = os.urandom(200_000)
            await writer.put_snapshot(second, '{"applied_seq": 2}')
            assert await reader.get_snapshot() == second
        finally:
            await writer.close()
            await reader.close()

    asyncio.run(scenario())


def test_a_snapshot_whose_chunks_do_not_match_its_digest_is_refused(nats_server):
    async def scenario() -> None:
        bus = await _bus(nats_server.url)
        try:
            data = os.urandom(100_000)
            await bus.put_snapshot(data, "{}")
            info = await bus.snapshots.get_info(SNAPSHOT_OBJECT)
            # Another client rewrites the object's one chunk with other bytes of the same size.
            subject, stream = f"$O.{bus.stream}_snapshots.C.{info.nuid}", f"OBJ_{bus.stream}_snapshots"
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream()
            await js.purge_stream(stream, subject=subject)
            await js.publish(subject, os.urandom(100_000))
            await nc.close()
            with pytest.raises(ValueError, match="digest"):
                await bus.get_snapshot()
        finally:
            await bus.close()

    asyncio.run(scenario())
