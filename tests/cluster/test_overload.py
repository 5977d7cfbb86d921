"""In cluster mode the door's bound covers what a replica has stored in the log but not applied yet: a
replica far behind the log answers 429 + Retry-After before reading the body, and takes reports again once
it has caught up. Nothing it answered 202 is lost."""

from __future__ import annotations

import time

import httpx

from orchestrator.probe.fleet import Fleet
from tests.cluster.conftest import cluster_settings, cluster_stats, converged, report_seq, wait_healthy
from tests.support import wait_for

HOSTS, ROUNDS = 40, 5  # 200 fleet reports (100 processes, 200 connections each): a replay of a second or more


def _post(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/api/v1/reports", content=body, headers={"Content-Type": "application/json"})


def test_a_replica_far_behind_the_log_refuses_reports_until_it_has_applied_it(start_replica, start_server, nats_server):
    fleet = Fleet(HOSTS, seed=3)
    first = start_replica(snapshot_interval="24h")  # the new replica replays the whole log, not a snapshot's tail
    with httpx.Client(base_url=first.url, timeout=30) as client:
        # Again if the rounds straddled a snapshot slot's start (midnight UTC), with new timestamps: the same
        # bytes again would be stored once (deduplicated by content).
        while True:
            taken, start = cluster_stats(first.url)["snapshots_taken"], time.time() - ROUNDS * 15
            for r in range(ROUNDS):
                for i in range(HOSTS):
                    answer = _post(client, fleet.report_bytes(i, start + r * 15 + i * 15 / HOSTS))
                    assert answer.status_code == 202, answer.text
                    # The 202 came after the PubAck: the replica's stats already count that message as stored.
                    assert cluster_stats(first.url)["stream_seq"] >= report_seq(answer)
            time.sleep(0.5)  # a snapshot being saved is counted once it is stored
            if cluster_stats(first.url)["snapshots_taken"] == taken:
                break
    last = report_seq(answer)

    # A new replica that may hold 20 unapplied messages replays ~200 reports from the start of the log.
    behind = start_server(cluster_settings(nats_server.url, server={"ingest_queue_size": 20}))
    wait_for(lambda: cluster_stats(behind.url)["lag"] >= 100, timeout=30, interval=0.01)
    with httpx.Client(base_url=behind.url, timeout=30) as client:
        refused = _post(client, fleet.report_bytes(0, time.time()))
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        assert "still to apply" in refused.json()["error"]["message"]

        wait_healthy(behind.url)
        body = fleet.report_bytes(0, time.time())
        # Caught up, it takes reports again (clock ticks keep arriving: its lag is a few messages, not zero).
        accepted = wait_for(lambda: reply if (reply := _post(client, body)).status_code == 202 else None, timeout=30)
    # Every report either replica answered 202 is in both copies, which agree.
    assert report_seq(accepted) > last
    view = wait_for(lambda: converged([first.url, behind.url], report_seq(accepted)), timeout=30)
    assert len([n for n in view["nodes"].values() if n["type"] == "host"]) == HOSTS
