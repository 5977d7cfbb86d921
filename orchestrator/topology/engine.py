"""The live topology: agents' contributions merged into nodes, connections resolved into edges.

Merge rule: a node exists while at least one contribution has it. Each field (``type``, ``name``,
``parent``, ``host``, and each key of ``metadata`` and ``metrics``) comes from the contribution with the
largest rank ``(timestamp, order, priority, section rank)`` among those that know it: newest report first,
then the later-received one, then the contribution's ``priority``, then the section registered later
(built-in order: host_info, docker_info, processes_info, network_info; other sections in order of first
appearance).

Clocks (the contract's "Clocks"): the report's own ``timestamp`` only orders contributions (never later
than its receipt time: a report dated in the future ranks as received now); liveness uses
``seen``, the server's clock when the report was received (``contribute(..., seen=)``, the report
timestamp when not given), so a probe with a skewed clock still shows as seen now. A node's
``first_seen`` is the earliest ``seen`` while the node existed without a gap, its ``last_seen`` the latest
``seen`` of the contributions currently holding it; an edge's ``last_seen`` and an external node's are
the latest ``seen`` of its connections' reports, and a published version's timestamp the latest ``seen``
accepted. Receipt time is an input like the report: everything published is a function of the sequence
of ``contribute`` calls only -- never of the wall clock or of when :meth:`Topology.publish` runs.

Owner wins (issue 16 #9): a container belongs to the host whose contributions hold it first; another host's
contribution naming it (a docker_info entry, a process's container) leaves it out -- its processes stay
under their own host -- for as long as the owner holds it. An address claimed by several hosts stays with
the host that claimed it first for every other host's view (``resolve.py``). Both are reported to
:attr:`Topology.on_conflict` when a live contribution makes the claim, and both are functions of the
contributions and their order only, so replicas fed the same reports build the same topology.

Each ``contribute`` updates the indexes by the difference between the agent's old and new contribution
for the section and re-resolves only the connections that changed or that looked at a changed listener,
address owner or process node (``resolve.py``), so its cost follows the contribution, not the topology.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator, Mapping
from dataclasses import replace
from itertools import chain

from orchestrator.contract.models import BUILTIN_SECTIONS
from orchestrator.runtime.collector import paused as paused_gc
from orchestrator.runtime.slicing import TimeSlice, run_steps, stretched

from . import bulk, export
from .model import ConnectionIn, Contribution, NodeIn, host_id, rfc3339, type_from_id
from .resolve import Conn, Resolver, classify_steps, conn_key, established, record_order
from .views import Publication, Published, multi_add, multi_discard

# Snapshots kept per seq (each level and host= asked since the last publish); beyond, the oldest goes.
MAX_CACHED_SNAPSHOTS = 64
_PRUNE_SLACK = 16  # shared lists beyond twice the published bodies (plus this) trigger a prune
# Items (nodes, sockets, connections resolved) between two yields of the stepped contribution: a few
# milliseconds of work at most, so a driver checking its time slice at each yield stays close to it.
STEP_ITEMS = 128


class _NodeBody:
    """Builds a published node body: ``_NodeBody(...).__dict__`` is a plain ``dict`` (same keys, order,
    equality and JSON as a literal) whose keys table is shared by every body built this way (CPython's
    key-sharing instance dicts): ~130 bytes less per node than a dict literal. The instance is dropped;
    only its dict is kept. Published bodies are never mutated, so the dict stays split."""

    def __init__(self, id, type, name, parent, host, agent_ids, metadata, metrics, first_seen, last_seen):
        self.id = id
        self.type = type
        self.name = name
        self.parent = parent
        self.host = host
        self.agent_ids = agent_ids
        self.metadata = metadata
        self.metrics = metrics
        self.first_seen = first_seen
        self.last_seen = last_seen


class _EdgeBody:
    """:class:`_NodeBody` for edge bodies."""

    def __init__(self, id, source, target, protocol, ports, connections, last_seen):
        self.id = id
        self.source = source
        self.target = target
        self.protocol = protocol
        self.ports = ports
        self.connections = connections
        self.last_seen = last_seen


class _Held:
    """A held contribution. Its sockets are kept classified (listeners, connection records) instead of as
    ``ConnectionIn`` objects: the records are what resolution needs, and one copy is all memory allows."""

    __slots__ = ("contribution", "hostname", "ignored", "listens", "rank", "records", "seen")

    def __init__(
        self, rank: tuple, seen: float, hostname: str, contribution: Contribution, sockets: tuple, ignored: tuple = ()
    ) -> None:
        self.rank = rank
        self.seen = seen  # receipt time: not in the rank, so it never decides which contribution wins
        self.hostname = hostname
        self.ignored = ignored  # ids of the containers it claimed that another host owns (not held)
        self.listens, self.records = sockets  # from resolve.classify_steps
        self.contribution = replace(contribution, connections=()) if contribution.connections else contribution


class _NodeState:
    __slots__ = ("first_seen", "holders", "id")

    def __init__(self, node_id: str, first_seen: float) -> None:
        self.id = node_id  # the one copy of the id string that edges and resolutions share
        self.holders: list[tuple] = []  # (rank, agent, section, NodeIn, seen)
        self.first_seen = first_seen

    def hold(self, entry: tuple) -> None:
        """Record ``(rank, agent, section, NodeIn, seen)``, replacing that agent's section's earlier entry
        (the same node twice in a contribution: the last one holds)."""
        holders = self.holders
        for index, holder in enumerate(holders):
            if holder[1] == entry[1] and holder[2] == entry[2]:
                holders[index] = entry
                return
        if holders:
            holders.append(entry)
        else:
            self.holders = [entry]  # sized 1 (most nodes have one holder)


class _Edge:
    __slots__ = ("conns", "id", "protocol", "source", "target")

    def __init__(self, edge_id: str, source: str, target: str, protocol: str) -> None:
        self.id, self.source, self.target, self.protocol = edge_id, source, target, protocol
        # The keys of the conns counted in the edge: one key, a list of a few, a set of many (most edges
        # have one or two; a dict per edge cost ~230 bytes, ~35 MB at 1,000 hosts). Their ports and
        # receipt times are the conns' own.
        self.conns: tuple | list | set | None = None

    def add(self, key: tuple) -> None:
        held = self.conns
        if held is None:
            self.conns = key
        elif type(held) is tuple:
            if held != key:
                self.conns = [held, key]
        elif type(held) is list:
            if key not in held:
                if len(held) < 8:
                    held.append(key)
                else:
                    self.conns = {*held, key}
        else:
            held.add(key)

    def discard(self, key: tuple) -> None:
        held = self.conns
        if type(held) is tuple:
            if held == key:
                self.conns = None
        elif type(held) is list:
            if key in held:
                held.remove(key)
                if len(held) == 1:
                    self.conns = held[0]
        elif held is not None:
            held.discard(key)
            if len(held) <= 4:
                self.conns = list(held) if len(held) > 1 else next(iter(held), None)

    def conn_keys(self) -> tuple | list | set:
        held = self.conns
        if held is None:
            return ()
        return (held,) if type(held) is tuple else held


class _External:
    """An address outside every reporting host and the connections that reach it. Its agents and latest
    receipt time are kept as the connections come and go, so building its body costs the same whether ten
    hosts talk to it or every host of the fleet (the cloud's resolver: one connection per host)."""

    __slots__ = ("agent_list", "agents", "first_seen", "ip", "latest", "refs")

    def __init__(self, ip: str) -> None:
        self.ip = ip
        # conn key -> (latest receipt time of its reports, its reporting agent: a str, or a sorted tuple)
        self.refs: dict[tuple, tuple] = {}
        self.agents: Counter = Counter()  # agent -> how many of the refs it reported
        self.agent_list: list | None = None  # the published agent_ids; None when the agents changed
        self.latest: float | None = float("-inf")  # max receipt time of the refs; None when unknown
        self.first_seen = float("inf")

    def set_ref(self, key: tuple, seen: float, owners) -> None:
        old = self.refs.get(key)
        if old is None:
            self._count(owners, 1)
        else:
            if old[1] != owners:
                self._count(old[1], -1)
                self._count(owners, 1)
            if seen < old[0] and old[0] == self.latest:
                self.latest = None
        self.refs[key] = (seen, owners)
        if self.latest is not None and seen > self.latest:
            self.latest = seen

    def refresh(self, key: tuple, seen: float) -> None:
        """The same reporters saw the connection again."""
        self.set_ref(key, seen, self.refs[key][1])

    def drop_ref(self, key: tuple) -> None:
        old = self.refs.pop(key, None)
        if old is None:
            return
        self._count(old[1], -1)
        if old[0] == self.latest:
            self.latest = None

    def last_seen(self) -> float:
        if self.latest is None:
            self.latest = max(seen for seen, _owners in self.refs.values())
        return self.latest

    def _count(self, owners, delta: int) -> None:
        agents = self.agents
        for agent in (owners,) if type(owners) is str else owners:
            count = agents[agent] + delta
            if count <= 0:
                del agents[agent]
                self.agent_list = None
            else:
                if count == delta:
                    self.agent_list = None  # a new agent
                agents[agent] = count


class Topology:
    """The live topology and its published versions. Not thread-safe: one event loop owns it."""

    _importing = False
    _unsettled = False  # imported contributions not resolved yet (import_agent defers resolution)
    # The highest seq the data file has reserved: nothing is published past it, so a restarted server,
    # numbering from the stored reservation, never reuses a seq a client saw (see state.persistence).
    seq_ceiling: float = float("inf")

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], _Held] = {}
        self._agent_sections: dict[str, dict[str, None]] = {}
        self._host_held: dict[str, dict[tuple, None]] = {}  # hostname -> held keys (for "D" triggers)
        self._section_rank: dict[str, int] = {name: rank for rank, name in enumerate(BUILTIN_SECTIONS)}
        self._nodes: dict[str, _NodeState] = {}
        self._externals: dict[str, _External] = {}
        self._edges: dict[str, _Edge] = {}
        self._listeners: dict[tuple, dict[str, Counter]] = {}
        self._owners: dict[str, Counter] = {}
        # Addresses claimed by several hosts: ip -> {hostname: since}, the arrival order of the report that
        # made the claim (0: older than every rival's). The earliest is the established owner.
        self._contested: dict[str, dict[str, int]] = {}
        self._restored_claims: dict[tuple[str, str], int] = {}  # (ip, hostname) -> since, while restoring
        # Called as (kind, value, agent, hostname, owner) when a live contribution claims an address or a
        # container another host owns (kind "ip" or "container"); the claim then does not count for it.
        self.on_conflict: Callable[[str, str, str, str, str], None] | None = None
        self._conns: dict[tuple, Conn] = {}
        self._deps: dict = {}  # dependency key -> conn keys (multi_add: one key or a set)
        self._interned: dict[tuple, tuple] = {}
        self._resolver = Resolver(self._listeners, self._owners, self._contested, self._node_exists)
        self._dirty_conns: set[tuple] = set()
        self._triggers: set[tuple] = set()
        self._dirty_nodes: set[str] = set()
        self._dirty_edges: set[str] = set()
        self._newest = float("-inf")
        self._agent_lists: dict[tuple, list] = {}
        self._port_lists: dict[tuple, list] = {}
        self._published = Published()
        self._snapshots: dict[tuple, dict] = {}
        self._snapshot_json: dict[tuple, bytes] = {}
        # Called with (publication, topology) right after each publication, while it is the latest (the
        # state's history keeps every one, whoever publishes: the hub, a restore, a shutdown).
        # Called as (publication, topology) after each publication; one may return a generator of steps.
        self.publish_listeners: list[Callable[[Publication, Topology], Generator[None, None, None] | None]] = []
        # first_seen of nodes being restored by import_agent, for nodes not created yet (an external may
        # appear only once another agent's addresses are imported); dropped by the next live contribution.
        self._restored_first_seen: dict[str, float] = {}

    # -- contributions ------------------------------------------------------------------------------

    def register_section(self, section: str) -> int:
        """Give a section its tie-breaking rank (later registered wins ties); returns the rank."""
        return self._section_rank.setdefault(section, len(self._section_rank))

    def contribute(
        self,
        agent_id: str,
        hostname: str,
        section: str,
        timestamp: float,
        order: int,
        contribution: Contribution | None,
        *,
        seen: float | None = None,
    ) -> None:
        """Replace ``agent_id``'s contribution for ``section`` (``None`` removes it).

        A contribution older than the one held -- lower ``(timestamp, order)`` -- is ignored. ``seen`` is
        the server's receipt time of the report (``MergeContext.received_at``): it sets ``first_seen`` and
        ``last_seen`` but never the ranking; callers that don't pass it get the report timestamp. A
        timestamp later than ``seen`` ranks as ``seen``: a report dated ahead of the server's clock (the
        contract lets it be up to five minutes ahead) would otherwise outrank every report its agent sends
        until that time comes, and freeze the agent's view meanwhile (issue 16 #9).
        """
        run_steps(self.contribute_steps(agent_id, hostname, section, timestamp, order, contribution, seen=seen))

    def contribute_steps(
        self,
        agent_id: str,
        hostname: str,
        section: str,
        timestamp: float,
        order: int,
        contribution: Contribution | None,
        *,
        seen: float | None = None,
    ) -> Generator[None, None, None]:
        """:meth:`contribute` as a generator that yields every few hundred nodes, sockets or connections
        resolved, so the server can hand the loop to requests while a contribution of 50,000 connections
        is applied. The result is that of :meth:`contribute`, whatever runs between the steps, provided
        nothing else reads or changes the live topology before the generator is exhausted (the server holds
        ``state.topology_lock`` throughout). Abandoned part-way it leaves the topology inconsistent."""
        if (self._restored_first_seen or self._restored_claims) and not self._importing:
            yield from self._settle_steps() if self._unsettled else ()
            self._restored_first_seen, self._restored_claims = {}, {}
        if seen is not None and timestamp > seen:
            timestamp = seen
        key = (agent_id, section)
        old = self._held.get(key)
        if old is not None and (timestamp, order) < old.rank[:2]:
            return
        if contribution is None:
            if old is not None:
                yield from self._replace_steps(key, old, None)
                del self._held[key]
                self._index_host(key, old, None)
                self._forget_section(agent_id, section)
                yield from self._settle_steps()
            return
        if seen is None:
            seen = timestamp
        if type(contribution.nodes) is not tuple:  # an iterator: built as it is consumed
            nodes = yield from _collect_steps(contribution.nodes)
            contribution = replace(contribution, nodes=nodes)
        ignored: tuple = ()
        if not self._importing:  # restored contributions were filtered when they were live
            contribution, ignored = self._without_foreign_containers(agent_id, hostname, contribution, old)
        rank = (timestamp, order, contribution.priority, self.register_section(section))
        sockets = yield from classify_steps(key, rank, seen, hostname, contribution.connections, STEP_ITEMS)
        new = _Held(rank, seen, hostname, contribution, sockets, ignored)
        yield from self._replace_steps(key, old, new)
        self._held[key] = new
        self._index_host(key, old, new)
        self._agent_sections.setdefault(agent_id, {})[section] = None
        self._newest = max(self._newest, seen)
        if self._importing:
            self._unsettled = True  # resolved once, by the next publish or live change
        else:
            yield from self._settle_steps()

    def remove_agent(self, agent_id: str) -> None:
        for section in list(self._agent_sections.get(agent_id, ())):
            key = (agent_id, section)
            old = self._held.pop(key)
            run_steps(self._replace_steps(key, old, None))
            self._index_host(key, old, None)
        self._agent_sections.pop(agent_id, None)
        self._settle()

    def _without_foreign_containers(
        self, agent_id: str, hostname: str, contribution: Contribution, old: _Held | None
    ) -> tuple[Contribution, tuple]:
        """``contribution`` without the containers another host's contributions hold (owner wins: a
        container belongs to the host that reported it first, while it holds it), its nodes that named one
        as parent re-parented to their own host, and the addresses of those containers left out. Returns
        the ids left out too. Costs a look-up per container of the contribution."""
        foreign: dict[str, str] = {}
        for node in contribution.nodes:
            if node.id.startswith("container:") and (state := self._nodes.get(node.id)) is not None:
                owner = self._other_host(state, agent_id, hostname)
                if owner is not None:
                    foreign[node.id] = owner
        if not foreign:
            return contribution, ()
        if self.on_conflict is not None:
            before = old.ignored if old is not None else ()
            for node_id, owner in foreign.items():
                if node_id not in before:  # counted when claimed, not again in every report that repeats it
                    self.on_conflict("container", node_id[10:], agent_id, hostname, owner)
        own_host = host_id(hostname)
        nodes = tuple(
            node._replace(parent=own_host) if node.parent in foreign else node
            for node in contribution.nodes
            if node.id not in foreign
        )
        addresses = tuple(pair for pair in contribution.addresses if pair[1] not in foreign)
        return replace(contribution, nodes=nodes, addresses=addresses), tuple(sorted(foreign))

    def _other_host(self, state: _NodeState, agent_id: str, hostname: str) -> str | None:
        """The host of a contribution holding the node that is not ``hostname`` (another agent's: an agent
        moving to a new hostname does not conflict with itself), or None."""
        for _rank, agent, section, _node, _seen in state.holders:
            if agent != agent_id:
                held = self._held[(agent, section)].hostname
                if held != hostname:
                    return held
        return None

    def _index_host(self, key: tuple, old: _Held | None, new: _Held | None) -> None:
        if old is not None and (new is None or new.hostname != old.hostname):
            keys = self._host_held[old.hostname]
            del keys[key]
            if not keys:
                del self._host_held[old.hostname]
        if new is not None:
            self._host_held.setdefault(new.hostname, {})[key] = None

    def _host_conns(self, host: str, protocol: str, dirty: set) -> Generator[None, None, None]:
        """The connections with a record on ``host`` of ``protocol``: those whose direction check looked
        at the host's listeners (the ``("D", host, protocol)`` trigger)."""
        for key in self._host_held.get(host, ()):
            for count, record in enumerate(self._held[key].records, 1):
                if record.protocol == protocol:
                    dirty.add(conn_key(record.protocol, record.local_end, record.remote_end))
                if not count % STEP_ITEMS:
                    yield

    def agents(self) -> list[str]:
        return sorted(self._agent_sections)

    def host_agents(self, hostname: str) -> set[str]:
        """The agents whose contributions are held under ``hostname`` (the host's reporters)."""
        return {agent for agent, _section in self._host_held.get(hostname, ())}

    def _first_seen(self, node_id: str, seen: float) -> float:
        restored = self._restored_first_seen.get(node_id)
        return seen if restored is None or restored > seen else restored

    def _forget_section(self, agent_id: str, section: str) -> None:
        sections = self._agent_sections.get(agent_id, {})
        sections.pop(section, None)
        if not sections:
            self._agent_sections.pop(agent_id, None)

    def _replace_steps(self, key: tuple, old: _Held | None, new: _Held | None) -> Generator[None, None, None]:
        yield from self._replace_nodes(key, old, new)
        self._replace_addresses(key, old, new)
        yield from self._replace_connections(key, old, new)

    def _replace_nodes(self, key: tuple, old: _Held | None, new: _Held | None) -> Generator[None, None, None]:
        agent, section = key
        gone = {}
        for count, node in enumerate(old.contribution.nodes if old is not None else (), 1):
            gone[node.id] = node
            if not count % STEP_ITEMS:
                yield
        if new is not None:
            rank, seen = new.rank, new.seen
            for count, node in enumerate(new.contribution.nodes, 1):
                if not count % STEP_ITEMS:
                    yield
                gone.pop(node.id, None)
                state = self._nodes.get(node.id)
                if state is None:
                    state = self._nodes[node.id] = _NodeState(node.id, self._first_seen(node.id, seen))
                    self._triggers.add(node.id)
                elif seen < state.first_seen:
                    state.first_seen = seen
                state.hold((rank, agent, section, node, seen))
                self._dirty_nodes.add(node.id)
        for count, node_id in enumerate(gone, 1):
            if not count % STEP_ITEMS:
                yield
            state = self._nodes[node_id]
            state.holders = [h for h in state.holders if h[1] != agent or h[2] != section]
            if not state.holders:
                del self._nodes[node_id]
                self._triggers.add(node_id)
            self._dirty_nodes.add(node_id)

    def _replace_addresses(self, key: tuple, old: _Held | None, new: _Held | None) -> None:
        before = {(ip, old.hostname, node) for ip, node in old.contribution.addresses} if old else set()
        after = {(ip, new.hostname, node) for ip, node in new.contribution.addresses} if new else set()
        for ip, hostname, node in before - after:
            owners = self._owners[ip]
            owners[(hostname, node)] -= 1
            if owners[(hostname, node)] <= 0:
                del owners[(hostname, node)]
                self._triggers.add(("O", ip))
                if not owners:
                    del self._owners[ip]
                self._release_claim(ip, hostname)
        for ip, hostname, node in after - before:
            owners = self._owners.setdefault(ip, Counter())
            if (hostname, node) not in owners:
                self._triggers.add(("O", ip))
                self._claim(ip, hostname, owners, key[0], new.rank[1] if new is not None else 0)
            owners[(hostname, node)] += 1

    def _claim(self, ip: str, hostname: str, owners: Counter, agent_id: str, order: int) -> None:
        """``hostname`` starts claiming ``ip`` with the report numbered ``order``. When another host claims
        it already, the address becomes contested and the earlier claim stays its owner for every other
        host's view (the claimant's own connections still resolve on itself, as each Docker host's
        ``172.17.0.1`` does). An uncontested address has one host among its owners, so this is O(1)."""
        contest = self._contested.get(ip)
        restored = self._restored_claims
        if contest is None:
            if not owners:
                return
            rival = next(iter(owners))[0]
            if rival == hostname:
                return
            contest = self._contested[ip] = {rival: restored.get((ip, rival), 0)}
        elif hostname in contest:
            return
        contest[hostname] = restored.get((ip, hostname), order)
        if self.on_conflict is None or self._importing:
            return  # no one to tell: the owner is not looked for (a pass over every claimant)
        owner = established(contest)
        if owner != hostname:
            self.on_conflict("ip", ip, agent_id, hostname, owner)

    def _release_claim(self, ip: str, hostname: str) -> None:
        """``hostname`` dropped one of its claims on ``ip``; the contest ends when one host is left."""
        contest = self._contested.get(ip)
        if contest is None or hostname not in contest:
            return
        if any(claimant == hostname for claimant, _node in self._owners.get(ip, ())):
            return  # still claimed by another of the host's nodes
        del contest[hostname]
        if len(contest) <= 1:
            del self._contested[ip]

    def _replace_connections(self, key: tuple, old: _Held | None, new: _Held | None) -> Generator[None, None, None]:
        old_listens = old.listens if old is not None else Counter()
        new_listens = new.listens if new is not None else Counter()
        if old_listens != new_listens:
            yield from self._update_listeners(old_listens, new_listens)
        # Keyed by the socket itself (protocol and both ends as reported): no conn key per old record.
        gone = {}
        for count, r in enumerate(old.records if old is not None else (), 1):
            gone[(r.protocol, r.local_end, r.remote_end)] = r
            if not count % STEP_ITEMS:
                yield
        conns, dirty = self._conns, self._dirty_conns
        for count, record in enumerate(new.records if new is not None else (), 1):
            if not count % STEP_ITEMS:
                yield
            _rank, _owner, host, protocol, pid, local_end, remote_end, _seen = record
            socket_key = conn_key(protocol, local_end, remote_end)
            previous = gone.pop((protocol, local_end, remote_end), None)
            if previous is not None:
                conn = conns[socket_key]
                records = conn.records
                if len(records) == 1:
                    records[0] = record
                    newest = previous
                else:
                    newest = max(records, key=record_order)
                    for index, held in enumerate(records):
                        if held is previous:
                            records[index] = record
                            break
                if (
                    (newest is previous or conn.stable)
                    and previous.pid == pid
                    and previous.host == host
                    and conn.resolved is not None
                ):
                    # The same socket reported again by the newest of its reporters, still the newest: the
                    # resolution is a function of the records' order, hosts, pids and ends (unchanged) and
                    # of the indexes (their changes trigger re-resolution on their own), so only the
                    # receipt time moves.
                    self._refresh(conn)
                    continue
            else:
                conn = conns.get(socket_key)
                if conn is None:
                    conn = conns[socket_key] = Conn(socket_key)
                    conn.records = [record]  # sized 1: append() would reserve 4 slots (200k conns)
                else:
                    conn.records.append(record)
            dirty.add(socket_key)
        for count, record in enumerate(gone.values(), 1):
            if not count % STEP_ITEMS:
                yield
            socket_key = conn_key(record.protocol, record.local_end, record.remote_end)
            conn = conns[socket_key]
            conn.records = [r for r in conn.records if r is not record]
            dirty.add(socket_key)

    def _refresh(self, conn: Conn) -> None:
        edge = conn.resolved
        self._dirty_edges.add(edge.id)
        source, target = edge.source, edge.target
        if source.startswith("external:") or target.startswith("external:"):
            key = conn.key
            seen = max(record.seen for record in conn.records)
            for end in (source, target):
                if end.startswith("external:"):
                    self._externals[end].refresh(key, seen)
                    self._dirty_nodes.add(end)

    def _update_listeners(self, old: Counter, new: Counter) -> Generator[None, None, None]:
        for step, ((host, protocol, port, ip, pid), count) in enumerate((old - new).items(), 1):
            if not step % STEP_ITEMS:
                yield
            by_ip = self._listeners[(host, protocol, port)]
            pids = by_ip[ip]
            pids[pid] -= count
            if pids[pid] <= 0:
                del pids[pid]
                self._triggers.add(("L", host, protocol, port))
                self._triggers.add(("D", host, protocol))
                if not pids:
                    del by_ip[ip]
                    if not by_ip:
                        del self._listeners[(host, protocol, port)]
        for step, ((host, protocol, port, ip, pid), count) in enumerate((new - old).items(), 1):
            if not step % STEP_ITEMS:
                yield
            pids = self._listeners.setdefault((host, protocol, port), {}).setdefault(ip, Counter())
            if pid not in pids:
                self._triggers.add(("L", host, protocol, port))
                self._triggers.add(("D", host, protocol))
            pids[pid] += count

    # -- resolution ---------------------------------------------------------------------------------

    def _node_exists(self, node_id: str) -> str | None:
        state = self._nodes.get(node_id)
        return state.id if state is not None else None

    def _settle_imported(self) -> None:
        if self._unsettled:
            self._settle()

    def _settle(self) -> None:
        """Re-resolve every connection that changed or depends on a changed index entry."""
        run_steps(self._settle_steps())

    def _settle_steps(self) -> Generator[None, None, None]:
        self._unsettled = False
        dirty = self._dirty_conns
        deps = self._deps
        for trigger in self._triggers:
            if type(trigger) is tuple and trigger[0] == "D":
                yield from self._host_conns(trigger[1], trigger[2], dirty)
                continue
            dependents = deps.get(trigger)
            if dependents is not None:
                if type(dependents) is tuple:  # one conn key (multi_add)
                    dirty.add(dependents)
                else:
                    dirty.update(dependents)
        self._triggers = set()
        self._dirty_conns = set()
        touched_externals: set[str] = set()
        for count, key in enumerate(dirty, 1):
            if not count % STEP_ITEMS:
                yield
            conn = self._conns.get(key)
            if conn is None:
                continue
            if conn.records:
                resolved, deps = self._resolver.resolve(conn)
            else:
                resolved, deps = None, ()
                del self._conns[key]
            self._move_conn(conn, resolved, touched_externals)
            self._set_deps(conn, deps)
        for node_id in touched_externals:
            external = self._externals[node_id]
            if not external.refs:
                del self._externals[node_id]
            self._dirty_nodes.add(node_id)

    def _move_conn(self, conn: Conn, resolved: tuple | None, touched: set) -> None:
        old = conn.resolved
        key = conn.key
        if old is not None and (resolved is None or old.id != resolved[0]):
            old.discard(key)
            if old.conns is None:
                del self._edges[old.id]
            self._dirty_edges.add(old.id)
        edge = None
        if resolved is not None:
            eid, source, target, protocol, port, _seen = resolved
            edge = self._edges.get(eid)
            if edge is None:
                edge = self._edges[eid] = _Edge(eid, source, target, protocol)
            edge.add(key)
            conn.port = port
            self._dirty_edges.add(edge.id)
        conn.resolved = edge
        old_ext = {n for n in (old.source, old.target) if n.startswith("external:")} if old else set()
        new_ext = {n for n in (edge.source, edge.target) if n.startswith("external:")} if edge else set()
        for node_id in old_ext - new_ext:
            self._externals[node_id].drop_ref(key)
            touched.add(node_id)
        for node_id in new_ext:
            external = self._externals.get(node_id)
            if external is None:
                external = self._externals[node_id] = _External(node_id[9:])
                external.first_seen = self._first_seen(node_id, external.first_seen)
            external.set_ref(key, resolved[5], _owners(conn.records))
            if node_id not in old_ext:
                external.first_seen = min(external.first_seen, resolved[5])
            touched.add(node_id)

    def _set_deps(self, conn: Conn, deps) -> None:
        interned = self._interned
        new = tuple(interned.setdefault(dep, dep) for dep in dict.fromkeys(deps))
        if new == conn.deps:
            return
        key = conn.key
        deps = self._deps
        for dep in new:
            multi_add(deps, dep, key)
        kept = set(new)
        for dep in conn.deps:
            if dep in kept:
                continue
            multi_discard(deps, dep, key)
            if dep not in deps:
                del interned[dep]
        conn.deps = new

    # -- published node and edge bodies -------------------------------------------------------------

    def node_body(self, node_id: str) -> dict | None:
        """The contract's ``<node>`` for the live state of ``node_id``, or None when it does not exist."""
        self._settle_imported()
        state = self._nodes.get(node_id)
        if state is None:
            external = self._externals.get(node_id)
            return self._external_body(node_id, external) if external is not None else None
        if len(state.holders) == 1:
            return self._single_holder_body(node_id, state)
        holders = sorted(state.holders, key=lambda h: h[0])
        fields = {"type": None, "name": None, "parent": None, "host": None}
        for _rank, _agent, _section, node, _seen in holders:
            for name in ("type", "name", "parent", "host"):
                value = getattr(node, name)
                if value is not None:
                    fields[name] = value
        node_type = fields["type"] or type_from_id(node_id)
        return _NodeBody(
            node_id,
            node_type,
            fields["name"] or _default_name(node_id, node_type),
            fields["parent"],
            fields["host"],
            self._agent_list(h[1] for h in holders),
            _merged(h[3].metadata for h in holders),
            _merged(h[3].metrics for h in holders),
            rfc3339(state.first_seen),
            rfc3339(max(h[4] for h in holders)),
        ).__dict__

    def _single_holder_body(self, node_id: str, state: _NodeState) -> dict:
        """``node_body`` for the common node held by one contribution (every process): built directly."""
        _rank, agent, _section, node, seen = state.holders[0]
        node_type = node.type or type_from_id(node_id)
        metadata, metrics = node.metadata, node.metrics
        agents = self._agent_lists.get((agent,))
        return _NodeBody(
            node_id,
            node_type,
            node.name or _default_name(node_id, node_type),
            node.parent,
            node.host,
            agents if agents is not None else self._agent_list((agent,)),
            metadata if type(metadata) is dict else _merged((metadata,)),
            metrics if type(metrics) is dict else _merged((metrics,)),
            rfc3339(state.first_seen),
            rfc3339(seen),
        ).__dict__

    def _agent_list(self, agents) -> list[str]:
        # Nodes share a handful of distinct agent lists: one list object per distinct list, never mutated.
        key = tuple(sorted(set(agents)))
        shared = self._agent_lists.get(key)
        if shared is None:
            shared = self._agent_lists[key] = list(key)
        return shared

    def _ports(self, conns) -> list:
        # Edges share a few distinct port lists: one list object per distinct list, never mutated.
        # (``conns``: the ports of the edge's connections.)
        if len(conns) == 1:
            ports = tuple(conns)
        else:
            ports = tuple(sorted(set(conns)))
        shared = self._port_lists.get(ports)
        if shared is None:
            shared = self._port_lists[ports] = list(ports)
        return shared

    def _external_body(self, node_id: str, external: _External) -> dict:
        agents = external.agent_list
        if agents is None:
            agents = external.agent_list = self._agent_list(external.agents)
        return _NodeBody(
            node_id,
            "external",
            external.ip,
            None,
            None,
            agents,
            {},
            {},
            rfc3339(external.first_seen),
            rfc3339(external.last_seen()),
        ).__dict__

    def edge_body(self, edge_id: str) -> dict | None:
        self._settle_imported()
        edge = self._edges.get(edge_id)
        if edge is None:
            return None
        held = edge.conns
        if type(held) is tuple:
            # The common edge: one connection (one or two records), built without intermediate lists.
            conn = self._conns[held]
            records = conn.records
            latest = records[0].seen if len(records) == 1 else max(record.seen for record in records)
            ports = self._port_lists.get((conn.port,)) or self._ports((conn.port,))
            return _EdgeBody(edge_id, edge.source, edge.target, edge.protocol, ports, 1, rfc3339(latest)).__dict__
        conns = [self._conns[key] for key in edge.conn_keys()]
        latest = max(record.seen for conn in conns for record in conn.records)
        return _EdgeBody(
            edge_id,
            edge.source,
            edge.target,
            edge.protocol,
            self._ports([conn.port for conn in conns]),
            len(conns),
            rfc3339(latest),
        ).__dict__

    # -- publishing and reading ---------------------------------------------------------------------

    @property
    def seq(self) -> int:
        return self._published.seq

    @property
    def timestamp(self) -> str:
        """The published version's timestamp (RFC 3339)."""
        return self._published.timestamp

    def resume_seq(self, seq: int) -> None:
        """Number the next publication after ``seq`` (a restart: a UI resuming with a ``seq`` from before
        must never find the same number meaning something else)."""
        self._published.seq = max(self._published.seq, seq)

    def publish(self, now: float) -> Publication | None:
        """Freeze the live state into a new version when anything changed; None (seq unchanged) otherwise.

        The version's timestamp is the latest receipt time (``seen``) accepted so far (``now`` only before
        any report), so two servers fed the same reports, received at the same times, publish the same bytes.
        """
        steps = self.publish_steps(now, float("inf"))
        try:
            while True:
                next(steps)
        except StopIteration as done:
            return done.value

    def publish_steps(self, now: float, slice_seconds: float):
        """:meth:`publish` as a generator that yields every ``slice_seconds`` while it builds the changed
        bodies; its return value (``StopIteration.value``) is the publication. The server drives it from the
        event loop, serving requests between slices. The live state must stay still meanwhile (no ``contribute`` or ``remove_agent``; the server
        holds ``state.topology_lock``). Closed while it builds bodies, it publishes nothing and keeps every
        change for the next publish.

        The change is then applied to the published version in steps too (a max-size report's ~60,000
        changes took over a second of the loop in one); meanwhile :attr:`publishing` is true and readers of
        the published version must wait for the lock. Closed during the apply, it finishes in one go."""
        # Publishing (and resolving imported contributions) allocates many small acyclic objects;
        # collector passes over a heap of millions of them would double its cost for nothing.
        with paused_gc() as collector:
            self._settle_imported()
            if not self._dirty_nodes and not self._dirty_edges:
                return None
            if self._published.seq >= self.seq_ceiling:
                return None  # not reserved on disk yet: the changes wait for the next checkpoint
            dirty_nodes, dirty_edges = self._dirty_nodes, self._dirty_edges
            self._dirty_nodes, self._dirty_edges = set(), set()
            stamp = self._newest if self._newest != float("-inf") else now
            try:
                nodes, edges = {}, {}
                stretch = TimeSlice(slice_seconds)
                node_ids, edge_ids = self._body_order(dirty_nodes, dirty_edges)
                for bodies, ids, body in ((nodes, node_ids, self.node_body), (edges, edge_ids, self.edge_body)):
                    for count, item_id in enumerate(ids, 1):
                        bodies[item_id] = body(item_id)
                        if not count % 256 and stretch.due():
                            with collector.lifted():  # off only while this runs, not while requests are served
                                yield
                            stretch.restart()
            except GeneratorExit:
                self._dirty_nodes |= dirty_nodes
                self._dirty_edges |= dirty_edges
                raise
            apply = self._published.publish_steps(nodes, edges, rfc3339(stamp))
            try:
                publication = yield from stretched(apply, stretch, collector.lifted)
            except GeneratorExit:
                run_steps(self._after_publish(run_steps(apply)))  # never left half-applied, nor unrecorded
                raise
            after = self._after_publish(publication)
            try:
                yield from stretched(after, stretch, collector.lifted)
            except GeneratorExit:
                run_steps(after)
                raise
        return publication

    @property
    def publishing(self) -> bool:
        """A stepped publish is applying its change to the published version: snapshots must wait for it
        (``state.topology_lock``)."""
        return self._published.applying

    def _after_publish(self, publication: Publication | None) -> Generator[None, None, None]:
        """Caches dropped and every publish listener told, in steps: a listener may return a generator of
        steps (history's record), driven like the publish itself while the lock is still held."""
        if publication is None:
            return
        self._snapshots.clear()
        self._snapshot_json.clear()
        self._prune_shared_lists()
        for listener in self.publish_listeners:
            steps = listener(publication, self)
            if steps is not None:
                yield from steps

    def _body_order(self, dirty_nodes: set, dirty_edges: set) -> tuple:
        """The ids to build bodies for, in the order to build them. The first publication (a restore's:
        every node and edge) goes through them in the order they were created, the order they lie in memory
        in: twice as fast as the sets' hash order at 1,000 hosts. Ids of what is gone are left out (their
        body is None, and nothing is published to remove)."""
        if self._published.nodes or self._published.edges:
            return dirty_nodes, dirty_edges
        return (
            [node_id for node_id in chain(self._nodes, self._externals) if node_id in dirty_nodes],
            [eid for eid in self._edges if eid in dirty_edges],
        )

    def _prune_shared_lists(self) -> None:
        """Drop the shared agent and port lists no published body uses any more (issue 16 #10: reports with
        ever-changing port sets left 57 MiB of them behind). Rebuilt from the published bodies when the
        caches outgrow them, so the cost is amortised over the insertions that made them grow."""
        published = self._published
        if len(self._port_lists) > 2 * len(published.edges) + _PRUNE_SLACK:
            self._port_lists = {tuple(edge["ports"]): edge["ports"] for edge in published.edges.values()}
        if len(self._agent_lists) > 2 * len(published.nodes) + _PRUNE_SLACK:
            self._agent_lists = {tuple(node["agent_ids"]): node["agent_ids"] for node in published.nodes.values()}
        published.prune_ports(_PRUNE_SLACK)

    def _cache(self, cache: dict, key: tuple, build):
        value = cache.get(key)
        if value is None:
            if len(cache) >= MAX_CACHED_SNAPSHOTS:
                del cache[next(iter(cache))]  # the oldest: one client per distinct host= cannot grow it
            value = cache[key] = build()
        return value

    def view_in_use(self, level: str = "process", external: str = "each") -> bool:
        """Whether a snapshot of the view costs no build now (a collapsed view is built on first read)."""
        return self._published.in_use(level, external)

    def view_steps(self, level: str = "process", external: str = "each") -> Generator[None, None, None]:
        """The build a first :meth:`snapshot` of a collapsed view does, as a generator of steps (nothing when
        the view is in use), so the server can serve requests while a 300-host view (~0.3 s) is built. The
        published version must stay still meanwhile (the server holds ``state.topology_lock``); once the
        steps end, a snapshot of the view at the current seq costs no build."""
        yield from self._published.view_steps(level, external)

    def snapshot(self, level: str = "process", host: str | None = None, external: str = "each") -> dict:
        """The published topology for a view: ``{"nodes", "edges", "timestamp", "seq"}``.

        ``external="group"`` folds the public external addresses into one ``external:internet`` node.
        The returned dicts are never mutated afterwards; treat them as read-only.
        """
        return self._cache(
            self._snapshots, (level, host, external), lambda: self._published.snapshot(level, host, external)
        )

    def view_maps(self, level: str = "process", external: str = "each") -> tuple[Mapping, Mapping]:
        """The published view's nodes and edges themselves, not copies (a view not in use is built first, in
        one go: :meth:`view_steps` does it in steps). They change at the next publish: read them without an
        await in between, or under ``state.topology_lock``. What the encoder of whole views reads instead of
        a copy per seq (150-300 ms at 1,000 hosts)."""
        view = self._published.view(level, external)
        return view.nodes, view.edges

    def snapshot_steps(self, level: str = "process", external: str = "each") -> Generator[None, None, dict]:
        """:meth:`snapshot` of a whole view (``host=None``) as steps, the same dict: its copy of the view
        made a slice at a time (a view not in use is built in one go: :meth:`view_steps` first). The
        published version must stay still until the steps end (the server holds ``state.topology_lock``)."""
        key = (level, None, external)
        cached = self._snapshots.get(key)
        if cached is not None:
            return cached
        snapshot = yield from self._published.snapshot_steps(level, external)
        return self._cache(self._snapshots, key, lambda: snapshot)

    def snapshot_json(self, level: str = "process", host: str | None = None, external: str = "each") -> bytes:
        return self._cache(
            self._snapshot_json, (level, host, external), lambda: self._published.snapshot_json(level, host, external)
        )

    def counts(self) -> dict:
        return self._published.counts()

    # -- persistence ----------------------------------------------------------------------------------

    def export_agent(self, agent_id: str) -> dict | None:
        """The agent's contributions as JSON-able data (orjson), for :meth:`import_agent`; None when it holds
        none."""
        return run_steps(export.export_steps(self, agent_id))

    def export_agent_steps(self, agent_id: str) -> Generator[None, None, dict | None]:
        """:meth:`export_agent` as a generator that yields every few hundred items exported (``export.py``),
        so a checkpoint can serve requests while an agent at the report limits (~0.4 s) is exported. The
        live topology must stay still until it ends (the server holds ``state.topology_lock``); it only
        reads, so abandoned part-way it changes nothing."""
        return export.export_steps(self, agent_id)

    def import_agents(self, agents, on_error: Callable[[str, Exception], None] | None = None) -> None:
        """Restore many agents, ``(agent_id, data)`` pairs, resolving connections once at the end. Into an
        empty engine (a restart, a replica's snapshot) in bulk (``bulk.py``): the state :meth:`import_agent`
        per agent would build, without its incremental machinery.

        :param on_error: called with the agent and the exception when an agent's data cannot be imported
            (what was imported of it before the error stays, as with :meth:`import_agent`); the others are
            imported all the same. None: the exception propagates.
        """
        with paused_gc():  # millions of small acyclic objects: collector passes would cost more than the import
            if not (self._held or self._nodes or self._conns or self._externals):
                bulk.import_agents(self, agents, on_error)
                return
            for agent_id, data in agents:
                try:
                    self.import_agent(agent_id, data)
                except Exception as exc:
                    if on_error is None:
                        raise
                    on_error(agent_id, exc)
            self._settle_imported()

    def import_agent(self, agent_id: str, data: dict) -> None:
        """Restore an agent exported by :meth:`export_agent` (first_seen and receipt times included; data
        exported without a section's ``seen`` falls back to its report timestamp, as ``contribute`` does).

        Connection resolution is deferred to the next publish, live change or read of the engine, so a
        restore of N agents resolves once instead of N times (the result is the same: resolution is a
        function of the indexes, not of the order they were filled in)."""
        restored = data.get("first_seen") or {}
        self._restored_first_seen.update(restored)
        for ip, hostname, since in data.get("claims") or ():
            self._restored_claims[(ip, hostname)] = since
            contest = self._contested.get(ip)
            if contest is not None and hostname in contest:  # contested by an agent imported before this one
                contest[hostname] = since
        self._importing = True
        try:
            self._import_sections(agent_id, data)
        finally:
            self._importing = False
        for node_id, first_seen in restored.items():
            state = self._nodes.get(node_id) or self._externals.get(node_id)
            if state is not None and first_seen < state.first_seen:
                state.first_seen = first_seen
                self._dirty_nodes.add(node_id)

    def _import_sections(self, agent_id: str, data: dict) -> None:
        for section in data["sections"]:
            contribution = Contribution(
                nodes=tuple(NodeIn(*fields) for fields in section["nodes"]),
                addresses=tuple((ip, node) for ip, node in section["addresses"]),
                connections=tuple(ConnectionIn(*fields) for fields in section["connections"]),
                priority=section["priority"],
            )
            self.contribute(
                agent_id,
                section["hostname"],
                section["section"],
                section["timestamp"],
                section["order"],
                contribution,
                seen=section.get("seen"),
            )


def _collect_steps(items) -> Generator[None, None, tuple]:
    collected = []
    for count, item in enumerate(items, 1):
        collected.append(item)
        if not count % STEP_ITEMS:
            yield
    return tuple(collected)


def _owners(records: list):
    """The agents that reported a connection: the agent id itself for one (most connections), else a tuple."""
    if len(records) == 1:
        return records[0].owner[0]
    agents = tuple(sorted({record.owner[0] for record in records}))
    return agents[0] if len(agents) == 1 else agents


def _merged(mappings) -> dict:
    present = [m for m in mappings if m]
    if not present:
        return {}
    if len(present) == 1 and type(present[0]) is dict:
        return present[0]  # shared, never mutated: no copy per node
    merged: dict = {}
    for mapping in present:
        merged.update(mapping)
    return merged


def _default_name(node_id: str, node_type: str) -> str:
    suffix = node_id.split(":", 1)[1] if ":" in node_id else node_id
    if node_type == "container":
        return suffix[:12]
    if node_type == "process":
        return suffix.rsplit(":", 1)[-1]
    return suffix
