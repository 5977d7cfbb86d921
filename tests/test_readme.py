"""The README's examples work as written."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
import time

import httpx

from orchestrator.probe.fleet import Fleet
from tests.support import REPO, wait_for


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_the_websocket_snippet_holds_a_50_host_fleet(start_server):
    (snippet,) = [block for block in readme_python_blocks() if "websockets.connect" in block]
    server = start_server()
    fleet = Fleet(50)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(50):
            body = gzip.compress(fleet.report_bytes(i, time.time()), 1)
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            assert client.post("/api/v1/reports", content=body, headers=headers).status_code == 202
        wait_for(lambda: client.get("/api/v1/query/stats").json()["topology"]["hosts"] >= 50, 60, 0.2)
        snapshot_size = len(
            client.get("/api/v1/query/topology?level=host", headers={"Accept-Encoding": "identity"}).content
        )
    code = snippet.replace("127.0.0.1:8080", f"127.0.0.1:{server.port}")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # the snapshot, or nothing if the client died
        assert re.fullmatch(r"\d+ snapshot: \d+ nodes\n", line), (
            line,
            proc.stderr.read() if proc.poll() is not None else "",
        )
        assert int(line.split()[2]) >= 50
    finally:
        proc.kill()
        proc.wait(10)
    assert snapshot_size > 1024 * 1024  # over the websockets client's default limit: the case the snippet handles
