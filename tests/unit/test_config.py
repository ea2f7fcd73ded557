import pytest

from connectors.servicenow.config import RetryPolicy, ServiceNowSettings
from connectors.servicenow.errors import ConfigurationError

BASIC = {"instance_url": "https://acme.service-now.com/", "username": "bot", "password": "pw", "queue_id": "q1"}


def test_basic_settings_with_defaults():
    settings = ServiceNowSettings.from_credentials(BASIC)
    assert settings.instance_url == "https://acme.service-now.com"
    assert settings.api == "connect"
    assert not settings.uses_oauth
    assert settings.poll_interval == 1.0
    assert settings.retry == RetryPolicy()


def test_values_from_environment_strings_are_parsed_and_empty_means_unset():
    settings = ServiceNowSettings.from_credentials(
        {
            **BASIC,
            "poll_interval": "0.5",
            "retry_attempts": "2",
            "verify_tls": "false",
            "freeze_gc_at_start": "false",
            "callback_url": "",
            "client_id": "  ",
            "end_chat_commands": "/end_chat, /bye",
        }
    )
    assert settings.poll_interval == 0.5
    assert settings.retry.attempts == 2
    assert settings.verify_tls is False
    assert settings.freeze_gc_at_start is False
    assert settings.callback_url is None
    assert settings.client_id is None
    assert settings.end_chat_commands == ("/end_chat", "/bye")


def test_oauth_client_credentials_needs_no_user():
    settings = ServiceNowSettings.from_credentials(
        {"instance_url": "https://acme.service-now.com", "client_id": "c", "client_secret": "s", "queue_id": "q"}
    )
    assert settings.uses_oauth and settings.username is None


def test_secrets_stay_out_of_repr():
    settings = ServiceNowSettings.from_credentials({**BASIC, "password": "hunter2"})
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    "change, complaint",
    [
        ({"instance_url": None}, "instance_url"),
        ({"instance_url": "acme.service-now.com"}, "instance_url"),
        ({"queue_id": ""}, "queue_id"),
        ({"password": ""}, "username"),
        ({"client_id": "c"}, "client_secret"),
        ({"api": "carrier_pigeon"}, "carrier_pigeon"),
        ({"poll_interval": "0"}, "poll_interval"),
        ({"poll_interval": "soon"}, "poll_interval"),
        ({"retry_attempts": "1.5"}, "retry_attempts"),
        ({"idle_poll_interval": "0.1"}, "idle_poll_interval"),
        ({"pol_interval": "1"}, "pol_interval"),
        ({"messages": {"goodbye": "bye"}}, "goodbye"),
        ({"messages": {"agent_closed": ""}}, "agent_closed"),
    ],
)
def test_invalid_configuration_is_refused_with_the_option_named(change, complaint):
    with pytest.raises(ConfigurationError, match=complaint):
        ServiceNowSettings.from_credentials({**BASIC, **change})


def test_message_texts_can_be_overridden_one_by_one():
    settings = ServiceNowSettings.from_credentials({**BASIC, "messages": {"agent_closed": "Bye from the agent."}})
    assert settings.texts.agent_closed == "Bye from the agent."
    assert "could not be located" in settings.texts.session_lost


VIRTUAL_AGENT = {"instance_url": "https://acme.service-now.com", "api": "virtual_agent", "username": "bot", "password": "pw"}


def test_virtual_agent_needs_no_queue_but_a_secured_callback():
    with pytest.raises(ConfigurationError, match="webhook_secret"):
        ServiceNowSettings.from_credentials(VIRTUAL_AGENT)
    settings = ServiceNowSettings.from_credentials({**VIRTUAL_AGENT, "webhook_secret": "s", "context_variables": {"a": 1}})
    assert settings.api == "virtual_agent" and settings.queue_id is None
    assert settings.webhook_secret_header == "X-Webhook-Secret" and dict(settings.context_variables) == {"a": 1}
    assert "webhook_secret=" not in repr(settings)


@pytest.mark.parametrize(
    "change, complaint",
    [
        ({"webhook_secret": "s", "webhook_secret_header": "Bad Header"}, "webhook_secret_header"),
        ({"webhook_username": "sn"}, "webhook_password"),
        ({"webhook_secret": "s", "context_variables": "queue=1"}, "context_variables"),
        ({"webhook_secret": "s", "history_turns": "-1"}, "history_turns"),
    ],
)
def test_invalid_virtual_agent_options(change, complaint):
    with pytest.raises(ConfigurationError, match=complaint):
        ServiceNowSettings.from_credentials({**VIRTUAL_AGENT, **change})
