"""The built-in container-id extractor: find the container a process runs in from its ``/proc/<pid>/cgroup``.

The input is the raw text of the file, one ``hierarchy-ID:controllers:path`` line per hierarchy (cgroup v1,
v2 or both). Every line's path is read from its innermost segment outward, so a process in a sub-cgroup of a
container (crun's ``/container`` leaf, systemd inside the container) still belongs to it. When containers are
nested, the innermost one wins.

A segment names a container when it is one of (ids are matched and returned in lowercase):

- ``<64hex>`` or ``<64hex>.scope`` -- Docker with the cgroupfs driver (``/docker/<id>``), a custom
  ``--cgroup-parent`` (``/my-parent/<id>``), Kubernetes with the cgroupfs driver
  (``/kubepods/burstable/pod<uid>/<id>``), containerd namespaces (``/default/<id>``, ``/k8s.io/<id>``),
  ECS on EC2 (``/ecs/<task>/<id>``), rootless Docker under ``docker.service``.
- ``<runtime>-<64hex>[.scope]`` for the runtimes ``docker``, ``cri-containerd``, ``crio``, ``libpod`` (Podman)
  and ``nerdctl`` -- the systemd cgroup driver (``/system.slice/docker-<id>.scope``,
  ``.../kubepods-besteffort-pod<uid>.slice/crio-<id>.scope``, ``/machine.slice/libpod-<id>.scope``, rootless
  variants under ``user@<uid>.service``) and CRI-O/Podman with cgroupfs (``crio-<id>``, ``libpod-<id>``).
- ``<prefix>:<runtime>:<64hex>`` -- the systemd ``slice:prefix:name`` notation left literally in a path when
  containerd asks for the systemd driver but runc uses cgroupfs (``...pod<uid>.slice:cri-containerd:<id>``).
- ``<32hex>-<digits>`` -- ECS on Fargate (``/ecs/<task>/<task>-<digits>``); the whole segment is the id.
- ``8-4-4-4-4`` or ``8-4-4-4-12`` hex GUIDs, only right under a ``garden`` segment -- Cloud Foundry Garden
  (``/system.slice/garden.service/garden/<guid>``). Elsewhere a UUID is a pod uid or a desktop app scope.

Everything else is a host process: ``/``, ``init.scope``, sessions, ``*.service`` units (the container
daemons themselves included), ``*.mount`` units, pod slices (``kubepods-...-pod<uid>.slice``,
``machine-libpod_pod_<id>.slice``), runtime helpers (``crio-conmon-<id>.scope``, ``libpod-conmon-<id>.scope``)
and ids of any other length (short 12-character ids included). A runtime this module does not know is left to
a plugin: this hook implementation is ``trylast``.
"""

from __future__ import annotations

import re

from orchestrator.hookspecs import hookimpl

# A runtime prefix is optional: the bare form is cgroupfs' and containerd's. ``fullmatch`` on one segment
# is what rejects 63/65-character ids, ``.mount`` units and ``crio-conmon-``/``libpod-conmon-`` helpers.
_CONTAINER_SEGMENT = re.compile(
    r"(?:(?:docker|cri-containerd|crio|libpod|nerdctl)-)?(?P<hex>[0-9a-f]{64})(?:\.scope)?"
    r"|(?P<fargate>[0-9a-f]{32}-[0-9]+)"
)
# Garden handles in Cloud Foundry are truncated GUIDs (8-4-4-4-4); other Garden users use full GUIDs.
_GARDEN_HANDLE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-(?:[0-9a-f]{4}|[0-9a-f]{12})")
# The kernel appends this to the path of a cgroup that was removed while the process still pointed at it.
_DELETED_SUFFIX = " (deleted)"


def container_id_from_cgroup(text: str) -> str | None:
    """Return the lowercase id of the innermost container in a ``/proc/<pid>/cgroup`` text, or ``None``."""
    best_id, best_depth = None, 0
    seen: set[str] = set()
    for line in text.splitlines():
        path = _cgroup_path(line)
        # v1 texts repeat one path for every controller; read each distinct path once.
        if path is None or path in seen:
            continue
        seen.add(path)
        depth, container_id = _innermost_container(path)
        # Lines can disagree (a controller the inner runtime did not delegate stays at the outer
        # container): the one with more nested containers is the more precise. Ties go to the first line.
        if depth > best_depth:
            best_id, best_depth = container_id, depth
    return best_id


def _cgroup_path(line: str) -> str | None:
    # maxsplit=2: the path itself may hold colons (the ``slice:prefix:name`` form).
    fields = line.strip().split(":", 2)
    if len(fields) != 3 or not fields[2].startswith("/"):
        return None
    return fields[2].removesuffix(_DELETED_SUFFIX).lower()


def _innermost_container(path: str) -> tuple[int, str | None]:
    """How many containers the path is nested in, and the innermost one's id."""
    segments = path.split("/")
    depth, innermost = 0, None
    for index in range(len(segments) - 1, 0, -1):
        container_id = _segment_container_id(segments[index], segments[index - 1])
        if container_id is not None:
            depth += 1
            innermost = innermost or container_id
    return depth, innermost


def _segment_container_id(segment: str, parent: str) -> str | None:
    if ":" in segment:
        # ``kubepods-...slice:cri-containerd:<id>`` is what systemd would have named ``cri-containerd-<id>``.
        parts = segment.split(":")
        if len(parts) != 3:
            return None
        segment = f"{parts[1]}-{parts[2]}"
    match = _CONTAINER_SEGMENT.fullmatch(segment)
    if match is not None:
        return match["hex"] or match["fargate"]
    if parent == "garden" and _GARDEN_HANDLE.fullmatch(segment):
        return segment
    return None


@hookimpl(trylast=True)
def extract_container_id(cgroup):
    return container_id_from_cgroup(cgroup)
