"""A pinger in its own process: ``GET /api/v1/ping`` every ``interval`` seconds for ``seconds``, then the
latencies (seconds) as one JSON list on stdout.

Benchmarks that read big views run their readers in one event loop; a ping sent from that loop waits for the
loop as well as for the server (a 100 MB body being received and decompressed holds it), so its latency says
more about the load generator than about the server. Run apart, it measures the server.

    python -m benchmarks.pinger http://127.0.0.1:PORT SECONDS [INTERVAL]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx


def ping(url: str, seconds: float, interval: float = 0.02) -> list[float]:
    latencies = []
    deadline = time.perf_counter() + seconds
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            client.get("/api/v1/ping").raise_for_status()
            latencies.append(time.perf_counter() - started)
            time.sleep(interval)
    return latencies


def start(url: str, seconds: float, interval: float = 0.02) -> subprocess.Popen:
    """The pinger as a child process; :func:`collect` its latencies once it ends."""
    command = [sys.executable, "-m", "benchmarks.pinger", url, str(seconds), str(interval)]
    return subprocess.Popen(command, stdout=subprocess.PIPE)


def collect(process: subprocess.Popen) -> list[float]:
    out, _ = process.communicate(timeout=600)
    return json.loads(out)


if __name__ == "__main__":
    print(json.dumps(ping(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.02)))
