"""The probe side of the contract, against ``httpx.MockTransport`` servers: no network, no real sleeping."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import re

import httpx
import orjson
import pytest

from orchestrator.probe import host_probe as probe
from orchestrator.probe.client import (
    AgentClient,
    AgentConfig,
    ClientError,
    ServerUnavailable,
    make_http,
    retry_after_seconds,
    run_agent,
)

REPORT = {"agent_id": "agent-1", "hostname": "host-1", "timestamp": "2025-10-13T00:00:00Z"}


class FakeSleep:
    """Records every wait instead of waiting."""

    def __init__(self):
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)  # still let other tasks run, as a real sleep would


def scripted(*answers):
    """A transport answering requests from a script: a status, an (status, headers) pair, or an exception."""
    script, seen = list(answers), []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, type) and issubclass(answer, Exception):
            raise answer("connection refused", request=request)
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return httpx.Response(status, headers=headers, json={"status": "ok"})

    return httpx.MockTransport(handler), seen


def agent(transport, sleep=None, token=None) -> AgentClient:
    http = make_http("http://server", token=token, transport=transport)
    return AgentClient(http, "agent-1", "host-1", sleep=sleep or FakeSleep(), rng=random.Random(7))


async def test_report_is_posted_gzipped_with_json_and_token_headers():
    transport, seen = scripted(202)
    client = agent(transport, token="s3cret")
    response = await client.post_report(REPORT)
    assert response.status_code == 202
    request = seen[0]
    assert request.method == "POST" and request.url.path == "/api/v1/reports"
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert orjson.loads(gzip.decompress(request.content)) == REPORT
    assert client.stats.accepted == 1 and client.stats.posted == 1


async def test_429_waits_as_long_as_retry_after_then_retries():
    transport, seen = scripted((429, {"Retry-After": "7"}), 202)
    sleep = FakeSleep()
    response = await agent(transport, sleep).post_report(REPORT)
    assert response.status_code == 202
    assert len(seen) == 2
    assert len(sleep.waits) == 1 and 7.0 <= sleep.waits[0] <= 7.0 * 1.1


async def test_503_with_an_http_date_retry_after_is_honoured():
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == pytest.approx(30.0)
    assert retry_after_seconds("soon") is None
    transport, seen = scripted((503, {"Retry-After": "3"}), (503, {}), 202)
    sleep = FakeSleep()
    await agent(transport, sleep).post_report(REPORT)
    assert len(seen) == 3 and 3.0 <= sleep.waits[0] <= 3.3
    assert 0 < sleep.waits[1] <= 0.5  # no Retry-After: the first backoff step


async def test_connection_refused_backs_off_exponentially_then_succeeds():
    transport, seen = scripted(*[httpx.ConnectError] * 6, 202)
    sleep = FakeSleep()
    client = agent(transport, sleep)
    response = await client.post_report(REPORT)
    assert response.status_code == 202 and len(seen) == 7
    assert client.stats.retried == 6 and client.stats.accepted == 1
    # equal jitter: attempt n waits between half and all of 0.5 * 2**n
    for n, wait in enumerate(sleep.waits):
        assert 0.5 * 2**n / 2 <= wait <= 0.5 * 2**n
    assert sleep.waits == sorted(sleep.waits)


async def test_backoff_is_capped():
    transport, _ = scripted(*[httpx.ConnectError] * 20, 202)
    sleep = FakeSleep()
    await agent(transport, sleep).post_report(REPORT)
    assert max(sleep.waits) <= 30.0 and sleep.waits[-1] >= 15.0


async def test_5xx_is_retried_but_422_is_returned_at_once():
    transport, seen = scripted(500, 502, 202)
    assert (await agent(transport).post_report(REPORT)).status_code == 202 and len(seen) == 3
    transport, seen = scripted(422)
    client = agent(transport)
    assert (await client.post_report(REPORT)).status_code == 422 and len(seen) == 1
    assert client.stats.rejected == 1


async def test_max_attempts_gives_up_with_server_unavailable():
    transport, seen = scripted(httpx.ConnectError)
    client = agent(transport)
    with pytest.raises(ServerUnavailable, match="ConnectError"):
        await client.post_report(REPORT, max_attempts=3)
    assert len(seen) == 3 and client.stats.failed == 1


async def test_heartbeat_404_re_registers():
    transport, seen = scripted(404, 201)
    client = agent(transport)
    await client.heartbeat()
    assert [r.url.path for r in seen] == ["/api/v1/agents/heartbeat/agent-1", "/api/v1/agents/register"]
    assert orjson.loads(seen[1].content) == {
        "agent_id": "agent-1",
        "hostname": "host-1",
        "metadata": {"version": client.metadata["version"]},
    }
    assert client.stats.registrations == 1


async def test_refused_registration_raises_client_error():
    transport, _ = scripted(401)
    with pytest.raises(ClientError, match="HTTP 401"):
        await agent(transport).register()


async def test_config_durations_are_parsed_and_bad_ones_fall_back():
    def handler(request):
        return httpx.Response(200, json={"report_interval": "5s", "heartbeat_interval": "1m30s"})

    config = await agent(httpx.MockTransport(handler)).fetch_config()
    assert (config.report_interval, config.heartbeat_interval) == (5.0, 90.0)
    assert AgentConfig.from_json({"report_interval": "-3s", "heartbeat_interval": "soon"}) == AgentConfig()


async def test_run_agent_registers_configures_and_reports_until_cancelled():
    paths: list[str] = []

    def handler(request):
        paths.append(request.url.path)
        if request.url.path.startswith("/api/v1/agents/config/"):
            return httpx.Response(200, json={"report_interval": "2s", "heartbeat_interval": "3s"})
        return httpx.Response(202 if request.url.path == "/api/v1/reports" else 200, json={})

    sleep = FakeSleep()
    client = agent(httpx.MockTransport(handler), sleep)
    reports = 0

    async def next_report():
        nonlocal reports
        reports += 1
        if reports == 4:
            raise KeyboardInterrupt  # a way out of the endless loop
        return REPORT

    with pytest.raises(KeyboardInterrupt):
        await run_agent(client, next_report, sleep=sleep)
    assert paths[:2] == ["/api/v1/agents/register", "/api/v1/agents/config/agent-1"]
    assert paths.count("/api/v1/reports") == 3
    assert sleep.waits[0] == 0.0  # no initial delay asked for
    report_waits = [w for w in sleep.waits if 1.5 < w <= 2.0]  # the interval less the time a cycle took
    assert len(report_waits) == 3
    assert client.stats.heartbeats >= 1 and 3.0 in sleep.waits


# --- ``orchestrator probe --once`` -----------------------------------------------------------------------


def once_args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    probe.add_arguments(parser)
    args = parser.parse_args(["--server", "http://server", "--once", "--agent-id", "probe-test"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.fixture
def small_report(monkeypatch):
    def collect(agent_id, hostname, previous=None, **kwargs):
        return {**REPORT, "agent_id": agent_id, "hostname": hostname}

    monkeypatch.setattr(probe, "collect_report", collect)


def test_once_exits_0_when_the_report_is_accepted(small_report):
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(202, json={"status": "accepted", "report_id": "r-1"})

    assert probe.run(once_args(), transport=httpx.MockTransport(handler)) == 0
    assert orjson.loads(gzip.decompress(seen[0].content))["agent_id"] == "probe-test"


def test_once_exits_1_with_one_line_when_rejected(small_report, capsys):
    def handler(request):
        return httpx.Response(422, json={"error": {"code": "invalid_report", "message": "timestamp: bad"}})

    assert probe.run(once_args(), transport=httpx.MockTransport(handler)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "422" in err and "timestamp: bad" in err


def test_once_exits_1_when_the_server_is_unreachable(small_report, capsys, monkeypatch):
    async def instant(seconds):
        return None

    monkeypatch.setattr(AgentClient, "__init__", _with_sleep(AgentClient.__init__, instant))

    def handler(request):
        raise httpx.ConnectError("connection refused", request=request)

    assert probe.run(once_args(), transport=httpx.MockTransport(handler)) == 1
    assert "connection refused" in capsys.readouterr().err


def test_once_sends_the_token_from_the_environment(small_report, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_AGENT_TOKEN", "from-env")
    seen = []

    def handler(request):
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(202, json={})

    assert probe.run(once_args(), transport=httpx.MockTransport(handler)) == 0
    assert seen == ["Bearer from-env"]


def test_bad_interval_is_a_usage_error(capsys):
    assert probe.run(once_args(interval="soon")) == 2
    assert "--interval" in capsys.readouterr().err


def _with_sleep(init, sleep):
    def patched(self, *args, **kwargs):
        kwargs.setdefault("sleep", sleep)
        init(self, *args, **kwargs)

    return patched


async def test_run_agent_re_registers_after_the_server_was_away():
    paths: list[str] = []
    refusals = iter([False, True, True, False])  # the second report meets a restarting server

    def handler(request):
        if request.url.path == "/api/v1/reports" and next(refusals, False):
            raise httpx.ConnectError("connection refused", request=request)
        paths.append(request.url.path)
        return httpx.Response(202 if request.url.path == "/api/v1/reports" else 200, json={})

    sleep = FakeSleep()
    client = agent(httpx.MockTransport(handler), sleep)
    reports = 0

    async def next_report():
        nonlocal reports
        reports += 1
        if reports == 4:
            raise KeyboardInterrupt
        return REPORT

    with pytest.raises(KeyboardInterrupt):
        await run_agent(client, next_report, sleep=sleep, config=AgentConfig())
    paths = [p for p in paths if "/heartbeat/" not in p]  # the fake sleep makes heartbeats spin
    assert paths == [
        "/api/v1/agents/register",
        "/api/v1/reports",
        "/api/v1/reports",
        "/api/v1/agents/register",
        "/api/v1/reports",
    ]


def test_simulate_runs_a_fleet_against_a_server_until_its_duration():
    from orchestrator.contract.models import Report
    from orchestrator.probe import simulate

    registered, reported = set(), set()

    def handler(request):
        path = request.url.path
        if path == "/api/v1/agents/register":
            registered.add(orjson.loads(request.content)["agent_id"])
        if path == "/api/v1/reports":
            report = orjson.loads(gzip.decompress(request.content))
            Report.model_validate(report)
            reported.add(report["agent_id"])
            return httpx.Response(202, json={"status": "accepted"})
        if path.startswith("/api/v1/agents/config/"):
            return httpx.Response(200, json={"report_interval": "15s", "heartbeat_interval": "30s"})
        return httpx.Response(201, json={"status": "registered"})

    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    args = parser.parse_args(
        [
            "--server",
            "http://server",
            "--hosts",
            "4",
            "--interval",
            "200ms",
            "--duration",
            "1s",
            "--processes",
            "20",
            "--connections",
            "30",
        ]
    )
    assert simulate.run(args, transport=httpx.MockTransport(handler)) == 0
    assert registered == reported == {f"sim-host-{i}" for i in range(4)}


def test_simulate_exits_1_when_the_server_refuses_the_token(capsys):
    from orchestrator.probe import simulate

    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    args = parser.parse_args(["--server", "http://server", "--hosts", "2", "--token", "wrong"])
    refuse = httpx.MockTransport(lambda request: httpx.Response(401, json={"error": {"message": "bad token"}}))
    assert simulate.run(args, transport=refuse) == 1
    assert "bad token" in capsys.readouterr().err


def test_once_prints_what_it_sent_per_section(capsys):
    def handler(request):
        return httpx.Response(202, json={"status": "accepted", "report_id": "r-9"})

    assert probe.run(once_args(docker_socket="/nonexistent/docker.sock"), transport=httpx.MockTransport(handler)) == 0
    out = capsys.readouterr().out
    assert "as agent probe-test: http://server accepted it (report_id r-9)" in out
    assert "docker_info     not sent" in out
    assert "no Docker socket at /nonexistent/docker.sock" in out
    assert re.search(r"host_info +cpu [0-9.]+% of \d+ cores, load average [0-9. ]+", out)
    assert re.search(r"processes_info +[1-9]\d* processes", out)
    assert re.search(r"network_info +\d+ connections, [1-9]\d* interfaces", out)


@pytest.mark.parametrize("url", ["localhost:8080", "ftp://server", "http://", "not a url at all"])
def test_a_server_url_that_cannot_work_stops_at_once_with_one_line(url, capsys):
    assert probe.run(once_args(server=url)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--server" in err and "http://" in err


@pytest.mark.parametrize("status", [400, 401, 403, 413, 422])
def test_a_refused_report_stops_the_running_probe_with_one_line(small_report, capsys, status):
    def handler(request):
        if request.url.path == "/api/v1/agents/register":
            return httpx.Response(201, json={"status": "registered"})
        if request.url.path.startswith("/api/v1/agents/config/"):
            return httpx.Response(200, json={"report_interval": "1s", "heartbeat_interval": "1h"})
        return httpx.Response(status, json={"error": {"code": "nope", "message": "refused for good"}})

    args = once_args(once=False)
    assert probe.run(args, transport=httpx.MockTransport(handler)) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("orchestrator probe:")]
    assert lines == [f"orchestrator probe: error: post report: HTTP {status}: refused for good"]


async def test_the_simulator_keeps_going_after_a_refused_report():
    answers = iter([201, 200, 422, 202])
    transport, seen = scripted(*answers)
    client = agent(transport)
    reports = 0

    async def next_report():
        nonlocal reports
        reports += 1
        if reports == 3:
            raise asyncio.CancelledError
        return REPORT

    with pytest.raises(asyncio.CancelledError):
        await run_agent(client, next_report, report_interval=1, sleep=FakeSleep())
    assert [r.url.path for r in seen].count("/api/v1/reports") == 2


def test_a_procfs_that_is_not_a_proc_is_a_usage_error(tmp_path, capsys):
    assert probe.run(once_args(procfs=str(tmp_path))) == 2
    assert "--procfs" in capsys.readouterr().err
