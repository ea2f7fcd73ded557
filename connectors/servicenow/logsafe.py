"""Ids in log lines, made safe to print.

Sender ids come from users and chat ids from tracker stores and ServiceNow;
one with a line break or an escape sequence could forge or garble log lines.
``loggable`` escapes one value; ``escape_log_arguments`` installs a filter
that does the same for every text argument of the connector's log calls,
so no call site can forget it.
"""

import logging
import re
from typing import Any

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
MAX_LOGGED_ID = 300


def escape_controls(text: str) -> str:
    """``text`` with control characters written as escapes (``\\n``, ``\\x1b``)."""
    if not _UNPRINTABLE.search(text):
        return text
    return _UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)


def loggable(value: Any) -> str:
    """``value`` as text with control characters escaped and cut to a sane length."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_LOGGED_ID:
        text = text[:MAX_LOGGED_ID] + "..."
    return escape_controls(text)


class EscapeControlCharacters(logging.Filter):
    """Escapes control characters in the text arguments of a record (not in its format string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(escape_controls(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


_FILTER = EscapeControlCharacters()


def escape_log_arguments(prefix: str) -> int:
    """Add the filter to every existing logger under ``prefix`` (a logger's
    filters do not apply to its children's records, so each gets it).
    Idempotent; returns how many loggers have it."""
    count = 0
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (name == prefix or name.startswith(prefix + ".")):
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
            count += 1
    return count
