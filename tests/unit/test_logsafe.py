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

    assert escape_log_arguments("connectors.servicenow") >= 1
    with caplog.at_level(logging.INFO, logger="connectors.servicenow.core.ending"):
        logging.getLogger("connectors.servicenow.core.ending").info("chat %s of %s (%d)", "c1\nFORGED", "u\x1b[2J", 3)
    assert caplog.records[-1].getMessage() == "chat c1\\nFORGED of u\\x1b[2J (3)"
