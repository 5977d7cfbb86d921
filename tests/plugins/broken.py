"""Test plugins that get the plugin contract wrong, or fail, in the ways the host must catch."""

from __future__ import annotations

from pydantic import BaseModel

from orchestrator.hookspecs import hookimpl
from orchestrator.pipeline.host import PluginError


class RaisingExtractor:
    """A third-party extractor (no ``trylast``, so asked before the built-in) that always raises."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def extract_container_id(self, cgroup):
        self.calls += 1
        raise RuntimeError("extractor bug")


class FlakyExtractor:
    """Raises on its first call, then knows every text: its answer must not be hidden by a cached ``None``."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def extract_container_id(self, cgroup):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("not ready yet")
        return "flaky-" + str(len(cgroup))


class Misspelled:
    @hookimpl
    def merge_reports(self, report, context):  # not a hook: must stop start-up, not be silently ignored
        raise AssertionError("never called")


class WantsTopology:
    """The merger signature before mergers got a bound ``context.contribute``."""

    @hookimpl
    def merge_report(self, report, topology, context):
        raise AssertionError("never called")


class Section(BaseModel):
    value: int


class OrderedStartUp:
    """Records the order of its start-up hooks; refuses settings it does not know."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def register_sections(self):
        self.calls.append("register_sections")
        return {"ordered_info": Section}

    @hookimpl
    def configure_plugin(self, name, settings):
        self.calls.append("configure_plugin")
        unknown = set(settings) - {"level"}
        if unknown:
            raise PluginError(f"unknown settings {sorted(unknown)}")


class CrashingConfigure:
    @hookimpl
    def configure_plugin(self, name, settings):
        raise ValueError("config bug")
