"""Who may say what: one agent rewriting another host (9), and the Low items (names, logs, secrets, tokens)."""

from __future__ import annotations

import contextlib
import json
import time
import unicodedata

import httpx
import orjson
from websockets.sync.client import connect as ws_connect

from benchmarks.bench_identity import CONTAINER, app_client, victim
from benchmarks.hostile import (
    Options,
    Row,
    attack,
    post,
    report,
    settled,
    topology,
    view_when,
)

# -- 9: one agent rewriting another host ------------------------------------------------------------------------------


def identity_attacks(url: str, token: str | None) -> dict[str, str]:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    victim_auth = {"Authorization": "Bearer db-token"} if token else {}
    found = {}
    evil_in_container = {"pid": 66, "name": "x", "container_id": CONTAINER}
    injected = {"processes": [{"pid": 666}]}
    with httpx.Client(base_url=url, timeout=30) as client:
        if post(client, victim(), **victim_auth).status_code == 401:
            return {}  # the server read the bound tokens as plain strings: nobody's token matches
        post(client, app_client(), **({"Authorization": "Bearer app-token"} if token else {}))
        settled(url, "process:app:5120")
        claims = (  # each from an agent of its own, so a later report of one does not replace another's claim
            ("ip", report("agent-evil-ip", "evil", host_info={"ip_addresses": ["10.0.0.6"]})),
            ("container", report("agent-evil-ct", "evil", processes_info={"processes": [evil_in_container]})),
            ("hostname", report("agent-evil-host", "db", host_info={"os": "forged"}, processes_info=injected)),
        )
        for name, body in claims:
            found[name + " status"] = str(post(client, body, **auth).status_code)
        post(client, report("agent-x", "x", processes_info={"processes": [{"pid": 1}]}), **auth)
        nodes = settled(url, "process:x:1")["nodes"]
        container = nodes.get(f"container:{CONTAINER}", {})
        found["container"] = f"under {container.get('parent')} (host {container.get('host')})"
        found["hostname"] = f"db os={nodes.get('host:db', {}).get('metadata', {}).get('os')}, process:db:666 " + (
            "injected" if "process:db:666" in nodes else "absent"
        )
        # The owners report again, as probes do every interval: the client's connection is resolved anew.
        post(client, victim(), **victim_auth)
        post(client, app_client(), **({"Authorization": "Bearer app-token"} if token else {}))
        post(client, report("agent-x", "x", processes_info={"processes": [{"pid": 2}]}), **auth)
        edges = settled(url, "process:x:2")["edges"].values()
        found["ip"] = ", ".join(e["target"] for e in edges if e["source"] == "process:app:5120") or "no edge"
        post(
            client,
            report("agent-db", "db", time.time() + 290, processes_info={"processes": [{"pid": 7001}]}),
            **victim_auth,
        )
        settled(url, "process:db:7001")
        post(client, report("agent-db", "db", processes_info={"processes": [{"pid": 7002}]}), **victim_auth)
        post(client, report("agent-x", "x", ts=time.time() + 1, processes_info={"processes": [{"pid": 9}]}), **auth)
        nodes = settled(url, "process:x:9")["nodes"]
        found["future"] = (
            "the view follows the next report" if "process:db:7002" in nodes else "the view stays on the future report"
        )
    return found


@attack("identity", "9")
def attack_identity(opts: Options) -> list[Row]:
    with opts.server(persist=False) as server:
        open_ = identity_attacks(server.url, None)
    bound = json.dumps(
        [
            {"token": "db-token", "hostnames": ["db"]},
            {"token": "app-token", "hostnames": ["app"]},
            {"token": "evil-token", "agent_ids": ["agent-evil*", "agent-x"], "hostnames": ["evil", "x"]},
        ]
    )
    try:
        with opts.server({"ORCHESTRATOR_AUTH__AGENT_TOKENS": bound}, persist=False) as server:
            tied = identity_attacks(server.url, "evil-token")
    except RuntimeError:
        tied = {}  # a server that does not know bindings may refuse the setting
    unbound = "no tokens: "
    rows = [
        Row(
            "an attacker's `host_info` claims the victim's IP: the client's edge to the victim points at",
            "`external:`",
            unbound + open_["ip"],
            "the established owner keeps the address",
        ),
        Row(
            "an attacker's process claims the victim's `container_id`: the container is",
            "moved under the attacker's host",
            unbound + open_["container"],
            "the host whose `docker_info` places it keeps it",
        ),
        Row(
            "an attacker posts under the victim's hostname",
            "`os` set, a process injected",
            unbound + f"HTTP {open_['hostname status']}, {open_['hostname']}",
            "by design without bindings",
        ),
        Row(
            "one report dated now+290 s, then an ordinary one",
            "the process view frozen for 5 minutes",
            open_["future"],
            "",
        ),
    ]
    if not tied:
        rows.append(
            Row(
                "the hostname claim with tokens bound to hosts",
                "(no bindings)",
                "no bindings on this tree (the JSON list is not a binding: every token 401)",
                "",
            )
        )
    else:
        rows.append(
            Row(
                "the hostname claim with tokens bound to hosts",
                "accepted",
                f"HTTP {tied['hostname status']}, {tied['hostname']}",
                "`auth.agent_tokens` bound to `hostnames` → 403",
            )
        )
    return rows


# -- Low -------------------------------------------------------------------------------------------------------------


