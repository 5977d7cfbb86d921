"""The one place that turns every error into the contract's error body."""

from __future__ import annotations

import orjson
import structlog
from sanic import HTTPResponse, Request
from sanic.exceptions import SanicException

from orchestrator.contract.errors import CODES, ApiError

log = structlog.get_logger("orchestrator.api.errors")


def error_response(
    status: int, code: str, message: str, details: list | None = None, headers: dict | None = None
) -> HTTPResponse:
    error: dict = {"code": code, "message": message}
    if details:
        error["details"] = details
    return HTTPResponse(orjson.dumps({"error": error}), status=status, headers=headers, content_type="application/json")


def handle_exception(request: Request, exc: Exception) -> HTTPResponse:
    """Sanic's error handler for the whole app: contract body for every 4xx/5xx, never a stack trace."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
    if isinstance(exc, SanicException):
        status = getattr(exc, "status_code", 500) or 500
        headers = dict(getattr(exc, "headers", None) or {})
        if status >= 500:
            log.error("request_failed", path=request.path, status=status, exc_info=exc)
            message = "internal server error" if status == 500 else str(exc.args[0] if exc.args else exc)
        else:
            message = str(exc.args[0]) if exc.args else CODES.get(status, "error").replace("_", " ")
        return error_response(status, CODES.get(status, "error"), message, headers=headers)
    log.error("unhandled_exception", method=request.method, path=request.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error; the server log has the details")
