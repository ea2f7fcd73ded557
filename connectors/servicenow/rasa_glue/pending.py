"""Tracker writes that can wait: a chat's cursor and the record of what was
delivered, coalesced and saved a moment later, off the delivery path.

A tracker load and save per agent message would sit on the event loop, in the
way of the next delivery, and the tracker store (SQL in production) would see
one write per message instead of one per chat and interval. The end of a
handoff takes what is still pending into its own write (``take``), so nothing
of the chat lands after the end. A crash loses at most ``PERSIST_DELAY_S`` of
the cursor: Connect then shows the messages of those seconds again.
"""

import asyncio
import logging
from typing import Dict, List, Sequence

from connectors.servicenow.errors import StoreUnavailable
from connectors.servicenow.rasa_glue.slots import TrackerEvent, TrackerSlots, coalesced
from connectors.servicenow.tasks import TaskSet

logger = logging.getLogger(__name__)

PERSIST_DELAY_S = 2.0


class PendingWrites:
    def __init__(self, slots: TrackerSlots) -> None:
        self._slots = slots
        self._unsaved: Dict[str, List[TrackerEvent]] = {}
        self._savers: Dict[str, "asyncio.Task[None]"] = {}
        self._tasks = TaskSet()
        self._stopping = False

    def save_later(self, sender_id: str, events: Sequence[TrackerEvent]) -> None:
        """Queue tracker events for the next coalesced save."""
        self._unsaved.setdefault(sender_id, []).extend(events)
        if sender_id not in self._savers:
            self._savers[sender_id] = self._tasks.spawn(self._save_later(sender_id))

    async def _save_later(self, sender_id: str) -> None:
        await asyncio.sleep(PERSIST_DELAY_S)
        await self._save(sender_id)

    async def flush(self, sender_id: str) -> None:
        """Save the conversation's pending events now."""
        saver = self._savers.get(sender_id)
        if saver is not None and saver is not asyncio.current_task():
            saver.cancel()
        await self._save(sender_id)

    def take(self, sender_id: str) -> List[TrackerEvent]:
        """Hand over the conversation's pending events (the end of the handoff
        saves them in its own write, so they cannot land after it)."""
        saver = self._savers.pop(sender_id, None)
        if saver is not None and saver is not asyncio.current_task():
            saver.cancel()
        return coalesced(self._unsaved.pop(sender_id, []))

    def give_back(self, sender_id: str, events: List[TrackerEvent]) -> None:
        """Take back what ``take`` handed over, when that write failed."""
        self._keep(sender_id, events)

    async def _save(self, sender_id: str) -> None:
        self._savers.pop(sender_id, None)
        events = coalesced(self._unsaved.pop(sender_id, []))
        if not events:
            return
        try:
            await self._slots.write(sender_id, events)
        except StoreUnavailable as error:
            # Kept, ahead of anything newer, for the next save; the end of the
            # handoff takes them if it comes first.
            logger.error(
                "Could not save the handoff cursor of conversation %s; keeping %d event(s) for the next save: %s",
                sender_id, len(events), error,
            )
            self._keep(sender_id, events)

    def _keep(self, sender_id: str, events: List[TrackerEvent]) -> None:
        if not events:
            return
        self._unsaved[sender_id] = events + self._unsaved.get(sender_id, [])
        if sender_id not in self._savers and not self._stopping:
            self._savers[sender_id] = self._tasks.spawn(self._save_later(sender_id))

    async def stop(self) -> None:
        """Save everything now (a graceful shutdown)."""
        self._stopping = True
        for saver in list(self._savers.values()):
            saver.cancel()
        for sender_id in list(self._unsaved):
            await self._save(sender_id)
