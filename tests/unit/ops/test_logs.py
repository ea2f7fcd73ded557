import json
import logging

import pytest

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.errors import ConfigurationError
from connectors.servicenow.ops.logs import SANIC_LOGGERS, JSONFormatter, use_json_logs

BASIC = {"instance_url": "https://acme.service-now.com", "username": "bot", "password": "pw", "queue_id": "q1"}


def record(message: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    made = logging.getLogger("connectors.servicenow.core.ending").makeRecord(
        "connectors.servicenow.core.ending", logging.WARNING, __file__, 10, message, args, exc_info, extra=extra
    )
    made.created = 1_800_000_000.25
    return made


def test_a_record_is_one_json_object_with_time_level_logger_message_and_extras():
    line = JSONFormatter().format(record("Handoff of %s ended after %.1f s", "alice", 2.0, sender_id="alice", chat_id="c1"))
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2027-01-15T08:00:00.250Z",
        "level": "WARNING",
        "logger": "connectors.servicenow.core.ending",
        "message": "Handoff of alice ended after 2.0 s",
        "sender_id": "alice",
        "chat_id": "c1",
    }


def test_a_traceback_stays_inside_the_line_and_odd_values_are_strings():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        made = record("failed", exc_info=sys.exc_info(), where=object())
    entry = json.loads(JSONFormatter().format(made))
    assert entry["exception"].startswith("Traceback") and "RuntimeError: boom" in entry["exception"]
    assert entry["where"].startswith("<object object")


@pytest.fixture
def clean_root():
    root = logging.getLogger()
    saved = root.handlers[:]
    formatters = [handler.formatter for handler in saved]
    from sanic.log import LOGGING_CONFIG_DEFAULTS

    sanic_formatters = dict(LOGGING_CONFIG_DEFAULTS["formatters"])
    yield root
    root.handlers[:] = saved
    for handler, formatter in zip(saved, formatters):
        handler.setFormatter(formatter)
    LOGGING_CONFIG_DEFAULTS["formatters"].clear()
    LOGGING_CONFIG_DEFAULTS["formatters"].update(sanic_formatters)


def test_use_json_logs_reformats_the_root_handlers_and_sanics_later_apps(clean_root):
    import io
    import logging.config

    from sanic.log import LOGGING_CONFIG_DEFAULTS

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    clean_root.handlers[:] = [handler]
    use_json_logs()
    use_json_logs()  # twice is harmless
    assert isinstance(handler.formatter, JSONFormatter)
    logging.getLogger("connectors.servicenow.channel").warning("hello %s", "operator")
    assert json.loads(stream.getvalue().strip().splitlines()[-1])["message"] == "hello operator"
    # What a Sanic app created afterwards (Rasa's server) applies, with its handlers kept off the real streams.
    config = {
        **LOGGING_CONFIG_DEFAULTS,
        "handlers": {
            name: {"class": "logging.NullHandler", "formatter": spec["formatter"]}
            for name, spec in LOGGING_CONFIG_DEFAULTS["handlers"].items()
        },
    }
    loggers = [logging.getLogger(name) for name in SANIC_LOGGERS]
    saved = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    try:
        logging.config.dictConfig(config)
        for logger in loggers:
            assert logger.handlers and all(isinstance(h.formatter, JSONFormatter) for h in logger.handlers)
    finally:
        for logger, (handlers, level, propagate) in zip(loggers, saved):
            logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def test_log_format_option():
    assert ServiceNowSettings.from_credentials(BASIC).log_format == "text"
    assert ServiceNowSettings.from_credentials({**BASIC, "log_format": "JSON"}).log_format == "json"
    assert ServiceNowSettings.from_credentials({**BASIC, "log_format": ""}).log_format == "text"
    with pytest.raises(ConfigurationError, match="log_format"):
        ServiceNowSettings.from_credentials({**BASIC, "log_format": "xml"})


def test_the_channel_switches_to_json_when_told(clean_root):
    from connectors.servicenow import ServiceNowInput

    handler = logging.StreamHandler()
    clean_root.handlers[:] = [handler]
    ServiceNowInput.from_credentials(BASIC)
    assert not isinstance(handler.formatter, JSONFormatter)
    ServiceNowInput.from_credentials({**BASIC, "log_format": "json"})
    assert isinstance(handler.formatter, JSONFormatter)
