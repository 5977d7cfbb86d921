"""``collect_report`` on the machine the tests run on: what it sees, and what it survives."""

from __future__ import annotations

import os
import socket
from collections import namedtuple

import httpx
import psutil
import pytest

from orchestrator.contract.models import Report
from orchestrator.contract.times import parse_rfc3339
from orchestrator.probe import host_probe as probe


@pytest.fixture
def listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def report(listener, tmp_path):
    return probe.collect_report("agent-1", "host-1", docker_socket=str(tmp_path / "no-docker.sock"))


def own_process(report):
    return next(p for p in report["processes_info"]["processes"] if p["pid"] == os.getpid())


def test_report_of_this_machine_validates(report):
    model = Report.model_validate(report)
    assert model.agent_id == "agent-1" and model.hostname == "host-1"
    assert report["timestamp"].endswith("Z") and parse_rfc3339(report["timestamp"]) > 0
    info = report["host_info"]
    assert info["cpu_count"] >= 1 and info["memory_total"] > info["memory_used"] > 0
    assert len(info["load_avg"]) == 3
    assert all("%" not in ip for ip in info["ip_addresses"])
    assert "127.0.0.1" not in info["ip_addresses"]


def test_report_includes_the_test_process_with_its_cgroup(report):
    me = own_process(report)
    assert me["ppid"] == os.getppid()
    assert me["memory_rss"] > 0 and me["threads"] >= 1
    assert "pytest" in me["cmdline"] or "python" in me["cmdline"]
    if os.path.exists(f"/proc/{os.getpid()}/cgroup"):
        with open(f"/proc/{os.getpid()}/cgroup") as text:
            assert me["cgroup"] == text.read().strip()


def test_report_includes_a_listening_socket_with_its_pid(report, listener):
    listening = [
        c for c in report["network_info"]["connections"] if c["local_port"] == listener and c["protocol"] == "tcp"
    ]
    assert listening == [
        {
            "pid": os.getpid(),
            "protocol": "tcp",
            "local_ip": "127.0.0.1",
            "local_port": listener,
            "remote_ip": "",
            "remote_port": 0,
            "state": "LISTEN",
        }
    ]


def test_established_connection_carries_both_ends(listener, tmp_path):
    client = socket.create_connection(("127.0.0.1", listener))
    try:
        report = probe.collect_report("agent-1", "host-1", docker_socket=str(tmp_path / "none"))
    finally:
        client.close()
    ours = [
        c for c in report["network_info"]["connections"] if c["state"] == "ESTABLISHED" and c["remote_port"] == listener
    ]
    assert ours and ours[0]["remote_ip"] == "127.0.0.1" and ours[0]["pid"] == os.getpid()


def test_interfaces_are_reported(report):
    names = {i["name"] for i in report["network_info"]["interfaces"]}
    assert names == set(psutil.net_io_counters(pernic=True))


def test_a_denied_field_is_left_out_and_the_process_kept(monkeypatch, tmp_path):
    real_cmdline = psutil.Process.cmdline

    def cmdline(self):
        if self.pid == os.getpid():
            raise psutil.AccessDenied(self.pid)
        return real_cmdline(self)

    monkeypatch.setattr(psutil.Process, "cmdline", cmdline)
    report = probe.collect_report("agent-1", "host-1", docker_socket=str(tmp_path / "none"))
    me = own_process(report)
    assert "cmdline" not in me and me["name"]
    Report.model_validate(report)


def test_a_denied_or_vanished_process_is_skipped(monkeypatch, tmp_path):
    real_name = psutil.Process.name
    victim = os.getppid()

    def name(self):
        if self.pid == os.getpid():
            raise psutil.AccessDenied(self.pid)
        if self.pid == victim:
            raise psutil.NoSuchProcess(self.pid)
        return real_name(self)

    monkeypatch.setattr(psutil.Process, "name", name)
    report = probe.collect_report("agent-1", "host-1", docker_socket=str(tmp_path / "none"))
    pids = {p["pid"] for p in report["processes_info"]["processes"]}
    assert os.getpid() not in pids and victim not in pids and len(pids) > 0
    Report.model_validate(report)


def test_an_unreadable_cgroup_file_is_left_out(monkeypatch, tmp_path):
    real_open = open

    def guarded_open(path, *args, **kwargs):
        if str(path).endswith("/cgroup"):
            raise PermissionError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded_open)
    report = probe.collect_report("agent-1", "host-1", docker_socket=str(tmp_path / "none"))
    assert "cgroup" not in own_process(report)


def test_unreadable_socket_table_gives_no_connections(monkeypatch, tmp_path):
    def denied(kind="inet"):
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "net_connections", denied)
    report = probe.collect_report("agent-1", "host-1", docker_socket=str(tmp_path / "none"))
    assert report["network_info"]["connections"] == []


def test_no_docker_socket_means_no_docker_info(tmp_path):
    report = probe.collect_report("agent-1", "host-1", docker_socket=str(tmp_path / "missing.sock"))
    assert "docker_info" not in report


def test_second_report_reuses_process_state_for_cpu_percent(tmp_path):
    state = probe.ProbeState()
    probe.collect_report("agent-1", "host-1", state, docker_socket=str(tmp_path / "none"))
    assert os.getpid() in state.processes
    kept = state.processes[os.getpid()]
    probe.collect_report("agent-1", "host-1", state, docker_socket=str(tmp_path / "none"))
    assert state.processes[os.getpid()] is kept


