"""A third-party style plugin used by the tests: claims a ``gpu_info`` section and adds GPU nodes."""

from pydantic import BaseModel

from orchestrator.hookspecs import hookimpl
from orchestrator.topology import Contribution, NodeIn, host_id, host_stub

CONFIGURED: dict = {}


class Gpu(BaseModel):
    model: str
    util: float


class GpuInfo(BaseModel):
    gpus: list[Gpu]


@hookimpl
def register_sections():
    return {"gpu_info": GpuInfo}


@hookimpl
def configure_plugin(name, settings):
    if name == "gpu_info":
        CONFIGURED.update(settings)


@hookimpl
def merge_report(report, context):
    section = report.sections.get("gpu_info")
    if section is None:
        return
    nodes = [host_stub(report.hostname)] + [
        NodeIn(
            id=f"gpu:{report.hostname}:{i}",
            type="gpu",
            name=gpu.model,
            parent=host_id(report.hostname),
            host=report.hostname,
            metrics={"util": gpu.util},
        )
        for i, gpu in enumerate(section.gpus)
    ]
    context.contribute("gpu_info", Contribution(nodes=tuple(nodes)))
