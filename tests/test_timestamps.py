"""The contract's timestamps: RFC 3339 in (any fractional precision), UTC with ``Z`` out (four-digit years)."""

from __future__ import annotations

import pytest

from orchestrator.models import format_rfc3339, parse_rfc3339


@pytest.mark.parametrize("text, expected", [
    ("2025-10-13T00:00:00Z", "2025-10-13T00:00:00.000Z"),
    ("2025-10-13T00:00:00.5Z", "2025-10-13T00:00:00.500Z"),
    ("2025-10-13T00:00:00.1234567891234Z", "2025-10-13T00:00:00.123Z"),  # no limit on the digits
    ("2025-10-13T02:00:00+02:00", "2025-10-13T00:00:00.000Z"),
    ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),  # zero-padded, still RFC 3339
    ("0999-12-31T23:59:59Z", "0999-12-31T23:59:59.000Z"),
])
def test_parse_then_format_gives_the_contract_form(text, expected):
    assert format_rfc3339(parse_rfc3339(text)) == expected


@pytest.mark.parametrize("text", ["2025-10-13", "2025-10-13T00:00:00", "2025-10-13T00:00:00.Z", "yesterday"])
def test_what_is_not_rfc3339_is_refused(text):
    with pytest.raises(ValueError):
        parse_rfc3339(text)
