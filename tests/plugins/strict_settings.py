"""An installable test plugin (a module, for an entry point) that refuses settings it does not know."""

from __future__ import annotations

from orchestrator.hookspecs import hookimpl
from orchestrator.pipeline.host import PluginError


@hookimpl
def configure_plugin(name, settings):
    unknown = set(settings) - {"level"}
    if unknown:
        raise PluginError(f"unknown settings {sorted(unknown)}")
