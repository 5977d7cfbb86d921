"""Unit tests for the per-agent time-series ring buffer (orchestrator.state.timeseries)."""

from __future__ import annotations

import struct
import sys
import threading
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.state import timeseries
from orchestrator.state.timeseries import POINT_METRICS, REPORT_METRICS, TimeSeriesStore

T0 = 1_760_313_600.0  # 2025-10-13T00:00:00Z, a bucket boundary
NOW = T0 + 3600.0  # default retention (240 buckets) then covers buckets T0+15 .. T0+3600


def all_metrics(value: float) -> dict[str, float]:
    return dict.fromkeys(REPORT_METRICS, value)


def points_by_offset(store: TimeSeriesStore, agent: str = "a", **kwargs) -> dict[int, dict]:
    """Points keyed by their bucket's offset in seconds from T0."""
    from datetime import datetime

    out = {}
    for point in store.get_recent_points(agent, now=kwargs.pop("now", NOW), **kwargs):
        stamp = datetime.fromisoformat(point["timestamp"].replace("Z", "+00:00")).timestamp()
        out[round(stamp - T0)] = point
    return out


# -- retention and the ring ---------------------------------------------------------------------------


def test_report_older_than_retention_adds_no_point():
    store = TimeSeriesStore()
    assert store.add_report("a", T0 + 14, {"cpu_percent": 1.0}, now=NOW) is False
    assert not store.has_agent("a")


def test_report_in_oldest_retained_bucket_is_kept():
    store = TimeSeriesStore()
    assert store.add_report("a", T0 + 15, {"cpu_percent": 1.0}, now=NOW) is True
    assert list(points_by_offset(store)) == [15]


def test_retained_points_age_out_of_reads_without_purge():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 15, {"cpu_percent": 1.0}, now=NOW)
    store.add_report("a", T0 + 30, {"cpu_percent": 2.0}, now=NOW)
    assert list(points_by_offset(store, now=NOW + 15)) == [30]


def test_purge_expired_clears_old_slots_and_keeps_the_agent():
    store = TimeSeriesStore()
    for offset in (15, 30, 45):
        store.add_report("a", T0 + offset, {"cpu_percent": 1.0}, now=NOW)
    assert store.purge_expired(now=NOW + 30) == 2
    assert store.purge_expired(now=NOW + 30) == 0
    assert list(points_by_offset(store, now=NOW + 30)) == [45]
    assert store.purge_expired(now=NOW + 3600) == 1
    assert store.has_agent("a")
    assert store.get_recent_points("a", now=NOW + 3600) == []


def test_wrap_around_clears_the_old_buckets_whole_row():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 15, {"cpu_percent": 1.0, "memory_used": 100}, now=NOW)
    later = T0 + 15 + 3600  # same slot, one ring later
    assert store.add_report("a", later, {"cpu_percent": 2.0}, now=later) is True
    points = points_by_offset(store, now=later)
    assert list(points) == [3615]
    assert points[3615]["cpu_percent"] == 2.0
    assert points[3615]["memory_used"] is None


def test_report_whose_slot_holds_a_newer_bucket_is_refused():
    store = TimeSeriesStore()
    # A future-dated report takes the slot of bucket T0+120 one ring later.
    assert store.add_report("a", T0 + 120 + 3600, {"cpu_percent": 9.0}, now=NOW) is True
    assert store.add_report("a", T0 + 120, {"cpu_percent": 1.0}, now=NOW) is False
    assert store.get_recent_points("a", now=T0 + 120 + 3600)[-1]["cpu_percent"] == 9.0


def test_report_without_any_metric_adds_no_point():
    store = TimeSeriesStore()
    assert store.add_report("a", T0 + 60, {"cpu_percent": None, "other": 3}, now=NOW) is False
    assert not store.has_agent("a")


def test_non_finite_timestamp_raises_value_error():
    with pytest.raises(ValueError):
        TimeSeriesStore().add_report("a", float("nan"), {"cpu_percent": 1.0}, now=NOW)


# -- bucket rules -------------------------------------------------------------------------------------


def test_same_bucket_last_report_wins():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 61, {"cpu_percent": 1.0}, now=NOW)
    store.add_report("a", T0 + 74, {"cpu_percent": 2.0}, now=NOW)
    points = points_by_offset(store)
    assert list(points) == [60]
    assert points[60]["cpu_percent"] == 2.0


