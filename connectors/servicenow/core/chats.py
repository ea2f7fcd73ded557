"""Which conversations are in handoff, asked the same way on every
deployment: the store's handoff records decide (``Store.find_handoff``
reads the tracker slots where the store forgot at a restart), and this
process holds a ``LiveChat`` for each record it has seen (locks, poller).

Whether a conversation is in handoff is never guessed: ``active_chat``
raises ``StoreUnavailable`` (the door answers 503) and caches nothing, and
an earlier end that is not saved yet is saved first. A chat another replica
ended is dropped here without an end of its own.
"""

import asyncio
import logging
from typing import Optional

from connectors.servicenow.core.chat import ChatRegistry, LiveChat, OpensInFlight
from connectors.servicenow.core.ending import HeldEnds, UnsavedEnds, drop_ended_elsewhere
from connectors.servicenow.core.polling import Polling
from connectors.servicenow.core.records import Records
from connectors.servicenow.core.timers import Timers
from connectors.servicenow.errors import ConversationBusy
from connectors.servicenow.rasa_glue.pending import PendingWrites
from connectors.servicenow.servicenow.va_records import RecordCursor
from connectors.servicenow.store import HandoffRecord, Store
from connectors.servicenow.store.keys import chat_of_poll_lease
from connectors.servicenow.tasks import within

logger = logging.getLogger(__name__)

#: How long a message waits for its conversation's handoff to finish opening
#: before the door answers 503 (ServiceNow's own retries fit well inside).
OPEN_WAIT_S = 30.0


