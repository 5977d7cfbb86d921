"""The plugin host: builds the plugin manager, loads built-in and third-party plugins, calls hooks safely.

Built-in plugins are found through the ``orchestrator`` entry-point group like any other, so the plugin API
is exercised by the product itself. ``pipeline.disable`` blocks plugins by name before they load;
``pipeline.order`` puts the named plugins first, in that order, for the collecting hooks.

Start-up fails with :class:`PluginError` (the CLI exits with status 2) when the built-in plugins are not
installed, when a plugin implements a hook that does not exist (a misspelled name would otherwise never be
called), when two plugins claim one section, and when ``configure_plugin`` refuses a plugin's settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import pluggy
import structlog

from orchestrator import hookspecs
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from pydantic import BaseModel

    from orchestrator.runtime.metrics import Metrics

ENTRY_POINT_GROUP = "orchestrator"
BUILTIN_PACKAGE = "orchestrator_plugins"
log = structlog.get_logger("orchestrator.pipeline.host")


class PluginError(Exception):
    """A plugin that cannot be loaded or configured: a start-up error."""


def get_plugin_manager(settings: Settings, extra_plugins: Iterable[tuple[str, object]] = ()) -> pluggy.PluginManager:
    """Load the entry-point plugins (minus the blocked ones), then ``extra_plugins``, and check every hook
    implementation names a hook that exists. :raises PluginError:"""
    if not any(ep.value.startswith(BUILTIN_PACKAGE) for ep in entry_points(group=ENTRY_POINT_GROUP)):
        raise PluginError(
            f"no built-in plugins in the {ENTRY_POINT_GROUP!r} entry-point group: orchestrator is not installed"
            " (run `pip install -e .` in the checkout)"
        )
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    disabled = set(settings.pipeline.disable) | {
        name for name, conf in settings.pipeline.plugins.items() if not conf.enabled
    }
    for blocked in disabled:
        pm.set_blocked(blocked)
    registering: str | None = None  # the extra plugin being registered
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for registering, plugin in extra_plugins:
            if not pm.is_blocked(registering):
                pm.register(plugin, name=registering)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        culprit = pm.get_name(exc.plugin) or registering or getattr(exc.plugin, "__name__", repr(exc.plugin))
        raise PluginError(f"plugin {culprit!r}: {'; '.join(str(exc).splitlines())}") from None
    return pm


def configure_plugins(pm: pluggy.PluginManager, settings: Settings) -> dict[str, type[BaseModel]]:
    """Collect the sections plugins claim (``register_sections``), then hand each plugin its settings
    (``configure_plugin``). :raises PluginError: a section claimed twice, or a plugin that fails either hook."""
    sections: dict[str, type[BaseModel]] = {}
    for impl in pm.hook.register_sections.get_hookimpls():
        claimed = _start_up_call(impl, "register_sections") or {}
        for section, model in claimed.items():
            if section in sections:
                raise PluginError(f"section {section!r} is claimed by two plugins (the second is {impl.plugin_name!r})")
            sections[section] = model
    for impl in pm.hook.configure_plugin.get_hookimpls():
        conf = settings.pipeline.plugins.get(impl.plugin_name)
        _start_up_call(impl, "configure_plugin", name=impl.plugin_name, settings=dict(conf.settings) if conf else {})
    return sections


def _start_up_call(impl: pluggy.HookImpl, hook_name: str, **kwargs: Any) -> Any:
    try:
        return impl.function(*[kwargs[arg] for arg in impl.argnames])
    except PluginError as exc:
        raise PluginError(f"plugin {impl.plugin_name!r}: {exc}") from None
    except Exception as exc:
        raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc!r}") from exc


def plugin_names(pm: pluggy.PluginManager) -> list[str]:
    return sorted(name for name, plugin in pm.list_name_plugin() if plugin is not None)


class Hooks:
    """Every hook's implementations in call order, worked out once (plugins are only registered at
    start-up), and the call that isolates each implementation.

    The order is pluggy's (``tryfirst`` first, ``trylast`` last, otherwise the most recently registered
    first); for the collecting hooks the plugins named in ``pipeline.order`` go first, in that order.
    """

    def __init__(self, pm: pluggy.PluginManager, order: list[str], metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self._impls: dict[str, list[pluggy.HookImpl]] = {}
        for name, caller in vars(pm.hook).items():
            impls = list(reversed(caller.get_hookimpls()))
            wrappers = [impl.plugin_name for impl in impls if impl.hookwrapper or impl.wrapper]
            if wrappers:
                raise PluginError(f"hook wrappers are not supported ({name} in {', '.join(wrappers)})")
            if order and not (caller.spec and caller.spec.opts.get("firstresult")):
                rank = {plugin: i for i, plugin in enumerate(order)}
                impls.sort(key=lambda impl: rank.get(impl.plugin_name, len(rank)))  # stable: the rest keep pluggy's
            self._impls[name] = impls

    def impls(self, hook_name: str) -> list[pluggy.HookImpl]:
        """The hook's implementations in call order."""
        return self._impls[hook_name]

    def call_each(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of a hook, isolating each: one plugin's exception is logged with its
        name and counted, and never stops the others. Returns ``(plugin name, result)`` for each result
        that is not ``None``."""
        results = []
        for impl in self._impls[hook_name]:
            try:
                result = impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception as exc:
                self.failed(impl, hook_name, exc)
                continue
            if result is not None:
                results.append((impl.plugin_name, result))
        return results

    def failed(self, impl: pluggy.HookImpl, hook_name: str, exc: Exception) -> None:
        """Log and count one implementation's exception (``app_plugin_errors_total``)."""
        log.error("plugin_failed", plugin=impl.plugin_name, hook=hook_name, error=repr(exc), exc_info=exc)
        if self.metrics is not None:
            self.metrics.plugin_errors.labels(impl.plugin_name, hook_name).inc()
