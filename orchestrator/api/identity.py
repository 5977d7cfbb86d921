"""Who a probe may speak for: agent tokens bound to agent ids and hostnames (``auth.agent_tokens``).

A request's token is found once, in the auth middleware (:func:`agent_credential`); the handlers that write
for an agent (register, heartbeat, report) then call :func:`check_identity` with the agent id and hostname
the request claims, before any state changes. Outside the binding: 403 ``identity_not_permitted``.
The token itself is never kept on the request, logged or shown: only its patterns.
"""

from __future__ import annotations

import fnmatch
import hmac
import re
from dataclasses import dataclass

from sanic import Request

from orchestrator.contract.errors import ApiError
from orchestrator.settings import AgentToken, AuthSettings

CODE = "identity_not_permitted"


def _compiled(patterns: list[str] | None) -> re.Pattern[str] | None:
    if patterns is None:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in patterns))


@dataclass(frozen=True)
class Binding:
    """The agent ids and hostnames one token may speak for (``None``: that side is not restricted)."""

    agent_ids: re.Pattern[str] | None
    hostnames: re.Pattern[str] | None

    def permits_agent(self, agent_id: str) -> bool:
        return self.agent_ids is None or self.agent_ids.match(agent_id) is not None

    def permits_hostname(self, hostname: str) -> bool:
        return self.hostnames is None or self.hostnames.match(hostname) is not None


@dataclass(frozen=True)
class Credential:
    token: bytes
    binding: Binding | None  # None: unbound (any agent, any host)


def credentials(auth: AuthSettings) -> list[Credential]:
    """The configured agent tokens, with their patterns compiled once."""
    out = []
    for entry in auth.agent_tokens:
        if isinstance(entry, AgentToken):
            binding = Binding(_compiled(entry.agent_ids), _compiled(entry.hostnames)) if entry.bound else None
            out.append(Credential(entry.token.encode(), binding))
        else:
            out.append(Credential(entry.encode(), None))
    return out


def agent_credential(given: str, configured: list[Credential]) -> Credential | None:
    """The credential ``given`` is, or None. Every token is compared, in constant time, so the answer's
    timing says nothing about which one matched or how much of it."""
    found = None
    raw = given.encode()
    for credential in configured:
        if hmac.compare_digest(raw, credential.token):
            found = credential
    return found


def check_identity(request: Request, kind: str, agent_id: str, hostname: str | None) -> None:
    """403 unless the request's agent token may speak for ``agent_id`` on ``hostname``.

    With a token bound by ``hostnames``, the hostname must match them. With a token bound by ``agent_ids``
    only, the hostname is free, but not one that another agent's contributions already hold in the
    topology: sharing a host (say a Docker-only probe beside a process probe) is for the operator to
    declare, by binding the tokens to that hostname. ``hostname`` is None for a heartbeat (it names no
    host: the agent's registered hostname is checked against the patterns). ``kind`` (register,
    heartbeat, report) labels the refusal metric.
    """
    binding: Binding | None = getattr(request.ctx, "binding", None)
    if binding is None:
        return
    state = request.app.ctx.state
    if not binding.permits_agent(agent_id):
        _refuse(state, kind, "agent_id", f"this agent token may not speak for agent {agent_id!r}")
    if hostname is None:
        agent = state.registry.get(agent_id)
        if agent is not None and not binding.permits_hostname(agent.hostname):
            _refuse(state, kind, "hostname", f"this agent token may not speak for host {agent.hostname!r}")
        return
    if binding.hostnames is not None:
        if not binding.permits_hostname(hostname):
            _refuse(state, kind, "hostname", f"this agent token may not speak for host {hostname!r}")
        return
    others = state.topology.host_agents(hostname) - {agent_id}
    if others:
        _refuse(
            state,
            kind,
            "hostname",
            f"host {hostname!r} is reported by another agent; a token may share a host only when its "
            "binding names the hostname (auth.agent_tokens[].hostnames)",
        )


def _refuse(state, kind: str, field: str, message: str) -> None:
    state.metrics.identity_refused.labels(kind, field).inc()
    raise ApiError(403, message, code=CODE, details=[{"field": field, "message": message}])
