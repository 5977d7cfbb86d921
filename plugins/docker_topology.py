"""The built-in ``docker_info`` merger: one ``container:<full id>`` node per container, parent its host,
and the container's addresses (so connections to a container IP resolve to it)."""

from __future__ import annotations

from orchestrator.hookspecs import hookimpl
from orchestrator.topology import Contribution, NodeIn, container_id, host_id, host_stub

SECTION = "docker_info"
_METRICS = ("cpu_percent", "memory_usage")


def docker_contribution(hostname: str, docker_info) -> Contribution:
    parent = host_id(hostname)
    nodes = [host_stub(hostname)]
    addresses = []
    for container in docker_info.containers:
        fields = container.model_dump(exclude_none=True, exclude={"id", "name"})
        metrics = {name: fields.pop(name) for name in _METRICS if name in fields}
        node_id = container_id(container.id)
        nodes.append(
            NodeIn(
                id=node_id,
                type="container",
                name=container.name,
                parent=parent,
                host=hostname,
                metadata=fields,
                metrics=metrics,
            )
        )
        addresses.extend((ip, node_id) for ip in container.ip_addresses)
    return Contribution(nodes=tuple(nodes), addresses=tuple(dict.fromkeys(addresses)))


@hookimpl
def merge_report(report, context):
    if report.docker_info is None:
        return
    context.contribute(SECTION, docker_contribution(report.hostname, report.docker_info))
