"""Process limits the server sets for itself at start-up."""

from __future__ import annotations

import resource

import structlog

log = structlog.get_logger("orchestrator.runtime.limits")


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit on open descriptors to the hard limit, as Go servers (Prometheus, NATS) do: the
    common soft default of 1,024 lets about a thousand idle or slow connections lock every new one out.

    :return: the ``(soft, hard)`` limit in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("open_files_limit_raised", soft=hard, was=soft)
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit the kernel refuses as a soft one
            log.warning("open_files_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    return soft, hard
