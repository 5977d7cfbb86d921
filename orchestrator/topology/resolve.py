"""Connection resolution: which node is the client and which the server of each connection.

Rules (the contract's "Edges", made precise):

- Protocols are normalised (``tcp6`` -> ``tcp``, ``udp6`` -> ``udp``), IPv4-mapped IPv6 addresses to IPv4.
- A socket is *listening* when it is tcp in ``LISTEN`` state, or udp without a remote address. Listeners
  are indexed per ``(host, protocol, port)`` and address; ``0.0.0.0``, ``::`` and ``""`` are the wildcard.
- One connection reported by both ends is one :class:`Conn`, keyed by its protocol and its two ends in
  sorted order, so both reports land on the same key whatever their direction. Loopback addresses
  (``127.0.0.0/8``, ``::1``) are scoped to the reporting host (``127.0.0.1@host-1``): they never meet
  another host's loopback.
- Direction: a record whose local address:port is listening on its host is the server end (the newest such
  record decides); failing that, the newest record's remote end is the server.
- An end with a record resolves to that record's process (``process:<host>:<pid>``) when the process node
  exists, else to the record's host. An end without a record resolves through the address owners, seen
  from the host of the newest record at the other end: the viewer's own address first, else its owner --
  the one host claiming it, or, when several other hosts claim it, the *established* one: the host whose
  claim has held longest (owner wins, issue 16 #9: a host claiming another live host's address must not
  take its edges; ``172.17.0.1`` on every Docker host resolves, from a host without it, to the first
  claimant). A server end then resolves to the process listening on the port on the owner's host (that
  address or the wildcard; the lowest pid when several share it), else to the owning node (host or
  container); an address nobody claims is ``external:<ip>``.

Every lookup a resolution makes is recorded as a dependency key, so a listener, an address owner or a
process node that appears or disappears re-resolves the connections that looked at it. Keys are coarse
where fine keys would cost a set per connection: the direction check depends on the host's listeners of
that protocol (``("D", host, protocol)``: not recorded, the engine finds those connections from the host's
held contributions, which saves a set of every connection of every host); a process end on that process node's id (a plain string: one
appearing or vanishing process re-resolves only its own connections); a server lookup on the exact ``("L", host, protocol, port)``, an address on
``("O", ip)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator, Iterable
from functools import lru_cache
from typing import NamedTuple

from .model import external_id, host_id, process_id

WILDCARD = "*"
_WILDCARDS = frozenset(("", "0.0.0.0", "::", "*"))


@lru_cache(maxsize=1 << 16)
def normalise_ip(ip: str) -> str:
    if ip in _WILDCARDS:
        return WILDCARD
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


def normalise_protocol(protocol: str) -> str:
    return protocol[:-1] if protocol.endswith("6") else protocol


def record_order(record: Record) -> tuple:
    """Records in rank order, then by the fields that tell them apart; a missing pid (a socket whose owner the
    probe could not see) sorts first, so records differing only by it still compare."""
    pid = -1 if record.pid is None else record.pid
    return (record.rank, record.owner, record.host, record.protocol, pid, record.local_end, record.remote_end)


class Record(NamedTuple):
    """One agent's report of one connection. ``rank`` orders records: the newest is the largest. ``seen``
    (the report's receipt time) comes last so it never takes part in the ordering."""

    rank: tuple
    owner: tuple  # (agent, section): the contribution it came from
    host: str
    protocol: str
    pid: int | None
    local_end: tuple[str, int]
    remote_end: tuple[str, int]
    seen: float


class Conn:
    """A connection as seen by one or both of its ends."""

    __slots__ = ("deps", "key", "port", "records", "resolved", "stable")

    def __init__(self, key: tuple) -> None:
        self.key = key
        self.records: list[Record] = []
        self.resolved = None  # the engine's edge this connection is counted in
        self.port = 0  # the server end's port, once resolved
        self.deps: tuple = ()
        # True when the resolution does not depend on the records' order (both ends reported, exactly one
        # of them listening): a re-report that makes another record the newest only moves the timestamp.
        self.stable = False


def conn_key(protocol: str, local_end: tuple, remote_end: tuple) -> tuple:
    """The connection a socket belongs to, the same from both of its ends: protocol and the two ends in
    order."""
    return (protocol, local_end, remote_end) if local_end <= remote_end else (protocol, remote_end, local_end)


_PROTOCOLS = {"tcp": "tcp", "tcp6": "tcp", "udp": "udp", "udp6": "udp"}


def classify(connection, host: str):
    """``("listen", protocol, ip, port, pid)``, ``("conn", protocol, local_end, remote_end, pid)`` or None."""
    # The hot path of applying a report (once per socket): helpers inlined.
    protocol = _PROTOCOLS.get(connection.protocol) or normalise_protocol(connection.protocol)
    remote_ip = normalise_ip(connection.remote_ip)
    if protocol == "tcp":
        state = connection.state
        if state == "LISTEN" or (state != "ESTABLISHED" and state.upper() == "LISTEN"):
            return ("listen", protocol, normalise_ip(connection.local_ip), connection.local_port, connection.pid)
    elif remote_ip == WILDCARD or connection.remote_port == 0:
        return ("listen", protocol, normalise_ip(connection.local_ip), connection.local_port, connection.pid)
    if remote_ip == WILDCARD or connection.remote_port == 0:
        return None  # a closing tcp socket without a peer: nothing to draw
    local_ip = normalise_ip(connection.local_ip)
    if local_ip.startswith("127.") or local_ip == "::1":
        local_ip = f"{local_ip}@{host}"
    if remote_ip.startswith("127.") or remote_ip == "::1":
        remote_ip = f"{remote_ip}@{host}"
    return ("conn", protocol, (local_ip, connection.local_port), (remote_ip, connection.remote_port), connection.pid)


_ID_ESCAPES = str.maketrans({"%": "%25", ">": "%3E", "/": "%2F"})


def _id_part(part: str) -> str:
    # Hostnames may contain "->", ":" and "/": percent-encoding "%", ">" and "/" inside the parts keeps "->"
    # and the "/<protocol>" suffix unambiguous, so two different connections never share an edge id; ids
    # of ordinary names (none of the three characters) stay exactly the documented src->dst form.
    return part.translate(_ID_ESCAPES) if "%" in part or ">" in part or "/" in part else part


def edge_id(source: str, target: str, protocol: str) -> str:
    source, target = _id_part(source), _id_part(target)
    return f"{source}->{target}" if protocol == "tcp" else f"{source}->{target}/{_id_part(protocol)}"


class Resolver:
    """Resolves one :class:`Conn` against the engine's indexes, collecting dependency keys."""

    def __init__(self, listeners: dict, owners: dict, contested: dict, node_exists) -> None:
        self.listeners = listeners  # (host, protocol, port) -> {ip: {pid: refcount}}
        self.owners = owners  # ip -> {(hostname, node id): refcount}
        self.contested = contested  # ip claimed by several hosts -> {hostname: since} (see established)
        self.node_exists = node_exists

    def resolve(self, conn: Conn) -> tuple[tuple, list]:
        protocol = conn.key[0]
        records = conn.records
        if len(records) > 1:
            records = sorted(records, key=record_order)
        deps: list = []
        server_end = None
        listening = 0
        for record in reversed(records):
            ip, port = record.local_end
            if self._lookup(record.host, protocol, ip.split("@", 1)[0], port) is not None:
                listening += 1
                if server_end is None:
                    server_end = record.local_end
        conn.stable = listening == 1 and len(records) == 2 and records[0].local_end != records[1].local_end
        if server_end is None:
            server_end = records[-1].remote_end
        client_end = conn.key[1] if conn.key[2] == server_end else conn.key[2]
        by_end = {record.local_end: record for record in records}  # newest last wins
        source = self._end_node(protocol, client_end, server_end, by_end, False, deps)
        target = self._end_node(protocol, server_end, client_end, by_end, True, deps)
        seen = records[0].seen if len(records) == 1 else max(record.seen for record in records)
        resolved = (edge_id(source, target, protocol), source, target, protocol, server_end[1], seen)
        return resolved, deps

    def _end_node(self, protocol, end, other_end, by_end, server, deps) -> str:
        record = by_end.get(end)
        if record is not None:
            return self._process_or_host(record.host, record.pid, deps)
        viewer = by_end[other_end].host
        ip, port = end
        if "@" in ip:
            ip = ip.split("@", 1)[0]
            owner_host, owner_node = viewer, host_id(viewer)
        else:
            deps.append(("O", ip))
            owner = self.owner_of(ip, viewer)
            if owner is None:
                return external_id(ip)
            owner_host, owner_node = owner
        if server:
            pids = self._listener_pids(owner_host, protocol, ip, port, deps)
            if pids:
                pid = min((p for p in pids if p is not None), default=None)
                if pid is not None:
                    node_id = process_id(owner_host, pid)
                    node = self.node_exists(node_id)
                    deps.append(node_id if node is None else node)  # the node's own id string (memory)
                    if node is not None:
                        return node
        return owner_node

    def _process_or_host(self, host: str, pid: int | None, deps: list) -> str:
        if pid is not None:
            node_id = process_id(host, pid)
            node = self.node_exists(node_id)
            deps.append(node_id if node is None else node)  # the node's own id string (memory)
            if node is not None:
                return node
        return host_id(host)

    def _listener_pids(self, host, protocol, ip, port, deps):
        deps.append(("L", host, protocol, port))
        return self._lookup(host, protocol, ip, port)

    def _lookup(self, host, protocol, ip, port):
        by_ip = self.listeners.get((host, protocol, port))
        if not by_ip:
            return None
        pids = by_ip.get(ip)
        return pids if pids is not None else by_ip.get(WILDCARD)

    def owner_of(self, ip: str, viewer: str) -> tuple[str, str] | None:
        owners = self.owners.get(ip)
        if not owners:
            return None
        own = [node for (host, node) in owners if host == viewer]
        if own:
            return viewer, min(own)  # "container:" sorts before "host:": the more specific owner
        contest = self.contested.get(ip)
        if contest is None:
            return min(owners)  # one host claims it
        host = established(contest)
        return host, min(node for (claimant, node) in owners if claimant == host)


def established(contest: dict[str, int]) -> str:
    """The owner of an address several hosts claim: the earliest claim (``since``: the arrival order of the
    report that made it, 0 for a claim older than every rival's), the hostname breaking a tie."""
    return min(contest, key=lambda host: (contest[host], host))


def classify_steps(
    key: tuple, rank: tuple, seen: float, host: str, connections: Iterable, step_items: int
) -> Generator[None, None, tuple]:
    """A contribution's sockets as listener counts and connection records (duplicates dropped), yielding
    every ``step_items`` sockets (the live merge, in steps; a restore runs it in one go)."""
    listens: Counter = Counter()
    records: dict = {}
    new_record = tuple.__new__  # Record(...) goes through a Python-level __new__: 3x slower
    for count, connection in enumerate(connections, 1):
        if not count % step_items:
            yield
        kind = classify(connection, host)
        if kind is None:
            continue
        if kind[0] == "listen":
            _, protocol, ip, port, pid = kind
            listens[(host, protocol, port, ip, pid)] += 1
        else:
            _, protocol, local_end, remote_end, pid = kind
            records[(protocol, local_end, remote_end)] = new_record(
                Record, (rank, key, host, protocol, pid, local_end, remote_end, seen)
            )
    return listens, list(records.values())
