"""Owner wins over a real server (issue 16 #9), with no tokens at all: a report claiming another live host's
address or container keeps the owner, the rest of it applies, and the claim is counted and logged once."""

from __future__ import annotations

from structlog.testing import capture_logs

from orchestrator.state.conflicts import ConflictLog
from tests.support import post_report, report, wait_for

CONTAINER = "c" * 64


def topology(client) -> dict:
    return client.get("/api/v1/query/topology").json()["topology"]


def victim() -> dict:
    return report(
        "agent-db",
        "db",
        host_info={"ip_addresses": ["10.0.0.6"]},
        docker_info={"containers": [{"id": CONTAINER, "name": "pg"}]},
        processes_info={"processes": [{"pid": 5432, "name": "postgres", "container_id": CONTAINER}]},
        network_info={"connections": [{"pid": 5432, "local_ip": "0.0.0.0", "local_port": 5432, "state": "LISTEN"}]},
    )


def client_report() -> dict:
    connection = {
        "pid": 5120,
        "local_ip": "10.0.0.5",
        "local_port": 43512,
        "remote_ip": "10.0.0.6",
        "remote_port": 5432,
        "state": "ESTABLISHED",
    }
    return report(
        "agent-app",
        "app",
        host_info={"ip_addresses": ["10.0.0.5"]},
        processes_info={"processes": [{"pid": 5120, "name": "api"}]},
        network_info={"connections": [connection]},
    )


def attack(marker: int) -> dict:
    return report(
        "agent-evil",
        "evil",
        host_info={"ip_addresses": ["10.0.0.6"], "os": "linux"},
        processes_info={"processes": [{"pid": 666, "name": "evil", "container_id": CONTAINER}, {"pid": marker}]},
    )


def test_claims_on_another_hosts_address_and_container_keep_the_owner(http):
    assert post_report(http, victim()).status_code == 202
    assert post_report(http, client_report()).status_code == 202
    edge = "process:app:5120->process:db:5432"
    wait_for(lambda: edge in topology(http)["edges"])
    with capture_logs() as logs:
        for marker in (1, 2, 3):  # three reports repeating the same claims
            assert post_report(http, attack(marker)).status_code == 202
        view = wait_for(lambda: (t := topology(http)) and "process:evil:3" in t["nodes"] and t)
        metrics = http.get("/metrics").text
    assert edge in view["edges"] and "external:10.0.0.6" not in view["nodes"]
    container = view["nodes"][f"container:{CONTAINER}"]
    assert (container["parent"], container["host"], container["agent_ids"]) == ("host:db", "db", ["agent-db"])
    # The rest of the report applies: the attacker's own host and processes, at home.
    assert view["nodes"]["process:evil:666"]["parent"] == "host:evil"
    assert view["nodes"]["host:evil"]["metadata"]["os"] == "linux"
    assert 'app_conflicting_claims_total{kind="ip"} 1.0' in metrics
    assert 'app_conflicting_claims_total{kind="container"} 1.0' in metrics
    lines = [(e["kind"], e["value"], e["hostname"], e["owner"]) for e in logs if e["event"] == "conflicting_claim"]
    assert sorted(lines) == [("container", CONTAINER, "evil", "db"), ("ip", "10.0.0.6", "evil", "db")]


def test_without_conflicts_the_metric_series_exist_at_zero(http):
    metrics = http.get("/metrics").text
    assert 'app_conflicting_claims_total{kind="ip"} 0.0' in metrics
    assert 'app_conflicting_claims_total{kind="container"} 0.0' in metrics


def test_the_conflict_log_writes_each_claim_once_and_a_bounded_number_of_lines():
    from orchestrator.runtime.metrics import create_metrics

    metrics = create_metrics()
    now = [0.0]
    conflicts = ConflictLog(metrics, lines=2, window=60.0, clock=lambda: now[0])
    with capture_logs() as logs:
        for host in range(5):
            conflicts("ip", "172.17.0.1", f"agent-{host}", f"host-{host}", "host-first")
            conflicts("ip", "172.17.0.1", f"agent-{host}", f"host-{host}", "host-first")  # the same claim
        now[0] = 61.0
        conflicts("ip", "172.17.0.2", "agent-9", "host-9", "host-first")
    assert [(e["hostname"], e["suppressed"]) for e in logs] == [("host-0", 0), ("host-1", 0), ("host-9", 3)]
    assert metrics.registry.get_sample_value("app_conflicting_claims_total", {"kind": "ip"}) == 11  # all counted
