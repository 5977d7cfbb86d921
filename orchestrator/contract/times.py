"""The contract's timestamps: RFC 3339 in UTC with a ``Z`` suffix, one parser and one formatter for every endpoint."""

from __future__ import annotations

import re
from datetime import UTC, datetime

LAST_EPOCH = 253402300799.0  # 9999-12-31T23:59:59Z
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def parse_rfc3339(text: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp; ValueError when it is not one."""
    if not _RFC3339.match(text):
        raise ValueError("must be an RFC 3339 timestamp such as 2025-10-13T00:00:00Z")
    body = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    frac = re.search(r"\.(\d+)", body)
    if frac and len(frac.group(1)) > 6:  # fromisoformat takes microseconds at most
        body = body.replace(frac.group(0), "." + frac.group(1)[:6])
    epoch = datetime.fromisoformat(body).timestamp()
    if not 0.0 <= epoch <= LAST_EPOCH:  # what every clock, store and formatter downstream can hold
        raise ValueError("must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
    return epoch


def format_rfc3339(epoch: float) -> str:
    """The contract's timestamp form: UTC, millisecond precision, ``Z`` suffix."""
    s = datetime.fromtimestamp(epoch, tz=UTC)
    # Not strftime: its %Y does not zero-pad years before 1000 on Linux.
    return (
        f"{s.year:04d}-{s.month:02d}-{s.day:02d}T{s.hour:02d}:{s.minute:02d}:{s.second:02d}."
        f"{s.microsecond // 1000:03d}Z"
    )
