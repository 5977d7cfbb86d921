"""Reports: decode, validate, refuse or accept (202), queue. The heavy lifting happens in the ingest worker."""

from __future__ import annotations

import time

import orjson
from sanic import Blueprint, HTTPResponse, Request

from orchestrator.contract.errors import ApiError
from orchestrator.pipeline.decode import decode_body, parse_report

bp = Blueprint("reports", url_prefix="/api/v1")


@bp.post("/reports")
async def post_report(request: Request) -> HTTPResponse:
    state = request.app.ctx.state
    server = state.settings.server
    raw = decode_body(
        request.body,
        request.headers.get("content-type"),
        request.headers.get("content-encoding"),
        server.max_decoded_size,
    )
    report = parse_report(raw, state.sections, server.max_json_depth)
    problems = [
        pair
        for _plugin, pairs in state.hooks.call_each("validate_report", report=report, settings=state.settings)
        for pair in pairs
    ]
    if problems:
        state.metrics.reports_rejected.labels("validation").inc()
        raise ApiError(
            422, "report failed validation", details=[{"field": path, "message": message} for path, message in problems]
        )
    now = time.time()
    gzipped = request.body if raw is not request.body else None
    report_id = state.ingest.submit(report, raw, now, gzipped)  # raises 429/503 before anything is accepted
    state.record_report(report.agent_id, report.hostname, now)
    body = {"status": "accepted", "message": "Report processed successfully", "report_id": report_id}
    return HTTPResponse(orjson.dumps(body), status=202, content_type="application/json")
