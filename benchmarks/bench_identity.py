"""Issue 16 #9, replayed against a real server: one agent rewriting another host, and what it costs to stop it.

Run: ``python -m benchmarks.bench_identity [--tree DIR]`` (``--tree``: serve from another checkout, e.g. an
export of an older commit, to see the attacks succeed there; the attacks need no tokens but the hostname one).

Attacks (each on a fresh server, 127.0.0.1 only), with what a user sees afterwards:

1. ip: an attacker's ``host_info`` claims the victim's address; where does a client's edge to it point?
2. container: an attacker's process claims the victim's container; whose host is the container under?
3. hostname: an attacker posts under the victim's hostname, with tokens bound to each probe's host (403) and
   with unbound tokens (accepted by design: the operator has not said who may speak for the host);
4. future: one report dated now+290 s, then an ordinary one; does the process view follow the second?

Cost: the server CPU per report for 200 reports of a 20-host fleet with unbound and with bound tokens (the
binding check reads the report's first 4 KiB before it is parsed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
import orjson

from benchmarks import common
from orchestrator.contract.times import format_rfc3339
from orchestrator.probe.fleet import Fleet

CONTAINER = "c" * 64


def post(client: httpx.Client, body: dict, token: str | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return client.post("/api/v1/reports", content=orjson.dumps(body), headers=headers).status_code


def report(agent: str, host: str, ts: float | None = None, **sections) -> dict:
    return {"agent_id": agent, "hostname": host, "timestamp": format_rfc3339(ts or time.time()), **sections}


def settle(client: httpx.Client, node: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        view = client.get("/api/v1/query/topology", headers={}).json()["topology"]
        if node in view["nodes"]:
            return view
        time.sleep(0.05)
    raise RuntimeError(f"{node} never appeared")


def victim() -> dict:
    listen = {"pid": 5432, "local_ip": "0.0.0.0", "local_port": 5432, "state": "LISTEN"}
    return report(
        "agent-db",
        "db",
        host_info={"os": "linux", "ip_addresses": ["10.0.0.6"]},
        docker_info={"containers": [{"id": CONTAINER, "name": "pg"}]},
        processes_info={"processes": [{"pid": 5432, "name": "postgres", "container_id": CONTAINER}]},
        network_info={"connections": [listen]},
    )


def app_client() -> dict:
    conn = {"pid": 5120, "local_ip": "10.0.0.5", "local_port": 43512, "remote_ip": "10.0.0.6", "remote_port": 5432}
    return report(
        "agent-app",
        "app",
        host_info={"ip_addresses": ["10.0.0.5"]},
        processes_info={"processes": [{"pid": 5120, "name": "api"}]},
        network_info={"connections": [{**conn, "state": "ESTABLISHED"}]},
    )


def attack_ip(client: httpx.Client) -> str:
    post(client, victim())
    post(client, app_client())
    post(client, report("agent-evil", "evil", host_info={"ip_addresses": ["10.0.0.6"]}))
    post(client, report("agent-evil", "evil", processes_info={"processes": [{"pid": 1}]}))
    view = settle(client, "process:evil:1")
    targets = [e["target"] for e in view["edges"].values() if e["source"] == "process:app:5120"]
    return f"client's edge -> {targets}"


def attack_container(client: httpx.Client) -> str:
    post(client, victim())
    fake = {"processes": [{"pid": 666, "name": "evil", "container_id": CONTAINER}]}
    post(client, report("agent-evil", "evil", processes_info=fake))
    node = settle(client, "process:evil:666")["nodes"][f"container:{CONTAINER}"]
    return f"container under {node['parent']} (host {node['host']})"


def attack_hostname(client: httpx.Client, token: str | None) -> str:
    post(client, victim(), "db-token" if token else None)
    forged = report("agent-evil", "db", host_info={"os": "forged"}, processes_info={"processes": [{"pid": 666}]})
    status = post(client, forged, token)
    post(client, report("agent-evil", "evil", processes_info={"processes": [{"pid": 1}]}), token)
    view = settle(client, "process:evil:1")
    return f"HTTP {status}; db os={view['nodes']['host:db']['metadata'].get('os')}, injected process: " + str(
        "process:db:666" in view["nodes"]
    )


def attack_future(client: httpx.Client) -> str:
    post(client, report("agent-db", "db", time.time() + 290, processes_info={"processes": [{"pid": 1}]}))
    settle(client, "process:db:1")
    post(client, report("agent-db", "db", processes_info={"processes": [{"pid": 2}]}))
    post(client, report("agent-x", "x", processes_info={"processes": [{"pid": 9}]}))
    view = settle(client, "process:x:9")
    return "view follows the next report" if "process:db:2" in view["nodes"] else "view frozen on the future report"


def cost(env: dict, token: str | None, reports: list[dict]) -> float:
    with common.Server(env=env, persist=False) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        before = server.cpu_seconds()
        for body in reports:
            post(client, body, token)
        server.wait_drained()
        return (server.cpu_seconds() - before) / len(reports) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", help="serve from this checkout instead of this one")
    args = parser.parse_args()
    if args.tree:
        common.REPO = Path(args.tree).resolve()  # the server child runs `python -m orchestrator` from there
    bound = '[{"token": "db-token", "hostnames": ["db"]}, {"token": "evil-token", "hostnames": ["evil"]}]'
    print(f"# serving from {common.REPO}; {common.machine()}")
    for name, run, env in (
        ("ip", attack_ip, {}),
        ("container", attack_container, {}),
        (
            "hostname, bound tokens",
            lambda c: attack_hostname(c, "evil-token"),
            {"ORCHESTRATOR_AUTH__AGENT_TOKENS": bound},
        ),
        ("hostname, no tokens", lambda c: attack_hostname(c, None), {}),
        ("future", attack_future, {}),
    ):
        with common.Server(env=env, persist=False) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            print(f"| {name} | {run(client)} |")
    fleet = Fleet(20, seed=3)
    now = time.time()
    reports = [fleet.report(i % 20, now + i // 20) for i in range(200)]
    plain = cost({"ORCHESTRATOR_AUTH__AGENT_TOKENS": "t"}, "t", reports)
    patterns = '[{"token": "t", "agent_ids": ["*"], "hostnames": ["*"]}]'
    bound_cost = cost({"ORCHESTRATOR_AUTH__AGENT_TOKENS": patterns}, "t", reports)
    print(f"| server CPU per report (20-host fleet, 200 reports) | unbound {plain:.2f} ms, bound {bound_cost:.2f} ms |")


if __name__ == "__main__":
    main()
