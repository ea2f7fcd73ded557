"""What every door's HTTP routes share: refusing malformed framing before
Sanic reads a body, reading a body within its cap, the JSON error envelope,
503 with ``Retry-After`` for input that may be sent again, and checking
ServiceNow's callback credentials."""

import asyncio
import base64
import hmac
import logging
from typing import Any, Dict, FrozenSet, Mapping, Optional

from sanic import response
from sanic.exceptions import InvalidUsage, PayloadTooLarge, SanicException
from sanic.request import Request
from sanic.response import HTTPResponse

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.errors import ConversationBusy
from connectors.servicenow.outbox.base import PER_CLIENT, PER_SENDER, StreamLimitReached
from connectors.servicenow.payloads import MAX_CALLBACK_BYTES, PayloadError

logger = logging.getLogger(__name__)

#: ``Retry-After`` (seconds) of a 503 for a failing store or a busy conversation.
RETRY_AFTER_S = 2
#: The routes that take a request body (all POST, all read with ``BodyReads``).
BODY_ROUTE_NAMES = ("webhook", "typing", "callback")
#: How much of a refused body is still read and thrown away so the client sees the answer.
UNREAD_BODY_DRAINED = 1024 * 1024
#: A ``Content-Length`` longer than this many digits is not a length any route accepts.
MAX_CONTENT_LENGTH_DIGITS = 12
#: ``Retry-After`` (seconds) of a 503 for a body refused because too many are being read.
BUSY_RETRY_AFTER_S = 1


def body_routes(prefix: str) -> FrozenSet[str]:
    return frozenset(f"{prefix}/{name}" for name in BODY_ROUTE_NAMES)


def error_response(error: PayloadError, headers: Optional[Dict[str, str]] = None) -> HTTPResponse:
    extra = dict(headers or {})
    if error.status == 401:
        extra.setdefault("WWW-Authenticate", "Bearer")
    if error.retry_after is not None:
        extra.setdefault("Retry-After", str(error.retry_after))
    return response.json(error.body(), status=error.status, headers=extra or None)


def stream_limit_error(limit: StreamLimitReached, retry_after: int) -> PayloadError:
    """The refusal of a stream or socket beyond a cap (``outbox/capacity.py``)."""
    if limit.scope == PER_SENDER:
        return PayloadError(
            429, "TooManyStreams", f"This conversation has {limit.limit} open streams already; close one first.",
            retry_after=retry_after,
        )
    if limit.scope == PER_CLIENT:
        return PayloadError(
            429, "TooManyClientStreams", f"This client has {limit.limit} open streams already; close one first.",
            retry_after=retry_after,
        )
    return PayloadError(
        503, "StreamCapacityReached", "The server has no room for another stream; try again shortly.",
        retry_after=retry_after,
    )


def client_address(request: Request) -> str:
    """The client's address as Sanic reads it: the one a trusted proxy
    reports (Sanic's ``PROXIES_COUNT``, ``REAL_IP_HEADER``, ``FORWARDED_SECRET``),
    else the peer's."""
    return str(request.remote_addr or request.ip or "unknown")


