"""The synthetic fleet: valid, deterministic, connected across hosts, alive over time."""

from __future__ import annotations

import ipaddress

import orjson
import pytest

from orchestrator.contract.models import Report
from orchestrator.contract.times import parse_rfc3339
from orchestrator.probe.fleet import Fleet, host_ip
from orchestrator_plugins.cgroup_container_id import container_id_from_cgroup

NOW = 1_760_000_000.0
HOSTS = 6


@pytest.fixture(scope="module")
def fleet():
    return Fleet(HOSTS, seed=42)


@pytest.fixture(scope="module")
def reports(fleet):
    return [fleet.report(i, NOW) for i in range(HOSTS)]


def test_every_report_validates(reports):
    for i, report in enumerate(reports):
        model = Report.model_validate(report)
        assert model.agent_id == model.hostname == f"sim-host-{i}"
        assert parse_rfc3339(report["timestamp"]) == pytest.approx(NOW, abs=0.001)


def test_sizes_follow_the_arguments(reports):
    for report in reports:
        assert len(report["docker_info"]["containers"]) == 10
        assert 90 <= len(report["processes_info"]["processes"]) <= 100  # a few transient ones may be away
        assert len(report["network_info"]["connections"]) == 200


def test_report_size_is_realistic(fleet):
    for i in range(HOSTS):
        assert 40_000 <= len(fleet.report_bytes(i, NOW)) <= 150_000


def test_same_seed_same_reports_in_any_order():
    one, two = Fleet(4, seed=3), Fleet(4, seed=3)
    forward = [one.report_bytes(i, NOW + 15 * i) for i in range(4)]
    two.report_bytes(2, NOW + 99_999)  # asking about another time first changes nothing
    backward = [two.report_bytes(i, NOW + 15 * i) for i in reversed(range(4))][::-1]
    assert forward == backward
    assert Fleet(4, seed=4).report_bytes(0, NOW) != forward[0]


def test_report_bytes_is_the_report_as_json(fleet):
    assert orjson.loads(fleet.report_bytes(1, NOW)) == fleet.report(1, NOW)


def test_host_addresses_are_unique_and_include_the_docker_bridge(reports):
    own = [r["host_info"]["ip_addresses"][0] for r in reports]
    assert len(set(own)) == HOSTS and all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.0.0.0/8") for ip in own)
    assert all("172.17.0.1" in r["host_info"]["ip_addresses"] for r in reports)
    assert len({host_ip(i) for i in range(70_000)}) == 70_000


def _listening(report) -> set[tuple[str, int]]:
    return {(c["local_ip"], c["local_port"]) for c in report["network_info"]["connections"] if c["state"] == "LISTEN"}


def test_cross_host_connections_target_other_hosts_listeners(reports):
    owner = {r["host_info"]["ip_addresses"][0]: n for n, r in enumerate(reports)}
    for n, report in enumerate(reports):
        cross = [
            c
            for c in report["network_info"]["connections"]
            if c["state"] == "ESTABLISHED" and c["remote_ip"] in owner and c["remote_port"] < 32768
        ]
        assert len(cross) >= 100  # most of the 200 connections go to other hosts
        for conn in cross:
            target = owner[conn["remote_ip"]]
            assert target != n
            listening = _listening(reports[target])
            assert (conn["remote_ip"], conn["remote_port"]) in listening or (
                "0.0.0.0",
                conn["remote_port"],
            ) in listening


def test_inbound_connections_are_the_other_end_of_outbound_ones(reports):
    outbound = {
        (c["local_ip"], c["local_port"], c["remote_ip"], c["remote_port"])
        for r in reports
        for c in r["network_info"]["connections"]
        if c["state"] == "ESTABLISHED"
    }
    inbound = [
        c
        for r in reports
        for c in r["network_info"]["connections"]
        if c["state"] == "ESTABLISHED" and c["local_port"] < 32768 and c["remote_ip"].startswith("10.")
    ]
    assert inbound
    for conn in inbound:
        assert (conn["remote_ip"], conn["remote_port"], conn["local_ip"], conn["local_port"]) in outbound


