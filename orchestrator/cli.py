"""``orchestrator serve | config check/print | healthcheck | probe | simulate``. Invalid settings and a data dir that
cannot be written exit with status 2 and one line, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys

from orchestrator import __version__
from orchestrator.runtime.signals import StopSignals  # light on purpose: main() installs it first


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
    parser.add_argument(
        "--nats-url", dest="nats_url", help="cluster mode: the NATS JetStream all replicas share (default: off)"
    )


def _flags(args: argparse.Namespace) -> dict:
    from orchestrator.settings import FLAG_PATHS

    return {name: getattr(args, name, None) for name in (*FLAG_PATHS, "config")}


# What the server needs beyond a probe-only install (`pip install orchestrator-server`).
SERVER_MODULES = ("sanic", "pluggy", "pydantic", "numpy", "prometheus_client", "yaml")


def missing_server_dependency() -> str | None:
    """The first server dependency that cannot be imported, or None when the ``server`` extra is installed."""
    import importlib.util

    for name in SERVER_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ImportError:
            return name
    return None


def _server_installed(command: str) -> bool:
    missing = missing_server_dependency()
    if missing:
        print(
            f"orchestrator: `{command}` needs the server's dependencies, which this install lacks (no module "
            f"{missing!r}): pip install 'orchestrator-server[server]'",
            file=sys.stderr,
        )
    return missing is None


def serve(args: argparse.Namespace, stop: StopSignals) -> int:
    """Run the server until SIGTERM/SIGINT (``stop`` holds them already), then shut down gracefully."""
    if not _server_installed("serve"):
        return 2
    from orchestrator.runtime.logs import configure_logging
    from orchestrator.settings import SettingsError, check_port, load_settings

    flags = _flags(args)
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
    except ModuleNotFoundError as exc:
        if exc.name != "nats":
            raise
        print(
            f"orchestrator: invalid setting cluster.nats_url={settings.cluster.nats_url!r}: cluster mode needs "
            "nats-py (pip install 'orchestrator-server[cluster]')",
            file=sys.stderr,
        )
        return 2
    stop.attach(app)
    from orchestrator.runtime.lifecycle import ignore_sighup, open_storage
    from orchestrator.state.persistence import StorageUnavailable

    ignore_sighup()  # from the start: a SIGHUP during the restore must not kill the server either
    if settings.storage.persist and settings.cluster.nats_url is None:  # a replica's data dir holds snapshots
        try:
            open_storage(app.ctx.state)
        except StorageUnavailable as exc:
            print(f"orchestrator: {exc}", file=sys.stderr)
            return 2
    # One worker in one process: all state lives in this process's memory, owned by its event loop.
    app.prepare(
        host=settings.server.host,
        port=settings.server.port,
        single_process=True,
        access_log=False,
        motd=False,
        debug=False,
        register_sys_signals=False,  # the signals are ours: see orchestrator.runtime.signals
    )
    Sanic.serve_single(app)
    return 0


def config(args: argparse.Namespace) -> int:
    """``config check [FILE]``: validate, exit 0 or 2 with the one line; ``config print``: the effective
    settings, each with its source, secrets redacted. Neither creates anything (the data dir included)."""
    if not _server_installed("config"):
        return 2
    from orchestrator.settings import SettingsError, resolve_settings

    flags = _flags(args)
    if getattr(args, "file", None):
        flags["config"] = args.file
    try:
        loaded = resolve_settings(flags, create_dirs=False)
    except SettingsError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return 2
    if args.action == "check":
        print(f"ok: {loaded.config_file or 'no config file'}, settings valid")
        return 0
    for path, value in _flatten(loaded.settings.redacted()):
        print(f"{path}: {json.dumps(value)}  # {loaded.source_of(path)}")
    return 0


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        out += _flatten(value, path) if isinstance(value, dict) and value else [(path, value)]
    return out


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="validate a config file (and the environment); exit 0 or 2")
    check.add_argument("file", nargs="?", help="the file to check (default: --config or $ORCHESTRATOR_CONFIG)")
    _serve_arguments(check)
    shown = actions.add_parser("print", help="print the effective settings and where each comes from")
    _serve_arguments(shown)


def healthcheck(args: argparse.Namespace) -> int:
    """``orchestrator healthcheck``: GET the local server's ``--path`` (``/readyz``) at the address its
    settings give (flags, environment, file: as ``serve`` would read them); exit 0 on 200, else 1. For
    container health checks, which cannot expand variables in their exec form."""
    import httpx

    url = args.url
    if url is None:
        if not _server_installed("healthcheck"):
            return 2
        from orchestrator.settings import SettingsError, resolve_settings

        try:
            server = resolve_settings(_flags(args), create_dirs=False).settings.server
        except SettingsError as exc:
            print(f"orchestrator: {exc}", file=sys.stderr)
            return 2
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(server.host, server.host)
        url = f"http://{f'[{host}]' if ':' in host else host}:{server.port}"
    try:
        response = httpx.get(url.rstrip("/") + args.path, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"orchestrator healthcheck: {url}{args.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"orchestrator healthcheck: {url}{args.path}: HTTP {response.status_code} {response.text[:200]}")
    return 0 if response.status_code == 200 else 1


def _healthcheck_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", default="/readyz", help="what to ask: /readyz (default), /livez or /health")
    parser.add_argument("--url", help="the server's base URL (default: from the settings, on loopback)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    _serve_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    # First: from here to the exit a SIGTERM/SIGINT is never lost (see orchestrator.runtime.signals).
    stop = StopSignals().install()
    parser = argparse.ArgumentParser(prog="orchestrator", description="Infrastructure monitoring app server.")
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _serve_arguments(commands.add_parser("serve", help="run the server"))
    _config_arguments(commands.add_parser("config", help="check or print the settings without starting"))
    _healthcheck_arguments(commands.add_parser("healthcheck", help="exit 0 when the local server is ready"))

    from orchestrator.probe import host_probe as probe
    from orchestrator.probe import simulate

    probe.add_arguments(commands.add_parser("probe", help="report this machine to a server"))
    simulate.add_arguments(commands.add_parser("simulate", help="run a synthetic fleet against a server"))
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args, stop)
    stop.uninstall()  # the other commands stop the usual way (KeyboardInterrupt, SIGTERM's default)
    if args.command == "config":
        return config(args)
    if args.command == "healthcheck":
        return healthcheck(args)
    from orchestrator.runtime.logs import configure_logging

    configure_logging(args.log_level, "console")  # the probe's and the simulator's logs: stderr
    return (probe.run if args.command == "probe" else simulate.run)(args)


if __name__ == "__main__":
    sys.exit(main())
