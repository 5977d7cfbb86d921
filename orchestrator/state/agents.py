"""The agent registry: who registered, when each agent was last seen, how many reports it sent.

Liveness uses the server's clock at receipt (the contract's "Clocks" rule), never a report's timestamp.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from orchestrator.contract.times import format_rfc3339

COUNT_STEP = 4096  # agents counted between two yields


@dataclass(slots=True)
class Agent:
    agent_id: str
    hostname: str
    registered_at: float
    last_seen: float
    metadata: dict[str, Any] = field(default_factory=dict)
    last_report_at: float | None = None
    reports_received: int = 0
    implicit: bool = False  # registered by its first report rather than by /register

    def status(self, now: float, stale_threshold: float) -> str:
        return "online" if now - self.last_seen <= stale_threshold else "stale"

    def to_json(self, now: float, stale_threshold: float) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "hostname": self.hostname,
            "metadata": self.metadata,
            "registered_at": format_rfc3339(self.registered_at),
            "last_seen": format_rfc3339(self.last_seen),
            "last_report_at": format_rfc3339(self.last_report_at) if self.last_report_at else None,
            "reports_received": self.reports_received,
            "status": self.status(now, stale_threshold),
        }

    def to_state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


class AgentRegistry:
    """Agents by id. Owned by the server's single event loop: no locking."""

    def __init__(self) -> None:
        self._agents: dict[str, Agent] = {}

    def __len__(self) -> int:
        return len(self._agents)

    def __contains__(self, agent_id: str) -> bool:
        return agent_id in self._agents

    def get(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)

    def all(self) -> list[Agent]:
        return [self._agents[k] for k in sorted(self._agents)]

    def register(self, agent_id: str, hostname: str, metadata: dict[str, Any], now: float) -> tuple[Agent, bool]:
        """Register or re-announce an agent; returns it and whether it is new."""
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = Agent(agent_id, hostname, now, now, dict(metadata))
            return agent, True
        agent.hostname, agent.last_seen, agent.implicit = hostname, now, False
        agent.metadata = dict(metadata)
        return agent, False

    def heartbeat(self, agent_id: str, now: float) -> Agent | None:
        agent = self._agents.get(agent_id)
        if agent is not None:
            agent.last_seen = now
        return agent

    def record_report(self, agent_id: str, hostname: str, now: float) -> Agent:
        """A report was accepted: implicit registration on first sight, liveness and counters."""
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = Agent(agent_id, hostname, now, now, implicit=True)
        agent.hostname = hostname
        agent.last_seen = agent.last_report_at = now
        agent.reports_received += 1
        return agent

    def remove(self, agent_id: str) -> Agent | None:
        return self._agents.pop(agent_id, None)

    def restore(self, agent: Agent) -> None:
        self._agents[agent.agent_id] = agent

    def count_by_status(self, now: float, stale_threshold: float) -> Generator[None, None, dict[str, int]]:
        """Agents by status, in steps (it yields every few thousand agents: 100,000 take ~15 ms)."""
        counts = {"online": 0, "stale": 0}
        for index, agent in enumerate(list(self._agents.values()), 1):
            counts["online" if now - agent.last_seen <= stale_threshold else "stale"] += 1
            if not index % COUNT_STEP:
                yield
        return counts
