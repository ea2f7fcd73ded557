"""One pooled HTTP client per instance, shared by every chat, that adds
credentials and retries what is worth retrying.

Retried, with exponential backoff and jitter: 5xx, 429 (honouring
``Retry-After``), timeouts, refused and dropped connections, and answers that
are not JSON (a hibernating developer instance serves an HTML page with 200).
A 401 gets one fresh OAuth token. Any other 4xx is final and raised at once
as ``ServiceNowRejected``.
"""

import asyncio
import email.utils
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import aiohttp

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.egress import file_session
from connectors.servicenow.errors import (
    AuthenticationFailed,
    ServiceNowRejected,
    ServiceNowUnavailable,
)
from connectors.servicenow.retry import backoff_delay
from connectors.servicenow.servicenow.auth import Auth, TransientAuthError, auth_from_settings
from connectors.servicenow.sessions import LazySession

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}

Sleep = Callable[[float], Awaitable[None]]
#: Told of every answer: method, path, status and headers (the doctor reads
#: the rate-limit headers this way).
ResponseObserver = Callable[[str, str, int, Mapping[str, str]], None]
#: Told of every attempt: method, path, status (None when no answer came:
#: timeout, refused or dropped connection) and seconds taken (metrics).
AttemptObserver = Callable[[str, str, Optional[int], float], None]
#: Told before every retry: method and path.
RetryObserver = Callable[[str, str], None]


class ServiceNowHTTP:
    def __init__(
        self,
        settings: ServiceNowSettings,
        *,
        auth: Optional[Auth] = None,
        sleep: Sleep = asyncio.sleep,
        on_response: Optional[ResponseObserver] = None,
        on_attempt: Optional[AttemptObserver] = None,
        on_retry: Optional[RetryObserver] = None,
    ) -> None:
        self.base_url = settings.instance_url
        self._on_response = on_response
        self._on_attempt = on_attempt
        self._on_retry = on_retry
        self._auth = auth or auth_from_settings(settings)
        self._retry = settings.retry
        self._sleep = sleep
        timeout = aiohttp.ClientTimeout(total=settings.request_timeout)
        self._session = LazySession(
            lambda: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=settings.max_connections, ssl=settings.verify_tls),
                timeout=timeout,
                headers={"User-Agent": "rasa-servicenow-handoff"},
            )
        )
        files = settings.attachment_policy
        self._files = LazySession(
            lambda: file_session(files.timeout, public_only=files.public_only, trusted=files.trusted)
        )

    def fetch_session(self) -> aiohttp.ClientSession:
        """The session for requests outside ServiceNow (a user's file URL): its
        own pool, without ServiceNow's credentials, and without a host list
        (``attachment_hosts``) it reaches public addresses only (egress.py)."""
        return self._files.get()

    async def aclose(self) -> None:
        await self._session.aclose()
        await self._files.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Optional[Mapping[str, Any]] = None,
        params: Optional[Mapping[str, str]] = None,
        extra_headers: Optional[Mapping[str, str]] = None,
        attempts: Optional[int] = None,
        raw_body: Optional[bytes] = None,
        content_type: Optional[str] = None,
    ) -> Any:
        """Send one API call and return its decoded JSON body. ``attempts``
        overrides the retry policy's count (1: a single try, e.g. a typing
        indicator); ``raw_body`` with ``content_type`` sends bytes, not JSON
        (the Attachment API takes the file itself). The body is serialised
        once, compactly, so a signature over ``compact_json(json_body)``
        computed by the caller matches the bytes sent."""
        body = compact_json(json_body) if json_body is not None else raw_body
        call = _Call(method, path, body, params, _headers(extra_headers, content_type if raw_body is not None else None))
        renewed_credentials = False
        attempt = 0
        max_attempts = attempts or self._retry.attempts
        while attempt < max_attempts:
            attempt += 1
            # Each try in this coroutine, not one of its own: every resume of
            # the request inside passes through each coroutine awaiting it.
            session = self._session.get()
            started = time.monotonic()
            answer: Optional[_Answer] = None
            try:
                headers = {**call.headers, "Authorization": await self._auth.header(session, self.base_url)}
                started = time.monotonic()
                url = self.base_url + call.path
                async with session.request(call.method, url, data=call.body, params=call.params, headers=headers) as response:
                    answer = _Answer(response.status, await response.read(), _retry_after(response.headers.get("Retry-After")))
                    if self._on_response is not None:
                        self._on_response(call.method, call.path, answer.status, response.headers)
            except (aiohttp.ClientError, asyncio.TimeoutError, TransientAuthError) as error:
                self._no_answer(call, error, time.monotonic() - started)
            delay: Optional[float] = None
            if answer is not None:
                self._answered(call, answer.status, time.monotonic() - started)
                if answer.status == 401 and self._auth.renewable and not renewed_credentials:
                    # A revoked or expired token: one fresh token, no backoff.
                    renewed_credentials = True
                    self._auth.invalidate()
                    attempt -= 1
                    continue
                done, value, delay = self._judge(call, answer)
                if done:
                    return value
            if attempt < max_attempts:
                await self._pause(call, attempt, max_attempts, delay)
        raise ServiceNowUnavailable(
            f"ServiceNow {method} {path} failed {attempt} times, last with {call.problem}",
            attempts=attempt,
            status=call.status,
        )

    def _no_answer(self, call: "_Call", error: BaseException, took: float) -> None:
        call.problem, call.status = _describe(error), None
        if self._on_attempt is not None and not isinstance(error, TransientAuthError):
            self._on_attempt(call.method, call.path, None, took)

    def _answered(self, call: "_Call", status: int, took: float) -> None:
        logger.debug("ServiceNow %s %s -> %s in %.1f ms", call.method, call.path, status, took * 1000)
        if self._on_attempt is not None:
            self._on_attempt(call.method, call.path, status, took)
        call.status = status

    def _judge(self, call: "_Call", answer: "_Answer") -> Tuple[bool, Any, Optional[float]]:
        """``(True, body)`` for a usable answer; ``(False, _, delay)`` for one
        worth retrying (``delay``: what ``Retry-After`` asked for); raises
        for a final refusal."""
        status = answer.status
        if status == 401:
            raise AuthenticationFailed(
                f"ServiceNow refused the credentials for {call.method} {call.path}", status=401, detail=_detail(answer.raw)
            )
        if status in RETRYABLE_STATUSES:
            call.problem = f"HTTP {status}"
            if status == 429 and answer.retry_after is not None:
                return False, None, min(answer.retry_after, self._retry.max_retry_after)
            return False, None, None
        if status >= 400:
            raise ServiceNowRejected(
                f"ServiceNow answered {status} to {call.method} {call.path}", status=status, detail=_detail(answer.raw)
            )
        decoded, problem = _decode(answer.raw)
        if problem is None:
            return True, decoded, None
        call.problem = problem
        return False, None, None

    async def _pause(self, call: "_Call", attempt: int, max_attempts: int, delay: Optional[float]) -> None:
        wait = delay if delay is not None else backoff_delay(self._retry, attempt)
        logger.warning(
            "ServiceNow %s %s failed (%s); retry %d of %d in %.2fs.",
            call.method, call.path, call.problem, attempt, max_attempts - 1, wait,
        )
        if self._on_retry is not None:
            self._on_retry(call.method, call.path)
        await self._sleep(wait)


