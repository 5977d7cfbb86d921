"""Readiness: whether this server should be sent traffic now, and if not, why.

Every side that can make the server unfit to serve records a reason in ``state.not_ready`` (a reason
code → one line for the operator) and removes it when the condition ends: start-up and the restore of the
data file (``runtime/lifecycle.py``), a replica catching up (cluster mode), a data dir that cannot be
written (persistence). A graceful shutdown is read from ``state.shutting_down``. ``GET /readyz`` answers
503 while any reason stands; ``GET /livez`` only says the event loop answers.
"""

from __future__ import annotations

STARTING = "starting"
RESTORING = "restoring"
SHUTTING_DOWN = "shutting_down"


def readiness(state) -> dict[str, str]:
    """The reasons the server is not ready, empty when it is."""
    reasons = dict(state.not_ready)
    if state.shutting_down:
        reasons[SHUTTING_DOWN] = "a graceful shutdown has begun"
    return reasons
