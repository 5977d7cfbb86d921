"""The v1 report schema (``docs/api.md``, "Reports" and "Agents") as pydantic v2 models.

Every model keeps fields the contract does not name (``extra="allow"``): probes add things and plugins
read them. Validation is done once, on the decoded body; the raw bytes are what gets stored.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    WithJsonSchema,
)

from orchestrator.contract.times import parse_rfc3339

AGENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
INT64_MAX = 2**63 - 1  # numbers are stored as int64 and float64: anything larger could not be kept


def _check_timestamp(text: str) -> str:
    parse_rfc3339(text)
    return text


# IP addresses are checked by pattern inside pydantic-core: a Python validator per address cost a third of
# a report's validation time (two addresses per connection, hundreds of connections per report).
_V4 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
_V6 = (
    r"(?:(?:{h}:){{7}}{h}|(?:{h}:){{1,7}}:|(?:{h}:){{1,6}}:{h}|(?:{h}:){{1,5}}(?::{h}){{1,2}}"
    r"|(?:{h}:){{1,4}}(?::{h}){{1,3}}|(?:{h}:){{1,3}}(?::{h}){{1,4}}|(?:{h}:){{1,2}}(?::{h}){{1,5}}"
    r"|{h}:(?::{h}){{1,6}}|:(?:(?::{h}){{1,7}}|:)|(?:{h}:){{6}}{v4}|::(?:ffff(?::0{{1,4}})?:)?{v4}"
    r"|(?:{h}:){{1,4}}:{v4})"
).format(h="[0-9a-fA-F]{1,4}", v4=_V4)
IP_PATTERN = rf"^(?:|{_V4}|{_V6}(?:%[0-9A-Za-z._-]+)?)$"  # empty: no address (a listener's remote end)


Timestamp = Annotated[
    str,
    AfterValidator(_check_timestamp),
    Field(description="RFC 3339, e.g. 2025-10-13T00:00:00Z (fractional seconds and offsets allowed)."),
]
IpAddress = Annotated[str, Field(pattern=IP_PATTERN)]
# Strict: "8" and true are not counts (lax mode would convert them, and /latest would show them as sent);
# a JSON integer is still a valid float.
NonNegInt = Annotated[int, Field(ge=0, le=INT64_MAX, strict=True)]
NonNegNum = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]
Port = Annotated[int, Field(ge=0, le=65535, strict=True)]
Percent = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]
AgentId = Annotated[str, Field(pattern=AGENT_ID_PATTERN)]


def _hostname(text: str) -> str:
    # One spelling per name: NFC, so a decomposed look-alike ("e" + combining accent) is the same host, and no
    # control characters (a NUL or a newline in a name forges log lines and ids).
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise ValueError("must not contain control characters")
    return unicodedata.normalize("NFC", text)


Hostname = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_hostname)]


def _metadata_value(value: Any) -> Any:
    # One check with one message: a plain union reported a failure once per member type, at made-up paths
    # (metadata.x.str, metadata.x.int, ...).
    if isinstance(value, str) or (isinstance(value, (int, float)) and check_number(value)):  # bool is an int
        return value
    raise ValueError("must be a string, a finite number within 64 bits, or a boolean")


def check_number(value: int | float) -> bool:
    """Whether a JSON number can be kept and served again: finite, and an integer fits in 64 bits
    (orjson refuses to write larger ones; the JSON parser reads 1e999 as infinity)."""
    if isinstance(value, int):
        return -INT64_MAX - 1 <= value <= 2**64 - 1
    return math.isfinite(value)


MetadataValue = Annotated[
    str | int | float | bool,
    PlainValidator(_metadata_value),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),  # the plain validator hides the type from the schema
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=False)


class HostInfo(_Open):
    os: str | None = None
    platform: str | None = None
    kernel: str | None = None
    uptime_s: NonNegNum | None = None
    cpu_count: NonNegInt | None = None
    cpu_percent: Percent | None = None
    load_avg: list[NonNegNum] | None = None
    memory_total: NonNegInt | None = None
    memory_used: NonNegInt | None = None
    memory_percent: Percent | None = None
    disk_total: NonNegInt | None = None
    disk_used: NonNegInt | None = None
    net_rx_bytes: NonNegInt | None = None
    net_tx_bytes: NonNegInt | None = None
    ip_addresses: list[IpAddress] = []


class Container(_Open):
    id: Annotated[str, Field(min_length=1, max_length=256)]
    name: str | None = None
    image: str | None = None
    state: str | None = None
    created: Timestamp | None = None
    labels: dict[str, str] = {}
    ip_addresses: list[IpAddress] = []
    pid: NonNegInt | None = None
    cpu_percent: Percent | None = None
    memory_usage: NonNegInt | None = None


class DockerInfo(_Open):
    containers: list[Container] = []


class Process(_Open):
    pid: NonNegInt
    ppid: NonNegInt | None = None
    name: str | None = None
    cmdline: str | None = None
    user: str | None = None
    cpu_percent: Percent | None = None
    memory_rss: NonNegInt | None = None
    threads: NonNegInt | None = None
    cgroup: str | None = None
    container_id: str | None = None


class ProcessesInfo(_Open):
    processes: list[Process] = []


class Connection(_Open):
    pid: NonNegInt | None = None
    protocol: Literal["tcp", "tcp6", "udp", "udp6"] = "tcp"
    local_ip: IpAddress = ""
    local_port: Port = 0
    remote_ip: IpAddress = ""
    remote_port: Port = 0
    state: str = ""


class Interface(_Open):
    name: str
    rx_bytes: NonNegInt | None = None
    tx_bytes: NonNegInt | None = None


class NetworkInfo(_Open):
    connections: list[Connection] = []
    interfaces: list[Interface] = []


BUILTIN_SECTIONS = ("host_info", "docker_info", "processes_info", "network_info")


class Report(_Open):
    """A probe's report: who sent it, when, and what it saw. Every ``*_info`` section is optional."""

    agent_id: AgentId
    hostname: Hostname
    timestamp: Timestamp
    host_info: HostInfo | None = None
    docker_info: DockerInfo | None = None
    processes_info: ProcessesInfo | None = None
    network_info: NetworkInfo | None = None
    # Sections claimed by plugins (``register_sections``), validated with the plugin's model.
    _sections: dict[str, BaseModel] = PrivateAttr(default_factory=dict)
    _epoch: float | None = PrivateAttr(default=None)

    @property
    def sections(self) -> dict[str, BaseModel]:
        return self._sections

    @property
    def epoch(self) -> float:
        """The report's own timestamp in epoch seconds (ordering and time-series buckets use it)."""
        if self._epoch is None:
            self._epoch = parse_rfc3339(self.timestamp)
        return self._epoch


class AgentRegistration(BaseModel):
    """The body of ``POST /api/v1/agents/register``."""

    model_config = ConfigDict(extra="allow")

    agent_id: AgentId
    hostname: Hostname
    metadata: dict[str, MetadataValue] = {}


def count_items(report: Report) -> dict[str, int]:
    """The report's size in items, for limits and summaries."""
    return {
        "containers": len(report.docker_info.containers) if report.docker_info else 0,
        "processes": len(report.processes_info.processes) if report.processes_info else 0,
        "connections": len(report.network_info.connections) if report.network_info else 0,
    }


def error_details(exc: Any, prefix: tuple[str | int, ...] = ()) -> list[dict[str, str]]:
    """A pydantic ValidationError as the contract's 422 details: one entry per bad field, by JSON path."""
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in (*prefix, *err["loc"]) if not str(p).startswith("function-")]
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == IP_PATTERN:
            message = "must be an IPv4 or IPv6 address"  # not the thousand-character pattern
        details.append({"field": ".".join(loc) or "body", "message": message})
    return details
