"""The handoff itself: opening a chat, forwarding the user's messages, and
every way a chat ends, each leaving the slots and the user in a known state.

Ways a handoff ends, and what the user hears:

* the user types an end command: the chat is left, ``user_ended``;
* the agent closes it: ``agent_closed``;
* ServiceNow hands control back (no agent available, time-out): ``chat_ended``,
  after ServiceNow's own explanation;
* ServiceNow keeps failing: the chat is left (Virtual Agent: faulted) and the
  user gets ``connection_lost`` with the chat id and the time of the last
  message, or ``session_lost`` when that fails too.

Messages produced while answering a webhook request are returned to the
caller for the HTTP response; everything else goes out through the outbox.
"""

import asyncio
import dataclasses
import datetime
import logging
from enum import Enum
from typing import Any, Callable, Dict, List, Optional, Set

from rasa.core.agent import Agent

from connectors.servicenow.backends.base import Backend, Callback, ChatClosed, CloseReason, HandoffRequest, Turn
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.delivery import Outbox
from connectors.servicenow.errors import ServiceNowError
from connectors.servicenow.limits import RateLimiter
from connectors.servicenow.relay import Relay
from connectors.servicenow.state import (
    HandoffRegistry,
    LiveChat,
    TrackerSlots,
    bot_uttered,
    cleared_slot_events,
)
from connectors.servicenow.user_typing import TypingForwarder

logger = logging.getLogger(__name__)

Messages = List[Dict[str, Any]]


class EndReason(str, Enum):
    USER_ENDED = "user_ended"
    AGENT_CLOSED = "agent_closed"
    #: ServiceNow handed control back (no agent available, time-out).
    RETURNED = "returned"
    FAILED = "failed"


#: The ``cause`` sent with ``FAULT_CONVERSATION`` when this side gives up.
FAULT_CAUSE = "EXTERNAL_FAILURE"


