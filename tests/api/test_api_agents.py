"""Agents API: register, heartbeat, config (with overrides), list, implicit registration, auth."""

from __future__ import annotations

import gzip
import logging
import time

import httpx

from tests.api.test_api_http import assert_error
from tests.support import make_settings, post_report, report


def register(client, agent_id="agent-1", hostname="host-1", **metadata):
    return client.post(
        "/api/v1/agents/register", json={"agent_id": agent_id, "hostname": hostname, "metadata": metadata}
    )


def test_register_is_201_first_then_200(http):
    first = register(http, version="1.0.0")
    assert first.status_code == 201
    body = first.json()
    assert body["status"] == "registered" and body["message"] == "Agent agent-1 registered successfully"
    assert body["agent"]["metadata"] == {"version": "1.0.0"} and body["agent"]["status"] == "online"
    assert register(http).status_code == 200


def test_register_validates_fields(http):
    error = assert_error(http.post("/api/v1/agents/register", json={"agent_id": "bad id", "hostname": ""}), 422)
    assert {d["field"] for d in error["details"]} == {"agent_id", "hostname"}
    error = assert_error(
        http.post("/api/v1/agents/register", json={"agent_id": "a", "hostname": "h", "metadata": {"x": {"nested": 1}}}),
        422,
    )
    assert error["details"] == [
        {"field": "metadata.x", "message": "must be a string, a finite number within 64 bits, or a boolean"}
    ]


def test_register_with_malformed_json_is_400(http):
    response = http.post("/api/v1/agents/register", content=b"{", headers={"Content-Type": "application/json"})
    assert_error(response, 400, "malformed_json")


def test_register_accepts_a_gzip_body_like_every_endpoint(http):
    body = gzip.compress(b'{"agent_id": "gz-1", "hostname": "gz-host"}')
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = http.post("/api/v1/agents/register", content=body, headers=headers)
    assert response.status_code == 201 and response.json()["agent"]["hostname"] == "gz-host"
    assert_error(http.post("/api/v1/agents/register", content=body[:-8], headers=headers), 400)
    assert_error(http.post("/api/v1/agents/register", content=body, headers={**headers, "Content-Encoding": "br"}), 415)


def test_heartbeat_updates_last_seen_and_unknown_agent_is_404(http):
    register(http)
    before = http.get("/api/v1/agents/list").json()["agents"][0]["last_seen"]
    time.sleep(0.01)
    response = http.post("/api/v1/agents/heartbeat/agent-1")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert http.get("/api/v1/agents/list").json()["agents"][0]["last_seen"] > before
    assert_error(http.post("/api/v1/agents/heartbeat/ghost"), 404, "unknown_agent")


def test_first_report_registers_implicitly_and_counts(http):
    assert post_report(http, report("agent-9")).status_code == 202
    assert post_report(http, report("agent-9")).status_code == 202
    agents = http.get("/api/v1/agents/list").json()
    assert agents["count"] == 1
    agent = agents["agents"][0]
    assert agent["agent_id"] == "agent-9" and agent["reports_received"] == 2 and agent["last_report_at"]
    assert http.post("/api/v1/agents/heartbeat/agent-9").status_code == 200


def test_config_comes_from_settings_with_per_agent_overrides(start_server):
    settings = make_settings(
        agents={
            "report_interval": "10s",
            "overrides": {"edge-7": {"report_interval": "1m", "features": {"docker": False}}},
        }
    )
    server = start_server(settings)
    with httpx.Client(base_url=server.url) as client:
        plain = client.get("/api/v1/agents/config/agent-1").json()
        edge = client.get("/api/v1/agents/config/edge-7").json()
    assert plain["report_interval"] == "10s" and plain["heartbeat_interval"] == "30s"
    assert plain["agent_id"] == "agent-1" and plain["server_time"].endswith("Z")
    assert plain["features"]["docker"] is True
    assert edge["report_interval"] == "1m" and edge["features"]["docker"] is False


