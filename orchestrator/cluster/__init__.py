"""Cluster mode: several replicas share one log of writes on NATS JetStream (``docs/scaling.md``).

Imported only when ``cluster.nats_url`` is set: the single server never loads NATS.
"""

from __future__ import annotations

from sanic import Sanic

from orchestrator.api.hub import View
from orchestrator.cluster.replica import Replica


def setup_cluster(app: Sanic) -> Replica:
    """Make ``app`` a replica: the state follows the log; writes are published to it."""
    state = app.ctx.state
    replica = Replica(state)
    state.clock = replica.clock
    state.ingest.unapplied_log = replica.unapplied  # the door's 429 bound covers the log not applied here
    app.ctx.cluster = replica

    async def start(app: Sanic) -> None:
        state.hub.keep_history(View())
        replica.start()

    async def stop(app: Sanic) -> None:
        await replica.close()

    app.register_listener(start, "after_server_start")
    # Before the server's own shutdown listeners: writes stop being applied before the final steps run.
    app.register_listener(stop, "before_server_stop")
    return replica
