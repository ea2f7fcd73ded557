"""Log lines as JSON, one object per line, for log shippers and ``jq``.

Turned on by the channel option ``log_format: json``. From the moment the
channel loads, every handler of the root logger (where Rasa's and the
channel's records end up) writes with ``JSONFormatter``, and so do Sanic's
loggers, including those of the server Rasa creates after the channel::

    {"time": "2026-12-01T23:48:22.512Z", "level": "INFO",
     "logger": "connectors.servicenow.core.ending", "message": "...", "sender_id": "..."}

Fields given with ``extra=`` go in as they are. The channel logs no secrets
and no message bodies at INFO, in either format.
"""

import json
import logging
import time
from typing import Any, Dict

TEXT = "text"
JSON = "json"
LOG_FORMATS = (TEXT, JSON)

# Attributes every LogRecord has; anything else came with ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "color_message"}
SANIC_LOGGERS = ("sanic.root", "sanic.error", "sanic.access")


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601 with milliseconds),
    level, logger, message, the record's extra fields, and the traceback
    under ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: Dict[str, Any] = {
            "time": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _utc_iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def use_json_logs() -> None:
    """Switch the process's log handlers to ``JSONFormatter``; safe to call twice."""
    formatter = JSONFormatter()
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(formatter)
    for name in SANIC_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
    _json_for_later_sanic_apps()


def _json_for_later_sanic_apps() -> None:
    # Rasa's server app is created after the channels and applies Sanic's
    # default logging config, with Sanic's own formatters, on creation.
    try:
        from sanic.log import LOGGING_CONFIG_DEFAULTS
    except ImportError:  # pragma: no cover - Sanic comes with Rasa
        return
    for name in list(LOGGING_CONFIG_DEFAULTS.get("formatters", {})):
        LOGGING_CONFIG_DEFAULTS["formatters"][name] = {"()": f"{__name__}.JSONFormatter"}
