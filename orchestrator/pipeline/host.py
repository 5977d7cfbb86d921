"""The plugin host: builds the plugin manager, loads built-in and third-party plugins, calls hooks safely.

Built-in plugins are found through the ``orchestrator`` entry-point group like any other, so the plugin API
is exercised by the product itself. ``pipeline.disable`` blocks plugins by name before they load;
``pipeline.order`` puts the named plugins first, in that order, for the collecting hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pluggy
import structlog

from orchestrator import hookspecs
from orchestrator.settings import Settings

ENTRY_POINT_GROUP = "orchestrator"
log = structlog.get_logger("orchestrator.pipeline.host")


class PluginError(Exception):
    """A plugin that cannot be loaded or configured: a start-up error."""


def get_plugin_manager(settings: Settings, extra_plugins: Iterable[tuple[str, Any]] = ()) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    disabled = set(settings.pipeline.disable) | {
        name for name, conf in settings.pipeline.plugins.items() if not conf.enabled
    }
    for name in disabled:
        pm.set_blocked(name)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for name, plugin in extra_plugins:
        if not pm.is_blocked(name):
            pm.register(plugin, name=name)
    return pm


def configure_plugins(pm: pluggy.PluginManager, settings: Settings) -> dict[str, type]:
    """Hand each plugin its settings and collect the sections plugins claim."""
    for name, _plugin in pm.list_name_plugin():
        conf = settings.pipeline.plugins.get(name)
        call_each(
            pm,
            "configure_plugin",
            None,
            settings.pipeline.order,
            only=name,
            name=name,
            settings=dict(conf.settings) if conf else {},
        )
    sections: dict[str, type] = {}
    for impl in pm.hook.register_sections.get_hookimpls():
        claimed = impl.function() or {}
        for section, model in claimed.items():
            if section in sections:
                raise PluginError(f"section {section!r} is claimed by two plugins (the second is {impl.plugin_name!r})")
            sections[section] = model
    return sections


def plugin_names(pm: pluggy.PluginManager) -> list[str]:
    return sorted(name for name, plugin in pm.list_name_plugin() if plugin is not None)


def ordered_impls(pm: pluggy.PluginManager, hook_name: str, order: list[str]) -> list:
    """The hook's implementations in call order: pluggy's order, with ``pipeline.order`` names first."""
    impls = list(reversed(getattr(pm.hook, hook_name).get_hookimpls()))
    if order:
        rank = {name: i for i, name in enumerate(order)}
        impls.sort(key=lambda impl: rank.get(impl.plugin_name, len(rank)))  # stable: the rest keep pluggy's order
    return impls


def call_each(
    pm: pluggy.PluginManager, hook_name: str, metrics, order: list[str], only: str | None = None, **kwargs
) -> list:
    """Call every implementation of a hook, isolating each: one plugin's exception is logged with its
    name and counted, and never stops the others."""
    results = []
    for impl in ordered_impls(pm, hook_name, order):
        if only is not None and impl.plugin_name != only:
            continue
        try:
            result = impl.function(*[kwargs[arg] for arg in impl.argnames])
        except Exception as exc:
            log.error("plugin_failed", plugin=impl.plugin_name, hook=hook_name, error=repr(exc), exc_info=exc)
            if metrics is not None:
                metrics.plugin_errors.labels(impl.plugin_name, hook_name).inc()
            continue
        if result is not None:
            results.append((impl.plugin_name, result))
    return results
