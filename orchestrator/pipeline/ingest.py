"""From accepted report to applied report: the bounded ingest queue and its worker.

The request side first asks :meth:`Ingest.admission` whether there is room (503 while shutting down, 429 when
the backlog is full by count or by bytes, both with Retry-After and before the body is even read), then
decodes and validates (``pipeline/decode.py``, so every rejection reaches the probe), then queues the report
and answers 202. The worker applies queued
reports in arrival order: ``merge_report`` hooks, then ``receive_report`` sinks. A 202 is never dropped:
graceful shutdown drains the queue before the final checkpoint.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import structlog

from orchestrator.contract.errors import ApiError
from orchestrator.contract.models import BUILTIN_SECTIONS, Process, Report, count_items
from orchestrator.pipeline.host import Hooks
from orchestrator.runtime.slicing import TimeSlice, run_steps
from orchestrator.topology import Contribution, Topology

if TYPE_CHECKING:
    from orchestrator.state import State

log = structlog.get_logger("orchestrator.pipeline.ingest")
BATCH_SECONDS = 0.005
MAX_BATCH = 1024


@dataclass(slots=True)
class Accepted:
    report: Report
    raw: bytes
    gzipped: bytes | None
    received_at: float
    order: int


@dataclass(slots=True)
class MergeContext:
    """What a ``merge_report`` hook gets besides the report: :meth:`contribute`, bound to this report, the
    live topology and both clocks; :meth:`container_id` (cached extraction); the report's arrival
    ``order`` and ``received_at``, the server's clock when it was accepted.

    The ingest worker makes it with ``pending`` set: contributions are then kept there and applied in
    steps right after the hook returns (:meth:`Ingest.merge_steps`), so a report of 50,000 connections
    does not hold the event loop for the whole of its merge. Hooks cannot read the live topology, so
    applying after the hook gives the same topology as applying inside it."""

    report: Report
    order: int
    received_at: float
    extract: Callable[[str], str | None]
    _topology: Topology
    pending: list[tuple[str, Contribution | None]] | None = None

    def contribute(self, section: str, contribution: Contribution | None) -> None:
        """Replace the report's agent's contribution for ``section`` (``None`` removes it): the report's
        timestamp orders, its arrival order breaks ties, the receipt time sets ``first_seen``/``last_seen``."""
        if self.pending is not None:
            self.pending.append((section, contribution))
        else:
            run_steps(self.contribute_steps(section, contribution))

    def contribute_steps(self, section: str, contribution: Contribution | None) -> Generator[None, None, None]:
        report = self.report
        return self._topology.contribute_steps(
            report.agent_id, report.hostname, section, report.epoch, self.order, contribution, seen=self.received_at
        )

    def container_id(self, process: Process) -> str | None:
        """The process's container: its own ``container_id``, else extracted from its cgroup text."""
        if process.container_id:
            return process.container_id
        return self.extract(process.cgroup) if process.cgroup else None


class ContainerIdCache:
    """``extract_container_id`` once per distinct cgroup text: probes repeat the same texts every report.

    The implementations are called one by one in pluggy's order, so one that raises is logged with its
    plugin's name and counted, and the next (in the end the built-in, ``trylast``) still answers. An answer
    reached past a failure is not cached: the text is tried again next time.
    """

    def __init__(self, hooks: Hooks, max_entries: int = 200_000) -> None:
        self._hooks = hooks
        self._impls = hooks.impls("extract_container_id")
        self._cache: dict[str, str | None] = {}
        self._max = max_entries

    def __call__(self, cgroup: str) -> str | None:
        try:
            return self._cache[cgroup]
        except KeyError:
            pass
        found, failed = None, False
        for impl in self._impls:
            try:
                found = cast("str | None", impl.function(*(cgroup,)[: len(impl.argnames)]))
            except Exception as exc:
                self._hooks.failed(impl, "extract_container_id", exc)
                failed = True
                continue
            if found is not None:
                break
        if not failed:
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[cgroup] = found
        return found


