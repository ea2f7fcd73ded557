"""The callback sink: each entry of a conversation's stream is POSTed to
``callback_url`` once per deployment, in order.

One replica posts a conversation's entries at a time, under a lease, and
moves the ``callback`` pointer past each one; the replica that appends starts
the posting unless another holds the lease, and a holder that dies is
replaced through the lease list (``take_over``). A crash between a post and
the pointer move posts that entry again: at least once, never lost.
"""

import asyncio
import logging
from typing import Awaitable, Callable, Dict, List, Optional, Set, Tuple

import aiohttp

from connectors.servicenow.outbox.base import CALLBACK_RETRY, RETAINED_PER_USER, OnDelivered, OnTaken, post_with_retries
from connectors.servicenow.retry import STORE_WAIT
from connectors.servicenow.sessions import LazySession
from connectors.servicenow.signing import CallbackSigner
from connectors.servicenow.store import OutboxEntry, Store, StoreUnavailable, Taken
from connectors.servicenow.store.keys import CALLBACK_SINK, callback_lease, stream_of

logger = logging.getLogger(__name__)

# How a round of posting ended.
MORE, CAUGHT_UP, LET_GO, LOST = "more", "caught up", "let go", "lost"
#: Entries a poster reads at a time: all a conversation's stream keeps, so
#: that the backlog it reports is the whole of what it owes.
POST_BATCH = RETAINED_PER_USER


