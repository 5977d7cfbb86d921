"""``orchestrator serve | probe | simulate``. Invalid settings exit with status 2 and one line, never a traceback."""

from __future__ import annotations

import argparse
import signal
import sys

from orchestrator import __version__


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", help="port to listen on (default 8080)")
    parser.add_argument("--config", help="YAML or JSON settings file")
    parser.add_argument("--data-dir", dest="data_dir", help="where durable state lives (default ./data)")
    parser.add_argument("--max-data-age", dest="max_data_age", help="time-series retention (default 1h)")
    parser.add_argument("--cleanup-interval", dest="cleanup_interval", help="cleanup sweep period (default 5m)")
    parser.add_argument(
        "--stale-node-threshold",
        dest="stale_node_threshold",
        help="remove an agent's nodes after this long unseen (default 5m)",
    )
    parser.add_argument("--log-level", dest="log_level", help="debug, info, warning or error (default info)")
    parser.add_argument("--log-format", dest="log_format", help="json or console (default console)")


def serve(args: argparse.Namespace) -> int:
    from orchestrator.runtime.logs import configure_logging
    from orchestrator.settings import SettingsError, check_port, load_settings

    flags = {
        k: getattr(args, k)
        for k in (
            "host",
            "port",
            "config",
            "data_dir",
            "max_data_age",
            "cleanup_interval",
            "stale_node_threshold",
            "log_level",
            "log_format",
        )
    }
    try:
        settings = load_settings(flags)
        check_port(settings)
    except SettingsError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging.level, settings.logging.format)

    from sanic import Sanic

    from orchestrator.app import create_app
    from orchestrator.pipeline.host import PluginError

    try:
        app = create_app(settings, name="orchestrator")
    except PluginError as exc:
        print(f"orchestrator: invalid setting pipeline: {exc}", file=sys.stderr)
        return 2
    _remember_early_stop(app)
    # One worker in one process: all state lives in this process's memory, owned by its event loop.
    app.prepare(
        host=settings.server.host,
        port=settings.server.port,
        single_process=True,
        access_log=False,
        motd=False,
        debug=False,
    )
    Sanic.serve_single(app)
    return 0


def _remember_early_stop(app) -> None:
    """SIGINT/SIGTERM before Sanic installs its handler (while the state is restored): stop once started,
    after a normal start, rather than die with the restored state half-served."""
    early: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: early.append(signum))

    async def stop_if_asked(app) -> None:
        if early:
            app.stop(terminate=False)

    app.register_listener(stop_if_asked, "after_server_start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestrator", description="Infrastructure monitoring app server.")
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _serve_arguments(commands.add_parser("serve", help="run the server"))

    from orchestrator.probe import host_probe as probe
    from orchestrator.probe import simulate

    probe.add_arguments(commands.add_parser("probe", help="report this machine to a server"))
    simulate.add_arguments(commands.add_parser("simulate", help="run a synthetic fleet against a server"))
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return (probe.run if args.command == "probe" else simulate.run)(args)


if __name__ == "__main__":
    sys.exit(main())
