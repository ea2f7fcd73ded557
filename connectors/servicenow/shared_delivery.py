"""Delivery through the shared store (``redis_url``): the outbox of every
replica is one durable stream per conversation.

* An item is stored before anyone is told it was sent: its stream entry id
  is its sequence and its SSE event id, valid on every replica and across
  restarts, so ``Last-Event-ID`` resumes exactly after it on any replica.
* **Streams**: an SSE stream on any replica waits on the store's blocking
  read and gets new entries as they are appended, wherever. The ``stream``
  sink's pointer says what some stream has taken: a stream that comes without
  an id of this conversation starts after it, so nothing is shown twice.
* **Callback**: each entry is posted once per deployment. One replica posts a
  conversation's entries at a time, under a lease, and moves the ``callback``
  sink's pointer past each one; the replica that appends starts the posting
  unless another holds the lease, and a holder that dies is replaced through
  the lease list (``take_over``). A crash between a post and the pointer
  move posts that entry again: at least once, never lost.
* When the store cannot take an item it waits in this process, in order,
  and is retried until the store is back; only a push that must be stored
  before it is acknowledged (``dedupe_key``) fails instead (503, retried
  by ServiceNow).
"""

import asyncio
import logging
import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple

import aiohttp

from connectors.servicenow.delivery import (
    CALLBACK_RETRY,
    IN_TOTAL,
    PER_SENDER,
    RETAINED_PER_USER,
    OutboundItem,
    Outgoing,
    StreamLimitReached,
    post_with_retries,
)
from connectors.servicenow.errors import ConversationBusy
from connectors.servicenow.state import ConversationLocks
from connectors.servicenow.store import NewEntry, OutboxEntry, Store, StoreUnavailable, Taken, is_entry_id

logger = logging.getLogger(__name__)

CALLBACK_SINK = "callback"
STREAM_SINK = "stream"
CALLBACK_LEASE_PREFIX = "cb:"
# How a round of posting ended.
MORE, CAUGHT_UP, LOST = "more", "caught up", "lost"
#: Pauses between attempts to store items while the store is down.
BACKLOG_RETRY_S = (0.5, 1.0, 2.0, 5.0)
#: How long ``drain`` waits for the workers it cancelled to finish unwinding.
CANCELLED_UNWIND_S = 1.0
#: How long a put waits behind an earlier put of the same conversation.
PUT_WAIT_S = 30.0
#: Entries a poster reads at a time: all a conversation's stream keeps, so
#: that the backlog it reports is the whole of what it owes.
POST_BATCH = RETAINED_PER_USER


#: Told when a sink took an entry: (recipient, entry, delivered). Runs on the
#: replica whose sink took it, once per entry for the deployment.
OnTaken = Callable[[str, OutboxEntry, bool], None]


def callback_lease(recipient_id: str) -> str:
    return CALLBACK_LEASE_PREFIX + recipient_id


