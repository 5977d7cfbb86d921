"""Without ``cluster.nats_url`` the server is the single server it always was, and never loads NATS."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO


def test_stats_say_single_mode(http):
    assert http.get("/api/v1/query/stats").json()["cluster"] == {"mode": "single"}


def test_health_has_no_cluster_block_in_single_mode(http):
    body = http.get("/health").json()
    assert body["status"] == "healthy" and "cluster" not in body


def test_the_single_server_does_not_import_nats():
    code = (
        "import sys; from orchestrator.app import create_app; from tests.support import make_settings; "
        "create_app(make_settings()); print(sorted(m for m in sys.modules if m == 'nats' or m.startswith('nats.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
