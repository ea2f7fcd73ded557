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

The tracker store can fail at any step, and the handoff fails closed:

* whether a conversation is in handoff is never guessed: ``active_chat``
  raises ``StoreUnavailable`` (the webhook answers 503) and caches nothing;
* a chat whose start cannot be saved is left again, and the user told;
* a user's end command is saved before the chat is left: if the save fails,
  nothing changes and the user is told (``end_failed``), so no restart can
  bring back a chat the user has left;
* an end from ServiceNow's side whose save fails is still an end here (the
  chat is over there), and the save is retried in the background and, before
  anything else, on the conversation's next message, which waits (503) until
  it lands.
"""

import asyncio
import dataclasses
import datetime
import logging
from collections import OrderedDict
from enum import Enum
from typing import Any, Callable, Dict, List, Optional, Tuple

from rasa.core.agent import Agent
from rasa.shared.core.events import Event

from connectors.servicenow.backends.base import Backend, Callback, ChatClosed, CloseReason, HandoffRequest, Turn
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.delivery import Outbox
from connectors.servicenow.errors import ConversationBusy, ServiceNowError, StoreUnavailable
from connectors.servicenow.limits import RateLimiter
from connectors.servicenow.observe import Observer
from connectors.servicenow.relay import Relay
from connectors.servicenow.state import (
    ConversationLocks,
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

#: How long a message waits for its conversation's handoff to finish opening
#: before the webhook answers 503 (ServiceNow's own retries fit well inside).
OPEN_WAIT_S = 30.0
#: The save of an ended handoff that failed is retried in the background
#: after these pauses, then every last one, until it lands.
END_SAVE_RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)
#: Failed opens remembered so that messages sent while one was opening get
#: a clear answer; only the newest are kept.
FAILED_OPENS_KEPT = 1000


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
        # Handoffs being opened, by sender: messages that arrive meanwhile
        # wait for the chat (None if the open failed).
        self._starting: Dict[str, "asyncio.Future[Optional[LiveChat]]"] = {}
        # Sender -> (when the open was asked for, when it failed), loop time.
        self._failed_opens: "OrderedDict[str, Tuple[float, float]]" = OrderedDict()
        # Ends whose tracker save failed: the events still to save, by sender.
        self._unsaved_ends: Dict[str, List[Event]] = {}
        self._end_savers: Dict[str, "asyncio.Task[None]"] = {}
        # Per conversation, so that one conversation's failing save does not
        # hold up another's.
        self._end_save_locks = ConversationLocks()
        # Chats whose id was chosen before ServiceNow confirmed them: pushes
        # that arrive that early wait here for the chat (or None if it failed).
        self._opening: Dict[str, "asyncio.Future[Optional[LiveChat]]"] = {}
        self.typing = TypingForwarder(backend.send_typing)
        self.start_limiter = RateLimiter(settings.handoff_starts_per_minute, 60.0)
        self.observe = self.relay.observe = Observer()  # the channel gives one with metrics

    # -- the flag ----------------------------------------------------------

    async def active_chat(self, sender_id: str, *, wait_s: float = OPEN_WAIT_S) -> Optional[LiveChat]:
        """The user's live chat, or None when messages should go to the bot.

        Waits up to ``wait_s`` for a chat that is being opened (then
        ``ConversationBusy``). Raises ``StoreUnavailable`` when the tracker
        store cannot tell, or when the end of an earlier handoff is not saved
        yet: the bot must not take a turn on a tracker that says "in handoff".
        """
        opening = self._starting.get(sender_id)
        if opening is not None:
            try:
                return await asyncio.wait_for(asyncio.shield(opening), wait_s)
            except asyncio.TimeoutError:
                raise ConversationBusy(f"the handoff of conversation {sender_id} is still opening") from None
        chat = self.registry.get(sender_id)
        if chat is not None:
            return chat
        if sender_id in self._unsaved_ends:
            await self._save_end(sender_id)
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

    async def start(
        self, request: HandoffRequest, *, in_request: bool, requested_at: Optional[float] = None
    ) -> Messages:
        """Open a chat for the request. ``requested_at`` (loop time) is when the
        user asked; messages they sent from then until a failed open get a
        clear answer instead of the bot (see ``open_failed_for``)."""
        sender = request.sender_id
        if sender in self._starting or self.registry.get(sender) is not None:
            logger.info("Conversation %s asked for a live agent again while already connected.", sender)
            return []
        refusal = self._refusal(sender)
        if refusal is not None:
            return await self._tell(sender, [refusal], in_request=in_request)
        loop = asyncio.get_running_loop()
        requested_at = loop.time() if requested_at is None else requested_at
        opening: "asyncio.Future[Optional[LiveChat]]" = loop.create_future()
        self._starting[sender] = opening
        try:
            return await self._start(request, in_request)
        finally:
            del self._starting[sender]
            chat = self.registry.get(sender)
            if chat is None:
                self._failed_opens[sender] = (requested_at, loop.time())
                self._failed_opens.move_to_end(sender)
                while len(self._failed_opens) > FAILED_OPENS_KEPT:
                    self._failed_opens.popitem(last=False)
            opening.set_result(chat)
            if chat is not None:
                self.observe.handoff_started(sender, chat.chat_id, loop.time() - requested_at)

    def open_failed_for(self, sender_id: str, arrived_at: float) -> bool:
        """True when a message that arrived at ``arrived_at`` (loop time) was
        sent while a handoff of its conversation was opening and failed to."""
        window = self._failed_opens.get(sender_id)
        return window is not None and window[0] <= arrived_at < window[1]

    def message_not_delivered(self, sender_id: str) -> Messages:
        return self._bot_messages(sender_id, [self.texts.message_not_delivered])

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
        if sender in self._unsaved_ends:
            # The end of the previous handoff must land first, or it would
            # clear the slots of this one when it does.
            try:
                await self._save_end(sender)
            except (StoreUnavailable, ConversationBusy) as error:
                logger.error("Not opening a chat for conversation %s: %s", sender, error)
                return await self._tell(sender, [self.texts.start_failed], in_request=in_request, record=False)
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
            except StoreUnavailable as error:
                # An unsaved handoff would be forgotten by a restart with the
                # chat still open: leave it, and the user stays with the bot.
                logger.error(
                    "Could not save the handoff of conversation %s to ServiceNow chat %s; leaving the chat: %s",
                    sender, opened_chat.chat_id, error,
                )
                await self._leave_quietly(opened_chat)
                return await self._tell(sender, [self.texts.start_failed], in_request=in_request, record=False)
            chat = self.registry.activate(opened_chat)
            self.relay.watch(chat)
            self.outbox.publish_status(sender, active=True, chat_id=chat.chat_id, api=self.backend.api)
            return self._deliver(sender, messages, in_request=in_request)
        finally:
            if reserved:
                self._opening.pop(reserved).set_result(chat)

    async def _history(self, request: HandoffRequest) -> List[Turn]:
        limit = self.settings.history_turns
        try:
            turns = await self.slots.history(request.sender_id, limit + 1)
        except StoreUnavailable as error:
            # The history is context for the agent, not worth failing the handoff over.
            logger.warning("Opening the chat without the conversation history of %s: %s", request.sender_id, error)
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
        """End the handoff at the user's request. Saved first, left after:
        when the save fails the chat goes on (``chat.ended`` stays False) and
        the answer says so."""
        messages = self._bot_messages(chat.sender_id, [self.texts.user_ended])
        async with chat.dispatch_lock:
            # Holding the dispatch lock: no agent message is delivered while
            # this saves, and none after it (the chat is ended before release).
            if chat.ended:
                return []
            pending = self.relay.take_unsaved(chat)
            try:
                events = pending + cleared_slot_events() + [bot_uttered(m) for m in messages]
                await self.slots.write(chat.sender_id, events)
            except StoreUnavailable as error:
                self.relay.give_back_unsaved(chat, pending)
                logger.error(
                    "Could not save the end of the handoff of conversation %s; ServiceNow chat %s goes on: %s",
                    chat.sender_id, chat.chat_id, error,
                )
                return self._bot_messages(chat.sender_id, [self.texts.end_failed])
            self.registry.deactivate(chat)
        self.relay.unwatch(chat)
        await self._leave_quietly(chat)
        self.outbox.publish_status(chat.sender_id, active=False, chat_id=chat.chat_id, api=self.backend.api)
        self.observe.handoff_ended(chat.sender_id, chat.chat_id, EndReason.USER_ENDED.value)
        return messages

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

    async def find_callback_chat(self, callback: Callback) -> None:
        """Make sure the chat a callback is about is known here, reading its
        tracker if need be, so that ``receive_callback`` finds it without the
        tracker store. Raises ``StoreUnavailable`` when the store cannot tell:
        the callback must then be refused (ServiceNow retries), not dropped."""
        if self.registry.by_chat_id(callback.chat_id) is None and callback.chat_id not in self._opening:
            if callback.sender_id:
                await self.active_chat(callback.sender_id, wait_s=0)

    async def receive_callback(self, callback: Callback) -> None:
        """Deliver what a ServiceNow callback says, once, in arrival order."""
        chat = await self._chat_for(callback)
        if chat is None:
            logger.info("Ignoring a ServiceNow callback for chat %s, which is not live here.", callback.chat_id)
            return
        if chat.is_repeat(callback.fingerprint):
            logger.info("Ignoring a repeated ServiceNow callback for chat %s.", callback.chat_id)
            self.observe.duplicate_dropped("callback")
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
            try:
                chat = await self.active_chat(callback.sender_id, wait_s=0)
            except (StoreUnavailable, ConversationBusy) as error:
                logger.error("Could not tell whether chat %s is live: %s", callback.chat_id, error)
                return None
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
        async with chat.dispatch_lock:  # waits for a user's end that is saving
            if not self.registry.deactivate(chat):
                return []
        self.relay.unwatch(chat)
        # The relay's unsaved cursor and transcript go into the same write as
        # the end, ahead of it, so that nothing of the chat is saved after it.
        pending = self.relay.take_unsaved(chat)
        cause = FAULT_CAUSE if reason is EndReason.FAILED else None
        left = await self._leave_quietly(chat, cause) if leave else False
        texts = self._farewell(chat, reason, left)
        if undelivered:
            texts.append(self.texts.message_not_delivered)
        messages = self._bot_messages(chat.sender_id, texts)
        events = pending + cleared_slot_events() + [bot_uttered(m) for m in messages]
        try:
            await self.slots.write(chat.sender_id, events)
        except StoreUnavailable as error:
            # The chat is over either way (left, or closed by ServiceNow), so
            # it ends here too; the tracker catches up before the next turn.
            logger.error(
                "The handoff of conversation %s to ServiceNow chat %s ended, but saving that failed; "
                "retrying, and holding the conversation's next message until it is saved: %s",
                chat.sender_id, chat.chat_id, error,
            )
            self._unsaved_ends.setdefault(chat.sender_id, []).extend(events)
            if chat.sender_id not in self._end_savers:
                self._end_savers[chat.sender_id] = asyncio.ensure_future(self._save_end_later(chat.sender_id))
        self.outbox.publish_status(chat.sender_id, active=False, chat_id=chat.chat_id, api=self.backend.api)
        self.observe.handoff_ended(chat.sender_id, chat.chat_id, reason.value)
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

    async def _save_end(self, sender_id: str) -> None:
        """Save an end whose save failed before; ``StoreUnavailable`` if it still fails."""
        async with self._end_save_locks.hold(sender_id, OPEN_WAIT_S):
            events = self._unsaved_ends.get(sender_id)
            if events is None:
                return
            await self.slots.write(sender_id, events)
            del self._unsaved_ends[sender_id]
            logger.info("Saved the end of the handoff of conversation %s after all.", sender_id)
        saver = self._end_savers.pop(sender_id, None)
        if saver is not None and saver is not asyncio.current_task():
            saver.cancel()

    async def _save_end_later(self, sender_id: str) -> None:
        attempt = 0
        while sender_id in self._unsaved_ends:
            await asyncio.sleep(END_SAVE_RETRY_S[min(attempt, len(END_SAVE_RETRY_S) - 1)])
            attempt += 1
            try:
                await self._save_end(sender_id)
            except (StoreUnavailable, ConversationBusy) as error:
                logger.warning("Still cannot save the end of the handoff of conversation %s: %s", sender_id, error)
        if self._end_savers.get(sender_id) is asyncio.current_task():
            del self._end_savers[sender_id]

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
        for saver in list(self._end_savers.values()):
            saver.cancel()
        for sender_id in list(self._unsaved_ends):
            try:
                await self._save_end(sender_id)
            except (StoreUnavailable, ConversationBusy) as error:
                # After the restart the tracker still says "in handoff" (a
                # known limit, docs/how-it-works.md): Connect finds the chat
                # closed and ends it again; a Virtual Agent chat cannot tell.
                logger.error("Stopping with the end of the handoff of conversation %s unsaved: %s", sender_id, error)
        await self.outbox.drain(timeout)

    # -- helpers -----------------------------------------------------------

    async def _tell(self, sender_id: str, texts: List[str], *, in_request: bool, record: bool = True) -> Messages:
        messages = self._bot_messages(sender_id, texts)
        if record:
            try:
                await self.slots.write(sender_id, [bot_uttered(message) for message in messages])
            except StoreUnavailable as error:
                logger.error("Could not record a handoff notice for conversation %s: %s", sender_id, error)
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
