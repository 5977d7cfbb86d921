"""The built-in ``processes_info`` merger: one ``process:<host>:<pid>`` node per process.

A process's parent is its container (``context.container_id``: the probe's ``container_id`` or the
extraction from its cgroup), else its host. A container known only from a cgroup gets a stub node (id,
type, parent, host) so no parent points at a missing node. The raw cgroup text is not kept as metadata:
it is long, repeated per process and already reduced to the container id.
"""

from __future__ import annotations

from collections.abc import Iterator

from orchestrator.hookspecs import hookimpl
from orchestrator.topology import (
    Contribution,
    NodeIn,
    container_id,
    host_id,
    host_stub,
    process_id,
)

SECTION = "processes_info"
_METRICS = ("cpu_percent", "memory_rss", "threads")
_NOT_METADATA = {"pid", "name", "cgroup", "container_id", *_METRICS}


def process_contribution(hostname: str, processes_info, container_of) -> Contribution:
    # The nodes as a generator: the engine consumes it in steps (a report may hold 10,000 processes).
    return Contribution(nodes=_process_nodes(hostname, processes_info, container_of))


def _process_nodes(hostname: str, processes_info, container_of) -> Iterator[NodeIn]:
    host_node = host_id(hostname)
    yield host_stub(hostname)
    containers: dict[str, NodeIn] = {}
    for process in processes_info.processes:
        fields = _metadata(process)
        metrics = {name: value for name in _METRICS if (value := getattr(process, name)) is not None}
        full_id = container_of(process)
        parent = host_node
        if full_id:
            parent = container_id(full_id)
            fields["container_id"] = full_id
            if parent not in containers:
                containers[parent] = NodeIn(id=parent, type="container", parent=host_node, host=hostname)
        yield NodeIn(
            id=process_id(hostname, process.pid),
            type="process",
            name=process.name,
            parent=parent,
            host=hostname,
            metadata=fields,
            metrics=metrics,
        )
    yield from containers.values()


def _metadata(process) -> dict:
    if process.model_extra:
        return process.model_dump(exclude_none=True, exclude=_NOT_METADATA)
    # The common case without unknown fields, built directly: model_dump costs ~7 us per process.
    fields = {}
    if process.ppid is not None:
        fields["ppid"] = process.ppid
    if process.cmdline is not None:
        fields["cmdline"] = process.cmdline
    if process.user is not None:
        fields["user"] = process.user
    return fields


@hookimpl
def merge_report(report, context):
    if report.processes_info is None:
        return
    context.contribute(SECTION, process_contribution(report.hostname, report.processes_info, context.container_id))
