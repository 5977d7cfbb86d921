"""The built-in page as a person uses it, in a real Chromium against a real server."""

from __future__ import annotations

import re
import time

import httpx

from orchestrator.contract.times import format_rfc3339, parse_rfc3339
from tests.support import make_settings, post_report, report, wait_for

CID = "c" * 64


def host_report(hostname: str, cpu: float = 12.5, **sections) -> dict:
    body = report(
        agent_id=f"agent-{hostname}",
        hostname=hostname,
        host_info={"cpu_percent": cpu, "memory_used": 2_000_000, "memory_total": 8_000_000, "ip_addresses": []},
        **sections,
    )
    return body


def post(server, body: dict, token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert post_report(client, body, **headers).status_code == 202


def graph_node(page, name: str):
    return page.locator("#nodes .node", has_text=name)


def test_the_page_is_served_with_its_assets_and_loads_nothing_from_elsewhere(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        index = client.get("/")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in index.headers["content-security-policy"]
        for asset in re.findall(r'(?:src|href)="(/ui/[^"]+)"', index.text):
            assert client.get(asset).status_code == 200, asset
        assert (
            client.get("/ui/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
        )
        assert client.get("/ui/config.json").json() == {"read_token_required": False}
        # The assets' folder itself leads to the page; a file that is not there is a 404, not a 500.
        moved = client.get("/ui")
        assert moved.status_code in (301, 302, 307, 308) and moved.headers["location"] == "/"
        folder = client.get("/ui/")
        assert folder.status_code == 200 and folder.text == index.text
        assert "default-src 'self'" in folder.headers["content-security-policy"]
        assert client.get("/ui/nothing-here.js").status_code == 404
        assert client.get("/ui/../pyproject.toml").status_code == 404


def test_the_page_lists_reported_hosts(server, open_page):
    post(server, host_report("alpha"))
    post(server, host_report("beta"))
    page = open_page(server)
    graph_node(page, "alpha").wait_for()
    graph_node(page, "beta").wait_for()
    assert page.locator("#status").inner_text() == "live"


def test_a_host_that_reports_after_the_page_opened_appears_without_a_reload(server, open_page):
    post(server, host_report("alpha"))
    page = open_page(server)
    graph_node(page, "alpha").wait_for()
    post(server, host_report("newcomer"))
    graph_node(page, "newcomer").wait_for()


def test_a_metrics_only_update_moves_no_node(server, open_page):
    for name in ("alpha", "beta", "gamma"):
        post(server, host_report(name))
    page = open_page(server)
    graph_node(page, "gamma").wait_for()
    before = {name: graph_node(page, name).get_attribute("transform") for name in ("alpha", "beta", "gamma")}
    seq = page.locator("#seq").inner_text()
    post(server, host_report("beta", cpu=99.0))
    post(server, host_report("delta"))
    graph_node(page, "delta").wait_for()
    page.wait_for_function("s => document.getElementById('seq').textContent !== s", arg=seq)
    assert {name: graph_node(page, name).get_attribute("transform") for name in before} == before


def test_selecting_a_node_shows_its_details_and_its_chart(server, open_page):
    post(server, host_report("alpha", cpu=40.0))
    page = open_page(server)
    graph_node(page, "alpha").click()
    details = page.locator("#details")
    details.locator("h2", has_text="alpha").wait_for()
    assert "host:alpha" in details.inner_text()
    chart = details.locator(".chart", has_text="CPU")
    chart.wait_for()
    assert "40.0 %" in chart.inner_text()
    assert chart.locator("polyline").count() == 1


def test_details_link_to_children_and_edges(server, open_page):
    processes = [{"pid": 10, "name": "postgres"}, {"pid": 20, "name": "client-app"}]
    connections = [
        {"pid": 10, "protocol": "tcp", "local_ip": "0.0.0.0", "local_port": 5432, "state": "LISTEN"},
        {
            "pid": 20,
            "protocol": "tcp",
            "local_ip": "127.0.0.1",
            "local_port": 40000,
            "remote_ip": "127.0.0.1",
            "remote_port": 5432,
            "state": "ESTABLISHED",
        },
    ]
    post(
        server,
        host_report("alpha", processes_info={"processes": processes}, network_info={"connections": connections}),
    )
    page = open_page(server, "/?level=process")
    graph_node(page, "client-app").click()
    details = page.locator("#details")
    details.locator("h2", has_text="client-app").wait_for()
    details.locator("a", has_text="postgres").click()  # the edge's far end
    details.locator("h2", has_text="postgres").wait_for()
    assert "5432" in details.inner_text()
    details.locator("a", has_text="alpha").click()  # the parent
    details.locator("h2", has_text="alpha").wait_for()
    assert details.locator("a", has_text="postgres").count() == 1  # a child


def test_switching_level_and_host_filter(server, open_page):
    post(server, host_report("alpha", processes_info={"processes": [{"pid": 1, "name": "alpha-daemon"}]}))
    post(server, host_report("beta", processes_info={"processes": [{"pid": 1, "name": "beta-daemon"}]}))
    page = open_page(server)
    graph_node(page, "alpha").wait_for()
    assert graph_node(page, "alpha-daemon").count() == 0
    page.select_option("#level", "process")
    graph_node(page, "alpha-daemon").wait_for()
    graph_node(page, "beta-daemon").wait_for()
    page.select_option("#host", "beta")
    # The filtered view's snapshot is drawn in one step: once its seq shows, all of it is there.
    page.wait_for_function("() => document.getElementById('seq').textContent !== 'seq –'")
    graph_node(page, "beta-daemon").wait_for()
    assert graph_node(page, "alpha-daemon").count() == 0
    assert "host=beta" in page.url and "level=process" in page.url


def test_the_table_sorts_and_filters_by_name_and_metadata(server, open_page):
    containers = [
        {"id": "a" * 64, "name": "web", "image": "nginx:1.25", "state": "running"},
        {"id": "b" * 64, "name": "db", "image": "postgres:16", "state": "running"},
    ]
    post(server, host_report("alpha", docker_info={"containers": containers}))
    page = open_page(server, "/?level=container")
    graph_node(page, "web").wait_for()
    page.click("#tab-table")
    rows = page.locator("#rows tr")
    rows.filter(has_text="db").wait_for()
    assert rows.count() == 3  # the host and its two containers
    page.fill("#filter", "image:nginx")
    page.wait_for_function("() => document.querySelectorAll('#rows tr').length === 1")
    assert "web" in rows.first.inner_text()
    page.fill("#filter", "d")
    page.wait_for_function("() => document.querySelectorAll('#rows tr').length === 1")
    assert "db" in rows.first.inner_text()
    page.fill("#filter", "")
    page.click("#table th[data-sort=name]")
    page.wait_for_function("() => document.querySelectorAll('#rows tr').length === 3")
    names = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(3)]
    assert names == sorted(names, reverse=True)  # the second click on a header reverses the order
    rows.filter(has_text="web").click()
    page.locator("#details h2", has_text="web").wait_for()


def test_the_agents_tab_lists_agents_with_their_status(server, open_page):
    post(server, host_report("alpha"))
    page = open_page(server)
    page.click("#tab-agents")
    row = page.locator("#agent-rows tr", has_text="agent-alpha")
    row.wait_for()
    assert "online" in row.inner_text()


def test_pausing_stops_updates_until_resumed(server, open_page):
    post(server, host_report("alpha"))
    page = open_page(server)
    graph_node(page, "alpha").wait_for()
    page.check("#pause")
    assert page.locator("#status").inner_text() == "paused"
    post(server, host_report("while-paused"))
    # The feed keeps the topology current while paused: the seq it shows on resume is past the new host's.
    page.wait_for_timeout(300)
    assert graph_node(page, "while-paused").count() == 0
    page.uncheck("#pause")
    graph_node(page, "while-paused").wait_for()


def test_the_page_asks_for_a_read_token_and_uses_it(start_server, open_page):
    server = start_server(make_settings(auth={"read_tokens": ["s3cret"], "agent_tokens": ["probe"]}))
    post(server, host_report("alpha"), token="probe")
    page = open_page(server)
    dialog = page.locator("#token-dialog")
    dialog.wait_for()
    page.fill("#token-input", "s3cret")
    page.click("#token-dialog button[type=submit]")
    graph_node(page, "alpha").wait_for()
    page.click("#tab-agents")
    page.locator("#agent-rows tr", has_text="agent-alpha").wait_for()
    # Kept for the tab's session: a reload does not ask again.
    page.reload()
    graph_node(page, "alpha").wait_for()
    assert not dialog.is_visible()


def test_a_wrong_token_is_asked_for_again(start_server, open_page):
    server = start_server(make_settings(auth={"read_tokens": ["s3cret"]}))
    post(server, host_report("alpha"))
    page = open_page(server, allow=("401",))
    page.fill("#token-input", "wrong")
    page.click("#token-dialog button[type=submit]")
    page.locator("#token-error", has_text="not accepted").wait_for()
    page.fill("#token-input", "s3cret")
    page.click("#token-dialog button[type=submit]")
    graph_node(page, "alpha").wait_for()


def test_the_page_reconnects_after_a_server_restart(server_process, open_page, tmp_path):
    first = server_process("--data-dir", str(tmp_path)).wait_healthy()
    post(first, host_report("alpha"))
    page = open_page(first, allow=("WebSocket",))
    graph_node(page, "alpha").wait_for()
    assert first.terminate() == 0
    page.locator("#status", has_text="reconnecting").wait_for()
    second = server_process("--data-dir", str(tmp_path), port=first.port).wait_healthy()
    page.locator("#status", has_text="live").wait_for(timeout=30_000)
    post(second, host_report("after-restart"))
    graph_node(page, "after-restart").wait_for()
    graph_node(page, "alpha").wait_for()


def test_the_time_slider_shows_a_past_topology_and_what_changed_since(start_server, open_page, tmp_path):
    server = start_server(make_settings(tmp_path))
    web = {"id": "a" * 64, "name": "web", "image": "nginx:1.25", "state": "running"}
    db = {"id": "b" * 64, "name": "db", "image": "postgres:16", "state": "running"}
    post(server, host_report("alpha", docker_info={"containers": [web, db]}))
    with httpx.Client(base_url=server.url, timeout=10) as client:

        def published(present: bool):
            topology = client.get("/api/v1/query/topology", params={"level": "container"}).json()["topology"]
            return ("container:" + "a" * 64 in topology["nodes"]) == present and topology["timestamp"]

        stamp = wait_for(lambda: published(True))
        # Half a second after the publication that had both containers, and before the one without web.
        at = format_rfc3339(parse_rfc3339(stamp) + 0.5)
        time.sleep(1.0)
        post(server, host_report("alpha", docker_info={"containers": [db]}))
        wait_for(lambda: published(False))
    page = open_page(server, f"/?level=container&at={at}", allow=("404",))
    removed = graph_node(page, "web")
    removed.wait_for()
    page.locator("#history-note", has_text="1 removed").wait_for()
    assert "changed-removed" in removed.get_attribute("class")
    assert page.locator("#status").inner_text() == "history"
    page.click("#live-btn")
    graph_node(page, "web").wait_for(state="detached")
    assert graph_node(page, "db").count() == 1 and "at=" not in page.url
    # An hour ago is before the server kept any history: the page says from when it can show.
    page.evaluate(
        "() => { const s = document.getElementById('time'); s.value = '-60'; s.dispatchEvent(new Event('change')); }"
    )
    page.locator("#history-note", has_text=re.compile("history|oldest", re.I)).wait_for()
    graph_node(page, "db").wait_for()
