"""A pinger in its own process: ``GET /api/v1/ping`` every ``interval`` seconds for ``seconds``, then the
latencies (seconds) as one JSON list on stdout.

Benchmarks that read big views run their readers in one event loop; a ping sent from that loop waits for the
loop as well as for the server (a 100 MB body being received and decompressed holds it), so its latency says
more about the load generator than about the server. Run apart, it measures the server.

    python -m benchmarks.pinger http://127.0.0.1:PORT SECONDS [INTERVAL]

``SECONDS`` may be ``until-eof``: it pings until its stdin is closed (:func:`start_open`, :func:`stop`), for a
window whose length the caller only knows at its end. A pinger thread in the caller's process would share
its interpreter lock: a client encoding an 8 MiB JSON body stalled it for the whole encoding.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx


def ping(url: str, seconds: float, interval: float = 0.02, until: threading.Event | None = None) -> list[float]:
    latencies = []
    deadline = time.perf_counter() + seconds
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.perf_counter() < deadline and not (until is not None and until.is_set()):
            started = time.perf_counter()
            try:
                client.get("/api/v1/ping").raise_for_status()
            except httpx.HTTPError:
                if until is None:
                    raise
                # an open-ended window's attack may make a ping fail: it counts with the time it took
            latencies.append(time.perf_counter() - started)
            time.sleep(interval)
    return latencies


def start(url: str, seconds: float, interval: float = 0.02) -> subprocess.Popen:
    """The pinger as a child process; :func:`collect` its latencies once it ends."""
    command = [sys.executable, "-m", "benchmarks.pinger", url, str(seconds), str(interval)]
    return subprocess.Popen(command, stdout=subprocess.PIPE)


def start_open(url: str, interval: float = 0.02) -> subprocess.Popen:
    """The pinger as a child process that pings until :func:`stop`."""
    command = [sys.executable, "-m", "benchmarks.pinger", url, "until-eof", str(interval)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def collect(process: subprocess.Popen) -> list[float]:
    out, _ = process.communicate(timeout=600)
    return json.loads(out)


def stop(process: subprocess.Popen) -> list[float]:
    """End a :func:`start_open` pinger; its latencies."""
    return collect(process)  # communicate() closes its stdin: it finishes the ping in flight and answers


def _main(url: str, seconds: str, interval: float) -> list[float]:
    if seconds != "until-eof":
        return ping(url, float(seconds), interval)
    closed = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.buffer.read()
        closed.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    return ping(url, float("inf"), interval, until=closed)


if __name__ == "__main__":
    print(json.dumps(_main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.02)))
