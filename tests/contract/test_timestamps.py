"""The contract's timestamps: RFC 3339 in (any fractional precision, 1970 to 9999), UTC with ``Z`` out."""

from __future__ import annotations

import pytest

from orchestrator.contract.times import format_rfc3339, parse_rfc3339


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2025-10-13T00:00:00Z", "2025-10-13T00:00:00.000Z"),
        ("2025-10-13T00:00:00.5Z", "2025-10-13T00:00:00.500Z"),
        ("2025-10-13T00:00:00.1234567891234Z", "2025-10-13T00:00:00.123Z"),  # no limit on the digits
        ("2025-10-13T02:00:00+02:00", "2025-10-13T00:00:00.000Z"),
        ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000Z"),
        ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59.000Z"),
    ],
)
def test_parse_then_format_gives_the_contract_form(text, expected):
    assert format_rfc3339(parse_rfc3339(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2025-10-13",
        "2025-10-13T00:00:00",
        "2025-10-13T00:00:00.Z",
        "yesterday",
        "2025-13-01T00:00:00Z",
        # Outside what clocks, stores and formatters downstream can hold:
        "0001-01-01T00:00:00+14:00",
        "1969-12-31T23:59:59Z",
        "9999-12-31T23:59:59-01:00",
    ],
)
def test_what_is_not_rfc3339_or_out_of_range_is_refused(text):
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_years_before_1000_are_zero_padded():
    assert format_rfc3339(-62135596800.0) == "0001-01-01T00:00:00.000Z"