class CallbackPoster:
    """This replica's posting of conversations' outboxes to ``callback_url``."""

    def __init__(
        self,
        store: Store,
        url: str,
        *,
        owner: str,
        request_timeout: float,
        on_taken: Optional[OnTaken],
        on_delivered: Optional[OnDelivered],
        secret: Optional[str] = None,
    ) -> None:
        """``secret``: ``callback_secret``, which signs every POST (signing.py)."""
        self._store = store
        self.url = url
        self._signer = CallbackSigner(secret)
        self.owner = owner
        self._on_taken = on_taken
        self._on_delivered = on_delivered
        # Renewed before every attempt of a post, so it only has to outlive
        # one attempt and one pause: a dead poster's conversations are free
        # again that soon. Renewed while an attempt is in flight too, so a
        # slow answer on a busy replica does not let another replica post
        # the same entry meanwhile (only a replica whose event loop stalls
        # for longer than the lease can: at least once, docs/deployment.md).
        self.lease_s = request_timeout + CALLBACK_RETRY.max_backoff + 1.0
        self.renew_every = self.lease_s / 3
        timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._session = LazySession(lambda: aiohttp.ClientSession(timeout=timeout))
        self._posters: Dict[str, "asyncio.Task[None]"] = {}
        # Conversations appended to while their poster ran: it looks again.
        self._kicked: Set[str] = set()
        #: Callback entries each of this replica's posters holds the lease
        #: for and has not posted yet (``backlog``).
        self._unposted: Dict[str, int] = {}

    def is_posting(self, recipient_id: str) -> bool:
        return recipient_id in self._posters

    @property
    def conversations(self) -> Set[str]:
        return set(self._posters)

    @property
    def backlog(self) -> int:
        """Entries of the conversations whose lease this replica holds, not yet posted."""
        return sum(self._unposted.values())

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
                        # one store call. The pointer is read afresh: another
                        # replica may have posted meanwhile.
                        if taken is None:
                            taken = await self._store.take_job(lease, self.owner, self.lease_s, stream, CALLBACK_SINK, POST_BATCH)
                        if taken is None:
                            # The holder looks again as it lets go; if it dies,
                            # the lease list brings the job to a live replica.
                            return
                        found, taken = taken, None
                    progress, found = await self._post_pending(recipient_id, stream, lease, *found)
                    if progress == MORE:
                        continue
                    if progress == LOST:
                        return  # the replica that holds the lease now goes on
                    if progress == CAUGHT_UP:
                        # Letting go and looking for entries appended
                        # meanwhile are one store step: an append on another
                        # replica either comes before it (then it is found
                        # here) or finds the lease free and takes it. (After
                        # a post, the last pointer move took that step: LET_GO.)
                        found = await self._store.let_go(lease, self.owner, self.lease_s, stream, CALLBACK_SINK, POST_BATCH)
                        if found is not None:
                            continue
                except StoreUnavailable as error:
                    found = None
                    logger.warning("Callback delivery for %s waits for the store: %s", recipient_id, error)
                    await STORE_WAIT.sleep(attempt)
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
        ``position``: ``MORE`` when more came after them, ``LET_GO`` when
        none did and the last pointer move gave the lease back with it,
        ``CAUGHT_UP`` when there was nothing to post (the lease is still
        held), ``LOST`` when another replica holds the lease now (this one's
        expired during a long post); with ``MORE``, the pointer and what is
        after it."""
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
            # the batch's last entry, read what came since, letting go of
            # the lease when nothing did.
            last = index == len(entries) - 1
            moved, after = await self._store.advance_and_next(
                stream, CALLBACK_SINK, entry.entry_id, lease, self.owner, self.lease_s, POST_BATCH if last else 0,
                let_go=last,
            )
            if not moved:
                logger.warning("Another replica took over the callback of %s; stopping here.", recipient_id)
                self._unposted[recipient_id] = 0
                return LOST, None
            if delivered and self._on_delivered is not None:
                self._on_delivered(entry.entry_id, CALLBACK_SINK)
            if delivered is not None and self._on_taken is not None:
                self._on_taken(recipient_id, entry, delivered)
            if after is None:
                return LOST, None
        if not after:
            return LET_GO, None
        return MORE, (entries[-1].entry_id, after)

    async def _post_one(self, recipient_id: str, entry: OutboxEntry, lease: str) -> bool:
        async def still_ours() -> bool:
            return await self._store.renew_lease(lease, self.owner, self.lease_s)

        keeping = _LeaseKeeper(still_ours, lease, self.renew_every)
        try:
            return await post_with_retries(
                self._session.get(), self.url, entry, recipient_id, signer=self._signer, may_retry=still_ours
            )
        finally:
            keeping.stop()

    def workers(self) -> List["asyncio.Task[None]"]:
        return list(self._posters.values())

    async def release(self, recipients: Set[str]) -> None:
        """Let go of these conversations' leases, so another replica goes on at once."""
        for recipient_id in recipients:
            try:
                await self._store.release_lease(callback_lease(recipient_id), self.owner)
            except StoreUnavailable:
                pass  # it expires

    async def aclose(self) -> None:
        await self._session.aclose()


class _LeaseKeeper:
    """Renews a poster's lease every ``every`` seconds while one POST is in
    flight, until ``stop``. A timer, not a task: nearly every POST is
    answered before the first renewal is due, and a timer costs it no task,
    no turn of the event loop to start one and none to cancel it; a renewal
    task is made only when the timer fires."""

    def __init__(self, renew: Callable[[], Awaitable[bool]], lease: str, every: float) -> None:
        self._renew = renew
        self._lease = lease
        self._every = every
        self._loop = asyncio.get_running_loop()
        self._timer: Optional[asyncio.TimerHandle] = self._loop.call_later(every, self._due)
        self._renewing: "Optional[asyncio.Task[None]]" = None
        self._stopped = False

    def _due(self) -> None:
        self._timer = None
        self._renewing = self._loop.create_task(self._renew_then_wait())

    async def _renew_then_wait(self) -> None:
        try:
            if not await self._renew():
                return  # another replica holds it now: the pointer move will tell the poster
        except StoreUnavailable as error:
            logger.debug("Could not renew the callback lease %s: %s", self._lease, error)
        if not self._stopped:
            self._timer = self._loop.call_later(self._every, self._due)

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self._renewing is not None:
            self._renewing.cancel()
