"""The plugin host: what start-up refuses, and how a failing extractor is isolated."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
import yaml
from structlog.testing import capture_logs

from orchestrator.app import create_app
from orchestrator.contract.models import Report
from orchestrator.pipeline import host
from orchestrator.pipeline.host import PluginError
from orchestrator.runtime.build import build_state
from tests.plugins import broken
from tests.runtime.test_cli import run_cli
from tests.support import make_settings, post_report, report, wait_for

CID = "c" * 64
DOCKER_CGROUP = f"0::/system.slice/docker-{CID}.scope\n"


def process_report(agent_id: str = "agent-1", cgroup: str = DOCKER_CGROUP) -> dict:
    return report(agent_id, processes_info={"processes": [{"pid": 7, "name": "app", "cgroup": cgroup}]})


def merged(state, body: dict) -> dict:
    """A report through the ingest worker; the published topology's nodes."""
    state.ingest.submit(Report.model_validate(body), orjson.dumps(body), time.time())
    state.ingest.apply(state.ingest.queue.get_nowait())
    state.topology.publish(time.time())
    return state.topology.snapshot()["nodes"]


def errors_counted(state, plugin: str, hook: str) -> float | None:
    return state.metrics.registry.get_sample_value("app_plugin_errors_total", {"plugin": plugin, "hook": hook})


def test_a_raising_extractor_does_not_stop_the_builtin_one(tmp_path):
    plugin = broken.RaisingExtractor()
    state = build_state(make_settings(), extra_plugins=[("raising", plugin)])
    with capture_logs() as logs:
        nodes = merged(state, process_report())
    assert nodes["process:host-1:7"]["parent"] == f"container:{CID}"
    failure = next(e for e in logs if e["event"] == "plugin_failed")
    assert failure["plugin"] == "raising" and failure["hook"] == "extract_container_id"
    assert errors_counted(state, "raising", "extract_container_id") == 1


def test_an_answer_reached_past_a_failing_extractor_is_not_cached(tmp_path):
    plugin = broken.FlakyExtractor()
    state = build_state(make_settings(), extra_plugins=[("flaky", plugin)])
    host_cgroup = "0::/init.scope\n"  # the built-in answers None: a host process
    assert merged(state, process_report(cgroup=host_cgroup))["process:host-1:7"]["parent"] == "host:host-1"
    nodes = merged(state, process_report(cgroup=host_cgroup))
    assert nodes["process:host-1:7"]["parent"] == f"container:flaky-{len(host_cgroup)}"
    merged(state, process_report(cgroup=host_cgroup))
    assert plugin.calls == 2  # the good answer is cached


def test_an_extractor_failing_through_the_api_is_counted_and_the_container_still_found(start_server):
    server = start_server(extra_plugins=[("raising", broken.RaisingExtractor())])
    with httpx.Client(base_url=server.url) as http:
        assert post_report(http, process_report()).status_code == 202

        def parent():
            nodes = http.get("/api/v1/query/topology").json()["topology"]["nodes"]
            return nodes.get("process:host-1:7", {}).get("parent")

        assert wait_for(parent) == f"container:{CID}"
        metrics = http.get("/metrics").text
    assert 'app_plugin_errors_total{hook="extract_container_id",plugin="raising"} 1.0' in metrics


def test_configure_plugin_runs_after_register_sections():
    plugin = broken.OrderedStartUp()
    state = build_state(make_settings(), extra_plugins=[("ordered", plugin)])
    assert plugin.calls == ["register_sections", "configure_plugin"]
    assert "ordered_info" in state.sections


@pytest.mark.parametrize(
    "plugin, settings, message",
    [
        (broken.OrderedStartUp(), {"colour": "red"}, "plugin 'culprit': unknown settings ['colour']"),
        (broken.CrashingConfigure(), {}, "plugin 'culprit' failed in configure_plugin: ValueError('config bug')"),
        (broken.Misspelled(), {}, "plugin 'culprit'"),
        (broken.WantsTopology(), {}, "plugin 'culprit'"),
    ],
)
def test_a_plugin_that_breaks_the_contract_stops_start_up(plugin, settings, message):
    config = make_settings(pipeline={"plugins": {"culprit": {"settings": settings}}})
    with pytest.raises(PluginError) as raised:
        create_app(config, extra_plugins=[("culprit", plugin)])
    assert message in str(raised.value)


def test_a_misspelled_hook_is_named_in_the_error():
    with pytest.raises(PluginError, match="merge_reports"):
        build_state(make_settings(), extra_plugins=[("typo", broken.Misspelled())])


def test_a_checkout_that_is_not_installed_refuses_to_start_without_its_plugins(monkeypatch):
    monkeypatch.setattr(host, "entry_points", lambda group: [])
    with pytest.raises(PluginError, match="not installed"):
        create_app(make_settings())


def test_serve_exits_2_with_one_line_when_a_plugin_refuses_its_settings(tmp_path):
    dist = tmp_path / "strict_settings-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: strict-settings\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[orchestrator]\nstrict = tests.plugins.strict_settings\n")
    config = tmp_path / "orchestrator.yaml"
    config.write_text(yaml.safe_dump({"pipeline": {"plugins": {"strict": {"settings": {"colour": "red"}}}}}))
    result = run_cli("serve", "--data-dir", str(tmp_path), "--config", str(config), env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "plugin 'strict': unknown settings ['colour']" in lines[0], result.stderr
