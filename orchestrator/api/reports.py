"""Reports: refuse at the door (429/503), read, decode, validate, accept (202), queue. The heavy lifting
happens in the ingest worker."""

from __future__ import annotations

import time

import orjson
from sanic import Blueprint, HTTPResponse, Request

from orchestrator.api.agents import admit
from orchestrator.api.errors import error_response
from orchestrator.api.http import read_body
from orchestrator.api.identity import check_identity
from orchestrator.contract.errors import ApiError
from orchestrator.pipeline.decode import check_media, inflate, parse_report_sliced, peek_identity
from orchestrator.state.persistence import refuse_while_unavailable

bp = Blueprint("reports", url_prefix="/api/v1")


# A streaming handler: Sanic does not read the body before it runs, so a report the queue has no room for
# is refused from its headers alone — not read, not inflated, not validated.
@bp.post("/reports", stream=True)
async def post_report(request: Request) -> HTTPResponse:
    state = request.app.ctx.state
    refuse_while_unavailable(state)  # 503 before decoding: what cannot be stored is never answered 202
    server = state.settings.server
    encoding = check_media(request.headers.get("content-type"), request.headers.get("content-encoding"))
    if (refused := state.ingest.refusal()) is not None:
        # Answered, not raised: Sanic's exception path would be a third of what a refusal costs.
        return error_response(refused.status, refused.code, refused.message, headers=refused.headers)
    with state.ingest.admission(int(request.headers.get("content-length") or 0)):
        body = await read_body(request, server.max_body_size)
        raw = inflate(body, encoding, server.max_decoded_size)
        if (binding := getattr(request.ctx, "binding", None)) is not None and (claim := peek_identity(raw)):
            check_identity(request, "report", *claim)  # before the costly validation, for a bound token
        report = await parse_report_sliced(raw, state.sections, server.max_json_depth)
        if binding is not None:
            check_identity(request, "report", report.agent_id, report.hostname)
        problems = [
            pair
            for _plugin, pairs in state.hooks.call_each("validate_report", report=report, settings=state.settings)
            for pair in pairs
        ]
        if problems:
            state.metrics.reports_rejected.labels("validation").inc()
            raise ApiError(
                422,
                "report failed validation",
                details=[{"field": path, "message": message} for path, message in problems],
            )
        admit(state, report.agent_id)
        gzipped = body if raw is not body else None
        cluster = request.app.ctx.cluster
        if cluster is not None:  # 202 only once the cluster's log stored it; every replica applies it from there
            report_id = await cluster.submit_report(report, raw, gzipped)
        else:
            now = time.time()
            report_id = state.ingest.submit(report, raw, now, gzipped)  # 429/503 before anything is accepted
    if cluster is None:
        state.record_report(report.agent_id, report.hostname, now)
    body = {"status": "accepted", "message": "Report processed successfully", "report_id": report_id}
    return HTTPResponse(orjson.dumps(body), status=202, content_type="application/json")
