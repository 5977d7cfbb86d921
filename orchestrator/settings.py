"""One typed settings model, loaded from flags > ``ORCHESTRATOR_*`` environment > YAML/JSON file > defaults.

Durations are Go-style strings everywhere (``15s``, ``5m``, ``1h30m``) and held as float seconds.
An invalid setting raises :class:`SettingsError` with one line naming the setting, its value and what is
allowed; the CLI turns it into exit status 2.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    ValidationError,
)

from orchestrator.contract.durations import ALLOWED as DURATION_ALLOWED
from orchestrator.contract.durations import format_duration, parse_duration

ENV_PREFIX = "ORCHESTRATOR_"
MIB = 1024 * 1024


class SettingsError(Exception):
    """An invalid setting: the message is the one line an operator sees."""


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"must be {DURATION_ALLOWED}")
    if isinstance(value, (int, float)):  # an already-parsed value (a model built in code)
        return float(value)
    return parse_duration(value)


def Duration(minimum: float = 0.0, maximum: float | None = None):
    """A Go-style duration setting with a range, held as seconds, shown as a string."""
    return Annotated[
        float,
        BeforeValidator(_duration),
        Field(ge=minimum, le=maximum),
        PlainSerializer(format_duration, return_type=str),
    ]


def _str_list(value: Any) -> Any:
    # The environment gives "a,b"; files give lists.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


StrList = Annotated[list[str], BeforeValidator(_str_list)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    cors_origins: StrList = ["*"]
    max_body_size: int = Field(10 * MIB, ge=1024, le=1024 * MIB)
    max_decoded_size: int = Field(10 * MIB, ge=1024, le=1024 * MIB)
    max_json_depth: int = Field(32, ge=4, le=256)
    # A registration is an agent id, a hostname and metadata: 64 KiB is generous, and 8 MiB held the loop 0.4 s.
    max_registration_size: int = Field(64 * 1024, ge=1024, le=1024 * MIB)
    max_processes: int = Field(10_000, ge=1)
    max_connections: int = Field(50_000, ge=1)  # network connections in one report, not the server's own
    max_containers: int = Field(5_000, ge=1)
    ingest_queue_size: int = Field(500, ge=1)  # cluster mode: log messages not applied here yet
    # A queued report holds its JSON and the parsed report, ~7× the JSON: 32 MiB of JSON is ~270 MB in memory.
    ingest_queue_bytes: int = Field(32 * MIB, ge=1024)
    retry_after: Duration(1.0, 3600.0) = 1.0
    # Open HTTP and WebSocket connections at once; at start-up it is lowered to fit the descriptor limit.
    max_open_connections: int = Field(20_000, ge=1)
    # Bytes of request bodies not yet received whole, all connections together.
    max_pending_body_bytes: int = Field(64 * MIB, ge=1024)
    request_timeout: Duration(0.1) = 60.0
    response_timeout: Duration(0.1) = 60.0
    keep_alive_timeout: Duration(0.1) = 75.0
    graceful_timeout: Duration(0.1, 600.0) = 15.0
    gzip: bool = True  # gzip answers for clients that accept it (Accept-Encoding), from gzip_min_size bytes
    gzip_min_size: int = Field(4096, ge=0)
    tune_gc: bool = True  # freeze start-up state out of the cyclic GC, collect the young generation less often


class StorageSettings(_Section):
    max_data_age: Duration(60.0, 30 * 86400.0) = 3600.0
    resolution: Duration(15.0, 15.0) = 15.0  # fixed by the contract; present so stats can show it
    data_dir: str = "./data"
    checkpoint_interval: Duration(1.0, 3600.0) = 15.0
    cleanup_interval: Duration(0.05, 86400.0) = 300.0
    persist: bool = True
    max_file_size: int = Field(0, ge=0)  # bytes; 0: no cap but the disk's


class HistorySettings(_Section):
    enabled: bool = True
    retention: Duration(1.0, 30 * 86400.0) = 86400.0
    keyframe_interval: Duration(1.0, 86400.0) = 3600.0


class AgentOverride(_Section):
    report_interval: Duration(1.0, 3600.0) | None = None
    heartbeat_interval: Duration(1.0, 3600.0) | None = None
    features: dict[str, Any] = {}


class AgentSettings(_Section):
    stale_threshold: Duration(1.0, 7 * 86400.0) = 300.0
    # Deprecated and ignored: the contract's example configuration names it, so it is still accepted, but
    # liveness is ``stale_threshold`` alone. A value other than the default logs ``deprecated_setting`` at start-up.
    heartbeat_timeout: Duration(1.0, 7 * 86400.0) = 120.0
    report_interval: Duration(1.0, 3600.0) = 15.0
    # Agents known at once (online, stale and archived): a new agent beyond it is refused with 429.
    max_agents: int = Field(100_000, ge=1, le=10_000_000)
    heartbeat_interval: Duration(1.0, 3600.0) = 30.0
    features: dict[str, Any] = {"docker": True, "processes": True, "connections": True}
    overrides: dict[str, AgentOverride] = {}


class CleanupSettings(_Section):
    archive_window: Duration(0.0, 30 * 86400.0) = 86400.0
    stale_alert_ratio: float = Field(0.25, ge=0.0, le=1.0)
    batch_size: int = Field(500, ge=1, le=100_000)


class WebSocketSettings(_Section):
    buffer_size: int = Field(256, ge=1, le=100_000)
    ping_interval: Duration(0.5, 3600.0) = 30.0
    ping_timeout: Duration(0.5, 3600.0) = 20.0
    broadcast_interval: Duration(0.01, 60.0) = 1.0
    history_size: int = Field(120, ge=0, le=100_000)
    max_message_size: int = Field(64 * 1024, ge=128, le=16 * MIB)
    slow_client_timeout: Duration(0.1, 3600.0) = 30.0
    compression: bool = True  # offer permessage-deflate; clients that do not ask for it are served plain
    # Bounds a client can make grow: clients at once (beyond: 503 before the upgrade), and how often one
    # client may ask for a fresh snapshot (``resync``/``subscribe``; more often: an ``error`` message).
    max_clients: int = Field(10_000, ge=1, le=1_000_000)
    resync_interval: Duration(0.0, 3600.0) = 1.0


class AgentToken(_Section):
    """An agent token bound to the agents and hosts it may speak for: ``fnmatch`` patterns, matched
    case-sensitively; a list left out does not restrict (a token with neither is unbound)."""

    token: str = Field(min_length=1)
    agent_ids: StrList | None = Field(None, min_length=1)
    hostnames: StrList | None = Field(None, min_length=1)

    @property
    def bound(self) -> bool:
        return self.agent_ids is not None or self.hostnames is not None


def _agent_tokens(value: Any) -> Any:
    # The environment gives "a,b" (plain tokens) or a JSON list (which may hold bound tokens).
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"must be comma-separated tokens or a JSON list of tokens ({exc})") from None
    return _str_list(value)


# A plain string is an unbound token (any agent, any host: the behaviour before bindings existed).
AgentTokenEntry = Annotated[
    Annotated[str, Tag("plain")] | Annotated[AgentToken, Tag("bound")],
    Discriminator(lambda entry: "plain" if isinstance(entry, str) else "bound"),
]


class AuthSettings(_Section):
    agent_tokens: Annotated[list[AgentTokenEntry], BeforeValidator(_agent_tokens)] = []
    read_tokens: StrList = []


class PluginSettings(BaseModel):
    # A plugin's own settings block is the plugin's business: any keys.
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    settings: dict[str, Any] = {}


class PipelineSettings(_Section):
    disable: StrList = []
    order: StrList = []
    plugins: dict[str, PluginSettings] = {}


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "console"
    # Refused and failed requests: at most sample_lines request lines per route and status per sample_window,
    # then one requests_not_logged line with the count (0s: a line for every request).
    sample_window: Duration(0.0, 86400.0) = 60.0
    sample_lines: int = Field(10, ge=1, le=1_000_000)


class ClusterSettings(_Section):
    """Cluster mode (``orchestrator.cluster``): off while ``nats_url`` is unset."""

    nats_url: str | None = None  # e.g. nats://127.0.0.1:4222 (several: comma-separated); unset = single server
    stream: str = Field("ORCHESTRATOR", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    replica_id: str | None = None  # shown in stats; unset = <hostname>-<pid>
    stream_replicas: int = Field(1, ge=1, le=5)  # JetStream copies of the stream (3 on a NATS cluster)
    max_age: Duration(0.0, 365 * 86400.0) | None = None  # unset = storage.max_data_age
    max_msgs_per_agent: int | None = Field(None, ge=1)  # per agent and kind; unset = max_data_age / resolution
    max_bytes: int = Field(-1, ge=-1)  # -1: no byte limit on the stream
    duplicate_window: Duration(1.0, 86400.0) = 120.0  # a retried publish within it is stored once
    snapshot_interval: Duration(1.0, 86400.0) = 60.0  # applied state saved to the object store this often
    publish_timeout: Duration(0.1, 60.0) = 5.0  # no PubAck within it: 503
    reconnect_wait: Duration(0.05, 60.0) = 1.0


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    history: HistorySettings = HistorySettings()
    agents: AgentSettings = AgentSettings()
    cleanup: CleanupSettings = CleanupSettings()
    websocket: WebSocketSettings = WebSocketSettings()
    auth: AuthSettings = AuthSettings()
    pipeline: PipelineSettings = PipelineSettings()
    logging: LoggingSettings = LoggingSettings()
    cluster: ClusterSettings = ClusterSettings()

    def redacted(self) -> dict:
        """The effective settings as JSON, with secrets replaced: the tokens, and any plugin setting whose
        name looks like a secret (``token``, ``password``, ``api_key``, ...)."""
        out = self.model_dump(mode="json")
        out["auth"] = redact_auth(out["auth"])
        for plugin in out["pipeline"]["plugins"].values():
            plugin["settings"] = redact_secrets(plugin["settings"])
        return out

    def deprecated(self) -> list[str]:
        """The deprecated settings this configuration changes from their defaults (accepted, but they do
        nothing: someone tuning one should know)."""
        default = AgentSettings.model_fields["heartbeat_timeout"].default
        return ["agents.heartbeat_timeout"] if self.agents.heartbeat_timeout != default else []


REDACTED = "***"


def redact_auth(auth: Any) -> Any:
    """The ``auth`` section (or any part of it) with every token replaced by ``***``; a bound token's
    patterns stay (they say what the token may do, not what it is)."""
    if isinstance(auth, str):
        return REDACTED
    if isinstance(auth, list):
        return [redact_auth(entry) for entry in auth]
    if isinstance(auth, dict):
        return {
            key: redact_auth(value) if key in ("token", "agent_tokens", "read_tokens") else value
            for key, value in auth.items()
        }
    return auth


_SECRET_NAME = re.compile(r"token|secret|passw|api_?key|private_?key|credential|auth|cookie|signature", re.I)


def redact_secrets(tree: Any) -> Any:
    """``tree`` with the value of every key that names a secret replaced by ``***`` (at any depth)."""
    if isinstance(tree, dict):
        return {
            key: REDACTED if _SECRET_NAME.search(str(key)) and value not in (None, "") else redact_secrets(value)
            for key, value in tree.items()
        }
    if isinstance(tree, list):
        return [redact_secrets(item) for item in tree]
    return tree


# The flags of the contract, each with its plain environment name and its place in the file.
FLAG_PATHS = {
    "host": ("server", "host"),
    "port": ("server", "port"),
    "data_dir": ("storage", "data_dir"),
    "max_data_age": ("storage", "max_data_age"),
    "cleanup_interval": ("storage", "cleanup_interval"),
    "stale_node_threshold": ("agents", "stale_threshold"),
    "log_level": ("logging", "level"),
    "log_format": ("logging", "format"),
    "nats_url": ("cluster", "nats_url"),
}


def read_file(path: str | os.PathLike) -> dict:
    """The config file's mapping (YAML, or JSON for ``*.json``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"invalid setting config={str(path)!r}: cannot read the file ({exc.strerror})") from None
    try:
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SettingsError(f"invalid setting config={str(path)!r}: not valid YAML/JSON ({first})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SettingsError(f"invalid setting config={str(path)!r}: must be a mapping of sections")
    return loaded


# ORCHESTRATOR_* variables that are not server settings: the probe's, and the config file's path.
CLIENT_VARIABLES = frozenset({"ORCHESTRATOR_AGENT_TOKEN", "ORCHESTRATOR_ENVIRONMENT", ENV_PREFIX + "CONFIG"})


def read_environment(environ: Mapping[str, str], sources: dict[str, str] | None = None) -> dict:
    """``ORCHESTRATOR_SECTION__KEY`` and the flags' plain names (``ORCHESTRATOR_PORT``) as a nested mapping.

    Any other ``ORCHESTRATOR_*`` variable (but the probe's) is an invalid setting, as an unknown key in the
    file is: a mistyped ``ORCHESTRATOR_STORAGE_MAX_DATA_AGE`` must not be ignored silently. ``sources``, when
    given, is filled with each setting's dotted path → the variable that set it.
    """
    nested: dict = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in CLIENT_VARIABLES:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if "__" in key:
            path = tuple(key.split("__"))
        elif key in FLAG_PATHS:
            path = FLAG_PATHS[key]
        else:
            raise SettingsError(f"invalid setting {name}={value!r}: {_unknown_variable(name)}")
        _set(nested, path, value)
        if sources is not None:
            sources[".".join(path)] = f"env {name}"
    return nested


def _unknown_variable(name: str) -> str:
    known = [ENV_PREFIX + flag.upper() for flag in FLAG_PATHS]
    for section, field_info in Settings.model_fields.items():
        model = field_info.annotation
        known += [f"{ENV_PREFIX}{section.upper()}__{key.upper()}" for key in getattr(model, "model_fields", {})]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown environment variable (nested settings are {ENV_PREFIX}<SECTION>__<KEY>){hint}"


def _set(tree: dict, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class LoadedSettings:
    """Validated settings and where each came from: dotted path → ``file PATH``, ``env NAME`` or
    ``flag --name`` (a setting absent from ``sources`` is at its default)."""

    settings: Settings
    sources: dict[str, str]
    config_file: str | None

    def source_of(self, path: str) -> str:
        """The source of the setting at ``path`` (a key inside a mapping takes its mapping's source)."""
        while path:
            if path in self.sources:
                return self.sources[path]
            path = path.rpartition(".")[0]
        return "default"


def resolve_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
    *,
    create_dirs: bool = True,
) -> LoadedSettings:
    """Build and validate the settings: flags beat the environment, which beats the file, then defaults.

    ``create_dirs=False`` checks the data dir could be created without creating it (``config check``).
    """
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    config_file = flags.pop("config", None) or config_file or environ.get(ENV_PREFIX + "CONFIG")
    sources: dict[str, str] = {}
    tree = read_file(config_file) if config_file else {}
    for path in _leaves(tree):
        sources[path] = f"file {config_file}"
    tree = _merge(tree, read_environment(environ, sources))
    from_flags: dict = {}
    for name, value in flags.items():
        _set(from_flags, FLAG_PATHS[name], value)
        sources[".".join(FLAG_PATHS[name])] = "flag --" + name.replace("_", "-")
    tree = _merge(tree, from_flags)
    try:
        settings = Settings.model_validate(tree)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc, tree)) from None
    check_paths(settings, create=create_dirs)
    return LoadedSettings(settings, sources, config_file)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """The validated settings (see :func:`resolve_settings`); creates the data dir if needed."""
    return resolve_settings(flags, environ, config_file).settings


