"""gzip on REST answers: negotiated by Accept-Encoding, large bodies only, identical once decoded."""

from __future__ import annotations

import gzip

import httpx
import orjson
import pytest

from tests.support import make_settings, post_report, report, wait_for


def big_report(processes: int = 1500) -> dict:
    procs = [
        {"pid": pid, "ppid": 1, "name": f"worker-{pid}", "cmdline": f"/usr/bin/worker --id {pid}"}
        for pid in range(2, processes)
    ]
    return report("agent-1", processes_info={"processes": procs})


@pytest.fixture
def busy(start_server):
    server = start_server()
    # A bound on the answer, not a speed check: under load 12 this POST took more than httpx's default 5 s.
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert post_report(client, big_report()).status_code == 202
        wait_for(lambda: len(client.get("/api/v1/query/topology").json()["topology"]["nodes"]) > 1000, 10)
    return server


def raw_get(server, path: str, accept: str | None) -> tuple[httpx.Response, bytes]:
    headers = {"Accept-Encoding": accept} if accept is not None else {"Accept-Encoding": "identity"}
    with httpx.Client(base_url=server.url) as client, client.stream("GET", path, headers=headers) as response:
        return response, b"".join(response.iter_raw())


@pytest.mark.parametrize("accept", ["gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0.5", "*"])
def test_large_answers_are_gzipped_for_clients_that_accept_it(busy, accept):
    plain, plain_body = raw_get(busy, "/api/v1/query/topology", None)
    zipped, zipped_body = raw_get(busy, "/api/v1/query/topology", accept)
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["vary"] and "Accept-Encoding" in plain.headers["vary"]
    assert int(zipped.headers["content-length"]) == len(zipped_body) < len(plain_body) / 4
    assert orjson.loads(gzip.decompress(zipped_body)) == orjson.loads(plain_body)


def test_the_same_view_compresses_the_same_twice(busy):
    first = raw_get(busy, "/api/v1/query/topology", "gzip")[1]
    second = raw_get(busy, "/api/v1/query/topology", "gzip")[1]
    assert gzip.decompress(first) == gzip.decompress(second)


@pytest.mark.parametrize("accept", [None, "gzip;q=0", "identity", "br"])
def test_clients_that_do_not_accept_gzip_get_plain_answers(busy, accept):
    response, body = raw_get(busy, "/api/v1/query/topology", accept)
    assert "content-encoding" not in response.headers
    assert orjson.loads(body)["topology"]["nodes"]


def test_small_answers_are_not_compressed(http):
    response, body = raw_get_from(http, "/api/v1/ping")
    assert "content-encoding" not in response.headers and orjson.loads(body) == {"message": "pong"}


def raw_get_from(client: httpx.Client, path: str):
    with client.stream("GET", path, headers={"Accept-Encoding": "gzip"}) as response:
        return response, b"".join(response.iter_raw())


def test_gzip_can_be_turned_off(start_server):
    server = start_server(make_settings(server={"gzip": False}))
    with httpx.Client(base_url=server.url) as client:
        assert post_report(client, big_report()).status_code == 202
    response, _ = raw_get(server, "/metrics", "gzip")
    assert "content-encoding" not in response.headers


def test_metrics_are_gzipped_for_prometheus(busy):
    response, body = raw_get(busy, "/metrics", "gzip")
    assert response.headers["content-encoding"] == "gzip"
    assert b"app_reports_received_total" in gzip.decompress(body)


def test_a_streamed_view_is_gzipped_as_one_stream(start_server):
    server = start_server()
    with httpx.Client(base_url=server.url) as client:
        assert post_report(client, big_report(4000)).status_code == 202
        wait_for(lambda: len(client.get("/api/v1/query/topology").json()["topology"]["nodes"]) > 3000, 15)
    plain, plain_body = raw_get(server, "/api/v1/query/topology", None)
    zipped, zipped_body = raw_get(server, "/api/v1/query/topology", "gzip")
    assert plain.headers.get("transfer-encoding") == "chunked"  # the streamed path, not one body
    assert zipped.headers["content-encoding"] == "gzip" and zipped.headers.get("transfer-encoding") == "chunked"
    assert len(zipped_body) < len(plain_body) / 4
    assert orjson.loads(gzip.decompress(zipped_body)) == orjson.loads(plain_body)
