"""The built-in cgroup -> container-id extractor: real-world ``/proc/<pid>/cgroup`` shapes, and the hook."""

from __future__ import annotations

from importlib.metadata import entry_points

import pluggy
import pytest

import orchestrator.hookspecs
from orchestrator.hookspecs import hookimpl
from orchestrator_plugins import cgroup_container_id
from orchestrator_plugins.cgroup_container_id import container_id_from_cgroup

# Container ids (64 hex) -- distinct so a test cannot pass by picking the wrong segment.
CID = "a770eeeb64264c068fbc4ca166cd224c767a3f0e77acbeea641dc34f97c4d5a5"
CID2 = "27f29903a09fdc3f369f8f5e407e4d1f4379b9211ae34649ff26bf745ced5485"
OUTER = "be60ce8612d05d0153f1311986c11cebf327907d8d9c74c16a37b2858a9a8880"
POD_INFRA = "d9f6d14f63fc501f8537ad1301c031289f85cfa4ebaf087c4bbe9ec71e2dfe50"
# Kubernetes pod uid: dashes in cgroupfs paths, underscores in systemd slice names.
POD_UID = "5b2c1f7e-9d3a-4c8b-a1e6-7f0d2b4c9e13"
POD_UID_ = POD_UID.replace("-", "_")
STATIC_POD_UID = "c704ef4c297ab11032b83ce52cbfc87b"  # static pods' uid is a 32-hex config hash
ECS_TASK = "cc463ea6a78fba53ca12c0eb0c7f8a80"
FARGATE_ID = f"{ECS_TASK}-3213404154"
GARDEN_HANDLE = "6f265890-5165-7fab-6b52-18d1"  # Cloud Foundry: 8-4-4-4-4
GUID = "15aa6e53-b09a-40c7-8558-c6c31e36c88a"

USER = "/user.slice/user-1000.slice/user@1000.service"
K8S_BURSTABLE = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID_}.slice"
K8S_BESTEFFORT = f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_UID_}.slice"
K8S_GUARANTEED = f"/kubepods.slice/kubepods-pod{POD_UID_}.slice"

V1_CONTROLLERS = (
    "12:pids", "11:hugetlb", "10:net_prio", "9:perf_event", "8:net_cls", "7:freezer",
    "6:devices", "5:memory", "4:blkio", "3:cpuacct", "2:cpu", "1:cpuset",
)  # fmt: skip


def v1(path: str, systemd_path: str | None = None) -> str:
    """A cgroup v1 text: the same path on every controller, name=systemd possibly elsewhere."""
    lines = [f"{controller}:{path}" for controller in V1_CONTROLLERS]
    lines.append(f"1:name=systemd:{systemd_path or path}")
    return "\n".join(lines) + "\n"