class HandoffManager:
    def __init__(
        self,
        settings: ServiceNowSettings,
        backend: Backend,
        outbox: Outbox,
        agent: Callable[[], Optional[Agent]],
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.outbox = outbox
        self.texts = settings.texts
        self.registry = HandoffRegistry()
        self.slots = TrackerSlots(agent)
        self.relay = Relay(
            settings, backend, outbox, self.slots, on_closed=self._closed_by_servicenow, on_failed=self._failed_in_background
        )
        self._starting: Set[str] = set()
        # Chats whose id was chosen before ServiceNow confirmed them: pushes
        # that arrive that early wait here for the chat (or None if it failed).
        self._opening: Dict[str, "asyncio.Future[Optional[LiveChat]]"] = {}
        self.typing = TypingForwarder(backend.send_typing)
        self.start_limiter = RateLimiter(settings.handoff_starts_per_minute, 60.0)

    # -- the flag ----------------------------------------------------------

    async def active_chat(self, sender_id: str) -> Optional[LiveChat]:
        """The user's live chat, or None when messages should go to the bot."""
        chat = self.registry.get(sender_id)
        if chat is not None:
            return chat
        if self.registry.known_inactive(sender_id):
            return None
        loaded = await self.slots.load(sender_id)
        if loaded is None:
            self.registry.mark_inactive(sender_id)
            return None
        # Active in the tracker but unknown here: a chat from before a restart
        # that the resume scan has not reached yet.
        chat = self.registry.activate(loaded)
        self.relay.watch(chat)
        return chat

    # -- start -------------------------------------------------------------

    async def start(self, request: HandoffRequest, *, in_request: bool) -> Messages:
        sender = request.sender_id
        if sender in self._starting or self.registry.get(sender) is not None:
            logger.info("Conversation %s asked for a live agent again while already connected.", sender)
            return []
        refusal = self._refusal(sender)
        if refusal is not None:
            return await self._tell(sender, [refusal], in_request=in_request)
        self._starting.add(sender)
        try:
            return await self._start(request, in_request)
        finally:
            self._starting.discard(sender)

    def _refusal(self, sender: str) -> Optional[str]:
        """What to tell the user when a limit says no to a new handoff; None
        when it may start. The busy check comes first so that a refusal for
        lack of room does not use up the conversation's own allowance."""
        limit = self.settings.max_live_chats
        if limit and len(self.registry) + len(self._starting) >= limit:
            logger.warning("Refused a handoff for conversation %s: %d live chats is the limit (max_live_chats).", sender, limit)
            return self.texts.handoff_busy
        if not self.start_limiter.allow(sender):
            # INFO: one conversation's own retries must not flood the operator's warnings.
            logger.info(
                "Refused a handoff for conversation %s: more than %d starts in a minute (handoff_starts_per_minute).",
                sender, self.settings.handoff_starts_per_minute,
            )
            return self.texts.handoff_rate_limited
        return None

    async def _start(self, request: HandoffRequest, in_request: bool) -> Messages:
        sender = request.sender_id
        if self.backend.wants_history:
            request = dataclasses.replace(request, history=await self._history(request))
        reserved = self.backend.reserve_chat_id()
        if reserved:
            self._opening[reserved] = asyncio.get_running_loop().create_future()
        chat: Optional[LiveChat] = None
        try:
            try:
                opened = await self.backend.open_chat(request, reserved)
            except ServiceNowError as error:
                logger.warning("Could not open a ServiceNow chat for conversation %s: %s", sender, error)
                return await self._tell(sender, [self.texts.start_failed], in_request=in_request)
            opened_chat = LiveChat(sender_id=sender, chat_id=opened.chat_id, user=opened.user, last_updated=opened.opened_at)
            messages = self._bot_messages(sender, [self.texts.connecting])
            try:
                await self.slots.write(sender, opened_chat.slot_events() + [bot_uttered(m) for m in messages])
            except Exception:
                logger.exception("Could not save the handoff of conversation %s; leaving the new chat.", sender)
                await self._leave_quietly(opened_chat)
                return await self._tell(sender, [self.texts.start_failed], in_request=in_request, record=False)
            chat = self.registry.activate(opened_chat)
            self.relay.watch(chat)
            self.outbox.publish_status(sender, active=True, chat_id=chat.chat_id, api=self.backend.api)
            logger.info("Handoff started: conversation %s is in ServiceNow chat %s.", sender, chat.chat_id)
            return self._deliver(sender, messages, in_request=in_request)
        finally:
            if reserved:
                self._opening.pop(reserved).set_result(chat)

    async def _history(self, request: HandoffRequest) -> List[Turn]:
        limit = self.settings.history_turns
        try:
            turns = await self.slots.history(request.sender_id, limit + 1)
        except Exception:
            logger.exception("Could not read the conversation history of %s.", request.sender_id)
            return []
        # The request itself is the chat's first message; it need not repeat in the history.
        if turns and not turns[-1][1] and turns[-1][0] == request.text:
            turns = turns[:-1]
        return [Turn(text, from_bot, timestamp) for text, from_bot, timestamp in turns[-limit:]]

    # -- while connected ---------------------------------------------------

    async def forward(self, chat: LiveChat, text: str) -> Messages:
        """Send one user message to the agent. Returns what to answer the request with."""
        async with chat.send_lock:
            if chat.ended:
                # The chat ended while this message waited its turn.
                return self._bot_messages(chat.sender_id, [self.texts.message_not_delivered])
            try:
                await self.backend.send(chat, text)
            except ServiceNowError as error:
                logger.warning("Could not deliver a message to ServiceNow chat %s: %s", chat.chat_id, error)
                return await self._end(chat, EndReason.FAILED, in_request=True, undelivered=True)
        self.relay.note_activity(chat)
        return []

    async def end_by_user(self, chat: LiveChat) -> Messages:
        return await self._end(chat, EndReason.USER_ENDED, in_request=True)

    def user_typing(self, sender_id: str, typing: bool) -> bool:
        """Pass the user's typing state to the agent, debounced; False when
        there is no live chat here or the API cannot show it. Never ends the
        chat, and never loads a tracker: typing for a conversation that is not
        in handoff costs a dictionary lookup and leaves nothing behind."""
        chat = self.registry.get(sender_id)
        if chat is None or not self.backend.shows_typing:
            return False
        self.typing.note(chat, typing)
        return True

    # -- pushes from ServiceNow ----------------------------------------------

    async def receive_callback(self, callback: Callback) -> None:
        """Deliver what a ServiceNow callback says, once, in arrival order."""
        chat = await self._chat_for(callback)
        if chat is None:
            logger.info("Ignoring a ServiceNow callback for chat %s, which is not live here.", callback.chat_id)
            return
        if chat.is_repeat(callback.fingerprint):
            logger.info("Ignoring a repeated ServiceNow callback for chat %s.", callback.chat_id)
            return
        await self.relay.dispatch(chat, callback.events)

    async def _chat_for(self, callback: Callback) -> Optional[LiveChat]:
        chat = self.registry.by_chat_id(callback.chat_id)
        if chat is not None:
            return chat
        opening = self._opening.get(callback.chat_id)
        if opening is not None:
            return await asyncio.shield(opening)
        if callback.sender_id:
            # After a restart, before the resume scan reached this conversation.
            chat = await self.active_chat(callback.sender_id)
            if chat is not None and chat.chat_id == callback.chat_id:
                return chat
        return None

    # -- ends that come from ServiceNow's side -----------------------------

    async def _closed_by_servicenow(self, chat: LiveChat, closed: ChatClosed) -> None:
        logger.info("ServiceNow chat %s ended (%s).", chat.chat_id, closed.reason.value)
        if closed.reason is CloseReason.NOT_FOUND:
            await self._end(chat, EndReason.FAILED, in_request=False, leave=False)
        elif closed.reason is CloseReason.RETURNED:
            await self._end(chat, EndReason.RETURNED, in_request=False)
        else:
            await self._end(chat, EndReason.AGENT_CLOSED, in_request=False)

    async def _failed_in_background(self, chat: LiveChat, error: ServiceNowError) -> None:
        await self._end(chat, EndReason.FAILED, in_request=False)

    # -- ending ------------------------------------------------------------

    async def _end(
        self,
        chat: LiveChat,
        reason: EndReason,
        *,
        in_request: bool,
        undelivered: bool = False,
        leave: bool = True,
    ) -> Messages:
        if not self.registry.deactivate(chat):
            return []
        self.relay.unwatch(chat)
        await self.relay.flush(chat)
        cause = FAULT_CAUSE if reason is EndReason.FAILED else None
        left = await self._leave_quietly(chat, cause) if leave else False
        texts = self._farewell(chat, reason, left)
        if undelivered:
            texts.append(self.texts.message_not_delivered)
        messages = self._bot_messages(chat.sender_id, texts)
        try:
            await self.slots.write(chat.sender_id, cleared_slot_events() + [bot_uttered(m) for m in messages])
        except Exception:
            logger.exception("Could not clear the handoff slots of conversation %s.", chat.sender_id)
        self.outbox.publish_status(chat.sender_id, active=False, chat_id=chat.chat_id, api=self.backend.api)
        logger.info("Handoff ended (%s): conversation %s left ServiceNow chat %s.", reason.value, chat.sender_id, chat.chat_id)
        return self._deliver(chat.sender_id, messages, in_request=in_request)

    def _farewell(self, chat: LiveChat, reason: EndReason, left: bool) -> List[str]:
        if reason is EndReason.USER_ENDED:
            return [self.texts.user_ended]
        if reason is EndReason.AGENT_CLOSED:
            return [self.texts.agent_closed]
        if reason is EndReason.RETURNED:
            return [self.texts.chat_ended]
        if not left:
            return [self.texts.session_lost]
        return [
            self.texts.connection_lost.format(
                chat_id=chat.chat_id, last_message_at=format_time(chat.last_updated)
            )
        ]

    async def _leave_quietly(self, chat: LiveChat, cause: Optional[str] = None) -> bool:
        try:
            if cause:
                await self.backend.abort(chat, cause)
            else:
                await self.backend.leave(chat)
            return True
        except ServiceNowError as error:
            logger.warning("Leaving ServiceNow chat %s failed: %s", chat.chat_id, error)
            return False

    # -- after a restart, and at shutdown ----------------------------------

    async def resume(self) -> int:
        """Pick up the chats that were live when the process last stopped."""
        resumed = 0
        async for loaded in self.slots.active_chats():
            chat = self.registry.activate(loaded)
            self.relay.watch(chat)
            resumed += 1
        if resumed:
            logger.info("Resumed %d live chat(s) from the tracker store.", resumed)
        return resumed

    async def shutdown(self, timeout: float = 10.0) -> None:
        await self.typing.aclose()
        await self.relay.stop(timeout)
        await self.outbox.drain(timeout)

    # -- helpers -----------------------------------------------------------

    async def _tell(self, sender_id: str, texts: List[str], *, in_request: bool, record: bool = True) -> Messages:
        messages = self._bot_messages(sender_id, texts)
        if record:
            try:
                await self.slots.write(sender_id, [bot_uttered(message) for message in messages])
            except Exception:
                logger.exception("Could not record a handoff notice for conversation %s.", sender_id)
        return self._deliver(sender_id, messages, in_request=in_request)

    def _deliver(self, sender_id: str, messages: Messages, *, in_request: bool) -> Messages:
        """Hand messages back for the HTTP response, or send them out of band."""
        if in_request:
            return messages
        for message in messages:
            self.outbox.publish(sender_id, message)
        return []

    @staticmethod
    def _bot_messages(sender_id: str, texts: List[str]) -> Messages:
        return [{"recipient_id": sender_id, "text": text, "metadata": {"source": "bot"}} for text in texts]


def format_time(epoch_ms: Optional[float]) -> str:
    if epoch_ms is None:
        return "unknown time"
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
