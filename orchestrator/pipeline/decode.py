"""Request body to validated report: content type, gzip with a bound, JSON and the report schema, unknown fields checked."""

from __future__ import annotations

import zlib
from collections.abc import Generator, Iterator
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import from_json

from orchestrator.contract.errors import ApiError
from orchestrator.contract.models import (
    BUILTIN_SECTIONS,
    AgentId,
    Connection,
    Hostname,
    Process,
    Report,
    check_number,
    error_details,
)
from orchestrator.runtime.slicing import run_sliced, run_steps

SLICE_SECONDS = 0.005  # loop time one slice of checking unknown fields may take
STEP_VALUES = 4096  # values checked between two chances to yield
STEP_ITEMS = 1000  # processes or connections validated between two chances to yield (~4 ms)
STEPPED_BYTES = 512 * 1024  # bodies from this size on are validated in steps (one call: ~15-25 ms here)
# The lists a report can hold tens of thousands of, validated apart in steps.
_LONG_LISTS: tuple[tuple[str, str, TypeAdapter[list[Any]]], ...] = (
    ("processes_info", "processes", TypeAdapter(list[Process])),
    ("network_info", "connections", TypeAdapter(list[Connection])),
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


class _Claim(BaseModel):
    """Who a report says it is from, and nothing else (every other field is skipped, not built)."""

    agent_id: AgentId
    hostname: Hostname


PEEK_BYTES = 4096


def peek_identity(raw: bytes) -> tuple[str, str] | None:
    """The agent id and hostname a report names in its first few KiB of JSON (where probes put them), read
    in microseconds without parsing the rest; None when they are not there or not valid (the full parse
    decides then, and the caller checks its result again: a key may be repeated further on)."""
    try:
        head = from_json(raw[:PEEK_BYTES], allow_partial=True)
        claim = _Claim.model_validate(head)
    except (ValueError, ValidationError):
        return None
    return claim.agent_id, claim.hostname


def parse_report(raw: bytes, sections: dict[str, type[BaseModel]], max_depth: int) -> Report:
    """Validate a report once, from its JSON bytes (pydantic parses and validates in one pass)."""
    return run_steps(report_steps(raw, sections, max_depth))


async def parse_report_sliced(raw: bytes, sections: dict[str, type[BaseModel]], max_depth: int) -> Report:
    """:func:`parse_report`, yielding the event loop every few milliseconds of checking unknown fields (a
    10 MB body can hold a million unknown values; the schema's own validation is one step in pydantic-core,
    which holds the GIL, so a thread would not help)."""
    return await run_sliced(report_steps(raw, sections, max_depth), SLICE_SECONDS)


def report_steps(raw: bytes, sections: dict[str, type[BaseModel]], max_depth: int) -> Generator[None, None, Report]:
    """The validation of :func:`parse_report` as steps: it yields every few thousand items validated or
    values checked."""
    report = yield from _validate_steps(raw)
    yield from _check_unknown_fields(report, max_depth)
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


def _validate_steps(raw: bytes) -> Generator[None, None, Report]:
    """``Report.model_validate_json(raw)`` in steps. pydantic-core validates a document in one call that
    holds the GIL (~0.3-0.5 s for a report at the item limits); here its JSON parser (the same one) makes
    Python values in one call (~50 ms at 9 MB), the report is validated without its process and connection
    lists, and those lists :data:`STEP_ITEMS` items at a time. For valid input the result is the same
    report. A report that fails is validated again in one call, so that its error is the contract's, word
    for word (messages differ between pydantic's JSON and Python modes: "a valid array" / "a valid list").
    A body under :data:`STEPPED_BYTES` is validated in one call: that is faster for it (0.45 ms against 0.7
    for a 50 KB report) and takes at most a few milliseconds."""
    if len(raw) < STEPPED_BYTES:
        return _validate_in_one_call(raw)
    document = _python_values(raw)
    lists = [(section, items, _take_list(document, section, items)) for section, items, _ in _LONG_LISTS]
    try:
        report = Report.model_validate(document)
        for (section, items, values), (_, _, adapter) in zip(lists, _LONG_LISTS, strict=True):
            if values is None:
                continue
            validated: list[Any] = []
            for start in range(0, len(values), STEP_ITEMS):
                yield
                validated.extend(adapter.validate_python(values[start : start + STEP_ITEMS]))
            setattr(getattr(report, section), items, validated)
    except ValidationError:
        return _validate_in_one_call(raw)
    return report


def _python_values(raw: bytes) -> Any:
    """The JSON document as Python values, in one step that holds the GIL. orjson builds them in about half
    the time of pydantic-core's parser on a body of many distinct keys (a 600k-key unknown object: 260
    against 475-530 ms, its string cache costing more than it saves; a report at the item limits: 80 against
    90 ms). What orjson refuses (integers beyond 64 bits, ``NaN``/``Infinity``, malformed JSON) is parsed by
    pydantic-core's parser as before: its values are what the schema then judges, its errors are the
    contract's words."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return from_json(raw)
    except ValueError as exc:
        raise ApiError(400, f"malformed JSON: Invalid JSON: {exc}", code="malformed_json") from None


def _take_list(document: Any, section: str, items: str) -> list[Any] | None:
    """Take a long list of items out of the parsed document (validated apart, in steps), or ``None``."""
    owner = document.get(section) if type(document) is dict else None
    if type(owner) is not dict:
        return None
    values = owner.get(items)
    if type(values) is not list or len(values) <= STEP_ITEMS:
        return None
    owner[items] = []
    return values


def _validate_in_one_call(raw: bytes) -> Report:
    try:
        return Report.model_validate_json(raw)
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            raise ApiError(400, f"malformed JSON: {exc.errors()[0]['msg']}", code="malformed_json") from None
        raise ApiError(422, "report failed validation", details=error_details(exc)) from None


def _check_unknown_fields(report: Report, max_depth: int) -> Iterator[None]:
    """Unknown fields are kept as they come, so they are checked here: nesting depth (the schema's own
    fields are at most four levels deep; only unknown ones can nest without bound) and numbers that could
    not be stored or served again (beyond 64 bits, or 1e999 read as infinity)."""
    budget = max_depth - 3
    for path, item in (((), report), *(((name,), getattr(report, name)) for name in BUILTIN_SECTIONS)):
        if item is not None and item.__pydantic_extra__:
            yield from _check_value(item.__pydantic_extra__, path, budget, max_depth)
    for section, items in (
        ("docker_info", "containers"),
        ("processes_info", "processes"),
        ("network_info", "connections"),
    ):
        owner = getattr(report, section)
        for index, item in enumerate(getattr(owner, items) if owner is not None else ()):
            if item.__pydantic_extra__:  # the path is built only for the rare item that has unknown fields
                yield from _check_value(item.__pydantic_extra__, (section, items, index), budget, max_depth)
            if not index % STEP_VALUES:
                yield


def _check_value(value: dict[str, Any], path: tuple[str | int, ...], budget: int, max_depth: int) -> Iterator[None]:
    """Depth-first, without recursion (a yield point every ``STEP_VALUES`` values); a value's path is
    kept as a chain of ``(parent, key)`` pairs and spelt out only for the error."""
    stack: list[tuple[dict[Any, Any] | list[Any], tuple[Any, ...] | None, int]] = [(value, None, budget)]
    seen = 0
    while stack:
        container, chain, budget = stack.pop()
        if budget <= 0:
            raise ApiError(
                422,
                f"report nests deeper than {max_depth} levels",
                details=[{"field": _field(path, chain), "message": f"JSON nesting depth is limited to {max_depth}"}],
            )
        pairs = container.items() if isinstance(container, dict) else enumerate(container)
        children: list[tuple[dict[Any, Any] | list[Any], tuple[Any, ...] | None, int]] = []
        for key, item in pairs:
            seen += 1
            if seen >= STEP_VALUES:  # inside a container too: one can hold a million values
                seen = 0
                yield
            if isinstance(item, dict | list):
                children.append((item, (chain, key), budget - 1))
            elif isinstance(item, int | float) and not check_number(item):
                raise ApiError(
                    422,
                    "report failed validation",
                    details=[
                        {"field": _field(path, (chain, key)), "message": "must be a finite number within 64 bits"}
                    ],
                )
        stack.extend(reversed(children))  # popped in document order


def _field(path: tuple[str | int, ...], chain: tuple[Any, ...] | None = None) -> str:
    keys: list[str | int] = []
    while chain is not None:
        chain, key = chain
        keys.append(key)
    return ".".join(str(part) for part in (*path, *reversed(keys))) or "body"