@dataclass
class _Call:
    """One API call across its attempts: what is sent, and how the last attempt went."""

    method: str
    path: str
    body: Optional[bytes]
    params: Optional[Mapping[str, str]]
    headers: Dict[str, str]
    problem: str = "no attempt made"
    status: Optional[int] = None


class _Answer(NamedTuple):
    status: int
    raw: bytes
    retry_after: Optional[float]


def _headers(extra: Optional[Mapping[str, str]], content_type: Optional[str]) -> Dict[str, str]:
    headers = {**JSON_HEADERS, **({"Content-Type": content_type} if content_type else {})}
    headers.update(extra or {})
    return headers


#: ``json.dumps`` with options makes an encoder per call; every request body is one.
_COMPACT_UTF8 = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def compact_json(value: Any) -> bytes:
    return _COMPACT_UTF8.encode(value).encode()


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _decode(raw: bytes) -> Tuple[Any, Optional[str]]:
    if not raw:
        return None, None
    try:
        return json.loads(raw), None
    except ValueError:
        return None, "an answer that is not JSON"


def _detail(raw: bytes) -> str:
    """The human-readable reason from a ServiceNow error body, if any."""
    decoded, _ = _decode(raw)
    if isinstance(decoded, dict):
        error = decoded.get("error")
        if isinstance(error, dict):
            return str(error.get("detail") or error.get("message") or "")
        if isinstance(decoded.get("result"), str):
            return decoded["result"]
    return ""


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "a timeout"
    if isinstance(error, TransientAuthError):
        return str(error)
    return type(error).__name__


def result_of(body: Any) -> Any:
    """Unwrap ServiceNow's ``{"result": ...}`` envelope."""
    if isinstance(body, dict) and "result" in body:
        return body["result"]
    raise ServiceNowRejected("ServiceNow answered without a 'result'", status=200)


def as_dict(value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise ServiceNowRejected("ServiceNow answered with an unexpected shape", status=200)
    return value
