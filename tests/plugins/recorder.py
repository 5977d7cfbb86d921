"""Test plugins that record the order they were called in, and one that always fails."""

import threading

from orchestrator.hookspecs import hookimpl

CALLS: list[str] = []


class Recorder:
    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def receive_report(self, report, raw, state):
        CALLS.append(self.name)


class Failing:
    @hookimpl
    def merge_report(self, report, context):
        raise RuntimeError("merger bug")

    @hookimpl
    def receive_report(self, report, raw, state):
        raise RuntimeError("sink bug")

    @hookimpl
    def validate_report(self, report, settings):
        raise RuntimeError("validator bug")


class RejectOdd:
    """A validator: rejects reports whose processes carry odd pids."""

    @hookimpl
    def validate_report(self, report, settings):
        if report.processes_info is None:
            return None
        return [
            (f"processes_info.processes.{i}.pid", "odd pids are not allowed here")
            for i, p in enumerate(report.processes_info.processes)
            if p.pid % 2
        ] or None


class MergeWatch:
    """Marks when the ingest worker starts merging a report (this merger runs first) and when the report's
    sinks run (every merger is done): the window in which a sliced merge must still answer requests."""

    def __init__(self) -> None:
        self.merging = threading.Event()
        self.applied = threading.Event()

    @hookimpl(tryfirst=True)
    def merge_report(self, report, context):
        self.merging.set()

    @hookimpl
    def receive_report(self, report, raw, state):
        self.applied.set()