def colliding_edges(url: str) -> str:
    """Two different host-to-host connections whose ``src->dst`` ids were one string unescaped."""
    hosts = (("a", "10.7.0.1"), ("b->host:c", "10.7.0.2"), ("a->host:b", "10.7.0.3"), ("c", "10.7.0.4"))
    with httpx.Client(base_url=url, timeout=30) as client:
        for k, (name, ip) in enumerate(hosts):
            target = hosts[k + 1][1] if k % 2 == 0 else None
            connections = [{"pid": 1, "local_ip": ip, "local_port": 80, "state": "LISTEN"}]
            if target:
                connections.append(
                    {
                        "pid": 1,
                        "local_ip": ip,
                        "local_port": 40000,
                        "remote_ip": target,
                        "remote_port": 80,
                        "state": "ESTABLISHED",
                    }
                )
            post(
                client,
                report(
                    f"agent-e{k}",
                    name,
                    host_info={"ip_addresses": [ip]},
                    processes_info={"processes": [{"pid": 1}]},
                    network_info={"connections": connections},
                ),
            )
    ends = {("host:a", "host:b->host:c"), ("host:a->host:b", "host:c")}
    view_when(url, lambda view: len(view["nodes"]) >= 4, level="host")
    time.sleep(1.5)
    view = topology(url, level="host")
    edges = [
        (edge_id, e["source"], e["target"])
        for edge_id, e in view["edges"].items()
        if (e["source"], e["target"]) in ends
    ]
    return f"{len(edges)} edge(s) for the 2 connections, {len({e[0] for e in edges})} distinct id(s)"


def hostnames(url: str) -> str:
    with httpx.Client(base_url=url, timeout=30) as client:
        nul = post(client, report("agent-n1", "nul\x00host")).status_code
        newline = post(client, report("agent-n2", "evil\nhost")).status_code
        for k, form in enumerate(("NFD", "NFC")):
            post(client, report(f"agent-f{k}", unicodedata.normalize(form, "café"), host_info={"os": "linux"}))
    time.sleep(1.5)
    names = {
        a["hostname"]
        for a in httpx.get(url + "/api/v1/agents/list", timeout=30).json()["agents"]
        if a["agent_id"].startswith("agent-f")
    }
    return f"NUL {nul}, newline {newline}; NFD + NFC café: {len(names)} host name(s)"


@attack("low", "Low")
def attack_low(opts: Options) -> list[Row]:
    log = opts.logs / "low.log"
    secret = "s3cret-plugin-value"
    config = opts.logs / "low.json"  # plugin settings come from a file (the environment takes no mappings)
    config.write_text(json.dumps({"pipeline": {"plugins": {"kubernetes_info": {"settings": {"api_token": secret}}}}}))
    env = {"ORCHESTRATOR_LOGGING__FORMAT": "json", "ORCHESTRATOR_LOG_LEVEL": "info", "ORCHESTRATOR_CONFIG": str(config)}
    bad = opts.n(1_000)
    with opts.server(env, persist=False, stderr=log) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        edges = colliding_edges(server.url)
        names = hostnames(server.url)
        lines_before = len(log.read_text(errors="replace").splitlines())
        for _ in range(bad):
            post(client, b"{not json")
        long_id = client.get("/api/v1/query/stats", headers={"X-Request-Id": "r" * 100_000})
        stats = client.get("/api/v1/query/stats").text
        time.sleep(1)
        lines = log.read_text(errors="replace").splitlines()[lines_before:]
    echoed = len(long_id.headers.get("X-Request-Id", ""))
    longest = max((len(line) for line in lines), default=0)
    with opts.server(
        {"ORCHESTRATOR_AUTH__READ_TOKENS": "rt", "ORCHESTRATOR_AUTH__AGENT_TOKENS": "at"}, persist=False
    ) as server:
        query = httpx.get(server.url + "/api/v1/query/stats", params={"token": "rt"}, timeout=30).status_code
        header = httpx.get(
            server.url + "/api/v1/query/stats", headers={"Authorization": "Bearer rt"}, timeout=30
        ).status_code
        ws_token = "refused"
        with contextlib.suppress(Exception), ws_connect(f"ws://127.0.0.1:{server.port}/api/v1/ws?token=rt") as ws:
            ws_token = orjson.loads(ws.recv(timeout=30))["type"]
    return [
        Row(
            "edge ids `src->dst` with hosts named `b->host:c` and `a->host:b`",
            "two different connections became one edge",
            edges,
            "`%`, `>` and `/` percent-encoded in edge ids",
        ),
        Row(
            "hostnames with NUL / newline; NFC and NFD spellings",
            "accepted; look-alike hosts",
            names,
            "422 for control characters; NFC",
        ),
        Row(
            f"{bad:,} malformed report bodies: log lines",
            "one info line each, no sampling",
            f"{len(lines):,} lines (JSON logs at info)",
            "bad-request log sampling (finding 7's work)",
        ),
        Row(
            "an `X-Request-Id` of 100,000 characters",
            "logged whole",
            f"echoed {echoed:,} chars; longest log line {longest:,} chars",
            "X-Request-Id bounded to 128 visible ASCII",
        ),
        Row(
            "a plugin setting named `api_token` in /stats",
            "shown as given",
            "redacted" if secret not in stats else "shown in clear",
            "secret-looking plugin settings redacted",
        ),
        Row(
            "`?token=<read token>` on REST (/api/v1/query/stats)",
            "accepted",
            f"HTTP {query} (Bearer header: {header}; ?token= on the WebSocket: {ws_token})",
            "?token= only on the WebSocket",
        ),
    ]
