"""The reference probe: reports the machine it runs on (through psutil) to an Orchestrator server.

``collect_report`` reads the host, its processes (with their ``/proc/<pid>/cgroup`` text, from which the
server finds their containers), its sockets, interfaces and -- when the Docker socket is readable -- its
containers. What the probe may not read (another user's process, a process that exits mid-read, a
missing Docker daemon) is left out item by item; it never stops a report.

``orchestrator probe --server URL`` registers, fetches its configuration and then reports and heartbeats
at the server's intervals until SIGINT/SIGTERM (``client.run_agent``); ``--once`` posts one report and
prints what it sent. An answer retrying cannot fix (a bad URL, a 4xx other than 429) stops the probe with
one line on stderr and exit status 1 (2 for bad usage); logs go to stderr at ``--log-level``.

CPU figures are real from the first report: psutil measures CPU use between two calls, so before the
first report the probe takes a first sample of the host and of every process and waits ``CPU_SAMPLE``
seconds; later reports measure since the previous one. A process first seen after that reports its
average since it started.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import platform
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import structlog

from orchestrator import __version__
from orchestrator.contract.durations import parse_duration
from orchestrator.contract.times import format_rfc3339
from orchestrator.probe.client import (
    AgentClient,
    ClientError,
    ServerUnavailable,
    ServerURLError,
    check_server_url,
    make_http,
    run_agent,
)

log = structlog.get_logger()

DOCKER_SOCKET = "/var/run/docker.sock"
CMDLINE_MAX = 1024
CPU_SAMPLE = 0.5  # seconds between the priming sample and the first report's
_AGENT_ID_CHARS = re.compile(r"[^A-Za-z0-9._:-]")
# What can go wrong reading one process: it exited, it is a zombie, or it belongs to someone else.
_PROCESS_GONE = (psutil.NoSuchProcess, psutil.AccessDenied)
_FIELD_DENIED = (psutil.AccessDenied, psutil.ZombieProcess)
_PROTOCOLS = {
    (socket.AF_INET, socket.SOCK_STREAM): "tcp",
    (socket.AF_INET6, socket.SOCK_STREAM): "tcp6",
    (socket.AF_INET, socket.SOCK_DGRAM): "udp",
    (socket.AF_INET6, socket.SOCK_DGRAM): "udp6",
}


@dataclass
class ProbeState:
    """What one report hands to the next: psutil keeps a process's CPU time between samples on its
    ``Process`` object, so reusing them makes ``cpu_percent`` the usage since the previous report."""

    processes: dict[int, psutil.Process] = field(default_factory=dict)
    primed: bool = False  # host and process CPU counters have a first sample
    docker: str = "not asked yet"  # what the last look for Docker found, for people (``--once``)

    def prime(self, sample: float = CPU_SAMPLE) -> None:
        """Take psutil's first CPU sample of the host and every process, then wait ``sample`` seconds, so
        the next reading is the usage over that interval rather than psutil's meaningless first 0.0."""
        psutil.cpu_percent(interval=None)
        for proc in psutil.process_iter():
            try:
                proc.cpu_percent(interval=None)
            except _PROCESS_GONE:
                continue
            self.processes[proc.pid] = proc
        time.sleep(sample)
        self.primed = True


def default_agent_id(hostname: str) -> str:
    """The hostname with every character the contract forbids in an agent id replaced by ``-``."""
    return _AGENT_ID_CHARS.sub("-", hostname)[:128] or "agent"


def collect_report(
    agent_id: str,
    hostname: str,
    previous: ProbeState | None = None,
    *,
    docker_socket: str = DOCKER_SOCKET,
    cpu_sample: float = CPU_SAMPLE,
) -> dict[str, Any]:
    """A v1 report of this machine, as a JSON-able dict.

    ``previous`` is the state of the last call (it is updated in place). Without one, or on its first use,
    the CPU counters are primed first (:meth:`ProbeState.prime`: ``cpu_sample`` seconds).
    """
    state = previous if previous is not None else ProbeState()
    if not state.primed:
        state.prime(cpu_sample)
    report: dict[str, Any] = {
        "agent_id": agent_id,
        "hostname": hostname,
        "timestamp": format_rfc3339(time.time()),
        "host_info": host_info(),
        "processes_info": {"processes": collect_processes(state)},
        "network_info": {"connections": collect_connections(), "interfaces": collect_interfaces()},
    }
    containers, state.docker = read_docker(docker_socket)
    if containers is not None:
        report["docker_info"] = {"containers": containers}
    return report


