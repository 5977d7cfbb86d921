"""Whole-topology views served without stalling the other requests, at a cost that follows what changed.

The full process view at 1,000 hosts is ~100 MB of JSON; encoded in one step it held the event loop for
seconds. Here each view read once is kept as JSON: every node's and edge's fragment (``"id":{…}``) in key
order, in blocks of :data:`BLOCK_ITEMS` with each block's fragments joined. The encoder follows the
publications from then on: each names the ids it changed in the views in use, so a read after one host
re-reported encodes that host's items again, joins the few blocks they lie in, and takes the list of joined
blocks. No copy of the view, no pass over its 130k-270k items: that pass alone took 150-250 ms per seq at
1,000 hosts. A block's bytes are immutable, so a response stays one consistent seq while later ones are
published; the bytes are ``Topology.snapshot_json``'s (keys in the same sorted order).

What cannot be followed is encoded from the view again, in slices, under ``state.topology_lock`` (no
publish lands meanwhile): a view's first read, and a view that was not in use at some publication (the engine
drops a collapsed view nobody read at the previous seq and builds it again on its next read, in slices too:
:func:`prepare_view`). Its JSON is dropped with it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field

import orjson

from orchestrator.runtime.slicing import run_sliced, run_steps
from orchestrator.topology.views import view_name

SLICE_ITEMS = 2_000  # items encoded between two steps (a few ms), and the size up to which a view is "small"
BLOCK_ITEMS = 256  # items per kept block (split at twice this): a changed block is joined again, ~50 KB
CHUNK_BLOCKS = 20  # blocks joined into one chunk (~1 MB): what one write hands the transport
SORT_RUN = 20_000  # keys sorted in one step when a view is encoded from scratch
IN_ONE_GO = 512  # changed items a read encodes at once, without the lock; more: in slices, under the lock


@dataclass(frozen=True)
class Encoded:
    """A whole view's JSON at one seq, as joined blocks of fragments in key order; :meth:`chunks` makes the
    body's bytes."""

    seq: int
    timestamp: str
    edges: list[bytes]
    nodes: list[bytes]
    items: int  # nodes and edges

    def chunks(self, head: bytes = b'{"topology":') -> Iterator[bytes]:
        """``{"topology": …}`` in chunks of ~1 MB (the bytes of ``Topology.snapshot_json`` with its wrapper);
        ``head``: another opening for the view's JSON, closed by one ``}`` (a WebSocket message's)."""
        yield head + b'{"edges":{'
        yield from _joined(self.edges)
        yield b'},"nodes":{'
        yield from _joined(self.nodes)
        tail = orjson.dumps({"seq": self.seq, "timestamp": self.timestamp}, option=orjson.OPT_SORT_KEYS)
        yield b"}," + tail[1:] + b"}"

    def body(self, head: bytes = b'{"topology":') -> bytes:
        return b"".join(self.chunks(head))


def _joined(blocks: list[bytes]) -> Iterator[bytes]:
    for start in range(0, len(blocks), CHUNK_BLOCKS):
        chunk = b",".join(blocks[start : start + CHUNK_BLOCKS])
        yield chunk if start == 0 else b"," + chunk


class _Block:
    """A run of consecutive items in key order: their ids, their JSON, and that JSON joined (None: to join)."""

    __slots__ = ("frags", "ids", "joined")

    def __init__(self, ids: list[str], frags: list[bytes]) -> None:
        self.ids, self.frags = ids, frags
        self.joined: bytes | None = None


