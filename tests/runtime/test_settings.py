"""Settings: every source, their precedence, defaults, and each validation error as one clear line."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from orchestrator.settings import Settings, SettingsError, check_port, load_settings

REPO = Path(__file__).resolve().parents[2]


def load(tmp_path, flags=None, env=None, file=None, suffix=".yaml"):
    flags = {"data_dir": str(tmp_path / "data"), **(flags or {})}
    path = None
    if file is not None:
        path = tmp_path / f"conf{suffix}"
        path.write_text(json.dumps(file) if suffix == ".json" else yaml.safe_dump(file))
        flags["config"] = str(path)
    return load_settings(flags, environ=env or {})


def test_defaults_match_the_contract(tmp_path):
    s = load(tmp_path)
    assert (s.server.host, s.server.port) == ("0.0.0.0", 8080)
    assert s.storage.max_data_age == 3600 and s.storage.cleanup_interval == 300
    assert s.agents.stale_threshold == 300 and s.agents.heartbeat_timeout == 120
    assert s.websocket.buffer_size == 256 and s.websocket.ping_interval == 30
    assert s.auth.agent_tokens == [] and s.auth.read_tokens == []
    assert s.server.max_body_size == 10 * 1024 * 1024


def test_example_config_file_holds_every_setting_at_its_default():
    example = yaml.safe_load((REPO / "orchestrator.yaml").read_text())
    defaults = Settings().model_dump(mode="json")
    assert example == defaults


def test_file_values_are_used(tmp_path):
    s = load(tmp_path, file={"server": {"port": 9001}, "storage": {"max_data_age": "2h"}})
    assert s.server.port == 9001 and s.storage.max_data_age == 7200


def test_json_file_is_accepted(tmp_path):
    s = load(tmp_path, file={"websocket": {"buffer_size": 64}}, suffix=".json")
    assert s.websocket.buffer_size == 64


def test_environment_beats_file_and_flags_beat_environment(tmp_path):
    file = {"server": {"port": 9001, "host": "127.0.0.1"}, "agents": {"stale_threshold": "1m"}}
    env = {"ORCHESTRATOR_SERVER__PORT": "9002", "ORCHESTRATOR_STALE_NODE_THRESHOLD": "2m"}
    s = load(tmp_path, file=file, env=env)
    assert s.server.port == 9002 and s.server.host == "127.0.0.1" and s.agents.stale_threshold == 120
    s = load(tmp_path, file=file, env=env, flags={"port": "9003", "stale_node_threshold": "3m"})
    assert s.server.port == 9003 and s.agents.stale_threshold == 180


def test_environment_lists_are_comma_separated(tmp_path):
    s = load(tmp_path, env={"ORCHESTRATOR_AUTH__AGENT_TOKENS": "a, b", "ORCHESTRATOR_AUTH__READ_TOKENS": "r"})
    assert s.auth.agent_tokens == ["a", "b"] and s.auth.read_tokens == ["r"]


def test_config_file_can_come_from_the_environment(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("server: {port: 9100}\n")
    s = load_settings({"data_dir": str(tmp_path)}, environ={"ORCHESTRATOR_CONFIG": str(path)})
    assert s.server.port == 9100


def test_short_intervals_are_valid_for_labs_and_tests(tmp_path):
    s = load(
        tmp_path,
        flags={"cleanup_interval": "1s", "stale_node_threshold": "1s"},
        env={"ORCHESTRATOR_WEBSOCKET__BROADCAST_INTERVAL": "100ms"},
    )
    assert s.storage.cleanup_interval == 1 and s.agents.stale_threshold == 1
    assert s.websocket.broadcast_interval == 0.1


@pytest.mark.parametrize(
    "source, expected",
    [
        (
            {"env": {"ORCHESTRATOR_STORAGE__MAX_DATA_AGE": "abc"}},
            "invalid setting storage.max_data_age='abc': must be a Go-style duration",
        ),
        ({"flags": {"port": "70000"}}, "invalid setting server.port='70000'"),
        ({"flags": {"max_data_age": "10s"}}, "invalid setting storage.max_data_age='10s': must be at least 1m"),
        ({"file": {"server": {"prot": 1}}}, "invalid setting server.prot=1: unknown setting"),
        ({"file": {"srever": {}}}, "invalid setting srever={}: unknown setting"),
        ({"flags": {"log_format": "xml"}}, "invalid setting logging.format='xml'"),
        ({"file": {"websocket": {"buffer_size": 0}}}, "invalid setting websocket.buffer_size=0"),
        ({"file": {"storage": {"resolution": "30s"}}}, "invalid setting storage.resolution='30s': must be at most 15s"),
    ],
)
def test_invalid_setting_is_one_line_naming_setting_value_and_allowed(tmp_path, source, expected):
    with pytest.raises(SettingsError) as err:
        load(tmp_path, **source)
    message = str(err.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_unreadable_or_malformed_config_file(tmp_path):
    with pytest.raises(SettingsError, match="cannot read the file"):
        load_settings({"config": str(tmp_path / "missing.yaml"), "data_dir": str(tmp_path)}, environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [port: 1\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings({"config": str(bad), "data_dir": str(tmp_path)}, environ={})


def test_data_dir_that_cannot_be_created_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SettingsError, match=r"invalid setting storage.data_dir=.*must be a directory"):
        load_settings({"data_dir": str(blocker / "sub")}, environ={})


def test_port_in_use_is_refused_before_start():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        settings = Settings.model_validate({"server": {"host": "127.0.0.1", "port": port}})
        with pytest.raises(SettingsError, match=f"invalid setting server.port={port}: cannot listen"):
            check_port(settings)


def test_redacted_settings_hide_tokens(tmp_path):
    s = load(tmp_path, env={"ORCHESTRATOR_AUTH__AGENT_TOKENS": "secret1,secret2"})
    shown = s.redacted()
    assert shown["auth"]["agent_tokens"] == ["***", "***"]
    assert "secret1" not in json.dumps(shown)
    assert shown["storage"]["max_data_age"] == "1h"


def test_heartbeat_timeout_is_accepted_as_a_deprecated_setting_that_changes_nothing(tmp_path):
    example = load(tmp_path, file={"agents": {"heartbeat_timeout": "2m"}})  # the contract's example
    tuned = load(tmp_path, file={"agents": {"heartbeat_timeout": "10m"}})
    assert example.deprecated() == [] and tuned.deprecated() == ["agents.heartbeat_timeout"]
    assert tuned.agents.stale_threshold == example.agents.stale_threshold == 300


@pytest.mark.parametrize("name", ["ORCHESTRATOR_STORAGE_MAX_DATA_AGE", "ORCHESTRATOR_PROT", "ORCHESTRATOR_NOPE__X"])
def test_unknown_orchestrator_variables_are_invalid_settings(tmp_path, name):
    with pytest.raises(SettingsError, match=f"invalid setting {name}='1'|invalid setting nope"):
        load(tmp_path, env={name: "1"})


def test_the_probes_variables_are_not_server_settings(tmp_path):
    env = {"ORCHESTRATOR_AGENT_TOKEN": "t", "ORCHESTRATOR_ENVIRONMENT": "prod"}
    assert load(tmp_path, env=env).server.port == 8080


def test_agent_tokens_may_be_bound_in_the_file_and_in_the_environment(tmp_path):
    bound = {"token": "t1", "agent_ids": ["web-*"], "hostnames": ["web-*.example"]}
    s = load(tmp_path, file={"auth": {"agent_tokens": ["plain", bound]}})
    assert s.auth.agent_tokens[0] == "plain" and s.auth.agent_tokens[1].hostnames == ["web-*.example"]
    env = {"ORCHESTRATOR_AUTH__AGENT_TOKENS": '["plain", {"token": "t2", "agent_ids": ["db-1"]}]'}
    s = load(tmp_path, env=env)
    assert s.auth.agent_tokens[1].agent_ids == ["db-1"] and s.auth.agent_tokens[1].hostnames is None
    assert s.redacted()["auth"]["agent_tokens"] == ["***", {"token": "***", "agent_ids": ["db-1"], "hostnames": None}]


def test_a_bad_bound_token_is_one_line_without_the_token(tmp_path):
    for entry, expected in (
        ({"token": "s3cret", "agent_id": ["a"]}, "known keys here: agent_ids, hostnames, token"),
        ({"token": "s3cret", "hostnames": []}, "auth.agent_tokens.0.hostnames=[]"),
        (3, "must be a token, or a mapping"),
    ):
        with pytest.raises(SettingsError) as exc:
            load(tmp_path, file={"auth": {"agent_tokens": [entry]}})
        assert expected in str(exc.value) and "s3cret" not in str(exc.value)