class Chats:
    def __init__(
        self,
        store: Store,
        registry: ChatRegistry,
        in_flight: OpensInFlight,
        records: Records,
        unsaved: UnsavedEnds,
        held: HeldEnds,
        pending: PendingWrites,
        polling: Polling,
        timers: Timers,
    ) -> None:
        self._store = store
        self.registry = registry
        self._in_flight = in_flight
        self._records = records
        self._unsaved = unsaved
        self._held = held
        self._pending = pending
        self._polling = polling
        self._timers = timers

    async def active_chat(self, sender_id: str, *, wait_s: float = OPEN_WAIT_S) -> Optional[LiveChat]:
        """The user's live chat, or None when messages should go to the bot.

        Waits up to ``wait_s`` for a chat that is being opened, or for the
        end of one to be told (then ``ConversationBusy``). Raises ``StoreUnavailable`` when the store
        cannot tell, or when the end of an earlier handoff is not saved yet:
        the bot must not take a turn on a tracker that says "in handoff"."""
        opening = self._in_flight.by_sender.get(sender_id)
        if opening is not None:
            try:
                async with within(wait_s):
                    return await asyncio.shield(opening)
            except asyncio.TimeoutError:
                raise ConversationBusy(f"the handoff of conversation {sender_id} is still opening") from None
        # Tested here, not in a call: every message (bot turns included) comes this way.
        if self._records.removing(sender_id) is not None or sender_id in self._held or sender_id in self._unsaved:
            await self.settle_end(sender_id, wait_s)
        # Another replica may have started or ended the chat since this one
        # last looked: only the store can say, so ask it every time.
        return self.adopt(sender_id, await self._store.find_handoff(sender_id))

    async def settle_end(self, sender_id: str, wait_s: float) -> None:
        """Land what the end of the sender's last handoff left to do here
        (its record's removal, its notice held for that removal, its tracker
        write), before anything reads the record or the tracker. Raises
        ``StoreUnavailable`` while the store still fails, ``ConversationBusy``
        when a held end is not told within ``wait_s``."""
        if self._records.removing(sender_id) is not None:
            await self._records.finish_removal(sender_id)
        if sender_id in self._held:
            # An end that waited for that removal is told (or dropped) first.
            await self._held.wait(sender_id, wait_s)
        if sender_id in self._unsaved:
            await self._unsaved.save(sender_id)

    async def refresh(self, sender_id: str) -> Optional[LiveChat]:
        """The sender's chat as the store has it, without reading the tracker
        store or waiting for an opening chat (typing)."""
        return self.adopt(sender_id, await self._store.get_handoff(sender_id))

    def adopt(self, sender_id: str, record: Optional[HandoffRecord], *, fresh: bool = False) -> Optional[LiveChat]:
        """Bring the chats held here in line with the store's record of the
        sender: a chat ended elsewhere is dropped here without any end of its
        own, one started elsewhere (or read back from the mirror) is taken in.
        ``fresh``: a chat this replica has just opened (nothing to catch up on)."""
        if record is not None:
            removal = self._records.removing(sender_id)
            if removal is not None and removal.chat_id == record.chat_id:
                # This replica ended that chat and is still removing its record.
                record = None
        local = self.registry.get(sender_id)
        if local is not None:
            if record is not None and local.chat_id == record.chat_id:
                return local
            drop_ended_elsewhere(self.registry, self._pending, local)
        if record is None:
            return None
        chat = self.registry.activate(LiveChat.of(record))
        self._polling.watch(chat, catch_up=not fresh)
        return chat

    async def by_chat_id(self, chat_id: str) -> Optional[LiveChat]:
        record = await self._store.handoff_by_chat(chat_id)
        return self.adopt(record.sender_id, record) if record is not None else None

    async def place_callback(self, chat_id: str, sender_id: Optional[str]) -> None:
        """Make the chat a push is about known here (or drop it here if it
        ended). The sender the push names is asked too: after a restart of a
        store that forgets, its record comes back from the mirror."""
        record = await self._store.handoff_by_chat(chat_id)
        if record is None and sender_id:
            found = await self._store.find_handoff(sender_id)
            if found is not None and found.chat_id == chat_id:
                record = found
        if record is not None:
            self.adopt(record.sender_id, record)
            return
        local = self.registry.by_chat_id(chat_id)
        if local is not None:
            drop_ended_elsewhere(self.registry, self._pending, local)

    async def forget_ended_elsewhere(self) -> int:
        """Drop the chats held here that ended on another replica and were
        not asked about here since (housekeeping), so the registry does not
        grow with every chat a replica ever touched."""
        dropped = 0
        for chat in list(self.registry):
            if chat.sender_id in self._in_flight.by_sender:
                continue
            record = await self._store.get_handoff(chat.sender_id)
            if record is None or record.chat_id != chat.chat_id:
                drop_ended_elsewhere(self.registry, self._pending, chat)
                dropped += 1
        return dropped

    async def resume(self) -> int:
        """At start-up: take up the handoffs a store that forgets lost at the
        last exit, read back from the tracker slots; their pollers and timers
        start again. Nothing where the store remembers: its records are read
        per message and callback, and Connect chats come back through
        ``take_over_free_chats`` once their polling lease is free."""
        imported = await self._store.import_handoffs()
        for record in imported:
            chat = self.adopt(record.sender_id, record)
            if chat is not None:
                await self._timers.resumed(chat)
        if imported:
            logger.info("Resumed %d live chat(s) from the tracker store.", len(imported))
        return len(imported)

    async def take_over_free_chats(self, limit: int = 100) -> int:
        """Start polling the Connect chats (or reading back the Virtual Agent
        chats) nobody watches: their replica stopped or died, so their lease
        expired or was released. Returns how many this
        replica now watches; the lease decides who polls."""
        taken = 0
        for name in await self._store.free_leases(limit):
            chat_id = chat_of_poll_lease(name)
            if chat_id is None:
                continue
            record = await self._store.handoff_by_chat(chat_id)
            if record is None:
                # Ended while its name stayed behind (a failed unregister).
                await self._store.unregister_lease(name)
                continue
            local = self.registry.get(record.sender_id)
            was_watched = local is not None and local.chat_id == chat_id and self._polling.is_watching(local)
            chat = self.adopt(record.sender_id, record)
            if chat is not None and not was_watched:
                # Polling goes on from the cursor the last poller saved, not
                # from whatever this replica saw when it last looked.
                chat.last_updated, chat.seen_ids = record.last_updated, record.seen_ids
                chat.records = RecordCursor(record.conversation, record.sequence)
                self._polling.watch(chat)  # a no-op when adopting started it
                taken += 1
        if taken:
            logger.info("Took over polling of %d ServiceNow chat(s) that no replica was polling.", taken)
        return taken
