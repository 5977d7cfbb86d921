"""The sliced encoder of whole views: the bytes of one ``orjson.dumps`` with sorted keys, whatever came or went
since the version it encoded before."""

from __future__ import annotations

import asyncio
import random

import orjson

from orchestrator.api.snapshots import PATCH_LIMIT, SORT_RUN, SnapshotEncoder


def _snapshot(seq: int, node_ids: list[str], edge_ids: list[str]) -> dict:
    # New dicts per version, bodies shared where unchanged: as the engine publishes them.
    return {
        "seq": seq,
        "timestamp": f"2026-12-03T12:00:{seq:02d}.000Z",
        "nodes": {node_id: _BODIES.setdefault(node_id, {"id": node_id, "type": "process"}) for node_id in node_ids},
        "edges": {eid: _BODIES.setdefault(eid, {"id": eid, "connections": 1}) for eid in edge_ids},
    }


_BODIES: dict[str, dict] = {}


async def _encoded(encoder: SnapshotEncoder, snapshot: dict) -> bytes:
    return b"".join([chunk async for chunk in encoder.chunks(("process", "each"), snapshot)])


def test_every_version_encodes_to_the_bytes_of_one_sorted_dump():
    rng = random.Random(4)
    nodes = [f"process:host-{rng.randrange(900)}/{rng.randrange(10**6)}" for _ in range(2 * SORT_RUN + 77)]
    edges = [f"{a}->{b}/tcp" for a, b in zip(nodes, reversed(nodes), strict=True)]
    nodes, edges = list(dict.fromkeys(nodes)), list(dict.fromkeys(edges))
    rng.shuffle(nodes)  # the engine's dicts are in creation order, not sorted

    def changed(ids: list[str], gone: int, new: int, tag: str) -> list[str]:
        kept = [item for item in ids if rng.random() > gone / len(ids)]
        return kept + [f"{tag}-{rng.randrange(10**9)}" for _ in range(new)]

    versions = [(nodes, edges)]
    versions.append((changed(nodes, 10, 20, "process:few"), edges))  # patched key by key
    versions.append((changed(versions[-1][0], 5_000, 7_000, "process:many"), changed(edges, 3_000, 1, "e")))
    versions.append(versions[-1])  # the same keys, new dicts

    async def scenario() -> None:
        encoder = SnapshotEncoder()
        for seq, (node_ids, edge_ids) in enumerate(versions, 1):
            snapshot = _snapshot(seq, node_ids, edge_ids)
            expected = orjson.dumps({"topology": snapshot}, option=orjson.OPT_SORT_KEYS)
            assert await _encoded(encoder, snapshot) == expected, seq
            assert await _encoded(encoder, snapshot) == expected, seq  # a second reader of the same seq
        # A fresh encoder (a first reader) gives the same bytes for the last version.
        assert await _encoded(SnapshotEncoder(), snapshot) == expected

    assert 10 + 20 <= PATCH_LIMIT < 5_000
    asyncio.run(scenario())
