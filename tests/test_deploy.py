"""The deployment files in deploy/: parsed, checked for the fields that matter, their commands accepted by
the real command line, their metrics exported by a real server, the alert rules checked by promtool."""

from __future__ import annotations

import argparse
import configparser
import json
import re
import shlex
import shutil
import subprocess

import httpx
import pytest
import yaml

from orchestrator.probe import host_probe
from tests.support import REPO

DEPLOY = REPO / "deploy"
DATA_DIR = "/var/lib/orchestrator/data"


def probe_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` (after ``orchestrator probe``) as the real probe parses it."""
    parser = argparse.ArgumentParser()
    host_probe.add_arguments(parser)
    args = parser.parse_args(argv)
    assert args.server.startswith(("http://", "https://"))
    return args


def dockerfile_user() -> int:
    user = next(line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("USER "))
    return int(user.split()[1].split(":")[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    """Every series name a running server exports (with the histogram suffixes)."""
    from orchestrator.app import create_app
    from tests.support import ServerThread, free_port, make_settings

    server = ServerThread(create_app(make_settings()), free_port()).start()
    try:
        text = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    return names | {n + suffix for n in names for suffix in ("_bucket", "_count", "_sum")}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:app|process)_[a-z_]+)\b", expr))


def test_compose_runs_the_server_with_its_volume_and_a_host_probe():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    server, probe = compose["services"]["server"], compose["services"]["probe"]
    assert server["build"]["context"] == ".."
    assert "8080:8080" in server["ports"]
    assert any(volume.endswith(":" + DATA_DIR) for volume in server["volumes"])
    assert probe["pid"] == "host" and probe["network_mode"] == "host"
    assert probe["depends_on"]["server"]["condition"] == "service_healthy"
    assert probe["entrypoint"] == ["orchestrator", "probe"]
    assert probe_args(probe["command"]).server == "http://127.0.0.1:8080"
    assert set(compose["volumes"]) == {v.split(":")[0] for v in server["volumes"]}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def test_systemd_units_run_commands_the_cli_accepts():
    from orchestrator.cli import main

    server = unit("orchestrator-server.service")["Service"]
    argv = shlex.split(server["ExecStart"])
    assert argv[0].endswith("/orchestrator") and argv[1] == "serve"
    assert "--data-dir" in argv and server["KillSignal"] == "SIGTERM"
    assert server["User"] != "root" and server["RestartPreventExitStatus"] == "2"
    assert int(server["TimeoutStopSec"]) > 15  # above server.graceful_timeout
    check = shlex.split(server["ExecStartPre"])
    assert check[1:3] == ["config", "check"]
    with pytest.raises(SystemExit) as usage:  # every flag of ExecStart is one serve knows
        main([*argv[1:], "--help"])
    assert usage.value.code == 0
    probe = unit("orchestrator-probe.service")["Service"]
    argv = shlex.split(probe["ExecStart"].replace("${ORCHESTRATOR_SERVER_URL}", "http://server:8080"))
    assert argv[1] == "probe" and probe_args(argv[2:]).log_level == "info"
    for name in ("orchestrator-server.service", "orchestrator-probe.service"):
        assert unit(name)["Install"]["WantedBy"] == "multi-user.target"


def manifests(name: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if doc}


def test_kubernetes_server_has_its_probes_a_volume_and_a_numeric_non_root_user():
    docs = manifests("server.yaml")
    pod = docs["StatefulSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
    assert port == 8080 and docs["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_user()
    assert pod["terminationGracePeriodSeconds"] > 15
    data_dir = container["args"][container["args"].index("--data-dir") + 1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == data_dir == DATA_DIR
    claims = docs["StatefulSet"]["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    assert docs["StatefulSet"]["spec"]["replicas"] == 1  # all state lives in one process
    config = yaml.safe_load(docs["ConfigMap"]["data"]["orchestrator.yaml"])
    from orchestrator.settings import Settings

    Settings.model_validate(config)


def test_kubernetes_probe_daemonset_sees_the_node():
    daemonset = manifests("probe-daemonset.yaml")["DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    (container,) = pod["containers"]
    assert container["command"] == ["orchestrator", "probe"]
    args = probe_args(container["args"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in container["volumeMounts"] if volumes[m["name"]]["hostPath"]["path"] == "/proc")
    assert mount["readOnly"] is True and args.procfs == mount["mountPath"]
    assert args.hostname == "$(NODE_NAME)"
    assert any(e["name"] == "NODE_NAME" for e in container["env"])


def test_grafana_dashboard_graphs_only_metrics_the_server_exports(exported):
    dashboard = json.loads((DEPLOY / "grafana" / "orchestrator-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used and used <= exported, sorted(used - exported)
    app_families = {n for n in exported if n.startswith("app_") and not n.endswith(("_bucket", "_count", "_sum"))}
    graphed = {n.removesuffix("_bucket") for n in used}
    assert app_families <= graphed, sorted(app_families - graphed)  # every app_* metric is on the dashboard


def alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_alert_rules_cover_what_operators_page_on(exported):
    rules = alert_rules()
    for name in (
        "OrchestratorIngestQueueFull",
        "OrchestratorStaleAgents",
        "OrchestratorCheckpointFailing",
        "OrchestratorEventLoopLag",
        "OrchestratorReplicaLag",
    ):
        assert name in rules
    for rule in rules.values():
        assert metric_names(rule["expr"]) <= exported, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)")
def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        cwd=DEPLOY / "prometheus",
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
