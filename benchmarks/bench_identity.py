"""Issue 16 #9, replayed against a real server: one agent rewriting another host, and what it costs to stop it.

Run: ``python -m benchmarks.bench_identity [--tree DIR]`` (``--tree``: serve from another checkout, e.g. an
export of an older commit, to see the attacks succeed there; the attacks need no tokens but the hostname one).

Attacks (each on a fresh server, 127.0.0.1 only), with what a user sees afterwards:

1. ip: an attacker's ``host_info`` claims the victim's address; where does a client's edge to it point?
2. container: an attacker's process claims the victim's container; whose host is the container under?
3. hostname: an attacker posts under the victim's hostname, with tokens bound to each probe's host (403) and
   with unbound tokens (accepted by design: the operator has not said who may speak for the host);
4. future: one report dated now+290 s, then an ordinary one; does the process view follow the second?

Cost: what a bound token's check adds per report, in-process (the identity read from the first 4 KiB of the
JSON, the pattern matches), next to the full parse every report pays. ``--merge [--tree DIR]``: instead, the
merge cost per report of a 100-host fleet (first reports, re-reports) of DIR's engine and of this one (twice,
so the machine's noise shows).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from benchmarks import common
from orchestrator.contract.times import format_rfc3339
from orchestrator.probe.fleet import Fleet

CONTAINER = "c" * 64
START = 180.0  # a loaded 2-core machine can take a while to start a server


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
    # Another of the attacker's agents on its own host, applied after the forged report (arrival order).
    barrier = post(client, report("agent-evil-2", "evil", processes_info={"processes": [{"pid": 1}]}), token)
    if barrier != 202:  # a server that cannot read the token list
        return f"HTTP {status}, then HTTP {barrier} for the attacker's own host"
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


def check_cost(reports: list[bytes]) -> str:
    """What a bound token adds per report, in-process: the identity read from the head of the JSON and the
    pattern checks (the full parse, which every report pays, for scale)."""
    from orchestrator.api.identity import credentials
    from orchestrator.pipeline.decode import parse_report, peek_identity
    from orchestrator.settings import AuthSettings

    auth = AuthSettings.model_validate(
        {"agent_tokens": [{"token": "t", "agent_ids": ["agent-*", "probe-*"], "hostnames": ["host-*", "node-*"]}]}
    )
    binding = credentials(auth)[0].binding
    assert binding is not None
    start = time.perf_counter()
    for raw in reports:
        agent_id, hostname = peek_identity(raw) or ("", "")
        binding.permits_agent(agent_id) and binding.permits_hostname(hostname)
    checked = (time.perf_counter() - start) / len(reports)
    start = time.perf_counter()
    for raw in reports[:20]:
        parse_report(raw, {}, 32)
    parsed = (time.perf_counter() - start) / 20
    size = sum(map(len, reports)) / len(reports) / 1024
    return f"{checked * 1e6:.1f} us per report for the check; the full parse {parsed * 1e3:.2f} ms ({size:.0f} KiB)"


# Run in a child from a checkout's root, so that it measures that checkout's engine (the mergers are the
# installed orchestrator_plugins either way: this work did not change them).
MERGE_COST = """
import sys, time
sys.path.insert(0, ".")
from orchestrator.contract.models import Report
from orchestrator.pipeline.ingest import MergeContext
from orchestrator.probe.fleet import Fleet
from orchestrator.topology import Topology
from orchestrator_plugins import docker_topology, host_topology, network_topology, process_topology
from orchestrator_plugins.cgroup_container_id import container_id_from_cgroup

fleet = Fleet(100, seed=1)
rounds = [[Report.model_validate(fleet.report(h, 1_760_000_000.0 + 15 * r)) for h in range(100)] for r in range(2)]
best = [float("inf"), float("inf")]
for _ in range(5):
    topology, order = Topology(), 0
    for r, reports in enumerate(rounds):
        start = time.process_time()
        for report in reports:
            order += 1
            context = MergeContext(report, order, report.epoch, container_id_from_cgroup, topology)
            for merger in (host_topology, docker_topology, process_topology, network_topology):
                merger.merge_report(report=report, context=context)
        best[r] = min(best[r], time.process_time() - start)
print(f"{best[0] * 10:.2f} ms per first report, {best[1] * 10:.2f} ms per re-report")
"""


def merge_cost(repo: Path) -> str:
    """Applying a 100-host fleet's reports through the four mergers, CPU time per report (min of 5 runs)."""
    done = subprocess.run([sys.executable, "-c", MERGE_COST], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", help="serve from this checkout instead of this one")
    parser.add_argument("--merge", action="store_true", help="only the merge cost, of --tree and of this tree")
    args = parser.parse_args()
    if args.merge:
        for tree in ([Path(args.tree).resolve()] if args.tree else []) + [common.REPO] * 2:
            print(f"| merge cost, {tree} | {merge_cost(tree)} |")
        return
    repo = Path(args.tree).resolve() if args.tree else common.REPO  # where `python -m orchestrator` runs
    bound = '[{"token": "db-token", "hostnames": ["db"]}, {"token": "evil-token", "hostnames": ["evil"]}]'
    print(f"# serving from {repo}; {common.machine()}")
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
        with (
            common.Server(env=env, persist=False, start_timeout=START, repo=repo) as server,
            httpx.Client(base_url=server.url, timeout=30) as client,
        ):
            print(f"| {name} | {run(client)} |")
    if args.tree:
        return  # the check's cost is this tree's
    fleet = Fleet(20, seed=3)
    now = time.time()
    reports = [orjson.dumps(fleet.report(i % 20, now + i // 20)) for i in range(200)]
    print(f"| binding check | {check_cost(reports)} |")


if __name__ == "__main__":
    main()