def test_containers_come_from_the_docker_engine_api():
    cid = "a" * 64

    def engine(request):
        if request.url.path == "/containers/json":
            return httpx.Response(
                200,
                json=[
                    {
                        "Id": cid,
                        "Names": ["/web"],
                        "Image": "nginx:1.25",
                        "State": "running",
                        "Created": 1760000000,
                        "Labels": {"app": "web"},
                        "NetworkSettings": {
                            "Networks": {"bridge": {"IPAddress": "172.17.0.2", "GlobalIPv6Address": ""}}
                        },
                    }
                ],
            )
        if request.url.path == f"/containers/{cid}/json":
            return httpx.Response(200, json={"State": {"Pid": 4242}})
        return httpx.Response(404)

    containers = probe.collect_containers(transport=httpx.MockTransport(engine))
    assert containers == [
        {
            "id": cid,
            "name": "web",
            "image": "nginx:1.25",
            "state": "running",
            "created": "2025-10-09T08:53:20.000Z",
            "labels": {"app": "web"},
            "ip_addresses": ["172.17.0.2"],
            "pid": 4242,
        }
    ]
    Report.model_validate(
        {
            "agent_id": "a",
            "hostname": "h",
            "timestamp": "2025-10-13T00:00:00Z",
            "docker_info": {"containers": containers},
        }
    )


def test_a_failing_docker_engine_means_no_docker_info():
    def broken(request):
        raise httpx.ConnectError("no daemon", request=request)

    assert probe.collect_containers(transport=httpx.MockTransport(broken)) is None


@pytest.mark.parametrize(
    "hostname, agent_id",
    [
        ("web-1.example.com", "web-1.example.com"),
        ("my host/with spaces", "my-host-with-spaces"),
        ("ünïcode", "-n-code"),
        ("x" * 200, "x" * 128),
    ],
)
def test_default_agent_id_is_the_sanitised_hostname(hostname, agent_id):
    assert probe.default_agent_id(hostname) == agent_id


def test_sockets_on_their_way_out_are_not_reported(monkeypatch):
    addr = namedtuple("addr", "ip port")
    sconn = namedtuple("sconn", "fd family type laddr raddr status pid")
    table = [
        sconn(3, socket.AF_INET, socket.SOCK_STREAM, addr("10.0.0.1", 80), (), psutil.CONN_LISTEN, 7),
        sconn(
            4,
            socket.AF_INET,
            socket.SOCK_STREAM,
            addr("10.0.0.1", 80),
            addr("10.0.0.2", 50000),
            psutil.CONN_ESTABLISHED,
            7,
        ),
        sconn(
            -1,
            socket.AF_INET,
            socket.SOCK_STREAM,
            addr("10.0.0.1", 80),
            addr("10.0.0.3", 50001),
            psutil.CONN_TIME_WAIT,
            None,
        ),
        sconn(
            -1,
            socket.AF_INET,
            socket.SOCK_STREAM,
            addr("10.0.0.1", 81),
            addr("10.0.0.4", 50002),
            psutil.CONN_CLOSE_WAIT,
            7,
        ),
    ]
    monkeypatch.setattr(psutil, "net_connections", lambda kind="inet": table)
    states = [c["state"] for c in probe.collect_connections()]
    assert states == ["LISTEN", "ESTABLISHED"]


def test_the_first_report_has_real_cpu_figures(tmp_path):
    import threading

    stop = threading.Event()

    def burn():
        while not stop.is_set():
            sum(range(1000))

    busy = threading.Thread(target=burn)
    busy.start()
    try:
        report = probe.collect_report("agent-1", "host-1", docker_socket=str(tmp_path / "none"))
    finally:
        stop.set()
        busy.join()
    assert report["host_info"]["cpu_percent"] > 0
    assert own_process(report)["cpu_percent"] > 0


def test_a_process_first_seen_later_reports_its_average_since_it_started(tmp_path):
    import subprocess
    import sys

    state = probe.ProbeState()
    probe.collect_report("agent-1", "host-1", state, docker_socket=str(tmp_path / "none"))
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 30\nwhile time.time() < end: pass"]
    )
    try:
        psutil.Process(child.pid).cpu_times()  # it runs
        import time

        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).cpu_times().user < 0.05 and time.monotonic() < deadline:
            time.sleep(0.05)
        report = probe.collect_report("agent-1", "host-1", state, docker_socket=str(tmp_path / "none"))
    finally:
        child.kill()
        child.wait()
    entry = next(p for p in report["processes_info"]["processes"] if p["pid"] == child.pid)
    assert entry["cpu_percent"] > 0


def test_docker_that_is_missing_or_unreadable_is_explained(tmp_path):
    assert probe.read_docker(str(tmp_path / "none.sock")) == (
        None,
        f"not found: no Docker socket at {tmp_path / 'none.sock'}",
    )
    unreadable = tmp_path / "docker.sock"
    unreadable.write_text("")
    unreadable.chmod(0)
    containers, why = probe.read_docker(str(unreadable))
    if os.geteuid() != 0:  # root reads anything
        assert containers is None and why.startswith("not readable: no permission")
