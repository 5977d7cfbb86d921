"""Snapshots of a replica's applied state at a log position: taken, packed, restored.

A snapshot is taken right after a clock tick was applied (cleanup, then publish, then the snapshot), so the
live topology equals the published one and a replica restored from it publishes the same version under
the same ``seq`` as every replica that applied the log from the start.

Packed format: ``MAGIC``, an 8-byte big-endian length, the orjson document, then the binary blobs it
refers to (``{"$b": i}`` stands for blob ``i``), their lengths listed in the document's ``blobs`` key.
The document holds the :class:`Position` and one record per agent (registry entry, latest report,
topology contribution, time series, archive record), the rows :func:`persistence.agent_rows` gathers for
a checkpoint; ``{"$z": i}`` is blob ``i`` zlib-compressed (the orjson rows above :data:`SMALL_BLOB`
bytes; smaller ones are stored as they are). No pickle: a snapshot comes from a shared bucket and is only
ever data.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Generator
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from orchestrator.runtime.slicing import TimeSlice, run_steps
from orchestrator.state import ArchivedAgent, LatestReport
from orchestrator.state.agents import Agent
from orchestrator.state.persistence import _live_ids, rows_with
from orchestrator.topology import export

MAGIC = b"ORCHSNAP1\n"
GATHER_BUDGET_SECONDS = 0.004
SMALL_BLOB = 512  # bytes: an agent's registry record (~300) is stored as it is, compressing it saves nothing


class SnapshotError(ValueError):
    """Not a snapshot this server can read."""


@dataclass
class Position:
    """Where in the log a state stands, and the log-derived counters that go with it."""

    stream: str
    applied_seq: int = 0  # last stream sequence applied
    clock: float = 0.0  # the log's clock: the newest stored time applied
    tick: int = -1  # the last clock tick number applied
    sweep_slot: int | None = None  # cleanup_interval slot of the last sweep (or of the first tick)
    snapshot_slot: int | None = None  # snapshot_interval slot of the last snapshot
    seq: int = 0  # the published topology version
    reports_received: int = 0

    def describe(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def parse(cls, text: str | None) -> Position | None:
        if not text:
            return None
        try:
            return cls(**orjson.loads(text))
        except (ValueError, TypeError):
            return None


async def gather(state) -> list[dict]:
    """Every agent's records, read on the loop a few milliseconds at a time. The caller keeps the state
    still meanwhile (the applier awaits this between two messages). A record's ``topology`` is the agent's
    :class:`~orchestrator.topology.export.Held`: the export itself is built by :func:`pack_steps`, after
    the log has moved on (the log waited 0.9-1.5 s per snapshot at 1,000 hosts while it was built here)."""
    records: list[dict] = []
    stretch = TimeSlice(GATHER_BUDGET_SECONDS)
    for agent_id in sorted(_live_ids(state)):
        held = run_steps(export.held_steps(state.topology, agent_id))
        rows = rows_with(state, agent_id, None)
        records.append(
            {
                "id": agent_id,
                "agent": rows.agents[1] if rows.agents else None,
                "latest": list(rows.latest[1:]) if rows.latest else None,
                "topology": held,
                "timeseries": rows.timeseries[1] if rows.timeseries else None,
                "archive": list(rows.archive[1:]) if rows.archive else None,
            }
        )
        if stretch.due():
            await stretch.pause()
    return records


def pack(position: Position, records: list[dict]) -> bytes:
    """The snapshot's bytes in one go."""
    return run_steps(pack_steps(position, records))


def pack_steps(position: Position, records: list[dict]) -> Generator[None, None, bytes]:
    """The snapshot's bytes in steps (one per agent, more while a gathered topology is exported), for
    ``run_sliced`` on the loop while the log goes on: the gathered records hold nothing the applier changes.
    Not in a thread: next to a loop busy applying the log, a thread waited for the GIL after each zlib call
    (one or two per agent), and a pack of 0.4 s alone took 1.7-6.2 s at 1,000 hosts."""
    blobs: list[bytes] = []

    def blob(value: Any) -> Any:
        if isinstance(value, bytes | bytearray | memoryview):
            if len(value) > SMALL_BLOB and value[:1] in (b"{", b"["):  # orjson: compressed (55 KB -> 9 KB)
                blobs.append(zlib.compress(value, 1))
                return {"$z": len(blobs) - 1}
            blobs.append(bytes(value))  # already compact (time series, compressed reports) or small
            return {"$b": len(blobs) - 1}
        if isinstance(value, list):
            return [blob(v) for v in value]
        return value

    agents = []
    for record in records:
        held = record.get("topology")
        if isinstance(held, export.Held):  # gathered: exported and encoded now
            data = yield from held.export_steps()
            record = {**record, "topology": (yield from export.json_steps(data))}
        agents.append({key: blob(value) for key, value in record.items()})
        yield
    document = orjson.dumps({"position": asdict(position), "agents": agents, "blobs": [len(b) for b in blobs]})
    return b"".join((MAGIC, struct.pack(">Q", len(document)), document, *blobs))


def unpack(data: bytes) -> tuple[Position, list[dict]]:
    """:raises SnapshotError:"""
    if not data.startswith(MAGIC):
        raise SnapshotError("not an orchestrator snapshot")
    try:
        (length,) = struct.unpack_from(">Q", data, len(MAGIC))
        start = len(MAGIC) + 8
        document = orjson.loads(data[start : start + length])
        offset = start + length
        blobs = []
        for size in document["blobs"]:
            blobs.append(data[offset : offset + size])
            offset += size
        if offset != len(data):
            raise SnapshotError("snapshot truncated or padded")

        def value(item: Any) -> Any:
            if isinstance(item, dict) and "$b" in item:
                return blobs[item["$b"]]
            if isinstance(item, dict) and "$z" in item:
                return zlib.decompress(blobs[item["$z"]])
            if isinstance(item, list):
                return [value(v) for v in item]
            return item

        agents = [{key: value(v) for key, v in record.items()} for record in document["agents"]]
        return Position(**document["position"]), agents
    except (ValueError, KeyError, TypeError, struct.error, zlib.error) as exc:
        raise SnapshotError(f"unreadable snapshot: {exc!r}") from None


def restore(state, position: Position, agents: list[dict]) -> None:
    """Load a snapshot into an empty state and publish it under the snapshot's ``seq``."""
    contributions = []
    for record in agents:
        agent_id = record["id"]
        if record["agent"] is not None:
            state.registry.restore(Agent(**orjson.loads(record["agent"])))
        if record["latest"] is not None:
            received_at, compressed = record["latest"]
            state.latest[agent_id] = LatestReport(float(received_at), compressed)
        if record["topology"] is not None:
            contributions.append((agent_id, orjson.loads(record["topology"])))
        if record["timeseries"] is not None:
            state.timeseries.import_agent(agent_id, record["timeseries"])
        if record["archive"] is not None:
            archived_at, agent, series, latest_received_at, latest_report = record["archive"]
            state.archive[agent_id] = ArchivedAgent(
                Agent(**orjson.loads(agent)),
                float(archived_at),
                series,
                LatestReport(float(latest_received_at), latest_report) if latest_report is not None else None,
            )
    state.topology.import_agents(contributions)
    state.reports_received = position.reports_received
    state.order = position.applied_seq
    state.topology.resume_seq(position.seq - 1)
    if state.topology.publish(position.clock) is None:
        state.topology.resume_seq(position.seq)
