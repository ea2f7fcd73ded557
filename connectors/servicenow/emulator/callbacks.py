"""Outbound Virtual Agent callbacks (reference 5.4 "Outbound callback delivery"): how the emulator POSTs to the
connector's webhook, the way ServiceNow's "VA Bot to Bot" REST step does.

* ``POST <va_callback_url>`` with ``Content-Type: application/json``, ``User-Agent: ServiceNow`` [V Mattermost note]
  and the ``va_callback_auth`` headers, each attempt limited to ``va_callback_timeout_ms``.
* Per VA session, callbacks go out one after another in the order the events created them, from a background task, so
  the inbound request that caused them has already been answered. ServiceNow has a "Maintain message ordering"
  setting [V ccci-message-delivery-order.md]; retries of one callback happen before the next callback goes out, so
  they keep that order too [I].
* A non-2xx answer, a timeout or a connection error is a failed attempt; it is retried ``va_callback_retries`` times
  after ``va_callback_retry_delay_ms`` with the very same bytes (same ``messageId``, same ``requestId``). Whether the
  real instance retries is not documented [I]. A request that timed out here may still have reached the connector,
  which is how real duplicates happen.
* Fault rules with ``match.api: "callback"`` (see ``faults.py``) are checked on every attempt: ``status`` fails the
  attempt without sending anything (the connector's answer would not matter), ``drop_connection`` loses it,
  ``duplicate`` sends it twice, and ``delay_ms`` holds the callback back: on a first attempt without blocking the
  later callbacks of the session (so they overtake it), on a retry in place. ``hold`` (first attempts only) keeps the
  callback until the session's next callback has been delivered (or failed), then sends it: the two swap places.
  With nothing behind it, a held callback goes out after ``delay_ms`` (default 10 s).

Every attempt is kept for ``GET /__emu/callbacks`` with the credentials redacted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Coroutine, Deque, Dict, List, Optional, Protocol, Set, Tuple
from urllib.parse import urlsplit

import aiohttp

from .clock import Clock
from .config import EmulatorConfig, callback_auth_headers
from .faults import DEFAULT_HOLD_MS, FaultRule, RequestFacts, pick_fault

log = logging.getLogger("connectors.servicenow.emulator.callbacks")

#: Outcomes of one attempt in the delivery log.
DELIVERED = "delivered"  # 2xx
FAILED = "failed"  # the connector answered with a non-2xx status
TIMEOUT = "timeout"  # no complete answer within va_callback_timeout_ms
ERROR = "error"  # connection refused, reset, bad URL ...
FAULT = "fault"  # a callback fault rule with ``status``: nothing was sent
DROPPED = "dropped"  # a callback fault rule with ``drop_connection``: nothing was sent
NOT_CONFIGURED = "not_configured"  # no va_callback_url: the callback is only logged


class DeliveryContext(Protocol):
    """What the dispatcher reads from the emulator state (at send time, so runtime config changes apply)."""

    config: EmulatorConfig
    clock: Clock
    faults: List[FaultRule]
    fault_seed: int


@dataclass
class Callback:
    """One callback as an event created it. The payload is serialized once: every attempt sends the same bytes."""

    id: str
    #: ``clientSessionId``, for fault matching and the log.
    session: str
    #: The emulator's own key of the VA session; deliveries with the same key keep their order.
    outbox: str
    payload: Dict[str, Any]
    data: bytes

    @classmethod
    def create(cls, session: str, outbox: str, payload: Dict[str, Any]) -> "Callback":
        return cls(uuid.uuid4().hex, session, outbox, payload, json.dumps(payload).encode("utf-8"))


@dataclass
class DeliveryRecord:
    """One attempt as ``GET /__emu/callbacks`` shows it."""

    #: Shared by all attempts (and the duplicate) of one callback.
    callback_id: str
    session: str
    url: Optional[str]
    #: Headers sent; auth values redacted except for their kind (``Basic [redacted]``).
    headers: Dict[str, str]
    payload: Dict[str, Any]
    #: 1 for the first attempt, 2 for the first retry ...
    attempt: int
    #: True for the second copy sent by a ``duplicate`` fault.
    duplicate: bool
    outcome: str
    #: The connector's HTTP status, or the fault rule's status for a ``fault`` outcome.
    status: Optional[int]
    latency_ms: float
    fault: Optional[str]
    error: Optional[str]
    at_ms: int


class CallbackDispatcher:
    """Per-app delivery of VA callbacks: one ordered outbox per VA session, one shared ``aiohttp.ClientSession``
    (opened on first use, closed by :meth:`close` on app cleanup)."""

    def __init__(self, context: DeliveryContext, log_limit: int) -> None:
        self._context = context
        self._http: Optional[aiohttp.ClientSession] = None
        self._outboxes: Dict[str, Deque[Callback]] = {}
        self._workers: Dict[str, "asyncio.Task[None]"] = {}
        self._tasks: Set["asyncio.Task[None]"] = set()
        self._unfinished: Set[str] = set()
        self._said_not_configured = False
        #: Per outbox, the held callbacks waiting for the next delivery (``hold`` faults).
        self._held: Dict[str, List[Tuple[asyncio.Event, "asyncio.Task[None]"]]] = {}
        self.log: Deque[DeliveryRecord] = deque(maxlen=log_limit)

    @property
    def pending(self) -> int:
        """Callbacks created whose delivery (with its retries) has not finished yet."""
        return len(self._unfinished)

    def enqueue(self, callbacks: List[Callback]) -> None:
        """Queue callbacks behind the earlier ones of their session; the caller's request is answered first because
        the worker only starts running once the current handler has returned [I: the real instance answers first too,
        "The request hasn't yet been processed", bot-api.md]."""
        for callback in callbacks:
            self._unfinished.add(callback.id)
            self._outboxes.setdefault(callback.outbox, deque()).append(callback)
            if callback.outbox not in self._workers:
                self._workers[callback.outbox] = self._spawn(self._work(callback.outbox))

    def reset(self, log_limit: int) -> None:
        """Forget queued and in-flight callbacks and the log (``POST /__emu/reset``)."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._workers.clear()
        self._outboxes.clear()
        self._unfinished.clear()
        self._held.clear()
        self.log = deque(maxlen=log_limit)

    def resize_log(self, log_limit: int) -> None:
        self.log = deque(self.log, maxlen=log_limit)

    async def close(self) -> None:
        tasks = list(self._tasks)
        self.reset(self.log.maxlen or 0)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -----------------------------------------------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> "asyncio.Task[None]":
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _work(self, outbox: str) -> None:
        queue = self._outboxes[outbox]
        try:
            while queue:
                callback = queue.popleft()
                rule = self._fault(callback)
                if rule is not None and rule.respond.hold:
                    # Waits for the next delivery of this outbox, which therefore goes first.
                    released = asyncio.Event()
                    task = self._spawn(self._deliver_held(callback, rule, released))
                    self._held.setdefault(outbox, []).append((released, task))
                    continue
                if rule is not None and rule.respond.delay_ms:
                    # Held back on its own, so the session's later callbacks overtake it.
                    self._spawn(self._deliver(callback, rule))
                else:
                    await self._deliver(callback, rule)
                # The held ones go right after this one, before anything later: the two have swapped places.
                held = self._held.pop(outbox, [])
                for released, _ in held:
                    released.set()
                for _, task in held:
                    await asyncio.shield(task)
        finally:
            # No await between the empty check and this: enqueue() either saw this worker or starts a new one.
            if self._workers.get(outbox) is asyncio.current_task():
                del self._workers[outbox]
                self._outboxes.pop(outbox, None)

    async def _deliver_held(self, callback: Callback, rule: FaultRule, released: asyncio.Event) -> None:
        limit_s = (rule.respond.delay_ms or DEFAULT_HOLD_MS) / 1000
        try:
            await asyncio.wait_for(released.wait(), limit_s)
        except asyncio.TimeoutError:
            log.debug("held callback %s sent after %.1f s without a later one", callback.id, limit_s)
        # Its own fault has been applied (the hold); the attempt itself goes out clean.
        await self._deliver(callback, None, hold_rule=rule)
        for outbox, held in list(self._held.items()):
            held[:] = [entry for entry in held if entry[0] is not released]
            if not held:
                del self._held[outbox]

    async def _deliver(
        self, callback: Callback, first_rule: Optional[FaultRule], hold_rule: Optional[FaultRule] = None
    ) -> None:
        try:
            attempts = 1 + int(self._context.config.va_callback_retries)
            for attempt in range(1, attempts + 1):
                rule = first_rule if attempt == 1 else self._fault(callback, retry=True)
                if rule is not None and rule.respond.delay_ms:
                    await asyncio.sleep(rule.respond.delay_ms / 1000)
                if await self._attempt(callback, attempt, rule, hold_rule if attempt == 1 else None):
                    return
                if attempt < attempts:
                    await asyncio.sleep(self._context.config.va_callback_retry_delay_ms / 1000)
        finally:
            self._unfinished.discard(callback.id)

    def _fault(self, callback: Callback, retry: bool = False) -> Optional[FaultRule]:
        url = self._context.config.va_callback_url
        if url is None or not self._context.faults:
            return None
        facts = RequestFacts("callback", "POST", urlsplit(url).path or "/", callback.session, callback.data.decode())
        # A retry goes out on its own schedule: there is no "next push" to swap it with.
        rules = [r for r in self._context.faults if not r.respond.hold] if retry else self._context.faults
        return pick_fault(rules, facts, self._context.fault_seed)

    async def _attempt(
        self, callback: Callback, attempt: int, rule: Optional[FaultRule], held_by: Optional[FaultRule] = None
    ) -> bool:
        """One attempt; True when the callback needs no retry (delivered, or there is nowhere to send it)."""
        config = self._context.config
        url = config.va_callback_url
        auth = callback_auth_headers(config.va_callback_auth)
        headers = {"Content-Type": "application/json", "User-Agent": "ServiceNow", **auth}

        def record(
            outcome: str,
            status: Optional[int] = None,
            latency_ms: float = 0.0,
            duplicate: bool = False,
            error: Optional[str] = None,
        ) -> None:
            self.log.append(
                DeliveryRecord(
                    callback_id=callback.id,
                    session=callback.session,
                    url=url,
                    headers=_redacted(headers, auth),
                    payload=callback.payload,
                    attempt=attempt,
                    duplicate=duplicate,
                    outcome=outcome,
                    status=status,
                    latency_ms=latency_ms,
                    fault=(rule or held_by).id if (rule or held_by) is not None else None,
                    error=error,
                    at_ms=self._context.clock.now_ms(),
                )
            )
            self._log_attempt(callback, attempt, outcome, status)

        if url is None:
            record(NOT_CONFIGURED)
            return True
        if rule is not None and rule.respond.status is not None:
            record(FAULT, status=rule.respond.status)
            return False
        if rule is not None and rule.respond.drop_connection:
            record(DROPPED)
            return False
        copies = 2 if rule is not None and rule.respond.duplicate else 1
        delivered = False
        for copy in range(copies):
            outcome, status, latency_ms, error = await self._send(url, headers, callback.data, config)
            record(outcome, status, latency_ms, duplicate=copy > 0, error=error)
            delivered = delivered or outcome == DELIVERED
        return delivered

    def _log_attempt(self, callback: Callback, attempt: int, outcome: str, status: Optional[int]) -> None:
        """One line per attempt, at the level a person watching needs: deliveries are routine (DEBUG), injected faults
        are what the test asked for (INFO), real failures are WARNING; a missing ``va_callback_url`` is said once."""
        if outcome == NOT_CONFIGURED:
            if not self._said_not_configured:
                self._said_not_configured = True
                log.warning(
                    "va_callback_url is not set: Virtual Agent pushes are only logged (GET /__emu/callbacks), "
                    "not sent; start with --set va_callback_url=http://127.0.0.1:5005/webhooks/servicenow/callback"
                )
            level = logging.DEBUG
        elif outcome == DELIVERED:
            level = logging.DEBUG
        elif outcome in (FAULT, DROPPED):
            level = logging.INFO
        else:
            level = logging.WARNING
        log.log(level, "callback %s attempt %d -> %s %s", callback.id, attempt, outcome, status or "")

    async def _send(
        self, url: str, headers: Dict[str, str], data: bytes, config: EmulatorConfig
    ) -> Tuple[str, Optional[int], float, Optional[str]]:
        if self._http is None:
            # No cookie jar: a connector's Set-Cookie must not leak into later callbacks.
            self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        started = time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - started) * 1000, 1)

        timeout = aiohttp.ClientTimeout(total=config.va_callback_timeout_ms / 1000)
        try:
            async with self._http.post(
                url, data=data, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                await response.read()
                status = response.status
        except asyncio.TimeoutError:
            return TIMEOUT, None, elapsed(), None
        except (aiohttp.ClientError, ValueError) as exc:
            return ERROR, None, elapsed(), f"{type(exc).__name__}: {exc}"
        return (DELIVERED if 200 <= status < 300 else FAILED), status, elapsed(), None


def _redacted(headers: Dict[str, str], auth: Dict[str, str]) -> Dict[str, str]:
    """Auth headers keep only their kind: ``Authorization: Basic [redacted]``, other configured headers
    ``[redacted]``."""
    shown = dict(headers)
    for name in auth:
        if name.lower() == "authorization":
            shown[name] = f"{auth[name].partition(' ')[0]} [redacted]"
        else:
            shown[name] = "[redacted]"
    return shown