@dataclass
class Ingest:
    """The bounded queue between the 202 and the topology; owned by the app's event loop."""

    state: State
    queue: asyncio.Queue[Accepted] = field(init=False)
    closing: bool = False
    instance: str = field(default_factory=lambda: os.urandom(4).hex())
    # In cluster mode, the messages of the log this replica has still to apply: a 202 there means stored in
    # the log, not queued here, so the log's unapplied part is the backlog the bound must cover.
    unapplied_log: Callable[[], int] = lambda: 0

    def __post_init__(self) -> None:
        settings = self.state.settings
        # The bounds are on the whole backlog (queued + the batch the worker holds + requests admitted at
        # the door whose body is still being read or validated), enforced by admission() and submit().
        self.capacity = settings.server.ingest_queue_size
        self.max_bytes = settings.server.ingest_queue_bytes
        self.state.metrics.ingest_queue_capacity.set(self.capacity)
        self.queue = asyncio.Queue()
        self.extract = ContainerIdCache(self.state.hooks)
        self._batch: deque[Accepted] = deque()  # taken off the queue, not applied yet
        self.queued_bytes = 0  # decoded JSON of the backlog
        self._admitted = 0  # past the door, not submitted yet
        self._reserved_bytes = 0  # their bodies' wire sizes: a lower bound of what they will add
        # The order of the last report of the last batch applied in full: every report accepted with an order
        # up to it is in the state (a checkpoint waits for it; a superseded merge waits for its batch's end).
        self.applied_order = 0

    def refusal(self) -> ApiError | None:
        """Why a report cannot be taken now (503 shutting down, 429 backlog full by count or by bytes), from
        the server's state alone: decided before the request's body is read, inflated or validated, so that
        under overload a refused report costs next to nothing."""
        if self.closing:
            return self._refused(503, "server is shutting down; retry against the restarted server", "shutting_down")
        behind = self.unapplied_log()
        by_count = self.backlog + behind + self._admitted >= self.capacity
        if by_count or self.queued_bytes + self._reserved_bytes >= self.max_bytes:
            full = (
                f"this replica has {behind} messages of the cluster's log still to apply"
                if by_count and behind
                else "ingest queue is full"
            )
            return self._refused(429, full + "; retry later", "overloaded")
        return None

    @contextmanager
    def admission(self, wire_bytes: int) -> Generator[None, None, None]:
        """Hold a report's place in the backlog from the door until :meth:`submit` queues it (or it fails),
        so that the bodies being read and validated meanwhile cannot overfill the queue."""
        if (refused := self.refusal()) is not None:
            raise refused
        self._admitted += 1
        self._reserved_bytes += wire_bytes
        try:
            yield
        finally:
            self._admitted -= 1
            self._reserved_bytes -= wire_bytes

    def submit(self, report: Report, raw: bytes, now: float, gzipped: bytes | None = None) -> str:
        """Queue a validated report or refuse it *before* accepting (429/503 + Retry-After). A report larger
        than the room left is refused unless the backlog is empty (so any report within the body limits can
        get in)."""
        if self.closing:  # the shutdown began while the body was read
            raise self._refused(503, "server is shutting down; retry against the restarted server", "shutting_down")
        if self.backlog >= self.capacity or (self.backlog and self.queued_bytes + len(raw) > self.max_bytes):
            raise self._refused(429, "ingest queue is full; retry later", "overloaded")
        order = self.state.next_order()
        self.queue.put_nowait(Accepted(report, raw, gzipped, now, order))
        self.queued_bytes += len(raw)
        self._show_backlog()
        return f"{self.instance}-{order}"

    def _refused(self, status: int, message: str, code: str) -> ApiError:
        self.state.metrics.reports_throttled.inc()
        retry = str(max(1, round(self.state.settings.server.retry_after)))
        return ApiError(status, message, code=code, headers={"Retry-After": retry})

    def _show_backlog(self) -> None:
        self.state.metrics.ingest_queue.set(self.queue.qsize())
        self.state.metrics.ingest_queue_bytes.set(self.queued_bytes)

    async def run(self) -> None:
        """Apply queued reports until cancelled, yielding the loop to requests every few milliseconds.

        The worker takes everything queued as one batch. Under load a batch holds several reports of the
        same agent; a report whose every section a later report of the batch replaces (same agent, not
        older) is not merged — sections replace, so merging it would change nothing that stays — but its
        sinks still run (time series need every point). This is what keeps ingest ahead of a burst.
        """
        while True:
            self._batch.append(await self.queue.get())
            while not self.queue.empty() and len(self._batch) < MAX_BATCH:
                self._batch.append(self.queue.get_nowait())
            self._show_backlog()
            skip = superseded(self._batch)
            stretch = TimeSlice(BATCH_SECONDS)
            last = self._batch[-1].order
            while self._batch:
                # A publish in slices, a cleanup batch and a checkpoint's gathering read the topology under
                # the lock: held across a report merged in several steps, they never see half of one.
                async with self.state.topology_lock:
                    stretch.restart()
                    while self._batch and not stretch.due():
                        await self._apply_first(skip, stretch)
                await stretch.pause()
            self.applied_order = last
            self._show_backlog()

    async def _apply_first(self, skip: set[int], stretch: TimeSlice) -> None:
        """Apply the batch's first report, yielding the loop whenever the stretch is used up, then take it
        off the batch (until then it counts in the backlog). Cancelled part-way (shutdown), it finishes the
        report in one go first: a report is never left half-merged for the drain to apply again."""
        item = self._batch[0]
        steps = self.apply_steps(item, merge=item.order not in skip)
        try:
            for _ in steps:
                if stretch.due():
                    await stretch.pause()
        except asyncio.CancelledError:
            run_steps(steps)
            raise
        finally:
            self._batch.popleft()

    def apply(self, item: Accepted, merge: bool = True) -> None:
        """Apply one accepted report in one go (the shutdown drain, a cluster replica)."""
        run_steps(self.apply_steps(item, merge))

    def apply_steps(self, item: Accepted, merge: bool = True) -> Generator[None, None, None]:
        """Merge one report (in steps: it yields every few hundred items merged), then run its sinks."""
        state = self.state
        start = time.perf_counter()
        if merge:
            yield from self.merge_steps(item)
        else:
            state.metrics.reports_coalesced.inc()
        state.hooks.call_each(
            "receive_report",
            report=item.report,
            raw=item.raw,
            gzipped=item.gzipped,
            received_at=item.received_at,
            state=state,
        )
        state.dirty_agents.add(item.report.agent_id)
        self.queued_bytes -= len(item.raw)
        state.metrics.ingest_queue_bytes.set(self.queued_bytes)
        state.metrics.ingest_seconds.observe(time.perf_counter() - start)

    def merge_steps(self, item: Accepted) -> Generator[None, None, None]:
        """The ``merge_report`` hooks, one by one, each one's contributions applied right after it returns.
        An exception from the hook or from applying what it contributed is the plugin's: logged with its
        name and counted, and the other plugins still merge (as ``Hooks.call_each`` does)."""
        hooks = self.state.hooks
        pending: list[tuple[str, Contribution | None]] = []
        context = MergeContext(item.report, item.order, item.received_at, self.extract, self.state.topology, pending)
        kwargs = {"report": item.report, "context": context}
        for impl in hooks.impls("merge_report"):
            try:
                impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception as exc:
                hooks.failed(impl, "merge_report", exc)
            while pending:
                section, contribution = pending.pop(0)
                try:
                    yield from context.contribute_steps(section, contribution)
                except Exception as exc:
                    hooks.failed(impl, "merge_report", exc)
            yield

    async def drain(self) -> None:
        """Refuse new reports and apply every accepted one, including a batch the worker was cut off in
        (graceful shutdown: a 202 is never lost)."""
        self.closing = True
        while not self.queue.empty():
            self._batch.append(self.queue.get_nowait())
        skip = superseded(self._batch)
        while self._batch:
            item = self._batch[0]
            self.apply(item, merge=item.order not in skip)
            self._batch.popleft()
            self.applied_order = item.order
        self._show_backlog()

    @property
    def backlog(self) -> int:
        """Accepted reports not applied yet."""
        return self.queue.qsize() + len(self._batch)


def report_sections(report: Report) -> set[str]:
    sections = {name for name in BUILTIN_SECTIONS if getattr(report, name) is not None}
    return sections | set(report.sections)


def superseded(batch: Sequence[Accepted]) -> set[int]:
    """Orders of the reports in ``batch`` whose merge a later report of the same agent makes moot: the later
    one carries every section the earlier one does, and is not older (sections replace, ties go to the later)."""
    newest: dict[tuple[str, str], float] = {}  # (agent, section) -> newest epoch among later reports
    skip = set()
    for item in reversed(batch):
        report = item.report
        sections = report_sections(report)
        agent = report.agent_id
        if all(newest.get((agent, s), float("-inf")) >= report.epoch for s in sections):
            skip.add(item.order)
        for section in sections:
            key = (agent, section)
            if newest.get(key, float("-inf")) < report.epoch:
                newest[key] = report.epoch
    return skip


def report_summary(report: Report) -> dict[str, object]:
    """The ``report_update`` WebSocket payload's summary: hostname, timestamp, counts."""
    return {"hostname": report.hostname, "timestamp": report.timestamp, **count_items(report)}
