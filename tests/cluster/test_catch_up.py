"""A replica with an empty data dir catches up from the snapshot in JetStream plus the log after it."""

from __future__ import annotations

import json
import time

import httpx
from websockets.sync.client import connect

from tests.api.test_ws import Mirror
from tests.cluster.conftest import cluster_stats, converged, host_report, report_seq
from tests.support import post_report, wait_for


def _post_round(url: str, hosts: int, ts: float) -> int:
    with httpx.Client(base_url=url, timeout=10) as client:
        answers = [post_report(client, host_report(i, hosts, ts)) for i in range(hosts)]
    assert {a.status_code for a in answers} == {202}
    return max(report_seq(a) for a in answers)


def _snapshot_after(url: str, seq: int) -> None:
    """Wait until the replica at ``url`` has applied ``seq`` and then taken a snapshot."""
    wait_for(lambda: cluster_stats(url)["applied_seq"] >= seq, timeout=10)
    taken = cluster_stats(url)["snapshots_taken"]
    wait_for(lambda: cluster_stats(url)["snapshots_taken"] > taken, timeout=15)


def test_fresh_replica_catches_up_from_snapshot_and_log_with_no_other_replica_running(start_replica, tmp_path):
    first = start_replica(tmp_path / "first", snapshot_interval="1s")
    _snapshot_after(first.url, _post_round(first.url, 5, time.time() - 60))
    seq = _post_round(first.url, 5, time.time() - 45)  # after the snapshot: replayed from the log
    before = wait_for(lambda: converged([first.url], seq), timeout=15)
    first.stop()

    fresh = start_replica(tmp_path / "fresh")  # empty data dir, the only replica running
    stats = cluster_stats(fresh.url)
    assert stats["snapshot_loaded"] == "object_store"
    after = wait_for(lambda: converged([fresh.url], seq), timeout=15)
    assert after == before


def test_restart_on_its_own_data_dir_starts_from_the_local_snapshot(start_replica, tmp_path):
    first = start_replica(tmp_path / "own", snapshot_interval="1s")
    seq = _post_round(first.url, 3, time.time() - 60)
    _snapshot_after(first.url, seq)
    before = wait_for(lambda: converged([first.url], seq), timeout=15)
    first.stop()
    again = start_replica(tmp_path / "own")
    assert cluster_stats(again.url)["snapshot_loaded"] == "local"  # as new as the object store's: no download
    assert wait_for(lambda: converged([again.url], seq), timeout=15) == before


def _ws(url: str, query: str = ""):
    return connect(url.replace("http://", "ws://") + "/api/v1/ws" + (f"?{query}" if query else ""), open_timeout=10)


def test_websocket_resumes_on_another_replica_with_the_exact_missed_diffs(start_replica):
    first, second = start_replica(), start_replica()
    seq = _post_round(first.url, 3, time.time() - 60)
    wait_for(lambda: converged([first.url, second.url], seq), timeout=15)
    with _ws(first.url) as ws:
        mirror = Mirror(json.loads(ws.recv(timeout=10)))
    left_at = mirror.seq
    seq = _post_round(second.url, 4, time.time() - 30)  # a fourth host, and every host's new report
    view = wait_for(lambda: converged([first.url, second.url], seq), timeout=15)
    current = httpx.get(second.url + "/api/v1/query/stats").json()["seq"]
    assert current > left_at
    with _ws(second.url, f"since={left_at}") as ws:
        while mirror.seq < current:
            message = json.loads(ws.recv(timeout=10))
            assert message["type"] == "topology_diff"  # the other replica numbers the log the same way
            mirror.apply(message)
    assert mirror.nodes == view["nodes"]
    assert mirror.edges == view["edges"]
