"""The command line: exit status 2 with one line for invalid settings, start/stop, the Docker entrypoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, free_port, wait_for


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    # A bound on the process ending, not a speed check: on the loaded 2-core machine the imports alone took
    # 27 s once, and a CLI call that fails at start-up waited them out past the 30 s this was.
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["--max-data-age", "abc"], {}, "invalid setting storage.max_data_age='abc'"),
        (["--port", "99999"], {}, "invalid setting server.port='99999': Input should be less than or equal to 65535"),
        (["--max-data-age", "10s"], {}, "invalid setting storage.max_data_age='10s': must be at least 1m"),
        ([], {"ORCHESTRATOR_WEBSOCKET__BUFFER_SIZE": "-1"}, "invalid setting websocket.buffer_size='-1'"),
        (["--config", "/nonexistent.yaml"], {}, "invalid setting config='/nonexistent.yaml'"),
        (["--log-format", "xml"], {}, "invalid setting logging.format='xml'"),
    ],
)
def test_invalid_settings_exit_2_with_one_line(tmp_path, args, env, expected):
    result = run_cli("serve", "--data-dir", str(tmp_path), *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr


def test_port_already_in_use_exits_2(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert f"invalid setting server.port={port}: cannot listen on 127.0.0.1:{port}" in result.stderr


def test_serve_starts_answers_and_stops_cleanly_on_sigterm(tmp_path, server_process):
    server = server_process("--data-dir", str(tmp_path)).wait_healthy()
    assert httpx.get(server.url + "/api/v1/ping").json() == {"message": "pong"}
    assert server.terminate() == 0
    output = server.output()
    assert "shutdown_complete" in output and "Traceback" not in output
    assert "Sanic v" not in output  # no banner: logs only, through structlog


def test_sigterm_right_after_the_first_healthy_answer_stops_the_server(tmp_path, server_process):
    # The socket answers while the start-up listeners still run; Sanic's own handler lost a SIGTERM sent
    # then (a supervisor that stops a server as soon as it is healthy), and the server ran on. Without the
    # fix, about half of these starts hung.
    for attempt in range(5):
        server = server_process("--data-dir", str(tmp_path / str(attempt))).wait_healthy(interval=0.005)
        try:
            assert server.terminate(timeout=60) == 0
        except subprocess.TimeoutExpired:
            raise AssertionError(f"start {attempt}: still running 60 s after SIGTERM") from None
        assert "shutdown_complete" in server.output()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_the_state_is_restored_ends_in_the_graceful_shutdown(tmp_path, server_process, signum):
    # Before the server listens: the stop is carried out once it serves, through the same graceful path.
    server = server_process("--data-dir", str(tmp_path))
    for line in iter(server.proc.stdout.readline, b""):
        if b"server_starting" in line:  # logged by the start-up listener, before the socket listens
            break
    server.proc.send_signal(signum)
    out, _ = server.proc.communicate(timeout=30)
    assert server.proc.returncode == 0 and b"shutdown_complete" in out


def test_docker_entrypoint_command_starts_the_server(tmp_path):
    # The Dockerfile's ENTRYPOINT + CMD, with this repo's paths in place of the image's.
    dockerfile = (REPO / "Dockerfile").read_text()
    entrypoint = next(l for l in dockerfile.splitlines() if l.startswith("ENTRYPOINT"))
    cmd = next(l for l in dockerfile.splitlines() if l.startswith("CMD"))
    argv = eval(entrypoint.split(None, 1)[1]) + eval(cmd.split(None, 1)[1])  # JSON-array form
    assert argv[:2] == ["orchestrator", "serve"]
    argv = [
        a.replace("/etc/orchestrator/orchestrator.yaml", str(REPO / "orchestrator.yaml")).replace(
            "/var/lib/orchestrator/data", str(tmp_path)
        )
        for a in argv
    ]
    script = Path(sys.executable).parent / "orchestrator"
    port = free_port()
    proc = subprocess.Popen(
        [str(script), *argv[1:]],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ORCHESTRATOR_PORT": str(port), "ORCHESTRATOR_HOST": "127.0.0.1"},
    )
    try:

        def healthy():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read().decode()
                return False

        wait_for(healthy, 60, 0.1)
        assert (tmp_path / "orchestrator.db").exists()
        # The image's health check, as Docker runs it (exec form), finds the server by its settings.
        check = json.loads(dockerfile.split("HEALTHCHECK", 1)[1].split("CMD", 1)[1].splitlines()[0])
        assert check[:2] == ["orchestrator", "healthcheck"] and "/readyz" in check
        env = {**os.environ, "ORCHESTRATOR_PORT": str(port), "ORCHESTRATOR_HOST": "127.0.0.1"}
        done = subprocess.run([str(script), *check[1:]], capture_output=True, text=True, timeout=30, env=env)
        assert done.returncode == 0 and "HTTP 200" in done.stdout, done.stdout + done.stderr
        env["ORCHESTRATOR_PORT"] = str(free_port())  # nobody there: unhealthy
        done = subprocess.run([str(script), *check[1:]], capture_output=True, text=True, timeout=30, env=env)
        assert done.returncode == 1
    finally:
        proc.terminate()
        try:
            output, _ = proc.communicate(timeout=60)  # drains the log pipe while it shuts down
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            raise AssertionError(f"no exit within 60s of SIGTERM:\n{output.decode()[-4000:]}") from None
        assert proc.returncode == 0, output.decode()[-4000:]


def test_version_and_help():
    assert run_cli("--version").stdout.startswith("orchestrator ")
    helptext = run_cli("serve", "--help").stdout
    for flag in (
        "--host",
        "--port",
        "--config",
        "--data-dir",
        "--max-data-age",
        "--cleanup-interval",
        "--stale-node-threshold",
        "--log-level",
        "--log-format",
    ):
        assert flag in helptext


def test_config_check_accepts_a_valid_file_and_creates_nothing(tmp_path):
    data_dir = tmp_path / "not" / "yet"
    config = tmp_path / "orchestrator.yaml"
    config.write_text(f"storage:\n  data_dir: {data_dir}\n  max_data_age: 2h\n")
    result = run_cli("config", "check", str(config))
    assert result.returncode == 0, result.stderr
    assert str(config) in result.stdout
    assert not (tmp_path / "not").exists()


@pytest.mark.parametrize(
    "text, env, expected",
    [
        ("storage:\n  max_data_age: abc\n", {}, "invalid setting storage.max_data_age='abc'"),
        ("storage:\n  max_dat_age: 2h\n", {}, "invalid setting storage.max_dat_age='2h': unknown setting"),
        (
            "",
            {"ORCHESTRATOR_STORAGE_MAX_DATA_AGE": "2h"},
            "invalid setting ORCHESTRATOR_STORAGE_MAX_DATA_AGE='2h': unknown environment variable",
        ),
    ],
)
def test_config_check_exits_2_with_the_one_line(tmp_path, text, env, expected):
    config = tmp_path / "orchestrator.yaml"
    config.write_text(text + "\nlogging:\n  level: info\n")
    result = run_cli("config", "check", str(config), "--data-dir", str(tmp_path / "data"), env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "data").exists()


def test_an_unknown_orchestrator_variable_stops_serve_too(tmp_path):
    result = run_cli("serve", "--data-dir", str(tmp_path), env={"ORCHESTRATOR_STORAGE_MAX_DATA_AGE": "2h"})
    assert result.returncode == 2
    assert "did you mean ORCHESTRATOR_STORAGE__MAX_DATA_AGE?" in result.stderr


def test_config_print_shows_each_setting_with_its_source_and_hides_secrets(tmp_path):
    config = tmp_path / "orchestrator.yaml"
    config.write_text("storage:\n  max_data_age: 2h\nauth:\n  read_tokens: [s3cret]\n")
    result = run_cli(
        "config",
        "print",
        "--config",
        str(config),
        "--log-level",
        "debug",
        "--data-dir",
        str(tmp_path / "data"),
        env={"ORCHESTRATOR_PORT": "9001", "ORCHESTRATOR_WEBSOCKET__BUFFER_SIZE": "64"},
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert lines["storage.max_data_age"] == f'"2h"  # file {config}'
    assert lines["server.port"] == "9001  # env ORCHESTRATOR_PORT"
    assert lines["websocket.buffer_size"] == "64  # env ORCHESTRATOR_WEBSOCKET__BUFFER_SIZE"
    assert lines["logging.level"] == '"debug"  # flag --log-level'
    assert lines["server.host"] == '"0.0.0.0"  # default'
    assert lines["auth.read_tokens"].startswith('["***"]') and "s3cret" not in result.stdout
    assert not (tmp_path / "data").exists()


def test_the_dockerfile_follows_the_conventions_orchestrators_check():
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    user = next(line for line in lines if line.startswith("USER "))
    assert user.split()[1].split(":")[0].isdigit()  # runAsNonRoot can verify a numeric user
    healthcheck = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK"))
    command = " ".join(lines[healthcheck : healthcheck + 2])
    assert 'CMD ["' in command and "8080" not in command  # exec form, port from the settings
    base = next(line for line in lines if line.startswith("ARG PYTHON_IMAGE="))
    tag = base.split(":", 1)[1]
    assert tag.split("-")[0].count(".") == 2 and "latest" not in tag  # a full version, not a floating tag
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY orchestrator ")]
    dependencies = [i for i, line in enumerate(lines) if "pip wheel" in line and "-r " in line]
    assert dependencies and copies and dependencies[0] < copies[0]  # dependencies cached apart from sources
