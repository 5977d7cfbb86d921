"""The ingest worker merges a report at the item limits in steps: other requests are served meanwhile, and
the topology is the one the same report gives merged in one go."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest

from orchestrator.contract.models import Report
from orchestrator.probe.fleet import Fleet
from orchestrator.runtime.build import build_state
from tests.plugins.recorder import MergeWatch
from tests.support import make_settings, post_report

NOW = 1_760_000_000.0


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    # Two hosts at the default item limits (10,000 processes, 50,000 connections), ~9 MB of JSON each.
    return Fleet(2, seed=3, processes=10_000, connections=50_000, containers=100)


def test_requests_are_answered_while_a_report_at_the_item_limits_is_merged(start_server, fleet):
    watch = MergeWatch()
    server = start_server(extra_plugins=[("merge_watch", watch)])
    with httpx.Client(base_url=server.url, timeout=120) as client:
        assert post_report(client, fleet.report(0, time.time()), gzipped=True).status_code == 202
        assert watch.merging.wait(120)
        assert client.get("/api/v1/ping").status_code == 200
        # Answered before the report's sinks ran: the loop served it between two steps of the merge.
        assert not watch.applied.is_set()
        assert client.get("/health").json()["ingest_queue"] == 1  # the report in progress still counts
        assert watch.applied.wait(120)


def test_a_report_merged_in_steps_gives_the_topology_of_one_merged_in_one_go(fleet):
    small = Fleet(20, seed=3)
    states = [build_state(make_settings()) for _ in range(2)]
    for state in states:
        for index in range(small.hosts):
            state.ingest.submit(Report.model_validate_json(raw := small.report_bytes(index, NOW)), raw, NOW)
            state.ingest.apply(state.ingest.queue.get_nowait())
        state.topology.publish(NOW)
    raw = orjson.dumps(fleet.report(0, NOW + 15))
    report = Report.model_validate_json(raw)
    in_one_go, in_steps = states
    in_one_go.ingest.submit(report, raw, NOW + 15)
    in_one_go.ingest.apply(in_one_go.ingest.queue.get_nowait())

    async def merge_in_steps() -> int:
        worker = asyncio.create_task(in_steps.ingest.run())
        in_steps.ingest.submit(report, raw, NOW + 15)
        turns = 0
        while in_steps.ingest.applied_order < in_steps.order:
            await asyncio.sleep(0)  # another task's turn: the worker yields the loop while it merges
            turns += 1
        worker.cancel()
        return turns

    assert asyncio.run(merge_in_steps()) > 10
    for state in states:
        state.topology.publish(NOW + 20)
    for level, external in (("process", "each"), ("host", "group")):
        assert in_steps.topology.snapshot_json(level, None, external) == in_one_go.topology.snapshot_json(
            level, None, external
        )
    assert in_steps.topology.export_agent(fleet.agent_id(0)) == in_one_go.topology.export_agent(fleet.agent_id(0))


def test_the_door_counts_the_log_a_replica_has_not_applied_in_its_bound():
    state = build_state(make_settings(server={"ingest_queue_size": 10}))
    ingest, behind = state.ingest, {"messages": 9}
    ingest.unapplied_log = lambda: behind["messages"]
    assert ingest.refusal() is None
    with ingest.admission(100):  # one report past the door fills the bound
        refused = ingest.refusal()
        assert refused is not None and refused.status == 429 and refused.headers["Retry-After"] == "1"
        assert "9 messages of the cluster's log still to apply" in str(refused)
    behind["messages"] = 0
    assert ingest.refusal() is None