def _leaves(tree: Any, prefix: str = "") -> list[str]:
    """The dotted paths of a nested mapping's leaves (an empty mapping is a leaf)."""
    if not isinstance(tree, dict) or not tree:
        return [prefix] if prefix else []
    return [leaf for key, value in tree.items() for leaf in _leaves(value, f"{prefix}.{key}" if prefix else str(key))]


def _one_line(exc: ValidationError, tree: dict) -> str:
    err = exc.errors(include_url=False)[0]
    loc = _without_tags(err["loc"])
    path = ".".join(str(p) for p in loc)
    value = _lookup(tree, loc)
    allowed = err["msg"].removeprefix("Value error, ")
    limits = err.get("ctx") or {}
    if _is_duration(err["loc"]) and err["type"] in ("greater_than_equal", "less_than_equal"):
        # A duration out of range: say the range as durations, not as seconds.
        bound = limits.get("ge", limits.get("le"))
        word = "at least" if "ge" in limits else "at most"
        allowed = f"must be {word} {format_duration(float(bound))}"
    if err["type"] == "extra_forbidden":
        allowed = f"unknown setting; known keys here: {', '.join(_known_keys(loc[:-1]))}"
    elif err["type"] == "model_type" and loc[:2] == ("auth", "agent_tokens"):
        allowed = "must be a token, or a mapping of token and its agent_ids and hostnames patterns"
    elif err["type"] == "missing":
        allowed = "is required"
    shown = "(missing)" if value is _MISSING else repr(_secret_free(loc, value))
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"invalid setting {path}={shown}: {allowed}{more}"