CASES = [
    # -- Docker ------------------------------------------------------------------------------------
    pytest.param(v1(f"/docker/{CID}"), CID, id="docker-cgroupfs-v1"),
    pytest.param(f"0::/docker/{CID}\n", CID, id="docker-cgroupfs-v2"),
    pytest.param(v1(f"/system.slice/docker-{CID}.scope"), CID, id="docker-systemd-v1"),
    pytest.param(f"0::/system.slice/docker-{CID}.scope\n", CID, id="docker-systemd-v2"),
    pytest.param(
        v1(f"/system.slice/docker-{CID}.scope") + f"0::/system.slice/docker-{CID}.scope\n",
        CID,
        id="docker-systemd-hybrid-v1-v2",
    ),
    pytest.param(
        f"0::/system.slice/docker-{CID}.scope/init.scope",
        CID,
        id="docker-systemd-inside-container",
    ),
    pytest.param(f"9:perf_event:/docker/{CID}.scope", CID, id="docker-bare-id-with-scope-suffix"),
    pytest.param(f"0::/my-parent/{CID}", CID, id="docker-custom-cgroup-parent"),
    pytest.param(f"0::/system.slice/docker.service/docker/{CID}", CID, id="docker-under-docker-service"),
    pytest.param(f"0::{USER}/user.slice/docker-{CID}.scope", CID, id="docker-rootless-systemd"),
    pytest.param(f"0::{USER}/app.slice/docker.service/docker/{CID}", CID, id="docker-rootless-cgroupfs"),
    pytest.param(f"0::/docker/{CID.upper()}", CID, id="uppercase-id-is-lowercased"),
    # -- containerd / nerdctl -----------------------------------------------------------------------
    pytest.param(f"0::/system.slice/nerdctl-{CID}.scope", CID, id="nerdctl-systemd"),
    pytest.param(v1(f"/default/{CID}"), CID, id="containerd-default-namespace-v1"),
    pytest.param(f"0::/k8s.io/{CID}", CID, id="containerd-k8s-io-namespace"),
    pytest.param(
        f"1:name=systemd:/system.slice/containerd.service/kubepods-burstable-pod{POD_UID_}.slice:cri-containerd:{CID}",
        CID,
        id="containerd-slice-colon-form",
    ),
    # -- CRI-O ---------------------------------------------------------------------------------------
    pytest.param(f"0::{K8S_BESTEFFORT}/crio-{CID}.scope", CID, id="crio-systemd-besteffort"),
    pytest.param(f"0::{K8S_BURSTABLE}/crio-{CID}.scope/container", CID, id="crio-crun-container-leaf"),
    pytest.param(v1(f"/kubepods/burstable/pod{POD_UID}/crio-{CID}"), CID, id="crio-cgroupfs-v1"),
    pytest.param(f"0::{K8S_BURSTABLE}/crio-conmon-{CID}.scope", None, id="crio-conmon-scope-is-host"),
    pytest.param(
        f"0::/kubepods/burstable/pod{POD_UID}/crio-conmon-{CID}",
        None,
        id="crio-conmon-cgroupfs-is-host",
    ),
    # -- Podman --------------------------------------------------------------------------------------
    pytest.param(f"0::/machine.slice/libpod-{CID}.scope", CID, id="podman-rootful"),
    pytest.param(f"0::/machine.slice/libpod-{CID}.scope/container", CID, id="podman-rootful-crun-leaf"),
    pytest.param(f"0::{USER}/user.slice/libpod-{CID}.scope/container", CID, id="podman-rootless"),
    pytest.param(
        f"0::/machine.slice/machine-libpod_pod_{OUTER}.slice/libpod-{CID}.scope/container",
        CID,
        id="podman-pod-container-not-pod",
    ),
    pytest.param(
        f"0::{USER}/user.slice/user-libpod_pod_{OUTER}.slice/libpod-{CID}.scope",
        CID,
        id="podman-rootless-pod",
    ),
    pytest.param(v1(f"/libpod_parent/libpod-{CID}"), CID, id="podman-cgroupfs-v1"),
    pytest.param(
        f"0::/machine.slice/machine-libpod_pod_{OUTER}.slice",
        None,
        id="podman-pod-slice-is-not-a-container",
    ),
    pytest.param(f"0::/machine.slice/libpod-conmon-{CID}.scope", None, id="podman-conmon-is-host"),
    # -- Kubernetes, every QoS class, both drivers --------------------------------------------------------
    pytest.param(v1(f"/kubepods/pod{POD_UID}/{CID}"), CID, id="k8s-cgroupfs-guaranteed-v1"),
    pytest.param(f"0::/kubepods/burstable/pod{POD_UID}/{CID}", CID, id="k8s-cgroupfs-burstable"),
    pytest.param(f"0::/kubepods/besteffort/pod{POD_UID}/{CID}", CID, id="k8s-cgroupfs-besteffort"),
    pytest.param(
        f"0::{K8S_GUARANTEED}/cri-containerd-{CID}.scope",
        CID,
        id="k8s-systemd-guaranteed-containerd",
    ),
    pytest.param(
        f"0::{K8S_BURSTABLE}/cri-containerd-{CID}.scope",
        CID,
        id="k8s-systemd-burstable-containerd",
    ),
    pytest.param(v1(f"{K8S_BESTEFFORT}/docker-{CID}.scope"), CID, id="k8s-systemd-besteffort-docker-v1"),
    pytest.param(
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_POD_UID}.slice"
        f"/cri-containerd-{CID}.scope",
        CID,
        id="k8s-static-pod-hex-uid",
    ),
    pytest.param(f"0::{K8S_BURSTABLE}/cri-containerd-{POD_INFRA}.scope", POD_INFRA, id="k8s-pause-container"),
    pytest.param(f"0::{K8S_BURSTABLE}", None, id="k8s-pod-slice-never-the-pod-uid"),
    pytest.param(f"0::/kubepods/burstable/pod{POD_UID}", None, id="k8s-cgroupfs-pod-never-the-pod-uid"),
    pytest.param(f"0::/kubepods/besteffort/pod{POD_UID}/{GUID}", None, id="k8s-uuid-child-is-not-an-id"),
    # -- ECS -------------------------------------------------------------------------------------------
    pytest.param(v1(f"/ecs/eb9d3d0c-8936-42d7-80d8-f82b2f1a629e/{CID}"), CID, id="ecs-ec2-v1"),
    pytest.param(f"3:cpuacct:/ecs/{ECS_TASK}/{CID}", CID, id="ecs-ec2-hex-task-id"),
    pytest.param(v1(f"/ecs/{ECS_TASK}/{FARGATE_ID}"), FARGATE_ID, id="ecs-fargate-v1"),
    pytest.param(f"0::/ecs/{ECS_TASK}/{FARGATE_ID}", FARGATE_ID, id="ecs-fargate-v2"),
    pytest.param(f"0::/ecs/{ECS_TASK}/{ECS_TASK[1:]}-3213404154", None, id="ecs-fargate-31-hex-rejected"),
    pytest.param(f"0::/ecs/{ECS_TASK}", None, id="ecs-task-alone-is-not-a-container"),
    # -- Cloud Foundry Garden --------------------------------------------------------------------------
    pytest.param(
        f"12:memory:/system.slice/garden.service/garden/{GARDEN_HANDLE}\n"
        "11:rdma:/\n"
        f"10:freezer:/garden/{GARDEN_HANDLE}\n"
        f"6:cpu,cpuacct:/system.slice/garden.service/garden/{GARDEN_HANDLE}\n"
        f"1:name=systemd:/system.slice/garden.service/garden/{GARDEN_HANDLE}\n",
        GARDEN_HANDLE,
        id="garden-cf-handle-v1",
    ),
    pytest.param(f"0::/garden/{GUID}", GUID, id="garden-full-guid"),
    pytest.param(f"0::/garden/{GARDEN_HANDLE[:-1]}", None, id="garden-truncated-handle-rejected"),
    pytest.param(f"0::/system.slice/not-garden/{GARDEN_HANDLE}", None, id="guid-outside-garden-rejected"),
    # -- nesting: the innermost container wins ----------------------------------------------------------
    pytest.param(v1(f"/docker/{OUTER}/docker/{CID}"), CID, id="nested-docker-in-docker"),
    pytest.param(
        f"0::/system.slice/docker-{OUTER}.scope/libpod_parent/libpod-{CID}",
        CID,
        id="nested-podman-in-docker",
    ),
    pytest.param(
        f"0::/system.slice/docker-{OUTER}.scope/kubelet.slice/kubelet-kubepods.slice"
        f"/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{POD_UID_}.slice"
        f"/cri-containerd-{CID}.scope",
        CID,
        id="nested-kind-pod-in-docker",
    ),
    pytest.param(
        f"5:memory:/docker/{OUTER}\n4:pids:/docker/{OUTER}/docker/{CID}\n1:name=systemd:/docker/{OUTER}\n",
        CID,
        id="nested-lines-disagree-deepest-wins",
    ),
    # -- removed cgroups ------------------------------------------------------------------------------
    pytest.param(f"0::/system.slice/docker-{CID}.scope (deleted)", CID, id="deleted-suffix-container"),
    pytest.param("0::/user.slice/user-1000.slice/session-3.scope (deleted)", None, id="deleted-suffix-host"),
    # -- host processes -----------------------------------------------------------------------------------
    pytest.param("0::/init.scope\n", None, id="host-init-scope"),
    pytest.param("0::/\n", None, id="host-root"),
    pytest.param("0::/user.slice/user-1000.slice/session-3.scope\n", None, id="host-session"),
    pytest.param(
        v1("/user.slice", "/user.slice/user-1000.slice/session-2.scope"),
        None,
        id="host-session-v1",
    ),
    pytest.param("0::/system.slice/docker.service", None, id="host-docker-daemon"),
    pytest.param(v1("/system.slice/containerd.service"), None, id="host-containerd-daemon-v1"),
    pytest.param("0::/system.slice/crio.service", None, id="host-crio-daemon"),
    pytest.param(f"0::{USER}/app.slice/docker.service", None, id="host-rootless-docker-daemon"),
    pytest.param(
        f"0::/system.slice/run-containerd-io.containerd.runtime.v2.task-k8s.io-{CID}-rootfs.mount",
        None,
        id="host-containerd-rootfs-mount",
    ),
    pytest.param(
        f"0::/system.slice/var-lib-docker-containers-{CID}-mounts-shm.mount",
        None,
        id="host-docker-shm-mount",
    ),
    pytest.param(f"0::{USER}/app.slice/app-gnome-firefox-1234.scope", None, id="host-desktop-app-scope"),
    pytest.param(
        f"1:name=systemd:{USER}/apps.slice/apps-org.gnome.Terminal.slice/vte-spawn-{GUID}.scope",
        None,
        id="host-vte-spawn-uuid",
    ),
    # -- ids of the wrong length or alphabet ----------------------------------------------------------
    pytest.param(f"0::/docker/{CID[:-1]}", None, id="reject-63-hex"),
    pytest.param(f"0::/docker/{CID}7", None, id="reject-65-hex"),
    pytest.param(f"0::/system.slice/docker-{CID[1:]}.scope", None, id="reject-63-hex-systemd"),
    pytest.param(f"0::/docker/{CID[:12]}", None, id="reject-short-12-char-id"),
    pytest.param(f"0::/docker/{CID.replace('f', 'g')}", None, id="reject-non-hex"),
    # -- malformed input ---------------------------------------------------------------------------------
    pytest.param("", None, id="empty-text"),
    pytest.param(f"garbage\n\n{CID}\nno/colons/{CID}\n", None, id="lines-without-the-cgroup-format"),
    pytest.param(f"not a line\n\n0::/docker/{CID}\n", CID, id="malformed-lines-skipped"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_container_id_from_cgroup(text, expected):
    assert container_id_from_cgroup(text) == expected


def test_table_covers_at_least_forty_shapes():
    assert len(CASES) >= 40


# -- through pluggy -------------------------------------------------------------------------------------


class CustomRuntime:
    """A third-party extractor for a runtime the built-in one does not know, registered without trylast."""

    @hookimpl
    def extract_container_id(self, cgroup):
        if "/my-runtime/" in cgroup:
            return "my-runtime-" + cgroup.rsplit("/", 1)[-1].strip()
        return None


class OverridesEverything:
    @hookimpl
    def extract_container_id(self, cgroup):
        return "override"


def make_plugin_manager(*plugins):
    pm = pluggy.PluginManager("orchestrator")
    pm.add_hookspecs(orchestrator.hookspecs)
    for plugin in plugins:
        pm.register(plugin)
    return pm


def test_builtin_extractor_answers_through_the_hook():
    pm = make_plugin_manager(cgroup_container_id)
    assert pm.hook.extract_container_id(cgroup=f"0::/system.slice/docker-{CID}.scope\n") == CID
    assert pm.hook.extract_container_id(cgroup="0::/init.scope\n") is None


def test_builtin_extractor_is_the_registered_entry_point():
    (entry_point,) = [ep for ep in entry_points(group="orchestrator") if ep.name == "cgroup_container_id"]
    assert entry_point.load() is cgroup_container_id


def test_plugin_without_trylast_wins_over_the_builtin_for_its_runtime():
    # Registered before the built-in, so only trylast puts the built-in behind it (pluggy calls the
    # most recently registered first).
    pm = make_plugin_manager(CustomRuntime(), cgroup_container_id)
    assert pm.hook.extract_container_id(cgroup="0::/my-runtime/box-7\n") == "my-runtime-box-7"


def test_plugin_returning_none_falls_through_to_the_builtin():
    pm = make_plugin_manager(CustomRuntime(), cgroup_container_id)
    assert pm.hook.extract_container_id(cgroup=f"0::/docker/{CID2}\n") == CID2


def test_firstresult_stops_before_the_builtin():
    pm = make_plugin_manager(cgroup_container_id, OverridesEverything())
    assert pm.hook.extract_container_id(cgroup=f"0::/docker/{CID}\n") == "override"