def test_connections_include_loopback_external_and_listeners(reports):
    for report in reports:
        conns = report["network_info"]["connections"]
        assert any(c["remote_ip"].startswith("127.") for c in conns)
        assert any(c["remote_ip"] and ipaddress.ip_address(c["remote_ip"]).is_global for c in conns)
        assert {80, 443, 5432, 6379, 8080} & {c["local_port"] for c in conns if c["state"] == "LISTEN"} or len(
            _listening(report)
        ) >= 3


def test_pids_of_connections_are_processes_of_the_host(reports):
    for report in reports:
        pids = {p["pid"] for p in report["processes_info"]["processes"]}
        assert len(pids) == len(report["processes_info"]["processes"])  # unique
        assert {c["pid"] for c in report["network_info"]["connections"] if "pid" in c} <= pids


def test_half_the_processes_run_in_the_hosts_containers(reports):
    for report in reports:
        containers = {c["id"] for c in report["docker_info"]["containers"]}
        assert all(len(cid) == 64 and int(cid, 16) >= 0 for cid in containers)
        processes = report["processes_info"]["processes"]
        inside = [container_id_from_cgroup(p["cgroup"]) for p in processes]
        inside = [cid for cid in inside if cid is not None]
        assert len(inside) == 50
        assert set(inside) <= containers
        ppids = {p["pid"] for p in processes}
        assert all(p["ppid"] in ppids or p["ppid"] in (0, 1) for p in processes)


def test_both_cgroup_versions_appear():
    fleet = Fleet(20, seed=1)
    texts = [p["cgroup"] for i in range(20) for p in fleet.report(i, NOW)["processes_info"]["processes"]]
    assert any(t.startswith("0::/system.slice/docker-") and t.endswith(".scope") for t in texts)
    assert any("\n" in t and ":/docker/" in t for t in texts)  # cgroup v1, one line per controller
    assert any(t.startswith("0::/system.slice/") and t.endswith(".service") for t in texts)


def test_numbers_change_and_counters_only_grow(fleet):
    series = [fleet.report(2, NOW + 15 * k) for k in range(240)]  # one hour
    cpu = {r["host_info"]["cpu_percent"] for r in series}
    assert len(cpu) > 10
    for key in ("net_rx_bytes", "net_tx_bytes", "uptime_s", "disk_used"):
        values = [r["host_info"][key] for r in series]
        assert values == sorted(values) and values[-1] > values[0], key
    for name in ("eth0", "lo"):
        rx = [next(i["rx_bytes"] for i in r["network_info"]["interfaces"] if i["name"] == name) for r in series]
        assert rx == sorted(rx)


def test_processes_come_and_go_and_containers_restart(fleet):
    day = [fleet.report(0, NOW + 600 * k) for k in range(144)]
    pid_sets = [frozenset(p["pid"] for p in r["processes_info"]["processes"]) for r in day]
    assert len(set(pid_sets)) > 5
    container_sets = [
        frozenset(c["id"] for c in r["docker_info"]["containers"])
        for i in range(HOSTS)
        for r in [fleet.report(i, NOW), fleet.report(i, NOW + 86_400)]
    ]
    assert any(a != b for a, b in zip(container_sets[::2], container_sets[1::2]))
    for report in day[::12]:
        Report.model_validate(report)


def test_small_and_degenerate_fleets_still_validate():
    for fleet in (
        Fleet(1),
        Fleet(3, containers=0, processes=5, connections=5),
        Fleet(2, processes=0, connections=0),
        Fleet(2, containers=20, processes=300, connections=600),
    ):
        for i in range(fleet.hosts):
            Report.model_validate(fleet.report(i, NOW))
    assert len(Fleet(1).report(0, NOW)["network_info"]["connections"]) == 200


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        Fleet(0)
