"""SIGTERM and SIGINT belong to ``orchestrator serve`` from its first instruction to its exit.

Sanic's single-process runner, once it listens, sets both signals to ``SIG_IGN`` (the kernel discards a
signal arriving then) and installs a handler that stops the event loop, which a start-up step still
running swallows; ``/health`` already answers in that window, so a supervisor that stops a server as soon
as it is healthy could leave it running. Here one handler is installed before anything else happens and
stays the only one: Sanic is asked not to register its own (``register_sys_signals=False``) and its
``SIG_IGN`` calls for these two signals are turned into no-ops. Whenever a stop arrives — while settings
load, while the state is restored, while the server starts listening — it ends the same way: once Sanic
serves, the graceful shutdown of :mod:`orchestrator.runtime.lifecycle` (health 503, in-flight requests
finish, queued reports applied, final checkpoint, exit 0). A second signal during that shutdown changes
nothing.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

# Imported lazily (asyncio, structlog, sanic): this module is imported, and its handler installed, before
# anything heavy loads.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How often a stop asked for during start-up looks again whether Sanic serves yet.
RETRY_SECONDS = 0.02


class StopSignals:
    """The process's SIGTERM/SIGINT handler and the one path every stop takes."""

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self._app: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    def install(self) -> StopSignals:
        """Take both signals now (the caller's first instruction); keep Sanic's runner off them."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Give both signals their defaults back (for the commands that are not ``serve``); a signal that
        arrived meanwhile is delivered again under them."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self.requested is not None:
            signal.raise_signal(self.requested)

    def attach(self, app: Any) -> None:
        """Serve ``app``'s stops: once its loop runs, a stop asked for earlier is carried out too. Sanic's
        runner, which ``app`` is about to be served by, is kept off the two signals from now on."""
        from sanic.server import runners  # here, not in install(): a probe-only install has no sanic

        runners.signal_func = _keep_stop_signals  # type: ignore[attr-defined]
        self._app = app

        async def loop_started(app: Any) -> None:
            import asyncio

            self._loop = asyncio.get_running_loop()
            if self.requested is not None:
                self._stop_when_serving()

        app.register_listener(loop_started, "before_server_start")

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is None:
            self.requested = signal.Signals(signum)
        loop = self._loop
        if loop is None:
            return  # no loop yet: loop_started carries it out
        try:
            loop.call_soon_threadsafe(self._stop_when_serving)
        except RuntimeError:  # the loop is closed: the process is on its way out already
            pass

    def _stop_when_serving(self) -> None:
        if self._stopping:
            return
        loop = self._loop
        assert loop is not None and self.requested is not None
        if not self._app.state.is_running:
            # Starting up: stopping the loop now would be swallowed by the start-up step running on it.
            # Sanic marks itself running right before it serves; the timer fires then at the latest.
            loop.call_later(RETRY_SECONDS, self._stop_when_serving)
            return
        self._stopping = True
        import structlog

        structlog.get_logger("orchestrator.runtime.signals").info("stop_requested", signal=self.requested.name)
        self._app.stop(terminate=False)


def _keep_stop_signals(signum: int, handler: Any) -> Any:
    """``signal.signal`` for Sanic's runner, except that SIGTERM and SIGINT stay ours."""
    if signum in STOP_SIGNALS:
        return signal.getsignal(signum)
    return signal.signal(signum, handler)
