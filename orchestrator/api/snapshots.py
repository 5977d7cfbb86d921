"""Whole-topology views served without stalling the other requests.

The full process view at 1,000 hosts is ~110 MB of JSON; encoded in one step it held the event loop for
seconds. Here it is encoded in slices of a few milliseconds and sent in chunks as they are made, and each
node's and edge's JSON is kept between publications: a node whose body did not change (the engine
replaces a body when it changes, never mutates a published one) is not encoded again. The keys come out in
the same sorted order as ``Topology.snapshot_json``, so the bytes are the same.

The published snapshot a request starts from is immutable, so a response is one consistent seq even when
publications happen while it is being sent.

A collapsed view nobody read at the previous seq is built on its first read, a pass over the whole base
(~0.3 s at 300 hosts): :func:`prepare_view` does it in slices too, before the snapshot is taken.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import AsyncIterator, Mapping
from itertools import islice

import orjson

from orchestrator.runtime.slicing import TimeSlice, run_sliced

SLICE_SECONDS = 0.005  # loop time one slice of encoding may take
SLICE_ITEMS = 2_000  # and at most this many items, so that even a fast slice lets others in
CHUNK_BYTES = 1 << 20  # what one write hands the transport
SORT_RUN = 20_000  # keys sorted in one step when a view's key order is built from scratch
PATCH_LIMIT = 256  # key changes applied to the kept order one by one (an insert moves the whole list); more: rebuilt


async def prepare_view(state, level: str, external: str = "each") -> None:
    """Make a snapshot of the view cheap to take right after this returns (no await in between): a
    collapsed view not in use is built from the published version in slices of the loop, requests served
    in between. Under ``state.topology_lock``, as a sliced publish: no publish lands while it is built, so
    the view is the one of the seq it is kept under. Readers of a view being built wait on the lock and find
    it built; a reader that goes away part-way leaves nothing half-built. Readers that come while a publish
    is applying its change (in steps too) wait on the lock for it to finish: a view in use is then whole."""
    topology = state.topology
    if topology.view_in_use(level, external) and not topology.publishing:
        return
    async with state.topology_lock:
        await run_sliced(topology.view_steps(level, external))


async def whole_view(state, level: str, external: str = "each") -> dict:
    """The whole view's published snapshot. The first read of a seq copies the view's dicts (at 1,000
    hosts 124k nodes and 150k edges: 150-300 ms of the loop in one go) in slices, under
    ``state.topology_lock`` so that no publish lands meanwhile; later reads of that seq take the copy."""
    topology = state.topology
    if topology.has_snapshot(level, external):  # a copy: consistent even while a publish is applying
        return topology.snapshot(level, None, external)
    async with state.topology_lock:
        await run_sliced(topology.view_steps(level, external))  # in use again if a publish dropped it
        return await run_sliced(topology.snapshot_steps(level, external))


class _Section:
    """One view's ``nodes`` or ``edges``: the mapping last served, its keys in order, and each item's JSON."""

    def __init__(self) -> None:
        self.mapping: Mapping = {}
        self.order: list[str] = []
        # Each item's JSON and the body it was made from (two dicts, not one of pairs: a dict of bytes is
        # not tracked by the cyclic GC, 100k pairs would be).
        self.fragments: dict[str, bytes] = {}
        self.encoded_from: dict[str, dict] = {}


class SnapshotEncoder:
    """Encodes published snapshots as ``{"topology": …}`` in slices, reusing unchanged items' JSON."""

    def __init__(self) -> None:
        self._sections: dict[tuple, _Section] = {}
        self._last: dict[tuple, tuple[int, list[bytes]]] = {}  # per view: the last seq encoded whole, its chunks

    async def chunks(self, view: tuple, snapshot: dict) -> AsyncIterator[bytes]:
        """The body of ``GET /api/v1/query/topology`` for ``snapshot``, in chunks; awaits between slices.
        Readers of the same seq share one encoding: the last one's chunks are kept per view."""
        last = self._last.get(view)
        if last is not None and last[0] == snapshot["seq"]:
            for chunk in last[1]:
                yield chunk
            return
        made = []
        async for chunk in self._encode(view, snapshot):
            made.append(chunk)
            yield chunk
        self._last[view] = (snapshot["seq"], made)

    async def _encode(self, view: tuple, snapshot: dict) -> AsyncIterator[bytes]:
        yield b'{"topology":{"edges":{'
        async for chunk in self._items((*view, "edges"), snapshot["edges"]):
            yield chunk
        yield b'},"nodes":{'
        async for chunk in self._items((*view, "nodes"), snapshot["nodes"]):
            yield chunk
        tail = orjson.dumps({"seq": snapshot["seq"], "timestamp": snapshot["timestamp"]}, option=orjson.OPT_SORT_KEYS)
        yield b"}," + tail[1:] + b"}"

    async def _items(self, key: tuple, mapping: Mapping) -> AsyncIterator[bytes]:
        section = self._sections.get(key)
        if section is None:
            section = self._sections[key] = _Section()
        order = await self._order(section, mapping)
        fragments, encoded_from = section.fragments, section.encoded_from
        parts: list[bytes] = []
        size = 0
        first = True
        stretch = TimeSlice(SLICE_SECONDS)
        for count, item_id in enumerate(order, 1):
            body = mapping[item_id]
            if encoded_from.get(item_id) is body:
                fragment = fragments[item_id]
            else:
                fragment = orjson.dumps({item_id: body}, option=orjson.OPT_SORT_KEYS)[1:-1]
                fragments[item_id] = fragment
                encoded_from[item_id] = body
            parts.append(fragment)
            size += len(fragment)
            if size >= CHUNK_BYTES or count % SLICE_ITEMS == 0 or stretch.due():
                yield (b"" if first else b",") + b",".join(parts)
                first = False
                parts, size = [], 0
                await stretch.pause()
        if parts:
            yield (b"" if first else b",") + b",".join(parts)

    async def _order(self, section: _Section, mapping: Mapping) -> list[str]:
        """``mapping``'s keys sorted, patched from the last order kept when few keys came or went (the
        common case: a re-report changes metrics, not the set of nodes), rebuilt in slices otherwise. A
        new list each time: a response still iterating the previous one is not disturbed."""
        if mapping is section.mapping:
            return section.order
        # Both mappings are published snapshots (never mutated): compared a slice at a time, since two set
        # differences of 150k keys held the loop 100-250 ms at 1,000 hosts.
        added = await _missing_in_slices(mapping, section.mapping)
        removed = await _missing_in_slices(section.mapping, mapping)
        if len(added) + len(removed) <= PATCH_LIMIT:
            order = list(section.order)
            for item_id in removed:
                del order[bisect_left(order, item_id)]
            for item_id in added:
                order.insert(bisect_left(order, item_id), item_id)
        elif section.order:
            order = await _patched_in_slices(section.order, added, removed)
        else:
            order = await _sorted_in_slices(list(mapping))
        for item_id in removed:
            section.fragments.pop(item_id, None)
            section.encoded_from.pop(item_id, None)
        section.mapping, section.order = mapping, order
        return order


