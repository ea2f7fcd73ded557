"""Ids in log lines, made safe to print.

Sender ids come from users and chat ids from tracker stores and ServiceNow;
one with a line break or an escape sequence could forge or garble log lines.
"""

import re
from typing import Any

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
MAX_LOGGED_ID = 300


def loggable(value: Any) -> str:
    """``value`` as text with control characters escaped (``\\n``, ``\\x1b``) and cut to a sane length."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_LOGGED_ID:
        text = text[:MAX_LOGGED_ID] + "..."
    if _UNPRINTABLE.search(text):
        text = _UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)
    return text
