"""The event-loop lag gauge: what an operator looks at first when POST latency grows."""

from __future__ import annotations

import asyncio
import time

import httpx

from orchestrator.runtime.metrics import create_metrics, watch_loop_lag
from tests.support import wait_for


async def test_a_blocked_loop_shows_up_as_lag():
    metrics = create_metrics()
    task = asyncio.create_task(watch_loop_lag(metrics, interval=0.01))
    await asyncio.sleep(0.05)
    time.sleep(0.3)  # work that holds the loop, as a long merge would
    await asyncio.sleep(0.05)
    task.cancel()
    sample = metrics.registry.get_sample_value
    assert sample("app_event_loop_lag_seconds_count") >= 3
    # At least one sample was late by about the blocked time, and most were not.
    assert sample("app_event_loop_lag_seconds_bucket", {"le": "0.25"}) < sample("app_event_loop_lag_seconds_count")
    assert sample("app_event_loop_lag_seconds_bucket", {"le": "0.1"}) >= 2


def test_a_running_server_exports_loop_lag(start_server):
    server = start_server()

    def sampled():
        text = httpx.get(server.url + "/metrics").text
        counts = [line for line in text.splitlines() if line.startswith("app_event_loop_lag_seconds_count")]
        return counts and float(counts[0].split()[1]) > 0

    wait_for(sampled, 5)
