"""Lazy collapsed views: built on first read, maintained while read, dropped when idle; a diff asked for a
view that was not in use at ``seq - 1`` still replays exactly to the snapshot."""

from __future__ import annotations

import pytest

from orchestrator.topology import Topology
from tests.topology.support import apply_diff, host_a, merge, scenario
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
