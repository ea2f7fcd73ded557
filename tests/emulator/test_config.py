"""EmulatorConfig: defaults, JSON files, key=value overrides, validation."""

from __future__ import annotations

import json

import pytest

from connectors.servicenow.emulator import DEFAULT_QUEUE_SYS_ID, EmulatorConfig
from connectors.servicenow.emulator.config import parse_overrides


def test_defaults_match_the_documented_contract():
    config = EmulatorConfig()
    assert config.basic_users == {"rasa.integration": "secret"}
    assert config.oauth_clients == {
        "rasa-connector": {
            "secret": "rasa-connector-secret",
            "grants": ["password", "client_credentials", "refresh_token"],
            "user": "rasa.integration",
        }
    }
    assert config.connect_queues == {DEFAULT_QUEUE_SYS_ID: {"name": "IT Support", "agents": ["beth.anglin"]}}
    assert (config.token_ttl_s, config.connect_page_size, config.idle_timeout_s) == (1799, 25, 3600)
    assert config.join_message is False and config.strict_headers is True


def test_overrides_are_json_with_a_plain_string_fallback():
    assert parse_overrides(["connect_page_size=5", "greeting_text=null", "join_message=true", "x=hello there"]) == {
        "connect_page_size": 5,
        "greeting_text": None,
        "join_message": True,
        "x": "hello there",
    }
    with pytest.raises(ValueError):
        parse_overrides(["no-equals-sign"])


def test_from_json_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"basic_users": {"a": "b"}, "connect_page_size": 3}))
    config = EmulatorConfig.from_json_file(path)
    assert config.basic_users == {"a": "b"} and config.connect_page_size == 3
    path.write_text("[]")
    with pytest.raises(ValueError):
        EmulatorConfig.from_json_file(path)


@pytest.mark.parametrize(
    "changes",
    [
        {"nope": 1},
        {"token_ttl_s": 0},
        {"connect_page_size": True},
        {"strict_headers": "yes"},
        {"greeting_text": 3},
        {"basic_users": {"a": 1}},
        {"oauth_clients": {"c": {"grants": []}}},
        {"oauth_clients": {"c": {"secret": "s", "grants": ["implicit"]}}},
        {"connect_queues": {"A" * 32: {"name": "upper-case id"}}},
        {"connect_queues": {"0" * 32: {"name": "q", "agents": "beth"}}},
    ],
)
def test_invalid_config_is_rejected(changes):
    with pytest.raises(ValueError):
        EmulatorConfig().patched(changes)
