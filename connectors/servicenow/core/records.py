"""Writing handoff records, the routing truth: filed when a chat opens,
updated as its cursor moves, removed when it ends.

A record whose removal fails is removed again in the background until it
lands; until then the conversation's next message waits (``finish_removal``)
rather than be routed by a record of a chat that is over. The removal that
lands tells whether this replica ended the chat or another one had
(``outcome``): an end from ServiceNow's side can reach several replicas, and
only one may tell the user.
"""

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Dict, Optional

from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.retry import STORE_RECOVERY
from connectors.servicenow.store import Store, StoreUnavailable
from connectors.servicenow.store.keys import poll_lease
from connectors.servicenow.tasks import within

logger = logging.getLogger(__name__)


@dataclass
class Removal:
    """A removal that failed and is being retried. Its attempts take turns
    (``lock``), so that the one that lands is the one that answers: a second
    attempt would find the record gone and take the chat for ended elsewhere."""

    chat_id: str
    retry: "asyncio.Task[None]"
    #: True once this replica's removal ended the chat, False when the record
    #: was gone already (another replica ended it), None when the store was
    #: still away at shutdown.
    landed: "asyncio.Future[Optional[bool]]" = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def settle(self, ended: Optional[bool]) -> None:
        if not self.landed.done():
            self.landed.set_result(ended)


def lease_time(delay: float) -> float:
    """A polling lease outlives one missed renewal, no more: a dead poller's
    chats are free again two intervals after its last poll."""
    return 2 * delay + 0.5


class Records:
    def __init__(self, store: Store, api: str, *, pulls: bool, owner: str, poll_interval: float) -> None:
        """``pulls``: chats are polled (Connect), so each is a job under a
        lease that ``owner`` (this replica) holds from the start."""
        self._store = store
        #: Where the records are (shared with the start's admission).
        self.store = store
        self._api = api
        self._pulls = pulls
        self._owner = owner
        self._poll_interval = poll_interval
        # Removals that failed, by sender.
        self._removals: Dict[str, Removal] = {}
        self.pauses = STORE_RECOVERY

    async def file(self, chat: LiveChat, started_at: float) -> bool:
        """File the record of a chat being started. False when another
        chat of the sender was filed first (another replica's start);
        ``StoreUnavailable`` when the store cannot say."""
        if not await self._store.create_handoff(chat.record(self._api, started_at)):
            return False
        if self._pulls:
            name = poll_lease(chat.chat_id)
            try:
                await self._store.register_lease(name)
                # Held from the start, so no other replica's takeover scan sees it free.
                await self._store.acquire_lease(name, self._owner, lease_time(self._poll_interval))
            except StoreUnavailable as error:
                # The starting replica polls it anyway; only a takeover needs the name.
                logger.warning("Could not register the polling of chat %s for takeover: %s", chat.chat_id, error)
        return True

    async def save(self, chat: LiveChat, started_at: Optional[float] = None) -> None:
        """Write the chat's cursor and state to its record; a failure is
        logged: the tracker mirror and this process still have it."""
        try:
            await self._store.update_handoff(chat.record(self._api, started_at))
        except StoreUnavailable as error:
            logger.warning("Could not update the handoff record of chat %s: %s", chat.chat_id, error)

    async def remove(self, sender_id: str, chat_id: str) -> bool:
        """Remove the record. True when this call ended it; False when it
        was gone already or the store is down (then the removal is retried in
        the background until it lands: ``removing``)."""
        try:
            ended = await self._store.end_handoff(sender_id, chat_id)
        except StoreUnavailable as error:
            logger.error(
                "Could not remove the handoff record of conversation %s (chat %s); retrying: %s", sender_id, chat_id, error
            )
            if sender_id not in self._removals:
                retry = asyncio.ensure_future(self._remove_later(sender_id, chat_id))
                self._removals[sender_id] = Removal(chat_id, retry)
            return False
        if ended is not None:
            await self.unregister_poll(chat_id)
        return ended is not None

    def removing(self, sender_id: str) -> Optional[Removal]:
        """The removal this replica is still retrying for the sender, if any:
        a record of its chat read meanwhile is of a chat that is over."""
        return self._removals.get(sender_id)

    async def outcome(self, sender_id: str, removal: Removal, wait_s: float) -> Optional[bool]:
        """Whether this replica's removal ended the chat (True) or found it
        ended by another replica (False), once it lands; waits up to
        ``wait_s``, then tries once more. None when the store is still away."""
        try:
            async with within(wait_s):
                return await asyncio.shield(removal.landed)
        except asyncio.TimeoutError:
            pass
        try:
            return await self._attempt(sender_id, removal)
        except StoreUnavailable:
            return None

    async def finish_removal(self, sender_id: str) -> Optional[bool]:
        """Remove a record whose removal failed before, ahead of anything that
        reads it (it would bring the ended chat back); ``StoreUnavailable``
        while the store still fails. True when this replica's removal ended
        the chat, False when it was gone, None when no removal was pending."""
        removal = self._removals.get(sender_id)
        if removal is None:
            return None
        ended = await self._attempt(sender_id, removal)
        # Not in a call: the retry makes its calls holding the lock this one took.
        removal.retry.cancel()
        return ended

    async def _attempt(self, sender_id: str, removal: Removal) -> bool:
        async with removal.lock:
            # Landed already (None: the shutdown's try failed, so try again).
            landed = removal.landed.result() if removal.landed.done() else None
            if landed is not None:
                return landed
            ended = await self._store.end_handoff(sender_id, removal.chat_id) is not None
            if self._removals.get(sender_id) is removal:
                del self._removals[sender_id]
            removal.settle(ended)
            if ended:
                await self.unregister_poll(removal.chat_id)
        return ended

    async def _remove_later(self, sender_id: str, chat_id: str) -> None:
        attempt = 0
        while True:
            await self.pauses.sleep(attempt)
            attempt += 1
            removal = self._removals.get(sender_id)
            if removal is None or removal.chat_id != chat_id:
                return
            try:
                ended = await self._attempt(sender_id, removal)
            except StoreUnavailable as error:
                logger.warning("Still cannot remove the handoff record of conversation %s: %s", sender_id, error)
                continue
            if ended:
                logger.info("Removed the handoff record of conversation %s after all.", sender_id)
            else:
                logger.info("The handoff record of conversation %s was removed by another replica first.", sender_id)
            return

    async def unregister_poll(self, chat_id: str) -> None:
        if not self._pulls:
            return
        try:
            await self._store.unregister_lease(poll_lease(chat_id))
        except StoreUnavailable as error:
            # A stale name is dropped by the takeover scan, which finds no record.
            logger.warning("Could not unregister the polling of chat %s: %s", chat_id, error)

    async def stop(self) -> None:
        """Try the removals still pending once more (a graceful shutdown)."""
        for sender_id, removal in list(self._removals.items()):
            try:
                await self._attempt(sender_id, removal)
            except StoreUnavailable as error:
                logger.error("Stopping with the handoff record of conversation %s not removed: %s", sender_id, error)
                removal.settle(None)
            removal.retry.cancel()
