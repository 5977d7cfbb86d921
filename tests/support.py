"""Test helpers: settings, report bodies, a real server in a thread or as a child process, polling."""

from __future__ import annotations

import asyncio
import gzip
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
from sanic import Sanic

from orchestrator.contract.times import format_rfc3339
from orchestrator.settings import Settings

Sanic.test_mode = True
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(tmp_path: Path | None = None, **sections) -> Settings:
    """Test settings: fast broadcast, no persistence unless a data dir is given."""
    # Many apps share one test process: GC tuning (freezing what is alive now) belongs to a real server only.
    tree = {
        "server": {"host": "127.0.0.1", "port": 0, "tune_gc": False},
        "websocket": {"broadcast_interval": "50ms"},
        "storage": {"persist": False} if tmp_path is None else {"data_dir": str(tmp_path)},
    }
    for name, values in sections.items():
        tree[name] = {**tree.get(name, {}), **values}
    return Settings.model_validate(tree)


class ServerThread:
    """A real server: the app's own event loop in a thread, a real TCP socket, real shutdown listeners."""

    def __init__(self, app: Sanic, port: int) -> None:
        self.app, self.port = app, port
        self.url = f"http://127.0.0.1:{port}"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server = None

    @property
    def state(self):
        return self.app.ctx.state

    def start(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(15)
        return self

    async def _start(self) -> None:
        self._server = await self.app.create_server(
            host="127.0.0.1", port=self.port, return_asyncio_server=True, access_log=False
        )
        await self._server.startup()
        await self._server.before_start()
        await self._server.after_start()

    def call(self, fn, *args):
        """Run ``fn`` on the server's loop (the state's owner) and return its result."""

        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(15)

    def stop(self) -> None:
        if self._server is None:
            return

        async def stop():
            await self._server.before_stop()
            self._server.close()
            await self._server.wait_closed()
            await self._server.after_stop()

        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        finally:
            self._server = None
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


def report(agent_id="agent-1", hostname=None, ts=None, **sections) -> dict:
    body = {
        "agent_id": agent_id,
        "hostname": hostname or agent_id.replace("agent", "host"),
        "timestamp": format_rfc3339(ts if ts is not None else time.time()),
    }
    body.update(sections)
    return body


def post_report(client: httpx.Client, body: dict, gzipped: bool = False, **headers) -> httpx.Response:
    data = orjson.dumps(body)
    headers = {"Content-Type": "application/json", **headers}
    if gzipped:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    return client.post("/api/v1/reports", content=data, headers=headers)


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll until ``predicate()`` is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class ServerProcess:
    """``python -m orchestrator serve`` as a child process, for signals, exit codes and restarts."""

    def __init__(
        self, *args: str, env: dict | None = None, port: int | None = None, open_files: int | None = None
    ) -> None:
        """``open_files``: the soft and hard limit on descriptors the server runs under (it cannot raise it)."""
        self.port = port or free_port()  # a port of its own, or the one a restarted server had
        self.url = f"http://127.0.0.1:{self.port}"
        self._output: str | None = None
        full_env = {
            **os.environ,
            "ORCHESTRATOR_LOG_FORMAT": "json",
            "ORCHESTRATOR_WEBSOCKET__BROADCAST_INTERVAL": "50ms",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            preexec_fn=None
            if open_files is None
            else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files,) * 2),
        )

    def wait_healthy(self, timeout: float = 60.0, interval: float = 0.1) -> ServerProcess:
        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stdout.read().decode()}")
            try:
                return httpx.get(self.url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout, interval)
        return self

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit while draining the log pipe (a full pipe would block the server)."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        self._output = out.decode()
        return self.proc.returncode

    def output(self) -> str:
        if self._output is None and self.proc.stdout:
            self._output = self.proc.stdout.read().decode()
        return self._output or ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
