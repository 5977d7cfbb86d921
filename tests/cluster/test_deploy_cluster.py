"""deploy/docker-compose.cluster.yml: NATS with JetStream, two replicas on it behind a load balancer, a probe."""

from __future__ import annotations

import yaml

from orchestrator.settings import load_settings
from tests.support import REPO


def test_cluster_compose_runs_nats_two_replicas_a_balancer_and_a_probe():
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.cluster.yml").read_text())
    services = compose["services"]
    assert "-js" in services["nats"]["command"]
    replicas = [services[name] for name in ("replica-a", "replica-b")]
    for replica in replicas:
        env = replica["environment"]
        assert env["ORCHESTRATOR_CLUSTER__NATS_URL"] == "nats://nats:4222"
        settings = load_settings(environ={k: str(v) for k, v in env.items()}, flags={"data_dir": str(REPO / ".venv")})
        assert settings.cluster.nats_url == "nats://nats:4222"
    assert replicas[0]["volumes"] != replicas[1]["volumes"]  # each replica its own data dir
    nginx = compose["configs"]["nginx"]["content"]
    assert "server replica-a:8080" in nginx and "server replica-b:8080" in nginx
    assert services["probe"]["command"][:2] == ["--server", "http://lb:8080"]