def test_metric_missing_from_later_report_keeps_the_buckets_earlier_value():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 61, {"cpu_percent": 1.0, "load1": 0.5}, now=NOW)
    store.add_report("a", T0 + 70, {"cpu_percent": 2.0, "load1": None}, now=NOW)
    point = points_by_offset(store)[60]
    assert point["cpu_percent"] == 2.0
    assert point["load1"] == 0.5


def test_out_of_order_report_lands_in_its_own_bucket():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 90, {"cpu_percent": 3.0}, now=NOW)
    assert store.add_report("a", T0 + 60, {"cpu_percent": 1.0}, now=NOW) is True
    points = points_by_offset(store)
    assert [p["cpu_percent"] for p in points.values()] == [1.0, 3.0]
    assert list(points) == [60, 90]
    assert store.get_recent_points("a", now=NOW)[-1]["cpu_percent"] == 3.0


# -- rates --------------------------------------------------------------------------------------------


def net(rx: float | None, tx: float | None = None) -> dict[str, float | None]:
    return {"net_rx_bytes": rx, "net_tx_bytes": tx}


def test_rate_is_counter_delta_over_elapsed_seconds():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 15, net(1_000, 500), now=NOW)
    store.add_report("a", T0 + 30, net(4_000, 500), now=NOW)
    point = points_by_offset(store)[30]
    assert point["net_rx_rate"] == pytest.approx(200.0)
    assert point["net_tx_rate"] == 0.0


def test_first_point_has_no_rate():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 15, net(1_000, 500), now=NOW)
    point = points_by_offset(store)[15]
    assert point["net_rx_rate"] is None
    assert point["net_tx_rate"] is None


def test_rate_across_a_gap_uses_the_real_elapsed_time():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 15, net(0), now=NOW)
    store.add_report("a", T0 + 315, net(30_000), now=NOW)  # 20 buckets later
    assert points_by_offset(store)[315]["net_rx_rate"] == pytest.approx(100.0)


def test_rate_uses_report_timestamps_not_bucket_starts():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 29, net(0), now=NOW)
    store.add_report("a", T0 + 31, net(1_000), now=NOW)  # next bucket, 2 s later
    assert points_by_offset(store)[30]["net_rx_rate"] == pytest.approx(500.0)


def test_counter_reset_yields_no_rate_and_rates_are_never_negative():
    store = TimeSeriesStore()
    for offset, rx in ((15, 10_000), (30, 25_000), (45, 3_000), (60, 4_500)):
        store.add_report("a", T0 + offset, net(rx), now=NOW)
    rates = [p["net_rx_rate"] for p in points_by_offset(store).values()]
    assert rates == [None, pytest.approx(1_000.0), None, pytest.approx(100.0)]


def test_rate_skips_points_without_the_counter():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 15, net(0), now=NOW)
    store.add_report("a", T0 + 30, {"cpu_percent": 5.0}, now=NOW)
    store.add_report("a", T0 + 45, net(3_000), now=NOW)
    points = points_by_offset(store)
    assert points[30]["net_rx_rate"] is None
    assert points[45]["net_rx_rate"] == pytest.approx(100.0)


def test_first_point_in_window_gets_its_rate_from_the_point_before():
    store = TimeSeriesStore()
    store.add_report("a", NOW - 30, net(0), now=NOW)
    store.add_report("a", NOW - 15, net(1_500), now=NOW)
    points = store.get_recent_points("a", duration=15, now=NOW)
    assert [p["net_rx_rate"] for p in points] == [pytest.approx(100.0)]


# -- step averaging -----------------------------------------------------------------------------------


def fill_minute(store: TimeSeriesStore, cpu: list[float | None], start: float = T0 + 60) -> None:
    for i, value in enumerate(cpu):
        store.add_report("a", start + 15 * i, {"cpu_percent": value, "load1": 1.0}, now=NOW)


