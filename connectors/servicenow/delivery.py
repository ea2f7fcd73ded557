"""Delivery to the user of everything that happens outside a webhook request:
agent replies, typing, end-of-chat notices, failure summaries.

Two ways out, both in order and each item once:

* **Callback**: every item is POSTed as JSON to ``callback_url``, one at a
  time per user, the same shape as Rasa's callback channel
  (``{"recipient_id", "text", ...}``). Failed posts are retried with backoff.
* **Stream**: ``GET /webhooks/servicenow/stream?sender=<id>`` is a
  Server-Sent Events stream. Items wait in a bounded per-user buffer until a
  stream picks them up, and a reconnecting browser that sends
  ``Last-Event-ID`` gets what it missed.

Event ids are ``<boot>.<box>-<n>``: ``<boot>`` changes with every process
start and ``<box>`` with every mailbox, so an id from before a restart, from an
earlier mailbox of the same user or from another user's stream is recognised
as foreign instead of hiding new items, and ``<n>`` counts within the mailbox.

Streams cost nothing lasting: a mailbox exists while a stream is open or while
it holds items, and is dropped as soon as neither is true. Open streams are
capped per user and in total (``StreamLimitReached``).
"""

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Set

import aiohttp

from connectors.servicenow.backends.http import backoff_delay
from connectors.servicenow.config import RetryPolicy

logger = logging.getLogger(__name__)

MESSAGE_EVENT = "message"
TYPING_EVENT = "typing"
HANDOFF_EVENT = "handoff"
# Items kept per user for streams that have not connected or reconnect.
RETAINED_PER_USER = 200
# A mailbox with nothing pending, nobody listening and no news for this long is dropped.
MAILBOX_IDLE_TTL_S = 3600.0
#: An event number this long is none this process gave out; the id is treated as absent.
MAX_EVENT_NUMBER_DIGITS = 18
CALLBACK_RETRY = RetryPolicy(attempts=4, backoff=0.5, max_backoff=4.0)


@dataclass(frozen=True, slots=True)
class OutboundItem:
    event_id: str
    #: SSE event name: ``message``, ``typing`` or ``handoff``.
    kind: str
    payload: Mapping[str, Any]
    #: Whether the callback receives it as well as the stream.
    to_callback: bool = True
    #: Resolves to True once the item reached the user (the callback answered
    #: 2xx or, without a callback, a stream took it), False when the callback
    #: gave up. Only for items published with ``track=True``.
    outcome: "Optional[asyncio.Future[bool]]" = field(default=None, compare=False, repr=False)

    def settle(self, delivered: bool) -> None:
        if self.outcome is not None and not self.outcome.done():
            self.outcome.set_result(delivered)

    def sse(self) -> str:
        return f"id: {self.event_id}\nevent: {self.kind}\ndata: {json.dumps(self.payload)}\n\n"


@dataclass(frozen=True)
class Outgoing:
    """One item to put in a user's outbox."""

    payload: Mapping[str, Any]
    kind: str = MESSAGE_EVENT
    to_callback: bool = True
    #: Give the stored item an ``outcome`` (see ``OutboundItem``).
    track: bool = False


def status_item(
    recipient_id: str,
    *,
    active: bool,
    chat_id: str,
    api: str,
    agent_joined: bool = False,
    agent_name: Optional[str] = None,
) -> Outgoing:
    """A handoff status event: streams only (a callback consumer expecting
    Rasa's message shape gets no status objects)."""
    status: Dict[str, Any] = {"active": active, "chat_id": chat_id, "api": api, "agent_joined": agent_joined}
    if agent_name:
        status["agent_name"] = agent_name
    return Outgoing({"recipient_id": recipient_id, "handoff": status}, HANDOFF_EVENT, to_callback=False)


@dataclass(slots=True)
class _Mailbox:
    """One user's items. Kept small (lists, no empty deques or sets): there is
    one per live chat, and thousands of chats are normal."""

    next_number: int = 1
    #: The latest items (at most ``RETAINED_PER_USER``), for streams to come.
    retained: List[OutboundItem] = field(default_factory=list)
    #: Highest item number some stream has taken; later ones still wait for a stream.
    streamed_upto: int = 0
    #: Random per mailbox: an event id names the mailbox it came from.
    stamp: str = ""
    listeners: Optional[Set["asyncio.Queue[OutboundItem]"]] = None
    callback_queue: Optional[Deque[OutboundItem]] = None
    callback_worker: Optional["asyncio.Task[None]"] = None
    touched: float = field(default_factory=time.monotonic)


class StreamLimitReached(Exception):
    """A new stream would exceed a cap on open streams."""

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"{limit} open stream(s) {'for this conversation' if scope == PER_SENDER else 'in total'}")
        #: ``PER_SENDER`` or ``IN_TOTAL``.
        self.scope = scope
        self.limit = limit


PER_SENDER = "sender"
IN_TOTAL = "total"


