"""Per-agent time series: a preallocated numpy ring buffer at a fixed resolution (15 s by default).

Storage
    Each agent owns one C-contiguous ``float64`` array of shape ``(capacity, 11)`` where
    ``capacity = ceil(max_data_age / resolution)`` (1 h / 15 s = 240 slots). Columns:

    ====  ==================  ====================================================================
    0     ``bucket``          ``floor(report timestamp / resolution)``; NaN marks an empty slot
    1     ``net_ts``          timestamp of the report that wrote the net counters (for exact Δt)
    2-10  the stored metrics  ``cpu_percent``, ``memory_used``, ``memory_percent``, ``load1``,
                              ``net_rx_bytes``, ``net_tx_bytes``, ``process_count``,
                              ``container_count``, ``connection_count``
    ====  ==================  ====================================================================

    An agent's array starts with :data:`FIRST_ROWS` rows at its first point and doubles when a bucket
    it still retains would otherwise be overwritten, up to ``capacity``; bucket ``b`` lives in slot
    ``b % rows``. So memory follows what the agent has reported: an agent that reported once takes
    4 × 11 × 8 B = 352 B of data (plus one ndarray header, ~112 B, and its dict entry), one that has
    reported every 15 s for an hour 240 × 11 × 8 B = 21,120 B, and never more: 1,000 agents take at most
    about 21 MB, 100,000 agents that reported once about 50 MB. Once allocated, a ring is written in
    place; growing copies its rows once per doubling (at most six times per agent at the default
    retention). A missing metric is NaN in storage and ``None`` in the output.

Bucket rules
    - A report lands in the bucket of its *own* timestamp, so out-of-order reports go to their own
      bucket as long as it is still retained.
    - Within a bucket the report applied last wins, metric by metric: a report writes the metrics it
      carries, and a metric it lacks (missing or ``None``) leaves the bucket's earlier value alone.
    - Retention is counted in whole buckets: the ``capacity`` buckets ending with the bucket of ``now``
      (the server clock). A report for an older bucket adds no point. A report for a newer bucket that
      wraps the ring clears the slot's whole row (NaN) before writing, so nothing of the old bucket
      survives in it. A report whose slot already holds a *newer* bucket (only possible after
      future-dated reports) is refused rather than destroy newer data. A ring smaller than ``capacity``
      behaves exactly like the full one: where two retained buckets would share a slot only because the
      ring is small, it grows first; a slot holding an expired bucket is reused.

Rates
    ``net_rx_rate``/``net_tx_rate`` are computed at read time from the stored counters: Δcounter / Δt
    between consecutive points that carry that counter, with Δt taken from the reports' own timestamps
    (a gap of several buckets therefore uses the real elapsed time). The first point has no rate, and a
    decreasing counter (reset, agent restart) yields no rate rather than a negative one. ``net_ts`` is
    shared by both counters: it is the timestamp of the last report in the bucket that carried either
    (probes send them together, from the same interface scan).

Output types
    ``memory_used`` (bytes) and the three counts are integers in the contract, so they are returned as
    ``int`` — also when several buckets are averaged with ``step`` (the mean is rounded). The other
    metrics are ``float``.

Threads
    The server runs on one asyncio loop, but readers may run in another thread (exports, debugging).
    ``add_report`` builds the new row in Python and writes it with a single ``buf[slot] = row``, and
    readers work on a copy of the buffer taken in a single ``buf.copy()``. numpy drops the GIL while it
    copies more than a few hundred elements, so those two statements are additionally serialised by one
    store-wide ``threading.Lock`` (uncontended: ~0.1 µs). A reader therefore never sees half a row.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Mapping

import numpy as np

from orchestrator.contract.durations import format_duration
from orchestrator.contract.responses import TimeseriesPoint as TimeSeriesPoint
from orchestrator.contract.times import format_rfc3339

__all__ = [
    "POINT_METRICS",
    "REPORT_METRICS",
    "TimeSeriesPoint",
    "TimeSeriesStore",
]

#: Metrics a report may carry (the keys of ``add_report``'s ``metrics``), in storage column order.
REPORT_METRICS: tuple[str, ...] = (
    "cpu_percent",
    "memory_used",
    "memory_percent",
    "load1",
    "net_rx_bytes",
    "net_tx_bytes",
    "process_count",
    "container_count",
    "connection_count",
)
#: Metrics of every returned point, in contract order.
POINT_METRICS: tuple[str, ...] = (
    "cpu_percent",
    "memory_used",
    "memory_percent",
    "load1",
    "net_rx_rate",
    "net_tx_rate",
    "process_count",
    "container_count",
    "connection_count",
)
_INTEGER_METRICS = frozenset({"memory_used", "process_count", "container_count", "connection_count"})

_COL_BUCKET = 0
_COL_NET_TS = 1
_METRIC_COLUMN = {name: 2 + i for i, name in enumerate(REPORT_METRICS)}
_COL_RX = _METRIC_COLUMN["net_rx_bytes"]
_COL_TX = _METRIC_COLUMN["net_tx_bytes"]
_NCOLS = 2 + len(REPORT_METRICS)
# Storage columns copied straight to the point columns that are not rates.
_PLAIN_POINT_IDX = [i for i, name in enumerate(POINT_METRICS) if not name.endswith("_rate")]
_PLAIN_STORAGE_COLS = [_METRIC_COLUMN[POINT_METRICS[i]] for i in _PLAIN_POINT_IDX]
_RX_RATE_IDX = POINT_METRICS.index("net_rx_rate")
_TX_RATE_IDX = POINT_METRICS.index("net_tx_rate")

# Blob: magic, version, column count, reserved (0), resolution (s), row count; then the rows,
# little-endian float64, oldest bucket first. Only filled slots are written.
_BLOB_MAGIC = b"OTSB"
_BLOB_VERSION = 1
_BLOB_HEADER = struct.Struct("<4sBBHdI")
_BLOB_DTYPE = np.dtype("<f8")
_ROW_BYTES = _NCOLS * np.dtype(np.float64).itemsize
#: Rows of an agent's array at its first point; doubled as needed, up to the store's capacity.
FIRST_ROWS = 4


class TimeSeriesStore:
    """Bounded, per-agent metric history. See the module docstring for the rules."""

    def __init__(self, max_data_age: float = 3600.0, resolution: float = 15.0) -> None:
        if not (math.isfinite(resolution) and resolution > 0):
            raise ValueError(f"resolution must be a positive number of seconds, got {resolution!r}")
        if not (math.isfinite(max_data_age) and max_data_age >= resolution):
            raise ValueError(f"max_data_age must be at least one resolution, got {max_data_age!r}")
        self.resolution = float(resolution)
        self.max_data_age = float(max_data_age)
        # The tolerance keeps 3600 / 15 at 240 even when the division is a hair above an integer.
        self.capacity = math.ceil(max_data_age / resolution - 1e-9)
        self._buffers: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        # Kept as the buffers change, so stats() costs the same at 100 agents and at 100,000.
        self._points = 0  # filled slots (expired ones included, until purged)
        self._bytes = 0  # the arrays' data

    # -- writing ------------------------------------------------------------------------------------

    def add_report(
        self,
        agent_id: str,
        timestamp: float,
        metrics: Mapping[str, float | None],
        now: float | None = None,
    ) -> bool:
        """Record a report's metrics in the bucket of its ``timestamp``.

        :param metrics: any of :data:`REPORT_METRICS`; missing, ``None`` or non-finite values are
            skipped (they do not erase what the bucket holds); other keys are ignored.
        :param now: the server clock, for retention; defaults to ``time.time()``.
        :return: ``True`` if a point was written; ``False`` when the bucket is older than retention,
            its slot holds a newer bucket, or the report carries no metric at all.
        """
        ts = float(timestamp)
        if not math.isfinite(ts):
            raise ValueError(f"timestamp must be finite, got {timestamp!r}")
        now = time.time() if now is None else now
        bucket = math.floor(ts / self.resolution)
        if bucket < self._oldest_bucket(now):
            return False
        updates = _metric_updates(metrics)
        if not updates:
            return False
        buf = self._buffers.get(agent_id)
        if buf is None:
            buf = self._buffers[agent_id] = self._new_buffer(min(FIRST_ROWS, self.capacity))
        if buf.shape[0] < self.capacity and not self._clear_full_ring_slot(buf, bucket):
            return False
        while True:
            slot = bucket % buf.shape[0]
            row = buf[slot].tolist()
            held = row[_COL_BUCKET]
            if not self._must_grow(buf, held, bucket, now):
                break
            buf = self._grow(agent_id, buf, now)
        if held != bucket:  # empty slot (NaN) or another bucket
            if held > bucket:
                return False
            if held != held:  # NaN: a slot filled for the first time
                self._points += 1
            row = [math.nan] * _NCOLS
            row[_COL_BUCKET] = float(bucket)
        for column, value in updates:
            row[column] = value
            if column in (_COL_RX, _COL_TX):
                row[_COL_NET_TS] = ts
        with self._lock:
            buf[slot] = row  # the whole row at once: readers see the old row or the new one
        return True

    def purge_expired(self, now: float | None = None) -> int:
        """Clear every slot older than retention; return how many were cleared.

        Agents left without points are kept: deciding to forget an agent is the cleanup task's job.
        """
        oldest = self._oldest_bucket(time.time() if now is None else now)
        cleared = 0
        for buf in list(self._buffers.values()):
            expired = buf[:, _COL_BUCKET] < oldest  # NaN (empty) compares False
            count = int(np.count_nonzero(expired))
            if count:
                with self._lock:
                    buf[expired] = np.nan
                cleared += count
        self._points -= cleared
        return cleared

    # -- reading ------------------------------------------------------------------------------------

    def get_recent_points(
        self,
        agent_id: str,
        duration: float | None = None,
        step: float = 15.0,
        now: float | None = None,
    ) -> list[TimeSeriesPoint]:
        """The agent's points whose bucket starts within ``[now - duration, now]``, oldest first.

        :param duration: seconds; ``None`` or more than retention gives everything retained.
        :param step: seconds, a multiple of the resolution; buckets are averaged (NaN-aware) into
            ``floor(bucket_start / step)`` groups. Rates are computed on the raw buckets first.
        :raises KeyError: unknown agent.
        :raises ValueError: ``step`` is not a positive multiple of the resolution, or ``duration``
            is not positive.
        """
        group_size = self._step_buckets(step)
        if duration is not None and not duration > 0:
            raise ValueError(f"duration must be positive, got {duration!r}")
        now = time.time() if now is None else now
        rows = self._sorted_rows(agent_id)
        rows = rows[rows[:, _COL_BUCKET] >= self._oldest_bucket(now)]
        values = _point_values(rows)
        buckets = rows[:, _COL_BUCKET]
        in_window = buckets <= math.floor(now / self.resolution)
        if duration is not None:
            in_window &= buckets >= math.ceil((now - duration) / self.resolution)
        buckets, values = buckets[in_window], values[in_window]
        if group_size > 1 and buckets.size:
            buckets, values = _average_groups(buckets, values, group_size)
        return _format_points(buckets * self.resolution, values)

    def get_all_agents(self) -> list[str]:
        return sorted(self._buffers)

    def has_agent(self, agent_id: str) -> bool:
        return agent_id in self._buffers

    # -- lifecycle ----------------------------------------------------------------------------------

    def delete_agent(self, agent_id: str) -> bytes | None:
        """Forget the agent; return its exported buffer (for archiving), or ``None`` if unknown."""
        if agent_id not in self._buffers:
            return None
        blob = self.export_agent(agent_id)
        self._forget(self._buffers.pop(agent_id))
        return blob

    def export_agent(self, agent_id: str) -> bytes:
        """The agent's points as a versioned blob (see ``_BLOB_HEADER``). :raises KeyError: unknown."""
        rows = self._sorted_rows(agent_id)
        header = _BLOB_HEADER.pack(_BLOB_MAGIC, _BLOB_VERSION, _NCOLS, 0, self.resolution, rows.shape[0])
        return header + rows.astype(_BLOB_DTYPE, copy=False).tobytes()

    def import_agent(self, agent_id: str, blob: bytes) -> None:
        """Replace the agent's points with those of an exported blob.

        A blob from a store with another capacity keeps its newest points that fit this ring.
        :raises ValueError: malformed blob, unknown version, or a different resolution.
        """
        rows = _decode_blob(blob, self.resolution)
        if rows.shape[0]:
            newest = rows[-1, _COL_BUCKET]
            rows = rows[rows[:, _COL_BUCKET] > newest - self.capacity]
        buckets = rows[:, _COL_BUCKET].astype(np.int64)
        size = min(FIRST_ROWS, self.capacity)
        while size < self.capacity and np.unique(buckets % size).size < buckets.size:
            size = min(2 * size, self.capacity)
        buf = self._new_buffer(size)
        buf[buckets % size] = rows
        self._points += rows.shape[0]
        with self._lock:
            old = self._buffers.get(agent_id)
            self._buffers[agent_id] = buf
        if old is not None:
            self._forget(old)

    # -- stats --------------------------------------------------------------------------------------

    @property
    def bytes_per_agent(self) -> int:
        """The most one agent's array takes (a full ring: ``capacity`` rows); most take less."""
        return self.capacity * _ROW_BYTES

    def memory_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, object]:
        """Agents, points and memory, kept up to date as the arrays change: no pass over the agents."""
        return {
            "agents": len(self._buffers),
            "points": self._points,
            "memory_bytes": self._bytes,
            "bytes_per_agent": self.bytes_per_agent,
            "resolution": format_duration(self.resolution),
            "max_data_age": format_duration(self.max_data_age),
        }

    # -- internals ----------------------------------------------------------------------------------

    def _new_buffer(self, rows: int) -> np.ndarray:
        self._bytes += rows * _ROW_BYTES
        return np.full((rows, _NCOLS), np.nan)

    def _forget(self, buf: np.ndarray) -> None:
        self._bytes -= buf.nbytes
        self._points -= int(np.count_nonzero(~np.isnan(buf[:, _COL_BUCKET])))

    def _clear_full_ring_slot(self, buf: np.ndarray, bucket: int) -> bool:
        """In a ring smaller than ``capacity``, what the full ring does with the slot ``bucket`` shares with
        another bucket (``capacity`` buckets apart: only across future-dated reports): ``False`` when that
        bucket is newer (the report is refused), else that bucket's row is cleared."""
        buckets = buf[:, _COL_BUCKET]
        with np.errstate(invalid="ignore"):
            shared = np.flatnonzero((buckets != bucket) & (np.mod(buckets - bucket, self.capacity) == 0))
        if not shared.size:
            return True
        if buckets[shared[0]] > bucket:
            return False
        with self._lock:
            buf[shared[0]] = np.nan
        self._points -= 1
        return True

    def _must_grow(self, buf: np.ndarray, held: float, bucket: int, now: float) -> bool:
        """Whether writing ``bucket`` into the slot holding ``held`` would lose a point the full ring keeps
        (in another slot): a ring smaller than ``capacity`` whose slot holds another bucket, still retained."""
        if buf.shape[0] >= self.capacity or held != held or held == bucket:  # full ring, empty slot, same bucket
            return False
        return held >= self._oldest_bucket(now)

    def _grow(self, agent_id: str, buf: np.ndarray, now: float) -> np.ndarray:
        """The agent's rows in an array twice the size (at most ``capacity``), expired ones dropped. Buckets
        in distinct slots of the smaller ring are in distinct slots of the doubled one, and the retained
        buckets of a ring (never two a ``capacity`` apart) in distinct slots of the full one."""
        size = min(2 * buf.shape[0], self.capacity)
        rows = buf[~np.isnan(buf[:, _COL_BUCKET])]
        kept = rows[rows[:, _COL_BUCKET] >= self._oldest_bucket(now)]
        grown = self._new_buffer(size)
        grown[kept[:, _COL_BUCKET].astype(np.int64) % size] = kept
        self._points += kept.shape[0]
        with self._lock:
            self._buffers[agent_id] = grown
        self._forget(buf)
        return grown

    def _oldest_bucket(self, now: float) -> int:
        return math.floor(now / self.resolution) - self.capacity + 1

    def _step_buckets(self, step: float | None) -> int:
        if step is None:
            return 1
        ratio = step / self.resolution if math.isfinite(step) else math.nan
        if not (ratio >= 1 and abs(ratio - round(ratio)) < 1e-9):
            raise ValueError(f"step must be a positive multiple of {self.resolution:g}s, got {step!r}")
        return round(ratio)

    def _sorted_rows(self, agent_id: str) -> np.ndarray:
        """A private copy of the agent's filled rows, oldest bucket first. :raises KeyError:"""
        buf = self._buffers[agent_id]
        with self._lock:
            snapshot = buf.copy()
        rows = snapshot[~np.isnan(snapshot[:, _COL_BUCKET])]
        ordered: np.ndarray = rows[np.argsort(rows[:, _COL_BUCKET], kind="stable")]
        return ordered


