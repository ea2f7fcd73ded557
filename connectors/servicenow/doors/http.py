"""What every door's HTTP routes share: refusing malformed framing before
a body is read, reading a body within its cap, the JSON error envelope,
503 with ``Retry-After`` for input that may be sent again, and checking
ServiceNow's callback credentials."""

import asyncio
import base64
import hmac
import logging
import sys
from typing import Any, Dict, FrozenSet, Mapping, Optional, Sequence, Set

from sanic import response
from sanic.exceptions import InvalidUsage as BadRequest  # sanic 25 names it BadRequest, with this alias
from sanic.exceptions import PayloadTooLarge, SanicException
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


def framing_error(request: Request, routes_with_body: FrozenSet[str]) -> Optional[PayloadError]:
    """Why this request's body framing is refused, if it is: ambiguous
    framing, a Content-Length that is not a plain number, or a body on a
    route that takes none. Checked before a byte of the body is read (every
    route of the doors is a ``stream=True`` route, which Sanic leaves unread)."""
    headers = request.headers
    lengths = headers.getall("content-length", ())
    encodings = headers.getall("transfer-encoding", ())
    if encodings or len(lengths) > 1:
        return _unusual_framing_error(request, lengths, encodings, routes_with_body)
    if not lengths:
        return None
    length = lengths[0].strip()
    # Python's int() also takes "+5", "-1" and other scripts' digits, which Sanic passes on.
    if not (length.isascii() and length.isdigit() and len(length) <= MAX_CONTENT_LENGTH_DIGITS):
        return PayloadError(400, "InvalidHeaders", "Content-Length must be a number of bytes.")
    size = int(length)
    if size > MAX_CALLBACK_BYTES:
        return PayloadError(413, "PayloadTooLarge", f"The request body is larger than {MAX_CALLBACK_BYTES} bytes.")
    if size and not _takes_body(request, routes_with_body):
        return _unexpected_body(request)
    return None


def _unusual_framing_error(
    request: Request, lengths: Sequence[str], encodings: Sequence[str], routes_with_body: FrozenSet[str]
) -> Optional[PayloadError]:
    """``framing_error`` for a chunked body or repeated framing headers."""
    if len(lengths) > 1 or len(encodings) > 1:
        return PayloadError(400, "InvalidHeaders", "Content-Length and Transfer-Encoding may be given once.")
    if lengths:
        # Two framings for one body is how requests are smuggled past proxies.
        return PayloadError(400, "InvalidHeaders", "Give Content-Length or Transfer-Encoding, not both.")
    if encodings[0] != "chunked":
        return PayloadError(400, "InvalidHeaders", "The only Transfer-Encoding accepted is 'chunked'.")
    return None if _takes_body(request, routes_with_body) else _unexpected_body(request)


def _takes_body(request: Request, routes_with_body: FrozenSet[str]) -> bool:
    # Only the routes that read their body in capped chunks take one.
    return request.method.upper() == "POST" and request.path.rstrip("/") in routes_with_body


def _unexpected_body(request: Request) -> PayloadError:
    return PayloadError(400, "UnexpectedBody", f"{request.method.upper()} {request.path} takes no request body.")


def refuse_framing(request: Request, error: PayloadError) -> HTTPResponse:
    """The answer to a request whose framing ``framing_error`` refused; its
    body is never read, and the connection closes after the answer."""
    if request.stream is not None:
        close_after_answer(request.stream)
    return error_response(error)


#: What Sanic raises when it cannot frame a request's body at all, before
#: routing: sanic 21.12 a ValueError (a Content-Length that is no number) or
#: a KeyError (a Transfer-Encoding other than chunked, and no length); sanic
#: 25 a BadRequest ("Bad content-length").
UNFRAMED_ERRORS = (ValueError, KeyError, BadRequest)
UNFRAMED = PayloadError(
    400, "InvalidHeaders", "The request body's framing could not be read: give a Content-Length of digits, or Transfer-Encoding: chunked."
)


def is_unframed(request: Request, exception: Exception) -> bool:
    """Whether ``exception`` is Sanic failing to frame the request, before
    any route ran (its stand-in request has no route)."""
    if request.route is not None or not isinstance(exception, UNFRAMED_ERRORS):
        return False
    # sanic 25's other BadRequests before routing (a malformed request line or header) keep Sanic's answer.
    return not isinstance(exception, BadRequest) or "content-length" in str(exception).lower()


