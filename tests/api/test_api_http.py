"""HTTP plumbing against a real server: error format, CORS, health, ping, metrics, request ids, 500s."""

from __future__ import annotations

import httpx
import pytest

from tests.support import make_settings, post_report, report


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) <= {"code", "message", "details"} and error["message"]
    if code:
        assert error["code"] == code
    return error


def test_health_reports_uptime_and_version(http):
    body = http.get("/health").json()
    assert body["status"] == "healthy" and body["version"] and "uptime" in body


def test_ping(http):
    assert http.get("/api/v1/ping").json() == {"message": "pong"}


def test_unknown_route_is_404_in_contract_format(http):
    assert_error(http.get("/api/v1/nope"), 404, "not_found")


def test_wrong_method_is_405_in_contract_format(http):
    assert_error(http.delete("/api/v1/reports"), 405, "method_not_allowed")
    assert_error(http.get("/api/v1/reports"), 405)


def test_body_over_the_limit_is_413(start_server):
    server = start_server(make_settings(server={"max_body_size": 2048}))
    with httpx.Client(base_url=server.url) as client:
        response = client.post(
            "/api/v1/reports", content=b"{" + b" " * 4096 + b"}", headers={"Content-Type": "application/json"}
        )
    assert_error(response, 413, "payload_too_large")


def test_wrong_content_type_is_415(http):
    response = http.post("/api/v1/reports", content=b"agent_id=x", headers={"Content-Type": "text/plain"})
    assert_error(response, 415, "unsupported_media_type")


class Exploding:
    """A validator with a bug: the server must answer 500 in the contract's format, never a trace."""

    @staticmethod
    def validate_report(report, settings):
        raise RuntimeError("boom")


def test_unexpected_exception_is_500_without_a_stack_trace(start_server, monkeypatch):
    server = start_server()
    # Break the request path itself (not a plugin: plugins are isolated by design).
    monkeypatch.setattr(server.state.ingest, "submit", lambda *a: 1 / 0)
    with httpx.Client(base_url=server.url) as client:
        response = post_report(client, report())
    error = assert_error(response, 500, "internal_error")
    assert "ZeroDivisionError" not in response.text and "Traceback" not in response.text
    assert "server log" in error["message"]


def test_cors_preflight_is_204_with_methods_and_headers(http):
    response = http.options(
        "/api/v1/reports",
        headers={
            "Origin": "https://ui.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 204
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "Content-Type" in response.headers["access-control-allow-headers"]
    assert response.headers["access-control-allow-origin"] == "*"


def test_every_response_carries_allow_origin(http):
    assert http.get("/api/v1/ping").headers["access-control-allow-origin"] == "*"
    assert http.get("/nope").headers["access-control-allow-origin"] == "*"


def test_configured_origins_only(start_server):
    server = start_server(make_settings(server={"cors_origins": ["https://ui.example"]}))
    with httpx.Client(base_url=server.url) as client:
        ok = client.get("/api/v1/ping", headers={"Origin": "https://ui.example"})
        other = client.get("/api/v1/ping", headers={"Origin": "https://evil.example"})
    assert ok.headers["access-control-allow-origin"] == "https://ui.example"
    assert "access-control-allow-origin" not in other.headers


def test_request_id_is_echoed_or_made(http):
    assert http.get("/api/v1/ping", headers={"X-Request-Id": "abc"}).headers["x-request-id"] == "abc"
    assert len(http.get("/api/v1/ping").headers["x-request-id"]) == 16


def test_metrics_exposition_has_the_contract_metrics(http):
    http.get("/api/v1/ping")
    post_report(http, report())
    text = http.get("/metrics").text
    for name in (
        "app_agents_total",
        "app_reports_received_total",
        "app_websocket_clients",
        "app_topology_nodes",
        "app_http_request_duration_seconds_bucket",
    ):
        assert name in text
    assert 'route="/api/v1/ping"' in text and 'method="GET"' in text and 'status="200"' in text
    assert "app_reports_received_total 1.0" in text


def test_two_apps_in_one_process_keep_separate_metrics(start_server):
    a, b = start_server(), start_server()
    with httpx.Client(base_url=a.url) as client:
        post_report(client, report())
    with httpx.Client(base_url=b.url) as client:
        assert "app_reports_received_total 0.0" in client.get("/metrics").text


@pytest.mark.parametrize("path", ["/health", "/api/v1/ping", "/metrics"])
def test_open_endpoints_need_no_token(start_server, path):
    server = start_server(make_settings(auth={"agent_tokens": ["a"], "read_tokens": ["r"]}))
    assert httpx.get(server.url + path).status_code == 200
