"""The topology engine: agents' report sections in, a merged, resolved, versioned topology out.

Pure Python, no I/O: mergers (``merge_report`` plugins) call :meth:`Topology.contribute`; the server
calls :meth:`Topology.publish` once per broadcast interval and serves :meth:`Topology.snapshot_json` and
:meth:`Publication.diff`. See ``engine.py`` for the merge rules, ``resolve.py`` for connection resolution
and ``views.py`` for the views and diffs.
"""

from .engine import BUILTIN_SECTIONS, Topology
from .model import (
    ConnectionIn,
    Contribution,
    NodeIn,
    container_id,
    external_id,
    host_id,
    host_stub,
    process_id,
)
from .views import EXTERNALS, INTERNET, LEVELS, Publication

__all__ = [
    "BUILTIN_SECTIONS",
    "EXTERNALS",
    "INTERNET",
    "LEVELS",
    "ConnectionIn",
    "Contribution",
    "NodeIn",
    "Publication",
    "Topology",
    "container_id",
    "external_id",
    "host_id",
    "host_stub",
    "process_id",
]