_MISSING = object()


def _without_tags(loc: tuple) -> tuple:
    """An error's location without the union tags pydantic adds after a list index (``agent_tokens.0.bound``)."""
    return tuple(p for i, p in enumerate(loc) if not (p in ("plain", "bound") and i and isinstance(loc[i - 1], int)))


def _secret_free(loc: tuple, value: Any) -> Any:
    """A setting's value as an error line may show it: tokens never (the line goes to the terminal and the
    service manager's log); a bound token's patterns do."""
    if loc[:1] != ("auth",) or any(part in ("agent_ids", "hostnames") for part in loc):
        return value
    return redact_auth(value)


def _is_duration(loc: tuple) -> bool:
    """Whether the setting at ``loc`` is a :func:`Duration` (its range reads best as durations)."""
    model: Any = Settings
    info = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return False
        info = fields[part]
        model = info.annotation
    return info is not None and any(isinstance(m, BeforeValidator) and m.func is _duration for m in info.metadata)


def _lookup(tree: Any, loc: tuple) -> Any:
    for part in loc:
        if isinstance(tree, str) and tree.lstrip().startswith("["):  # a JSON list from the environment
            try:
                tree = json.loads(tree)
            except ValueError:
                return _MISSING
        if (isinstance(tree, dict) and part in tree) or (
            isinstance(tree, list) and isinstance(part, int) and part < len(tree)
        ):
            tree = tree[part]
        else:
            return _MISSING
    return tree


