"""The webhook's request body, checked before anything else happens.

The shape is Rasa's REST channel's, ``{"sender", "message", "metadata"?}``, so a
REST frontend switches to this channel by changing the URL. Anything else is
refused with a 4xx and a JSON reason, and changes nothing.

Bodies are UTF-8 JSON only. A leading UTF-8 byte order mark is tolerated
(some Windows tools write one); UTF-16, UTF-32 and any other encoding are
refused rather than guessed, and so is JSON that Python would parse but that
cannot travel on: lone surrogates (``"\\ud800"``), ``NaN``/``Infinity`` (also
as an overflowing ``1e999``), integers past Python's 4,300-digit limit, and
nesting deeper than :data:`MAX_JSON_DEPTH`.
"""

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import urlsplit

from connectors.servicenow.attachments import UserAttachment

# Far above any chat message, far below Sanic's own 100 MB limit.
MAX_BODY_BYTES = 64 * 1024
#: Virtual Agent callbacks carry cards, HTML and option lists: more room, still bounded.
MAX_CALLBACK_BYTES = 512 * 1024
#: Deeper than any payload the channel or ServiceNow sends; far below Python's recursion limit.
MAX_JSON_DEPTH = 32
MAX_SENDER_LENGTH = 255
MAX_URL_LENGTH = 2048
MAX_FILE_NAME_LENGTH = 255
#: ``type/subtype`` with RFC 6838's characters, optional parameters after ``;``.
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}(\s*;[ -~]{0,200})?")
UTF8_BOM = b"\xef\xbb\xbf"

#: Lone surrogates: a JSON ``\\ud800`` escape decodes to one, and it cannot be encoded as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Control characters (C0, DEL, C1) and the Unicode line separators: nothing an id needs,
#: and what would forge lines in a log.
_ID_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: In a message, tab, line feed and carriage return are text; the other C0 controls and
#: DEL are not, and NUL in particular is refused by ServiceNow's database.
_MESSAGE_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


