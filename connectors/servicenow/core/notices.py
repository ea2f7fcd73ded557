"""Telling the user something: a channel text said (rendered through the
NLG), recorded in the tracker, and handed back for the request's answer or
put in the outbox; and the handoff status events streams show."""

import logging
from typing import Any, Dict, List, Sequence, Union

from connectors.servicenow.errors import StoreUnavailable
from connectors.servicenow.outbox.base import Outgoing, status_item
from connectors.servicenow.outbox.stream import Outbox
from connectors.servicenow.rasa_glue.nlg import Line, Speech
from connectors.servicenow.rasa_glue.slots import TrackerSlots, bot_uttered

logger = logging.getLogger(__name__)

Messages = List[Dict[str, Any]]


class Notices:
    def __init__(self, speech: Speech, slots: TrackerSlots, outbox: Outbox, api: str) -> None:
        self.speech = speech
        self._slots = slots
        self._outbox = outbox
        self._api = api

    async def tell(
        self, sender_id: str, lines: Sequence[Union[str, Line]], *, in_request: bool, record: bool = True
    ) -> Messages:
        """Say texts (``UserTexts`` names, or lines with placeholders), record
        them in the tracker, and deliver them."""
        messages = await self.speech.say_lines(sender_id, lines)
        if record:
            try:
                await self._slots.write(sender_id, [bot_uttered(message) for message in messages])
            except StoreUnavailable as error:
                logger.error("Could not record a handoff notice for conversation %s: %s", sender_id, error)
        return await self.deliver(sender_id, messages, in_request=in_request)

    async def deliver(self, sender_id: str, messages: Messages, *, in_request: bool) -> Messages:
        """Hand messages back for the request's answer, or send them out of band."""
        if in_request:
            return messages
        await self._outbox.put(sender_id, [Outgoing(message) for message in messages])
        return []

    async def status(self, sender_id: str, *, active: bool, chat_id: str, agent_joined: bool = False) -> None:
        item = status_item(sender_id, active=active, chat_id=chat_id, api=self._api, agent_joined=agent_joined)
        await self._outbox.put(sender_id, [item])
