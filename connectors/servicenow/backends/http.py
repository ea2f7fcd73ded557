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
import random
import time
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional, Tuple

import aiohttp

from connectors.servicenow.backends.auth import Auth, TransientAuthError, auth_from_settings
from connectors.servicenow.config import RetryPolicy, ServiceNowSettings
from connectors.servicenow.egress import file_session
from connectors.servicenow.errors import (
    AuthenticationFailed,
    ServiceNowRejected,
    ServiceNowUnavailable,
)

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
        self.on_attempt = on_attempt
        self.on_retry = on_retry
        self._auth = auth or auth_from_settings(settings)
        self._retry = settings.retry
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout)
        self._max_connections = settings.max_connections
        self._verify_tls = settings.verify_tls
        self._sleep = sleep
        self._session: Optional[aiohttp.ClientSession] = None
        self._files_policy = settings.attachment_policy
        self._files: Optional[aiohttp.ClientSession] = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use so it belongs to the loop that serves requests.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, ssl=None if self._verify_tls else False
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers={"User-Agent": "rasa-servicenow-handoff"}
            )
        return self._session

    def fetch_session(self) -> aiohttp.ClientSession:
        """The session for requests outside ServiceNow (a user's file URL): its
        own pool, without ServiceNow's credentials, and without a host list
        (``attachment_hosts``) it reaches public addresses only (egress.py)."""
        if self._files is None or self._files.closed:
            self._files = file_session(
                self._files_policy.timeout, public_only=self._files_policy.public_only,
                trusted=self._files_policy.trusted,
            )
        return self._files

    async def aclose(self) -> None:
        for session in (self._session, self._files):
            if session is not None and not session.closed:
                await session.close()
        self._session = None
        self._files = None

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
        """Send one API call and return its decoded JSON body.

        ``attempts`` overrides the retry policy's count for calls not worth
        repeating (1: a single try, e.g. a typing indicator).

        ``raw_body`` with ``content_type`` sends bytes instead of JSON (the
        Attachment API takes the file itself as the body).

        The body is serialised once, compactly, so a signature computed over
        ``compact_json(json_body)`` by the caller matches the bytes sent.
        """
        session = self._client()
        body = compact_json(json_body) if json_body is not None else raw_body
        content_headers = {"Content-Type": content_type} if raw_body is not None and content_type else {}
        url = self.base_url + path
        renewed_credentials = False
        last_problem = "no attempt made"
        last_status: Optional[int] = None
        attempt = 0
        max_attempts = attempts or self._retry.attempts
        while attempt < max_attempts:
            attempt += 1
            delay: Optional[float] = None
            started = time.monotonic()
            try:
                headers = {
                    **JSON_HEADERS,
                    **content_headers,
                    **(extra_headers or {}),
                    "Authorization": await self._auth.header(session, self.base_url),
                }
                started = time.monotonic()
                async with session.request(method, url, data=body, params=params, headers=headers) as response:
                    status = response.status
                    raw = await response.read()
                    retry_after = _retry_after(response.headers.get("Retry-After"))
                    if self._on_response is not None:
                        self._on_response(method, path, status, response.headers)
                logger.debug(
                    "ServiceNow %s %s -> %s in %.1f ms", method, path, status, (time.monotonic() - started) * 1000
                )
            except (aiohttp.ClientError, asyncio.TimeoutError, TransientAuthError) as error:
                last_problem, last_status = _describe(error), None
                if self.on_attempt is not None and not isinstance(error, TransientAuthError):
                    self.on_attempt(method, path, None, time.monotonic() - started)
            else:
                if self.on_attempt is not None:
                    self.on_attempt(method, path, status, time.monotonic() - started)
                last_status = status
                if status == 401 and self._auth.renewable and not renewed_credentials:
                    # A revoked or expired token: one fresh token, no backoff.
                    renewed_credentials = True
                    self._auth.invalidate()
                    attempt -= 1
                    continue
                if status == 401:
                    raise AuthenticationFailed(
                        f"ServiceNow refused the credentials for {method} {path}", status=401, detail=_detail(raw)
                    )
                if status in RETRYABLE_STATUSES:
                    last_problem = f"HTTP {status}"
                    if status == 429 and retry_after is not None:
                        delay = min(retry_after, self._retry.max_retry_after)
                elif status >= 400:
                    raise ServiceNowRejected(
                        f"ServiceNow answered {status} to {method} {path}", status=status, detail=_detail(raw)
                    )
                else:
                    decoded, problem = _decode(raw)
                    if problem is None:
                        return decoded
                    last_problem = problem
            if attempt < max_attempts:
                wait = delay if delay is not None else backoff_delay(self._retry, attempt)
                logger.warning(
                    "ServiceNow %s %s failed (%s); retry %d of %d in %.2fs.",
                    method, path, last_problem, attempt, max_attempts - 1, wait,
                )
                if self.on_retry is not None:
                    self.on_retry(method, path)
                await self._sleep(wait)
        raise ServiceNowUnavailable(
            f"ServiceNow {method} {path} failed {attempt} times, last with {last_problem}",
            attempts=attempt,
            status=last_status,
        )


def compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def backoff_delay(policy: RetryPolicy, attempt: int) -> float:
    """Exponential backoff with "equal jitter": never less than half the step,
    so retries from many chats spread out without collapsing to zero."""
    step = min(policy.max_backoff, policy.backoff * (2 ** (attempt - 1)))
    return step / 2 + random.uniform(0, step / 2)


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
