from connectors.servicenow.logsafe import MAX_LOGGED_ID, loggable


def test_plain_ids_are_unchanged():
    assert loggable("user-42") == "user-42"
    assert loggable("é-中文") == "é-中文"


def test_control_characters_cannot_forge_or_colour_log_lines():
    text = loggable("u1\n2026-01-01 INFO forged\r\x1b[31m\x00\u2028\ud800")
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\x00" not in text
    assert text == "u1\\n2026-01-01 INFO forged\\r\\x1b[31m\\x00\\u2028\\ud800"
    text.encode("utf-8")  # printable by any handler


def test_long_values_are_cut():
    assert len(loggable("x" * 10_000)) == MAX_LOGGED_ID + 3


def test_non_strings_are_shown_as_text():
    assert loggable(None) == "None"
    assert loggable(["a\nb"]) == "['a\\nb']"  # repr already escaped it


def test_the_installed_filter_escapes_every_text_argument_of_the_connectors_loggers(caplog):
    import logging

    from connectors.servicenow.core import ending  # noqa: F401 (creates its logger)
    from connectors.servicenow.logsafe import escape_log_arguments

    escape_log_arguments("connectors.servicenow")
    escape_log_arguments("connectors.servicenow")  # idempotent: escaped once, not twice
    with caplog.at_level(logging.INFO, logger="connectors.servicenow.core.ending"):
        logging.getLogger("connectors.servicenow.core.ending").info("chat %s of %s (%d)", "c1\nFORGED", "u\x1b[2J", 3)
    assert caplog.records[-1].getMessage() == "chat c1\\nFORGED of u\\x1b[2J (3)"
    # A logger made after the call (a module imported later, as store.redis was) escapes too.
    late = "connectors.servicenow.made_later_%d" % id(caplog)
    with caplog.at_level(logging.INFO, logger=late):
        logging.getLogger(late).info("id %s", "x\ny")
    assert caplog.records[-1].getMessage() == "id x\\ny"
    # Other loggers are left alone.
    with caplog.at_level(logging.INFO, logger="elsewhere"):
        logging.getLogger("elsewhere").info("id %s", "x\ny")
    assert caplog.records[-1].getMessage() == "id x\ny"


def test_stream_tokens_never_reach_the_access_log(caplog):
    import logging

    from connectors.servicenow.logsafe import redact_access_log_tokens

    redact_access_log_tokens()
    access = logging.getLogger("sanic.access")
    with caplog.at_level(logging.INFO, logger="sanic.access"):
        access.info("", extra={"request": "GET http://127.0.0.1:5005/webhooks/servicenow/stream?sender=u1&token=eyJ.a.b", "status": 200})
        access.info("GET %s", "/stream?TOKEN=eyJ.c.d&sender=u1")
    first, second = caplog.records[-2:]
    assert first.request == "GET http://127.0.0.1:5005/webhooks/servicenow/stream?sender=u1&token=[redacted]"
    assert second.getMessage() == "GET /stream?TOKEN=[redacted]&sender=u1"
