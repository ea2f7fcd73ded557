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
from typing import Any, Dict, List, Mapping

# Far above any chat message, far below Sanic's own 100 MB limit.
MAX_BODY_BYTES = 64 * 1024
#: Virtual Agent callbacks carry cards, HTML and option lists: more room, still bounded.
MAX_CALLBACK_BYTES = 512 * 1024
#: Deeper than any payload the channel or ServiceNow sends; far below Python's recursion limit.
MAX_JSON_DEPTH = 32
MAX_SENDER_LENGTH = 255
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
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def body(self) -> Dict[str, Any]:
        # The shape of Rasa's own HTTP API errors.
        return {"status": "failure", "code": self.status, "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class UserPayload:
    sender: str
    message: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


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
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        # Also Python's limit on the digits of an integer.
        raise PayloadError(400, "InvalidJSON", "The request body is not valid JSON.") from None
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
    """The message and metadata of ``data`` (a webhook body or a socket.io
    event), for a sender the door has already established."""
    message = data.get("message")
    if not isinstance(message, str) or not message.strip():
        raise PayloadError(400, "InvalidMessage", "'message' must be a non-empty string.")
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

    return UserPayload(sender=sender, message=message.strip(), metadata=metadata)


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
