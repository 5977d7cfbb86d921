"""Reports API end to end: accepted, refused with the right error, overload, and the plugin pipeline."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from orchestrator.pipeline.host import plugin_names
from tests.api.test_api_http import assert_error
from tests.plugins import gpu_plugin, recorder
from tests.support import make_settings, post_report, report, wait_for

PROCS = {
    "processes": [
        {"pid": 10, "name": "nginx", "cgroup": "0::/system.slice/docker-" + "a" * 64 + ".scope"},
        {"pid": 12, "name": "sshd", "cgroup": "0::/system.slice/ssh.service"},
    ]
}


def topology(client, **params):
    return client.get("/api/v1/query/topology", params=params).json()["topology"]


def wait_node(client, node_id, **params):
    return wait_for(lambda: topology(client, **params)["nodes"].get(node_id))


def test_report_is_accepted_and_reaches_the_topology(http):
    response = post_report(http, report(processes_info=PROCS))
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted" and body["message"] == "Report processed successfully" and body["report_id"]
    node = wait_node(http, "process:host-1:10")
    assert node["parent"] == "container:" + "a" * 64 and node["agent_ids"] == ["agent-1"]
    assert wait_node(http, "process:host-1:12")["parent"] == "host:host-1"


def test_gzip_report_is_accepted(http):
    assert post_report(http, report(processes_info=PROCS), gzipped=True).status_code == 202
    wait_node(http, "process:host-1:10")


def test_bad_reports_get_the_right_errors_and_leave_data_intact(http):
    post_report(http, report(processes_info=PROCS))
    wait_node(http, "process:host-1:10")
    before = topology(http)
    assert_error(http.post("/api/v1/reports", content=b"{nope", headers={"Content-Type": "application/json"}), 400)
    assert_error(http.post("/api/v1/reports", content=b"{}", headers={"Content-Type": "text/xml"}), 415)
    error = assert_error(post_report(http, report(processes_info={"processes": [{"pid": -1}]})), 422)
    assert error["details"] == [
        {"field": "processes_info.processes.0.pid", "message": "Input should be greater than or equal to 0"}
    ]
    future = report(ts=time.time() + 3600)
    assert assert_error(post_report(http, future), 422)["details"][0]["field"] == "timestamp"
    time.sleep(0.15)
    assert topology(http)["nodes"] == before["nodes"]
    assert http.get("/health").status_code == 200


def test_item_limits_are_refused_with_a_clear_message(start_server):
    server = start_server(make_settings(server={"max_processes": 3}))
    with httpx.Client(base_url=server.url) as client:
        procs = {"processes": [{"pid": i} for i in range(5)]}
        error = assert_error(post_report(client, report(processes_info=procs)), 422)
    assert error["details"][0] == {
        "field": "processes_info.processes",
        "message": "5 processes exceed the limit of 3 per report",
    }


def test_gzip_bomb_is_413(http):
    import gzip

    bomb = gzip.compress(b" " * (11 * 1024 * 1024))
    response = http.post(
        "/api/v1/reports", content=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert_error(response, 413)


def test_full_queue_answers_429_with_retry_after_and_loses_nothing_accepted(start_server):
    server = start_server(make_settings(server={"ingest_queue_size": 5}))
    state = server.state
    worker = next(t for t in server.app.ctx.tasks if t.get_name() == "ingest")
    server.call(worker.cancel)  # the worker stops applying: the queue fills up
    with httpx.Client(base_url=server.url) as client:
        answers = [post_report(client, report(f"agent-{i}", host_info={})) for i in range(8)]
        assert [a.status_code for a in answers] == [202] * 5 + [429] * 3
        throttled = answers[-1]
        assert throttled.headers["retry-after"] == "1"
        assert assert_error(throttled, 429, "overloaded")
        accepted = {f"agent-{i}" for i in range(5)}
        # Restart the worker: every 202'd report is applied, none of the refused ones.
        server.call(lambda: server.app.ctx.tasks.append(asyncio.ensure_future(state.ingest.run())))
        nodes = wait_for(
            lambda: set(topology(client)["nodes"]) >= {f"host:host-{i}" for i in range(5)} and topology(client)["nodes"]
        )
        assert {n.removeprefix("host:").replace("host", "agent") for n in nodes} == accepted
        assert post_report(client, report("agent-9")).status_code == 202


def stop_ingest_worker(server) -> None:
    """The worker stops applying: what is accepted stays queued, so the queue can be filled."""
    worker = next(t for t in server.app.ctx.tasks if t.get_name() == "ingest" and not t.done())
    server.call(worker.cancel)


def restart_ingest_worker(server) -> None:
    tasks = server.app.ctx.tasks
    server.call(lambda: tasks.append(asyncio.get_running_loop().create_task(server.state.ingest.run(), name="ingest")))


def metric(client, name: str) -> float:
    line = next(l for l in client.get("/metrics").text.splitlines() if l.startswith(name + " "))
    return float(line.split()[1])


def post_raw(client, content: bytes, **headers) -> httpx.Response:
    return client.post("/api/v1/reports", content=content, headers={"Content-Type": "application/json", **headers})


def test_full_queue_refuses_before_reading_the_body_so_even_malformed_json_gets_429(start_server):
    server = start_server(make_settings(server={"ingest_queue_size": 2}))
    stop_ingest_worker(server)
    with httpx.Client(base_url=server.url) as client:
        assert [post_report(client, report(f"agent-{i}")).status_code for i in range(2)] == [202, 202]
        assert_error(post_raw(client, b"{this is not json"), 429, "overloaded")
        assert_error(post_raw(client, b"\x1f\x8b not gzip either", **{"Content-Encoding": "gzip"}), 429)
        restart_ingest_worker(server)
        wait_for(lambda: client.get("/health").json()["ingest_queue"] == 0)
        # With room again, the same bodies get what they deserve.
        assert_error(post_raw(client, b"{this is not json"), 400, "malformed_json")


def test_queue_is_bounded_by_decoded_bytes_as_well_as_by_count(start_server):
    server = start_server(make_settings(server={"ingest_queue_size": 100, "ingest_queue_bytes": 4096}))
    stop_ingest_worker(server)

    def sized(agent_id: str, size: int) -> bytes:
        body = orjson.dumps(report(agent_id, host_info={"os": ""}))
        return orjson.dumps(report(agent_id, host_info={"os": "x" * (size - len(body))}))

    with httpx.Client(base_url=server.url) as client:
        first, second = sized("agent-1", 3000), sized("agent-2", 1500)
        assert post_raw(client, first).status_code == 202
        assert metric(client, "app_ingest_queue_bytes") == len(first)
        # 3000 + 1500 bytes would exceed 4096: refused, though the queue holds one report of a hundred.
        assert_error(post_raw(client, second), 429, "overloaded")
        small = sized("agent-3", 1000)
        assert post_raw(client, gzip.compress(small), **{"Content-Encoding": "gzip"}).status_code == 202
        assert metric(client, "app_ingest_queue_bytes") == len(first) + len(small)  # counted decoded, not gzipped
        assert client.get("/api/v1/query/stats").json()["ingest_queue_bytes"] == len(first) + len(small)
        restart_ingest_worker(server)
        wait_for(lambda: metric(client, "app_ingest_queue_bytes") == 0)
        # An empty queue takes any report within the body limits, even one larger than the byte bound;
        # while it waits the queue is full, and the next report is refused at the door.
        stop_ingest_worker(server)
        assert post_raw(client, sized("agent-4", 6000)).status_code == 202
        assert_error(post_raw(client, b"not json"), 429, "overloaded")
        restart_ingest_worker(server)
        hosts = wait_for(lambda: len(topology(client, level="host")["nodes"]) == 3 and topology(client, level="host"))
        assert set(hosts["nodes"]) == {"host:host-1", "host:host-3", "host:host-4"}


def test_shutting_down_refuses_with_503_before_reading_the_body(start_server):
    server = start_server()
    asyncio.run_coroutine_threadsafe(server.state.ingest.drain(), server.loop).result(10)  # as a shutdown does
    with httpx.Client(base_url=server.url) as client:
        refused = post_raw(client, b"{this is not json")
        assert_error(refused, 503, "shutting_down")
        assert refused.headers["retry-after"] == "1"


def test_chunked_body_over_the_limit_is_413(start_server):
    server = start_server(make_settings(server={"max_body_size": 2048}))
    chunk = b"400\r\n" + b" " * 1024 + b"\r\n"
    head = b"POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + chunk * 4 + b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer
    with httpx.Client(base_url=server.url) as client:
        assert post_report(client, report()).status_code == 202  # the server is fine


def test_plugin_validator_rejects_with_field_paths(start_server):
    server = start_server(extra_plugins=[("reject_odd", recorder.RejectOdd())])
    with httpx.Client(base_url=server.url) as client:
        error = assert_error(post_report(client, report(processes_info={"processes": [{"pid": 2}, {"pid": 3}]})), 422)
    assert error["details"] == [{"field": "processes_info.processes.1.pid", "message": "odd pids are not allowed here"}]


def test_failing_plugin_is_isolated_logged_and_counted(start_server):
    server = start_server(extra_plugins=[("failing", recorder.Failing())])
    with capture_logs() as logs, httpx.Client(base_url=server.url) as client:
        assert post_report(client, report(processes_info=PROCS)).status_code == 202
        wait_node(client, "process:host-1:10")  # the built-in mergers still ran
        wait_for(lambda: client.get("/api/v1/query/agents/agent-1/latest").status_code == 200)  # and the sinks
        metrics = client.get("/metrics").text
    for hook in ("merge_report", "receive_report", "validate_report"):
        assert f'app_plugin_errors_total{{hook="{hook}",plugin="failing"}} 1.0' in metrics
    failures = [e for e in logs if e["event"] == "plugin_failed"]
    assert {e["hook"] for e in failures} == {"merge_report", "receive_report", "validate_report"}
    assert all(e["plugin"] == "failing" for e in failures)


def test_plugins_run_in_configured_order(start_server):
    recorder.CALLS.clear()
    plugins = [("first", recorder.Recorder("first")), ("second", recorder.Recorder("second"))]
    server = start_server(make_settings(pipeline={"order": ["second", "first"]}), extra_plugins=plugins)
    with httpx.Client(base_url=server.url) as client:
        post_report(client, report())
        wait_for(lambda: len(recorder.CALLS) == 2)
    assert recorder.CALLS == ["second", "first"]


def test_builtin_plugins_load_through_entry_points_and_can_be_disabled(start_server):
    server = start_server(make_settings(pipeline={"disable": ["process_topology"]}))
    names = set(plugin_names(server.state.plugins))
    assert {"host_topology", "network_topology", "cgroup_container_id", "timeseries_sink", "kubernetes_info"} <= names
    assert "process_topology" not in names
    with httpx.Client(base_url=server.url) as client:
        post_report(client, report(host_info={}, processes_info=PROCS))
        wait_node(client, "host:host-1")
        assert not [n for n in topology(client)["nodes"] if n.startswith("process:")]


def test_kubernetes_example_plugin_adds_pods_between_host_and_containers(http):
    cid = "b" * 64
    body = report(
        docker_info={"containers": [{"id": cid, "name": "web"}]},
        processes_info={"processes": [{"pid": 7, "container_id": cid}]},
        kubernetes_info={
            "pods": [
                {
                    "uid": "pod-uid-1",
                    "name": "web-0",
                    "namespace": "shop",
                    "labels": {"app": "web"},
                    "containers": [f"containerd://{cid}"],
                }
            ],
            "services": [{"name": "web", "namespace": "shop", "selector": {"app": "web"}}],
        },
    )
    assert post_report(http, body).status_code == 202
    pod = wait_node(http, "pod:pod-uid-1")
    assert pod["type"] == "pod" and pod["parent"] == "host:host-1" and pod["metadata"]["services"] == ["shop/web"]
    assert topology(http)["nodes"][f"container:{cid}"]["parent"] == "pod:pod-uid-1"
    assert topology(http)["nodes"]["process:host-1:7"]["parent"] == f"container:{cid}"
    error = assert_error(post_report(http, report(kubernetes_info={"pods": [{"uid": ""}]})), 422)
    assert {d["field"] for d in error["details"]} == {"kubernetes_info.pods.0.uid", "kubernetes_info.pods.0.name"}


def test_third_party_plugin_installed_through_an_entry_point(tmp_path, monkeypatch, start_server):
    # Install the plugin the way pip would: a dist-info with an entry point in the `orchestrator` group.
    dist = tmp_path / "gpu_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gpu-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[orchestrator]\ngpu_info = tests.plugins.gpu_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = make_settings(pipeline={"plugins": {"gpu_info": {"settings": {"threshold": 90}}}})
    server = start_server(settings)
    assert server.state.plugins.get_plugin("gpu_info") is gpu_plugin
    assert gpu_plugin.CONFIGURED == {"threshold": 90}
    with httpx.Client(base_url=server.url) as client:
        assert post_report(client, report(gpu_info={"gpus": [{"model": "A100", "util": 55.0}]})).status_code == 202
        gpu = wait_node(client, "gpu:host-1:0")
        assert gpu["parent"] == "host:host-1" and gpu["metrics"] == {"util": 55.0}
        assert wait_node(client, "host:host-1", level="host")
        error = assert_error(post_report(client, report(gpu_info={"gpus": [{"model": "x"}]})), 422)
        assert error["details"][0]["field"] == "gpu_info.gpus.0.util"


def test_unknown_fields_are_kept_in_the_latest_report(http):
    body = report(probe_build="abc", processes_info={"processes": [{"pid": 1, "nice": -5}]})
    post_report(http, body)
    latest = wait_for(lambda: (r := http.get("/api/v1/query/agents/agent-1/latest")).status_code == 200 and r.json())
    assert latest["report"] == body and latest["agent_id"] == "agent-1" and latest["received_at"].endswith("Z")


def test_backlog_is_coalesced_yet_every_report_reaches_the_sinks(start_server):
    server = start_server()
    worker = next(t for t in server.app.ctx.tasks if t.get_name() == "ingest")
    server.call(worker.cancel)  # reports pile up as they would behind a slow worker
    base = (time.time() // 15) * 15 - 120
    with httpx.Client(base_url=server.url) as client:
        for i in range(5):
            body = report(
                ts=base + 15 * i, host_info={"cpu_percent": float(i)}, processes_info={"processes": [{"pid": 100 + i}]}
            )
            assert post_report(client, body).status_code == 202
        server.call(lambda: server.app.ctx.tasks.append(asyncio.ensure_future(server.state.ingest.run())))
        nodes = wait_for(lambda: "process:host-1:104" in (n := topology(client)["nodes"]) and n)
        assert [n for n in nodes if n.startswith("process:")] == ["process:host-1:104"]
        series = client.get("/api/v1/query/agents/agent-1/timeseries").json()
        assert [p["cpu_percent"] for p in series["points"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert "app_reports_coalesced_total 4.0" in client.get("/metrics").text


def test_the_live_topology_stays_still_while_a_sliced_publish_holds_it(start_server):
    server = start_server()
    lock = server.state.topology_lock
    asyncio.run_coroutine_threadsafe(lock.acquire(), server.loop).result(5)  # as a publish in slices does
    try:
        with httpx.Client(base_url=server.url) as client:
            assert post_report(client, report(host_info={})).status_code == 202  # requests are still served
            time.sleep(0.3)
            assert server.call(server.state.topology.agents) == []  # the ingest worker waits its turn
    finally:
        server.loop.call_soon_threadsafe(lock.release)
    with httpx.Client(base_url=server.url) as client:
        wait_node(client, "host:host-1")


@pytest.mark.parametrize(
    "host_info",
    [{"cpu_count": "8"}, {"cpu_count": True}, {"memory_used": 1.5}, {"cpu_percent": "12.5"}, {"load_avg": ["1"]}],
)
def test_counts_and_numbers_must_be_json_numbers_not_strings_or_booleans(http, host_info):
    error = assert_error(post_report(http, report(host_info=host_info)), 422)
    assert error["details"][0]["field"].startswith("host_info.")


@pytest.mark.parametrize(
    "raw, field, message",
    [
        (
            b'"host_info": {"memory_used": 100000000000000000000000000000}',
            "host_info.memory_used",
            "less than or equal",
        ),
        (b'"host_info": {"memory_used": 9223372036854775808}', "host_info.memory_used", "less than or equal"),
        (b'"host_info": {"cpu_percent": Infinity}', "host_info.cpu_percent", "finite"),
        (b'"host_info": {"load_avg": [1e999]}', "host_info.load_avg.0", "finite"),
        (
            b'"network_info": {"connections": [{"local_ip": "999.1.1.1"}]}',
            "network_info.connections.0.local_ip",
            "must be an IPv4 or IPv6 address",
        ),
        # Unknown fields are kept as sent, so they are checked too, wherever they are.
        (
            b'"processes_info": {"processes": [{"pid": 1}, {"pid": 2, "x": {"y": [1, 100000000000000000000000]}}]}',
            "processes_info.processes.1.x.y.1",
            "within 64 bits",
        ),
        (b'"rack": {"weight": -1e999}', "rack.weight", "finite"),
        (
            b'"kubernetes_info": {"pods": [{"uid": "u", "name": "p", "cpu": 1e999}]}',
            "kubernetes_info.pods.0.cpu",
            "finite",
        ),
    ],
)
def test_numbers_the_server_could_not_keep_or_serve_again_are_422(http, raw, field, message):
    body = b'{"agent_id": "a-1", "hostname": "h-1", "timestamp": "%s", %s}' % (report()["timestamp"].encode(), raw)
    response = http.post("/api/v1/reports", content=body, headers={"Content-Type": "application/json"})
    error = assert_error(response, 422)
    assert error["details"][0]["field"] == field and message in error["details"][0]["message"]
    assert http.get("/api/v1/query/topology").status_code == 200


def test_a_report_dated_minutes_ahead_does_not_freeze_its_agents_view(http):
    # Within the contract's five minutes ahead, so accepted; it must not outrank the agent's next reports
    # until its date comes (issue 16 #9: one such report froze an agent's process view for 5 minutes).
    ahead = report(ts=time.time() + 290, processes_info={"processes": [{"pid": 1, "name": "from-the-future"}]})
    assert post_report(http, ahead).status_code == 202
    wait_node(http, "process:host-1:1")
    now = report(processes_info={"processes": [{"pid": 2, "name": "now"}]})
    assert post_report(http, now).status_code == 202
    wait_node(http, "process:host-1:2")
    assert "process:host-1:1" not in topology(http)["nodes"]