class Outbox:
    def __init__(
        self,
        callback_url: Optional[str],
        *,
        request_timeout: float = 10.0,
        max_streams_per_sender: int = 5,
        max_open_streams: int = 1000,
    ) -> None:
        self.callback_url = callback_url
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._boot = uuid.uuid4().hex[:8]
        self._mailboxes: Dict[str, _Mailbox] = {}
        self._session: Optional[aiohttp.ClientSession] = None
        self.max_streams_per_sender = max_streams_per_sender
        self.max_open_streams = max_open_streams
        self._open_streams = 0
        #: Told (event id, "callback") when a callback POST is answered 2xx (metrics).
        self.on_delivered: Callable[[str, str], None] = lambda _event_id, _sink: None

    @property
    def mailbox_count(self) -> int:
        """Conversations with a mailbox: an open stream or items kept for one."""
        return len(self._mailboxes)

    @property
    def open_streams(self) -> int:
        return self._open_streams

    def _mailbox(self, recipient_id: str) -> _Mailbox:
        mailbox = self._mailboxes.get(recipient_id)
        if mailbox is None:
            mailbox = self._mailboxes[recipient_id] = _Mailbox(stamp=f"{self._boot}.{uuid.uuid4().hex[:8]}")
        return mailbox

    # -- publishing --------------------------------------------------------

    def publish(
        self,
        recipient_id: str,
        payload: Mapping[str, Any],
        kind: str = MESSAGE_EVENT,
        *,
        to_callback: bool = True,
        track: bool = False,
    ) -> OutboundItem:
        """Queue one item for the user. Never blocks: the send happens in the background."""
        mailbox = self._mailbox(recipient_id)
        number = mailbox.next_number
        mailbox.next_number += 1
        mailbox.touched = time.monotonic()
        outcome = asyncio.get_running_loop().create_future() if track else None
        # The payload is the caller's to give away: it is not copied.
        item = OutboundItem(f"{mailbox.stamp}-{number}", kind, payload, to_callback, outcome)
        if len(mailbox.retained) >= RETAINED_PER_USER:
            oldest = mailbox.retained.pop(0)
            if _number(oldest) > mailbox.streamed_upto and not (self.callback_url and oldest.to_callback):
                logger.warning("Dropping an undelivered item for %s: nobody is streaming its messages.", recipient_id)
        mailbox.retained.append(item)
        by_callback = bool(self.callback_url and to_callback)
        if mailbox.listeners:
            mailbox.streamed_upto = number
            for listener in mailbox.listeners:
                listener.put_nowait(item)
            if not by_callback:
                item.settle(True)
        if by_callback:
            if mailbox.callback_queue is None:
                mailbox.callback_queue = deque()
            mailbox.callback_queue.append(item)
            if mailbox.callback_worker is None:
                mailbox.callback_worker = asyncio.create_task(self._post_callbacks(recipient_id, mailbox))
        return item

    async def put(
        self, recipient_id: str, items: Sequence[Outgoing], *, dedupe_key: Optional[str] = None, dedupe_ttl: float = 0.0
    ) -> Optional[List[OutboundItem]]:
        """Queue items in order; the interface the shared outbox has too. In
        one process a repeat is dropped before it gets here, so ``dedupe_key``
        is not looked at."""
        return [
            self.publish(recipient_id, item.payload, item.kind, to_callback=item.to_callback, track=item.track)
            for item in items
        ]

    # -- streaming ---------------------------------------------------------

    def subscribe(
        self, recipient_id: str, last_event_id: Optional[str] = None, *, from_start: bool = False
    ) -> "Subscription":
        """Start a stream for the user; close the subscription when the stream ends.
        ``from_start`` (a sink that has taken nothing yet, e.g. a new socket.io
        session): every retained item, not only what no stream has taken.

        Raises ``StreamLimitReached`` (and changes nothing) when the user, or
        the process, already has as many open streams as allowed."""
        existing = self._mailboxes.get(recipient_id)
        if existing is not None and existing.listeners and len(existing.listeners) >= self.max_streams_per_sender:
            raise StreamLimitReached(PER_SENDER, self.max_streams_per_sender)
        if self._open_streams >= self.max_open_streams:
            raise StreamLimitReached(IN_TOTAL, self.max_open_streams)
        mailbox = self._mailbox(recipient_id)
        subscription = Subscription(self, recipient_id, mailbox)
        resume_after = 0 if from_start and not last_event_id else self._resume_point(mailbox, last_event_id)
        for item in mailbox.retained:
            if _number(item) > resume_after:
                subscription.queue.put_nowait(item)
                if not (self.callback_url and item.to_callback):
                    item.settle(True)
        mailbox.streamed_upto = max(mailbox.streamed_upto, mailbox.next_number - 1)
        if mailbox.listeners is None:
            mailbox.listeners = set()
        mailbox.listeners.add(subscription.queue)
        self._open_streams += 1
        return subscription

    def _unsubscribe(self, recipient_id: str, mailbox: _Mailbox, queue: "asyncio.Queue[OutboundItem]") -> None:
        if mailbox.listeners is None or queue not in mailbox.listeners:
            return
        mailbox.listeners.discard(queue)
        self._open_streams -= 1
        mailbox.touched = time.monotonic()
        if not mailbox.listeners:
            mailbox.listeners = None
            self._forget_if_empty(recipient_id, mailbox)

    def _forget_if_empty(self, recipient_id: str, mailbox: _Mailbox) -> None:
        """Drop a mailbox that holds nothing and serves nobody: a stream
        request for a quiet conversation leaves no trace."""
        if (
            not mailbox.retained
            and not mailbox.listeners
            and not mailbox.callback_queue
            and mailbox.callback_worker is None
            and self._mailboxes.get(recipient_id) is mailbox
        ):
            del self._mailboxes[recipient_id]

    def _resume_point(self, mailbox: _Mailbox, last_event_id: Optional[str]) -> int:
        """The item number after which a new stream starts."""
        if last_event_id:
            stamp, _, number = last_event_id.rpartition("-")
            # Only an id this very mailbox gave out counts: ids of another
            # conversation, an earlier mailbox or process say nothing here.
            # isdigit() alone also takes "²" and Arabic-Indic digits, which int() refuses.
            if (
                stamp == mailbox.stamp
                and number.isascii()
                and number.isdigit()
                and len(number) <= MAX_EVENT_NUMBER_DIGITS
            ):
                return min(int(number), mailbox.next_number - 1)
        # A fresh stream, or one that saw a previous process: send only what
        # no stream has taken yet, so nothing is shown twice.
        return mailbox.streamed_upto

    # -- callback ----------------------------------------------------------

    async def _post_callbacks(self, recipient_id: str, mailbox: _Mailbox) -> None:
        queue = mailbox.callback_queue
        try:
            while queue:
                item = queue[0]
                item.settle(await self._post_one(recipient_id, item))
                queue.popleft()
        finally:
            # Nothing per user stays behind once the queue is empty.
            mailbox.callback_worker = None
            if not queue:
                mailbox.callback_queue = None

    async def _post_one(self, recipient_id: str, item: OutboundItem) -> bool:
        assert self.callback_url is not None
        if await post_with_retries(self._client(), self.callback_url, item.payload, item.kind, recipient_id):
            self.on_delivered(item.event_id, "callback")
            return True
        return False

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    # -- housekeeping ------------------------------------------------------

    def prune(self, now: Optional[float] = None) -> int:
        """Forget idle mailboxes; returns how many were dropped."""
        now = time.monotonic() if now is None else now
        idle = [
            recipient
            for recipient, mailbox in self._mailboxes.items()
            if not mailbox.listeners
            and not mailbox.callback_queue
            and mailbox.callback_worker is None
            and now - mailbox.touched > MAILBOX_IDLE_TTL_S
        ]
        for recipient in idle:
            del self._mailboxes[recipient]
        return len(idle)

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for pending callback posts, e.g. at shutdown."""
        workers = [mailbox.callback_worker for mailbox in self._mailboxes.values() if mailbox.callback_worker is not None]
        if workers:
            _, pending = await asyncio.wait(workers, timeout=timeout)
            for worker in pending:
                worker.cancel()
            if pending:
                logger.warning("%d user(s) still had callback items when the channel stopped.", len(pending))

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


class Subscription:
    """One open stream. Not an async generator on purpose: a dropped
    connection cancels the handler, and ``close()`` in its ``finally`` must
    unregister at once rather than whenever the generator is collected."""

    def __init__(self, outbox: Outbox, recipient_id: str, mailbox: _Mailbox) -> None:
        self._outbox = outbox
        self._recipient_id = recipient_id
        self._mailbox = mailbox
        self.queue: "asyncio.Queue[OutboundItem]" = asyncio.Queue()

    async def next(self, heartbeat: float) -> Optional[OutboundItem]:
        """The next item, or ``None`` when ``heartbeat`` seconds pass without one."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout=heartbeat)
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        """Unregister; safe to call more than once."""
        self._outbox._unsubscribe(self._recipient_id, self._mailbox, self.queue)


def _number(item: OutboundItem) -> int:
    return int(item.event_id.rpartition("-")[2])


async def post_with_retries(
    session: aiohttp.ClientSession,
    url: str,
    payload: Mapping[str, Any],
    kind: str,
    recipient_id: str,
    *,
    may_retry: Optional[Callable[[], Awaitable[bool]]] = None,
) -> bool:
    """POST one item to the callback URL, retried with backoff; True once it
    answered below 400. ``may_retry`` is asked before each retry (the shared
    outbox checks that it still holds the conversation)."""
    problem = ""
    for attempt in range(1, CALLBACK_RETRY.attempts + 1):
        if attempt > 1 and may_retry is not None and not await may_retry():
            problem = "another replica took over"
            break
        try:
            async with session.post(url, json=dict(payload)) as response:
                if response.status < 400:
                    return True
                problem = f"HTTP {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            problem = type(error).__name__
        if attempt < CALLBACK_RETRY.attempts:
            await asyncio.sleep(backoff_delay(CALLBACK_RETRY, attempt))
    logger.error(
        "Giving up delivering a %s item to the callback for %s after %d attempts (%s).",
        kind, recipient_id, CALLBACK_RETRY.attempts, problem,
    )
    return False
