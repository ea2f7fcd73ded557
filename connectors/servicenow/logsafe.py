"""Ids in log lines, made safe to print.

Sender ids come from users and chat ids from tracker stores and ServiceNow;
one with a line break or an escape sequence could forge or garble log lines.
``loggable`` escapes one value; ``escape_log_arguments`` does the same for
every text argument of the connector's log calls, so no call site can forget
it. ``redact_access_log_tokens`` keeps a stream's ``?token=`` out of the
access log.
"""

import logging
import re
from typing import Any, Set

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


def escape_record_arguments(record: logging.LogRecord) -> None:
    """Control characters in the text arguments of a record (not in its format string) as escapes."""
    if isinstance(record.args, tuple):
        record.args = tuple(escape_controls(arg) if isinstance(arg, str) else arg for arg in record.args)


_prefixes: Set[str] = set()


def escape_log_arguments(prefix: str) -> None:
    """Escape the text arguments of every record of a logger under ``prefix``,
    including loggers created later (a module imported after this call).

    A filter on a logger applies only to that logger's own records, and only
    from when it is added: so the escaping happens where records are made,
    through the record factory, for the names under ``prefix``. Idempotent."""
    if prefix in _prefixes:
        return
    _prefixes.add(prefix)
    make_record = logging.getLogRecordFactory()
    dotted = prefix + "."

    def escaping_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if record.name == prefix or record.name.startswith(dotted):
            escape_record_arguments(record)
        return record

    logging.setLogRecordFactory(escaping_factory)


# ``?token=<jwt>`` (EventSource cannot send headers) and its usual spellings.
_QUERY_SECRET = re.compile(r"([?&](?:token|access_token|jwt)=)[^&#\s\"']*", re.IGNORECASE)
REDACTED = "[redacted]"


def redact_query_secrets(text: str) -> str:
    """``text`` with the value of a token in a URL's query replaced."""
    return _QUERY_SECRET.sub(r"\g<1>" + REDACTED, text) if "=" in text else text


class RedactQuerySecrets(logging.Filter):
    """Takes tokens out of the URLs in access log records (Sanic puts the
    request line in ``record.request``; others use the message or its arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for attribute in ("request", "url", "path", "uri"):
            value = getattr(record, attribute, None)
            if isinstance(value, str):
                setattr(record, attribute, redact_query_secrets(value))
        if isinstance(record.msg, str):
            record.msg = redact_query_secrets(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query_secrets(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


_REDACT = RedactQuerySecrets()
#: The loggers that print request URLs: Sanic's access log (any version).
ACCESS_LOGGERS = ("sanic.access",)


def redact_access_log_tokens() -> None:
    """Keep stream tokens out of the access log. Idempotent."""
    for name in ACCESS_LOGGERS:
        access = logging.getLogger(name)
        if _REDACT not in access.filters:
            access.addFilter(_REDACT)
