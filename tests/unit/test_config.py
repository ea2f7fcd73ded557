import pytest

from connectors.servicenow.config import RetryPolicy, ServiceNowSettings
from connectors.servicenow.errors import ConfigurationError

BASIC = {"instance_url": "https://acme.service-now.com/", "username": "bot", "password": "pw", "queue_id": "q1"}
REDIS_OPTIONS = BASIC


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
        ({"webhook_secret": "s", "reconcile": "sometimes"}, "reconcile"),
        ({"webhook_secret": "s", "reconcile_interval": "0"}, "reconcile_interval"),
        ({"webhook_secret": "s", "order_wait": "-1"}, "order_wait"),
        ({"webhook_secret": "s", "order_wait": "4.5"}, "order_wait.*5 s"),
    ],
)
def test_invalid_virtual_agent_options(change, complaint):
    with pytest.raises(ConfigurationError, match=complaint):
        ServiceNowSettings.from_credentials({**VIRTUAL_AGENT, **change})


def test_reconciliation_is_on_by_default_slow_and_can_be_turned_off_or_tuned():
    settings = ServiceNowSettings.from_credentials({**VIRTUAL_AGENT, "webhook_secret": "s"})
    assert (settings.reconcile, settings.reconcile_interval, settings.order_wait) == (True, 60.0, 1.0)
    tuned = ServiceNowSettings.from_credentials(
        {**VIRTUAL_AGENT, "webhook_secret": "s", "reconcile": "false", "reconcile_interval": "0.5", "order_wait": "0"}
    )
    assert (tuned.reconcile, tuned.reconcile_interval, tuned.order_wait) == (False, 0.5, 0.0)


def test_limits_and_authentication_options_have_safe_defaults_and_parse_from_strings():
    defaults = ServiceNowSettings.from_credentials(BASIC)
    assert (defaults.max_streams_per_sender, defaults.max_open_streams) == (5, 1000)
    assert (defaults.max_live_chats, defaults.handoff_starts_per_minute) == (100, 3)  # safe, finite (issue 22)
    assert (defaults.deployment_handoff_starts_per_minute, defaults.deployment_handoff_start_burst) == (60, 20)
    assert defaults.max_streams_per_client == 50
    assert defaults.jwt_key is None and defaults.jwt_method == "HS256"
    assert defaults.trust_frontend_metadata is False
    settings = ServiceNowSettings.from_credentials(
        {
            **BASIC, "max_streams_per_sender": "2", "max_open_streams": "50", "max_live_chats": "10",
            "handoff_starts_per_minute": "0", "jwt_key": "k" * 32, "jwt_method": "RS256",
            "trust_frontend_metadata": "true",
        }
    )
    assert (settings.max_streams_per_sender, settings.max_open_streams, settings.max_live_chats) == (2, 50, 10)
    assert settings.handoff_starts_per_minute == 0 and settings.jwt_method == "RS256"
    assert settings.trust_frontend_metadata is True
    assert "k" * 32 not in repr(settings)


@pytest.mark.parametrize(
    "option, value",
    [("jwt_method", "none"), ("jwt_method", "HS1"), ("max_open_streams", 0), ("max_streams_per_sender", "-1"),
     ("max_live_chats", -1)],
)
def test_unsafe_or_meaningless_limit_and_jwt_values_are_refused(option, value):
    with pytest.raises(ConfigurationError, match=option):
        ServiceNowSettings.from_credentials({**BASIC, option: value})


def test_the_new_user_texts_can_be_overridden():
    settings = ServiceNowSettings.from_credentials(
        {**BASIC, "messages": {"handoff_busy": "Busy.", "handoff_rate_limited": "Wait."}}
    )
    assert (settings.texts.handoff_busy, settings.texts.handoff_rate_limited) == ("Busy.", "Wait.")


def test_metrics_are_off_by_default_and_their_options_are_checked():
    settings = ServiceNowSettings.from_credentials(BASIC)
    assert (settings.metrics, settings.metrics_port, settings.metrics_host) == (False, 0, "127.0.0.1")
    settings = ServiceNowSettings.from_credentials({**BASIC, "metrics": "true", "metrics_port": "9102", "metrics_host": "0.0.0.0"})
    assert (settings.metrics, settings.metrics_port, settings.metrics_host) == (True, 9102, "0.0.0.0")
    for bad in ({"metrics_port": 70000}, {"metrics_port": -1}, {"metrics_port": "nine"}, {"metrics_host": "a b"}, {"metrics": "maybe"}):
        with pytest.raises(ConfigurationError, match=next(iter(bad))):
            ServiceNowSettings.from_credentials({**BASIC, **bad})


def test_redis_options_are_read_and_a_bad_url_is_refused_without_echoing_it():
    settings = ServiceNowSettings.from_credentials({**REDIS_OPTIONS, "redis_url": "rediss://:s3cret@redis:6380/2", "redis_prefix": "bot1:"})
    assert settings.redis_url == "rediss://:s3cret@redis:6380/2" and settings.redis_prefix == "bot1:"
    assert "s3cret" not in repr(settings)
    assert ServiceNowSettings.from_credentials(REDIS_OPTIONS).redis_prefix == "snow:"
    from connectors.servicenow.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as refused:
        ServiceNowSettings.from_credentials({**REDIS_OPTIONS, "redis_url": "http://:s3cret@redis:6379"})
    assert "s3cret" not in str(refused.value)


def test_callback_secret_is_a_standard_webhooks_secret_and_never_shown():
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    settings = ServiceNowSettings.from_credentials({**BASIC, "callback_url": "https://frontend.example.com/cb", "callback_secret": secret})
    assert settings.callback_secret == secret and secret not in repr(settings)
    with pytest.raises(ConfigurationError, match="callback_secret") as refused:
        ServiceNowSettings.from_credentials({**BASIC, "callback_secret": "hunter2-not-base64"})
    assert "hunter2" not in str(refused.value)
