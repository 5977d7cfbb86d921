"""A deterministic synthetic fleet: realistic v1 reports for any number of hosts, without I/O.

``Fleet(hosts, seed)`` lays out every host once, at construction: its address, services, containers,
processes and the connections between hosts (outbound connections aim at other hosts' real listeners;
the server side of some of them is reported by the target host too, so both ends meet in one edge).
``report(host_index, now)`` then only fills in what varies with time, so it is cheap enough for
benchmarks (~1,000 distinct reports per second per core with the defaults).

Everything is a function of ``(seed, host_index, now)``: numbers that wander (CPU, memory) are drawn per
15-second bucket, counters (network bytes, disk, uptime) grow smoothly and monotonically with ``now``,
and churn -- a cron job that comes and goes, a container that restarts with a new id and new pids, a
short-lived connection's ephemeral port -- follows per-item periods. Two fleets with the same arguments
give byte-identical reports for the same ``now``, whatever order they are asked in.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any

import orjson

from orchestrator.contract.times import format_rfc3339

BUCKET_S = 15.0  # wandering numbers change once per bucket, like a probe reporting every 15 s
BOOTED_BEFORE = 1_700_000_000.0  # hosts booted before this (Nov 2023), so uptime is positive for real clocks
DOCKER_BRIDGE_IP = "172.17.0.1"
CHURN_PID_BASE = 400_000  # pids of restarted processes live above every stable pid
EPHEMERAL_LOW, EPHEMERAL_SPAN = 32768, 28232  # Linux's default ip_local_port_range
MIB = 1 << 20

_V1_CONTROLLERS = (
    "hugetlb",
    "memory",
    "pids",
    "devices",
    "freezer",
    "cpu,cpuacct",
    "blkio",
    "net_cls,net_prio",
    "perf_event",
    "cpuset",
    "rdma",
)


@dataclass(frozen=True)
class _Service:
    """A containerised service: image, port (None: a client only), and its processes (main first)."""

    name: str
    image: str
    port: int | None
    tier: str
    user: str
    threads: int
    rss_mib: int
    commands: tuple[tuple[str, str], ...]  # (name, cmdline); the first is the main process


_SERVICES = (
    _Service(
        "web",
        "nginx:1.25",
        80,
        "frontend",
        "nginx",
        1,
        12,
        (("nginx", "nginx: master process nginx -g daemon off;"), ("nginx", "nginx: worker process")),
    ),
    _Service(
        "api",
        "registry.example.com/shop/api:2.14.1",
        8080,
        "backend",
        "app",
        48,
        640,
        (("java", "java -Xms512m -Xmx1g -XX:+UseG1GC -jar /app/api.jar --server.port=8080"),),
    ),
    _Service(
        "db",
        "postgres:16.2",
        5432,
        "data",
        "postgres",
        1,
        96,
        (
            ("postgres", "postgres"),
            ("postgres", "postgres: checkpointer"),
            ("postgres", "postgres: background writer"),
            ("postgres", "postgres: walwriter"),
            ("postgres", "postgres: autovacuum launcher"),
            ("postgres", "postgres: shop shop 10.1.0.9(43512) idle"),
        ),
    ),
    _Service("cache", "redis:7.2.4", 6379, "data", "redis", 5, 48, (("redis-server", "redis-server *:6379"),)),
    _Service(
        "worker",
        "registry.example.com/shop/worker:2.14.1",
        None,
        "backend",
        "app",
        6,
        180,
        (("celery", "/usr/local/bin/python3 -m celery -A shop worker --concurrency=4 -l info"),),
    ),
    _Service("frontend", "node:20.12-alpine", 3000, "frontend", "node", 11, 120, (("node", "node /app/server.js"),)),
    _Service(
        "queue",
        "rabbitmq:3.13-management",
        5672,
        "data",
        "rabbitmq",
        30,
        210,
        (
            (
                "beam.smp",
                "/opt/erlang/lib/erlang/erts-14.2.5/bin/beam.smp -W w -MBas ageffcbf -MHas ageffcbf "
                "-MBlmbcs 512 -MHlmbcs 512 -MMmcs 30 -pc unicode -P 1048576 -t 5000000 -stbt db "
                "-zdbbl 128000 -sbwt none -sbwtdcpu none -sbwtdio none -- -root /opt/erlang/lib/erlang "
                "-bindir /opt/erlang/lib/erlang/erts-14.2.5/bin -progname erl -- -home /var/lib/rabbitmq",
            ),
            ("epmd", "/opt/erlang/lib/erlang/erts-14.2.5/bin/epmd -daemon"),
            ("erl_child_setup", "erl_child_setup 1048576"),
        ),
    ),
    _Service(
        "search",
        "elasticsearch:8.13.4",
        9200,
        "data",
        "elasticsearch",
        70,
        1400,
        (
            (
                "java",
                "/usr/share/elasticsearch/jdk/bin/java -Xms1g -Xmx1g -XX:+UseG1GC "
                "-Des.path.home=/usr/share/elasticsearch -cp /usr/share/elasticsearch/lib/* "
                "org.elasticsearch.bootstrap.Elasticsearch",
            ),
        ),
    ),
    _Service(
        "metrics",
        "prom/prometheus:v2.51.2",
        9090,
        "ops",
        "nobody",
        14,
        300,
        (
            (
                "prometheus",
                "/bin/prometheus --config.file=/etc/prometheus/prometheus.yml --storage.tsdb.path=/prometheus",
            ),
        ),
    ),
    _Service(
        "memcached", "memcached:1.6.26", 11211, "data", "memcache", 10, 64, (("memcached", "memcached -m 64 -c 1024"),)
    ),
)

# name, cmdline, user, systemd unit (cgroup path), threads, base cpu %, rss MiB. Listener owners come first:
# a host with few processes still has them.
_HOST_SERVICES = (
    ("systemd", "/sbin/init splash", "root", "/init.scope", 1, 0.1, 12),
    ("sshd", "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups", "root", "/system.slice/ssh.service", 1, 0.0, 8),
    (
        "node_exporter",
        "/usr/local/bin/node_exporter --collector.systemd --web.listen-address=:9100",
        "node-exp",
        "/system.slice/node_exporter.service",
        6,
        0.4,
        22,
    ),
    (
        "systemd-resolve",
        "/lib/systemd/systemd-resolved",
        "systemd-resolve",
        "/system.slice/systemd-resolved.service",
        1,
        0.0,
        12,
    ),
    ("chronyd", "/usr/sbin/chronyd -F 1", "_chrony", "/system.slice/chrony.service", 1, 0.0, 3),
    ("containerd", "/usr/bin/containerd", "root", "/system.slice/containerd.service", 14, 0.6, 48),
    (
        "dockerd",
        "/usr/bin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock",
        "root",
        "/system.slice/docker.service",
        22,
        0.8,
        92,
    ),
    (
        "orchestrator",
        "/usr/local/bin/orchestrator probe --server http://orchestrator.internal:8080",
        "root",
        "/system.slice/orchestrator-probe.service",
        4,
        1.2,
        64,
    ),
    ("kthreadd", "", "root", "/", 1, 0.0, 0),
    ("systemd-journal", "/lib/systemd/systemd-journald", "root", "/system.slice/systemd-journald.service", 1, 0.2, 40),
    ("systemd-udevd", "/lib/systemd/systemd-udevd", "root", "/system.slice/systemd-udevd.service", 1, 0.0, 8),
    (
        "systemd-network",
        "/lib/systemd/systemd-networkd",
        "systemd-network",
        "/system.slice/systemd-networkd.service",
        1,
        0.0,
        9,
    ),
    ("cron", "/usr/sbin/cron -f -P", "root", "/system.slice/cron.service", 1, 0.0, 3),
    (
        "dbus-daemon",
        "@dbus-daemon --system --address=systemd: --nofork --nopidfile --systemd-activation --syslog-only",
        "messagebus",
        "/system.slice/dbus.service",
        1,
        0.0,
        5,
    ),
    ("rsyslogd", "/usr/sbin/rsyslogd -n -iNONE", "syslog", "/system.slice/rsyslog.service", 4, 0.0, 6),
    ("polkitd", "/usr/libexec/polkitd --no-debug", "polkitd", "/system.slice/polkit.service", 3, 0.0, 8),
    ("agetty", "/sbin/agetty -o -p -- \\u --noclear - linux", "root", "/system.slice/getty@tty1.service", 1, 0.0, 2),
)
# Processes that come and go: (name, cmdline, user, cgroup path).
_TRANSIENT = (
    ("cron", "/usr/sbin/CRON -f -P", "root", "/system.slice/cron.service"),
    ("sh", "/bin/sh -c /usr/local/bin/backup.sh >> /var/log/backup.log 2>&1", "root", "/system.slice/cron.service"),
    ("sshd", "sshd: deploy [priv]", "root", "/user.slice/user-1000.slice/session-{n}.scope"),
    ("bash", "-bash", "deploy", "/user.slice/user-1000.slice/session-{n}.scope"),
    ("python3", "python3 /opt/jobs/nightly_report.py --since 24h", "deploy", "/system.slice/cron.service"),
    ("sleep", "sleep 300", "deploy", "/user.slice/user-1000.slice/session-{n}.scope"),
    ("apt-get", "apt-get -qq update", "root", "/system.slice/apt-daily.service"),
)
_PLATFORMS = (
    ("ubuntu 22.04", "5.15.0-105-generic"),
    ("ubuntu 24.04", "6.8.0-31-generic"),
    ("debian 12", "6.1.0-21-amd64"),
    ("rocky 9.3", "5.14.0-362.24.1.el9_3.x86_64"),
    ("amzn 2023", "6.1.84-99.169.amzn2023.x86_64"),
)
_V1_PLATFORMS = (("ubuntu 20.04", "5.4.0-176-generic"), ("centos 7", "3.10.0-1160.118.1.el7.x86_64"))
# Public endpoints (CDNs, package mirrors, APIs) and the ports they are reached on.
_EXTERNAL = (
    ("93.184.216.{}", 443),
    ("151.101.{}.{}", 443),
    ("140.82.112.{}", 443),
    ("13.107.42.{}", 443),
    ("34.120.{}.{}", 443),
    ("52.95.{}.{}", 443),
    ("104.16.{}.{}", 80),
    ("185.125.190.{}", 80),
)
_EXTERNAL_DNS = "169.254.169.253"  # the cloud's resolver: link-local, never a fleet host


class _Proc:
    __slots__ = (
        "cgroup",
        "cmdline",
        "container",
        "cpu",
        "gaps",
        "name",
        "parent",
        "period",
        "phase",
        "pid",
        "ppid",
        "rss",
        "slot",
        "threads",
        "user",
    )

    def __init__(self, **fields: Any):
        self.pid = self.parent = self.container = self.period = None
        self.ppid, self.phase, self.gaps, self.cgroup = 1, 0.0, False, ""
        for key, value in fields.items():
            setattr(self, key, value)


class _Container:
    __slots__ = ("ids", "image", "ips", "labels", "main", "name", "period", "phase", "seed_key", "started")

    def __init__(self, **fields: Any):
        self.period, self.phase, self.main, self.ids = None, 0.0, None, {}
        for key, value in fields.items():
            setattr(self, key, value)


class _Conn:
    """A socket. ``local_port``/``remote_port`` None means ephemeral: our own, or the peer's (``peer``)."""

    __slots__ = (
        "local_ip",
        "local_port",
        "owner",
        "peer",
        "period",
        "phase",
        "protocol",
        "remote_ip",
        "remote_port",
        "salt",
        "state",
    )

    def __init__(self, **fields: Any):
        self.owner = self.local_port = self.remote_port = self.period = self.peer = None
        self.protocol, self.remote_ip, self.state, self.phase, self.salt = "tcp", "", "ESTABLISHED", 0.0, 0
        for key, value in fields.items():
            setattr(self, key, value)

    def ephemeral_port(self, now: float) -> int:
        generation = int((now + self.phase) // self.period) if self.period else 0
        return EPHEMERAL_LOW + (self.salt + generation * 7919) % EPHEMERAL_SPAN


@dataclass
class _Host:
    index: int
    agent_id: str
    ip: str
    key: int  # seeds the per-bucket generator
    cgroup_v1: bool
    static_info: dict[str, Any]
    boot: float
    cpu: float
    memory_fraction: float
    rates: tuple[float, float, float, float]  # eth0 rx/tx, lo, docker0 bytes per second
    disk_used: float
    disk_rate: float
    containers: list[_Container]
    processes: list[_Proc]
    connections: list[_Conn]
    listeners: list[tuple[str, int, int]]  # (ip, port, owner slot) reachable from other hosts


def host_ip(index: int) -> str:
    """``10.a.b.c``, unique per host index (16 million of them), never a network or broadcast address."""
    c, rest = index % 254 + 1, index // 254
    return f"10.{rest // 256 % 255 + 1}.{rest % 256}.{c}"


def _container_ip(k: int) -> str:
    n = k + 2  # .1 is the bridge itself
    return f"172.17.{n // 256}.{n % 256}"


def _cgroup_text(path: str, v1: bool) -> str:
    if not v1:
        return f"0::{path}"
    # cgroup v1 hosts (older distributions) list one line per controller, plus the empty v2 hierarchy.
    lines = [f"{12 - i}:{ctl}:{path}" for i, ctl in enumerate(_V1_CONTROLLERS)]
    lines[-1] = "2:rdma:/"
    lines.append(f"1:name=systemd:{path}")
    lines.append("0::/")
    return "\n".join(lines)


class Fleet:
    """``hosts`` synthetic hosts; ``report(i, now)`` is host ``i``'s v1 report at epoch ``now``."""

    def __init__(self, hosts: int, seed: int = 0, containers: int = 10, processes: int = 100, connections: int = 200):
        if hosts < 1 or min(containers, processes, connections) < 0:
            raise ValueError("hosts must be at least 1; containers, processes and connections not negative")
        self.hosts, self.seed = hosts, seed
        self._pid_stride = max(1024, processes)
        self.containers, self.processes, self.connections = containers, processes, connections
        self._hosts = [self._lay_out_host(i) for i in range(hosts)]
        incoming: list[list[tuple[_Conn, str]]] = [[] for _ in range(hosts)]
        for host in self._hosts:
            self._connect_out(host, incoming)
        for host in self._hosts:
            self._connect_in_and_out_of_fleet(host, incoming[host.index])

    # --- what callers use -------------------------------------------------------------------------------

    def agent_id(self, host_index: int) -> str:
        return f"sim-host-{host_index}"

    def host_ip(self, host_index: int) -> str:
        return self._hosts[host_index].ip

    def listeners(self, host_index: int) -> list[tuple[str, int]]:
        """The (address, port) pairs other hosts connect to on this host."""
        return [(ip, port) for ip, port, _ in self._hosts[host_index].listeners]

    def report_bytes(self, host_index: int, now: float) -> bytes:
        return orjson.dumps(self.report(host_index, now))

    def report(self, host_index: int, now: float) -> dict[str, Any]:
        host = self._hosts[host_index]
        rng = random.Random(host.key * 1_000_003 + int(now // BUCKET_S))
        t = max(0.0, now - host.boot)
        container_ids = [self._container_generation(c, now, host.cgroup_v1) for c in host.containers]
        pids = [self._pid(p, now) for p in host.processes]
        processes, usage = self._processes(host, pids, container_ids, rng)
        return {
            "agent_id": host.agent_id,
            "hostname": host.agent_id,
            "timestamp": format_rfc3339(now),
            "host_info": self._host_info(host, t, rng),
            "docker_info": {"containers": self._containers(host, pids, container_ids, usage)},
            "processes_info": {"processes": processes},
            "network_info": {
                "connections": self._connections(host, pids, now),
                "interfaces": self._interfaces(host, t),
            },
        }

    # --- per call: only what varies -----------------------------------------------------------------------

    @staticmethod
    def _container_generation(container: _Container, now: float, v1: bool) -> tuple[str, str, str]:
        """(id, created, cgroup text of its processes) of the incarnation at ``now``; a restart is a new id."""
        generation = int((now + container.phase) // container.period) if container.period else 0
        found = container.ids.get(generation)
        if found is None:
            if len(container.ids) > 8:
                container.ids.clear()
            digest = hashlib.sha256(f"{container.seed_key}:{generation}".encode()).hexdigest()
            started = generation * container.period - container.phase if container.period else container.started
            # v2 hosts use Docker's systemd cgroup driver, v1 hosts the older cgroupfs one.
            path = f"/docker/{digest}" if v1 else f"/system.slice/docker-{digest}.scope"
            found = container.ids[generation] = (digest, format_rfc3339(max(0.0, started)), _cgroup_text(path, v1))
        return found

    def _pid(self, proc: _Proc, now: float) -> int | None:
        """A stable process keeps its pid; one that restarts (alone or with its container) gets a new one."""
        if proc.period is None:
            return proc.pid
        generation = int((now + proc.phase) // proc.period)
        if proc.gaps and generation % 3 == 2:  # gone for a while, back later as a new process
            return None
        # Unique within the host: slots never share a residue, stable pids stay below the base.
        return CHURN_PID_BASE + (generation % 1000) * self._pid_stride + proc.slot

    def _processes(self, host: _Host, pids: list[int | None], container_ids: list, rng: random.Random):
        rnd, out = rng.random, []
        usage = [[0.0, 0] for _ in host.containers]
        for proc, pid in zip(host.processes, pids):
            if pid is None:
                continue
            cpu = round(proc.cpu * (0.4 + 1.2 * rnd()), 1)
            rss = proc.rss + int(proc.rss * 0.2 * rnd())
            if proc.container is None:
                cgroup = proc.cgroup
            else:
                cgroup = container_ids[proc.container][2]
                usage[proc.container][0] += cpu
                usage[proc.container][1] += rss
            out.append(
                {
                    "pid": pid,
                    "ppid": pids[proc.parent] or 1 if proc.parent is not None else proc.ppid,
                    "name": proc.name,
                    "cmdline": proc.cmdline,
                    "user": proc.user,
                    "cpu_percent": cpu,
                    "memory_rss": rss,
                    "threads": proc.threads,
                    "cgroup": cgroup,
                }
            )
        return out, usage

    @staticmethod
    def _containers(host: _Host, pids: list, container_ids: list, usage: list) -> list[dict[str, Any]]:
        out = []
        for container, (cid, created, _), (cpu, rss) in zip(host.containers, container_ids, usage):
            entry = {
                "id": cid,
                "name": container.name,
                "image": container.image,
                "state": "running",
                "created": created,
                "labels": dict(container.labels),
                "ip_addresses": list(container.ips),
                "cpu_percent": round(cpu, 1),
                "memory_usage": int(rss * 1.15) + 4 * MIB,
            }
            if container.main is not None and pids[container.main] is not None:
                entry["pid"] = pids[container.main]
            out.append(entry)
        return out

    @staticmethod
    def _counter(rate: float, t: float) -> int:
        # Grows at ``rate`` on average with a slow wobble that never makes it shrink (|wobble'| < rate).
        return int(rate * t + rate * 120.0 * (1.0 + math.sin(t / 300.0)))

    def _host_info(self, host: _Host, t: float, rng: random.Random) -> dict[str, Any]:
        info = dict(host.static_info)
        rx, tx, lo, bridge = host.rates
        memory_total = info["memory_total"]
        fraction = min(0.97, host.memory_fraction * (0.9 + 0.2 * rng.random()))
        cpu = min(100.0, host.cpu * (0.5 + rng.random()))
        load = cpu / 100.0 * info["cpu_count"]
        info.update(
            uptime_s=float(int(t)),
            cpu_percent=round(cpu, 1),
            load_avg=[round(load * (0.8 + 0.4 * rng.random()), 2), round(load, 2), round(load * 0.95, 2)],
            memory_used=int(memory_total * fraction),
            memory_percent=round(fraction * 100.0, 1),
            disk_used=int(min(info["disk_total"] * 0.95, host.disk_used + host.disk_rate * t)),
            net_rx_bytes=self._counter(rx, t) + self._counter(lo, t) + self._counter(bridge, t),
            net_tx_bytes=self._counter(tx, t) + self._counter(lo, t) + self._counter(bridge * 0.8, t),
            ip_addresses=[host.ip, DOCKER_BRIDGE_IP],
        )
        return info

    def _interfaces(self, host: _Host, t: float) -> list[dict[str, Any]]:
        rx, tx, lo, bridge = host.rates
        counter = self._counter
        return [
            {"name": "lo", "rx_bytes": counter(lo, t), "tx_bytes": counter(lo, t)},
            {"name": "eth0", "rx_bytes": counter(rx, t), "tx_bytes": counter(tx, t)},
            {"name": "docker0", "rx_bytes": counter(bridge, t), "tx_bytes": counter(bridge * 0.8, t)},
        ]

    @staticmethod
    def _connections(host: _Host, pids: list[int | None], now: float) -> list[dict[str, Any]]:
        out = []
        for conn in host.connections:
            entry = {
                "protocol": conn.protocol,
                "local_ip": conn.local_ip,
                "local_port": conn.local_port if conn.local_port is not None else conn.ephemeral_port(now),
                "remote_ip": conn.remote_ip,
                "remote_port": conn.remote_port if conn.remote_port is not None else conn.peer.ephemeral_port(now),
                "state": conn.state,
            }
            if conn.owner is not None:
                entry["pid"] = pids[conn.owner]
            out.append(entry)
        return out

    # --- construction: the layout of each host --------------------------------------------------------------

    def _lay_out_host(self, index: int) -> _Host:
        rng = random.Random(f"fleet:{self.seed}:{index}")
        v1 = rng.random() < 0.25
        platform_name, kernel = rng.choice(_V1_PLATFORMS if v1 else _PLATFORMS)
        cpu_count = rng.choice((2, 4, 4, 8, 8, 16, 32))
        static_info = {
            "os": "linux",
            "platform": platform_name,
            "kernel": kernel,
            "cpu_count": cpu_count,
            "memory_total": cpu_count * rng.choice((2, 4, 8)) * 1024 * MIB,
            "disk_total": rng.choice((50, 100, 200, 500, 1000)) * 1_000_000_000,
        }
        host = _Host(
            index=index,
            agent_id=self.agent_id(index),
            ip=host_ip(index),
            key=int(hashlib.sha256(f"{self.seed}:{index}".encode()).hexdigest()[:15], 16),
            cgroup_v1=v1,
            static_info=static_info,
            boot=BOOTED_BEFORE - rng.uniform(86_400, 90 * 86_400),
            cpu=rng.uniform(3.0, 55.0),
            memory_fraction=rng.uniform(0.2, 0.75),
            rates=(rng.uniform(2e4, 5e6), rng.uniform(1e4, 3e6), rng.uniform(1e3, 2e5), rng.uniform(1e3, 1e6)),
            disk_used=static_info["disk_total"] * rng.uniform(0.1, 0.6),
            disk_rate=rng.uniform(10, 5000),
            containers=[],
            processes=[],
            connections=[],
            listeners=[],
        )
        self._lay_out_containers(host, rng)
        self._lay_out_processes(host, rng)
        self._lay_out_listeners(host, rng)
        return host

    def _lay_out_containers(self, host: _Host, rng: random.Random) -> None:
        project = rng.choice(("shop", "billing", "search", "auth", "ledger", "media"))
        offset = rng.randrange(len(_SERVICES))
        for k in range(self.containers):
            service = _SERVICES[(offset + k) % len(_SERVICES)]
            replica = (offset + k) // len(_SERVICES) + 1
            restarts = rng.random() < 0.2  # a crash-looping or redeployed container gets a new id each period
            host.containers.append(
                _Container(
                    name=f"{project}-{service.name}-{replica}",
                    image=service.image,
                    labels={
                        "com.docker.compose.project": project,
                        "com.docker.compose.service": service.name,
                        "app": service.name,
                        "tier": service.tier,
                    },
                    ips=[_container_ip(k)],
                    period=rng.uniform(1800, 4 * 3600) if restarts else None,
                    phase=rng.uniform(0, 4 * 3600),
                    started=host.boot + rng.uniform(60, 86_400),
                    seed_key=f"{self.seed}:{host.index}:{k}",
                )
            )

    def _lay_out_processes(self, host: _Host, rng: random.Random) -> None:
        in_containers = self.processes // 2 if self.containers else 0
        host_quota = self.processes - in_containers
        procs = host.processes
        last_pid = 300  # the kernel's own threads take the first few hundred

        def add(**fields: Any) -> int:
            nonlocal last_pid
            proc = _Proc(slot=len(procs), **fields)
            if proc.pid is None and proc.period is None:
                last_pid += rng.randint(1, 60)
                proc.pid = last_pid
            procs.append(proc)
            return proc.slot

        def host_proc(name, cmdline, user, unit, threads, cpu, rss_mib, **extra) -> int:
            return add(
                name=name,
                cmdline=cmdline,
                user=user,
                cgroup=_cgroup_text(unit, host.cgroup_v1),
                threads=threads,
                cpu=cpu * rng.uniform(0.5, 2.0),
                rss=int(rss_mib * MIB * rng.uniform(0.7, 1.4)),
                ppid=0 if name in ("systemd", "kthreadd") else 1,
                **extra,
            )

        shims = []
        for spec in _HOST_SERVICES[:host_quota]:
            host_proc(*spec, pid={"systemd": 1, "kthreadd": 2}.get(spec[0]))
        for _ in range(min(self.containers, max(0, host_quota - len(procs)))):
            shims.append(
                host_proc(
                    "containerd-shim",
                    "/usr/bin/containerd-shim-runc-v2 -namespace moby -address /run/containerd/containerd.sock",
                    "root",
                    "/system.slice/containerd.service",
                    11,
                    0.05,
                    9,
                )
            )
        for n in range(max(0, min(host_quota // 10, host_quota - len(procs)))):
            name, cmdline, user, unit = _TRANSIENT[n % len(_TRANSIENT)]
            unit = unit.format(n=rng.randint(1, 400))
            host_proc(
                name,
                cmdline,
                user,
                unit,
                1,
                0.5,
                4,
                period=rng.uniform(300, 2400),
                phase=rng.uniform(0, 2400),
                gaps=True,
            )
        for n in range(max(0, host_quota - len(procs))):  # kernel threads fill the rest, as on a real host
            worker = ("kworker/{}:{}", "ksoftirqd/{}", "migration/{}", "rcu_gp", "kworker/u{}:{}")[n % 5]
            name = worker.format(n % host.static_info["cpu_count"], n // 5)
            add(
                name=name,
                cmdline="",
                user="root",
                cgroup=_cgroup_text("/", host.cgroup_v1),
                threads=1,
                cpu=0.0,
                rss=0,
                ppid=2,
                pid=3 + n if n < 290 else None,
            )
        self._lay_out_container_processes(host, rng, in_containers, shims)

    def _lay_out_container_processes(self, host: _Host, rng: random.Random, count: int, shims: list[int]) -> None:
        procs = host.processes
        next_pid = max((p.pid for p in procs if p.pid), default=1) + 1000
        members: list[list[int]] = [[] for _ in host.containers]
        for n in range(count):
            k = n % len(host.containers)
            container = host.containers[k]
            service = next(s for s in _SERVICES if s.image == container.image)
            name, cmdline = service.commands[min(len(members[k]), len(service.commands) - 1)]
            main = members[k][0] if members[k] else None
            next_pid += rng.randint(1, 300)
            proc = _Proc(
                slot=len(procs),
                pid=next_pid,
                name=name,
                cmdline=cmdline,
                user="root" if main is None and service.name == "web" else service.user,
                threads=service.threads if main is None else max(1, service.threads // 4),
                cpu=rng.uniform(0.2, 12.0) if main is None else rng.uniform(0.0, 3.0),
                rss=int(service.rss_mib * MIB * rng.uniform(0.6, 1.3) / (1 if main is None else 3)),
                container=k,
                period=container.period,
                phase=container.phase,
            )
            if main is None:
                proc.parent, proc.ppid = (shims[k] if k < len(shims) else None), 1
                container.main = proc.slot
            else:
                proc.parent = main
            members[k].append(proc.slot)
            procs.append(proc)

    def _lay_out_listeners(self, host: _Host, rng: random.Random) -> None:
        by_name = {p.name: p.slot for p in host.processes if p.container is None and not p.gaps}
        conns, ip = host.connections, host.ip

        def listen(owner_name: str | int, protocol: str, local_ip: str, port: int, exposed: bool) -> None:
            owner = by_name.get(owner_name) if isinstance(owner_name, str) else owner_name
            if owner is None or len(conns) >= self.connections:
                return
            state = "LISTEN" if protocol.startswith("tcp") else "NONE"
            conns.append(
                _Conn(owner=owner, protocol=protocol, local_ip=local_ip, local_port=port, remote_port=0, state=state)
            )
            if exposed:
                host.listeners.append((local_ip if local_ip != "0.0.0.0" else ip, port, owner))

        listen("sshd", "tcp", "0.0.0.0", 22, True)
        listen("sshd", "tcp6", "::", 22, False)
        listen("node_exporter", "tcp", ip, 9100, True)
        listen("systemd-resolve", "tcp", "127.0.0.53", 53, False)
        listen("systemd-resolve", "udp", "127.0.0.53", 53, False)
        listen("chronyd", "udp", "127.0.0.1", 323, False)
        exposed = 0
        for container in host.containers:
            service = next(s for s in _SERVICES if s.image == container.image)
            if service.port is None or container.main is None or exposed >= 4:
                continue
            exposed += 1
            bind = "0.0.0.0" if rng.random() < 0.7 else ip
            listen(container.main, "tcp", bind, service.port, True)
            if service.name == "web":
                listen(container.main, "tcp", bind, 443, True)

    # --- construction: connections between hosts and to the outside -----------------------------------------

    def _clients(self, host: _Host) -> list[int]:
        """Processes that open connections: never one that comes and goes, never a kernel thread."""
        return [p.slot for p in host.processes if not p.gaps and p.rss > 0 and p.name != "systemd"]

    def _connect_out(self, host: _Host, incoming: list[list[tuple[_Conn, str]]]) -> None:
        rng = random.Random(f"fleet-out:{self.seed}:{host.index}")
        clients = self._clients(host)
        if not clients or self.hosts < 2:
            return
        for _ in range(int(self.connections * 0.55)):
            if len(host.connections) >= self.connections:
                break
            other = rng.randrange(self.hosts - 1)
            target = self._hosts[other + 1 if other >= host.index else other]
            if not target.listeners:  # a host with too few processes to run a service
                continue
            remote_ip, remote_port, _ = target.listeners[rng.randrange(len(target.listeners))]
            conn = _Conn(
                owner=rng.choice(clients),
                local_ip=host.ip,
                remote_ip=remote_ip,
                remote_port=remote_port,
                salt=rng.randrange(1 << 30),
                phase=rng.uniform(0, 3600),
                period=rng.uniform(60, 900) if rng.random() < 0.5 else None,
            )
            host.connections.append(conn)
            incoming[target.index].append((conn, host.ip))

    def _connect_in_and_out_of_fleet(self, host: _Host, incoming: list[tuple[_Conn, str]]) -> None:
        rng = random.Random(f"fleet-in:{self.seed}:{host.index}")
        conns = host.connections
        listening = {(ip, port): owner for ip, port, owner in host.listeners}
        quota = int(self.connections * 0.15)
        for peer, peer_ip in rng.sample(incoming, min(quota, len(incoming))):  # the server side of a connection
            if len(conns) >= self.connections:
                return
            conns.append(
                _Conn(
                    owner=listening[(peer.remote_ip, peer.remote_port)],
                    local_ip=peer.remote_ip,
                    local_port=peer.remote_port,
                    remote_ip=peer_ip,
                    peer=peer,
                )
            )
        clients = self._clients(host)
        # Reachable over loopback: tcp listeners on the wildcard (via 127.0.0.1) or on a loopback address.
        loopback = [
            ("127.0.0.1" if c.local_ip == "0.0.0.0" else c.local_ip, c.local_port, c.owner)
            for c in conns
            if c.state == "LISTEN" and c.local_ip in ("0.0.0.0", "127.0.0.53")
        ]
        for _ in range(int(self.connections * 0.05) if loopback and clients else 0):
            if len(conns) + 2 > self.connections:
                break
            address, port, owner = rng.choice(loopback)
            client = _Conn(
                owner=rng.choice(clients),
                local_ip="127.0.0.1",
                remote_ip=address,
                remote_port=port,
                salt=rng.randrange(1 << 30),
                phase=rng.uniform(0, 3600),
                period=rng.uniform(60, 600),
            )
            conns.append(client)
            conns.append(_Conn(owner=owner, local_ip=address, local_port=port, remote_ip="127.0.0.1", peer=client))
        while len(conns) < self.connections:
            conns.append(self._external(host, rng, clients))

    def _external(self, host: _Host, rng: random.Random, clients: list[int]) -> _Conn:
        pattern, port = rng.choice(_EXTERNAL)
        remote_ip = pattern.format(*(rng.randint(1, 254) for _ in range(pattern.count("{}"))))
        owner = rng.choice(clients) if clients else None
        local_ip = host.ip
        if owner is not None and host.processes[owner].container is not None:
            local_ip = host.containers[host.processes[owner].container].ips[0]  # NATed out of the bridge
        roll = rng.random()
        if roll < 0.08:
            return _Conn(
                owner=owner,
                protocol="udp",
                local_ip=local_ip,
                remote_ip=_EXTERNAL_DNS,
                remote_port=53,
                state="NONE",
                salt=rng.randrange(1 << 30),
                period=60.0,
                phase=rng.uniform(0, 60),
            )
        if roll < 0.18:  # closed by us, lingering in the kernel: no process owns it any more
            return _Conn(
                local_ip=local_ip,
                remote_ip=remote_ip,
                remote_port=port,
                state="TIME_WAIT",
                salt=rng.randrange(1 << 30),
                period=60.0,
                phase=rng.uniform(0, 60),
            )
        return _Conn(
            owner=owner,
            local_ip=local_ip,
            remote_ip=remote_ip,
            remote_port=port,
            salt=rng.randrange(1 << 30),
            phase=rng.uniform(0, 3600),
            period=rng.uniform(30, 600) if rng.random() < 0.7 else None,
        )
