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
import time
from collections import OrderedDict
from enum import Enum
from typing import Any, Callable, Dict, List, Optional, Tuple

from rasa.core.agent import Agent
from rasa.shared.core.events import Event, SlotSet

from connectors.servicenow.attachments import AttachmentRefused, UserAttachment, refusal_text
from connectors.servicenow.backends.base import Backend, Callback, ChatClosed, CloseReason, HandoffRequest, Turn
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.delivery import Outbox, Outgoing, status_item
from connectors.servicenow.errors import ConversationBusy, ServiceNowError, StoreUnavailable
from connectors.servicenow.limits import RateLimiter
from connectors.servicenow.observe import Observer
from connectors.servicenow.relay import Relay, chat_of_poll_lease, lease_time, poll_lease
from connectors.servicenow.state import (
    ConversationLocks,
    HandoffRegistry,
    LiveChat,
    TrackerSlots,
    bot_uttered,
    cleared_slot_events,
)
from connectors.servicenow.store import HandoffRecord, MemoryStore, OutboxEntry, Store
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
#: How long a pushed callback is remembered to drop ServiceNow's repeats of
#: it (its retries come within seconds; a mark costs about 100 bytes).
CALLBACK_DEDUPE_TTL_S = 600.0


class HandoffManager:
    def __init__(
        self,
        settings: ServiceNowSettings,
        backend: Backend,
        outbox: Outbox,
        agent: Callable[[], Optional[Agent]],
        store: Optional[Store] = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.outbox = outbox
        self.texts = settings.texts
        self.store = store if store is not None else MemoryStore()
        #: With a shared store (Redis) its handoff records decide routing, and
        #: the registry only caches chat objects (locks, pollers) of this
        #: replica; without one the registry is the truth in this process.
        self.shared = self.store.shared
        self.registry = HandoffRegistry()
        self.slots = TrackerSlots(agent)
        self.relay = Relay(
            settings,
            backend,
            outbox,
            self.slots,
            on_closed=self._closed_by_servicenow,
            on_failed=self._failed_in_background,
            store=self.store if self.shared else None,
            on_cursor=self._save_record if self.shared else None,
        )
        # Record removals that failed (shared mode), by sender: the chat id
        # and the task retrying until the record is gone.
        self._store_end_retries: Dict[str, Tuple[str, "asyncio.Task[None]"]] = {}
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
        if self.shared:
            if sender_id in self._unsaved_ends:
                await self._save_end(sender_id)
            if sender_id in self._store_end_retries:
                await self._finish_store_end(sender_id)
            # Another replica may have started or ended the chat since this
            # one last looked: only the store can say, so ask it every time.
            return self._adopt(sender_id, await self.store.get_handoff(sender_id))
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

    async def _finish_store_end(self, sender_id: str) -> None:
        """Remove a record whose removal failed before, ahead of anything that
        reads it (it would bring the ended chat back); ``StoreUnavailable``
        while the store still fails."""
        pending = self._store_end_retries.get(sender_id)
        if pending is None:
            return
        chat_id, retry = pending
        await self.store.end_handoff(sender_id, chat_id)
        retry.cancel()
        self._store_end_retries.pop(sender_id, None)

    def _adopt(self, sender_id: str, record: Optional[HandoffRecord]) -> Optional[LiveChat]:
        """Bring this replica's registry in line with the store's record of
        the sender (shared mode): a chat ended elsewhere is dropped here
        without any end of its own, one started elsewhere is taken in."""
        local = self.registry.get(sender_id)
        if local is not None:
            if record is not None and local.chat_id == record.chat_id:
                return local
            self._drop_ended_elsewhere(local)
        if record is None:
            return None
        chat = self.registry.activate(chat_of(record))
        self.relay.watch(chat)
        return chat

    def _drop_ended_elsewhere(self, chat: LiveChat) -> None:
        if not self.registry.deactivate(chat):
            return
        self.relay.unwatch(chat)
        # The replica that ended it wrote the cleared slots; this one's cursor
        # must not land after them, its transcript records may.
        records = [event for event in self.relay.take_unsaved(chat) if not isinstance(event, SlotSet)]
        if records:
            self.relay.save_later(chat.sender_id, records)
        logger.info("ServiceNow chat %s of conversation %s was ended by another replica.", chat.chat_id, chat.sender_id)

    async def forget_ended_elsewhere(self) -> int:
        """Drop the chats this replica holds that ended on another one and
        were not asked about here since (shared store; housekeeping), so the
        registry does not grow with every chat a replica ever touched."""
        dropped = 0
        for chat in list(self.registry):
            if chat.sender_id in self._starting:
                continue
            record = await self.store.get_handoff(chat.sender_id)
            if record is None or record.chat_id != chat.chat_id:
                self._drop_ended_elsewhere(chat)
                dropped += 1
        return dropped

    async def refresh(self, sender_id: str) -> Optional[LiveChat]:
        """The sender's chat as the store has it, without touching the tracker
        store or waiting for an opening chat (typing). In memory mode: the registry."""
        if not self.shared:
            return self.registry.get(sender_id)
        return self._adopt(sender_id, await self.store.get_handoff(sender_id))

    def _record_of(self, chat: LiveChat, started_at: Optional[float] = None) -> HandoffRecord:
        return HandoffRecord(
            sender_id=chat.sender_id,
            chat_id=chat.chat_id,
            api=self.backend.api,
            user=chat.user,
            last_updated=chat.last_updated,
            seen_ids=chat.seen_ids,
            agent_joined=chat.agent_joined,
            started_at=started_at,
        )

    # -- start -------------------------------------------------------------

    async def start(
        self, request: HandoffRequest, *, in_request: bool, requested_at: Optional[float] = None
    ) -> Messages:
        """Open a chat for the request. ``requested_at`` (loop time) is when the
        user asked; messages they sent from then until a failed open get a
        clear answer instead of the bot (see ``open_failed_for``)."""
        sender = request.sender_id
        # With a shared store a chat held here may have ended elsewhere: the
        # record filed by ``_file`` decides instead.
        if sender in self._starting or (not self.shared and self.registry.get(sender) is not None):
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
        # The chat id whose handoff record this start filed (shared store).
        filed: Optional[str] = None
        started_at = time.time()
        try:
            if self.shared and reserved:
                # Filed before the open: ServiceNow may push the chat's first
                # callback to another replica before ``open_chat`` returns here.
                early = LiveChat(sender_id=sender, chat_id=reserved, user=request.requester.user_id or sender)
                outcome = await self._file(early, started_at, in_request)
                if outcome is not None:
                    return outcome
                filed = reserved
            try:
                opened = await self.backend.open_chat(request, reserved)
            except ServiceNowError as error:
                logger.warning("Could not open a ServiceNow chat for conversation %s: %s", sender, error)
                return await self._tell(sender, [self.texts.start_failed], in_request=in_request)
            opened_chat = LiveChat(sender_id=sender, chat_id=opened.chat_id, user=opened.user, last_updated=opened.opened_at)
            if self.shared:
                if filed is None:
                    outcome = await self._file(opened_chat, started_at, in_request)
                    if outcome is not None:
                        await self._leave_quietly(opened_chat)
                        return outcome
                    filed = opened_chat.chat_id
                else:
                    await self._save_record(opened_chat, started_at)
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
            await self._tell_status(sender, active=True, chat_id=chat.chat_id)
            return await self._deliver(sender, messages, in_request=in_request)
        finally:
            if filed and chat is None:
                await self._end_record(sender, filed)
            if reserved:
                self._opening.pop(reserved).set_result(chat)

    async def _file(self, chat: LiveChat, started_at: float, in_request: bool) -> Optional[Messages]:
        """File the handoff record of a chat being started (shared store).
        None when filed; otherwise what to answer: nothing when another
        replica started a chat for the sender first, ``start_failed`` when
        the store is down (a chat nobody can route to must not open)."""
        try:
            created = await self.store.create_handoff(self._record_of(chat, started_at))
        except StoreUnavailable as error:
            logger.error("Not opening a chat for conversation %s: the store is unavailable: %s", chat.sender_id, error)
            return await self._tell(chat.sender_id, [self.texts.start_failed], in_request=in_request, record=False)
        if not created:
            logger.info("Conversation %s is already in a chat started by another replica.", chat.sender_id)
            return []
        if self.backend.pulls:
            try:
                await self.store.register_lease(poll_lease(chat.chat_id))
                # Held from the start, so no other replica's takeover scan sees it free.
                await self.store.acquire_lease(
                    poll_lease(chat.chat_id), self.relay.owner, lease_time(self.settings.poll_interval)
                )
            except StoreUnavailable as error:
                # The starting replica polls it anyway; only a takeover needs the name.
                logger.warning("Could not register the polling of chat %s for takeover: %s", chat.chat_id, error)
        return None

    async def _save_record(self, chat: LiveChat, started_at: Optional[float] = None) -> None:
        """Write the chat's cursor and state to its record (shared store);
        a failure is logged: the tracker mirror and this replica still have it."""
        try:
            await self.store.update_handoff(self._record_of(chat, started_at))
        except StoreUnavailable as error:
            logger.warning("Could not update the handoff record of chat %s: %s", chat.chat_id, error)

    async def _end_record(self, sender_id: str, chat_id: str) -> bool:
        """Remove the handoff record (shared store). True when this call
        ended it; False when it was gone already or the store is down (then
        the removal is retried in the background until it lands)."""
        try:
            ended = await self.store.end_handoff(sender_id, chat_id)
        except StoreUnavailable as error:
            logger.error(
                "Could not remove the handoff record of conversation %s (chat %s); retrying: %s", sender_id, chat_id, error
            )
            if sender_id not in self._store_end_retries:
                retry = asyncio.ensure_future(self._end_record_later(sender_id, chat_id))
                self._store_end_retries[sender_id] = (chat_id, retry)
            return False
        if ended is not None and self.backend.pulls:
            await self._unregister_poll(chat_id)
        return ended is not None

    async def _end_record_later(self, sender_id: str, chat_id: str) -> None:
        attempt = 0
        try:
            while True:
                await asyncio.sleep(END_SAVE_RETRY_S[min(attempt, len(END_SAVE_RETRY_S) - 1)])
                attempt += 1
                try:
                    await self.store.end_handoff(sender_id, chat_id)
                except StoreUnavailable as error:
                    logger.warning("Still cannot remove the handoff record of conversation %s: %s", sender_id, error)
                    continue
                logger.info("Removed the handoff record of conversation %s after all.", sender_id)
                return
        finally:
            pending = self._store_end_retries.get(sender_id)
            if pending is not None and pending[1] is asyncio.current_task():
                del self._store_end_retries[sender_id]

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

    async def forward(self, chat: LiveChat, text: str, attachment: Optional[UserAttachment] = None) -> Messages:
        """Send one user message (and file) to the agent. Returns what to answer the request with."""
        async with chat.send_lock:
            if chat.ended:
                # The chat ended while this message waited its turn.
                return self._bot_messages(chat.sender_id, [self.texts.message_not_delivered])
            try:
                if attachment is None:
                    await self.backend.send(chat, text)
                else:
                    await self.backend.send_attachment(chat, text, attachment, self.settings.attachment_policy)
            except AttachmentRefused as refused:
                # Nothing was sent; the chat goes on. ServiceNow would have dropped it without a word.
                logger.info("A file for ServiceNow chat %s was refused: %s", chat.chat_id, refused.reason)
                return self._bot_messages(chat.sender_id, [refusal_text(self.texts.attachment_refused, attachment, self.settings)])
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
            if self.shared:
                # The record decides: once it is gone the end is settled for
                # every replica, and the tracker mirror follows (held save).
                try:
                    ended = await self.store.end_handoff(chat.sender_id, chat.chat_id)
                except StoreUnavailable as error:
                    logger.error(
                        "Could not end the handoff record of conversation %s; ServiceNow chat %s goes on: %s",
                        chat.sender_id, chat.chat_id, error,
                    )
                    return self._bot_messages(chat.sender_id, [self.texts.end_failed])
                if ended is None:
                    self._drop_ended_elsewhere(chat)
                    return []
                if self.backend.pulls:
                    await self._unregister_poll(chat.chat_id)
            pending = self.relay.take_unsaved(chat)
            events = pending + cleared_slot_events() + [bot_uttered(m) for m in messages]
            try:
                await self.slots.write(chat.sender_id, events)
            except StoreUnavailable as error:
                if not self.shared:
                    self.relay.give_back_unsaved(chat, pending)
                    logger.error(
                        "Could not save the end of the handoff of conversation %s; ServiceNow chat %s goes on: %s",
                        chat.sender_id, chat.chat_id, error,
                    )
                    return self._bot_messages(chat.sender_id, [self.texts.end_failed])
                self._hold_end_save(chat, events, error)
            self.registry.deactivate(chat)
        self.relay.unwatch(chat)
        await self._leave_quietly(chat)
        await self._tell_status(chat.sender_id, active=False, chat_id=chat.chat_id)
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
        if callback.chat_id in self._opening:
            return
        if self.shared:
            record = await self.store.handoff_by_chat(callback.chat_id)
            if record is not None:
                self._adopt(record.sender_id, record)
            else:
                local = self.registry.by_chat_id(callback.chat_id)
                if local is not None:
                    self._drop_ended_elsewhere(local)
            return
        if self.registry.by_chat_id(callback.chat_id) is None:
            if callback.sender_id:
                await self.active_chat(callback.sender_id, wait_s=0)

    async def receive_callback(self, callback: Callback) -> None:
        """Deliver what a ServiceNow callback says, once, in arrival order."""
        chat = await self._chat_for(callback)
        if chat is None:
            logger.info("Ignoring a ServiceNow callback for chat %s, which is not live here.", callback.chat_id)
            return
        key = f"cb:{callback.chat_id}:{callback.fingerprint}"
        if self.shared:
            # Deduplicated and stored in one step, before ServiceNow hears 200.
            if not await self.relay.dispatch(chat, callback.events, dedupe_key=key, dedupe_ttl=CALLBACK_DEDUPE_TTL_S):
                logger.info("Ignoring a repeated ServiceNow callback for chat %s.", callback.chat_id)
                self.observe.duplicate_dropped("callback")
            return
        if not await self._first_time(key, CALLBACK_DEDUPE_TTL_S):
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
        if callback.sender_id and not self.shared:
            # After a restart, before the resume scan reached this conversation.
            try:
                chat = await self.active_chat(callback.sender_id, wait_s=0)
            except (StoreUnavailable, ConversationBusy) as error:
                logger.error("Could not tell whether chat %s is live: %s", callback.chat_id, error)
                return None
            if chat is not None and chat.chat_id == callback.chat_id:
                return chat
        return None

    def report_taken(self, sender_id: str, entry: OutboxEntry, delivered: bool) -> None:
        """A sink of the shared outbox took an entry (or the callback gave up
        on it): report an agent message's delivery to ServiceNow, from
        whichever replica the sink ran on (``report_delivery``)."""
        metadata = entry.payload.get("metadata") or {}
        if not self.settings.report_delivery or metadata.get("source") != "agent" or not metadata.get("message_id"):
            return
        self.relay.track(self._report_taken(sender_id, str(metadata["message_id"]), delivered))

    async def _report_taken(self, sender_id: str, message_id: str, delivered: bool) -> None:
        try:
            record = await self.store.get_handoff(sender_id)
        except StoreUnavailable as error:
            logger.warning("Could not report delivery of message %s: %s", message_id, error)
            return
        if record is None:
            return  # the chat is over: nobody to report to
        local = self.registry.get(sender_id)
        chat = local if local is not None and local.chat_id == record.chat_id else chat_of(record)
        try:
            await self.backend.report_delivery(chat, message_id, delivered)
        except ServiceNowError as error:
            logger.warning("Could not report delivery of message %s to ServiceNow: %s", message_id, error)

    async def _first_time(self, key: str, ttl: float) -> bool:
        """Whether this is the first sight of ``key`` in the deployment. When
        the store cannot say, yes: a repeat shown twice beats a message lost."""
        try:
            return await self.store.claim_once(key, ttl)
        except StoreUnavailable as error:
            logger.warning("Could not check a ServiceNow push for a repeat (delivering it): %s", error)
            return True

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
            if self.shared and not await self._end_record(chat.sender_id, chat.chat_id):
                if chat.sender_id not in self._store_end_retries:
                    # Another replica ended it first, and told the user.
                    self.relay.unwatch(chat)
                    self.relay.take_unsaved(chat)
                    logger.info("ServiceNow chat %s was ended by another replica first.", chat.chat_id)
                    return self._bot_messages(chat.sender_id, [self.texts.message_not_delivered]) if undelivered and in_request else []
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
            self._hold_end_save(chat, events, error)
        await self._tell_status(chat.sender_id, active=False, chat_id=chat.chat_id)
        self.observe.handoff_ended(chat.sender_id, chat.chat_id, reason.value)
        return await self._deliver(chat.sender_id, messages, in_request=in_request)

    def _hold_end_save(self, chat: LiveChat, events: List[Event], error: Exception) -> None:
        logger.error(
            "The handoff of conversation %s to ServiceNow chat %s ended, but saving that failed; "
            "retrying, and holding the conversation's next message until it is saved: %s",
            chat.sender_id, chat.chat_id, error,
        )
        self._unsaved_ends.setdefault(chat.sender_id, []).extend(events)
        if chat.sender_id not in self._end_savers:
            self._end_savers[chat.sender_id] = asyncio.ensure_future(self._save_end_later(chat.sender_id))

    async def _unregister_poll(self, chat_id: str) -> None:
        try:
            await self.store.unregister_lease(poll_lease(chat_id))
        except StoreUnavailable as error:
            # A stale name is dropped by the takeover scan, which finds no record.
            logger.warning("Could not unregister the polling of chat %s: %s", chat_id, error)

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
        """Pick up the chats that were live when the process last stopped.

        With a shared store there is nothing to pick up: its records are
        read per message and callback, and Connect chats come back through
        ``take_over_free_chats`` once their polling lease is free."""
        if self.shared:
            return 0
        resumed = 0
        async for loaded in self.slots.active_chats():
            chat = self.registry.activate(loaded)
            self.relay.watch(chat)
            resumed += 1
        if resumed:
            logger.info("Resumed %d live chat(s) from the tracker store.", resumed)
        return resumed

    async def take_over_free_chats(self, limit: int = 100) -> int:
        """Start polling the Connect chats nobody polls (shared store): their
        replica stopped or died, so their lease expired or was released.
        Returns how many this replica now watches; the lease decides who polls."""
        taken = 0
        for name in await self.store.free_leases(limit):
            chat_id = chat_of_poll_lease(name)
            if chat_id is None:
                continue
            record = await self.store.handoff_by_chat(chat_id)
            if record is None:
                # Ended while its name stayed behind (a failed unregister).
                await self.store.unregister_lease(name)
                continue
            local = self.registry.get(record.sender_id)
            was_watched = local is not None and local.chat_id == chat_id and self.relay.is_watching(local)
            chat = self._adopt(record.sender_id, record)
            if chat is not None and not was_watched:
                # Polling goes on from the cursor the last poller saved, not
                # from whatever this replica saw when it last looked.
                chat.last_updated, chat.seen_ids = record.last_updated, record.seen_ids
                self.relay.watch(chat)  # a no-op when adopting started it
                taken += 1
        if taken:
            logger.info("Took over polling of %d ServiceNow chat(s) that no replica was polling.", taken)
        return taken

    async def shutdown(self, timeout: float = 10.0) -> None:
        await self.typing.aclose()
        await self.relay.stop(timeout)
        for sender_id, (chat_id, retry) in list(self._store_end_retries.items()):
            retry.cancel()
            try:
                await self.store.end_handoff(sender_id, chat_id)
            except StoreUnavailable as error:
                logger.error("Stopping with the handoff record of conversation %s not removed: %s", sender_id, error)
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
        return await self._deliver(sender_id, messages, in_request=in_request)

    async def _deliver(self, sender_id: str, messages: Messages, *, in_request: bool) -> Messages:
        """Hand messages back for the HTTP response, or send them out of band."""
        if in_request:
            return messages
        await self.outbox.put(sender_id, [Outgoing(message) for message in messages])
        return []

    async def _tell_status(self, sender_id: str, *, active: bool, chat_id: str) -> None:
        await self.outbox.put(sender_id, [status_item(sender_id, active=active, chat_id=chat_id, api=self.backend.api)])

    @staticmethod
    def _bot_messages(sender_id: str, texts: List[str]) -> Messages:
        return [{"recipient_id": sender_id, "text": text, "metadata": {"source": "bot"}} for text in texts]


def chat_of(record: HandoffRecord) -> LiveChat:
    """This replica's chat object for a handoff record."""
    return LiveChat(
        sender_id=record.sender_id,
        chat_id=record.chat_id,
        user=record.user,
        last_updated=record.last_updated,
        seen_ids=record.seen_ids,
        agent_joined=record.agent_joined,
    )


def format_time(epoch_ms: Optional[float]) -> str:
    if epoch_ms is None:
        return "unknown time"
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
