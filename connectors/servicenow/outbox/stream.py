"""The outbox: one stream per conversation in the store, on every deployment
(the memory store for one replica, Redis for many).

* An item is stored before anyone is told it was sent: its stream entry id
  is its sequence and its SSE event id, so ``Last-Event-ID`` resumes exactly
  after it, on any replica of a shared store.
* Each sink keeps its own delivered-up-to pointer in the stream: the
  callback URL (``sinks/callback.py``), Server-Sent Events streams
  (``sinks/sse.py``) and socket.io sessions (``sinks/socketio.py``). All of
  them read the stream the same way (``subscription.py``).
* When the store cannot take an item it waits in this process, in order,
  and is retried until the store is back; a push that must be stored before
  it is acknowledged (``dedupe_key``) fails instead (503, retried by
  ServiceNow), and so do an agent's words (``guard``), whose conditions only
  hold at the moment of the append (the poll is repeated).
* Open streams and socket.io sockets hold slots counted in the store, for
  the deployment (``capacity.py``); a subscription or a reader is made for
  one that holds its slot.
"""

import asyncio
import logging
import time
from collections import Counter, deque
from typing import Deque, Dict, List, Optional, Sequence, Set, Tuple

from connectors.servicenow.errors import ConversationBusy
from connectors.servicenow.locks import ConversationLocks
from connectors.servicenow.outbox.base import (
    IN_TOTAL,
    PER_CLIENT,
    PER_SENDER,
    OnDelivered,
    OnTaken,
    OutboundItem,
    Outgoing,
    StreamLimitReached,
    item_of,
    unstored,
)
from connectors.servicenow.outbox.sinks.callback import POST_BATCH, CallbackPoster
from connectors.servicenow.outbox.sinks.socketio import Emit, SessionReader
from connectors.servicenow.outbox.sinks.sse import StreamSubscription
from connectors.servicenow.outbox.capacity import StreamCapacity
from connectors.servicenow.retry import STORE_WAIT
from connectors.servicenow.store import Guard, NewEntry, OutboxEntry, Store, StoreUnavailable, Taken
from connectors.servicenow.store.keys import CALLBACK_SINK, callback_lease, stream_of

logger = logging.getLogger(__name__)

#: How long ``drain`` waits for the workers it cancelled to finish unwinding.
CANCELLED_UNWIND_S = 1.0
#: How long a put waits behind an earlier put of the same conversation.
PUT_WAIT_S = 30.0


