"""The plugin contract: every stage of the ingestion pipeline is a hook.

A report goes through the stages in this order:

1. ``register_sections`` (once, at start-up) — plugins claim new top-level ``*_info`` sections.
2. ``validate_report`` — in the request, before the 202; any reason returned rejects the report with 422.
3. ``merge_report`` — in the ingest worker, in arrival order; mergers turn sections into topology
   contributions. ``extract_container_id`` is called by the process merger for cgroup texts it has not seen.
4. ``receive_report`` — sinks (time-series store, persistence, WebSocket summaries, anything a plugin adds).

Built-in behaviour is implemented by ordinary plugins in ``orchestrator_plugins`` and registered through
the ``orchestrator`` entry-point group, exactly like third-party plugins. A report-time hook that raises is
logged with the plugin's name and counted in ``app_plugin_errors_total``; the report still goes through the
other plugins and is never lost. A start-up hook that raises stops start-up, and so does a hook
implementation whose name is not a hook below (:meth:`pluggy.PluginManager.check_pending`).

Hooks are called once per report (or once per distinct cgroup text), never per process or connection.
pluggy has no async support: every hook here is synchronous and must not block for long — the event loop
that serves requests runs them.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("orchestrator")
hookimpl = pluggy.HookimplMarker("orchestrator")


# -- start-up -----------------------------------------------------------------------------------------


@hookspec
def register_sections():
    """Claim new top-level report sections (new report types).

    Called once at start-up, before ``configure_plugin``. An exception stops start-up.

    :return: a mapping of section name (e.g. ``"kubernetes_info"``) to a pydantic model class that
        validates it. The section is then validated with that model (errors become 422 details under the
        section's path) and the validated model is available to later hooks as
        ``report.sections[name]``. A section claimed by two plugins is a start-up error.
    """


@hookspec
def configure_plugin(name, settings):
    """Hand a plugin its own settings from the ``pipeline.plugins.<name>.settings`` block of the config.

    Called once at start-up for every plugin that implements it, after ``register_sections``, with that
    plugin's own name. An exception stops start-up (the CLI exits with status 2): raise
    :class:`orchestrator.pipeline.host.PluginError` with the reason for settings the plugin refuses.

    :param name: the plugin's registered name (the entry point's name, or the name given to ``extra_plugins``).
    :param settings: the plugin's settings mapping (empty when the config has none).
    """


# -- validation (request time, before the 202) ---------------------------------------------------------


@hookspec
def validate_report(report, settings):
    """Check a report that already passed schema validation. Collects from every plugin.

    Called in the request handler, before the report is queued, so a rejection reaches the probe.

    :param report: the validated :class:`orchestrator.contract.models.Report`.
    :param settings: the server's :class:`orchestrator.settings.Settings`.
    :return: ``None`` to accept, or a list of ``(path, message)`` pairs naming what is wrong, e.g.
        ``[("processes_info.processes.3.pid", "duplicate pid")]``. Any pair rejects the report with 422.
    """


# -- extraction (ingest worker) ------------------------------------------------------------------------


@hookspec(firstresult=True)
def extract_container_id(cgroup):
    """Find the container a process runs in from the raw text of its ``/proc/<pid>/cgroup``.

    Stops at the first non-``None`` result. The built-in extractor is ``trylast``, so a plugin can
    handle a runtime it does not know and fall through to it otherwise; an implementation that raises is
    logged and counted and the next one is asked. Results are cached per distinct text (except when an
    implementation raised), so an implementation must be a pure function: synchronous and free of side
    effects.

    :param cgroup: the text, one or more ``hierarchy-ID:controllers:path`` lines.
    :return: the container's full id (e.g. 64 lowercase hex characters), or ``None`` for a host process.
    """


# -- merge (ingest worker, arrival order) --------------------------------------------------------------


@hookspec
def merge_report(report, context):
    """Contribute a report's sections to the live topology. Collects from every plugin.

    Called once per accepted report, in arrival order, by the ingest worker. Each merger owns one or
    more sections and replaces the reporting agent's earlier contribution for each of them with
    ``context.contribute(section, contribution)``; a section absent from the report must be left alone.
    Under load the worker skips this hook for a report that a later queued report of the same agent makes
    moot (the later one carries every section it carries and is not older); sinks still get every report.

    Clocks: the report's ``timestamp`` orders contributions (the newest report wins each field); the
    server's receipt time sets liveness (nodes' and edges' ``first_seen``/``last_seen``).
    ``context.contribute`` passes both, so a probe with a skewed clock never shows as seen at its own
    clock's time; a timestamp ahead of the receipt time ranks as the receipt time.

    Owner wins: a ``container:`` node that another host's contributions already hold is left out of the
    contribution (nodes naming it as parent are re-parented to the reporting host, its addresses dropped),
    and an address another host claimed first stays that host's for every other host's view.

    :param report: the validated :class:`orchestrator.contract.models.Report`.
    :param context: a :class:`orchestrator.pipeline.ingest.MergeContext` with
        ``contribute(section, contribution)`` (an :class:`orchestrator.topology.Contribution`, or ``None``
        to remove the section; :meth:`orchestrator.topology.Topology.contribute` for the report's agent,
        run when the hook returns, in steps that let the event loop serve requests in between: a
        contribution's ``nodes`` and ``connections`` may be generators, consumed in those steps, so that a
        section of thousands of items is not built in one go either), ``container_id(process)`` (cached extraction through ``extract_container_id``), ``order``
        (the arrival counter that breaks timestamp ties) and ``received_at`` (the server's clock, epoch
        seconds, when the report was accepted).
    """


# -- sinks (ingest worker, after merge) ----------------------------------------------------------------


@hookspec
def receive_report(report, raw, gzipped, received_at, state):
    """Hand an accepted, merged report to a sink. Collects from every plugin.

    Called once per report after ``merge_report``. Sinks must be quick (they run on the event loop);
    slow I/O belongs in a background task the sink owns.

    :param report: the validated :class:`orchestrator.contract.models.Report`.
    :param raw: the decoded request body as received (JSON bytes), for sinks that store the report as submitted.
    :param gzipped: the request body as it came over the wire when the probe gzipped it, else ``None``
        (a sink that keeps reports compressed can store it without compressing again).
    :param received_at: the server's clock (epoch seconds) when the report was accepted.
    :param state: the server's :class:`orchestrator.state.State` (registry, time series, hub, ...).
    """
