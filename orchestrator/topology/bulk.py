"""Restoring an empty engine in bulk: exported contributions indexed directly, every connection resolved once.

A restart (``state.persistence``) and a replica loading a snapshot (``cluster.snapshot``) import every agent
into an empty :class:`~orchestrator.topology.Topology`. The incremental path -- :meth:`Topology.import_agent`
per agent, i.e. :meth:`Topology.contribute` per section, then one settle -- computes differences against an
old contribution that does not exist, walks generators step by step, records triggers that nothing depends
on yet, and re-resolves the connections it finds through them one at a time. Here the same operations run
without that machinery: the held contributions, node holders, address owners and contested claims,
listener counts and connection records are filled in one pass over the exported data, in the same order
as the incremental path (``first_seen`` and claims restored exactly as it restores them), then every
connection is resolved once with the same :class:`~orchestrator.topology.resolve.Resolver`.

The result is the incremental path's state, field for field: the same indexes, dependency keys, edges and
externals, the same dirty nodes and edges for the first publish. Tests compare both paths on generated
fleets (snapshot bytes of every level, every agent's export), so a change to either must keep them equal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from orchestrator.runtime.slicing import run_steps

from .model import ConnectionIn, Contribution, NodeIn
from .resolve import Conn, classify_steps, conn_key
from .views import multi_add

if TYPE_CHECKING:
    from .engine import Topology

_new_tuple = tuple.__new__  # NamedTuple(...) goes through a Python-level __new__: 3x slower


def import_agents(
    topology: Topology, agents: Iterable[tuple[str, dict]], on_error: Callable[[str, Exception], None] | None
) -> None:
    """Import ``(agent_id, exported data)`` pairs into an empty ``topology`` and resolve every connection
    (``on_error`` as for :meth:`Topology.import_agents`). The caller pauses the cyclic collector."""
    t = topology
    t._importing = True
    try:
        for agent_id, data in agents:
            try:
                _import_agent(t, agent_id, data)
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(agent_id, exc)
    finally:
        t._importing = False
    _resolve_all(t)


def _import_agent(t: Topology, agent_id: str, data: dict) -> None:
    """:meth:`Topology.import_agent` without its settle."""
    from .engine import _Held, _NodeState  # the engine imports this module

    restored = data.get("first_seen") or {}
    t._restored_first_seen.update(restored)
    for ip, hostname, since in data.get("claims") or ():
        t._restored_claims[(ip, hostname)] = since
        contest = t._contested.get(ip)
        if contest is not None and hostname in contest:  # contested by an agent imported before
            contest[hostname] = since
    for section in data["sections"]:
        if (agent_id, section["section"]) in t._held:  # twice in the data: the general path
            t._import_sections(agent_id, {"sections": [section]})
        else:
            _import_section(t, agent_id, section, _Held, _NodeState)
    nodes = t._nodes  # externals appear only once connections are resolved, after every agent
    for node_id, first_seen in restored.items():
        state = nodes.get(node_id)
        if state is not None and first_seen < state.first_seen:
            state.first_seen = first_seen
            t._dirty_nodes.add(node_id)


def _import_section(t: Topology, agent_id: str, section: dict, held_type, node_type) -> None:
    """:meth:`Topology.contribute` of one exported section while importing, for an (agent, section) not
    held yet: what its difference against no old contribution comes down to."""
    name, hostname = section["section"], section["hostname"]
    timestamp, order, seen = section["timestamp"], section["order"], section.get("seen")
    if seen is not None and timestamp > seen:
        timestamp = seen
    if seen is None:
        seen = timestamp
    key = (agent_id, name)
    nodes = tuple(_new_tuple(NodeIn, fields) if len(fields) == 7 else NodeIn(*fields) for fields in section["nodes"])
    contribution = Contribution(
        nodes=nodes, addresses=tuple((ip, node) for ip, node in section["addresses"]), priority=section["priority"]
    )
    rank = (timestamp, order, contribution.priority, t.register_section(name))
    held = held_type(rank, seen, hostname, contribution, _classify(key, rank, seen, hostname, section["connections"]))
    _add_nodes(t, key, held, node_type)
    _add_addresses(t, key, held)
    _add_sockets(t, held)
    t._held[key] = held
    t._host_held.setdefault(hostname, {})[key] = None
    t._agent_sections.setdefault(agent_id, {})[name] = None
    if seen > t._newest:
        t._newest = seen
    t._unsettled = True


def _classify(key: tuple, rank: tuple, seen: float, host: str, sockets: list) -> tuple:
    """:func:`~orchestrator.topology.resolve.classify_steps` over exported sockets (lists of
    :class:`ConnectionIn` fields), in one go."""
    connections = (
        _new_tuple(ConnectionIn, fields) if len(fields) == 7 else ConnectionIn(*fields) for fields in sockets
    )
    return run_steps(classify_steps(key, rank, seen, host, connections, len(sockets) + 1))


def _add_nodes(t: Topology, key: tuple, held, node_type) -> None:
    agent, section = key
    rank, seen = held.rank, held.seen
    nodes, dirty = t._nodes, t._dirty_nodes
    for node in held.contribution.nodes:
        node_id = node.id
        state = nodes.get(node_id)
        entry = (rank, agent, section, node, seen)
        if state is None:
            state = nodes[node_id] = node_type(node_id, t._first_seen(node_id, seen))
            state.holders = [entry]
        else:
            if seen < state.first_seen:
                state.first_seen = seen
            state.hold(entry)
        dirty.add(node_id)


def _add_addresses(t: Topology, key: tuple, held) -> None:
    hostname, order = held.hostname, held.rank[1]
    owners_by_ip = t._owners
    for ip, node in dict.fromkeys(held.contribution.addresses):
        owners = owners_by_ip.get(ip)
        if owners is None:
            owners = owners_by_ip[ip] = Counter()
        owner = (hostname, node)
        if owner not in owners:
            t._claim(ip, hostname, owners, key[0], order)
        owners[owner] += 1


def _add_sockets(t: Topology, held) -> None:
    listeners = t._listeners
    for (host, protocol, port, ip, pid), count in held.listens.items():
        by_ip = listeners.get((host, protocol, port))
        if by_ip is None:
            by_ip = listeners[(host, protocol, port)] = {}
        pids = by_ip.get(ip)
        if pids is None:
            pids = by_ip[ip] = Counter()
        pids[pid] += count
    conns = t._conns
    for record in held.records:
        socket_key = conn_key(record.protocol, record.local_end, record.remote_end)
        conn = conns.get(socket_key)
        if conn is None:
            conn = conns[socket_key] = Conn(socket_key)
            conn.records = [record]  # sized 1: append() would reserve 4 slots
        else:
            conn.records.append(record)


def _resolve_all(t: Topology) -> None:
    """``Topology._settle_steps`` when every connection is new: each resolved once, its edge, externals and
    dependency keys added (nothing was resolved before, so there is nothing to move or forget)."""
    _resolve_conns(t, t._resolver.resolve)
    t._triggers = set()
    t._dirty_conns = set()
    t._unsettled = False


def _resolve_conns(t: Topology, resolve) -> None:
    from .engine import _Edge, _External, _owners

    conns, edges, externals = t._conns, t._edges, t._externals
    deps_index, interned = t._deps, t._interned.setdefault
    dirty_edges, dirty_nodes = t._dirty_edges, t._dirty_nodes
    for key, conn in list(conns.items()):
        if not conn.records:  # emptied by a section imported twice
            del conns[key]
            continue
        resolved, deps = resolve(conn)
        eid, source, target, protocol, port, seen = resolved
        edge = edges.get(eid)
        if edge is None:
            edge = edges[eid] = _Edge(eid, source, target, protocol)
        edge.add(key)
        conn.port = port
        conn.resolved = edge
        dirty_edges.add(edge.id)
        for node_id in (source, target) if source != target else (source,):
            if node_id.startswith("external:"):
                external = externals.get(node_id)
                if external is None:
                    external = externals[node_id] = _External(node_id[9:])
                    external.first_seen = t._first_seen(node_id, external.first_seen)
                external.set_ref(key, seen, _owners(conn.records))
                if seen < external.first_seen:
                    external.first_seen = seen
                dirty_nodes.add(node_id)
        if deps:
            distinct = dict.fromkeys(deps)
            conn.deps = kept = tuple(map(interned, distinct, distinct))  # interned.setdefault(dep, dep) each
            for dep in kept:
                multi_add(deps_index, dep, key)
