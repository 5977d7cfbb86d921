"""History in cluster mode is a function of the log: replicas that applied the same log answer the same past."""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx

from orchestrator.contract.times import format_rfc3339
from tests.cluster.conftest import converged, host_report, report_seq
from tests.support import post_report, wait_for


def history_oldest(url: str) -> str | None:
    return httpx.get(url + "/api/v1/query/stats", timeout=5).json()["storage"]["history"]["oldest"]


def past(url: str, since: str, middle: str) -> dict:
    """Everything history answers about the window: the net changes, a view as of a middle time, one node's
    timeline (each replica's own answer, compared whole)."""
    with httpx.Client(base_url=url, timeout=10) as client:
        changes = client.get("/api/v1/query/changes", params={"from": since})
        at = client.get("/api/v1/query/topology", params={"at": middle})
        node = client.get(f"/api/v1/query/nodes/{quote('process:host-0:300', safe='')}/history", params={"from": since})
    assert (changes.status_code, at.status_code, node.status_code) == (200, 200, 200), changes.text
    changes_body = changes.json()
    changes_body.pop("to")  # "to" defaults to each replica's own now
    return {"changes": changes_body, "at": at.json(), "node": node.json()}


def test_replicas_fed_the_same_log_keep_the_same_history(start_replica):
    first, second = start_replica(), start_replica()
    clients = [httpx.Client(base_url=s.url, timeout=10) for s in (first, second)]
    hosts, last_seq, since, middle = 4, 0, "", ""
    try:
        for round_ in range(3):
            for index in range(hosts - (1 if round_ == 2 else 0)):  # the last round leaves one host's view as is
                body = host_report(index, hosts, time.time(), load=round_ + 1)
                if round_ == 2 and index == 0:
                    body["processes_info"]["processes"].append({"pid": 300, "ppid": 1, "name": "cron"})
                answer = post_report(clients[(index + round_) % 2], body)
                assert answer.status_code == 202
                last_seq = max(last_seq, report_seq(answer))
            if round_ == 0:
                # A time between two rounds: both replicas published round 0 and nothing after it yet.
                wait_for(lambda seq=last_seq: converged([first.url, second.url], seq), timeout=30, interval=0.1)
                # History starts at each replica's first publication, which the log dates: the same on both.
                oldest = [history_oldest(s.url) for s in (first, second)]
                assert oldest[0] is not None and oldest[0] == oldest[1]
                since, middle = oldest[0], format_rfc3339(time.time())
                time.sleep(0.3)  # the next round's publications are dated after `middle`
        wait_for(lambda: converged([first.url, second.url], last_seq), timeout=30, interval=0.1)
    finally:
        for client in clients:
            client.close()
    ours, theirs = past(first.url, since, middle), past(second.url, since, middle)
    assert ours == theirs
    assert "process:host-0:300" in ours["changes"]["nodes"]["added"]  # the window saw the structural change
    assert [event["change"] for event in ours["node"]["events"]] == ["added"]
    assert len([n for n in ours["at"]["topology"]["nodes"].values() if n["type"] == "host"]) == hosts
