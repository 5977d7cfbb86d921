"""Memory a client can make the server keep: per agent (7), port lists and host= snapshots (10)."""

from __future__ import annotations

import asyncio
import tempfile
import time

import httpx
import orjson

from benchmarks.hostile import (
    Options,
    Row,
    agent_ids,
    attack,
    gather_bounded,
    mb,
    post,
    post_many,
    report,
    restamp,
    timed,
    tiny_reports,
    topology,
    wait_until,
)

# -- 7: memory per agent -------------------------------------------------------------------------------------------


@attack("agents", "7")
def attack_agents(opts: Options) -> list[Row]:
    agents = opts.n(20_000)
    data_dir = tempfile.mkdtemp(prefix="bench-hostile-agents-")
    with opts.server(data_dir=data_dir) as server:
        rss0 = server.rss_mb()
        statuses = post_many(server.url, tiny_reports(agents))
        server.wait_drained(300)
        rss1 = server.rss_mb()
        _, stats_ms = timed(lambda: httpx.get(server.url + "/api/v1/query/stats", timeout=120))
        keys = {f"key-{i}": i for i in range(600_000)}
        registered = httpx.post(
            server.url + "/api/v1/agents/register",
            json={"agent_id": "agent-keys", "hostname": "host-keys", "metadata": keys},
            timeout=300,
        )
        time.sleep(1)
        rss2 = server.rss_mb()
    started = time.monotonic()
    with opts.server(data_dir=data_dir) as again:
        restart = time.monotonic() - started
        kept = len(agent_ids(again.url))
    return [
        Row(
            f"{agents:,} agents with tiny reports ({dict(statuses)}): server RSS per agent",
            "24.6 KB (2.46 GB for 100k; a 21 KB time series preallocated each)",
            f"{(rss1 - rss0) * 1e3 / agents:.1f} KB ({mb(rss0)} → {mb(rss1)})",
            "`agents.max_agents` (100,000; a new one beyond: 429)",
        ),
        Row("… /stats at that size (under load)", "0.3 s at 100k", f"{stats_ms:.0f} ms"),
        Row(
            "… restart on that data dir until healthy (under load)",
            "9.5 s at 100k",
            f"{restart:.1f} s ({kept:,} agents back)",
        ),
        Row(
            "one registration with 600k metadata keys",
            "accepted, 91 MB kept for good",
            f"HTTP {registered.status_code}, RSS {rss2 - rss1:+.0f} MB",
            "`server.max_registration_size` (64 KiB)",
        ),
    ]


# -- 10: caches a client can grow ----------------------------------------------------------------------------------


def port_report(agent: str, ports: range) -> bytes:
    connections = [
        {
            "pid": 1,
            "local_ip": "10.0.0.1",
            "local_port": 40000 + i % 20000,
            "remote_ip": "203.0.113.7",
            "remote_port": p,
            "state": "ESTABLISHED",
        }
        for i, p in enumerate(ports)
    ]
    body = report(
        agent,
        "host-p",
        processes_info={"processes": [{"pid": 1, "name": "client"}]},
        network_info={"connections": connections},
    )
    return orjson.dumps(body)


@attack("caches", "10")
def attack_caches(opts: Options) -> list[Row]:
    reports, ports, snapshots = opts.n(100), 600, opts.n(30_000)
    env = {"ORCHESTRATOR_AGENTS__STALE_THRESHOLD": "2s", "ORCHESTRATOR_STORAGE__CLEANUP_INTERVAL": "500ms"}
    grown = []
    with opts.server(env, persist=False) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        rss0 = server.rss_mb()
        for round_ in range(2):  # a second round reuses what the first gave back; unpruned it grows again
            for step in range(reports):
                first = 1 + (round_ * reports + step) * ports % 64_000
                post(client, restamp(port_report(f"agent-p{round_}", range(first, first + ports)), time.time()))
            server.wait_drained(120)
            wait_until(lambda: not topology(server.url)["nodes"], 60, 0.5)
            grown.append(server.rss_mb() - rss0)
    with opts.server(persist=False) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            post(client, report("agent-s", processes_info={"processes": [{"pid": 1}]}))
        server.wait_drained(60)

        async def ask(hosts: range) -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                for k in hosts:
                    await client.get("/api/v1/query/topology", params={"host": f"nohost-{k}"})

        growth, base, half = [], server.rss_mb(), snapshots // 2
        for start in (0, half):
            asyncio.run(gather_bounded((ask(range(start + i, start + half, 8)) for i in range(8)), 8))
            growth.append(server.rss_mb() - base)
    return [
        Row(
            f"{reports} reports of {ports} other server ports each, then the agent stale and removed, twice: server RSS kept",
            "57 MiB with no nodes (growing per report)",
            f"after round 1 {grown[0]:+.1f} MB, after round 2 {grown[1]:+.1f} MB (RSS is not given back to the OS; "
            "round 2 reusing it means nothing is kept)",
            "port lists of gone edges pruned",
        ),
        Row(
            f"{snapshots:,} distinct `host=` snapshot requests on an idle server: RSS growth",
            "+141 MB for 30k",
            f"after {snapshots // 2:,} {growth[0]:+.1f} MB, after {snapshots:,} {growth[1]:+.1f} MB",
            "at most 64 `host=` snapshots cached per seq",
        ),
    ]