class SharedOutbox:
    """The outbox on a shared store; same interface as ``delivery.Outbox``."""

    def __init__(
        self,
        store: Store,
        callback_url: Optional[str],
        *,
        owner: str,
        request_timeout: float = 10.0,
        max_streams_per_sender: int = 5,
        max_open_streams: int = 1000,
        on_taken: Optional[OnTaken] = None,
    ) -> None:
        """``on_taken``: called when the callback answered (or gave up on) an
        entry, or, without a callback, when the first stream took it."""
        self.store = store
        self.on_taken = on_taken
        self.callback_url = callback_url
        self.owner = owner
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        # Renewed before every attempt of a post, so it only has to outlive
        # one attempt and one pause: a dead poster's conversations are free
        # again that soon.
        self._lease_s = request_timeout + CALLBACK_RETRY.max_backoff + 1.0
        self.max_streams_per_sender = max_streams_per_sender
        self.max_open_streams = max_open_streams
        self._streams_of: Dict[str, int] = {}
        self._open_streams = 0
        self._order = ConversationLocks()
        self._backlog: Dict[str, Deque[NewEntry]] = {}
        self._backlog_workers: Dict[str, "asyncio.Task[None]"] = {}
        self._posters: Dict[str, "asyncio.Task[None]"] = {}
        # Conversations appended to while their poster ran: it looks again.
        self._kicked: Set[str] = set()
        #: Callback entries each of this replica's posters holds the lease
        #: for and has not posted yet (``callback_backlog``).
        self._unposted: Dict[str, int] = {}
        self._session: Optional[aiohttp.ClientSession] = None
        #: Told (entry id, "callback") when a callback POST is answered 2xx
        #: (metrics); as ``Outbox.on_delivered``, on the replica that posted.
        self.on_delivered: Callable[[str, str], None] = lambda _event_id, _sink: None

    @property
    def mailbox_count(self) -> int:
        """Conversations this replica holds anything for (streams, waiting items, a poster)."""
        return len(set(self._streams_of) | set(self._backlog) | set(self._posters))

    @property
    def open_streams(self) -> int:
        return self._open_streams

    @property
    def callback_backlog(self) -> int:
        """Callback POSTs this replica owes and has not had answered: the
        entries of the conversations whose callback lease it holds, not yet
        posted, plus items waiting here for the store. One replica holds a
        conversation's lease at a time, so the sum over the replicas is the
        deployment's backlog (what a dead replica held counts again once
        another takes it over). Read at scrape time; costs no store call."""
        waiting = sum(
            sum(1 for entry in backlog if entry.to_callback) for backlog in self._backlog.values()
        ) if self.callback_url else 0
        return waiting + sum(self._unposted.values())

    # -- putting -------------------------------------------------------------

    async def put(
        self, recipient_id: str, items: Sequence[Outgoing], *, dedupe_key: Optional[str] = None, dedupe_ttl: float = 0.0
    ) -> Optional[List[OutboundItem]]:
        """Store items in order and start their delivery. None when
        ``dedupe_key`` was claimed before (a repeat: nothing stored). With
        ``dedupe_key`` a failing store raises ``StoreUnavailable``; without,
        the items wait here and are stored once it is back."""
        entries = [NewEntry(item.payload, item.kind, item.to_callback) for item in items]
        if not entries:
            return []
        try:
            async with self._order.hold(recipient_id, PUT_WAIT_S):
                backlog = self._backlog.get(recipient_id)
                if backlog is not None:
                    if dedupe_key is not None:
                        raise StoreUnavailable("earlier items of this conversation still wait for the store")
                    backlog.extend(entries)
                    return _unstored(items)
                # With nobody posting this conversation here, the append
                # takes its callback lease too: its first POST then waits
                # for no store call after the append.
                take = bool(
                    self.callback_url
                    and recipient_id not in self._posters
                    and any(entry.to_callback for entry in entries)
                )
                taken: Optional[Taken] = None
                try:
                    if take:
                        both = await self.store.append_and_take(
                            stream_of(recipient_id), entries, dedupe_key=dedupe_key, dedupe_ttl=dedupe_ttl,
                            lease=callback_lease(recipient_id), owner=self.owner, ttl=self._lease_s,
                            sink=CALLBACK_SINK, limit=POST_BATCH,
                        )
                        stored, taken = both if both is not None else (None, None)
                    else:
                        stored = await self.store.append(
                            stream_of(recipient_id), entries, dedupe_key=dedupe_key, dedupe_ttl=dedupe_ttl
                        )
                except StoreUnavailable as error:
                    if dedupe_key is not None:
                        raise
                    logger.error(
                        "Keeping %d item(s) for conversation %s here until the store is back: %s",
                        len(entries), recipient_id, error,
                    )
                    self._backlog[recipient_id] = deque(entries)
                    self._backlog_workers[recipient_id] = asyncio.ensure_future(self._store_backlog(recipient_id))
                    return _unstored(items)
        except ConversationBusy as error:
            raise StoreUnavailable(str(error)) from error
        if stored is None:
            return None
        if not take:
            self._start_posting(recipient_id, stored)
        elif taken is not None:
            # Held here now; the lease list stands for it if this replica dies.
            self.take_over(recipient_id, sum(1 for entry in stored if entry.to_callback), taken)
        # else another replica holds the lease: it posts these too (it looks
        # again after letting go, and the lease list replaces it if it dies).
        return [_item(entry) for entry in stored]

    async def _store_backlog(self, recipient_id: str) -> None:
        attempt = 0
        try:
            while True:
                async with self._order.hold(recipient_id, PUT_WAIT_S):
                    backlog = self._backlog[recipient_id]
                    try:
                        stored = await self.store.append(stream_of(recipient_id), list(backlog))
                    except StoreUnavailable as error:
                        stored = None
                        logger.warning("Still cannot store %d item(s) for %s: %s", len(backlog), recipient_id, error)
                    else:
                        del self._backlog[recipient_id]
                if stored is not None:
                    logger.info("Stored %d waiting item(s) for conversation %s.", len(stored), recipient_id)
                    self._start_posting(recipient_id, stored or [])
                    return
                await asyncio.sleep(BACKLOG_RETRY_S[min(attempt, len(BACKLOG_RETRY_S) - 1)])
                attempt += 1
        finally:
            self._backlog_workers.pop(recipient_id, None)

    # -- the callback sink ---------------------------------------------------

    def _start_posting(self, recipient_id: str, stored: Sequence[OutboxEntry]) -> None:
        appended = sum(1 for entry in stored if entry.to_callback)
        if not self.callback_url or not appended:
            return
        self.take_over(recipient_id, appended)

    def take_over(self, recipient_id: str, appended: int = 0, taken: Optional[Taken] = None) -> None:
        """Make sure this replica tries to post the conversation's entries
        (after an append here of ``appended`` callback entries, or when the
        lease list shows nobody does). ``taken``: the lease is this
        replica's already, with what ``take_job`` found."""
        if recipient_id in self._posters:
            # Its lease is this replica's too (a lease is its owner's, not a
            # poster's): one poster, which looks again.
            self._kicked.add(recipient_id)
            if recipient_id in self._unposted:
                # Its poster reads them after its batch; count them meanwhile.
                self._unposted[recipient_id] += appended
            return
        self._posters[recipient_id] = asyncio.ensure_future(self._post_entries(recipient_id, taken))

    async def _post_entries(self, recipient_id: str, taken: Optional[Taken] = None) -> None:
        stream, lease = stream_of(recipient_id), callback_lease(recipient_id)
        # Taken now: a poster closed by the garbage collector after its loop
        # (a test's) runs its finally without a loop to ask.
        this_poster = asyncio.current_task()
        attempt = 0
        #: While this poster holds the lease: where the callback pointer is
        #: and what is after it, as the store's last answer said (the store
        #: call that moves the pointer renews the lease and reads on).
        found: Optional[Taken] = None
        try:
            while True:
                self._kicked.discard(recipient_id)
                try:
                    if found is None:
                        # Lease, registration, pointer and what is after it in
                        # one store call: the first POST waits for one round
                        # trip, not four. The pointer is read afresh: another
                        # replica may have posted meanwhile.
                        if taken is None:
                            taken = await self.store.take_job(
                                lease, self.owner, self._lease_s, stream, CALLBACK_SINK, POST_BATCH
                            )
                        if taken is None:
                            # The holder looks again as it lets go, and sees
                            # what was appended before this attempt; if it dies,
                            # the lease list brings the job to a live replica.
                            return
                        found, taken = taken, None
                    progress, found = await self._post_pending(recipient_id, stream, lease, *found)
                    if progress == MORE:
                        continue
                    if progress == LOST:
                        return  # the replica that holds the lease now goes on
                    # Caught up. Letting go and looking for entries appended
                    # meanwhile are one store step: an append on another
                    # replica either comes before it (then it is found here)
                    # or finds the lease free and takes it.
                    found = await self.store.let_go(lease, self.owner, self._lease_s, stream, CALLBACK_SINK, POST_BATCH)
                    if found is not None:
                        continue
                except StoreUnavailable as error:
                    found = None
                    logger.warning("Callback delivery for %s waits for the store: %s", recipient_id, error)
                    await asyncio.sleep(BACKLOG_RETRY_S[min(attempt, len(BACKLOG_RETRY_S) - 1)])
                    attempt += 1
                    continue
                if recipient_id not in self._kicked:
                    return
        finally:
            if self._posters.get(recipient_id) is this_poster:
                del self._posters[recipient_id]
                self._unposted.pop(recipient_id, None)

    async def _post_pending(
        self, recipient_id: str, stream: str, lease: str, position: Optional[str], entries: List[OutboxEntry]
    ) -> Tuple[str, Optional[Taken]]:
        """Post ``entries``, the ones after the callback pointer at
        ``position``: ``MORE`` when more came after them, ``CAUGHT_UP`` when
        none did, ``LOST`` when another replica holds the lease now (this
        one's expired during a long post); with ``MORE``, the pointer and
        what is after it."""
        # Exact again after each read: what a put counted meanwhile is in it.
        self._unposted[recipient_id] = sum(1 for entry in entries if entry.to_callback)
        if not entries:
            return CAUGHT_UP, None
        after: Optional[List[OutboxEntry]] = None
        for index, entry in enumerate(entries):
            delivered = await self._post_one(recipient_id, entry, lease) if entry.to_callback else None
            if delivered is not None:
                self._unposted[recipient_id] -= 1
            # One store call: move the pointer, renew the lease and, after
            # the batch's last entry, read what came since.
            last = index == len(entries) - 1
            moved, after = await self.store.advance_and_next(
                stream, CALLBACK_SINK, entry.entry_id, lease, self.owner, self._lease_s, POST_BATCH if last else 0
            )
            if not moved:
                logger.warning("Another replica took over the callback of %s; stopping here.", recipient_id)
                self._unposted[recipient_id] = 0
                return LOST, None
            if delivered:
                self.on_delivered(entry.entry_id, CALLBACK_SINK)
            if delivered is not None and self.on_taken is not None:
                self.on_taken(recipient_id, entry, delivered)
            if after is None:
                return LOST, None
        if not after:
            return CAUGHT_UP, None
        return MORE, (entries[-1].entry_id, after)

    async def _post_one(self, recipient_id: str, entry: OutboxEntry, lease: str) -> bool:
        assert self.callback_url is not None

        async def still_ours() -> bool:
            return await self.store.renew_lease(lease, self.owner, self._lease_s)

        return await post_with_retries(
            self._client(), self.callback_url, entry.payload, entry.kind, recipient_id, may_retry=still_ours
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    # -- streams -------------------------------------------------------------

    def subscribe(self, recipient_id: str, last_event_id: Optional[str] = None) -> "SharedSubscription":
        """Start a stream; ``StreamLimitReached`` (nothing changed) beyond the
        caps, which count this replica's streams."""
        if self._streams_of.get(recipient_id, 0) >= self.max_streams_per_sender:
            raise StreamLimitReached(PER_SENDER, self.max_streams_per_sender)
        if self._open_streams >= self.max_open_streams:
            raise StreamLimitReached(IN_TOTAL, self.max_open_streams)
        self._streams_of[recipient_id] = self._streams_of.get(recipient_id, 0) + 1
        self._open_streams += 1
        return SharedSubscription(self, recipient_id, last_event_id)

    def _unsubscribe(self, recipient_id: str) -> None:
        self._open_streams -= 1
        left = self._streams_of[recipient_id] - 1
        if left:
            self._streams_of[recipient_id] = left
        else:
            del self._streams_of[recipient_id]

    async def start_point(self, recipient_id: str, last_event_id: Optional[str]) -> Optional[str]:
        """Where a new stream starts. An id counts only when it is an entry
        this conversation's stream still holds: an id of another
        conversation, a made-up one (even one later than every entry) or a
        trimmed one says nothing here, and the stream starts after what
        streams have taken already."""
        stream = stream_of(recipient_id)
        if is_entry_id(last_event_id):
            kept = await self.store.read(stream, None, limit=RETAINED_PER_USER)
            if any(entry.entry_id == last_event_id for entry in kept):
                return last_event_id
        return await self.store.sink_position(stream, STREAM_SINK)

    # -- housekeeping --------------------------------------------------------

    def prune(self, now: Optional[float] = None) -> int:
        """Nothing to prune: idle conversations hold nothing here, and the
        store expires their streams."""
        return 0

    async def drain(self, timeout: float) -> None:
        """Store waiting items and finish posts under way, up to ``timeout``,
        then let go of the callback leases so another replica goes on."""
        deadline = time.monotonic() + timeout
        posting: Set[str] = set()
        while True:
            # Again after each round: a backlog stored meanwhile starts a poster.
            # A task cancelled before its first step never ran its finally: done, yet still listed.
            workers = [
                worker for worker in (*self._backlog_workers.values(), *self._posters.values()) if not worker.done()
            ]
            if not workers:
                break
            posting.update(self._posters)
            _, pending = await asyncio.wait(workers, timeout=max(0.0, deadline - time.monotonic()))
            if pending:
                for worker in pending:
                    worker.cancel()
                logger.warning("%d conversation(s) still had items to store or post when the channel stopped.", len(pending))
                # Let the cancelled ones unwind here rather than be left to the garbage collector.
                await asyncio.wait(pending, timeout=CANCELLED_UNWIND_S)
                break
        for recipient_id in posting:
            try:
                await self.store.release_lease(callback_lease(recipient_id), self.owner)
            except StoreUnavailable:
                pass  # it expires

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


class SharedSubscription:
    """One open stream on the shared store. Like ``delivery.Subscription``:
    ``next`` waits for an item, ``close`` unregisters at once."""

    def __init__(self, outbox: SharedOutbox, recipient_id: str, last_event_id: Optional[str]) -> None:
        self._outbox = outbox
        self._recipient_id = recipient_id
        self._stream = stream_of(recipient_id)
        self._last_event_id = last_event_id
        self._after: Optional[str] = None
        self._started = False
        self._ready: Deque[OutboundItem] = deque()
        self._closed = False

    async def next(self, heartbeat: float) -> Optional[OutboundItem]:
        """The next item, or None when ``heartbeat`` seconds pass without
        one. ``StoreUnavailable`` when the store fails: the client
        reconnects with its ``Last-Event-ID`` and misses nothing."""
        if self._ready:
            return self._ready.popleft()
        store = self._outbox.store
        if not self._started:
            self._after = await self._outbox.start_point(self._recipient_id, self._last_event_id)
            self._started = True
        entries = await store.read(self._stream, self._after, block=heartbeat)
        if not entries:
            return None
        self._after = entries[-1].entry_id
        # "Taken by a stream": later streams without an id start after it.
        on_taken = self._outbox.on_taken if not self._outbox.callback_url else None
        if on_taken is None:
            await store.advance_sink(self._stream, STREAM_SINK, self._after)
        else:
            # Entry by entry, so each is reported by the one stream that took it first.
            for entry in entries:
                if await store.advance_sink(self._stream, STREAM_SINK, entry.entry_id):
                    on_taken(self._recipient_id, entry, True)
        self._ready.extend(_item(entry) for entry in entries)
        return self._ready.popleft()

    def close(self) -> None:
        """Unregister; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._outbox._unsubscribe(self._recipient_id)


def stream_of(recipient_id: str) -> str:
    return recipient_id


def _item(entry: OutboxEntry) -> OutboundItem:
    # No ``outcome``: a sink on any replica may take the entry; it reports
    # through ``on_taken`` where that happens.
    return OutboundItem(entry.entry_id, entry.kind, entry.payload, entry.to_callback)


def _unstored(items: Sequence[Outgoing]) -> List[OutboundItem]:
    """Items waiting in this process for the store: no id yet."""
    return [OutboundItem("", item.kind, item.payload, item.to_callback) for item in items]
