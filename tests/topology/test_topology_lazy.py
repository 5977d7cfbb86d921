"""Lazy collapsed views: built on first read, maintained while read, dropped when idle; a diff asked for a
view that was not in use at ``seq - 1`` still replays exactly to the snapshot."""

from __future__ import annotations

import pytest

from orchestrator.topology import Topology
from tests.topology.support import apply_diff, host_a, merge, merge_parsed, scenario
from tests.topology.test_topology_views import _mutations, feed

COLLAPSED = ("container", "host")


@pytest.mark.parametrize("level", COLLAPSED)
@pytest.mark.parametrize("host", [None, "host-a", "host-c"])
def test_a_view_first_asked_mid_stream_diffs_to_the_snapshot(level, host):
    # Reference: the view read at every seq (always in use, maintained incrementally). Lazy: read only at
    # some seqs -- sometimes a diff first, sometimes a snapshot first, idle in between.
    reference, lazy = scenario(Topology()), scenario(Topology())
    reference.publish(0)
    lazy.publish(0)
    previous = reference.snapshot(level, host)
    asked, read_last, published = 0, False, 0
    for order, body in enumerate(_mutations(), start=10):
        ref_publication, publication = feed(reference, order, body), feed(lazy, order, body)
        if ref_publication is None:
            assert publication is None
            continue
        published += 1
        ref_diff = ref_publication.diff(level, host)
        expected = reference.snapshot(level, host)
        read_last = published % 4 in (0, 1)  # asked at some seqs, twice in a row (then it stays in use)
        if read_last:
            asked += 1
            if published % 8 < 4:
                lazy.snapshot(level, host)  # a snapshot first, then the diff
            diff = publication.diff(level, host)
            assert diff == ref_diff
            replayed = apply_diff(previous, diff)
            assert replayed["nodes"] == expected["nodes"] and replayed["edges"] == expected["edges"]
            for other in (None, "host-a", "host-b", "host-c"):  # the per-host indexes agree too
                assert lazy.snapshot(level, other) == reference.snapshot(level, other)
        previous = expected
    assert asked >= 4 and published >= 8, (asked, published)


def test_a_diff_of_a_view_not_read_while_its_publication_was_the_latest_is_an_error():
    topology = scenario(Topology())
    topology.publish(0)
    topology.snapshot("host")
    merge(topology, host_a(30), 99)
    first = topology.publish(0)
    host_diff = first.diff("host")  # read at the previous seq: maintained by this publish
    merge(topology, host_a(31), 100)
    second = topology.publish(0)
    with pytest.raises(LookupError):
        first.diff("container")  # never asked while it was the latest, and the base moved on
    assert first.diff("host") == host_diff  # maintained at publish time: still there
    assert second.diff("container") is not None  # the latest: caught up on demand


# -- built in steps ---------------------------------------------------------------------------------------------

VIEWS = [(level, external) for level in COLLAPSED for external in ("each", "group")]
NOW = 1_760_000_000.0


@pytest.fixture(scope="module")
def fleet_reports():
    """``reports(at)``: the reports of 20 generated hosts (processes in containers, cross-host connections,
    public and private externals) dated ``NOW + at``, parsed once."""
    from functools import cache

    from orchestrator.contract.models import Report
    from orchestrator.probe.fleet import Fleet

    fleet = Fleet(20, seed=3)

    @cache
    def reports(at: float = 0) -> list:
        return [Report.model_validate_json(fleet.report_bytes(index, NOW + at)) for index in range(fleet.hosts)]

    return reports


def fleet_topology(reports) -> Topology:
    topology = Topology()
    for order, report in enumerate(reports(), 1):
        merge_parsed(topology, report, order)
    topology.publish(0)
    return topology


def drive(steps) -> int:
    """Run a generator of steps to its end, as the server's loop would between requests; the yields."""
    yields = 0
    for _ in steps:
        yields += 1
    return yields


@pytest.mark.parametrize(("level", "external"), VIEWS)
def test_a_view_built_in_steps_is_the_view_built_in_one_pass(fleet_reports, level, external):
    one_pass, stepped = fleet_topology(fleet_reports), fleet_topology(fleet_reports)
    assert not stepped.view_in_use(level, external)
    assert drive(stepped.view_steps(level, external)) > 10  # many steps: the loop gets its turn between them
    assert stepped.view_in_use(level, external)
    assert drive(stepped.view_steps(level, external)) == 0  # in use: nothing more to build
    whole = one_pass.snapshot(level, None, external)
    assert stepped.snapshot(level, None, external) == whole and len(whole["edges"]) > 200
    assert stepped.snapshot_json(level, None, external) == one_pass.snapshot_json(level, None, external)
    for host in ("sim-host-0", "sim-host-19", "nohost"):  # the per-host indexes too
        assert stepped.snapshot_json(level, host, external) == one_pass.snapshot_json(level, host, external)


