"""Agent tokens bound to agent ids and hostnames (issue 16 #9): a probe's credential cannot write for
another agent or host; refused writes are 403 in the contract's format and change nothing."""

from __future__ import annotations

import time

import httpx
import orjson
from structlog.testing import capture_logs

from tests.api.test_api_http import assert_error
from tests.support import make_settings, post_report, report, wait_for

WEB = {"token": "web-s3cret", "agent_ids": ["web-*"], "hostnames": ["web-*.example"]}
DB = {"token": "db-s3cret", "agent_ids": ["db-1"], "hostnames": ["db-1.example"]}
TOKENS = [WEB, DB, "plain-s3cret"]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def register(client, token, agent_id, hostname):
    return client.post(
        "/api/v1/agents/register", json={"agent_id": agent_id, "hostname": hostname}, headers=bearer(token)
    )


def nodes(client) -> dict:
    return client.get("/api/v1/query/topology").json()["topology"]["nodes"]


def processes(pid: int, name: str) -> dict:
    return {"processes": [{"pid": pid, "name": name}]}


def test_a_bound_token_registers_only_the_agents_and_hosts_it_is_bound_to(start_server):
    server = start_server(make_settings(auth={"agent_tokens": TOKENS}))
    with httpx.Client(base_url=server.url) as client:
        assert register(client, "web-s3cret", "web-1", "web-1.example").status_code == 201
        error = assert_error(register(client, "web-s3cret", "db-1", "web-1.example"), 403, "identity_not_permitted")
        assert error["details"][0]["field"] == "agent_id" and "db-1" in error["message"]
        error = assert_error(register(client, "web-s3cret", "web-2", "db-1.example"), 403, "identity_not_permitted")
        assert error["details"][0]["field"] == "hostname"
        # An unbound (plain) token speaks for anyone, as every token did before bindings.
        assert register(client, "plain-s3cret", "anyone", "anywhere").status_code == 201
        listed = {
            a["agent_id"] for a in client.get("/api/v1/agents/list", headers=bearer("db-s3cret")).json()["agents"]
        }
    assert listed == {"web-1", "anyone"}


def test_a_bound_token_cannot_report_for_another_host_and_the_report_changes_nothing(start_server):
    server = start_server(make_settings(auth={"agent_tokens": TOKENS}))
    with httpx.Client(base_url=server.url) as client:
        db = report("db-1", "db-1.example", processes_info=processes(5432, "postgres"))
        assert post_report(client, db, Authorization="Bearer db-s3cret").status_code == 202
        wait_for(lambda: "process:db-1.example:5432" in nodes(client))
        # The web probe's token claims the database host: its os and a process would land in db-1's view.
        forged = report("web-1", "db-1.example", host_info={"os": "forged"}, processes_info=processes(666, "evil"))
        error = assert_error(
            post_report(client, forged, Authorization="Bearer web-s3cret"), 403, "identity_not_permitted"
        )
        assert error["details"] == [{"field": "hostname", "message": error["message"]}]
        as_db = report("db-1", "db-1.example", host_info={"os": "forged"})
        assert_error(post_report(client, as_db, Authorization="Bearer web-s3cret"), 403, "identity_not_permitted")
        # A later allowed report is applied after them (reports apply in arrival order): once it shows,
        # the refused ones would have too.
        ok = report("web-1", "web-1.example", processes_info=processes(80, "nginx"))
        assert post_report(client, ok, Authorization="Bearer web-s3cret").status_code == 202
        wait_for(lambda: "process:web-1.example:80" in nodes(client))
        seen = nodes(client)
        agents = client.get("/api/v1/agents/list", headers=bearer("plain-s3cret")).json()["agents"]
        stats = client.get("/api/v1/query/stats").json()
    assert "process:db-1.example:666" not in seen and "os" not in seen["host:db-1.example"]["metadata"]
    assert seen["host:db-1.example"]["agent_ids"] == ["db-1"]
    assert {a["agent_id"]: a["reports_received"] for a in agents} == {"db-1": 1, "web-1": 1}
    assert stats["reports_received"] == 2


def test_a_forbidden_report_is_refused_before_its_body_is_parsed(start_server):
    server = start_server(make_settings(auth={"agent_tokens": TOKENS}))
    with httpx.Client(base_url=server.url) as client:
        # Malformed after the identity: a full parse would answer 400; the binding is checked first.
        head = orjson.dumps(report("db-1", "db-1.example"))[:-1]
        body = head + b', "processes_info": {"processes": [{"pid": 1}' + b" " * 100_000 + b"nope"
        response = client.post(
            "/api/v1/reports", content=body, headers={"Content-Type": "application/json", **bearer("web-s3cret")}
        )
        assert_error(response, 403, "identity_not_permitted")
        # A key repeated past the head is the full parse's to read, and is checked as well.
        sneaky = orjson.dumps(report("web-1", "web-1.example"))[:-1] + b', "hostname": "db-1.example"}'
        response = client.post(
            "/api/v1/reports", content=sneaky, headers={"Content-Type": "application/json", **bearer("web-s3cret")}
        )
        assert_error(response, 403, "identity_not_permitted")