def test_step_15s_is_the_identity():
    store = TimeSeriesStore()
    fill_minute(store, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert store.get_recent_points("a", step=15, now=NOW) == store.get_recent_points("a", now=NOW)
    assert len(store.get_recent_points("a", step=15, now=NOW)) == 5


def test_step_1m_averages_buckets_in_minute_aligned_groups():
    store = TimeSeriesStore()
    fill_minute(store, [1.0, 2.0, 3.0, 4.0, 10.0, 20.0], start=T0 + 60)
    points = points_by_offset(store, step=60)
    assert list(points) == [60, 120]
    assert points[60]["cpu_percent"] == pytest.approx(2.5)
    assert points[120]["cpu_percent"] == pytest.approx(15.0)


def test_step_average_ignores_missing_values_and_all_missing_is_none():
    store = TimeSeriesStore()
    fill_minute(store, [1.0, None, 3.0, None, None], start=T0 + 60)
    points = points_by_offset(store, step=60)
    assert points[60]["cpu_percent"] == pytest.approx(2.0)
    assert points[120]["cpu_percent"] is None
    assert points[120]["load1"] == 1.0


def test_rates_are_computed_per_bucket_before_averaging():
    store = TimeSeriesStore()
    for i, rx in enumerate((0, 1_500, 3_000, 9_000)):  # 100/s, 100/s, 400/s
        store.add_report("a", T0 + 60 + 15 * i, net(rx), now=NOW)
    point = points_by_offset(store, step=60)[60]
    assert point["net_rx_rate"] == pytest.approx(200.0)


def test_averaged_integer_metrics_stay_integers():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 60, {"process_count": 10, "memory_used": 1_000}, now=NOW)
    store.add_report("a", T0 + 75, {"process_count": 13, "memory_used": 2_001}, now=NOW)
    point = points_by_offset(store, step=60)[60]
    assert point["process_count"] in (11, 12) and isinstance(point["process_count"], int)
    assert point["memory_used"] in (1_500, 1_501) and isinstance(point["memory_used"], int)


@pytest.mark.parametrize("step", [20.0, 7.5, 0.0, -15.0, float("nan"), float("inf")])
def test_step_that_is_not_a_positive_multiple_of_15s_raises_value_error(step):
    store = TimeSeriesStore()
    fill_minute(store, [1.0])
    with pytest.raises(ValueError):
        store.get_recent_points("a", step=step, now=NOW)


# -- reading ------------------------------------------------------------------------------------------


def test_duration_keeps_buckets_starting_within_the_window():
    store = TimeSeriesStore()
    for offset in range(15, 3601, 15):
        store.add_report("a", T0 + offset, {"cpu_percent": float(offset)}, now=NOW)
    assert len(store.get_recent_points("a", duration=60, now=NOW)) == 5  # NOW-60 .. NOW inclusive
    assert len(store.get_recent_points("a", duration=60, now=NOW + 1)) == 4
    assert len(store.get_recent_points("a", duration=3600, now=NOW)) == 240
    assert len(store.get_recent_points("a", now=NOW)) == 240


def test_duration_longer_than_retention_returns_what_is_retained():
    store = TimeSeriesStore()
    for offset in range(15, 3601, 15):
        store.add_report("a", T0 + offset, {"cpu_percent": 1.0}, now=NOW)
    assert len(store.get_recent_points("a", duration=86_400, now=NOW)) == 240


@pytest.mark.parametrize("duration", [0.0, -60.0, float("nan")])
def test_non_positive_duration_raises_value_error(duration):
    store = TimeSeriesStore()
    fill_minute(store, [1.0])
    with pytest.raises(ValueError):
        store.get_recent_points("a", duration=duration, now=NOW)


def test_points_carry_exactly_the_contract_metrics_and_utc_timestamps():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 60, all_metrics(1.0), now=NOW)
    (point,) = store.get_recent_points("a", now=NOW)
    assert list(point) == ["timestamp", *POINT_METRICS]
    assert point["timestamp"] == "2025-10-13T00:01:00.000Z"
    assert point["cpu_percent"] == 1.0 and point["net_rx_rate"] is None
    assert isinstance(point["memory_used"], int) and isinstance(point["connection_count"], int)


def test_unknown_agent_raises_key_error():
    store = TimeSeriesStore()
    with pytest.raises(KeyError):
        store.get_recent_points("nobody", now=NOW)
    with pytest.raises(KeyError):
        store.export_agent("nobody")
    assert store.delete_agent("nobody") is None


def test_the_newest_point_carries_its_rate_and_a_contract_timestamp():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 90, {**net(3_000), "cpu_percent": 2.0}, now=NOW)
    store.add_report("a", T0 + 60, {**net(0), "cpu_percent": 1.0}, now=NOW)
    latest = store.get_recent_points("a", now=NOW)[-1]
    assert latest["timestamp"] == "2025-10-13T00:01:30.000Z"  # the one RFC 3339 form of every endpoint
    assert latest["cpu_percent"] == 2.0
    assert latest["net_rx_rate"] == pytest.approx(100.0)


