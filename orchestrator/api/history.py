"""History queries: the topology as of a time (``/topology?at=``, answered here for the query blueprint),
what changed between two times, one node's timeline. The history itself is :mod:`orchestrator.state.history`."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import unquote

import orjson
from sanic import Blueprint, HTTPResponse, Request

from orchestrator.contract.errors import ApiError
from orchestrator.contract.times import format_rfc3339, parse_rfc3339
from orchestrator.state.history import HistoryUnavailable, UnknownNode, encode_sections, filter_host, topology_json
from orchestrator.topology import EXTERNALS
from orchestrator.topology.views import LEVELS

bp = Blueprint("history", url_prefix="/api/v1/query")

MAX_AHEAD_SECONDS = 300.0  # a time further ahead of the server's clock than this is a mistake


def _raw_json(body: bytes) -> HTTPResponse:
    return HTTPResponse(body, status=200, content_type="application/json")


def time_param(request: Request, name: str, now: float, default: float | None = None) -> float | None:
    """An RFC 3339 query parameter: 400 when it is not a time or more than 5 minutes ahead of ``now``."""
    text = request.args.get(name)
    if text is None:
        return default
    try:
        value = parse_rfc3339(text)
    except ValueError as exc:
        raise ApiError(400, f"{name}={text!r}: {exc}", code="bad_parameter") from None
    if value > now + MAX_AHEAD_SECONDS:
        raise ApiError(400, f"{name}={text!r} is more than 5 minutes ahead of the server's clock", code="bad_parameter")
    return value


def view_params(request: Request) -> tuple[str, str, str | None]:
    """``level``, ``external`` and ``host``, as the live topology takes them."""
    level = request.args.get("level", "process")
    if level not in LEVELS:
        raise ApiError(400, f"level must be one of {', '.join(LEVELS)}; got {level!r}", code="bad_parameter")
    external = request.args.get("external", "each")
    if external not in EXTERNALS:
        raise ApiError(400, f"external must be one of {', '.join(EXTERNALS)}; got {external!r}", code="bad_parameter")
    return level, external, request.args.get("host") or None


def _history(request: Request):
    history = request.app.ctx.state.history
    if history is None:
        raise ApiError(404, "history is turned off (history.enabled: false)", code="history_unavailable")
    return history


def _unavailable(exc: HistoryUnavailable) -> ApiError:
    if exc.oldest is None:
        return ApiError(404, "no history is held yet", code="history_unavailable")
    return ApiError(
        404,
        f"history before {exc.oldest} is not held; the oldest time that can be asked for is {exc.oldest}",
        code="history_unavailable",
    )


async def topology_at(request: Request, level: str, host: str | None, external: str) -> HTTPResponse | None:
    """``GET /api/v1/query/topology?at=T``; None when ``at`` is at or after the latest publication (the
    live topology answers)."""
    history = _history(request)
    at = time_param(request, "at", time.time())
    # The live version's time too: history records a publication in steps after it is published, so for a
    # few milliseconds its latest is the one before (a time between the two is that one's, not the live's).
    live = parse_rfc3339(request.app.ctx.state.topology.timestamp)
    if history.latest is not None and at >= max(history.latest.ts, live):
        return None
    try:
        if host is None:
            return _raw_json(await history.topology_at_json(at, level, external))
        snapshot = await history.topology_at(at, level, external)
    except HistoryUnavailable as exc:
        raise _unavailable(exc) from None
    return _raw_json(await asyncio.to_thread(_topology_body, snapshot, host))


def _topology_body(snapshot: dict, host: str) -> bytes:
    """``{"topology": snapshot}`` filtered to ``host``, with sorted keys, as the live answer is (in a worker
    thread, encoded in parts so that the loop gets the GIL between them)."""
    sections = encode_sections(*filter_host(snapshot["nodes"], snapshot["edges"], host))
    return topology_json(sections, snapshot["seq"], snapshot["timestamp"])


@bp.get("/changes")
async def changes(request: Request) -> HTTPResponse:
    history = _history(request)
    now = time.time()
    level, external, host = view_params(request)
    if request.args.get("from") is None:
        raise ApiError(400, "from is required: the RFC 3339 time to compare with", code="bad_parameter")
    start = time_param(request, "from", now)
    end = time_param(request, "to", now, default=now)
    if start > end:
        raise ApiError(400, "from must not be after to", code="bad_parameter")
    try:
        net = await history.changes(start, end, level, external)
    except HistoryUnavailable as exc:
        raise _unavailable(exc) from None
    return _raw_json(await asyncio.to_thread(_changes_body, net, start, end, host))


def _changes_body(net: dict, start: float, end: float, host: str | None) -> bytes:
    """The ``changes`` answer: the net id sets with their bodies (in a worker thread, as for ``at=``)."""
    before, after = net["before"], net["after"]
    if host is not None:
        before, after = filter_host(*before, host), filter_host(*after, host)
    body = {"from": format_rfc3339(start), "to": format_rfc3339(end), "from_seq": net["from_seq"]}
    body["to_seq"] = net["to_seq"]
    for index, section in enumerate(("nodes", "edges")):
        old, new = before[index], after[index]
        ids = net[section]
        body[section] = {
            "added": {item_id: new[item_id] for item_id in ids["added"] if item_id in new},
            "removed": {item_id: old[item_id] for item_id in ids["removed"] if item_id in old},
            "updated": {item_id: new[item_id] for item_id in ids["updated"] if item_id in new and item_id in old},
        }
        if host is not None:  # a node that moved into or out of the host enters or leaves the filtered view
            for item_id in ids["updated"]:
                if item_id in new and item_id not in old:
                    body[section]["added"][item_id] = new[item_id]
                elif item_id in old and item_id not in new:
                    body[section]["removed"][item_id] = old[item_id]
    return orjson.dumps(body)


@bp.get("/nodes/<node_id:str>/history")
async def node_history(request: Request, node_id: str) -> HTTPResponse:
    history = _history(request)
    node_id = unquote(node_id)  # ids contain ":", sent URL-encoded
    now = time.time()
    start = time_param(request, "from", now)
    end = time_param(request, "to", now, default=now)
    if start is not None and start > end:
        raise ApiError(400, "from must not be after to", code="bad_parameter")
    try:
        events = await history.node_events(node_id, start, end)
    except UnknownNode:
        raise ApiError(404, f"node {node_id!r} was not seen within the window", code="unknown_node") from None
    except HistoryUnavailable:
        raise ApiError(404, f"node {node_id!r} was not seen within the window", code="unknown_node") from None
    return _raw_json(orjson.dumps({"node_id": node_id, "events": events}))