@pytest.mark.parametrize(("level", "external"), VIEWS)
def test_a_view_caught_up_in_steps_diffs_and_moves_on_as_one_caught_up_in_one_go(fleet_reports, level, external):
    topologies = fleet_topology(fleet_reports), fleet_topology(fleet_reports)
    publications = []
    for topology in topologies:
        for order, report in enumerate(fleet_reports(15)[:5], 100):  # the same hosts again, 15 s later
            merge_parsed(topology, report, order)
        publications.append(topology.publish(0))
    one_go, stepped = publications
    assert drive(stepped.catch_up_steps(level, external)) > 10
    assert drive(stepped.catch_up_steps(level, external)) == 0  # caught up: the diff is here
    diff = stepped.diff(level, None, external)
    assert diff == one_go.diff(level, None, external) and diff["edges"]["updated"]
    for topology in topologies:
        merge_parsed(topology, fleet_reports(30)[7], 200)
        topology.publish(0)  # maintained from here on, like any view in use
    assert topologies[1].snapshot_json(level, None, external) == topologies[0].snapshot_json(level, None, external)


def test_a_build_abandoned_part_way_leaves_no_view_behind(fleet_reports):
    topology, reference = fleet_topology(fleet_reports), fleet_topology(fleet_reports)
    steps = topology.view_steps("container")
    for _ in range(5):
        next(steps)
    steps.close()  # a reader gone before the view was whole
    assert not topology.view_in_use("container")
    assert topology.snapshot_json("container") == reference.snapshot_json("container")


def test_a_publish_between_the_steps_of_a_build_is_refused_not_mixed_in(fleet_reports):
    topology = fleet_topology(fleet_reports)
    steps = topology.view_steps("host")
    next(steps)
    merge_parsed(topology, fleet_reports(15)[0], 100)
    topology.publish(0)  # what state.topology_lock rules out on the server
    with pytest.raises(RuntimeError, match="while the 'host' view"):
        drive(steps)
    assert not topology.view_in_use("host")


# -- a publish applied in steps ---------------------------------------------------------------------------------


def with_views_in_use(topology: Topology) -> Topology:
    for level, external in VIEWS:
        topology.snapshot(level, None, external)  # read at this seq: the next publish maintains them
    return topology


def re_report(topology: Topology, reports, at: float) -> None:
    for order, report in enumerate(reports(at), 100 + int(at)):  # every host again, later: thousands of changes
        merge_parsed(topology, report, order)


@pytest.mark.parametrize("at", [15, 300])  # new figures only; and churned processes and connections too
def test_a_publish_applied_in_steps_is_the_publish_applied_at_once(fleet_reports, at):
    one_go, stepped = (with_views_in_use(fleet_topology(fleet_reports)) for _ in range(2))
    for topology in (one_go, stepped):
        re_report(topology, fleet_reports, at)
    reference = one_go.publish(0)
    counts_before = stepped.counts()
    steps, applying = stepped.publish_steps(0, slice_seconds=0.0), 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            publication = done.value
            break
        if stepped.publishing:
            applying += 1
            # Part-way through the change: the counts are the previous version's, and a view is refused
            # rather than built from half of it (on the server, readers wait for the lock instead).
            assert stepped.counts() == counts_before
            with pytest.raises(RuntimeError, match="part-way through a stepped publish"):
                stepped.snapshot("host", "nohost")
    assert applying > 10 and not stepped.publishing
    assert publication.seq == reference.seq == 2
    assert stepped.counts() == one_go.counts()
    for level, external in [*VIEWS, ("process", "each")]:
        assert publication.diff(level, None, external) == reference.diff(level, None, external)
        assert publication.diff(level, "sim-host-3", external) == reference.diff(level, "sim-host-3", external)
        assert stepped.snapshot_json(level, None, external) == one_go.snapshot_json(level, None, external)
    assert reference.diff("host")["edges"]["updated"]


def test_a_publish_closed_part_way_through_its_change_finishes_it(fleet_reports):
    # The server closes a publish only when its task is cancelled (shutdown): the published version must
    # still be whole, not half of the change.
    topology, reference = (with_views_in_use(fleet_topology(fleet_reports)) for _ in range(2))
    for each in (topology, reference):
        re_report(each, fleet_reports, 300)
    reference.publish(0)
    published = []
    topology.publish_listeners.append(lambda publication, _topology: published.append(publication.seq))
    steps = topology.publish_steps(0, slice_seconds=0.0)
    while not topology.publishing:
        next(steps)
    next(steps)
    steps.close()
    assert not topology.publishing and topology.seq == 2 and published == [2]
    for level, external in [*VIEWS, ("process", "each")]:
        assert topology.snapshot_json(level, None, external) == reference.snapshot_json(level, None, external)
    assert topology.publish(0) is None  # nothing left over to publish again
