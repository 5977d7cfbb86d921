"""The server's life: Sanic configured from the settings, start-up (restore), background tasks, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time

import structlog
from sanic import Sanic

from orchestrator.api.protocol import GuardedProtocol
from orchestrator.pipeline.host import plugin_names
from orchestrator.runtime.collector import freeze_long_lived, restoring, tune_for_long_lived_heap
from orchestrator.runtime.limits import raise_open_files_limit
from orchestrator.runtime.metrics import watch_loop_lag
from orchestrator.runtime.readiness import RESTORING, STARTING
from orchestrator.settings import Settings
from orchestrator.state import State
from orchestrator.state.cleanup import run_cleanup
from orchestrator.state.history import open_history
from orchestrator.state.persistence import StorageUnavailable, Store

log = structlog.get_logger("orchestrator.runtime.lifecycle")


class Orchestrator(Sanic):
    """Sanic, with every connection bounded (``api/protocol.py``: whole-request deadline, connection cap,
    body budget) and WebSockets that can negotiate permessage-deflate (``api/ws_deflate.py``), however the
    server is started. (Stop signals are not Sanic's business here: see ``runtime/signals.py``.)"""

    def prepare(self, *args, protocol=None, **kwargs):
        return super().prepare(*args, protocol=protocol or GuardedProtocol, **kwargs)

    async def create_server(self, *args, protocol=None, **kwargs):
        return await super().create_server(*args, protocol=protocol or GuardedProtocol, **kwargs)


def setup_lifecycle(app: Sanic) -> None:
    """Register start-up, background work and shutdown on ``app``."""
    app.register_listener(_start_up, "before_server_start")
    app.register_listener(_start_background, "after_server_start")
    app.register_listener(_begin_shutdown, "before_server_stop")
    app.register_listener(_finish_shutdown, "after_server_stop")


def clustered(settings: Settings) -> bool:
    """Cluster mode: the state follows the log on NATS JetStream."""
    return settings.cluster.nats_url is not None


def configure_sanic(app: Sanic, settings: Settings) -> None:
    server, ws = settings.server, settings.websocket
    app.config.update(
        {
            "REQUEST_MAX_SIZE": server.max_body_size,
            "REQUEST_TIMEOUT": server.request_timeout,
            "RESPONSE_TIMEOUT": server.response_timeout,
            "KEEP_ALIVE_TIMEOUT": server.keep_alive_timeout,
            "GRACEFUL_SHUTDOWN_TIMEOUT": server.graceful_timeout,
            # The protocol cap sits above the contract's limit so an oversized message reaches the handler
            # and gets an `error` message (the connection stays) instead of a 1009 close.
            "WEBSOCKET_MAX_SIZE": max(4 * ws.max_message_size, 1024 * 1024),
            "WEBSOCKET_PING_INTERVAL": ws.ping_interval,
            "WEBSOCKET_PING_TIMEOUT": ws.ping_timeout,
            "WEBSOCKET_COMPRESSION": ws.compression,
            "ACCESS_LOG": False,
            "NOISY_EXCEPTIONS": False,
            "MOTD": False,
            "FALLBACK_ERROR_FORMAT": "json",
            "AUTO_EXTEND": False,
            "TOUCHUP": False,
        }
    )


def open_storage(state: State) -> None:
    """Open the data dir, restore it into ``state`` and reserve the next block of ``seq`` on disk.

    :raises StorageUnavailable: the data dir cannot be created, opened or written (full, read-only, no
        permission); the message is one line for the operator.
    """
    data_dir = state.settings.storage.data_dir
    state.not_ready[RESTORING] = "restoring the saved state"
    try:
        if state.settings.history.enabled and state.history is None:
            open_history(state)  # before the restore publishes: that publication is kept too
        store, problem = Store.open(data_dir, state.settings.storage.max_file_size)
        state.store = store
        if problem:
            log.error("data_file_set_aside", problem=problem, data_dir=data_dir)
        with restoring(freeze=state.settings.server.tune_gc):
            store.restore(state)
    except (OSError, sqlite3.Error) as exc:
        if state.store is not None:
            state.store.conn.close()
            state.store = None
        raise StorageUnavailable(f"data dir {data_dir} cannot be written: {exc}") from exc
    del state.not_ready[RESTORING]
    state.metrics.storage_available.set(1)


async def _start_up(app: Sanic) -> None:
    state: State = app.ctx.state
    settings = state.settings
    soft, _hard = raise_open_files_limit()
    app.ctx.connections.fit_to_descriptors(soft)
    no_store = not settings.storage.persist or clustered(settings)  # a replica's data dir holds its snapshot
    if settings.history.enabled and state.history is None and no_store:
        open_history(state)  # in a temporary file (with persistence, open_storage opens it before the restore)
    if no_store:
        state.metrics.storage_available.set(1)
    elif state.store is None:  # the CLI opens it before Sanic starts, to exit with one line when it can't
        open_storage(state)
    if not (settings.auth.agent_tokens and settings.auth.read_tokens) and settings.server.host not in (
        "127.0.0.1",
        "localhost",
        "::1",
    ):
        log.warning(
            "auth_disabled",
            host=settings.server.host,
            message="no tokens configured: anyone who can reach this address can post and read",
        )
    for setting in settings.deprecated():
        log.warning("deprecated_setting", setting=setting, message="accepted but ignored; see the README")
    log.info(
        "server_starting",
        host=settings.server.host,
        port=settings.server.port,
        agents=len(state.registry),
        plugins=plugin_names(state.plugins),
    )


async def _start_background(app: Sanic) -> None:
    state: State = app.ctx.state
    tune_gc = state.settings.server.tune_gc
    if tune_gc:
        tune_for_long_lived_heap()
    ignore_sighup()
    # A replica publishes and sweeps when the log's clock says so (orchestrator.cluster), not by the wall clock.
    by_wall_clock = () if clustered(state.settings) else (("hub", state.hub.run()), ("cleanup", run_cleanup(state)))
    app.ctx.tasks = [
        asyncio.create_task(coro, name=name)
        for name, coro in (
            ("ingest", state.ingest.run()),
            *by_wall_clock,
            ("loop_lag", watch_loop_lag(state.metrics)),
            *((("checkpoint", state.store.run(state)),) if state.store else ()),
            *((("history", state.history.run(state.settings.storage.checkpoint_interval)),) if state.history else ()),
            *((("gc_freeze", freeze_long_lived()),) if tune_gc else ()),
        )
    ]
    state.not_ready.pop(STARTING, None)


def ignore_sighup() -> None:
    """SIGHUP (a closed terminal, a ``kill -HUP`` meant as "reload") is logged and ignored: the default
    action would kill the server on the spot, without the final checkpoint. Settings are not reloaded; a
    restart (SIGTERM, then start) applies a changed file and loses nothing."""

    def logged(signum=None, frame=None) -> None:
        log.warning("sighup_ignored", message="SIGHUP does not stop or reload the server; restart to apply settings")

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, logged)
    except (RuntimeError, NotImplementedError, ValueError):  # no loop, not the main thread, or no SIGHUP here
        if hasattr(signal, "SIGHUP"):
            try:
                signal.signal(signal.SIGHUP, logged)
            except ValueError:  # not the main thread (an embedded or test server): the host owns signals
                pass


async def _begin_shutdown(app: Sanic) -> None:
    """Health turns 503 and WebSockets close with 1001. Requests already in flight finish normally (a
    report among them is still answered 202 and applied): the listener is closed right after this."""
    state: State = app.ctx.state
    state.shutting_down = True
    log.info("shutdown_started", queued_reports=state.ingest.backlog)
    await state.hub.close_all(1001)


async def _finish_shutdown(app: Sanic) -> None:
    """After the last request: stop background work, apply every accepted report, persist, close."""
    state: State = app.ctx.state
    for task in app.ctx.tasks:
        task.cancel()
    await asyncio.gather(*app.ctx.tasks, return_exceptions=True)
    await state.ingest.drain()
    if not clustered(state.settings):
        state.topology.publish(time.time())
    if state.store is not None:
        await state.store.checkpoint(state)
        state.store.close()
    if state.history is not None:
        await state.history.flush()
        state.history.close()
    log.info("shutdown_complete", reports_received=state.reports_received)