class Outbox:
    def __init__(
        self,
        store: Store,
        callback_url: Optional[str],
        *,
        owner: str,
        request_timeout: float = 10.0,
        max_streams_per_sender: int = 5,
        max_streams_per_client: int = 50,
        max_open_streams: int = 1000,
        on_taken: Optional[OnTaken] = None,
        on_delivered: Optional[OnDelivered] = None,
        callback_secret: Optional[str] = None,
    ) -> None:
        """``owner``: this replica, as the holder of callback leases.
        ``on_taken``: called when the callback answered (or gave up on) an
        entry, or, without a callback, when the first stream or socket took
        it. ``on_delivered``: (entry id, sink) when an item reached a sink."""
        self.store = store
        self.callback_url = callback_url
        self._on_delivered = on_delivered
        #: What a stream or socket that takes an entry reports: only without a
        #: callback (with one, the callback's answer is the report).
        self._stream_taken = on_taken if not callback_url else None
        self.capacity = StreamCapacity(
            store, owner, per_sender=max_streams_per_sender, per_client=max_streams_per_client, total=max_open_streams
        )
        #: Conversations with a subscription or reader open here, and how many.
        self._reading: "Counter[str]" = Counter()
        #: socket.io sessions with a reader here.
        self.readers = 0
        self.callback = (
            CallbackPoster(
                store, callback_url, owner=owner, request_timeout=request_timeout,
                on_taken=on_taken, on_delivered=on_delivered, secret=callback_secret,
            )
            if callback_url
            else None
        )
        self._order = ConversationLocks()
        self._backlog: Dict[str, Deque[NewEntry]] = {}
        self._backlog_workers: Dict[str, "asyncio.Task[None]"] = {}

    @property
    def mailbox_count(self) -> int:
        """Conversations this replica holds anything for (streams, waiting items, a poster)."""
        posting = self.callback.conversations if self.callback is not None else set()
        return len(set(self._reading) | self.capacity.conversations | set(self._backlog) | posting)

    @property
    def open_streams(self) -> int:
        """Streams and socket.io sockets open on this replica."""
        return self.capacity.open

    @property
    def callback_backlog(self) -> int:
        """Callback POSTs this replica owes and has not had answered: the
        entries of the conversations whose callback lease it holds, not yet
        posted, plus items waiting here for the store. One replica holds a
        conversation's lease at a time, so the sum over the replicas is the
        deployment's backlog. Read at scrape time; costs no store call."""
        if self.callback is None:
            return 0
        waiting = sum(sum(1 for entry in backlog if entry.to_callback) for backlog in self._backlog.values())
        return waiting + self.callback.backlog

    # -- putting -------------------------------------------------------------

    async def put(
        self,
        recipient_id: str,
        items: Sequence[Outgoing],
        *,
        dedupe_key: Optional[str] = None,
        dedupe_ttl: float = 0.0,
        guard: Optional[Guard] = None,
    ) -> Optional[List[OutboundItem]]:
        """Store items in order and start their delivery. None when
        ``dedupe_key`` was claimed before (a repeat: nothing stored). With
        ``guard``, stored only while its conditions hold (else the store's
        ``AppendRefused``). With either, a failing store raises
        ``StoreUnavailable``; without, the items wait here and are stored
        once it is back."""
        entries = list(items)
        if not entries:
            return []
        must_store_now = dedupe_key is not None or guard is not None
        try:
            async with self._order.hold(recipient_id, PUT_WAIT_S):
                backlog = self._backlog.get(recipient_id)
                if backlog is not None:
                    if must_store_now:
                        raise StoreUnavailable("earlier items of this conversation still wait for the store")
                    backlog.extend(entries)
                    return unstored(items)
                try:
                    stored, taken, took = await self._append(recipient_id, entries, dedupe_key, dedupe_ttl, guard)
                except StoreUnavailable as error:
                    if must_store_now:
                        raise
                    logger.error(
                        "Keeping %d item(s) for conversation %s here until the store is back: %s",
                        len(entries), recipient_id, error,
                    )
                    self._backlog[recipient_id] = deque(entries)
                    self._backlog_workers[recipient_id] = asyncio.ensure_future(self._store_backlog(recipient_id))
                    return unstored(items)
        except ConversationBusy as error:
            raise StoreUnavailable(str(error)) from error
        if stored is None:
            return None
        if not took:
            self._start_posting(recipient_id, stored)
        elif taken is not None and self.callback is not None:
            # Held here now; the lease list stands for it if this replica dies.
            self.callback.take_over(recipient_id, sum(1 for entry in stored if entry.to_callback), taken)
        # else another replica holds the lease: it posts these too (it looks
        # again after letting go, and the lease list replaces it if it dies).
        return [item_of(entry) for entry in stored]

    async def _append(
        self,
        recipient_id: str,
        entries: List[NewEntry],
        dedupe_key: Optional[str],
        dedupe_ttl: float,
        guard: Optional[Guard],
    ) -> Tuple[Optional[List[OutboxEntry]], Optional[Taken], bool]:
        """Append; with nobody posting this conversation here, the append
        takes its callback lease too, so its first POST waits for no store
        call after the append. Answers what was stored, what the lease found,
        and whether the lease was asked for."""
        stream = stream_of(recipient_id)
        poster = self.callback
        if poster is None or poster.is_posting(recipient_id) or not any(entry.to_callback for entry in entries):
            appended = await self.store.append(stream, entries, dedupe_key=dedupe_key, dedupe_ttl=dedupe_ttl, guard=guard)
            return appended, None, False
        both = await self.store.append_and_take(
            stream, entries, dedupe_key=dedupe_key, dedupe_ttl=dedupe_ttl, guard=guard,
            lease=callback_lease(recipient_id), owner=poster.owner, ttl=poster.lease_s,
            sink=CALLBACK_SINK, limit=POST_BATCH,
        )
        if both is None:
            return None, None, True
        return both[0], both[1], True

    async def _store_backlog(self, recipient_id: str) -> None:
        attempt = 0
        try:
            while True:
                async with self._order.hold(recipient_id, PUT_WAIT_S):
                    backlog = self._backlog[recipient_id]
                    try:
                        stored: Optional[List[OutboxEntry]] = await self.store.append(stream_of(recipient_id), list(backlog))
                    except StoreUnavailable as error:
                        stored = None
                        logger.warning("Still cannot store %d item(s) for %s: %s", len(backlog), recipient_id, error)
                    else:
                        del self._backlog[recipient_id]
                if stored is not None:
                    logger.info("Stored %d waiting item(s) for conversation %s.", len(stored), recipient_id)
                    self._start_posting(recipient_id, stored)
                    return
                await STORE_WAIT.sleep(attempt)
                attempt += 1
        finally:
            self._backlog_workers.pop(recipient_id, None)

    def _start_posting(self, recipient_id: str, stored: Sequence[OutboxEntry]) -> None:
        appended = sum(1 for entry in stored if entry.to_callback)
        if self.callback is not None and appended:
            self.callback.take_over(recipient_id, appended)

    def take_over(self, recipient_id: str) -> None:
        """Post a conversation whose callback lease nobody holds (the
        takeover scan found it free: its replica stopped or died)."""
        if self.callback is not None:
            self.callback.take_over(recipient_id)

    # -- reading -------------------------------------------------------------

    def subscribe(self, recipient_id: str, last_event_id: Optional[str] = None) -> StreamSubscription:
        """A Server-Sent Events stream of the conversation, starting after
        ``last_event_id`` when it is one of the conversation's entries, else
        after what streams have taken. The stream's slot is the door's
        (``capacity``)."""
        self._opened(recipient_id)
        return StreamSubscription(
            self.store, recipient_id, last_event_id,
            on_taken=self._stream_taken, on_close=lambda: self._closed(recipient_id),
        )

    def reader(self, session_id: str, emit: Emit) -> SessionReader:
        """A socket.io session's reader: emits what no socket of the session
        was shown yet. Its sockets hold the slots (``capacity``)."""
        self._opened(session_id)
        self.readers += 1

        def closed() -> None:
            self.readers -= 1
            self._closed(session_id)

        return SessionReader(self.store, session_id, emit, on_taken=self._stream_taken, on_close=closed)

    def _opened(self, recipient_id: str) -> None:
        self._reading[recipient_id] += 1

    def _closed(self, recipient_id: str) -> None:
        self._reading[recipient_id] -= 1
        if self._reading[recipient_id] <= 0:
            del self._reading[recipient_id]

    # -- stopping ------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Store waiting items and finish posts under way, up to ``timeout``,
        then let go of the callback leases so another replica goes on."""
        deadline = time.monotonic() + timeout
        posting: Set[str] = set()
        while True:
            # Again after each round: a backlog stored meanwhile starts a poster.
            # A task cancelled before its first step never ran its finally: done, yet still listed.
            posters = self.callback.workers() if self.callback is not None else []
            workers = [worker for worker in (*self._backlog_workers.values(), *posters) if not worker.done()]
            if not workers:
                break
            if self.callback is not None:
                posting.update(self.callback.conversations)
            _, pending = await asyncio.wait(workers, timeout=max(0.0, deadline - time.monotonic()))
            if pending:
                for worker in pending:
                    worker.cancel()
                logger.warning("%d conversation(s) still had items to store or post when the channel stopped.", len(pending))
                # Let the cancelled ones unwind here rather than be left to the garbage collector.
                await asyncio.wait(pending, timeout=CANCELLED_UNWIND_S)
                break
        if self.callback is not None:
            await self.callback.release(posting)

    async def aclose(self) -> None:
        if self.callback is not None:
            await self.callback.aclose()


__all__ = ["Outbox", "PER_SENDER", "PER_CLIENT", "IN_TOTAL", "StreamLimitReached"]
