"""Signed POSTs to ``callback_url``, the Standard Webhooks way.

Every POST carries three headers (Standard Webhooks 1.0,
https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md):

``webhook-id``         the delivery's id: the same on every retry and from
                       every replica, so a frontend can drop a repeat.
``webhook-timestamp``  when this attempt was made (Unix seconds).
``webhook-signature``  ``v1,<base64 HMAC-SHA256>`` over
                       ``<webhook-id>.<webhook-timestamp>.<exact body>``, with
                       the key of ``callback_secret`` (only when it is set).

The secret is written as the standard writes it, ``whsec_`` and the base64
of at least 24 random bytes, so Standard Webhooks' own libraries (Python,
JavaScript, Go...) verify these POSTs as they are.
"""

import base64
import binascii
import hashlib
import hmac
import time
from typing import Callable, Dict, Optional

SECRET_PREFIX = "whsec_"
#: The standard's minimum: "Random. At least 24 bytes (192 bits, 512 maximum)".
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


def secret_key(value: str) -> bytes:
    """The HMAC key of a ``callback_secret`` (``whsec_<base64>``, the prefix
    optional as in the standard's libraries); ``ValueError`` otherwise."""
    encoded = value[len(SECRET_PREFIX):] if value.startswith(SECRET_PREFIX) else value
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("expected whsec_ and base64, e.g. from python -m connectors.servicenow.signing") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"expected {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes after base64, got {len(key)}")
    return key


def new_secret() -> str:
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def delivery_id(recipient_id: str, entry_id: str) -> str:
    """A delivery's id: the outbox entry's id, which is the entry's place in
    its conversation's stream, made unique across conversations by a digest
    of the conversation (a sender id can hold any character; a header cannot,
    and the standard forbids ``.`` in an id)."""
    conversation = hashlib.sha256(recipient_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"msg_{conversation}_{entry_id}"


class CallbackSigner:
    """The headers of one attempt to POST ``body`` as delivery ``webhook_id``."""

    def __init__(self, secret: Optional[str], clock: Callable[[], float] = time.time) -> None:
        self._key = secret_key(secret) if secret else None
        self._clock = clock

    @property
    def signs(self) -> bool:
        return self._key is not None

    def headers(self, webhook_id: str, body: bytes) -> Dict[str, str]:
        timestamp = str(int(self._clock()))
        headers = {ID_HEADER: webhook_id, TIMESTAMP_HEADER: timestamp}
        if self._key is not None:
            signed = webhook_id.encode() + b"." + timestamp.encode() + b"." + body
            digest = hmac.new(self._key, signed, hashlib.sha256).digest()
            headers[SIGNATURE_HEADER] = "v1," + base64.b64encode(digest).decode()
        return headers


if __name__ == "__main__":
    # A new callback_secret for credentials.yml (and for the frontend that verifies).
    print(new_secret())