class BodyReads:
    """The request bodies being read now, each within a deadline, and at
    most ``limit`` at once.

    Sanic 21.12 times a request out only after a pause in what the client
    sends (each byte starts its clock again), so a client sending a byte now
    and then would hold a connection, a descriptor and a buffer for as long
    as it likes; thousands of such clients hold thousands. Here a body has
    ``deadline_s`` in all (then 408 and the connection is closed), and a
    body beyond ``limit`` being read at once is not read at all (503 with
    ``Retry-After``, the connection closed).

    The deadlines are kept by one sweep a second (a quarter of the deadline
    when that is shorter), not by a timer per body: a chat message's body is
    read in microseconds, and a timer set and cancelled for each was a
    measurable share of a forwarded message's CPU. A body is cut between
    ``deadline_s`` and ``deadline_s`` plus one sweep."""

    def __init__(self, limit: int, deadline_s: float) -> None:
        self.limit = limit
        self.deadline_s = deadline_s
        self._sweep_every_s = min(1.0, deadline_s / 4)
        #: The task reading each body now, and its deadline (loop time).
        self._reading: Dict["asyncio.Task[Any]", float] = {}
        #: Those of them the sweep cut.
        self._cut: Set["asyncio.Task[Any]"] = set()
        self._sweep: Optional[asyncio.TimerHandle] = None

    @property
    def active(self) -> int:
        return len(self._reading)

    async def read(self, request: Request, limit: int) -> bytes:
        stream = request.stream
        if stream is None:
            return request.body or b""
        if len(self._reading) >= self.limit:
            close_after_answer(stream)
            raise PayloadError(
                503, "ServerBusy", "Too many requests are sending their body now; try again shortly.",
                retry_after=BUSY_RETRY_AFTER_S,
            )
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None, "a request is handled in a task"
        self._reading[task] = loop.time() + self.deadline_s
        if self._sweep is None:
            self._sweep = loop.call_later(self._sweep_every_s, self._cut_overdue)
        try:
            return await _read_within(request, stream, limit)
        except asyncio.CancelledError:
            if task not in self._cut:
                raise
            if sys.version_info >= (3, 11):
                task.uncancel()  # the cancel was this deadline's, not the server's
            logger.info("Closed a connection whose request body took longer than %.0f s.", self.deadline_s)
            close_after_answer(stream)
            raise PayloadError(
                408, "RequestTimeout", f"The request body did not arrive within {self.deadline_s:g} s."
            ) from None
        finally:
            # In the same step as the read's end: a task is swept only while it waits inside the read.
            del self._reading[task]
            self._cut.discard(task)

    def _cut_overdue(self) -> None:
        self._sweep = None
        if not self._reading:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, deadline in self._reading.items():
            if deadline <= now and task not in self._cut:
                self._cut.add(task)
                task.cancel()
        self._sweep = loop.call_later(self._sweep_every_s, self._cut_overdue)

    async def discard(self, request: Request, limit: int) -> None:
        """Read and drop the body of a request refused before its body
        mattered, so a malformed one ends here rather than in Sanic's clean-up."""
        try:
            await self.read(request, limit)
        except PayloadError:
            pass


def close_after_answer(stream: Any) -> None:
    # Sanic would otherwise read away the rest of the body after the answer,
    # without a deadline; the connection closes once the answer is sent.
    stream.keep_alive = False
    stream.request_body = None


async def _read_within(request: Request, stream: Any, limit: int) -> bytes:
    """The body of a ``stream=True`` route, refused as soon as it passes
    ``limit`` bytes: neither a large Content-Length nor a long chunked body
    is buffered first."""
    declared = request.headers.get("content-length")
    # Sanic reads away (without keeping) what a route leaves unread, up to
    # this, so the client can read the 413; past it, it closes the connection.
    stream.request_max_size = limit + UNREAD_BODY_DRAINED
    if declared is not None and int(declared) > limit:
        raise _too_large(limit)
    chunks = []
    size = 0
    try:
        while True:
            chunk = await stream.read()
            if chunk is None:
                break
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except PayloadTooLarge:
        raise _too_large(limit) from None
    except SanicException as error:
        # Sanic's own "Bad chunked encoding". Nothing after it can be read, and
        # Sanic would otherwise try again (and log the failure) once the route answers.
        stream.request_body = None
        raise PayloadError(400, "InvalidBody", str(error) or "The request body is malformed.") from None
    return b"".join(chunks)


def _too_large(limit: int) -> PayloadError:
    return PayloadError(413, "PayloadTooLarge", f"The request body is larger than {limit} bytes.")


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
