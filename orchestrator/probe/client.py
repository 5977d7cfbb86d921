"""The probe side of the v1 contract (``docs/api.md``, "Agents" and "Reports").

Both the real probe (``probe.py``) and the fleet simulator (``simulate.py``) talk to the server through an
``AgentClient``: register, fetch the agent's configuration, heartbeat, post gzip reports. Every request
survives what a long-running agent meets: a server that restarts (connection refused, reset), one that is
overloaded (429/503 with ``Retry-After``) or failing (5xx). Those are retried with capped exponential
backoff and jitter, so a fleet that lost its server does not come back in lockstep. Answers retrying will
not fix (400, 401, 413, 415, 422) are returned to the caller, never retried.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import orjson
import structlog

from orchestrator import __version__
from orchestrator.contract.durations import parse_duration

log = structlog.get_logger()

DEFAULT_REPORT_INTERVAL = 15.0
DEFAULT_HEARTBEAT_INTERVAL = 30.0
ACCEPTED = (200, 201, 202)
RETRY_STATUSES = (429, 503)

Sleep = Callable[[float], Awaitable[Any]]


class ClientError(Exception):
    """The server answered with an error that retrying will not fix (bad token, invalid body, ...)."""

    def __init__(self, action: str, response: httpx.Response):
        self.status = response.status_code
        super().__init__(f"{action}: HTTP {response.status_code}: {error_message(response)}")


class ServerURLError(ValueError):
    """The server's URL cannot work (no http/https scheme, no host): retrying would never help."""


def check_server_url(url: str) -> str:
    """``url`` if a client can use it as the server's base URL, else :class:`ServerURLError` saying why."""
    example = "e.g. http://localhost:8080"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ServerURLError(f"--server {url!r}: not a URL ({exc}); {example}") from None
    if parsed.scheme not in ("http", "https"):
        raise ServerURLError(f"--server {url!r}: must start with http:// or https://; {example}")
    if not parsed.host:
        raise ServerURLError(f"--server {url!r}: has no host; {example}")
    return url


class ServerUnavailable(Exception):
    """The server could not be reached (or stayed overloaded) for the allowed number of attempts."""


@dataclass
class AgentConfig:
    """What ``GET /api/v1/agents/config/{agent_id}`` told this agent, with the contract's defaults."""

    report_interval: float = DEFAULT_REPORT_INTERVAL
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    features: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: Any) -> AgentConfig:
        if not isinstance(body, dict):
            return cls()
        features = body.get("features")
        return cls(
            report_interval=_positive_duration(body.get("report_interval"), DEFAULT_REPORT_INTERVAL),
            heartbeat_interval=_positive_duration(body.get("heartbeat_interval"), DEFAULT_HEARTBEAT_INTERVAL),
            features=features if isinstance(features, dict) else {},
        )


def _positive_duration(text: Any, default: float) -> float:
    # A server bug must not make a probe spin: anything unusable falls back to the default.
    try:
        seconds = parse_duration(text)
    except ValueError:
        return default
    return seconds if seconds > 0 else default


@dataclass
class ClientStats:
    """Counters shared by every client of one probe or simulated fleet."""

    posted: int = 0  # reports handed to the server (each counted once, however many attempts)
    accepted: int = 0
    rejected: int = 0  # answered with a non-retryable error
    retried: int = 0  # attempts repeated after a connection error, 5xx, 429 or 503
    failed: int = 0  # gave up (only when a caller limits attempts)
    heartbeats: int = 0
    registrations: int = 0
    refused: int = 0  # agents the server would not register (bad token, invalid id)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Backoff:
    """Capped exponential backoff with "equal jitter": attempt n waits between half and all of base·2ⁿ."""

    base: float = 0.5
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_message(response: httpx.Response) -> str:
    """The contract's ``error.message`` of a response, else the start of its body."""
    try:
        body = response.json()
        return str(body["error"]["message"])
    except Exception:  # not the contract's error shape: show what came back
        return response.text[:200].replace("\n", " ") or response.reason_phrase