def test_agents_are_listed_sorted():
    store = TimeSeriesStore()
    for agent in ("b", "c", "a"):
        store.add_report(agent, T0 + 60, {"cpu_percent": 1.0}, now=NOW)
    assert store.get_all_agents() == ["a", "b", "c"]
    assert store.has_agent("b") and not store.has_agent("d")


def test_stats_report_agents_points_and_memory():
    store = TimeSeriesStore()
    store.add_report("a", T0 + 60, {"cpu_percent": 1.0}, now=NOW)
    store.add_report("a", T0 + 75, {"cpu_percent": 1.0}, now=NOW)
    store.add_report("b", T0 + 60, {"cpu_percent": 1.0}, now=NOW)
    assert store.stats() == {
        "agents": 2,
        "points": 3,
        "memory_bytes": 2 * 4 * 11 * 8,  # two agents, each ring at its first four rows
        "bytes_per_agent": 240 * 11 * 8,
        "resolution": "15s",
        "max_data_age": "1h",
    }


def test_a_step_of_one_minute_averages_four_buckets_into_one_point():
    store = TimeSeriesStore()
    fill_minute(store, [1.0, 2.0, 3.0, 4.0])
    points = store.get_recent_points("a", step=60, now=NOW)
    assert len(points) == 1 and points[0]["cpu_percent"] == pytest.approx(2.5)


# -- export / import ----------------------------------------------------------------------------------


def filled_store(max_data_age: float = 3600.0) -> TimeSeriesStore:
    store = TimeSeriesStore(max_data_age=max_data_age)
    for i, offset in enumerate(range(15, 3601, 15)):
        metrics = {**all_metrics(float(i)), "net_rx_bytes": 100.0 * i, "load1": None if i % 7 else 0.5}
        store.add_report("a", T0 + offset + (i % 5), metrics, now=NOW)
    return store


def test_export_import_round_trip_is_exact():
    source = filled_store()
    blob = source.export_agent("a")
    target = TimeSeriesStore()
    target.import_agent("b", blob)
    assert target.export_agent("b") == blob
    assert target.get_recent_points("b", now=NOW) == source.get_recent_points("a", now=NOW)
    assert len(blob) == 20 + 240 * 11 * 8


def test_import_into_a_smaller_ring_keeps_the_newest_points():
    blob = filled_store().export_agent("a")
    small = TimeSeriesStore(max_data_age=600.0)  # 40 slots
    small.import_agent("a", blob)
    offsets = list(points_by_offset(small))
    assert offsets == list(range(3600 - 39 * 15, 3601, 15))


def test_import_into_a_larger_ring_keeps_every_point():
    blob = filled_store().export_agent("a")
    large = TimeSeriesStore(max_data_age=7200.0)
    large.import_agent("a", blob)
    assert len(large.get_recent_points("a", now=NOW)) == 240


def test_delete_agent_returns_its_export_and_forgets_it():
    store = filled_store()
    expected = store.export_agent("a")
    assert store.delete_agent("a") == expected
    assert not store.has_agent("a")
    assert store.memory_bytes() == 0


def _valid_blob() -> bytes:
    store = TimeSeriesStore()
    store.add_report("a", T0 + 60, {"cpu_percent": 1.0}, now=NOW)
    store.add_report("a", T0 + 75, {"cpu_percent": 2.0}, now=NOW)
    return store.export_agent("a")


def _with_header(blob: bytes, **changes) -> bytes:
    names = ("magic", "version", "ncols", "reserved", "resolution", "nrows")
    fields = dict(zip(names, struct.unpack_from("<4sBBHdI", blob)))
    fields.update(changes)
    return struct.pack("<4sBBHdI", *fields.values()) + blob[20:]


def _swap_rows(blob: bytes) -> bytes:
    row = 11 * 8
    return blob[:20] + blob[20 + row :] + blob[20 : 20 + row]


@pytest.mark.parametrize(
    "make_blob",
    [
        lambda: b"",
        lambda: b"OTSB\x01",
        lambda: _with_header(_valid_blob(), magic=b"NOPE"),
        lambda: _with_header(_valid_blob(), version=2),
        lambda: _with_header(_valid_blob(), ncols=10),
        lambda: _with_header(_valid_blob(), resolution=60.0),
        lambda: _with_header(_valid_blob(), nrows=3),
        lambda: _valid_blob()[:-8],
        lambda: _swap_rows(_valid_blob()),
    ],
    ids=["empty", "short", "magic", "version", "columns", "resolution", "nrows", "truncated", "order"],
)
def test_import_rejects_a_malformed_blob(make_blob):
    store = TimeSeriesStore()
    with pytest.raises(ValueError):
        store.import_agent("a", make_blob())
    assert not store.has_agent("a")