def host_info() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    info: dict[str, Any] = {
        "os": sys.platform,
        "platform": _platform_name(),
        "kernel": platform.release(),
        "uptime_s": max(0.0, round(time.time() - psutil.boot_time(), 3)),
        "cpu_count": psutil.cpu_count() or 1,
        "cpu_percent": psutil.cpu_percent(interval=None),
        "load_avg": [round(max(0.0, v), 2) for v in psutil.getloadavg()],
        "memory_total": memory.total,
        "memory_used": memory.used,
        "memory_percent": memory.percent,
        "ip_addresses": ip_addresses(),
    }
    try:
        disk = psutil.disk_usage("/")
        info.update(disk_total=disk.total, disk_used=disk.used)
    except OSError:
        pass
    counters = psutil.net_io_counters()
    if counters is not None:
        info.update(net_rx_bytes=counters.bytes_recv, net_tx_bytes=counters.bytes_sent)
    return info


def _platform_name() -> str:
    """``debian 12``-style from os-release; Python's own description elsewhere."""
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        return platform.platform()
    return f"{release.get('ID', 'linux')} {release.get('VERSION_ID', '')}".strip()


def _plain_ip(address: str) -> str | None:
    """The address without an IPv6 zone (``fe80::1%eth0`` → ``fe80::1``); None when it is not an IP."""
    address = address.split("%", 1)[0]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return None
    return address


def ip_addresses() -> list[str]:
    """Every IPv4 and IPv6 address of this host but loopback: the server maps addresses to hosts with
    them, and ``127.0.0.1`` belongs to every host."""
    found: dict[str, None] = {}
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = _plain_ip(address.address)
            if ip and not ipaddress.ip_address(ip).is_loopback:
                found[ip] = None
    return list(found)


def collect_processes(state: ProbeState) -> list[dict[str, Any]]:
    processes, seen = [], {}
    for pid in psutil.pids():
        proc = state.processes.get(pid)
        try:
            known = proc is not None and proc.is_running()  # is_running also catches a reused pid
            if not known:
                proc = psutil.Process(pid)
            entry = process_entry(proc, known)
        except _PROCESS_GONE:
            continue
        seen[pid] = proc
        processes.append(entry)
    state.processes = seen
    return processes


def process_entry(proc: psutil.Process, sampled: bool = True) -> dict[str, Any]:
    """One process as the contract writes it. Fields this probe may not read are left out.

    ``sampled``: ``proc`` has a previous CPU sample (its usage since then is reported); a process seen for
    the first time reports its average since it started instead of psutil's first 0.0.
    """
    entry: dict[str, Any] = {"pid": proc.pid}
    with proc.oneshot():
        entry["ppid"] = proc.ppid()
        entry["name"] = proc.name()
        for key, read in (
            ("cmdline", lambda: " ".join(proc.cmdline())[:CMDLINE_MAX]),
            ("user", proc.username),
            ("cpu_percent", lambda: cpu_percent(proc, sampled)),
            ("memory_rss", lambda: proc.memory_info().rss),
            ("threads", proc.num_threads),
        ):
            try:
                entry[key] = read()
            except _FIELD_DENIED:
                pass
    cgroup = read_cgroup(proc.pid)
    if cgroup is not None:
        entry["cgroup"] = cgroup
    return entry


def cpu_percent(proc: psutil.Process, sampled: bool) -> float:
    if sampled:
        return max(0.0, proc.cpu_percent(interval=None))
    proc.cpu_percent(interval=None)  # the first sample, for the next report
    times = proc.cpu_times()
    lifetime = time.time() - proc.create_time()
    return round(max(0.0, 100.0 * (times.user + times.system) / lifetime), 1) if lifetime > 0 else 0.0


def read_cgroup(pid: int) -> str | None:
    try:
        with open(f"{psutil.PROCFS_PATH}/{pid}/cgroup", encoding="utf-8", errors="replace") as text:
            return text.read().strip()
    except OSError:  # no /proc (not Linux), process gone, or not ours to read
        return None


# Sockets on their way out (TIME_WAIT and the other closing states) have lost their process and often
# their listener: reported, they would show as host-to-host traffic on ports that no longer serve anything.
_LIVE_STATES = {
    psutil.CONN_LISTEN,
    psutil.CONN_ESTABLISHED,
    psutil.CONN_SYN_SENT,
    psutil.CONN_SYN_RECV,
    psutil.CONN_NONE,
}


