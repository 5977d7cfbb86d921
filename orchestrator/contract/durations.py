"""Go-style durations (``15s``, ``5m``, ``1h30m``, ``500ms``), the contract's way to write a span of time."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_WHOLE = re.compile(r"^[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+$")
ALLOWED = "a Go-style duration such as 500ms, 15s, 5m, 1h30m"


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration; ``"0"`` is zero. ValueError for anything else."""
    if not isinstance(text, str):
        raise ValueError(f"must be {ALLOWED}")
    text = text.strip()
    if text in ("0", "+0", "-0"):
        return 0.0
    if not _WHOLE.match(text):
        raise ValueError(f"must be {ALLOWED}")
    sign = -1.0 if text.startswith("-") else 1.0
    return sign * sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest Go-style string for a span: ``90`` → ``1m30s``, ``0.5`` → ``500ms``."""
    if seconds == 0:
        return "0s"
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    if seconds < 1:
        return f"{sign}{round(seconds * 1000, 3):g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = sign
    if hours:
        out += f"{int(hours)}h"
    if minutes:
        out += f"{int(minutes)}m"
    if secs:
        out += f"{round(secs, 3):g}s"
    return out