def test_label_overrides_match_registered_metadata_and_agent_overrides_win(start_server):
    settings = make_settings(
        agents={
            "overrides": {
                "environment=edge": {"report_interval": "1m", "heartbeat_interval": "2m"},
                "edge-7": {"report_interval": "5m"},
            }
        }
    )
    server = start_server(settings)
    with httpx.Client(base_url=server.url) as client:
        register(client, "edge-7", environment="edge")
        register(client, "edge-8", environment="Edge")
        register(client, "core-1", environment="production")
        configs = {a: client.get(f"/api/v1/agents/config/{a}").json() for a in ("edge-7", "edge-8", "core-1")}
    assert (configs["edge-7"]["report_interval"], configs["edge-7"]["heartbeat_interval"]) == ("5m", "2m")
    assert configs["edge-8"]["report_interval"] == "1m"
    assert configs["core-1"]["report_interval"] == "15s"


def test_list_filters_by_status(start_server):
    server = start_server(make_settings(agents={"stale_threshold": "1s"}))
    with httpx.Client(base_url=server.url) as client:
        register(client, "old")
        time.sleep(1.2)
        register(client, "new")
        online = client.get("/api/v1/agents/list?status=online").json()
        stale = client.get("/api/v1/agents/list?status=stale").json()
        assert [a["agent_id"] for a in online["agents"]] == ["new"]
        assert [a["agent_id"] for a in stale["agents"]] == ["old"] and stale["count"] == 1
        assert_error(client.get("/api/v1/agents/list?status=weird"), 400)


def test_agent_endpoints_need_the_agent_token_when_configured(start_server):
    server = start_server(make_settings(auth={"agent_tokens": ["s3cret"], "read_tokens": ["r34d"]}))
    with httpx.Client(base_url=server.url) as client:
        assert_error(register(client), 401, "unauthorized")
        assert_error(client.post("/api/v1/agents/register", json={}, headers={"Authorization": "Bearer nope"}), 401)
        ok = client.post(
            "/api/v1/agents/register",
            json={"agent_id": "a", "hostname": "h"},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert ok.status_code == 201
        # The read token is not an agent token, and vice versa.
        assert_error(post_report(client, report(), Authorization="Bearer r34d"), 401)
        assert post_report(client, report(), Authorization="Bearer s3cret").status_code == 202
        assert_error(client.get("/api/v1/query/topology", headers={"Authorization": "Bearer s3cret"}), 401)
        assert client.get("/api/v1/query/topology", headers={"Authorization": "Bearer r34d"}).status_code == 200
        # ?token= is for browsers' WebSockets only: on REST it would leave the token in logged URLs.
        assert_error(client.get("/api/v1/query/stats?token=r34d"), 401)


def test_a_long_agent_list_is_streamed_whole_and_filtered(start_server, caplog):
    server = start_server()
    now = time.time()

    def register_many() -> None:
        for i in range(4_500):
            server.state.register_agent(f"agent-{i:05}", f"host-{i:05}", {"rack": str(i % 7)}, now)

    server.call(register_many)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.get("/api/v1/agents/list")
        assert response.status_code == 200 and "content-length" not in response.headers  # chunked
        body = response.json()
        assert body["count"] == 4_500 == len(body["agents"])
        assert {a["agent_id"] for a in body["agents"]} == {f"agent-{i:05}" for i in range(4_500)}
        assert body["agents"][7] == client.get("/api/v1/agents/list").json()["agents"][7]
        assert client.get("/api/v1/agents/list", params={"status": "online"}).json()["count"] == 4_500
        assert client.get("/api/v1/agents/list", params={"status": "stale"}).json() == {"agents": [], "count": 0}
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]  # no error per streamed answer


def test_registration_larger_than_its_limit_is_413_before_it_is_parsed(start_server):
    server = start_server(make_settings(server={"max_registration_size": 4096}))
    with httpx.Client(base_url=server.url) as client:
        big = {"agent_id": "agent-1", "hostname": "host-1", "metadata": {f"k{i}": "v" * 40 for i in range(200)}}
        assert_error(client.post("/api/v1/agents/register", json=big), 413, "payload_too_large")
        # Not parsed: a body past the limit is 413 even when it is not JSON.
        junk = b"{" * 5000
        response = client.post("/api/v1/agents/register", content=junk, headers={"Content-Type": "application/json"})
        assert_error(response, 413)
        assert register(client, "agent-1", "host-1", rack="r1").status_code == 201