def test_a_heartbeat_for_an_agent_outside_the_binding_is_refused_and_changes_nothing(start_server):
    server = start_server(make_settings(auth={"agent_tokens": TOKENS}))
    with httpx.Client(base_url=server.url) as client:
        assert register(client, "db-s3cret", "db-1", "db-1.example").status_code == 201
        assert register(client, "plain-s3cret", "web-9", "elsewhere").status_code == 201
        before = client.get("/api/v1/agents/list", headers=bearer("plain-s3cret")).json()["agents"]
        time.sleep(0.01)  # so that an accepted heartbeat would move last_seen
        refused = client.post("/api/v1/agents/heartbeat/db-1", headers=bearer("web-s3cret"))
        assert assert_error(refused, 403, "identity_not_permitted")["details"][0]["field"] == "agent_id"
        # web-9 matches the agent patterns but was registered on a host outside them.
        refused = client.post("/api/v1/agents/heartbeat/web-9", headers=bearer("web-s3cret"))
        assert assert_error(refused, 403, "identity_not_permitted")["details"][0]["field"] == "hostname"
        assert client.get("/api/v1/agents/list", headers=bearer("plain-s3cret")).json()["agents"] == before
        assert client.post("/api/v1/agents/heartbeat/db-1", headers=bearer("db-s3cret")).status_code == 200
        metrics = client.get("/metrics").text
    assert 'app_identity_refused_total{endpoint="heartbeat",field="agent_id"} 1.0' in metrics
    assert 'app_identity_refused_total{endpoint="heartbeat",field="hostname"} 1.0' in metrics


def test_two_probes_bound_to_one_hostname_share_that_host(start_server):
    docker = {"token": "docker-t", "agent_ids": ["node-7-docker"], "hostnames": ["node-7"]}
    procs = {"token": "procs-t", "agent_ids": ["node-7-procs"], "hostnames": ["node-7"]}
    server = start_server(make_settings(auth={"agent_tokens": [docker, procs]}))
    container = {"id": "c" * 64, "name": "web"}
    with httpx.Client(base_url=server.url) as client:
        first = report("node-7-docker", "node-7", docker_info={"containers": [container]})
        assert post_report(client, first, Authorization="Bearer docker-t").status_code == 202
        second = report("node-7-procs", "node-7", processes_info=processes(10, "nginx"))
        assert post_report(client, second, Authorization="Bearer procs-t").status_code == 202
        host = wait_for(lambda: (n := nodes(client).get("host:node-7")) and len(n["agent_ids"]) == 2 and n)
    assert host["agent_ids"] == ["node-7-docker", "node-7-procs"]


def test_a_token_bound_by_agent_ids_only_may_not_join_a_host_another_agent_reports(start_server):
    alpha = {"token": "alpha-t", "agent_ids": ["alpha-*"]}
    beta = {"token": "beta-t", "agent_ids": ["beta-*"]}
    server = start_server(make_settings(auth={"agent_tokens": [alpha, beta]}))
    with httpx.Client(base_url=server.url) as client:
        owner = report("beta-1", "shared", processes_info=processes(1, "init"))
        assert post_report(client, owner, Authorization="Bearer beta-t").status_code == 202
        wait_for(lambda: "host:shared" in nodes(client))
        intruder = report("alpha-1", "shared", host_info={"os": "forged"})
        error = assert_error(
            post_report(client, intruder, Authorization="Bearer alpha-t"), 403, "identity_not_permitted"
        )
        assert "auth.agent_tokens" in error["message"]
        assert_error(register(client, "alpha-t", "alpha-1", "shared"), 403, "identity_not_permitted")
        # Its own host is its own; the owner keeps writing its own.
        assert post_report(client, report("alpha-1", "alpha-host"), Authorization="Bearer alpha-t").status_code == 202
        assert post_report(client, report("beta-1", "shared"), Authorization="Bearer beta-t").status_code == 202


def test_bound_tokens_never_show_in_stats_metrics_or_logs(start_server):
    server = start_server(make_settings(auth={"agent_tokens": TOKENS, "read_tokens": ["read-s3cret"]}))
    with capture_logs() as logs, httpx.Client(base_url=server.url) as client:
        assert_error(register(client, "web-s3cret", "db-1", "db-1.example"), 403)
        assert_error(register(client, "wrong-s3cret", "db-1", "db-1.example"), 401)
        assert register(client, "db-s3cret", "db-1", "db-1.example").status_code == 201
        stats = client.get("/api/v1/query/stats", headers=bearer("read-s3cret"))
        metrics = client.get("/metrics").text
    shown = stats.json()["config"]["auth"]
    assert shown["agent_tokens"] == [
        {"token": "***", "agent_ids": ["web-*"], "hostnames": ["web-*.example"]},
        {"token": "***", "agent_ids": ["db-1"], "hostnames": ["db-1.example"]},
        "***",
    ]
    for text in (stats.text, metrics, repr(logs)):
        assert "s3cret" not in text
