"""The distributions: the wheel holds the packages, the sdist also what its tests need; a probe-only
install needs none of the server's dependencies."""

from __future__ import annotations

import email
import os
import subprocess
import sys
import tarfile
import zipfile

import httpx
import pytest

from tests.support import REPO

SERVER_ONLY = ("sanic", "pluggy", "pydantic", "numpy", "prometheus-client", "pyyaml", "isal")
PROBE = {"psutil", "httpx", "orjson", "structlog"}


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the test environment's setuptools builds it, no index needed.
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


def wheel_metadata(wheel) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def requirement_name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()


def test_the_wheel_is_orchestrator_server_with_its_licence_and_urls(dists):
    wheel, _ = dists
    assert wheel.name.startswith("orchestrator_server-")
    meta = wheel_metadata(wheel)
    assert meta["Name"] == "orchestrator-server"
    assert meta["License-Expression"] == "Apache-2.0"
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL"))
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(urls)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "orchestrator/cli.py" in names and "orchestrator_plugins/host_topology.py" in names
    assert "orchestrator/web/index.html" in names
    assert not any(n.startswith("tests/") for n in names)


def test_the_probe_needs_none_of_the_server_dependencies(dists):
    meta = wheel_metadata(dists[0])
    requires = meta.get_all("Requires-Dist")
    base = {requirement_name(r) for r in requires if "extra ==" not in r}
    server = {requirement_name(r) for r in requires if 'extra == "server"' in r}
    assert base == PROBE
    assert server == set(SERVER_ONLY)
    assert {"probe", "server", "test"} <= set(meta.get_all("Provides-Extra"))


def test_the_sdist_carries_what_its_tests_need(dists):
    _, sdist = dists
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in (
        "tests/conftest.py",
        "tests/support.py",
        "tests/plugins/recorder.py",
        "tests/plugins/gpu_plugin.py",
        "orchestrator.yaml",
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "orchestrator/web/index.html",
        "plugins/host_topology.py",
    ):
        assert needed in names, needed
    assert any(n.startswith("deploy/") for n in names)
    assert not any("__pycache__" in n for n in names)


BLOCK_SERVER = """
import sys
class NoServer:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not installed (probe-only)")
sys.meta_path.insert(0, NoServer())
from orchestrator.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_without_server_deps(*args: str) -> subprocess.CompletedProcess:
    blocked = {"sanic", "pluggy", "pydantic", "numpy", "prometheus_client", "yaml"}
    code = BLOCK_SERVER.format(blocked=blocked)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=os.environ.copy(),
    )


def test_the_probe_runs_without_the_server_dependencies(server):
    done = run_without_server_deps("probe", "--server", server.url, "--once", "--agent-id", "probe-only")
    assert done.returncode == 0, done.stderr
    assert "accepted it" in done.stdout
    agents = httpx.get(server.url + "/api/v1/agents/list").json()["agents"]
    assert [a["agent_id"] for a in agents] == ["probe-only"]


def test_serve_without_the_server_dependencies_says_what_to_install():
    done = run_without_server_deps("serve")
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines() == [done.stderr.strip().splitlines()[0]]
        and "pip install 'orchestrator-server[server]'" in done.stderr
    )