class PayloadError(Exception):
    def __init__(self, status: int, reason: str, message: str, *, retry_after: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        #: Seconds after which the same request may succeed (a ``Retry-After`` header).
        self.retry_after = retry_after

    def body(self) -> Dict[str, Any]:
        # The shape of Rasa's own HTTP API errors.
        return {"status": "failure", "code": self.status, "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class UserPayload:
    sender: str
    #: Empty when the message is an attachment alone.
    message: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    attachment: Optional[UserAttachment] = None


@dataclass(frozen=True)
class TypingPayload:
    sender: str
    typing: bool


def decode_json(body: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """A request body as JSON, or a ``PayloadError`` (400 or 413); never anything else."""
    if len(body) > max_bytes:
        raise PayloadError(413, "PayloadTooLarge", f"The request body is larger than {max_bytes} bytes.")
    if body.startswith(UTF8_BOM):
        body = body[len(UTF8_BOM):]
    # NUL never appears in UTF-8 JSON text (it is escaped inside strings), but
    # it is in every UTF-16 or UTF-32 body.
    if b"\x00" in body:
        raise PayloadError(400, "InvalidEncoding", "The request body must be UTF-8 encoded JSON.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError(400, "InvalidEncoding", "The request body must be UTF-8 encoded JSON.") from None
    return decode_json_text(text)


def decode_json_text(text: str, *, max_bytes: Optional[int] = None) -> Any:
    """JSON text already decoded from its bytes (a socket.io packet, a
    metadata string) by the same rules as a body: depth, numbers, lone
    surrogates; a ``PayloadError`` for anything else."""
    if max_bytes is not None and len(text) > max_bytes // 4 and len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise PayloadError(413, "PayloadTooLarge", f"The message is larger than {max_bytes} bytes.")
    try:
        data = _DECODER.decode(text)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        # Also Python's limit on the digits of an integer.
        raise PayloadError(400, "InvalidJSON", "The request body is not valid JSON.") from None
    if not _plainly_within_limits(text):
        _check_tree(data)
    return data


def parse_json_object(body: bytes, example: str, *, max_bytes: int = MAX_BODY_BYTES) -> Dict[str, Any]:
    data = decode_json(body, max_bytes=max_bytes)
    if not isinstance(data, dict):
        raise PayloadError(400, "InvalidPayload", f"Expected a JSON object like {example}.")
    return data


def parse_sender(value: Any) -> str:
    """A conversation id as the user's side gives it (webhook, typing, stream).

    Non-empty, at most :data:`MAX_SENDER_LENGTH` characters, no control
    characters, and no leading or trailing whitespace: it is refused rather
    than trimmed, so that ``" a"`` never silently becomes conversation ``a``.
    """
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(400, "InvalidSender", "'sender' must be a non-empty string.")
    if len(value) > MAX_SENDER_LENGTH:
        raise PayloadError(400, "InvalidSender", f"'sender' must be at most {MAX_SENDER_LENGTH} characters.")
    if value != value.strip():
        raise PayloadError(400, "InvalidSender", "'sender' must not start or end with whitespace.")
    if _ID_FORBIDDEN.search(value):
        raise PayloadError(400, "InvalidSender", "'sender' must not contain control characters.")
    return value


def is_valid_sender(value: Any) -> bool:
    try:
        parse_sender(value)
    except PayloadError:
        return False
    return True


def parse_user_payload(body: bytes, *, max_message_length: int) -> UserPayload:
    data = parse_json_object(body, '{"sender": "...", "message": "..."}')
    return parse_user_message(parse_sender(data.get("sender")), data, max_message_length=max_message_length)


def parse_user_message(
    sender: str, data: Mapping[str, Any], *, max_message_length: int, metadata_key: str = "metadata"
) -> UserPayload:
    """The message, attachment and metadata of ``data`` (a webhook body or a
    socket.io event), for a sender the door has already established."""
    attachment = parse_attachment(data["attachment"]) if data.get("attachment") is not None else None
    message = data.get("message")
    if attachment is not None and (message is None or (isinstance(message, str) and not message.strip())):
        message = ""
    elif not isinstance(message, str) or not message.strip():
        raise PayloadError(400, "InvalidMessage", "'message' must be a non-empty string (or give an 'attachment').")
    if len(message) > max_message_length:
        raise PayloadError(
            413, "MessageTooLong", f"'message' must be at most {max_message_length} characters."
        )
    # Refused here rather than lost after a 200: ServiceNow cannot store it.
    if _MESSAGE_FORBIDDEN.search(message):
        raise PayloadError(
            400, "InvalidMessage", "'message' must not contain control characters other than tab and line breaks."
        )

    metadata = data.get(metadata_key)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise PayloadError(400, "InvalidMetadata", f"'{metadata_key}' must be a JSON object when given.")

    return UserPayload(sender=sender, message=message.strip(), metadata=metadata, attachment=attachment)


def parse_attachment(value: Any) -> UserAttachment:
    """``{"url", "content_type", "name", "size"?}``: a file the user sends, by an http(s) URL.

    Only the shape is checked here (a 400 for a bad one); whether the type and
    size are accepted is decided during a handoff and told to the user."""
    example = '{"url": "https://...", "content_type": "image/png", "name": "screenshot.png"}'
    if not isinstance(value, dict):
        raise PayloadError(400, "InvalidAttachment", f"'attachment' must be an object like {example}.")
    unknown = sorted(set(value) - {"url", "content_type", "name", "size"})
    if unknown:
        raise PayloadError(400, "InvalidAttachment", f"Unknown 'attachment' field(s): {', '.join(unknown)}.")
    url = value.get("url")
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH or _ID_FORBIDDEN.search(url) or " " in url:
        raise PayloadError(
            400, "InvalidAttachment", f"'attachment.url' must be an http(s) URL of at most {MAX_URL_LENGTH} characters."
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise PayloadError(
            400, "InvalidAttachment", "'attachment.url' must be an absolute http(s) URL without credentials."
        )
    content_type = value.get("content_type")
    if not isinstance(content_type, str) or not _CONTENT_TYPE.fullmatch(content_type):
        raise PayloadError(400, "InvalidAttachment", "'attachment.content_type' must be a MIME type such as image/png.")
    name = value.get("name")
    if (
        not isinstance(name, str)
        or not name.strip()
        or name != name.strip()
        or len(name) > MAX_FILE_NAME_LENGTH
        or _ID_FORBIDDEN.search(name)
        or "/" in name
        or "\\" in name
    ):
        raise PayloadError(
            400,
            "InvalidAttachment",
            f"'attachment.name' must be a file name (no path, no control characters) of at most "
            f"{MAX_FILE_NAME_LENGTH} characters.",
        )
    size = value.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise PayloadError(400, "InvalidAttachment", "'attachment.size' must be a non-negative integer (bytes) when given.")
    return UserAttachment(url=url, content_type=content_type.strip(), name=name, size=size)


def parse_typing_payload(body: bytes) -> TypingPayload:
    """``{"sender", "typing": true|false}``: the user started or stopped typing."""
    data = parse_json_object(body, '{"sender": "...", "typing": true}')
    sender = parse_sender(data.get("sender"))
    typing = data.get("typing")
    if not isinstance(typing, bool):
        raise PayloadError(400, "InvalidTyping", "'typing' must be true or false.")
    return TypingPayload(sender=sender, typing=typing)


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python accepts them, ServiceNow would not.
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e999 parses as infinity, which is no more JSON than Infinity is.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range")
    return value


#: One decoder for every body: ``json.loads`` with options makes a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _plainly_within_limits(text: str) -> bool:
    """Whether the text alone shows its document within the limits, so the
    walk of the decoded tree can be skipped (it is, for nearly every message):
    no ``\\u`` escape and no raw surrogate (so no lone surrogate can come
    out), and fewer brackets than the depth allowed (so no deeper nesting)."""
    return (
        "\\u" not in text
        and text.count("{") + text.count("[") <= MAX_JSON_DEPTH
        and _SURROGATE.search(text) is None
    )


def _too_deep() -> PayloadError:
    return PayloadError(400, "InvalidJSON", f"The request body is nested deeper than {MAX_JSON_DEPTH} levels.")


def _check_tree(data: Any) -> None:
    """Depth and text of a decoded document, without recursion."""
    pending: List[Any] = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise _lone_surrogate()
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
            if isinstance(value, dict):
                for key, item in value.items():
                    if _SURROGATE.search(key):
                        raise _lone_surrogate()
                    pending.append((item, depth + 1))
            else:
                pending.extend((item, depth + 1) for item in value)


def _lone_surrogate() -> PayloadError:
    return PayloadError(
        400, "InvalidText", "The request body contains a lone UTF-16 surrogate ('\\ud800'-'\\udfff'), which is not text."
    )
