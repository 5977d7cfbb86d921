"""The server's state, in one place with one owner: the app's event loop.

Nothing here knows HTTP. Request handlers read it; only the ingest worker, the publisher, the cleanup
sweep and the restore at start-up write it.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import pluggy

from orchestrator.runtime.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.state.agents import AgentRegistry
from orchestrator.state.timeseries import TimeSeriesStore
from orchestrator.topology import Topology


@dataclass(slots=True)
class LatestReport:
    """An agent's newest report as submitted, kept compressed (1,000 agents × 50 KB would be 50 MB raw).

    ``compressed`` is a gzip or zlib stream: the probe's own gzip body when it sent one (no work), else
    the JSON compressed here.
    """

    received_at: float
    compressed: bytes

    @classmethod
    def from_raw(cls, received_at: float, raw: bytes, gzipped: bytes | None = None) -> LatestReport:
        return cls(received_at, gzipped if gzipped is not None else zlib.compress(raw, 1))

    def raw(self) -> bytes:
        return zlib.decompress(self.compressed, wbits=47)  # 32 + 15: gzip or zlib header, detected


@dataclass
class State:
    settings: Settings
    metrics: Metrics
    plugins: pluggy.PluginManager
    sections: dict[str, type] = field(default_factory=dict)
    registry: AgentRegistry = field(default_factory=AgentRegistry)
    topology: Topology = field(default_factory=Topology)
    timeseries: TimeSeriesStore = None  # type: ignore[assignment]
    latest: dict[str, LatestReport] = field(default_factory=dict)
    # Agents removed by cleanup, restorable while the archive window lasts: agent_id → record.
    archive: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Agents whose state changed since the last checkpoint.
    dirty_agents: set[str] = field(default_factory=set)
    order: int = 0  # arrival counter of accepted reports; breaks timestamp ties (later received wins)
    reports_received: int = 0
    started_at: float = field(default_factory=time.time)
    shutting_down: bool = False
    hub: Any = None  # orchestrator.api.hub.Hub, set by the WebSocket feature
    ingest: Any = None  # orchestrator.pipeline.ingest.Ingest
    store: Any = None  # orchestrator.state.persistence.Store, when persistence is on
    cleanup_stats: dict[str, Any] = field(default_factory=dict)
    # Held by whoever changes the live topology across an await (the ingest worker's slices, a sweep's
    # batches) or reads it across one (the sliced publish), so none of them sees the others half-done.
    topology_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        if self.timeseries is None:
            self.timeseries = TimeSeriesStore(
                max_data_age=self.settings.storage.max_data_age, resolution=self.settings.storage.resolution
            )
