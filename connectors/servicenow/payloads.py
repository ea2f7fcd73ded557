"""The webhook's request body, checked before anything else happens.

The shape is Rasa's REST channel's, ``{"sender", "message", "metadata"?}``, so a
REST frontend switches to this channel by changing the URL. Anything else is
refused with a 4xx and a JSON reason, and changes nothing.
"""

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping

# Far above any chat message, far below Sanic's own 100 MB limit.
MAX_BODY_BYTES = 64 * 1024
MAX_SENDER_LENGTH = 255


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


def parse_json_object(body: bytes, example: str) -> Dict[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise PayloadError(413, "PayloadTooLarge", f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    try:
        data = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        raise PayloadError(400, "InvalidJSON", "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise PayloadError(400, "InvalidPayload", f"Expected a JSON object like {example}.")
    return data


def parse_user_payload(body: bytes, *, max_message_length: int) -> UserPayload:
    data = parse_json_object(body, '{"sender": "...", "message": "..."}')
    sender = _sender(data)

    message = data.get("message")
    if not isinstance(message, str) or not message.strip():
        raise PayloadError(400, "InvalidMessage", "'message' must be a non-empty string.")
    if len(message) > max_message_length:
        raise PayloadError(
            413, "MessageTooLong", f"'message' must be at most {max_message_length} characters."
        )

    metadata = data.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise PayloadError(400, "InvalidMetadata", "'metadata' must be a JSON object when given.")

    return UserPayload(sender=sender, message=message.strip(), metadata=metadata)


def parse_typing_payload(body: bytes) -> TypingPayload:
    """``{"sender", "typing": true|false}``: the user started or stopped typing."""
    data = parse_json_object(body, '{"sender": "...", "typing": true}')
    sender = _sender(data)
    typing = data.get("typing")
    if not isinstance(typing, bool):
        raise PayloadError(400, "InvalidTyping", "'typing' must be true or false.")
    return TypingPayload(sender=sender, typing=typing)


def _sender(data: Mapping[str, Any]) -> str:
    sender = data.get("sender")
    if not isinstance(sender, str) or not sender.strip():
        raise PayloadError(400, "InvalidSender", "'sender' must be a non-empty string.")
    if len(sender) > MAX_SENDER_LENGTH:
        raise PayloadError(400, "InvalidSender", f"'sender' must be at most {MAX_SENDER_LENGTH} characters.")
    return sender
