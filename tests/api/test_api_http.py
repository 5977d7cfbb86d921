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


def test_an_overlong_or_odd_request_id_is_replaced(http):
    for given in ("x" * 129, "bad id with spaces", "tab\tid"):
        echoed = http.get("/api/v1/ping", headers={"X-Request-Id": given}).headers["x-request-id"]
        assert echoed != given and len(echoed) == 16
    assert http.get("/api/v1/ping", headers={"X-Request-Id": "r" * 128}).headers["x-request-id"] == "r" * 128


@pytest.fixture
def all_levels():
    """structlog lets every level through while a test captures events (the suite runs at warning)."""
    import logging

    import structlog

    previous = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    yield
    structlog.configure(wrapper_class=previous)


def test_every_log_line_of_a_request_carries_its_request_id_method_path_and_client(start_server, all_levels):
    from structlog.contextvars import merge_contextvars
    from structlog.testing import capture_logs

    from tests.plugins.recorder import Failing

    server = start_server(extra_plugins=[("failing", Failing())])
    with capture_logs(processors=[merge_contextvars]) as events, httpx.Client(base_url=server.url) as client:
        post_report(client, report(), **{"X-Request-Id": "req-42"})
        client.get("/api/v1/ping", headers={"X-Request-Id": "req-43"})
    mine = [e for e in events if e.get("request_id") == "req-42"]
    assert any(e["event"] != "request" for e in mine), events  # the plugin's error line, inside the request
    for event in mine:
        assert event["method"] == "POST" and event["path"] == "/api/v1/reports" and event["client"] == "127.0.0.1"
    (line,) = [e for e in mine if e["event"] == "request"]
    assert line["status"] == 202 and line["duration_ms"] >= 0 and line["route"] == "/api/v1/reports"
    # Nothing leaks from one request into the next on the same connection.
    assert all(e.get("request_id") != "req-42" for e in events if e.get("path") == "/api/v1/ping")


def test_routine_successes_are_logged_at_debug_and_the_rest_at_info(start_server, all_levels):
    from structlog.testing import capture_logs

    server = start_server()
    with capture_logs() as events, httpx.Client(base_url=server.url) as client:
        client.post("/api/v1/agents/register", json={"agent_id": "a-1", "hostname": "h-1"})
        assert client.post("/api/v1/agents/heartbeat/a-1").status_code == 200
        assert client.get("/api/v1/agents/config/a-1").status_code == 200
        assert post_report(client, report("a-1", "h-1")).status_code == 202
        for path in ("/health", "/livez", "/readyz", "/metrics", "/api/v1/ping"):
            client.get(path)
        client.post("/api/v1/agents/heartbeat/nobody")  # 404: worth a line
    levels = {e["route"]: e["log_level"] for e in events if e["event"] == "request" and e["status"] < 400}
    assert levels.pop("/api/v1/agents/register") == "info"
    assert set(levels.values()) == {"debug"}, levels
    assert len(levels) == 8
    (missing,) = [e for e in events if e["event"] == "request" and e["status"] == 404]
    assert missing["log_level"] == "info"


def test_query_token_is_accepted_on_the_websocket_only(start_server):
    server = start_server(make_settings(auth={"read_tokens": ["r"]}))
    with httpx.Client(base_url=server.url) as client:
        assert_error(client.get("/api/v1/query/stats", params={"token": "r"}), 401, "unauthorized")
        assert client.get("/api/v1/query/stats", headers={"Authorization": "Bearer r"}).status_code == 200


def test_stats_redact_plugin_settings_that_look_secret(start_server):
    plugins = {"kubernetes_info": {"settings": {"api_token": "s3cret", "nested": {"password": "pw"}, "zone": "eu"}}}
    server = start_server(make_settings(pipeline={"plugins": plugins}))
    body = httpx.get(server.url + "/api/v1/query/stats").json()
    shown = body["config"]["pipeline"]["plugins"]["kubernetes_info"]["settings"]
    assert shown == {"api_token": "***", "nested": {"password": "***"}, "zone": "eu"}
    assert "s3cret" not in httpx.get(server.url + "/api/v1/query/stats").text


def test_livez_and_readyz_answer_once_started(http):
    assert http.get("/livez").json() == {"status": "alive"}
    assert http.get("/readyz").json() == {"status": "ready"}


def test_readyz_is_503_until_start_up_is_done_and_while_shutting_down(settings):
    import asyncio
    import threading

    from orchestrator.app import create_app
    from tests.support import ServerThread, free_port, wait_for

    app = create_app(settings)
    release = threading.Event()

    async def slow_start(app):  # a long restore, as a big data file would make
        await asyncio.to_thread(release.wait, 15)

    app.register_listener(slow_start, "before_server_start")
    server = ServerThread(app, free_port())
    starting = threading.Thread(target=server.start)
    starting.start()
    try:

        def answer(path):
            try:
                return httpx.get(server.url + path, timeout=2)
            except httpx.TransportError:
                return None

        starting_answer = wait_for(lambda: answer("/readyz"), 10)
        assert starting_answer.status_code == 503
        assert starting_answer.json()["status"] == "not_ready" and "starting" in starting_answer.json()["reasons"]
        assert answer("/livez").status_code == 200
        release.set()
        starting.join(15)
        assert wait_for(lambda: answer("/readyz").status_code == 200, 10)
        server.call(lambda: setattr(server.state, "shutting_down", True))
        body = answer("/readyz").json()
        assert body["status"] == "not_ready" and "shutting_down" in body["reasons"]
    finally:
        release.set()
        starting.join(15)
        server.stop()


def test_a_thousand_bad_requests_log_ten_lines_and_one_count_while_the_metric_counts_all(start_server, all_levels):
    from structlog.testing import capture_logs

    server = start_server(make_settings(logging={"sample_window": "1h"}))
    with capture_logs() as events, httpx.Client(base_url=server.url) as client:
        for _ in range(1_000):
            response = client.post("/api/v1/reports", content=b"{", headers={"Content-Type": "application/json"})
            assert response.status_code == 400
        assert client.post("/api/v1/agents/heartbeat/nobody").status_code == 404  # another route: its own lines
        metrics = client.get("/metrics").text
        logged = [e for e in events if e["event"] == "request" and e["status"] >= 400]
        assert [e["route"] for e in logged] == ["/api/v1/reports"] * 10 + ["/api/v1/agents/heartbeat/<agent_id:str>"]
        assert not [e for e in events if e["event"] == "requests_not_logged"]  # the window is still open
        server.stop()  # a stopping server says what its open windows left out
    (left_out,) = [e for e in events if e["event"] == "requests_not_logged"]
    assert left_out["route"] == "/api/v1/reports" and left_out["status"] == 400 and left_out["count"] == 990
    assert left_out["window"] == "1h" and left_out["log_level"] == "info"
    assert 'route="/api/v1/reports",status="400"} 1000.0' in metrics


def test_when_a_window_ends_the_count_of_requests_left_out_is_logged(start_server, all_levels):
    from structlog.testing import capture_logs

    from tests.support import wait_for

    server = start_server(make_settings(logging={"sample_window": "1s", "sample_lines": 2}))
    with capture_logs() as events, httpx.Client(base_url=server.url) as client:
        for _ in range(5):
            assert client.post("/api/v1/agents/heartbeat/nobody").status_code == 404
        (left_out,) = wait_for(lambda: [e for e in events if e["event"] == "requests_not_logged"], timeout=30)
    assert left_out["count"] == 5 - len([e for e in events if e["event"] == "request" and e["status"] == 404])
    assert left_out["count"] >= 1 and "request_id" not in left_out  # nobody's request
