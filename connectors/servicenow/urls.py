"""What counts as a web URL the channel passes on to a user's screen."""

import unicodedata
from urllib.parse import urlsplit

# A URL longer than this is not a link anyone types or clicks; refusing it keeps
# a message bounded whatever ServiceNow sends.
MAX_URL_CHARS = 2048
# Control, format (zero-width, bidi) and line/paragraph separator characters.
_INVISIBLE = frozenset(("Cc", "Cf", "Zl", "Zp"))


def is_web_url(value: object) -> bool:
    """An absolute ``http``/``https`` URL with a host, and nothing a reader
    cannot see or a parser may read two ways: no whitespace, no control or
    format characters, no backslash (browsers read it as a slash, which can
    change the host), at most ``MAX_URL_CHARS`` long."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL_CHARS:
        return False
    if "\\" in value or any(char.isspace() or unicodedata.category(char) in _INVISIBLE for char in value):
        return False
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    return scheme in ("http", "https") and bool(host) and value.lower().startswith(scheme + "://")
