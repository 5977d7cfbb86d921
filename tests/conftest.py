"""Fixtures: a fresh app per test, and a real server on a real socket (in a thread, or a subprocess)."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import settings as hypothesis_settings

from orchestrator.app import create_app
from orchestrator.settings import Settings
from tests.support import ServerProcess, ServerThread, free_port, make_settings

# No per-example deadline: hypothesis's 200 ms deadline is a timing assertion, and on the loaded 2-core
# machine one example of an IP-pattern test took 303 ms and failed the suite (tests check correctness).
hypothesis_settings.register_profile("orchestrator", deadline=None)
hypothesis_settings.load_profile("orchestrator")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return make_settings()


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def start_server():
    """``start_server(settings=None, extra_plugins=())`` → a running :class:`ServerThread`."""
    started = []

    def start(settings: Settings | None = None, extra_plugins=()):
        app = create_app(settings or make_settings(), extra_plugins=extra_plugins)
        server = ServerThread(app, free_port()).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server):
    return start_server()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
def server_process():
    procs = []

    def start(*args: str, env: dict | None = None, port: int | None = None, **options) -> ServerProcess:
        proc = ServerProcess(*args, env=env, port=port, **options)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


@pytest.fixture(autouse=True, scope="session")
def quiet_logs():
    # Tests read log events with structlog.testing.capture_logs; the console stays for failures only.
    from orchestrator.runtime.logs import configure_logging

    configure_logging("warning", "console")