async def _missing_in_slices(keys: Mapping, other: Mapping) -> list[str]:
    """The keys of ``keys`` that ``other`` lacks, in ``keys``' order, SORT_RUN keys per slice."""
    missing: list[str] = []
    pending = iter(keys)
    while batch := list(islice(pending, SORT_RUN)):
        missing += [key for key in batch if key not in other]
        if len(batch) == SORT_RUN:
            await asyncio.sleep(0)
    return missing


async def _patched_in_slices(order: list[str], added: list[str], removed: list[str]) -> list[str]:
    """``order`` without ``removed``, with ``added``, sorted: the kept keys filtered a slice at a time, then
    one sort, which finds them already sorted and merges the added ones in (~20 ms for 150k keys)."""
    gone = set(removed)
    kept: list[str] = []
    for start in range(0, len(order), SORT_RUN):
        kept += [key for key in order[start : start + SORT_RUN] if key not in gone]
        await asyncio.sleep(0)
    kept += added
    kept.sort()
    return kept


async def _sorted_in_slices(keys: list[str]) -> list[str]:
    """``keys`` sorted: runs of SORT_RUN sorted a slice at a time, then one sort of the runs end to end,
    which merges them (~20 ms for 150k keys; merging them in Python with heapq took 100 ms slices)."""
    for start in range(0, len(keys), SORT_RUN):
        keys[start : start + SORT_RUN] = sorted(keys[start : start + SORT_RUN])
        await asyncio.sleep(0)
    keys.sort()
    return keys
