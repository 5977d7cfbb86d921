import pytest

from orchestrator.contract.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("15s", 15),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("0", 0),
        ("1.5s", 1.5),
        ("2h45m30s", 9930),
        ("100us", 0.0001),
        ("-5s", -5),
    ],
)
def test_go_durations_parse(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "15", "1d", "s", "1h 30m", "5 m", "--5s", None, 15])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="Go-style duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "seconds, text", [(15, "15s"), (90, "1m30s"), (3600, "1h"), (0.5, "500ms"), (0, "0s"), (5400, "1h30m")]
)
def test_durations_format_back_to_go_style(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
