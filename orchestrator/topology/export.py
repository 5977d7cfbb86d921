"""Exporting one agent's contributions, in steps: what a checkpoint and a cluster snapshot store of it.

An agent at the report limits (10,000 processes, 50,000 connections, 5,000 containers) exports ~65,000
node rows, sockets and ``first_seen`` entries: ~0.4 s of work in one go, too long to hold the event loop
(issue 16 #6). :func:`export_steps` does the same work as a generator that yields every
:data:`STEP_ITEMS` items, so a checkpoint drives it a slice of the loop at a time while it holds
``state.topology_lock``, and :meth:`Topology.export_agent` runs it in one go. Both give the same data, key
for key and in the same order. :func:`json_steps` encodes that data in steps too (~25 ms in one go), to the
bytes ``orjson.dumps`` gives: a checkpoint stores the same rows as before. The steps only read the
topology: abandoned part-way, they change nothing.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from itertools import islice, repeat
from typing import TYPE_CHECKING, Any

import orjson

from .resolve import WILDCARD, conn_key

if TYPE_CHECKING:
    from .engine import Topology, _Held

# Items (node rows, sockets, first_seen entries) between two yields: well under a millisecond of work.
STEP_ITEMS = 128
# Keys sorted in one step; longer lists are sorted run by run, then the runs merged (see _sorted_steps).
SORT_RUN = 4096
# Items encoded to JSON in one step (json_steps): a few milliseconds even of node rows with a kilobyte of
# metadata each, well under one of sockets or first_seen entries.
ENCODE_ITEMS = 1024


def export_steps(topology: Topology, agent_id: str) -> Generator[None, None, dict | None]:
    """The agent's contributions as JSON-able data (orjson), for :meth:`Topology.import_agent`; None when it
    holds none. The live topology must stay still until the steps end."""
    held = yield from held_steps(topology, agent_id)
    return None if held is None else (yield from held.export_steps())


class Held:
    """What an export reads of one agent that the topology may change, taken while it stands still: its held
    contributions (each one is replaced by the next, never changed: they stay as taken), the ``first_seen``
    of what they reach and the contested claims. :meth:`export_steps` builds the export from it later, while
    the topology moves on: what :func:`export_steps` gives at the moment :func:`held_steps` ran. A cluster
    snapshot takes every agent's while the log waits (~0.3 s at 1,000 hosts) and builds the rest (~0.5 s)
    after."""

    __slots__ = ("agent_id", "claims", "first_seen", "sections")

    def __init__(self, agent_id: str, sections: list, first_seen: dict[str, float], claims: list[list]) -> None:
        self.agent_id, self.sections, self.first_seen, self.claims = agent_id, sections, first_seen, claims

    def export_steps(self) -> Generator[None, None, dict]:
        exported = []
        for section, held in self.sections:
            exported.append((yield from _section_steps(section, held)))
        data = {"agent_id": self.agent_id, "sections": exported, "first_seen": self.first_seen}
        if self.claims:
            data["claims"] = self.claims
        return data


def held_steps(topology: Topology, agent_id: str) -> Generator[None, None, Held | None]:
    """The agent's :class:`Held`, None when it holds nothing. The live topology must stay still until the
    steps end; afterwards it may change."""
    t = topology
    t._settle_imported()  # in one go: only an import not published yet leaves any (a restore publishes at once)
    sections = t._agent_sections.get(agent_id)
    if not sections:
        return None
    ordered = sorted(sections, key=lambda s: t._section_rank[s])
    first_seen = yield from _first_seen_steps(t, agent_id)
    return Held(
        agent_id, [(section, t._held[(agent_id, section)]) for section in ordered], first_seen, _claims(t, agent_id)
    )


def json_steps(data: dict) -> Generator[None, None, bytes]:
    """``orjson.dumps(data)`` of :func:`export_steps`' data, byte for byte, in steps: each section's node
    rows, addresses and sockets and the ``first_seen`` map are encoded :data:`ENCODE_ITEMS` at a time, then
    copied as they are into the whole."""
    sections = []
    for section in data["sections"]:
        encoded = dict(section)
        for key in ("nodes", "addresses", "connections"):
            encoded[key] = yield from _encoded_steps(section[key])
        sections.append(encoded)
    first_seen = yield from _encoded_steps(data["first_seen"])
    return orjson.dumps({**data, "sections": sections, "first_seen": first_seen})


def _encoded_steps(items: list | dict) -> Generator[None, None, Any]:
    """A long list or dict as an :class:`orjson.Fragment`, encoded :data:`ENCODE_ITEMS` items per step
    (orjson writes compact JSON: the parts' encodings joined by commas are the whole's); a short one as it
    is."""
    if len(items) <= ENCODE_ITEMS:
        return items
    is_dict = isinstance(items, dict)
    pending = iter(items.items() if is_dict else items)
    parts = []
    while chunk := list(islice(pending, ENCODE_ITEMS)):
        parts.append(orjson.dumps(dict(chunk) if is_dict else chunk)[1:-1])
        yield
    opening, closing = (b"{", b"}") if is_dict else (b"[", b"]")
    return orjson.Fragment(opening + b",".join(parts) + closing)


def _section_steps(section: str, held: _Held) -> Generator[None, None, dict]:
    contribution = held.contribution
    nodes = yield from _list_steps(
        [n.id, n.type, n.name, n.parent, n.host, n.metadata, n.metrics] for n in contribution.nodes
    )
    addresses = yield from _list_steps(list(pair) for pair in contribution.addresses)
    connections = yield from _list_steps(_sockets(held))
    return {
        "section": section,
        "hostname": held.hostname,
        "timestamp": held.rank[0],
        "order": held.rank[1],
        "seen": held.seen,
        "priority": contribution.priority,
        "nodes": nodes,
        "addresses": addresses,
        "connections": connections,
    }


def _sockets(held: _Held) -> Iterator[list]:
    """The held sockets as :class:`~orchestrator.topology.model.ConnectionIn` fields: listeners (one row per
    socket counted) first, then connection records."""
    for (_host, protocol, port, ip, pid), count in held.listens.items():
        state = "LISTEN" if protocol == "tcp" else ""
        yield from repeat([pid, protocol, "0.0.0.0" if ip == WILDCARD else ip, port, "", 0, state], count)
    for record in held.records:
        (local_ip, local_port), (remote_ip, remote_port) = record.local_end, record.remote_end
        yield [
            record.pid,
            record.protocol,
            local_ip.split("@", 1)[0],
            local_port,
            remote_ip.split("@", 1)[0],
            remote_port,
            "ESTABLISHED",
        ]


def _first_seen_steps(t: Topology, agent_id: str) -> Generator[None, None, dict[str, float]]:
    """``first_seen`` of every node the agent holds and every external its connections reach, by id."""
    first_seen = {}
    for section in t._agent_sections[agent_id]:
        held = t._held[(agent_id, section)]
        for count, node in enumerate(held.contribution.nodes, 1):
            first_seen[node.id] = t._nodes[node.id].first_seen
            if not count % STEP_ITEMS:
                yield
        for count, record in enumerate(held.records, 1):
            if not count % STEP_ITEMS:
                yield
            edge = t._conns[conn_key(record.protocol, record.local_end, record.remote_end)].resolved
            if edge is None:
                continue
            for end in (edge.source, edge.target):
                if end.startswith("external:"):
                    first_seen[end] = t._externals[end].first_seen
    node_ids = yield from _sorted_steps(list(first_seen))
    ordered = {}
    for count, node_id in enumerate(node_ids, 1):
        ordered[node_id] = first_seen[node_id]
        if not count % STEP_ITEMS:
            yield
    return ordered


def _claims(t: Topology, agent_id: str) -> list[list]:
    """``[ip, hostname, since]`` of the agent's contested addresses: who owns one must survive a restore
    (the import order is not the order the claims were made in)."""
    claims = set()
    for section in t._agent_sections[agent_id]:
        held = t._held[(agent_id, section)]
        for ip, _node in held.contribution.addresses:
            contest = t._contested.get(ip)
            if contest is not None and held.hostname in contest:
                claims.add((ip, held.hostname, contest[held.hostname]))
    return [list(claim) for claim in sorted(claims)]


def _list_steps(items: Iterable) -> Generator[None, None, list]:
    collected = []
    for count, item in enumerate(items, 1):
        collected.append(item)
        if not count % STEP_ITEMS:
            yield
    return collected


def _sorted_steps(keys: list[str]) -> Generator[None, None, list[str]]:
    """``sorted(keys)`` in steps: 65,000 ids take ~40 ms to sort in one go. Runs of :data:`SORT_RUN` are
    sorted one per step, then merged two by two, one merge per step (timsort merges two sorted runs in one
    linear pass)."""
    runs = []
    for start in range(0, len(keys), SORT_RUN):
        runs.append(sorted(keys[start : start + SORT_RUN]))
        yield
    while len(runs) > 1:
        merged = []
        for first in range(0, len(runs) - 1, 2):
            merged.append(sorted(runs[first] + runs[first + 1]))
            yield
        if len(runs) % 2:
            merged.append(runs[-1])
        runs = merged
    return runs[0] if runs else []
