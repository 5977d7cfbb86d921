"""What every benchmark needs: a real server as a child process on loopback, its CPU and memory, percentiles."""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def last_byte_ms(url: str, path: str, gzip: bool = True) -> tuple[float, int]:
    """A GET timed to the last byte of its answer, which is not decoded (a browser's or curl's view of the
    server; httpx's own parsing and gunzip of a 25 MB body take 60-100 ms on this machine, more than the
    server's answer). ``Connection: close``: the answer ends with the connection. Milliseconds and bytes
    received (headers included)."""
    host, _, port = url.removeprefix("http://").partition(":")
    encoding = "gzip" if gzip else "identity"
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: {encoding}\r\nConnection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=300) as sock:
        started = time.perf_counter()
        sock.sendall(request.encode())
        received = 0
        first = b""
        while data := sock.recv(1 << 20):
            if not first:
                first = data
            received += len(data)
        elapsed = time.perf_counter() - started
    if not first.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET {path}: {first[:200]!r}")
    return elapsed * 1000, received


class Server:
    """``python -m orchestrator serve`` on 127.0.0.1 with its own data dir; stopped (SIGTERM) on exit."""

    def __init__(
        self,
        env: dict | None = None,
        persist: bool = True,
        data_dir: str | None = None,
        start_timeout: float = 30,
        repo: Path = REPO,
        open_files: int | None = None,
        stderr: Path | None = None,
    ) -> None:
        """``repo``: the checkout whose server runs (to compare two on one machine), with its own
        ``.venv/bin/python`` when it has one; ``open_files``: the soft and hard descriptor limit it runs under
        (so it cannot raise it); ``stderr``: a file for the server's log lines (else discarded)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A given data dir outlives the server (a restart restores from it); otherwise a temporary one.
        self._dir = tempfile.TemporaryDirectory(prefix="orch-bench-") if data_dir is None else None
        self.data_dir = data_dir or self._dir.name
        self.started = time.monotonic()
        full_env = {
            **os.environ,
            "ORCHESTRATOR_LOG_LEVEL": "warning",
            "ORCHESTRATOR_STORAGE__PERSIST": "true" if persist else "false",
            **(env or {}),
        }
        own_python = repo / ".venv" / "bin" / "python"
        self._log = open(stderr, "ab") if stderr is not None else None  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                str(own_python) if repo != REPO and own_python.exists() else sys.executable,
                "-m",
                "orchestrator",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                self.data_dir,
            ],
            env=full_env,
            cwd=repo,
            stdout=subprocess.DEVNULL,
            stderr=self._log or subprocess.DEVNULL,
            preexec_fn=None
            if open_files is None
            else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files,) * 2),
        )
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.1)
        self.ready_s = time.monotonic() - self.started  # process start to the first healthy answer

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stats(self) -> dict:
        return httpx.get(self.url + "/api/v1/query/stats", timeout=30).json()

    def histogram(self, name: str) -> dict[float, float]:
        """A Prometheus histogram's cumulative buckets, ``{upper bound: count}``."""
        buckets = {}
        for line in httpx.get(self.url + "/metrics", timeout=30).text.splitlines():
            if line.startswith(name + "_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                buckets[float(le)] = float(line.rsplit(" ", 1)[1])
        return buckets

    def wait_drained(self, timeout: float = 120) -> float:
        """Seconds until the ingest backlog (queued and in-flight reports) is empty."""
        start = time.monotonic()
        while httpx.get(self.url + "/health", timeout=30).json()["ingest_queue"] > 0:
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"ingest backlog not drained after {timeout:.0f} s")
            time.sleep(0.05)
        return time.monotonic() - start

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self._log is not None:
            self._log.close()
        if self._dir is not None:
            self._dir.cleanup()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` of what a histogram observed between two reads."""
    counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = counts[float("inf")]
    for le, count in counts.items():
        if total and count >= q / 100 * total:
            return le
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def machine() -> str:
    cpu = next(
        (
            l.split(":", 1)[1].strip()
            for l in Path("/proc/cpuinfo").read_text().splitlines()
            if l.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem / 1024 / 1024:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


async def with_stall_probe(coro) -> tuple[object, float, float]:
    """Run ``coro`` while a ticker task measures the longest gap between its turns on the loop (the longest
    stretch anything held the loop meanwhile, the last one included). Returns the result, the wall time and
    the longest stall."""
    longest = 0.0

    async def ticker():
        nonlocal longest
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = time.perf_counter()
    result = await coro
    elapsed = time.perf_counter() - start
    for _ in range(2):  # the ticker's turn after the last stretch
        await asyncio.sleep(0)
    ticking.cancel()
    return result, elapsed, longest
