"""What the server's RSS is made of at fleet scale: one fresh server per variant, RSS after each stage.

Run: ``python -m benchmarks.bench_rss HOSTS [sat] [NAME=VALUE ...]``. Each ``NAME=VALUE`` is put in the
server's environment (a setting such as ``ORCHESTRATOR_HISTORY__ENABLED=false``, or a glibc tunable such as
``MALLOC_ARENA_MAX=2``), so two runs that differ by one variable say what that part costs. Stages: started;
every host's first report applied; every host's second report applied (the steady state: one generation of
bodies, and what the transient of replacing them left behind); with ``sat``, 16 closed-loop senders for 8 s
and the backlog drained. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from benchmarks.bench_fleet import load_all
from benchmarks.bench_ingest import build_bodies, saturate
from benchmarks.common import Server


def main(hosts: int, saturated: bool, env: dict[str, str]) -> dict:
    bodies = build_bodies(hosts, rounds=3)
    out: dict = {"hosts": hosts, "env": env}
    with Server(env=env) as server:
        out["started_mb"] = round(server.rss_mb())
        for stage, chunk in (("first_reports_mb", bodies[:hosts]), ("second_reports_mb", bodies[hosts : 2 * hosts])):
            asyncio.run(load_all(server.port, chunk, 16))
            server.wait_drained(600)
            time.sleep(3)  # a checkpoint and a history flush in between
            out[stage] = round(server.rss_mb())
        if saturated:
            asyncio.run(saturate(server.port, bodies, 8, 16))
            server.wait_drained(600)
            time.sleep(3)
            out["saturated_mb"] = round(server.rss_mb())
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    variables = dict(arg.split("=", 1) for arg in args[1:] if "=" in arg)
    print(json.dumps(main(int(args[0]), "sat" in args[1:], variables)))
