"""HTTP plumbing shared by every route: request ids, structured request logs, latency metrics, CORS, auth."""

from __future__ import annotations

import hmac
import os
import re
import time

import orjson
import structlog
from sanic import HTTPResponse, Request, Sanic

from orchestrator.api.compression import setup_compression
from orchestrator.api.connections import GONE
from orchestrator.api.errors import error_response
from orchestrator.api.identity import agent_credential, credentials
from orchestrator.contract.durations import format_duration
from orchestrator.contract.errors import ApiError
from orchestrator.pipeline.decode import decode_body
from orchestrator.runtime.metrics import method_label
from orchestrator.runtime.sampling import LineSampler

log = structlog.get_logger("orchestrator.http")

CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Content-Encoding, X-Request-Id"
AGENT_PATHS = ("/api/v1/agents/", "/api/v1/reports")
READ_PATHS = ("/api/v1/query/", "/api/v1/ws")
WEBSOCKET_PATH = "/api/v1/ws"
# A client's X-Request-Id is kept when it is a plausible id (visible ASCII, at most 128 characters);
# anything else is replaced, so a client cannot put megabytes or control characters into every log line.
_REQUEST_ID = re.compile(r"[!-~]{1,128}")


def setup_http(app: Sanic) -> None:
    app.ctx.agent_credentials = credentials(app.ctx.settings.auth)
    app.register_middleware(_start, "request")
    app.register_middleware(_finish, "response")
    logging = app.ctx.settings.logging
    app.ctx.error_lines = LineSampler(logging.sample_lines, logging.sample_window, _log_left_out)
    app.register_listener(_flush_error_lines, "after_server_stop")
    setup_compression(app)


def _log_left_out(key, suppressed: int, window: float) -> None:
    route, status = key
    level = log.warning if status >= 500 else log.info
    level("requests_not_logged", route=route, status=status, count=suppressed, window=format_duration(window))


async def _flush_error_lines(app: Sanic) -> None:
    app.ctx.error_lines.flush()


def _cors_origin(request: Request) -> str | None:
    allowed = request.app.ctx.settings.server.cors_origins
    if "*" in allowed:
        return "*"
    origin = request.headers.get("origin")
    return origin if origin in allowed else None


def request_id(request: Request) -> str:
    """The client's X-Request-Id when it is a plausible id, else a fresh one."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else os.urandom(8).hex()


async def _start(request: Request):
    request.ctx.started = time.perf_counter()
    request.ctx.request_id = request_id(request)
    # Every line logged while this request is handled (its handler, plugins, the WebSocket feed it opens)
    # carries these; requests on one keep-alive connection run one after another in the connection's task.
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        request_id=request.ctx.request_id,
        method=request.method,
        path=request.path,
        client=request.client_ip,
    )
    if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
        return _preflight(request)
    return check_token(request)


def _preflight(request: Request) -> HTTPResponse:
    headers = {
        "Access-Control-Allow-Methods": CORS_METHODS,
        "Access-Control-Allow-Headers": CORS_HEADERS,
        "Access-Control-Max-Age": "600",
    }
    return HTTPResponse(status=204, headers=headers)


def check_token(request: Request) -> HTTPResponse | None:
    """401 unless the request carries a configured token for its path (open when none are configured).
    An agent token's binding (``api/identity.py``) is kept on the request for the handlers to check."""
    auth = request.app.ctx.settings.auth
    path = request.path
    if path.startswith(AGENT_PATHS):
        kind = "agent"
        if not auth.agent_tokens:
            return None
    elif path.startswith(READ_PATHS):
        kind = "read"
        if not auth.read_tokens:
            return None
    else:
        return None
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not given and path == WEBSOCKET_PATH:
        given = request.args.get("token", "")  # browsers cannot set headers on a WebSocket; REST can
    if kind == "agent":
        credential = agent_credential(given, request.app.ctx.agent_credentials)
        if credential is not None:
            request.ctx.binding = credential.binding
            return None
    else:
        # Compare against every token in constant time, so the answer's timing says nothing about which matched.
        matched = False
        for token in auth.read_tokens:
            matched |= hmac.compare_digest(given.encode(), token.encode())
        if matched:
            return None
    message = f"missing or invalid {kind} token" if given else f"{kind} token required (Authorization: Bearer <token>)"
    return error_response(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


async def _finish(request: Request, response: HTTPResponse) -> None:
    if request.app.ctx.state.shutting_down and hasattr(request.stream, "keep_alive"):
        # Draining: this response ends its connection, so keep-alive clients stop sending on it and the
        # graceful shutdown does not wait out its timeout behind a busy connection.
        request.stream.keep_alive = False
    origin = _cors_origin(request)
    if origin is not None and response is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        if origin != "*":
            response.headers["Vary"] = "Origin"
    started = getattr(request.ctx, "started", None)
    if started is None or response is None:
        return
    duration = time.perf_counter() - started
    route = request.route.path if request.route else "unmatched"
    route = "/" + route.lstrip("/")
    status = response.status
    request.app.ctx.state.metrics.http_duration.labels(method_label(request.method), route, str(status)).observe(
        duration
    )
    response.headers["X-Request-Id"] = request.ctx.request_id
    # A 429 is flow control under overload (counted in app_reports_throttled_total): one line each would flood.
    quiet = (route in QUIET_ROUTES and (status < 400 or status == 429)) or _shed(request)
    level = log.debug if quiet else log.warning if status >= 500 else log.info
    # Refused and failed requests are sampled per route and status (the metric above counts every one).
    if quiet or status < 400 or request.app.ctx.error_lines.admit((route, status)):
        level("request", route=route, status=status, duration_ms=round(duration * 1000, 2))
    structlog.contextvars.clear_contextvars()


def _shed(request: Request) -> bool:
    """The guard cut this request's connection (deadline, cap, body budget): its rate-limited
    ``connections_shed`` line and metric say so, one line per cut would let a flood flood the log."""
    protocol = getattr(request.stream, "protocol", None)
    return getattr(protocol, "phase", None) == GONE


# Probes post and heartbeat every few seconds per host, monitors poll health and metrics: at fleet scale,
# logging each success would drown the log, so those are at debug. Names are Sanic's route paths.
QUIET_ROUTES = frozenset(
    {
        "/api/v1/reports",
        "/api/v1/agents/heartbeat/<agent_id:str>",
        "/api/v1/agents/config/<agent_id:str>",
        "/health",
        "/livez",
        "/readyz",
        "/metrics",
        "/api/v1/ping",
    }
)


def json_body(request: Request, limit: int):
    """The request's JSON body, gzip or not, or a contract error (415 wrong type or encoding, 413 larger
    than ``limit`` once inflated — checked before parsing —, 400 malformed)."""
    body = decode_body(
        request.body or b"",
        request.headers.get("content-type"),
        request.headers.get("content-encoding"),
        limit,
    )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}", code="malformed_json") from None


async def read_body(request: Request, limit: int) -> bytes:
    """A streaming handler's whole body, 413 as soon as it is known to exceed ``limit`` (from its
    Content-Length before reading, or while reading a chunked one). Sanic lifts its own limit for
    streaming handlers; after a refusal it discards the rest under that limit or closes the connection."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > limit:
        raise ApiError(413, f"body is {declared} bytes; the limit is {limit}")
    chunks = []
    size = 0
    while (chunk := await request.stream.read()) is not None:
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