def collect_connections() -> list[dict[str, Any]]:
    """Every live TCP/UDP socket, listening and connected. A listener's missing remote end is ``""``/``0``."""
    try:
        sockets = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, PermissionError):
        return []
    connections = []
    for sock in sockets:
        protocol = _PROTOCOLS.get((sock.family, sock.type))
        if protocol is None or sock.status not in _LIVE_STATES:
            continue
        entry = {
            "protocol": protocol,
            "local_ip": (_plain_ip(sock.laddr.ip) or "") if sock.laddr else "",
            "local_port": sock.laddr.port if sock.laddr else 0,
            "remote_ip": (_plain_ip(sock.raddr.ip) or "") if sock.raddr else "",
            "remote_port": sock.raddr.port if sock.raddr else 0,
            "state": sock.status,
        }
        if sock.pid is not None:  # None: another user's socket, seen without root
            entry = {"pid": sock.pid, **entry}
        connections.append(entry)
    return connections


def collect_interfaces() -> list[dict[str, Any]]:
    counters = psutil.net_io_counters(pernic=True) or {}
    return [{"name": name, "rx_bytes": c.bytes_recv, "tx_bytes": c.bytes_sent} for name, c in counters.items()]


def collect_containers(
    socket_path: str = DOCKER_SOCKET, *, transport: httpx.BaseTransport | None = None
) -> list[dict[str, Any]] | None:
    """Running containers from the Docker Engine API; None when there is no Docker to ask."""
    return read_docker(socket_path, transport=transport)[0]


def read_docker(
    socket_path: str = DOCKER_SOCKET, *, transport: httpx.BaseTransport | None = None
) -> tuple[list[dict[str, Any]] | None, str]:
    """Running containers (None when there is no Docker to ask) and, for people, what was found."""
    if transport is None:
        if not os.path.exists(socket_path):
            return None, f"not found: no Docker socket at {socket_path}"
        if not os.access(socket_path, os.R_OK | os.W_OK):
            return None, f"not readable: no permission on {socket_path} (run as root or in the docker group)"
        transport = httpx.HTTPTransport(uds=socket_path)
    try:
        with httpx.Client(transport=transport, base_url="http://docker", timeout=5.0) as docker:
            listed = docker.get("/containers/json").raise_for_status().json()
            containers = [container_entry(docker, item) for item in listed if item.get("Id")]
    except (httpx.HTTPError, ValueError, OSError) as exc:
        log.debug("probe.docker_unavailable", error=str(exc))
        return None, f"unavailable: the Docker Engine at {socket_path} did not answer ({exc})"
    return containers, f"found at {socket_path}: {len(containers)} running containers"


def container_entry(docker: httpx.Client, item: dict[str, Any]) -> dict[str, Any]:
    networks = ((item.get("NetworkSettings") or {}).get("Networks") or {}).values()
    ips = [
        ip for net in networks for ip in (net.get("IPAddress"), net.get("GlobalIPv6Address")) if ip and _plain_ip(ip)
    ]
    entry: dict[str, Any] = {
        "id": item["Id"],
        "name": (item.get("Names") or [""])[0].lstrip("/") or item["Id"][:12],
        "image": item.get("Image", ""),
        "state": item.get("State", ""),
        "labels": {str(k): str(v) for k, v in (item.get("Labels") or {}).items()},
        "ip_addresses": list(dict.fromkeys(ips)),
    }
    if isinstance(item.get("Created"), int | float) and item["Created"] >= 0:
        entry["created"] = format_rfc3339(item["Created"])
    try:  # the list does not carry the container's main pid; inspect does
        pid = docker.get(f"/containers/{item['Id']}/json").raise_for_status().json()["State"]["Pid"]
        if isinstance(pid, int) and pid > 0:
            entry["pid"] = pid
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return entry


# --- command line ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="server base URL, e.g. http://localhost:8080")
    parser.add_argument("--agent-id", help="agent id (default: this host's name, sanitised)")
    parser.add_argument("--hostname", help="hostname to report (default: this host's name)")
    parser.add_argument("--token", help="agent token (default: $ORCHESTRATOR_AGENT_TOKEN)")
    parser.add_argument("--once", action="store_true", help="post a single report, print what was sent, exit")
    parser.add_argument("--interval", help="report interval, e.g. 15s (default: the server's)")
    parser.add_argument("--docker-socket", default=DOCKER_SOCKET, help="Docker Engine API socket")
    parser.add_argument(
        "--procfs", default="/proc", help="where the host's /proc is mounted (in a container: e.g. /host/proc)"
    )
    add_log_level(parser)


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="logs go to stderr"
    )


