"""Published versions of the topology and their views, maintained incrementally.

The base (``level="process"``) holds every node and edge. The ``container`` view maps each process to its
parent; the ``host`` view maps every node other than hosts and externals (and nodes without a host) to
``host:<its host>``. A view keeps the nodes that map to themselves (the same dict objects as the base: no
copies) and rolls edges up onto the mapped ends: connections summed, ports merged, newest ``last_seen``,
self-loops dropped, the same id scheme.

Collapsed views are lazy: one exists only while it is *in use*. :meth:`Published.view` (snapshots) builds
a view that is not in use from the base in one pass over it (:meth:`Published.build_view`); from then on each
publish maintains it incrementally (touching only the changed base nodes and edges, plus the edges of a
node whose mapping changed) for as long as it keeps being read: a view not read (snapshot or diff) at
seq ``s`` is dropped by the publish of ``s + 1``. :meth:`Publication.diff` of a view not in use at
``seq - 1`` rebuilds it at ``seq - 1`` from the base with the publication's changes reverted, then advances
it like a publish would; so the first diff asked for a view costs one build, the next ones (the hub asks
every publish while a view has clients) an incremental step, and a view nobody reads costs nothing.

A build is a pass over the whole base (~0.3 s at 300 hosts), so each is also a generator of steps
(:meth:`Published.view_steps`, :meth:`Published.catch_up_steps`) that yields every :data:`STEP_ITEMS` base
nodes or edges: the server drives it on the event loop a slice at a time, serving requests in between; the
one-pass methods run the same steps to the end (``run_steps``). A view is installed only once it is whole.

Published dicts are never mutated: a change replaces the dict. A reader holding a snapshot or a node from
an older version keeps seeing exactly that version.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from functools import lru_cache
from itertools import islice
from operator import itemgetter
from typing import TypeVar

import orjson

from orchestrator.runtime.collector import paused as paused_gc
from orchestrator.runtime.slicing import run_steps

from .model import host_id, rfc3339
from .resolve import edge_id as make_edge_id

LEVELS = ("process", "container", "host")
EXTERNALS = ("each", "group")
INTERNET = "external:internet"
_UNCHANGED = ()
# Base nodes or edges gone through between two yields of a stepped build (~1 ms of work at most), so a
# driver checking its time slice at each yield stays close to it.
STEP_ITEMS = 256
COPY_ITEMS = 16_384  # dict entries copied per step of a snapshot (a few milliseconds)
T = TypeVar("T")


def view_name(level: str, external: str = "each") -> str:
    """The name a view is kept under: the level, with ``+group`` when public externals are grouped."""
    _check_level(level)
    if external == "each":
        return level
    if external == "group":
        return f"{level}+group"
    raise ValueError(f"unknown external {external!r}: expected one of {', '.join(EXTERNALS)}")


_NOT_PUBLIC = tuple(
    ipaddress.ip_network(net)
    for net in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/32",
        "::1/128",
        "fe80::/10",
        "fc00::/7",
        "::/128",
    )
)


@lru_cache(maxsize=1 << 16)
def is_grouped(node_id: str) -> bool:
    """Whether ``external=group`` folds this node into :data:`INTERNET`: an ``external:<ip>`` node whose
    address is public (not private, loopback, link-local, CGNAT, ULA or unspecified; the contract's list).
    An address that does not parse stays a node of its own."""
    if not node_id.startswith("external:"):
        return False
    try:
        address = ipaddress.ip_address(node_id[9:].split("%", 1)[0])
    except ValueError:
        return False
    return not any(address in net for net in _NOT_PUBLIC if net.version == address.version)


class _Internet:
    """The grouped externals of one view and the :data:`INTERNET` node they make: agents the union of
    theirs, ``first_seen`` the earliest, ``last_seen`` the latest. Counted per value, so a member that
    changes or goes costs a few counter updates, not a pass over every member."""

    __slots__ = ("agents", "first", "last", "members")

    def __init__(self) -> None:
        self.members = 0
        self.agents: Counter = Counter()
        self.first: Counter = Counter()
        self.last: Counter = Counter()

    def change(self, old: dict | None, new: dict | None) -> None:
        if new is not None:
            self.members += 1
            self.agents.update(new["agent_ids"])
            self.first[new["first_seen"]] += 1
            self.last[new["last_seen"]] += 1
        if old is not None:
            self.members -= 1
            for counter, keys in (
                (self.agents, old["agent_ids"]),
                (self.first, (old["first_seen"],)),
                (self.last, (old["last_seen"],)),
            ):
                for key in keys:
                    counter[key] -= 1
                    if not counter[key]:
                        del counter[key]

    def body(self) -> dict | None:
        if not self.members:
            return None
        return {
            "id": INTERNET,
            "type": "external",
            "name": "Internet",
            "parent": None,
            "host": None,
            "agent_ids": sorted(self.agents),
            "metadata": {},
            "metrics": {},
            "first_seen": min(self.first),
            "last_seen": max(self.last),
        }


class Publication:
    """One published version: its seq, timestamp and the changes from the previous one, per view."""

    __slots__ = ("_by_host", "_changes", "_diffs", "_published", "_raw", "seq", "timestamp")

    def __init__(self, seq: int, timestamp: str, changes: dict, raw: tuple, published: Published) -> None:
        self.seq = seq
        self.timestamp = timestamp
        # level -> (node changes [(id, old, new)], edge changes [(id, old, new, old_hosts, new_hosts)]);
        # a collapsed level only when its view was in use at publish time (else added by diff on demand)
        self._changes = changes
        self._diffs: dict[tuple, dict] = {}
        self._by_host: dict[str, tuple] = {}  # view name -> its changes grouped by host (_changes_by_host)
        self._raw = raw  # the base changes as applied: (node changes, edge changes [(id, old, new)])
        self._published = published

    def diff(self, level: str = "process", host: str | None = None, external: str = "each") -> dict:
        """The contract's ``topology_diff`` payload for a view, from ``seq - 1`` to ``seq``.

        A collapsed view that was not in use at ``seq - 1`` is caught up here: built from the base at
        ``seq - 1`` (the current base with this publication's changes reverted), then advanced with them.
        That is possible only while this publication is the latest one: asked later, such a diff raises
        :class:`LookupError` (the hub asks its diffs right after each publish; one asked in time is cached).
        """
        name = view_name(level, external)
        key = (name, host)
        diff = self._diffs.get(key)
        if diff is None:
            if name not in self._changes:
                self._published.catch_up(name, self)
            diff = self._diffs[key] = self._build_diff(name, host)
        self._published.mark_read(name, self.seq)
        return diff

    def catch_up_steps(self, level: str, external: str = "each") -> Generator[None, None, None]:
        """The catch-up :meth:`diff` would do for the view, as a generator of steps (nothing when this
        publication carries the view's changes already): the server drives it on the loop in slices before
        it asks the diffs. The published state must stay still meanwhile, as for a sliced publish."""
        yield from self._published.catch_up_steps(view_name(level, external), self)

    def changes(self, name: str = "process") -> tuple[list, list]:
        """A view's changes from ``seq - 1`` to ``seq`` (``name`` as :func:`view_name` gives it): node changes
        and edge changes as ``(id, old, new)`` (``None``: absent), in id order; an edge whose end moved host
        may appear with ``old == new``. A view not in use is caught up as for :meth:`diff` (so ask while this
        publication is the latest)."""
        if name not in self._changes:
            self._published.catch_up(name, self)
        self._published.mark_read(name, self.seq)
        node_changes, edge_changes = self._changes[name]
        return node_changes, [(eid, old, new) for eid, old, new, _old_hosts, _new_hosts in edge_changes]

    def changed_ids(self, name: str = "process") -> tuple[Iterator[str], Iterator[str]] | None:
        """The ids of the nodes and of the edges this publication changed in a view (added, replaced or
        removed), or None when it does not carry that view's changes (the view was not in use at
        ``seq - 1``). Unlike :meth:`changes` it never builds a view nor marks one read: the encoder of whole
        views follows publications with it without keeping views in use."""
        carried = self._changes.get(name)
        if carried is None:
            return None
        return map(itemgetter(0), carried[0]), map(itemgetter(0), carried[1])

    def _build_diff(self, name: str, host: str | None) -> dict:
        """A host's diff reads only the changes that touch that host (grouped once per view and
        publication), so a view of a host with nothing in it costs an empty diff, and 2,000 distinct
        ``host=`` views cost the changes once plus 2,000 small dicts, not 2,000 passes over them."""
        node_changes, edge_changes = self._changes[name]
        if host is not None:
            by_host = self._by_host.get(name)
            if by_host is None:
                by_host = self._by_host[name] = _changes_by_host(node_changes, edge_changes)
            node_changes, edge_changes = by_host[0].get(host, ()), by_host[1].get(host, ())
        nodes = _section()
        for node_id, old, new in node_changes:
            if host is not None:
                old = old if old is not None and old["host"] == host else None
                new = new if new is not None and new["host"] == host else None
            _record(nodes, node_id, old, new)
        edges = _section()
        for eid, old, new, old_hosts, new_hosts in edge_changes:
            if host is not None:
                old = old if old is not None and host in old_hosts else None
                new = new if new is not None and host in new_hosts else None
            _record(edges, eid, old, new)
        nodes["removed"].sort()
        edges["removed"].sort()
        return {"from_seq": self.seq - 1, "nodes": nodes, "edges": edges}


def _in_one_go(steps: Generator[None, None, T]) -> T:
    """A build's steps run to the end with the cyclic collector off: many small acyclic objects, and
    collector passes over a heap of millions would double the cost."""
    with paused_gc():
        return run_steps(steps)


def _collector_paused(steps: Generator[None, None, T]) -> Generator[None, None, T]:
    """A build's steps with the cyclic collector off while they run, and as it was between them: the
    requests a driver serves between two steps allocate as usual (see ``Paused.lifted``)."""
    with paused_gc() as collector:
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            with collector.lifted():
                yield


def _changes_by_host(node_changes: list, edge_changes: list) -> tuple[dict, dict]:
    """Change records by the hosts they touch (before or after), each host's in publication order."""
    nodes: dict[str, list] = {}
    for change in node_changes:
        _node_id, old, new = change
        old_host = old["host"] if old is not None else None
        new_host = new["host"] if new is not None else None
        for host in (old_host, new_host) if old_host != new_host else (old_host,):
            if host is not None:
                nodes.setdefault(host, []).append(change)
    edges: dict[str, list] = {}
    for change in edge_changes:
        old_hosts, new_hosts = change[3], change[4]
        for host in old_hosts if old_hosts == new_hosts else dict.fromkeys((*old_hosts, *new_hosts)):
            edges.setdefault(host, []).append(change)
    return nodes, edges


_SMALL = 8  # members kept in a list up to this many, in a set beyond


def multi_add(index: dict, key, value) -> None:
    """Add ``value`` to the members of ``key`` in a compact one-to-many index: a key with one member maps
    to the member itself, a key with a few to a list, only a key with many to a set (most keys have one or
    two members; an empty set alone costs 216 bytes, a list of two 72)."""
    held = index.get(key)
    if held is None:
        index[key] = value
    elif type(held) is list:
        if value not in held:
            if len(held) < _SMALL:
                held.append(value)
            else:
                index[key] = {*held, value}
    elif type(held) is set:
        held.add(value)
    elif held != value:
        index[key] = [held, value]


def multi_discard(index: dict, key, value) -> None:
    held = index.get(key)
    if held is None:
        return
    if type(held) is list:
        if value in held:
            held.remove(value)
            if len(held) == 1:
                index[key] = held[0]
    elif type(held) is set:
        held.discard(value)
        if len(held) <= _SMALL // 2:
            index[key] = list(held) if len(held) > 1 else next(iter(held))
    elif held == value:
        del index[key]


def multi_get(index: dict, key) -> tuple | list | set:
    held = index.get(key)
    if held is None:
        return ()
    return held if type(held) is set or type(held) is list else (held,)


def _section() -> dict:
    return {"added": {}, "updated": {}, "removed": []}


def _record(section: dict, item_id: str, old, new) -> None:
    if new is None:
        if old is not None:
            section["removed"].append(item_id)
    elif old is None:
        section["added"][item_id] = new
    elif old != new:
        section["updated"][item_id] = new


class _View:
    """One level, external addresses each or grouped: its nodes, its (rolled-up) edges and per-host indexes
    for the ``host=`` filter. Grouping is one more mapping: a public external maps to :data:`INTERNET`."""

    def __init__(self, name: str, base: Published) -> None:
        self.name = name
        self.level, _, external = name.partition("+")
        self.group = external == "group"
        self.internet = _Internet() if self.group else None
        self.base = base
        self.nodes: dict[str, dict] = base.nodes if name == "process" else {}
        self.edges: dict[str, dict] = base.edges if name == "process" else {}
        # edge id -> the hosts of its ends: a str for one host (most edges), a tuple for two; read it
        # through hosts_of (a 1-tuple per edge cost ~10 MB at 1,000 hosts).
        self.edge_hosts: dict[str, str | tuple] = {}
        self.nodes_by_host: dict[str, set] = {}
        self.edges_by_host: dict[str, set] = {}
        self.members: dict[str, str | set] = {}  # view edge id -> base edge ids (collapsed levels; multi_add)
        self.base_to_view: dict[str, str | None] = {}

    def maps_to(self, node_id: str) -> str:
        if self.group and is_grouped(node_id):
            return INTERNET
        node = self.base.nodes.get(node_id)
        if node is None or self.level == "process":
            return node_id
        if self.level == "container":
            if node["type"] != "process":
                return node_id
            return node["parent"] or (host_id(node["host"]) if node["host"] else node_id)
        if node["type"] in ("host", "external") or not node["host"]:
            return node_id
        return host_id(node["host"])

    def contains(self, node: dict | None) -> bool:
        if node is None:
            return False
        if self.group and node["type"] == "external" and is_grouped(node["id"]):
            return False
        if self.level == "process":
            return True
        if self.level == "container":
            return node["type"] != "process"
        return node["type"] in ("host", "external") or not node["host"]

    def host_of(self, node_id: str) -> str | None:
        node = self.nodes.get(node_id)
        return node["host"] if node is not None else None

    def index_node(self, node_id: str, old: dict | None, new: dict | None) -> None:
        if old is not None and new is not None and old["host"] == new["host"]:
            return
        if old is not None and old["host"] is not None:
            ids = self.nodes_by_host[old["host"]]
            ids.discard(node_id)
            if not ids:
                del self.nodes_by_host[old["host"]]
        if new is not None and new["host"] is not None:
            self.nodes_by_host.setdefault(new["host"], set()).add(node_id)

    def hosts_of(self, eid: str) -> tuple:
        hosts = self.edge_hosts.get(eid, ())
        return (hosts,) if type(hosts) is str else hosts

    def index_edge(self, eid: str, hosts: tuple | None) -> tuple:
        old_hosts = self.edge_hosts.pop(eid, ())
        if type(old_hosts) is str:
            old_hosts = (old_hosts,)
        for host in old_hosts:
            ids = self.edges_by_host[host]
            ids.discard(eid)
            if not ids:
                del self.edges_by_host[host]
        if hosts:
            hosts = tuple(h for h in dict.fromkeys(hosts) if h is not None)
            if hosts:
                self.edge_hosts[eid] = hosts[0] if len(hosts) == 1 else hosts
            for host in hosts:
                self.edges_by_host.setdefault(host, set()).add(eid)
        return old_hosts


class Published:
    """The published state: base nodes and edges, the three views, counts by node type."""

    def __init__(self) -> None:
        self.seq = 0
        self.timestamp = rfc3339(0.0)
        self.nodes: dict[str, dict] = {}
        self.edges: dict[str, dict] = {}
        self.incident: dict[str, str | set] = {}  # node id -> base edge ids touching it (multi_add)
        self.ports: dict[tuple, list] = {}  # one shared list per distinct rolled-up port list
        self.types: Counter = Counter()
        # The process view always; a collapsed view only while in use (see the module docstring).
        self.views: dict[str, _View] = {"process": _View("process", self)}
        self.read_seq: dict[str, int] = {}  # collapsed view name -> the last seq it was read at
        self.applying = False  # a stepped publish is part-way through its change (see publish_steps)
        self._counts_before: dict = {}

    def publish(self, node_bodies: dict, edge_bodies: dict, timestamp: str) -> Publication | None:
        """The next version: ``node_bodies``/``edge_bodies`` (id -> body, None: gone) applied to the base and
        to every view in use; None (nothing published) when no body differs from the published one."""
        return _in_one_go(self.publish_steps(node_bodies, edge_bodies, timestamp))

    def publish_steps(
        self, node_bodies: dict, edge_bodies: dict, timestamp: str
    ) -> Generator[None, None, Publication | None]:
        """:meth:`publish` as a generator of steps (its return value is the publication) that yields every
        :data:`STEP_ITEMS` changed items: a max-size report's ~60,000 changes took over a second of the loop
        in one step. Between two steps the published state is part-way through the change (:attr:`applying`):
        readers wait until it is whole (the server holds ``state.topology_lock`` and readers take it when
        :attr:`applying`), :meth:`view` refuses, :meth:`counts` answers the version before. Drive it to its
        end: :meth:`Topology.publish_steps`, closed part-way, finishes it in one go (never half-applied)."""
        self.applying, self._counts_before = True, self.counts()
        try:
            return (yield from self._publish_steps(node_bodies, edge_bodies, timestamp))
        finally:
            self.applying = False

    def _publish_steps(
        self, node_bodies: dict, edge_bodies: dict, timestamp: str
    ) -> Generator[None, None, Publication | None]:
        if self.nodes or self.edges:
            node_changes = yield from self._apply_nodes(node_bodies)
            edge_changes = yield from self._apply_edges(edge_bodies)
            if not node_changes and not edge_changes:
                return None
            changes = {"process": (yield from self._base_changes(node_changes, edge_changes))}
        else:  # the first publish (a restore's: the whole topology at once)
            node_changes, edge_changes, base_edges = self._fill(node_bodies, edge_bodies)
            if not node_changes and not edge_changes:
                return None
            changes = {"process": (node_changes, base_edges)}
        for name, view in list(self.views.items()):
            if name == "process":
                continue
            if self.read_seq.get(name, -1) < self.seq:
                del self.views[name]  # not read at the previous seq: idle, its memory goes
                continue
            changes[name] = yield from self._view_changes(view, node_changes, edge_changes)
        self.seq += 1
        self.timestamp = timestamp
        return Publication(self.seq, timestamp, changes, (node_changes, edge_changes), self)

    def mark_read(self, name: str, seq: int) -> None:
        if seq == self.seq and name != "process":
            self.read_seq[name] = seq

    def in_use(self, level: str, external: str = "each") -> bool:
        """Whether the view is in use: reading it now costs no build (the process view always is)."""
        return view_name(level, external) in self.views

    def view(self, level: str, external: str = "each") -> _View:
        """A view at the current seq, built from the base in one pass if it was not in use."""
        return _in_one_go(self._view_steps(level, external))

    def view_steps(self, level: str, external: str = "each") -> Generator[None, None, _View]:
        """:meth:`view` as a generator of steps (its return value is the view). The published state must
        stay still meanwhile (no publish: the server holds ``state.topology_lock``, as for a sliced publish);
        the view is kept only once it is whole, so steps abandoned part-way leave nothing behind."""
        return _collector_paused(self._view_steps(level, external))

    def _view_steps(self, level: str, external: str) -> Generator[None, None, _View]:
        if self.applying:
            raise RuntimeError(
                "the published state was read part-way through a stepped publish (readers wait for "
                "state.topology_lock while Topology.publishing)"
            )
        name = view_name(level, external)
        view = self.views.get(name)
        if view is None:
            seq = self.seq
            view = yield from self._build_view_steps(name, self.nodes, self.edges)
            self._check_still(seq, name)
            view = self.views.setdefault(name, view)
        self.mark_read(name, self.seq)
        return view

    def catch_up(self, name: str, publication: Publication) -> None:
        """Make ``publication`` (the latest) carry the changes of a collapsed view that was not in use at
        ``seq - 1``: the view built from the base at ``seq - 1``, advanced incrementally to ``seq`` (the
        same code as a publish with the view in use), kept in use afterwards."""
        _in_one_go(self._catch_up_steps(name, publication))

    def catch_up_steps(self, name: str, publication: Publication) -> Generator[None, None, None]:
        """:meth:`catch_up` as a generator of steps, under the same condition as :meth:`view_steps`; nothing
        to do when ``publication`` carries the view's changes already."""
        return _collector_paused(self._catch_up_steps(name, publication))

    def _catch_up_steps(self, name: str, publication: Publication) -> Generator[None, None, None]:
        if name in publication._changes:
            return
        if publication.seq != self.seq:
            raise LookupError(
                f"the {name!r} diff of seq {publication.seq} is no longer available "
                f"(seq {self.seq} is published; ask a publication's diffs before the next one)"
            )
        node_changes, edge_changes = publication._raw
        nodes, edges = dict(self.nodes), dict(self.edges)
        for count, (node_id, old, _new) in enumerate(node_changes, 1):
            if old is None:
                del nodes[node_id]
            else:
                nodes[node_id] = old
            if not count % STEP_ITEMS:
                yield
        for count, (eid, old, _new) in enumerate(edge_changes, 1):
            if old is None:
                del edges[eid]
            else:
                edges[eid] = old
            if not count % STEP_ITEMS:
                yield
        view = yield from self._build_view_steps(name, nodes, edges)
        del nodes, edges
        self._check_still(publication.seq, name)
        if name in publication._changes:
            return  # caught up meanwhile (a diff asked in one go between two steps)
        view_changes = yield from self._view_changes(view, node_changes, edge_changes)
        if name in publication._changes:
            return
        publication._changes[name] = view_changes
        self.views[name] = view
        self.read_seq[name] = self.seq

    def _check_still(self, seq: int, name: str) -> None:
        if self.seq != seq:
            raise RuntimeError(
                f"seq {self.seq} was published while the {name!r} view of seq {seq} was being built "
                "(publish and stepped builds must not overlap: hold state.topology_lock)"
            )

    def build_view(self, name: str, nodes: dict, edges: dict) -> _View:
        """The view ``name`` of base ``nodes``/``edges`` in one pass over each (see :meth:`_build_view_steps`)."""
        return _in_one_go(self._build_view_steps(name, nodes, edges))

    def _build_view_steps(self, name: str, nodes: dict, edges: dict) -> Generator[None, None, _View]:
        """A collapsed view of the base ``nodes``/``edges`` in one pass over each: every node mapped to
        its view node with one dict lookup, base edges grouped by (mapped source, mapped target,
        protocol), output dicts built once per view edge. The same state as maintaining the view
        incrementally from an empty topology. Yields every :data:`STEP_ITEMS` nodes or edges."""
        view = _View(name, self)
        view_nodes, nodes_by_host = view.nodes, view.nodes_by_host
        mapped: dict[str, str] = {}  # base node id -> view node id, for the nodes not in the view
        host_ids: dict[str, str] = {}
        container, process, internet = view.level == "container", view.level == "process", view.internet
        for count, (node_id, node) in enumerate(nodes.items(), 1):
            if not count % STEP_ITEMS:
                yield
            kind, host = node["type"], node["host"]
            if internet is not None and kind == "external" and is_grouped(node_id):
                mapped[node_id] = INTERNET
                internet.change(None, node)
                continue
            if process:
                pass
            elif container:
                if kind == "process":
                    parent = node["parent"]
                    if parent:
                        mapped[node_id] = parent
                    elif host:
                        mapped[node_id] = host_ids.get(host) or host_ids.setdefault(host, host_id(host))
                    continue
            elif kind != "host" and kind != "external" and host:
                mapped[node_id] = host_ids.get(host) or host_ids.setdefault(host, host_id(host))
                continue
            view_nodes[node_id] = node
            if host is not None:
                ids = nodes_by_host.get(host)
                if ids is None:
                    nodes_by_host[host] = {node_id}
                else:
                    ids.add(node_id)
        if internet is not None and internet.members:
            view_nodes[INTERNET] = internet.body()
        get = mapped.get
        yield from self._build_edges_steps(view, edges, lambda node_id: get(node_id, node_id), record=False)
        return view

    def _fill(self, node_bodies: dict, edge_bodies: dict) -> tuple[list, list, list]:
        """:meth:`_apply_nodes`, :meth:`_apply_edges` and :meth:`_base_changes` into an empty base: the same
        state, published in id order, and change records, without comparing with old bodies that do not
        exist or moving index entries that are not there. The indexes are filled in the order the bodies are
        given (a restore gives them in the order they lie in memory: far fewer cache misses than id order)."""
        types = self.types
        view = self.views["process"]
        nodes_by_host = view.nodes_by_host
        for node_id, new in node_bodies.items():
            if new is None:
                continue
            types[new["type"]] += 1
            host = new["host"]
            if host is not None:
                ids = nodes_by_host.get(host)
                if ids is None:
                    nodes_by_host[host] = {node_id}
                else:
                    ids.add(node_id)
        # Published in id order, as _apply_nodes does: a snapshot's dicts keep it.
        nodes = self.nodes
        node_changes = []
        for node_id in sorted(node_bodies):
            new = node_bodies[node_id]
            if new is not None:
                nodes[node_id] = new
                node_changes.append((node_id, None, new))
        incident = self.incident
        edge_hosts, edges_by_host = view.edge_hosts, view.edges_by_host
        added = []
        for eid, new in edge_bodies.items():
            if new is None:
                continue
            source, target = new["source"], new["target"]
            for end in (source, target) if source != target else (source,):
                multi_add(incident, end, eid)
            hosts = _index_added(nodes, edge_hosts, edges_by_host, eid, source, target)
            added.append((eid, None, new, (), hosts))
        added.sort(key=itemgetter(0))
        edges = self.edges
        for eid, _old, new, _old_hosts, _hosts in added:
            edges[eid] = new
        return node_changes, [change[:3] for change in added], added

    def _apply_nodes(self, bodies: dict) -> Generator[None, None, list]:
        changes = []
        for count, node_id in enumerate(sorted(bodies), 1):
            if not count % STEP_ITEMS:
                yield
            new, old = bodies[node_id], self.nodes.get(node_id)
            if new == old:
                continue
            if new is None:
                del self.nodes[node_id]
                self.types[old["type"]] -= 1
            else:
                self.nodes[node_id] = new
                self.types[new["type"]] += 1
                if old is not None:
                    self.types[old["type"]] -= 1
            changes.append((node_id, old, new))
        return changes

    def _apply_edges(self, bodies: dict) -> Generator[None, None, list]:
        changes = []
        for count, eid in enumerate(sorted(bodies), 1):
            if not count % STEP_ITEMS:
                yield
            new, old = bodies[eid], self.edges.get(eid)
            if new == old:
                continue
            if new is None:
                del self.edges[eid]
                # A self-loop (a process connected to its own listener) has one end, indexed once.
                for end in {old["source"], old["target"]}:
                    multi_discard(self.incident, end, eid)
            else:
                self.edges[eid] = new
                if old is None:
                    multi_add(self.incident, new["source"], eid)
                    multi_add(self.incident, new["target"], eid)
            changes.append((eid, old, new))
        return changes

    def _base_changes(self, node_changes: list, edge_changes: list) -> Generator[None, None, tuple]:
        view = self.views["process"]
        touched = set()  # nodes that appeared, vanished or moved host: their edges' hosts may change
        moved = set()  # an edge whose end moved to another host: unchanged itself, but enters or leaves filters
        for count, (node_id, old, new) in enumerate(node_changes, 1):
            if not count % STEP_ITEMS:
                yield
            view.index_node(node_id, old, new)
            if old is None or new is None:
                touched.add(node_id)
            elif old["host"] != new["host"]:
                touched.add(node_id)
                moved.update(multi_get(self.incident, node_id))
        edges = []
        for count, (eid, old, new) in enumerate(edge_changes, 1):
            if not count % STEP_ITEMS:
                yield
            edges.append(_changed_edge(view, touched, eid, old, new))
        if moved:
            moved.difference_update(eid for eid, _old, _new in edge_changes)
            for count, eid in enumerate(sorted(moved), 1):
                if not count % STEP_ITEMS:
                    yield
                edge = self.edges[eid]
                edges.append(_indexed_change(view, eid, edge, edge))
        return node_changes, edges

    def _view_changes(self, view: _View, node_changes: list, edge_changes: list) -> Generator[None, None, tuple]:
        nodes = []
        remap: set[str] = set()
        touched = set()  # view nodes that appeared, vanished or moved host
        internet, folded = view.internet, False
        for count, (node_id, old, new) in enumerate(node_changes, 1):
            if not count % STEP_ITEMS:
                yield
            if internet is not None and is_grouped(node_id):
                internet.change(old, new)
                folded = True
                continue
            old_in = old if view.contains(old) else None
            new_in = new if view.contains(new) else None
            if old_in is not None or new_in is not None:
                if new_in is None:
                    del view.nodes[node_id]
                else:
                    view.nodes[node_id] = new_in
                view.index_node(node_id, old_in, new_in)
                nodes.append((node_id, old_in, new_in))
                if old_in is None or new_in is None or old_in["host"] != new_in["host"]:
                    touched.add(node_id)
            if old is not None and new is not None and _mapping_fields(old) != _mapping_fields(new):
                remap.update(multi_get(self.incident, node_id))
        if folded:
            self._fold_internet(view, nodes, touched)
        if not view.edges and not view.base_to_view and 2 * len(edge_changes) >= len(self.edges):
            # a first publish (a restore)
            return nodes, (yield from self._build_edges_steps(view, self.edges, view.maps_to))
        dirty: set[str] = set()
        deltas: dict[str, list] = {}
        base_to_view = view.base_to_view
        for count, (eid, old, new) in enumerate(edge_changes, 1):
            if not count % STEP_ITEMS:
                yield
            if old is None or new is None:
                remap.add(eid)
            elif eid not in remap:
                # Same id, same ends, same mapping: only the rolled-up counts and times can change.
                veid = base_to_view.get(eid)
                if veid is not None:
                    deltas.setdefault(veid, []).append((old, new))
        for count, eid in enumerate(remap, 1):
            if not count % STEP_ITEMS:
                yield
            self._remap_edge(view, eid, dirty)
        edges = []
        for count, veid in enumerate(sorted(dirty.union(deltas)), 1):
            if not count % STEP_ITEMS:
                yield
            change = None
            if veid not in dirty:
                change = self._rollup_delta(view, veid, deltas[veid], touched)
            if change is None:
                change = self._rollup(view, veid)
            elif change is _UNCHANGED:
                continue
            if change is not None:
                edges.append(change)
        return nodes, edges

    @staticmethod
    def _fold_internet(view: _View, nodes: list, touched: set) -> None:
        """The :data:`INTERNET` node's change after its members changed (appended to the node changes)."""
        old, new = view.nodes.get(INTERNET), view.internet.body()
        if new == old:
            return
        if new is None:
            del view.nodes[INTERNET]
        else:
            view.nodes[INTERNET] = new
        if old is None or new is None:
            touched.add(INTERNET)
        nodes.append((INTERNET, old, new))

    def _build_edges_steps(
        self, view: _View, edges: dict, maps_to: Callable[[str], str], record: bool = True
    ) -> Generator[None, None, list]:
        """Every edge of an empty collapsed view from the base ``edges`` in one pass, each end mapped to its
        view node by ``maps_to``: the same edges as remapping and rolling up each base edge, at a fraction
        of the cost per edge. Returns the changes in edge id order (none unless ``record``); yields every
        :data:`STEP_ITEMS` base edges and view edges."""
        # Grouped by the mapped ends first: many base edges roll up into one view edge, whose id is then
        # made once (the id scheme is one-to-one, so the groups and their order are those of the ids).
        by_ends: dict[tuple, list] = {}
        mapped: dict[str, str] = {}
        for count, (eid, edge) in enumerate(edges.items(), 1):
            if not count % STEP_ITEMS:
                yield
            source, target = edge["source"], edge["target"]
            source = mapped.get(source) or mapped.setdefault(source, maps_to(source))
            target = mapped.get(target) or mapped.setdefault(target, maps_to(target))
            if source == target:
                continue  # a self-loop created by the collapse
            ends = (source, target, edge["protocol"])
            group = by_ends.get(ends)
            if group is None:
                by_ends[ends] = [eid]
            else:
                group.append(eid)
        groups: dict[str, tuple] = {}
        for count, (ends, eids) in enumerate(by_ends.items(), 1):
            if not count % STEP_ITEMS:
                yield
            groups[make_edge_id(*ends)] = (ends, eids)
        del by_ends
        changes = []
        nodes, edge_hosts, by_host = view.nodes, view.edge_hosts, view.edges_by_host
        base_to_view = view.base_to_view
        for count, veid in enumerate(sorted(groups) if record else groups, 1):
            if not count % STEP_ITEMS:
                yield
            (source, target, _protocol), eids = groups[veid]
            for eid in eids:
                base_to_view[eid] = veid
            if len(eids) == 1:  # most view edges: their base edge's figures as they are
                first = edges[eids[0]]
                ports, connections, last_seen = first["ports"], first["connections"], first["last_seen"]
                view.members[veid] = eids[0]
            else:
                members = [edges[eid] for eid in eids]
                first = members[0]
                ports = self._ports(members)
                connections = sum(edge["connections"] for edge in members)
                last_seen = max(edge["last_seen"] for edge in members)
                view.members[veid] = eids if len(eids) <= _SMALL else set(eids)
            new = view.edges[veid] = {
                "id": veid,
                "source": source,
                "target": target,
                "protocol": first["protocol"],
                "ports": ports,
                "connections": connections,
                "last_seen": last_seen,
            }
            hosts = _index_added(nodes, edge_hosts, by_host, veid, source, target)
            if record:
                changes.append((veid, None, new, (), hosts))
        return changes

    @staticmethod
    def _rollup_delta(view: _View, veid: str, pairs: list, touched: set):
        """The common change -- member edges with the same ports, more or fewer connections, a newer
        ``last_seen`` -- applied to the rolled-up edge in O(changed members) instead of re-summing every
        member. None when it does not apply (then :meth:`_rollup` recomputes)."""
        old = view.edges.get(veid)
        if old is None:
            return None
        connections, last_seen = old["connections"], old["last_seen"]
        for before, after in pairs:
            if after["last_seen"] < before["last_seen"] or (
                before["ports"] is not after["ports"] and before["ports"] != after["ports"]
            ):
                return None
            connections += after["connections"] - before["connections"]
            last_seen = max(last_seen, after["last_seen"])
        if connections == old["connections"] and last_seen == old["last_seen"]:
            return _UNCHANGED
        new = dict(old)
        new["connections"] = connections
        new["last_seen"] = last_seen
        view.edges[veid] = new
        return _changed_edge(view, touched, veid, old, new)

    @staticmethod
    def _remap_edge(view: _View, eid: str, dirty: set) -> None:
        old_veid = view.base_to_view.pop(eid, None)
        if old_veid is not None:
            multi_discard(view.members, old_veid, eid)
            dirty.add(old_veid)
        edge = view.base.edges.get(eid)
        if edge is None:
            return
        source, target = view.maps_to(edge["source"]), view.maps_to(edge["target"])
        if source == target:
            return  # a self-loop created by the collapse
        veid = make_edge_id(source, target, edge["protocol"])
        view.base_to_view[eid] = veid
        multi_add(view.members, veid, eid)
        dirty.add(veid)

    def _rollup(self, view: _View, veid: str) -> tuple | None:
        members = multi_get(view.members, veid)
        old = view.edges.get(veid)
        new = None
        if members:
            base_edges = [view.base.edges[eid] for eid in members]
            first = base_edges[0]
            source, target = view.maps_to(first["source"]), view.maps_to(first["target"])
            new = {
                "id": veid,
                "source": source,
                "target": target,
                "protocol": first["protocol"],
                "ports": first["ports"] if len(base_edges) == 1 else self._ports(base_edges),
                "connections": sum(edge["connections"] for edge in base_edges),
                "last_seen": max(edge["last_seen"] for edge in base_edges),
            }
        else:
            view.members.pop(veid, None)
        if new == old:
            if new is not None and _hosts(view, new) != view.hosts_of(veid):
                return _indexed_change(view, veid, old, new)  # an end moved to another host
            return None
        if new is None:
            del view.edges[veid]
        else:
            view.edges[veid] = new
        return _indexed_change(view, veid, old, new)

    def prune_ports(self, slack: int) -> None:
        """Drop the shared rolled-up port lists no view edge uses any more, once they outgrow the views."""
        live = [view.edges for name, view in self.views.items() if name != "process"]
        if len(self.ports) > 2 * sum(map(len, live)) + slack:
            self.ports = {tuple(edge["ports"]): edge["ports"] for edges in live for edge in edges.values()}

    def _ports(self, base_edges: list) -> list:
        ports = tuple(sorted({port for edge in base_edges for port in edge["ports"]}))
        shared = self.ports.get(ports)
        if shared is None:
            shared = self.ports[ports] = list(ports)
        return shared

    # -- reading ------------------------------------------------------------------------------------

    def snapshot(self, level: str, host: str | None, external: str = "each") -> dict:
        if host is None:
            return run_steps(self.snapshot_steps(level, external))
        view = self.view(level, external)
        nodes = {node_id: view.nodes[node_id] for node_id in sorted(view.nodes_by_host.get(host, ()))}
        edges = {eid: view.edges[eid] for eid in sorted(view.edges_by_host.get(host, ()))}
        return {"nodes": nodes, "edges": edges, "timestamp": self.timestamp, "seq": self.seq}

    def snapshot_json(self, level: str, host: str | None, external: str = "each") -> bytes:
        return orjson.dumps(self.snapshot(level, host, external), option=orjson.OPT_SORT_KEYS)

    def snapshot_steps(self, level: str, external: str = "each") -> Generator[None, None, dict]:
        """:meth:`snapshot` of a whole view with its dicts copied :data:`COPY_ITEMS` entries per step: at
        1,000 hosts the process view's two copies (124k nodes, 150k edges) held the loop 150-300 ms in one
        go. The published version must stay still until the steps end (``state.topology_lock``)."""
        view = self.view(level, external)
        nodes = yield from _copy_steps(view.nodes)
        edges = yield from _copy_steps(view.edges)
        return {"nodes": nodes, "edges": edges, "timestamp": self.timestamp, "seq": self.seq}

    def counts(self) -> dict:
        if self.applying:
            return self._counts_before
        types = self.types
        return {
            "nodes": len(self.nodes),
            "edges": len(self.edges),
            "hosts": types["host"],
            "containers": types["container"],
            "processes": types["process"],
            "externals": types["external"],
        }


def _copy_steps(items: dict) -> Generator[None, None, dict]:
    copy: dict = {}
    pending = iter(items.items())
    while True:
        before = len(copy)
        copy.update(islice(pending, COPY_ITEMS))
        if len(copy) - before < COPY_ITEMS:
            return copy
        yield


def _changed_edge(view: _View, touched: set, eid: str, old: dict | None, new: dict | None) -> tuple:
    """:func:`_indexed_change`, short-cut for the common change: an edge still there whose ends did not
    appear, vanish or move host in this publish keeps its hosts (two set lookups instead of recomputing)."""
    if old is not None and new is not None and new["source"] not in touched and new["target"] not in touched:
        hosts = view.hosts_of(eid)
        return eid, old, new, hosts, hosts
    return _indexed_change(view, eid, old, new)


def _indexed_change(view: _View, eid: str, old: dict | None, new: dict | None) -> tuple:
    """The change record ``(id, old, new, old hosts, new hosts)``; the host index moves when the edge
    appears or disappears, or when one of its ends now lies on another host."""
    if new is not None:
        hosts = _hosts(view, new)
        if old is not None and hosts == view.hosts_of(eid):
            return eid, old, new, hosts, hosts
    else:
        hosts = None
    old_hosts = view.index_edge(eid, hosts)
    return eid, old, new, old_hosts, view.hosts_of(eid)


def _index_added(nodes: dict, edge_hosts: dict, by_host: dict, eid: str, source: str, target: str) -> tuple:
    """:func:`_indexed_change` of an edge added to a view that did not hold it (a fill or a build from
    empty): its hosts (those of its ends in ``nodes``) indexed, with nothing old to move; its hosts."""
    source_node, target_node = nodes.get(source), nodes.get(target)
    hosts = _end_hosts(
        source_node["host"] if source_node is not None else None,
        target_node["host"] if target_node is not None else None,
    )
    if hosts:
        edge_hosts[eid] = hosts[0] if len(hosts) == 1 else hosts
        for host in hosts:
            ids = by_host.get(host)
            if ids is None:
                by_host[host] = {eid}
            else:
                ids.add(eid)
    return hosts


def _hosts(view: _View, edge: dict) -> tuple:
    return _end_hosts(view.host_of(edge["source"]), view.host_of(edge["target"]))


def _end_hosts(source: str | None, target: str | None) -> tuple:
    """The hosts of an edge's ends, each once, in order (an end without a host has none)."""
    if source == target or target is None:
        return () if source is None else (source,)
    return (target,) if source is None else (source, target)


def _mapping_fields(node: dict) -> tuple:
    return node["type"], node["parent"], node["host"]


def _check_level(level: str) -> str:
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}: expected one of {', '.join(LEVELS)}")
    return level