def _known_keys(loc: tuple) -> list[str]:
    if loc[:2] == ("auth", "agent_tokens"):
        return sorted(AgentToken.model_fields)
    model: Any = Settings
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return sorted(model.model_fields)


def check_paths(settings: Settings, create: bool = True) -> None:
    """The data dir must exist or be creatable, and writable. ``create=False`` checks without creating."""
    if not settings.storage.persist:
        return
    data_dir = Path(settings.storage.data_dir)
    if not create:
        _check_creatable(data_dir)
        return
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SettingsError(
            f"invalid setting storage.data_dir={str(data_dir)!r}: must be a directory the server can create "
            f"and write ({exc.strerror})"
        ) from None


def _check_creatable(data_dir: Path) -> None:
    """What :func:`check_paths` would find, judged from permissions, touching nothing."""
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = "Not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = "Permission denied"
    if problem:
        raise SettingsError(
            f"invalid setting storage.data_dir={str(data_dir)!r}: must be a directory the server can create "
            f"and write ({problem})"
        )


def check_port(settings: Settings) -> None:
    """Fail before start-up when the port cannot be bound (taken, or not ours to take)."""
    host, port = settings.server.host, settings.server.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SettingsError(
                f"invalid setting server.port={port}: cannot listen on {host}:{port} ({exc.strerror}); "
                "choose a free port"
            ) from None
