"""Hypothesis throws random and mutated reports at a real server: every answer is 2xx/4xx, never 500."""

from __future__ import annotations

import gzip

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.app import create_app
from tests.support import ServerThread, free_port, make_settings, report

SEED = report(
    host_info={
        "os": "linux",
        "cpu_percent": 3.5,
        "load_avg": [0.1, 0.2, 0.3],
        "ip_addresses": ["10.0.0.1"],
        "memory_used": 10,
        "net_rx_bytes": 5,
    },
    docker_info={"containers": [{"id": "d" * 64, "name": "web", "labels": {"a": "b"}, "ip_addresses": ["172.17.0.2"]}]},
    processes_info={
        "processes": [
            {"pid": 1, "ppid": 0, "name": "init", "cgroup": "0::/init.scope"},
            {"pid": 2, "cgroup": "0::/system.slice/docker-" + "d" * 64 + ".scope"},
        ]
    },
    network_info={
        "connections": [
            {"pid": 1, "protocol": "tcp", "local_ip": "0.0.0.0", "local_port": 80, "state": "LISTEN"},
            {
                "pid": 2,
                "protocol": "tcp6",
                "local_ip": "::1",
                "local_port": 5000,
                "remote_ip": "::1",
                "remote_port": 80,
                "state": "ESTABLISHED",
            },
        ],
        "interfaces": [{"name": "eth0", "rx_bytes": 1, "tx_bytes": 2}],
    },
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from paths(child, (*prefix, i))


ALL_PATHS = [p for p in paths(SEED) if p]


def mutate(path, value):
    body = orjson.loads(orjson.dumps(SEED))
    node = body
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return body


@pytest.fixture(scope="module")
def fuzz_server():
    server = ServerThread(create_app(make_settings()), free_port()).start()
    yield server
    server.stop()


def post(server, content: bytes, gzipped=False):
    headers = {"Content-Type": "application/json"}
    if gzipped:
        content, headers["Content-Encoding"] = gzip.compress(content), "gzip"
    return httpx.post(server.url + "/api/v1/reports", content=content, headers=headers, timeout=10)


def check(response):
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert "error" in response.json()


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(path=st.sampled_from(ALL_PATHS), value=json_values)
def test_mutated_reports_never_cause_a_500(fuzz_server, path, value):
    check(post(fuzz_server, orjson.dumps(mutate(path, value), option=orjson.OPT_NON_STR_KEYS)))


@FUZZ
@given(body=json_values)
def test_random_json_bodies_never_cause_a_500(fuzz_server, body):
    check(post(fuzz_server, orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)))


@FUZZ
@given(data=st.binary(max_size=300), gzipped=st.booleans())
def test_random_bytes_never_cause_a_500(fuzz_server, data, gzipped):
    check(post(fuzz_server, data, gzipped))


@FUZZ
@given(cut=st.integers(0, len(orjson.dumps(SEED))))
def test_truncated_reports_never_cause_a_500(fuzz_server, cut):
    check(post(fuzz_server, orjson.dumps(SEED)[:cut]))


def test_server_is_healthy_after_the_fuzzing(fuzz_server):
    assert httpx.get(fuzz_server.url + "/health").status_code == 200
    assert post(fuzz_server, orjson.dumps(SEED)).status_code == 202
    errors = httpx.get(fuzz_server.url + "/metrics").text
    assert "app_plugin_errors_total{" not in errors  # no plugin choked on what validation let through
