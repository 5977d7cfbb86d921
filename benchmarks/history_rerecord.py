"""Re-record a stored history's publications through this checkout's History: what it keeps from the same
publications, and the CPU it spends. Compare two checkouts with ``PYTHONPATH=<other checkout>``.

Run: ``python -m benchmarks.history_rerecord STORED/history.sqlite OUT_DIR`` (a file ``bench_history --keep``
left). Each publication's changes are rebuilt from the stored entries (old body, new body) and the topology
from the stored keyframe plus the entries, so only structure and the bodies kept are replayed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
import zlib
from pathlib import Path

import orjson

from orchestrator.state.history import FILENAME, History


def stored(conn: sqlite3.Connection) -> tuple[list, dict]:
    publications = conn.execute("SELECT seq, ts, stamp FROM publications ORDER BY seq").fetchall()
    entries: dict = {"process": {}, "host": {}}
    for level, by_seq in entries.items():
        for (body,) in conn.execute("SELECT body FROM changes WHERE level = ? ORDER BY first_seq", (level,)):
            for seq, _stamp, nodes, edges in orjson.loads(zlib.decompress(body)):
                by_seq[seq] = (nodes, edges)
    return publications, entries


def keyframe(conn: sqlite3.Connection, seq: int, level: str) -> tuple[dict, dict]:
    nodes: dict = {}
    edges: dict = {}
    for (body,) in conn.execute("SELECT body FROM keyframes WHERE seq = ? AND level = ? ORDER BY part", (seq, level)):
        part = orjson.loads(zlib.decompress(body))
        nodes.update(part["nodes"])
        edges.update(part["edges"])
    return nodes, edges


class Replayed:
    """A publication as History.record reads it."""

    def __init__(self, seq: int, stamp: str, changes: dict) -> None:
        self.seq, self.timestamp, self._changes = seq, stamp, changes

    def changes(self, level: str) -> tuple:
        return self._changes[level]


class Topology:
    def __init__(self, state: dict) -> None:
        self.state = state

    def snapshot(self, level: str) -> dict:
        nodes, edges = self.state[level]
        return {"nodes": dict(nodes), "edges": dict(edges)}


def step(state: dict, entries: dict, seq: int) -> dict:
    changes = {}
    for level, (nodes, edges) in state.items():
        node_bodies, edge_bodies = entries[level].get(seq, ({}, {}))
        changes[level] = (
            [(i, nodes.get(i), body) for i, body in sorted(node_bodies.items())],
            [(i, edges.get(i), body) for i, body in sorted(edge_bodies.items())],
        )
        for items, bodies in ((nodes, node_bodies), (edges, edge_bodies)):
            for item_id, body in bodies.items():
                if body is None:
                    items.pop(item_id, None)
                else:
                    items[item_id] = body
    return changes


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    publications, entries = stored(conn)
    first = publications[0][0]
    state = {level: keyframe(conn, first, level) for level in entries}
    history = History(out / FILENAME, retention=86400.0, keyframe_interval=3600.0)
    loop = asyncio.new_event_loop()
    cpu = 0.0
    start_size = 0
    for index, (seq, _ts, stamp) in enumerate(publications):
        changes = step(state, entries, seq) if seq != first else {level: ([], []) for level in state}
        started = time.process_time()
        history.record(Replayed(seq, stamp, changes), Topology(state))  # type: ignore[arg-type]
        if index % 15 == 14:
            loop.run_until_complete(history.flush())
        cpu += time.process_time() - started
        if index == 14:
            start_size = sum(p.stat().st_size for p in out.glob(FILENAME + "*"))
    started = time.process_time()
    loop.run_until_complete(history.flush())
    cpu += time.process_time() - started
    history.close()
    size = sum(p.stat().st_size for p in out.glob(FILENAME + "*"))
    seconds = len(publications)  # one publication per simulated second
    day = start_size + 24 * (size - start_size) * 3600 / seconds
    print(
        f"{len(publications)} publications: {size / 2**20:.2f} MB ({start_size / 2**20:.2f} MB after the first flush)"
    )
    print(f"24 h by bench_history's extrapolation: {day / 2**20:.0f} MB")
    print(f"history CPU: {cpu / len(publications) * 1000:.3f} ms per publication")


if __name__ == "__main__":
    main()
