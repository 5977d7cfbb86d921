"""The event-loop lag gauge: what an operator looks at first when POST latency grows."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson

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


def scrape(server) -> dict:
    """``/metrics`` parsed: family name → family (with its samples)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {family.name: family for family in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}


def samples(family, **labels) -> list:
    return [s for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]


def test_metrics_show_the_process_the_build_and_the_ingest_queue(start_server):
    from orchestrator import __version__
    from tests.support import make_settings

    server = start_server(make_settings(server={"ingest_queue_size": 77}))
    families = scrape(server)
    assert samples(families["process_resident_memory_bytes"])[0].value > 0
    assert "process_cpu_seconds" in families and "process_open_fds" in families
    (build,) = families["app_build_info"].samples
    assert build.value == 1 and build.labels["version"] == __version__ and build.labels["python"]
    assert families["app_ingest_queue_capacity"].samples[0].value == 77
    assert families["app_ingest_queue_bytes"].samples[0].value == 0


def test_queue_bytes_count_the_backlog_until_it_is_applied():
    from orchestrator.contract.models import Report
    from orchestrator.runtime.build import build_state
    from tests.support import make_settings, report

    state = build_state(make_settings())
    raw = orjson.dumps(report())
    state.ingest.submit(Report.model_validate_json(raw), raw, time.time())
    state.ingest.submit(Report.model_validate_json(raw), raw, time.time())
    gauge = state.metrics.registry.get_sample_value
    assert gauge("app_ingest_queue_bytes") == 2 * len(raw)
    state.ingest.apply(state.ingest.queue.get_nowait())
    assert gauge("app_ingest_queue_bytes") == len(raw)


def test_labelled_counters_have_samples_before_their_first_event(start_server):
    families = scrape(start_server())
    expected = {
        "app_agents_total": ("status", {"online", "stale"}),
        "app_reports_rejected": ("reason", {"validation"}),
        "app_websocket_closed": ("reason", {"slow", "shutdown", "invalid_view"}),
        "app_cleanup_removed": ("stage", {"archived", "deleted"}),
    }
    for name, (label, values) in expected.items():
        found = {s.labels[label]: s.value for s in families[name].samples}
        assert set(found) >= values and all(found[v] == 0 for v in values), (name, found)


def test_no_created_series(start_server):
    text = httpx.get(start_server().url + "/metrics").text
    assert "_created" not in text


def test_made_up_http_methods_share_one_label_value(start_server):
    server = start_server()
    with httpx.Client(base_url=server.url) as client:
        for n in range(30):
            client.request(f"MADEUP{n}", "/health")
        client.get("/health")
    family = scrape(server)["app_http_request_duration_seconds"]
    methods = {s.labels["method"] for s in family.samples}
    assert methods == {"GET", "other"}


def test_every_exported_metric_is_documented_with_its_type(start_server):
    from tests.support import REPO

    docs = "\n".join(p.read_text() for p in (REPO / "README.md", REPO / "docs" / "api.md") if p.exists())
    text = httpx.get(start_server().url + "/metrics").text
    exported = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    rows = {line.split("`")[1]: line for line in docs.splitlines() if line.startswith("| `")}
    missing = sorted(name for name in exported if name not in rows)
    assert not missing, f"metrics missing from the docs' metrics table: {missing}"
    wrong = sorted(name for name, kind in exported.items() if f"| {kind} |" not in rows[name])
    assert not wrong, f"metrics documented with the wrong type: {wrong}"
