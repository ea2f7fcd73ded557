"""ServiceNow's pushes (Virtual Agent callbacks to ``/callback``): each is
placed with its chat (the store's record, or the mirror's after a restart of
a store that forgets), then deduplicated and stored in one step before
ServiceNow hears 200, and delivered through the same path as a poll
(intake.py). A push for a chat that is not live is acknowledged and dropped."""

import asyncio
import logging
from typing import Optional

from connectors.servicenow.core.chat import LiveChat, OpensInFlight
from connectors.servicenow.core.chats import Chats
from connectors.servicenow.core.intake import CALLBACK_DEDUPE_TTL_S, Dispatcher
from connectors.servicenow.core.polling import Polling
from connectors.servicenow.ops.observe import Observer
from connectors.servicenow.servicenow.base import Callback
from connectors.servicenow.store.keys import push_dedupe

logger = logging.getLogger(__name__)


class CallbackIntake:
    """ServiceNow's pushes (Virtual Agent callbacks): each placed with its
    chat, stored once and delivered in arrival order."""

    def __init__(
        self, chats: Chats, in_flight: OpensInFlight, dispatcher: Dispatcher, observe: Observer, polling: Polling
    ) -> None:
        self._chats = chats
        self._in_flight = in_flight
        self._dispatcher = dispatcher
        self._observe = observe
        self._polling = polling

    def refused(self, chat_id: str) -> None:
        """A push of the chat was answered 503: ServiceNow sends it once, so
        its record is read again soon (where this replica watches the chat;
        elsewhere the watching replica's next tick finds it)."""
        if self._polling.soon(chat_id):
            logger.info("Reading ServiceNow's record of chat %s again after a refused callback.", chat_id)

    async def find_chat(self, callback: Callback) -> None:
        """Make sure the chat a callback is about is known here, so that
        ``receive`` finds it. Raises ``StoreUnavailable`` when the store
        cannot tell: the callback must then be refused (ServiceNow retries),
        not dropped."""
        if callback.chat_id not in self._in_flight.by_chat_id:
            await self._chats.place_callback(callback.chat_id, callback.sender_id)

    async def receive(self, callback: Callback) -> None:
        """Deliver what a ServiceNow callback says, once, in arrival order:
        stored (and deduplicated) before this returns."""
        chat = await self._chat_for(callback)
        if chat is None:
            logger.info("Ignoring a ServiceNow callback for chat %s, which is not live here.", callback.chat_id)
            return
        key = push_dedupe(callback.chat_id, callback.fingerprint)
        if not await self._dispatcher.dispatch(chat, callback.events, dedupe_key=key, dedupe_ttl=CALLBACK_DEDUPE_TTL_S):
            logger.info("Ignoring a repeated ServiceNow callback for chat %s.", callback.chat_id)
            self._observe.duplicate_dropped("callback")

    async def _chat_for(self, callback: Callback) -> Optional[LiveChat]:
        chat = self._chats.registry.by_chat_id(callback.chat_id)
        if chat is not None:
            return chat
        opening = self._in_flight.by_chat_id.get(callback.chat_id)
        if opening is not None:
            return await asyncio.shield(opening)
        return None
