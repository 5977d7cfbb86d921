"""Request body to validated report: content type, gzip with a bound, JSON and the report schema, unknown fields checked."""

from __future__ import annotations

import zlib

from pydantic import BaseModel, ValidationError

from orchestrator.contract.errors import ApiError
from orchestrator.contract.models import (
    BUILTIN_SECTIONS,
    Report,
    check_number,
    error_details,
)


def decode_body(body: bytes, content_type: str | None, content_encoding: str | None, limit: int) -> bytes:
    """The JSON bytes of a request body: content type checked, gzip inflated at most up to ``limit``."""
    return inflate(body, check_media(content_type, content_encoding), limit)


def check_media(content_type: str | None, content_encoding: str | None) -> str:
    """The body's encoding (``gzip`` or ``identity``), from the headers alone; 415 for anything else."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {media or 'none'!r}")
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ("gzip", "identity"):
        raise ApiError(415, f"Content-Encoding {encoding!r} is not supported; use gzip or none")
    return encoding


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` as JSON bytes: gzip inflated at most up to ``limit`` (413 beyond it)."""
    if encoding == "gzip":
        return _gunzip(body, limit)
    if len(body) > limit:
        raise ApiError(413, f"body is {len(body)} bytes; the limit is {limit}")
    return body


def _gunzip(body: bytes, limit: int) -> bytes:
    # Inflate at most limit+1 bytes: a gzip bomb is refused without being inflated in full.
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, f"body is not valid gzip ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ApiError(413, f"decompressed body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise ApiError(400, "gzip body is truncated")
    return out


def parse_report(raw: bytes, sections: dict[str, type[BaseModel]], max_depth: int) -> Report:
    """Validate a report once, from its JSON bytes (pydantic parses and validates in one pass)."""
    try:
        report = Report.model_validate_json(raw)
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            raise ApiError(400, f"malformed JSON: {exc.errors()[0]['msg']}", code="malformed_json") from None
        raise ApiError(422, "report failed validation", details=error_details(exc)) from None
    _check_unknown_fields(report, max_depth)
    extra = report.model_extra or {}
    details = []
    for name, model in sections.items():
        if name in extra and extra[name] is not None:
            try:
                report.sections[name] = model.model_validate(extra[name])
            except ValidationError as exc:
                details.extend(error_details(exc, prefix=(name,)))
    if details:
        raise ApiError(422, "report failed validation", details=details)
    return report


def _check_unknown_fields(report: Report, max_depth: int) -> None:
    """Unknown fields are kept as they come, so they are checked here: nesting depth (the schema's own
    fields are at most four levels deep; only unknown ones can nest without bound) and numbers that could
    not be stored or served again (beyond 64 bits, or 1e999 read as infinity)."""
    budget = max_depth - 3
    for path, item in (((), report), *(((name,), getattr(report, name)) for name in BUILTIN_SECTIONS)):
        if item is not None and item.__pydantic_extra__:
            _check_value(item.__pydantic_extra__, path, budget, max_depth)
    for section, items in (
        ("docker_info", "containers"),
        ("processes_info", "processes"),
        ("network_info", "connections"),
    ):
        owner = getattr(report, section)
        for index, item in enumerate(getattr(owner, items) if owner is not None else ()):
            if item.__pydantic_extra__:  # the path is built only for the rare item that has unknown fields
                _check_value(item.__pydantic_extra__, (section, items, index), budget, max_depth)


def _check_value(value: object, path: tuple[str | int, ...], budget: int, max_depth: int) -> None:
    if isinstance(value, dict | list):
        if budget <= 0:
            raise ApiError(
                422,
                f"report nests deeper than {max_depth} levels",
                details=[{"field": _field(path), "message": f"JSON nesting depth is limited to {max_depth}"}],
            )
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            _check_value(item, (*path, key), budget - 1, max_depth)
    elif isinstance(value, int | float) and not check_number(value):
        raise ApiError(
            422,
            "report failed validation",
            details=[{"field": _field(path), "message": "must be a finite number within 64 bits"}],
        )


def _field(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path) or "body"