class _Section:
    """One view's ``nodes`` or ``edges`` as blocks of :data:`BLOCK_ITEMS` items in key order, and the ids
    publications changed since. A read joins again only the blocks that changed and takes the list of
    joined blocks (a list of all the items' JSON took 30 ms at 130k items: a dict lookup per item, each a
    cache miss on a heap of a gigabyte)."""

    def __init__(self) -> None:
        self.blocks: list[_Block] = []
        self.firsts: list[str] = []  # each block's first id, for bisect
        self.changed: set[str] = set()
        self.items = 0

    def take(self) -> list[bytes]:
        joined = []
        for block in self.blocks:
            if block.joined is None:
                block.joined = b",".join(block.frags)
            joined.append(block.joined)
        return joined

    def build_steps(self, mapping: Mapping) -> Generator[None, None, None]:
        """Every item of ``mapping`` encoded, in key order, a slice at a time."""
        ids = yield from _sorted_steps(list(mapping))
        blocks: list[_Block] = []
        for start in range(0, len(ids), BLOCK_ITEMS):
            run = ids[start : start + BLOCK_ITEMS]
            blocks.append(_Block(run, [_fragment(item_id, mapping[item_id]) for item_id in run]))
            if not len(blocks) % (SLICE_ITEMS // BLOCK_ITEMS):
                yield
        self.blocks, self.firsts, self.items = blocks, [block.ids[0] for block in blocks], len(ids)

    def update_steps(self, mapping: Mapping) -> Generator[None, None, None]:
        """The changed ids encoded again, added or dropped as ``mapping`` has them."""
        for count, item_id in enumerate(self.changed, 1):
            body = mapping.get(item_id)
            if body is None:
                self._remove(item_id)
            else:
                self._put(item_id, _fragment(item_id, body))
            if not count % SLICE_ITEMS:
                yield
        self.changed.clear()

    def _find(self, item_id: str) -> tuple[int, int]:
        index = max(bisect_right(self.firsts, item_id) - 1, 0)
        return index, bisect_left(self.blocks[index].ids, item_id)

    def _put(self, item_id: str, frag: bytes) -> None:
        if not self.blocks:
            self.blocks, self.firsts, self.items = [_Block([item_id], [frag])], [item_id], 1
            return
        index, at = self._find(item_id)
        block = self.blocks[index]
        block.joined = None
        if at < len(block.ids) and block.ids[at] == item_id:
            block.frags[at] = frag
            return
        block.ids.insert(at, item_id)
        block.frags.insert(at, frag)
        self.items += 1
        if at == 0:
            self.firsts[index] = item_id
        if len(block.ids) >= 2 * BLOCK_ITEMS:  # split: inserts stay cheap, a changed block small to join
            half = _Block(block.ids[BLOCK_ITEMS:], block.frags[BLOCK_ITEMS:])
            del block.ids[BLOCK_ITEMS:], block.frags[BLOCK_ITEMS:]
            self.blocks.insert(index + 1, half)
            self.firsts.insert(index + 1, half.ids[0])

    def _remove(self, item_id: str) -> None:
        if not self.blocks:
            return
        index, at = self._find(item_id)
        block = self.blocks[index]
        if at == len(block.ids) or block.ids[at] != item_id:
            return
        del block.ids[at], block.frags[at]
        block.joined = None
        self.items -= 1
        if not block.ids:
            del self.blocks[index], self.firsts[index]
        elif at == 0:
            self.firsts[index] = block.ids[0]


@dataclass
class _Kept:
    nodes: _Section = field(default_factory=_Section)
    edges: _Section = field(default_factory=_Section)
    last: Encoded | None = None  # the last seq taken, for readers of the same seq

    def pending(self) -> int:
        """Items publications changed since the last read (a kept view is followed from its first read on:
        kept plus changed is the view at the published seq)."""
        return len(self.nodes.changed) + len(self.edges.changed)


class SnapshotEncoder:
    """Whole views as :class:`Encoded`, kept per view and followed publication by publication (it listens
    to the topology's publications from its first read on)."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str], _Kept] = {}
        self._topology: object | None = None

    def _attach(self, topology) -> None:
        """Follow ``topology``'s publications (the views kept so far are of another topology: dropped)."""
        if topology is self._topology:
            return
        self._kept.clear()
        self._topology = topology
        topology.publish_listeners.append(self._published)

    def _published(self, publication, topology) -> None:
        if topology is not self._topology:
            return
        lost = []
        for (level, external), kept in self._kept.items():
            changed = publication.changed_ids(view_name(level, external))
            if changed is None:  # not in use (built again on its next read): its changes are not known
                lost.append((level, external))
                continue
            kept.nodes.changed.update(changed[0])
            kept.edges.changed.update(changed[1])
            if kept.pending() > (kept.nodes.items + kept.edges.items) // 4 + IN_ONE_GO:
                lost.append((level, external))  # encoding it all again costs about as much
        for view in lost:
            # Its JSON goes with it (~25 MB for the grouped host view at 1,000 hosts): most of what the next
            # read finds is new bodies (a view built again), encoded again anyway.
            del self._kept[view]

    async def encoded(self, state, level: str, external: str = "each") -> Encoded:
        """The whole view at the current seq (no await between this returning and the caller going on). A
        few changed items are encoded in one go; a collapsed view not in use is built, and many changes (or
        a first read) are encoded, in slices under ``state.topology_lock``, other requests served meanwhile.
        Readers arriving together wait on the lock and share the work."""
        topology = state.topology
        self._attach(topology)
        view = (level, external)
        kept = self._kept.get(view)
        ready = topology.view_in_use(level, external) and not topology.publishing
        if ready and kept is not None and kept.pending() <= IN_ONE_GO:
            return self._take(topology, view, kept)
        async with state.topology_lock:
            await run_sliced(topology.view_steps(level, external))
            nodes, edges = topology.view_maps(level, external)
            kept = self._kept.get(view)
            if kept is None:
                kept = _Kept()
                await run_sliced(kept.nodes.build_steps(nodes))
                await run_sliced(kept.edges.build_steps(edges))
                self._kept[view] = kept
            else:
                await run_sliced(kept.nodes.update_steps(nodes))
                await run_sliced(kept.edges.update_steps(edges))
            return self._take(topology, view, kept)

    @staticmethod
    def _take(topology, view: tuple[str, str], kept: _Kept) -> Encoded:
        """The view at the published seq: changed items encoded (in one go: few, or done under the lock)."""
        if kept.pending():
            nodes, edges = topology.view_maps(*view)
            run_steps(kept.nodes.update_steps(nodes))
            run_steps(kept.edges.update_steps(edges))
            kept.last = None
        if kept.last is None or kept.last.seq != topology.seq:
            kept.last = Encoded(
                topology.seq,
                topology.timestamp,
                kept.edges.take(),
                kept.nodes.take(),
                kept.edges.items + kept.nodes.items,
            )
        return kept.last


def _sorted_steps(ids: list[str]) -> Generator[None, None, list[str]]:
    """``ids`` sorted: runs of SORT_RUN sorted a step at a time, then one sort of the runs end to end, which
    merges them (~20 ms for 150k keys; merging them in Python with heapq took 100 ms slices)."""
    for start in range(0, len(ids), SORT_RUN):
        ids[start : start + SORT_RUN] = sorted(ids[start : start + SORT_RUN])
        yield
    ids.sort()
    return ids


def _fragment(item_id: str, body: dict) -> bytes:
    return orjson.dumps({item_id: body}, option=orjson.OPT_SORT_KEYS)[1:-1]


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
