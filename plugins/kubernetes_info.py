"""Worked example of a new report type: a ``kubernetes_info`` section adds pod nodes between hosts and
their containers.

A probe that can see the kubelet sends::

    "kubernetes_info": {"pods": [{"uid": "…", "name": "web-0", "namespace": "shop", "ip": "10.244.1.7",
                                  "phase": "Running", "labels": {"app": "web"},
                                  "containers": ["containerd://<64 hex>", "<64 hex>"]}],
                        "services": [{"name": "web", "namespace": "shop", "cluster_ip": "10.96.0.10",
                                      "ports": [80], "selector": {"app": "web"}}]}

The plugin claims the section (``register_sections``) so it is validated with :class:`KubernetesInfo`,
and contributes it (``merge_report``): a ``pod:<uid>`` node per pod (parent: the host), each listed
container re-parented under its pod (with a higher tie-break priority than docker's host parent, so the
pod wins for a report that carries both), the pod IP owned by the pod, and the services that select a pod
in its metadata. Everything a third-party report type needs goes through the same two hooks.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.contract.models import IpAddress, Port
from orchestrator.hookspecs import hookimpl
from orchestrator.topology import Contribution, NodeIn, container_id, host_id, host_stub

SECTION = "kubernetes_info"
POD_PRIORITY = 10


class Pod(BaseModel):
    model_config = ConfigDict(extra="allow")

    uid: Annotated[str, Field(min_length=1, max_length=128)]
    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: str = "default"
    ip: IpAddress = ""
    phase: str | None = None
    labels: dict[str, str] = {}
    containers: list[str] = []


class Service(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: str = "default"
    cluster_ip: IpAddress = ""
    ports: list[Port] = []
    selector: dict[str, str] = {}


class KubernetesInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    pods: list[Pod] = []
    services: list[Service] = []


def pod_id(uid: str) -> str:
    return f"pod:{uid}"


def _bare_container_id(ref: str) -> str:
    # The kubelet writes "<runtime>://<id>"; the topology knows containers by the bare id.
    return ref.split("://", 1)[-1].lower()


def _selected(pod: Pod, service: Service) -> bool:
    return (
        bool(service.selector)
        and service.namespace == pod.namespace
        and all(pod.labels.get(k) == v for k, v in service.selector.items())
    )


def contribution(hostname: str, section: KubernetesInfo) -> Contribution:
    nodes = [host_stub(hostname)]
    addresses = []
    for pod in section.pods:
        services = sorted(f"{s.namespace}/{s.name}" for s in section.services if _selected(pod, s))
        metadata = {
            "namespace": pod.namespace,
            "phase": pod.phase,
            "labels": pod.labels,
            "services": services,
            "ip": pod.ip or None,
            **(pod.model_extra or {}),
        }
        nodes.append(
            NodeIn(
                id=pod_id(pod.uid),
                type="pod",
                name=f"{pod.namespace}/{pod.name}",
                parent=host_id(hostname),
                host=hostname,
                metadata=metadata,
            )
        )
        for ref in pod.containers:
            nodes.append(
                NodeIn(
                    id=container_id(_bare_container_id(ref)), type="container", parent=pod_id(pod.uid), host=hostname
                )
            )
        if pod.ip:
            addresses.append((pod.ip, pod_id(pod.uid)))
    return Contribution(nodes=tuple(nodes), addresses=tuple(addresses), priority=POD_PRIORITY)


@hookimpl
def register_sections():
    return {SECTION: KubernetesInfo}


@hookimpl
def merge_report(report, context):
    section = report.sections.get(SECTION)
    if section is None:
        return
    context.contribute(SECTION, contribution(report.hostname, section))