# -- memory and threads -------------------------------------------------------------------------------


def test_memory_follows_what_an_agent_has_reported_up_to_a_full_ring():
    tracemalloc.start()
    try:
        store = TimeSeriesStore()
        for i in range(1_000):
            store.add_report(f"agent-{i}", T0 + 60, all_metrics(1.0), now=NOW)
        allocated, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert store.memory_bytes() == 1_000 * 4 * 11 * 8  # one point each: four rows, not 240
    assert allocated < 1024 * 1024
    for bucket in range(240):  # a full hour of points
        store.add_report("agent-0", NOW - 15 * bucket, all_metrics(1.0), now=NOW)
    assert store.stats()["points"] == 999 + 240
    assert store.memory_bytes() == 999 * 4 * 11 * 8 + store.bytes_per_agent
    assert store.bytes_per_agent == 240 * 11 * 8  # never more, however long it reports
    store.add_report("agent-0", NOW + 15, all_metrics(2.0), now=NOW + 15)
    assert store.memory_bytes() == 999 * 4 * 11 * 8 + store.bytes_per_agent


# Reports relative to the server clock, in buckets: old ones, in retention, ahead (future-dated: a full ring
# then holds buckets a whole retention apart in one slot).
writes = st.lists(
    st.tuples(
        st.integers(0, 3),  # buckets the server clock moves first
        st.integers(-24, 24),  # the report's bucket relative to the clock's
        st.sampled_from(["a", "b"]),
        st.floats(0, 100),
        st.booleans(),  # with network counters
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(writes)
def test_a_ring_grown_on_demand_keeps_exactly_what_a_full_ring_keeps(writes):
    # Retention of 20 buckets: rings of 4, 8, 16 rows, then the full 20.
    grown = TimeSeriesStore(max_data_age=300.0)
    full = TimeSeriesStore(max_data_age=300.0)
    original = timeseries.FIRST_ROWS
    now = NOW
    for advance, offset, agent, value, counters in writes:
        now += 15 * advance
        metrics = {"cpu_percent": value, **({"net_rx_bytes": value * 1e6} if counters else {})}
        timestamp = now + 15 * offset
        written = grown.add_report(agent, timestamp, metrics, now=now)
        timeseries.FIRST_ROWS = full.capacity  # the full ring from the first point, as before
        try:
            assert full.add_report(agent, timestamp, metrics, now=now) == written
        finally:
            timeseries.FIRST_ROWS = original
    for agent in ("a", "b"):
        assert grown.has_agent(agent) == full.has_agent(agent)
        if full.has_agent(agent):
            assert grown.get_recent_points(agent, now=now) == full.get_recent_points(agent, now=now)
    # A small ring reuses a slot whose bucket has expired where the full ring leaves it until the purge.
    grown.purge_expired(now=now + 150)
    full.purge_expired(now=now + 150)
    assert grown.stats()["points"] == full.stats()["points"]
    assert grown.stats()["points"] == sum(len(store_points(grown, agent)) for agent in grown.get_all_agents())


def store_points(store: TimeSeriesStore, agent: str) -> list:
    """The agent's stored rows, expired ones included (what ``stats()`` counts until a purge)."""
    blob = store.export_agent(agent)
    rows = struct.unpack_from("<I", blob, struct.calcsize("<4sBBHd"))[0]
    return [None] * rows


def test_reader_thread_never_sees_a_torn_row_while_reports_are_written():
    # Probabilistic by nature: numpy drops the GIL while copying the whole buffer, and without the
    # store's lock a run of this loop did catch rows half old, half new.
    store = TimeSeriesStore()
    now = NOW
    plain = [name for name in POINT_METRICS if not name.endswith("_rate")]
    reported = [name for name in REPORT_METRICS if not name.startswith("net_")]
    failures: list[str] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                for point in store.get_recent_points("a", now=now):
                    values = {point[name] for name in plain}
                    if len(values) != 1:
                        failures.append(f"torn point {point}")
                        return
        except Exception as exc:
            failures.append(repr(exc))

    store.add_report("a", now, dict.fromkeys(reported, 0), now=now)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(30_000):
            # Cycle over every slot so rows are rewritten in place; all plain metrics equal i.
            store.add_report("a", now - 15 * (i % 240), dict.fromkeys(reported, i), now=now)
    finally:
        stop.set()
        reader.join()
        sys.setswitchinterval(old_interval)
    assert failures == []