def gzip_body(payload: bytes, level: int = 5) -> bytes:
    # mtime=0: the same report compresses to the same bytes (handy for tests and caches).
    return gzip.compress(payload, compresslevel=level, mtime=0)


def make_http(
    server: str,
    *,
    token: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    max_connections: int = 10,
    timeout: float = 30.0,
) -> httpx.AsyncClient:
    """An HTTP/1.1 keep-alive client for one server, with the agent token when one is given."""
    headers = {"User-Agent": f"orchestrator-probe/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(
        base_url=server.rstrip("/"),
        headers=headers,
        transport=transport,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
    )


class AgentClient:
    """One agent's conversation with the server. ``sleep`` and ``rng`` are injectable for tests."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        agent_id: str,
        hostname: str,
        *,
        metadata: dict[str, Any] | None = None,
        stats: ClientStats | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_retry_after: float = 300.0,
        retry_after_jitter: float = 0.1,
        compresslevel: int = 5,
    ):
        self.http = http
        self.agent_id = agent_id
        self.hostname = hostname
        self.metadata = metadata or {"version": __version__}
        self.stats = stats or ClientStats()
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retry_after = max_retry_after
        self.retry_after_jitter = retry_after_jitter
        self.compresslevel = compresslevel
        # Set when the server could not be reached: once it answers again it may be a new instance
        # that lost its registry, so the agent re-announces itself (``run_agent``).
        self.lost_server = False

    async def register(self, *, max_attempts: int | None = None) -> dict[str, Any]:
        """``POST /api/v1/agents/register``; ClientError when the server refuses."""
        body = {"agent_id": self.agent_id, "hostname": self.hostname, "metadata": self.metadata}
        response = await self.request(
            "POST", "/api/v1/agents/register", content=orjson.dumps(body), max_attempts=max_attempts
        )
        if response.status_code not in (200, 201):
            raise ClientError("register", response)
        self.stats.registrations += 1
        log.info("agent.registered", agent_id=self.agent_id, status=response.status_code)
        return _json_or_empty(response)

    async def fetch_config(self, *, max_attempts: int | None = None) -> AgentConfig:
        """``GET /api/v1/agents/config/{id}``; re-registers once when the server does not know the agent."""
        path = f"/api/v1/agents/config/{self.agent_id}"
        response = await self.request("GET", path, max_attempts=max_attempts)
        if response.status_code == 404:
            await self.register(max_attempts=max_attempts)
            response = await self.request("GET", path, max_attempts=max_attempts)
        if response.status_code == 404:
            log.warning("agent.config_unavailable", agent_id=self.agent_id)
            return AgentConfig()
        if response.status_code != 200:
            raise ClientError("fetch config", response)
        return AgentConfig.from_json(_json_or_empty(response))

    async def heartbeat(self, *, max_attempts: int | None = None) -> None:
        """``POST /api/v1/agents/heartbeat/{id}``; a 404 (server lost us, e.g. restarted) re-registers."""
        response = await self.request("POST", f"/api/v1/agents/heartbeat/{self.agent_id}", max_attempts=max_attempts)
        if response.status_code == 404:
            log.info("agent.unknown_to_server", agent_id=self.agent_id)
            await self.register(max_attempts=max_attempts)
            return
        if response.status_code != 200:
            raise ClientError("heartbeat", response)
        self.stats.heartbeats += 1

    async def post_report(self, report: bytes | dict[str, Any], *, max_attempts: int | None = None) -> httpx.Response:
        """``POST /api/v1/reports`` with a gzip JSON body. Returns the final answer (202 or a refusal)."""
        payload = report if isinstance(report, bytes) else orjson.dumps(report)
        body = gzip_body(payload, self.compresslevel)
        self.stats.posted += 1
        try:
            response = await self.request(
                "POST",
                "/api/v1/reports",
                content=body,
                headers={"Content-Encoding": "gzip"},
                max_attempts=max_attempts,
            )
        except ServerUnavailable:
            self.stats.failed += 1
            raise
        if response.status_code in ACCEPTED:
            self.stats.accepted += 1
        else:
            self.stats.rejected += 1
            log.warning(
                "report.rejected", agent_id=self.agent_id, status=response.status_code, error=error_message(response)
            )
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        max_attempts: int | None = None,
    ) -> httpx.Response:
        """Send until the server gives an answer retrying will not change; ``max_attempts=None`` never gives up."""
        headers = {"Content-Type": "application/json", **(headers or {})} if content is not None else headers
        backoff = Backoff(self.backoff_base, self.backoff_cap, self.rng)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self.http.request(method, path, content=content, headers=headers)
            except httpx.TransportError as exc:  # refused, reset, timed out: the server is away
                failure, delay = f"{type(exc).__name__}: {exc}", backoff.next_delay()
                self.lost_server = True
            else:
                if response.status_code < 500 and response.status_code not in RETRY_STATUSES:
                    return response
                failure, delay = f"HTTP {response.status_code}", self._retry_delay(response, backoff)
            if max_attempts is not None and attempt >= max_attempts:
                raise ServerUnavailable(f"{method} {path}: {failure} (after {attempt} attempts)")
            self.stats.retried += 1
            # Overload answers are routine and a dead server is worth one line, not one per attempt.
            quiet = attempt > 1 or failure in ("HTTP 429", "HTTP 503")
            (log.debug if quiet else log.warning)(
                "agent.retry",
                agent_id=self.agent_id,
                method=method,
                path=path,
                failure=failure,
                attempt=attempt,
                delay=round(delay, 3),
            )
            await self.sleep(delay)

    def _retry_delay(self, response: httpx.Response, backoff: Backoff) -> float:
        wait = None
        if response.status_code in RETRY_STATUSES:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
        if wait is None:
            return backoff.next_delay()
        # Honour the server's wait, spread a little past it so a whole fleet does not return at once.
        wait = min(wait, self.max_retry_after)
        return wait * (1.0 + self.rng.uniform(0.0, self.retry_after_jitter))


def _json_or_empty(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {}


async def heartbeat_loop(client: AgentClient, interval: float, sleep: Sleep = asyncio.sleep) -> None:
    """Heartbeat every ``interval`` seconds until cancelled; refusals are logged, never fatal."""
    while True:
        await sleep(interval)
        try:
            await client.heartbeat()
        except ClientError as exc:
            log.warning("agent.heartbeat_refused", agent_id=client.agent_id, error=str(exc))


async def run_agent(
    client: AgentClient,
    next_report: Callable[[], Awaitable[bytes | dict[str, Any]]],
    *,
    report_interval: float | None = None,
    jitter: float = 0.0,
    initial_delay: float = 0.0,
    rng: random.Random | None = None,
    sleep: Sleep = asyncio.sleep,
    config: AgentConfig | None = None,
    stop_on_refusal: bool = False,
) -> None:
    """Register, fetch the config, then report every interval (±``jitter``) and heartbeat, until cancelled.

    ``report_interval`` overrides the server's; ``config`` skips the fetch when the caller already has it.
    A refused registration (ClientError, e.g. a bad token) ends the loop; with ``stop_on_refusal`` so does a
    refused report (any 4xx but 429: retrying the same probe would be refused again). The simulator keeps
    going instead, as one bad synthetic report should not stop a fleet.
    """
    rng = rng or random.Random()
    await client.register()
    config = config or await client.fetch_config()
    client.lost_server = False
    interval = report_interval or config.report_interval
    beats = asyncio.create_task(heartbeat_loop(client, config.heartbeat_interval, sleep))
    try:
        await sleep(initial_delay)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            response = await client.post_report(await next_report())
            if stop_on_refusal and 400 <= response.status_code < 500:
                raise ClientError("post report", response)
            if client.lost_server:  # back after an outage: maybe a restarted server, re-announce
                client.lost_server = False
                await client.register()
            period = interval * (1.0 + rng.uniform(-jitter, jitter))
            await sleep(max(0.0, period - (loop.time() - started)))
    finally:
        beats.cancel()
        await asyncio.gather(beats, return_exceptions=True)