def run(args: argparse.Namespace, *, transport: httpx.AsyncBaseTransport | None = None) -> int:
    """Entry point of ``orchestrator probe``. Exit status 0 on success, 1 on a failure, 2 on bad usage."""
    try:
        check_server_url(args.server)
        interval = parse_duration(args.interval) if getattr(args, "interval", None) else None
        if interval is not None and interval <= 0:
            raise ValueError("must be positive")
    except ServerURLError as exc:
        print(f"orchestrator probe: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"orchestrator probe: --interval {args.interval!r}: {exc}", file=sys.stderr)
        return 2
    procfs = getattr(args, "procfs", "/proc")
    if not os.path.isdir(f"{procfs}/self") and not os.path.isdir(f"{procfs}/1"):
        print(f"orchestrator probe: --procfs {procfs!r}: not a mounted /proc", file=sys.stderr)
        return 2
    psutil.PROCFS_PATH = procfs
    try:
        return asyncio.run(_main(args, interval, transport))
    except KeyboardInterrupt:
        return 0


async def _main(args: argparse.Namespace, interval: float | None, transport) -> int:
    hostname = getattr(args, "hostname", None) or socket.gethostname()
    agent_id = args.agent_id or default_agent_id(hostname)
    token = args.token or os.environ.get("ORCHESTRATOR_AGENT_TOKEN")
    metadata: dict[str, Any] = {"version": __version__}
    if os.environ.get("ORCHESTRATOR_ENVIRONMENT"):
        metadata["environment"] = os.environ["ORCHESTRATOR_ENVIRONMENT"]
    docker_socket = getattr(args, "docker_socket", DOCKER_SOCKET)
    async with make_http(args.server, token=token, transport=transport) as http:
        client = AgentClient(http, agent_id, hostname, metadata=metadata)
        if args.once:
            return await _post_once(client, docker_socket)
        return await _run_forever(client, docker_socket, interval)


async def _post_once(client: AgentClient, docker_socket: str) -> int:
    state = ProbeState()
    report = await asyncio.to_thread(
        collect_report, client.agent_id, client.hostname, state, docker_socket=docker_socket
    )
    try:
        response = await client.post_report(report, max_attempts=3)
    except ServerUnavailable as exc:
        print(f"orchestrator probe: error: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 202:
        print(f"orchestrator probe: error: {ClientError('post report', response)}", file=sys.stderr)
        return 1
    report_id = response.json().get("report_id")
    print(sent_summary(report, state, f"{client.http.base_url} accepted it (report_id {report_id})"))
    return 0


def sent_summary(report: dict[str, Any], state: ProbeState, outcome: str) -> str:
    """What ``--once`` sent, per section, for the person who ran it."""
    lines = [f"report of {report['hostname']} as agent {report['agent_id']}: {outcome}"]
    host = report.get("host_info")
    if host:
        load = " ".join(str(v) for v in host.get("load_avg", []))
        lines.append(
            f"  host_info       cpu {host.get('cpu_percent')}% of {host.get('cpu_count')} cores, "
            f"load average {load}, memory {host.get('memory_percent')}%"
        )
    processes = report.get("processes_info", {}).get("processes")
    if processes is not None:
        busiest = max(processes, key=lambda p: p.get("cpu_percent", 0.0), default=None)
        top = f" (busiest: {busiest['name']} {busiest.get('cpu_percent', 0.0)}%)" if busiest else ""
        lines.append(f"  processes_info  {len(processes)} processes{top}")
    network = report.get("network_info")
    if network:
        connections, interfaces = network.get("connections", []), network.get("interfaces", [])
        lines.append(f"  network_info    {len(connections)} connections, {len(interfaces)} interfaces")
    docker = report.get("docker_info")
    lines.append(
        f"  docker_info     {len(docker['containers'])} containers" if docker else "  docker_info     not sent"
    )
    lines.append(f"  docker          {state.docker}")
    return "\n".join(lines)


async def _run_forever(client: AgentClient, docker_socket: str, interval: float | None) -> int:
    state = ProbeState()

    async def next_report() -> dict[str, Any]:
        # psutil blocks on /proc: read it off the loop so heartbeats keep their time.
        return await asyncio.to_thread(
            collect_report, client.agent_id, client.hostname, state, docker_socket=docker_socket
        )

    task = asyncio.create_task(run_agent(client, next_report, report_interval=interval, stop_on_refusal=True))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    log.info("probe.started", agent_id=client.agent_id, server=str(client.http.base_url))
    try:
        await task
    except asyncio.CancelledError:
        log.info("probe.stopped", agent_id=client.agent_id, **client.stats.as_dict())
        return 0
    except ClientError as exc:
        print(f"orchestrator probe: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0