def _metric_updates(metrics: Mapping[str, float | None]) -> list[tuple[int, float]]:
    updates = []
    for name, column in _METRIC_COLUMN.items():
        value = metrics.get(name)
        if value is not None:
            value = float(value)
            if math.isfinite(value):
                updates.append((column, value))
    return updates


def _point_values(rows: np.ndarray) -> np.ndarray:
    """The contract metrics for sorted storage rows: counters become rates, the rest is copied."""
    values = np.empty((rows.shape[0], len(POINT_METRICS)))
    values[:, _PLAIN_POINT_IDX] = rows[:, _PLAIN_STORAGE_COLS]
    net_ts = rows[:, _COL_NET_TS]
    values[:, _RX_RATE_IDX] = _counter_rates(rows[:, _COL_RX], net_ts)
    values[:, _TX_RATE_IDX] = _counter_rates(rows[:, _COL_TX], net_ts)
    return values


def _counter_rates(counter: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Per-second rate between each point carrying the counter and the previous one carrying it."""
    rates = np.full(counter.shape, np.nan)
    have = np.flatnonzero(~np.isnan(counter))
    if have.size < 2:
        return rates
    delta = np.diff(counter[have])
    elapsed = np.diff(ts[have])
    with np.errstate(divide="ignore", invalid="ignore"):
        step_rates = delta / elapsed
    # A decrease is a counter reset: the true traffic is unknown, so no rate rather than a negative one.
    step_rates[(delta < 0) | ~(elapsed > 0)] = np.nan
    rates[have[1:]] = step_rates
    return rates


def _average_groups(buckets: np.ndarray, values: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware mean of sorted buckets per ``floor(bucket / group_size)``; returns group starts."""
    groups = np.floor_divide(buckets, group_size)
    starts = np.flatnonzero(np.concatenate(([True], groups[1:] != groups[:-1])))
    present = ~np.isnan(values)
    sums = np.add.reduceat(np.where(present, values, 0.0), starts, axis=0)
    counts = np.add.reduceat(present.astype(np.int64), starts, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        means = sums / counts  # 0 / 0 → NaN: a metric absent from the whole group stays missing
    return groups[starts] * group_size, means


def _format_points(starts: np.ndarray, values: np.ndarray) -> list[TimeSeriesPoint]:
    """Build the output dicts; timestamps are bucket (or group) start times in epoch seconds."""
    columns = []
    for index, name in enumerate(POINT_METRICS):
        column = values[:, index]
        missing = np.isnan(column)
        if name in _INTEGER_METRICS:
            boxed = np.rint(np.where(missing, 0.0, column)).astype(np.int64).astype(object)
        else:
            boxed = column.astype(object)
        boxed[missing] = None
        columns.append(boxed.tolist())
    # A dict display is about twice as fast as dict(zip(keys, row)); the key order is POINT_METRICS'.
    return [
        {
            "timestamp": stamp,
            "cpu_percent": cpu_percent,
            "memory_used": memory_used,
            "memory_percent": memory_percent,
            "load1": load1,
            "net_rx_rate": net_rx_rate,
            "net_tx_rate": net_tx_rate,
            "process_count": process_count,
            "container_count": container_count,
            "connection_count": connection_count,
        }
        for (
            stamp,
            cpu_percent,
            memory_used,
            memory_percent,
            load1,
            net_rx_rate,
            net_tx_rate,
            process_count,
            container_count,
            connection_count,
        ) in zip(map(format_rfc3339, starts.tolist()), *columns)
    ]


def _decode_blob(blob: bytes, resolution: float) -> np.ndarray:
    """Validate an exported blob and return its rows (sorted, unique buckets)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) < _BLOB_HEADER.size:
        raise ValueError("time-series blob is too short")
    magic, version, ncols, reserved, blob_resolution, nrows = _BLOB_HEADER.unpack_from(blob)
    if magic != _BLOB_MAGIC:
        raise ValueError("not a time-series blob (bad magic)")
    if version != _BLOB_VERSION or reserved != 0:
        raise ValueError(f"unsupported time-series blob version {version}")
    if ncols != _NCOLS:
        raise ValueError(f"time-series blob has {ncols} columns, expected {_NCOLS}")
    if blob_resolution != resolution:
        raise ValueError(f"time-series blob resolution {blob_resolution:g}s, store uses {resolution:g}s")
    if len(blob) != _BLOB_HEADER.size + nrows * ncols * _BLOB_DTYPE.itemsize:
        raise ValueError("time-series blob length does not match its header")
    data = np.frombuffer(blob, dtype=_BLOB_DTYPE, offset=_BLOB_HEADER.size)
    rows = data.reshape(nrows, ncols).astype(np.float64)
    buckets = rows[:, _COL_BUCKET]
    if not np.all(np.isfinite(buckets)) or np.any(buckets != np.floor(buckets)):
        raise ValueError("time-series blob has an invalid bucket index")
    if np.any(np.diff(buckets) <= 0):
        raise ValueError("time-series blob buckets are not strictly increasing")
    return rows