def retry_later(error: Exception) -> HTTPResponse:
    """The 503 for a message or callback that was not handled, and may be sent again."""
    if isinstance(error, ConversationBusy):
        failure = PayloadError(
            503, "ConversationBusy", "An earlier message of this conversation is still being handled; try again shortly."
        )
    else:
        failure = PayloadError(503, "StoreUnavailable", "The conversation store is unavailable; try again shortly.")
    return response.json(failure.body(), status=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def shutting_down() -> HTTPResponse:
    """The 503 for a request that reaches a server on its way out: nothing was
    handled, another replica (or this one, restarted) takes it."""
    failure = PayloadError(503, "ShuttingDown", "This server is stopping; try again shortly.")
    return response.json(failure.body(), status=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def log_unanswered_turn(turn: "asyncio.Task[Any]") -> None:
    """The client hung up before its answer; say how the turn ended."""
    if turn.cancelled():
        return
    error = turn.exception()
    if error is not None:
        logger.warning("A message whose client hung up was not handled: %r", error)
    else:
        logger.info("A message was handled to the end after its client hung up; its answer was not delivered.")


class MalformedRequest(InvalidUsage):
    """A request to this channel's routes that Sanic would mis-handle; answered with ``error``."""

    def __init__(self, error: PayloadError) -> None:
        # sanic 25 (Rasa Pro) takes no status_code argument here: set it after.
        super().__init__(error.message)
        self.status_code = error.status
        self.error = error


async def malformed_request_response(_: Request, exception: MalformedRequest) -> HTTPResponse:
    return response.json(exception.error.body(), status=exception.error.status)


def check_framing(request: Request, routes_with_body: FrozenSet[str]) -> None:
    """Refuse body framing that is ambiguous or that Sanic cannot parse, and
    bodies on routes that take none, before Sanic reads a byte of the body."""
    headers = request.headers
    lengths = headers.getall("content-length", [])
    encodings = headers.getall("transfer-encoding", [])
    if len(lengths) > 1 or len(encodings) > 1:
        raise MalformedRequest(PayloadError(400, "InvalidHeaders", "Content-Length and Transfer-Encoding may be given once."))
    if lengths and encodings:
        # Two framings for one body is how requests are smuggled past proxies.
        raise MalformedRequest(PayloadError(400, "InvalidHeaders", "Give Content-Length or Transfer-Encoding, not both."))
    if encodings and encodings[0] != "chunked":
        raise MalformedRequest(PayloadError(400, "InvalidHeaders", "The only Transfer-Encoding accepted is 'chunked'."))
    length = lengths[0].strip() if lengths else None
    if length is not None and not (length.isascii() and length.isdigit() and len(length) <= MAX_CONTENT_LENGTH_DIGITS):
        raise MalformedRequest(PayloadError(400, "InvalidHeaders", "Content-Length must be a number of bytes."))
    if length is not None and int(length) > MAX_CALLBACK_BYTES:
        raise MalformedRequest(
            PayloadError(413, "PayloadTooLarge", f"The request body is larger than {MAX_CALLBACK_BYTES} bytes.")
        )
    has_body = bool(encodings) or (length is not None and int(length) > 0)
    if has_body and not (request.method.upper() == "POST" and request.path.rstrip("/") in routes_with_body):
        # Only the routes that read their body in capped chunks take one;
        # elsewhere Sanic would buffer it (up to Rasa's 100 MB) before routing.
        raise MalformedRequest(
            PayloadError(400, "UnexpectedBody", f"{request.method.upper()} {request.path} takes no request body.")
        )


class BodyReads:
    """The request bodies being read now, each within a deadline, and at
    most ``limit`` at once.

    Sanic 21.12 times a request out only after a pause in what the client
    sends (each byte starts its clock again), so a client sending a byte now
    and then would hold a connection, a descriptor and a buffer for as long
    as it likes; thousands of such clients hold thousands. Here a body has
    ``deadline_s`` in all (then 408 and the connection is closed), and a
    body beyond ``limit`` being read at once is not read at all (503 with
    ``Retry-After``, the connection closed)."""

    def __init__(self, limit: int, deadline_s: float) -> None:
        self.limit = limit
        self.deadline_s = deadline_s
        self.active = 0

    async def read(self, request: Request, limit: int) -> bytes:
        stream = request.stream
        if stream is None:
            return request.body or b""
        if self.active >= self.limit:
            _close_after_answer(stream)
            raise PayloadError(
                503, "ServerBusy", "Too many requests are sending their body now; try again shortly.",
                retry_after=BUSY_RETRY_AFTER_S,
            )
        self.active += 1
        try:
            return await asyncio.wait_for(_read_within(request, stream, limit), self.deadline_s)
        except asyncio.TimeoutError:
            logger.info("Closed a connection whose request body took longer than %.0f s.", self.deadline_s)
            _close_after_answer(stream)
            raise PayloadError(
                408, "RequestTimeout", f"The request body did not arrive within {self.deadline_s:g} s."
            ) from None
        finally:
            self.active -= 1

    async def discard(self, request: Request, limit: int) -> None:
        """Read and drop the body of a request refused before its body
        mattered, so a malformed one ends here rather than in Sanic's clean-up."""
        try:
            await self.read(request, limit)
        except PayloadError:
            pass


def _close_after_answer(stream: Any) -> None:
    # Sanic would otherwise read away the rest of the body after the answer,
    # without a deadline; the connection closes once the answer is sent.
    stream.keep_alive = False
    stream.request_body = None


async def _read_within(request: Request, stream: Any, limit: int) -> bytes:
    """The body of a ``stream=True`` route, refused as soon as it passes
    ``limit`` bytes: neither a large Content-Length nor a long chunked body
    is buffered first."""
    too_large = PayloadError(413, "PayloadTooLarge", f"The request body is larger than {limit} bytes.")
    declared = request.headers.get("content-length")
    # Sanic reads away (without keeping) what a route leaves unread, up to
    # this, so the client can read the 413; past it, it closes the connection.
    stream.request_max_size = limit + UNREAD_BODY_DRAINED
    if declared is not None and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    try:
        while True:
            chunk = await stream.read()
            if chunk is None:
                break
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except PayloadTooLarge:
        raise too_large from None
    except SanicException as error:
        # Sanic's own "Bad chunked encoding". Nothing after it can be read, and
        # Sanic would otherwise try again (and log the failure) once the route answers.
        stream.request_body = None
        raise PayloadError(400, "InvalidBody", str(error) or "The request body is malformed.") from None
    return b"".join(chunks)


def callback_authorized(settings: ServiceNowSettings, headers: Mapping[str, str]) -> bool:
    """Shared secret in a header, or Basic credentials; compared in constant time."""
    if settings.webhook_secret:
        provided = _header_bytes(headers.get(settings.webhook_secret_header, ""))
        if hmac.compare_digest(provided, settings.webhook_secret.encode()):
            return True
    if settings.webhook_username and settings.webhook_password:
        scheme, _, encoded = headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                username, _, password = base64.b64decode(_header_bytes(encoded), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            user_ok = hmac.compare_digest(username.encode(), settings.webhook_username.encode())
            password_ok = hmac.compare_digest(password.encode(), settings.webhook_password.encode())
            return user_ok and password_ok
    return False


def _header_bytes(value: str) -> bytes:
    """A header value as bytes, whatever it holds: Sanic decodes headers with
    ``surrogateescape``, so a non-UTF-8 byte arrives as a lone surrogate.
    Such bytes never equal a configured (UTF-8) secret, and nothing here
    raises before authentication has answered."""
    return value.encode("utf-8", "surrogatepass")
