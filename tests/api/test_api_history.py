"""History over real HTTP: the topology as of a time, what changed between two times, one node's timeline,
their errors, durability across restarts (graceful and SIGKILL) and retention pruning."""

from __future__ import annotations

import time

import httpx
import pytest

from orchestrator.contract import responses
from orchestrator.contract.times import format_rfc3339, parse_rfc3339
from tests.support import make_settings, post_report, report, wait_for

TOPOLOGY = "/api/v1/query/topology"
CHANGES = "/api/v1/query/changes"


def processes(*names: str, cpu: float = 1.0) -> dict:
    """A processes section: pid i+1 runs names[i]; a name of None leaves that pid out."""
    listed = [{"pid": pid, "name": name, "cpu_percent": cpu} for pid, name in enumerate(names, 1) if name]
    return {"processes_info": {"processes": listed}}


def node_history(client: httpx.Client, node_id: str, **params) -> httpx.Response:
    return client.get(f"/api/v1/query/nodes/{node_id.replace(':', '%3A')}/history", params=params)


class Fleet:
    """Posts reports of host-1 and waits until each is published; remembers each publication's timestamp."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def post(self, agent_id: str = "agent-1", cpu: float = 1.0, **sections) -> dict:
        """Post a report and return the live topology once it shows it (its ``timestamp`` is the
        publication's)."""
        before = self.client.get(TOPOLOGY).json()["topology"]["seq"]
        body = report(agent_id, host_info={"cpu_percent": cpu}, **sections)
        assert post_report(self.client, body).status_code == 202
        return wait_for(lambda: self._published_after(before))

    def _published_after(self, seq: int) -> dict | None:
        topology = self.client.get(TOPOLOGY).json()["topology"]
        return topology if topology["seq"] > seq else None


@pytest.fixture
def history_server(start_server, tmp_path):
    return start_server(make_settings(tmp_path))


@pytest.fixture
def client(history_server):
    with httpx.Client(base_url=history_server.url, timeout=10) as client:
        yield client


@pytest.fixture
def fleet(client):
    return Fleet(client)


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code
    return body["message"]


# -- the topology at a time ---------------------------------------------------------------------------------


def test_topology_at_a_time_is_the_topology_published_then(client, fleet):
    first = fleet.post(**processes("nginx", "cron"))
    fleet.post(**processes("nginx"))  # cron has ended
    past = client.get(TOPOLOGY, params={"at": first["timestamp"]}).json()["topology"]
    assert past["seq"] == first["seq"] and past["timestamp"] == first["timestamp"]
    assert set(past["nodes"]) == {"host:host-1", "process:host-1:1", "process:host-1:2"}
    assert past["nodes"]["process:host-1:2"]["name"] == "cron"
    assert "process:host-1:2" not in client.get(TOPOLOGY).json()["topology"]["nodes"]


def test_topology_at_a_time_after_the_latest_publication_is_the_current_topology(client, fleet):
    fleet.post(**processes("nginx"))
    live = client.get(TOPOLOGY).json()
    later = format_rfc3339(parse_rfc3339(live["topology"]["timestamp"]) + 60)
    assert client.get(TOPOLOGY, params={"at": later}).json() == live


def test_topology_at_a_time_takes_level_and_host(client, fleet):
    fleet.post(**processes("nginx"))
    first = fleet.post("agent-2", **processes("postgres"))
    fleet.post(**processes(None, "sshd"))
    at = first["timestamp"]
    hosts = client.get(TOPOLOGY, params={"at": at, "level": "host"}).json()["topology"]
    assert set(hosts["nodes"]) == {"host:host-1", "host:host-2"}
    one = client.get(TOPOLOGY, params={"at": at, "host": "host-1"}).json()["topology"]
    assert set(one["nodes"]) == {"host:host-1", "process:host-1:1"}
    containers = client.get(TOPOLOGY, params={"at": at, "level": "container", "host": "host-2"}).json()
    assert set(containers["topology"]["nodes"]) == {"host:host-2"}


def connections(*remotes: tuple[str, int]) -> dict:
    """A network section: pid 1 connected to each ``(ip, port)``."""
    listed = [
        {
            "pid": 1,
            "protocol": "tcp",
            "local_ip": "10.0.0.5",
            "local_port": 40000 + n,
            "remote_ip": ip,
            "remote_port": port,
            "state": "ESTABLISHED",
        }
        for n, (ip, port) in enumerate(remotes)
    ]
    return {"network_info": {"connections": listed}}


VIEWS = [(level, external) for level in ("process", "container", "host") for external in ("each", "group")]


def test_topology_at_a_keyframe_is_exactly_what_was_live_then_in_every_view(client, fleet):
    sections = {**processes("nginx"), **connections(("8.8.8.8", 443), ("1.1.1.1", 443), ("10.9.9.9", 5432))}
    first = fleet.post(**sections)  # the first publication history sees: kept whole
    live = {
        (level, external): client.get(TOPOLOGY, params={"level": level, "external": external}).json()
        for level, external in VIEWS
    }
    assert "external:internet" in live["host", "group"]["topology"]["nodes"]
    fleet.post(**processes("nginx", "cron"), **connections(("8.8.4.4", 443)))
    for level, external in VIEWS:
        params = {"level": level, "external": external, "at": first["timestamp"]}
        assert client.get(TOPOLOGY, params=params).json() == live[level, external], (level, external)


def test_topology_at_a_bad_or_future_time_is_400(client, fleet):
    fleet.post(**processes("nginx"))
    assert "at=" in error(client.get(TOPOLOGY, params={"at": "yesterday"}), 400, "bad_parameter")
    future = format_rfc3339(time.time() + 600)
    assert "5 minutes" in error(client.get(TOPOLOGY, params={"at": future}), 400, "bad_parameter")
    level = client.get(TOPOLOGY, params={"at": format_rfc3339(time.time()), "level": "pod"})
    error(level, 400, "bad_parameter")


def test_topology_before_the_oldest_history_is_404_naming_the_oldest_time(client, fleet):
    first = fleet.post(**processes("nginx"))
    earlier = format_rfc3339(parse_rfc3339(first["timestamp"]) - 3600)
    message = error(client.get(TOPOLOGY, params={"at": earlier}), 404, "history_unavailable")
    assert first["timestamp"] in message
    assert client.get(TOPOLOGY, params={"at": first["timestamp"]}).status_code == 200


# -- what changed ---------------------------------------------------------------------------------------------


def test_changes_are_the_net_difference_between_two_times(client, fleet):
    start = fleet.post(**processes("nginx", "cron", "sshd"))
    fleet.post(**processes("nginx", None, "sshd", "backup"))  # cron ended, backup started
    fleet.post(**processes("nginx", None, "sshd-session", "backup", "tmp"))  # pid 3 renamed, tmp started
    end = fleet.post(**processes("nginx", None, "sshd-session", "backup"))  # tmp ended: never in the net diff
    body = client.get(CHANGES, params={"from": start["timestamp"], "to": end["timestamp"]}).json()
    responses.Changes.model_validate(body)  # the OpenAPI document's schema
    assert (body["from_seq"], body["to_seq"]) == (start["seq"], end["seq"])
    assert (body["from"], body["to"]) == (start["timestamp"], end["timestamp"])
    nodes = body["nodes"]
    assert list(nodes["added"]) == ["process:host-1:4"] and nodes["added"]["process:host-1:4"]["name"] == "backup"
    assert list(nodes["removed"]) == ["process:host-1:2"] and nodes["removed"]["process:host-1:2"]["name"] == "cron"
    assert list(nodes["updated"]) == ["process:host-1:3"]
    assert nodes["updated"]["process:host-1:3"]["name"] == "sshd-session"
    assert body["edges"] == {"added": {}, "removed": {}, "updated": {}}


def test_changes_ignore_metrics_last_seen_and_connection_counts(client, fleet):
    start = fleet.post(cpu=1.0, **processes("nginx", cpu=1.0))
    fleet.post(cpu=50.0, **processes("nginx", cpu=80.0))  # new metrics, new last_seen
    end = fleet.post(cpu=99.0, **processes("nginx", cpu=5.0))
    assert end["nodes"]["host:host-1"]["last_seen"] != start["nodes"]["host:host-1"]["last_seen"]
    body = client.get(CHANGES, params={"from": start["timestamp"]}).json()
    assert body["nodes"] == {"added": {}, "removed": {}, "updated": {}}


def interfaces(*counted: tuple[str, int]) -> dict:
    """A network section with interfaces ``(name, bytes so far)``."""
    listed = [{"name": name, "rx_bytes": count, "tx_bytes": count // 2} for name, count in counted]
    return {"network_info": {"connections": [], "interfaces": listed}}


def test_interface_byte_counters_are_metrics_but_a_new_interface_is_a_change(client, fleet):
    start = fleet.post(**interfaces(("eth0", 1_000)))
    fleet.post(**interfaces(("eth0", 5_000)))
    counted = fleet.post(**interfaces(("eth0", 9_000)))
    assert counted["nodes"]["host:host-1"]["metadata"]["interfaces"][0]["rx_bytes"] == 9_000
    window = {"from": start["timestamp"], "to": counted["timestamp"]}
    assert client.get(CHANGES, params=window).json()["nodes"]["updated"] == {}
    assert node_history(client, "host:host-1", **window).json()["events"] == []
    added = fleet.post(**interfaces(("eth0", 12_000), ("docker0", 10)))
    updated = client.get(CHANGES, params={"from": start["timestamp"]}).json()["nodes"]["updated"]
    assert [i["name"] for i in updated["host:host-1"]["metadata"]["interfaces"]] == ["eth0", "docker0"]
    events = node_history(client, "host:host-1", **{"from": start["timestamp"]}).json()["events"]
    assert [(e["change"], e["seq"]) for e in events] == [("updated", added["seq"])]


def test_changes_take_level_and_host(client, fleet):
    start = fleet.post(**processes("nginx"))
    fleet.post("agent-2", **processes("postgres"))
    body = client.get(CHANGES, params={"from": start["timestamp"], "level": "host"}).json()
    assert list(body["nodes"]["added"]) == ["host:host-2"]
    body = client.get(CHANGES, params={"from": start["timestamp"], "host": "host-1"}).json()
    assert body["nodes"]["added"] == {}


def test_changes_with_bad_times_are_400_and_before_the_history_404(client, fleet):
    first = fleet.post(**processes("nginx"))
    later = fleet.post(**processes("nginx", "cron"))
    backwards = {"from": later["timestamp"], "to": first["timestamp"]}
    assert "after" in error(client.get(CHANGES, params=backwards), 400, "bad_parameter")
    error(client.get(CHANGES), 400, "bad_parameter")
    error(client.get(CHANGES, params={"from": "now"}), 400, "bad_parameter")
    error(client.get(CHANGES, params={"from": first["timestamp"], "to": "soon"}), 400, "bad_parameter")
    earlier = format_rfc3339(parse_rfc3339(first["timestamp"]) - 60)
    assert first["timestamp"] in error(client.get(CHANGES, params={"from": earlier}), 404, "history_unavailable")


# -- one node's timeline --------------------------------------------------------------------------------------


def test_node_history_lists_its_structural_events_oldest_first(client, fleet):
    fleet.post(**processes("nginx"))
    added = fleet.post(**processes("nginx", "worker"))
    fleet.post(cpu=70.0, **processes("nginx", "worker", cpu=50.0))  # metrics only: no event
    renamed = fleet.post(**processes("nginx", "worker-2"))
    removed = fleet.post(**processes("nginx"))
    body = node_history(client, "process:host-1:2").json()
    responses.NodeHistory.model_validate(body)
    assert body["node_id"] == "process:host-1:2"
    events = [(e["change"], e["seq"], e["timestamp"], e["node"]["name"]) for e in body["events"]]
    assert events == [
        ("added", added["seq"], added["timestamp"], "worker"),
        ("updated", renamed["seq"], renamed["timestamp"], "worker-2"),
        ("removed", removed["seq"], removed["timestamp"], "worker-2"),
    ]
    window = node_history(client, "process:host-1:2", **{"from": added["timestamp"], "to": renamed["timestamp"]})
    assert [e["change"] for e in window.json()["events"]] == ["updated"]


def test_node_history_of_a_node_never_seen_is_404(client, fleet):
    fleet.post(**processes("nginx"))
    error(node_history(client, "process:host-1:99"), 404, "unknown_node")
    error(node_history(client, "process:host-1:1", **{"from": "then"}), 400, "bad_parameter")


# -- turned off, durable, pruned ------------------------------------------------------------------------------


def test_history_turned_off_answers_404(start_server, tmp_path):
    server = start_server(make_settings(tmp_path, history={"enabled": False}))
    with httpx.Client(base_url=server.url) as client:
        Fleet(client).post(**processes("nginx"))
        now = format_rfc3339(time.time())
        error(client.get(TOPOLOGY, params={"at": now}), 404, "history_unavailable")
        error(client.get(CHANGES, params={"from": now}), 404, "history_unavailable")
        assert not (tmp_path / "history.sqlite").exists()


def test_history_survives_a_graceful_restart(tmp_path, server_process):
    server = server_process("--data-dir", str(tmp_path)).wait_healthy()
    with httpx.Client(base_url=server.url) as client:
        Fleet(client).post(**processes("nginx"))
        first = Fleet(client).post(**processes("nginx", "cron"))
        Fleet(client).post(**processes("nginx"))
    assert server.terminate() == 0

    again = server_process("--data-dir", str(tmp_path)).wait_healthy()
    with httpx.Client(base_url=again.url) as client:
        past = client.get(TOPOLOGY, params={"at": first["timestamp"]}).json()["topology"]
        assert past["nodes"]["process:host-1:2"]["name"] == "cron"
        events = node_history(client, "process:host-1:2").json()["events"]
        assert [e["change"] for e in events] == ["added", "removed"]
        # The restored topology is kept whole at the restart; what did not change there makes no event.
        assert node_history(client, "process:host-1:1").json()["events"] == []


def test_history_survives_sigkill_once_flushed(tmp_path, server_process):
    env = {"ORCHESTRATOR_STORAGE__CHECKPOINT_INTERVAL": "1s"}
    server = server_process("--data-dir", str(tmp_path), env=env).wait_healthy()
    with httpx.Client(base_url=server.url) as client:
        first = Fleet(client).post(**processes("nginx", "cron"))
        Fleet(client).post(**processes("nginx"))
        wait_for(lambda: client.get("/api/v1/query/stats").json()["storage"]["history"]["unflushed_publications"] == 0)
    server.kill()  # SIGKILL: no final flush

    again = server_process("--data-dir", str(tmp_path)).wait_healthy()
    with httpx.Client(base_url=again.url) as client:
        past = client.get(TOPOLOGY, params={"at": first["timestamp"]}).json()["topology"]
        assert set(past["nodes"]) == {"host:host-1", "process:host-1:1", "process:host-1:2"}


def test_retention_prunes_old_history_in_the_cleanup_sweep(start_server, tmp_path):
    settings = make_settings(
        tmp_path, history={"retention": "1s", "keyframe_interval": "1s"}, storage={"cleanup_interval": "50ms"}
    )
    server = start_server(settings)
    with httpx.Client(base_url=server.url) as client:
        fleet = Fleet(client)
        first = fleet.post(**processes("nginx"))
        names = iter(range(1_000_000))

        def pruned() -> bool:
            fleet.post(**processes("nginx", f"job-{next(names)}"))  # history moves on
            response = client.get(TOPOLOGY, params={"at": first["timestamp"]})
            return response.status_code == 404

        wait_for(pruned, timeout=30)
        message = error(client.get(TOPOLOGY, params={"at": first["timestamp"]}), 404, "history_unavailable")
        oldest = message.rsplit(" ", 1)[-1]
        assert parse_rfc3339(oldest) > parse_rfc3339(first["timestamp"])
        assert client.get(TOPOLOGY, params={"at": oldest}).status_code == 200
