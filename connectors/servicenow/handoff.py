"""The handoff itself: opening a chat, forwarding the user's messages, and
every way a chat ends, each leaving the slots and the user in a known state.

Ways a handoff ends, and what the user hears:

* the user types an end command: the chat is left, ``user_ended``;
* the agent closes it: ``agent_closed``;
* ServiceNow hands control back (no agent available, time-out): ``chat_ended``,
  after ServiceNow's own explanation;
* ServiceNow keeps failing: the chat is left (Virtual Agent: faulted) and the
  user gets ``connection_lost`` with the chat id and the time of the last
  message, or ``session_lost`` when that fails too;
* no agent accepts within ``agent_wait_timeout``: the chat is left, ``no_agent``;
* the user sends nothing for ``user_idle_timeout`` in a live chat: the agent is
  told (``user_idle_agent``), the chat is left, ``user_idle`` (``waiting.py``);
* the bot ends it (a custom payload ``{"handoff": {"end": true}}`` in a turn
  Rasa runs outside a request): ``bot_ended``, told ``chat_ended``.

A handoff that may not start (``business_hours``, the Connect queue's
``not_available``, ``max_live_chats``, ``handoff_starts_per_minute``) opens
nothing and tells the user why, all through ``_refuse``.

After the notice the bot takes a turn of its own, the hand-back turn
(handback.py, ``hand_back``), with the reason as an entity: the replica that
ends the handoff runs it, once.

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
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union

from rasa.core.agent import Agent
from rasa.shared.core.events import Event, SlotSet

from connectors.servicenow.attachments import AttachmentRefused, UserAttachment, refusal_placeholders
from connectors.servicenow.backends.base import (
    Backend,
    Callback,
    ChatClosed,
    CloseReason,
    HandoffRequest,
    QueueStatus,
    Turn,
)
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.delivery import Outbox, Outgoing, status_item
from connectors.servicenow.errors import ConversationBusy, ServiceNowError, StoreUnavailable
from connectors.servicenow.handback import ended_events, started_events, user_message_event
from connectors.servicenow.limits import RateLimiter
from connectors.servicenow.observe import Observer
from connectors.servicenow.relay import Relay, chat_of_poll_lease, lease_time, poll_lease
from connectors.servicenow.speech import Line, Speech, fill
from connectors.servicenow.state import (
    ConversationLocks,
    HandoffRegistry,
    LiveChat,
    TrackerSlots,
    bot_uttered,
    cleared_slot_events,
)
from connectors.servicenow.store import HandoffRecord, MemoryStore, OutboxEntry, Store, TimerClaim

from connectors.servicenow.user_typing import TypingForwarder
from connectors.servicenow.waiting import (
    IDLE,
    NO_AGENT,
    WAITING,
    TimerLoop,
    describe_duration,
    describe_seconds,
    parse_timer_name,
    timer_name,
)

logger = logging.getLogger(__name__)

Messages = List[Dict[str, Any]]
#: Runs the hand-back turn: (sender id, reason, in a request?) -> the turn's
#: replies for the HTTP answer (none when they went through the outbox).
HandBackHook = Callable[[str, str, bool], Awaitable[Messages]]


class EndReason(str, Enum):
    """Why a handoff ended; the value is the hand-back turn's entity, the
    ``handoff_end_reason`` slot and the metrics label."""

    USER_ENDED = "user_ended"
    AGENT_CLOSED = "agent_closed"
    #: ServiceNow handed control back (no agent available, time-out).
    RETURNED = "returned"
    FAILED = "failed"
    #: No agent accepted within ``agent_wait_timeout``; this side left the chat.
    NO_AGENT = "no_agent"
    #: The user sent nothing for ``user_idle_timeout``; this side left the chat.
    USER_IDLE = "user_idle"
    #: The bot ended it: a custom payload ``{"handoff": {"end": true}}``.
    BOT_ENDED = "bot_ended"


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why no chat is opened for a handoff request, and what the user hears."""

    #: ``outside_hours``, ``no_agent_available``, ``busy`` or ``rate_limited``.
    reason: str
    line: Line


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
        self._refusal_turns: "set[asyncio.Future[Messages]]" = set()
        #: Every text the user hears goes through here (domain response, ``messages``, default).
        self.speech = Speech(settings.texts, agent)
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
            on_progress=self._progress,
        )
        self.timers = TimerLoop(self.store, self._fire_timer)
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
        #: The bot's turn after a handoff ends; the channel sets it (it owns
        #: the output channels). None: no turn.
        self.hand_back_turn: Optional[HandBackHook] = None

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
            wait_estimate=chat.wait_estimate,
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
            return await self._refuse(sender, refusal, in_request=in_request)
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

    async def message_not_delivered(self, sender_id: str) -> Messages:
        return await self.speech.say(sender_id, "message_not_delivered")

    def _refusal(self, sender: str) -> Optional[Refusal]:
        """Why a new handoff may not start (business hours, a limit); None
        when it may. The busy check comes before the rate limit so that a
        refusal for lack of room does not use up the conversation's own allowance."""
        hours = self.settings.business_hours
        if hours is not None:
            now = datetime.datetime.now(datetime.timezone.utc)
            if not hours.is_open(now):
                logger.info("Refused a handoff for conversation %s: outside business hours.", sender)
                return Refusal("outside_hours", Line("outside_hours", {"next_opening": hours.describe_opening(now)}))
        limit = self.settings.max_live_chats
        if limit and len(self.registry) + len(self._starting) >= limit:
            logger.warning("Refused a handoff for conversation %s: %d live chats is the limit (max_live_chats).", sender, limit)
            return Refusal("busy", Line("handoff_busy"))
        if not self.start_limiter.allow(sender):
            # INFO: one conversation's own retries must not flood the operator's warnings.
            logger.info(
                "Refused a handoff for conversation %s: more than %d starts in a minute (handoff_starts_per_minute).",
                sender, self.settings.handoff_starts_per_minute,
            )
            return Refusal("rate_limited", Line("handoff_rate_limited"))
        return None

    async def _unavailable(self, request: HandoffRequest) -> Optional[Refusal]:
        """Whether ServiceNow says nobody can take a chat now (Connect: the
        queue's ``not_available``). A failed check opens the chat anyway: the
        open itself then says whether it can."""
        if not self.settings.check_queue_availability:
            return None
        try:
            reason = await self.backend.unavailable_reason(request.queue_id)
        except ServiceNowError as error:
            logger.warning("Could not check the queue's availability for conversation %s: %s", request.sender_id, error)
            return None
        if reason is None:
            return None
        logger.info("Refused a handoff for conversation %s: the queue is not available.", request.sender_id)
        return Refusal("no_agent_available", Line("no_agent_available"))

    async def _refuse(self, sender: str, refusal: Refusal, *, in_request: bool) -> Messages:
        """Every refusal to open a chat goes through here: the user hears why,
        then the bot takes its hand-back turn with the refusal's reason."""
        messages = await self._tell(sender, [refusal.line], in_request=in_request)
        # A refusal comes out of the bot's own turn, which holds the
        # conversation's lock until it returns: the hand-back turn waits for
        # that lock in the background and answers through the outbox.
        task = asyncio.ensure_future(self.hand_back(sender, refusal.reason, in_request=False))
        self._refusal_turns.add(task)
        task.add_done_callback(self._refusal_turns.discard)
        return messages

    async def _start(self, request: HandoffRequest, in_request: bool) -> Messages:
        sender = request.sender_id
        if sender in self._unsaved_ends:
            # The end of the previous handoff must land first, or it would
            # clear the slots of this one when it does.
            try:
                await self._save_end(sender)
            except (StoreUnavailable, ConversationBusy) as error:
                logger.error("Not opening a chat for conversation %s: %s", sender, error)
                return await self._tell(sender, ["start_failed"], in_request=in_request, record=False)
        unavailable = await self._unavailable(request)
        if unavailable is not None:
            return await self._refuse(sender, unavailable, in_request=in_request)
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
                return await self._tell(sender, ["start_failed"], in_request=in_request)
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
            messages = await self.speech.say(sender, "connecting")
            try:
                await self.slots.write(
                    sender, opened_chat.slot_events() + started_events() + [bot_uttered(m) for m in messages]
                )
            except StoreUnavailable as error:
                # An unsaved handoff would be forgotten by a restart with the
                # chat still open: leave it, and the user stays with the bot.
                logger.error(
                    "Could not save the handoff of conversation %s to ServiceNow chat %s; leaving the chat: %s",
                    sender, opened_chat.chat_id, error,
                )
                await self._leave_quietly(opened_chat)
                return await self._tell(sender, ["start_failed"], in_request=in_request, record=False)
            chat = self.registry.activate(opened_chat)
            self.relay.watch(chat)
            await self._set_waiting_timers(chat)
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
            return await self._tell(chat.sender_id, ["start_failed"], in_request=in_request, record=False)
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
                return await self.speech.say(chat.sender_id, "message_not_delivered")
            try:
                if attachment is None:
                    await self.backend.send(chat, text)
                else:
                    await self.backend.send_attachment(chat, text, attachment, self.settings.attachment_policy)
            except AttachmentRefused as refused:
                # Nothing was sent; the chat goes on. ServiceNow would have dropped it without a word.
                logger.info("A file for ServiceNow chat %s was refused: %s", chat.chat_id, refused.reason)
                return await self.speech.say(
                    chat.sender_id, "attachment_refused", **refusal_placeholders(attachment, self.settings)
                )
            except ServiceNowError as error:
                logger.warning("Could not deliver a message to ServiceNow chat %s: %s", chat.chat_id, error)
                return await self._end(chat, EndReason.FAILED, in_request=True, undelivered=True)
        if self.settings.record_user_messages:
            # Coalesced with the agent's messages; the end of the chat takes
            # them into its own write, ahead of the hand-back turn.
            self.relay.save_later(chat.sender_id, [user_message_event(text, chat.chat_id)])
        self.relay.note_activity(chat)
        if self.settings.user_idle_timeout and chat.agent_joined:
            await self._set_timer(IDLE, chat, self.settings.user_idle_timeout)
        return []

    async def end_by_user(self, chat: LiveChat, *, hand_back: bool = True) -> Messages:
        """End the handoff at the user's request. Saved first, left after:
        when the save fails the chat goes on (``chat.ended`` stays False) and
        the answer says so. The answer is the notice, then the replies of the
        hand-back turn (unless ``hand_back`` is False: ``/restart``)."""
        messages = await self.speech.say(chat.sender_id, "user_ended")
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
                    return await self.speech.say(chat.sender_id, "end_failed")
                if ended is None:
                    self._drop_ended_elsewhere(chat)
                    return []
                if self.backend.pulls:
                    await self._unregister_poll(chat.chat_id)
            pending = self.relay.take_unsaved(chat)
            events = (
                pending
                + cleared_slot_events()
                + ended_events(EndReason.USER_ENDED.value)
                + [bot_uttered(m) for m in messages]
            )
            saved = True
            try:
                await self.slots.write(chat.sender_id, events)
            except StoreUnavailable as error:
                saved = False
                if not self.shared:
                    self.relay.give_back_unsaved(chat, pending)
                    logger.error(
                        "Could not save the end of the handoff of conversation %s; ServiceNow chat %s goes on: %s",
                        chat.sender_id, chat.chat_id, error,
                    )
                    return await self.speech.say(chat.sender_id, "end_failed")
                self._hold_end_save(chat, events, error)
            self.registry.deactivate(chat)
        self.relay.unwatch(chat)
        await self._cancel_timers(chat)
        await self._leave_quietly(chat)
        await self._tell_status(chat.sender_id, active=False, chat_id=chat.chat_id)
        self.observe.handoff_ended(chat.sender_id, chat.chat_id, EndReason.USER_ENDED.value)
        if hand_back and saved:
            messages = messages + await self.hand_back(chat.sender_id, EndReason.USER_ENDED, in_request=True)
        return messages

    async def end_by_bot(self, sender_id: str) -> Messages:
        """End the sender's handoff because the bot said so (the end payload
        in a turn Rasa ran outside a request); nothing when none is live."""
        try:
            chat = await self.active_chat(sender_id)
        except (StoreUnavailable, ConversationBusy) as error:
            logger.error("Could not end the handoff of conversation %s as the bot asked: %s", sender_id, error)
            return []
        if chat is None:
            logger.info("The bot asked to end the handoff of conversation %s, which has none.", sender_id)
            return []
        return await self._end(chat, EndReason.BOT_ENDED, in_request=False)

    async def hand_back(self, sender_id: str, reason: Union[EndReason, str], *, in_request: bool) -> Messages:
        """Run the hand-back turn for ``reason``: the bot's intent
        ``handback_intent`` with the entity ``handoff_end_reason``. Called by
        every end of a handoff, once, on the replica that ends it; call it
        too where no chat opened (a refusal, hours, nobody available), after
        telling the user why. Returns the turn's replies when ``in_request``
        (for the HTTP answer), else sends them through the outbox."""
        if self.hand_back_turn is None:
            return []
        value = reason.value if isinstance(reason, EndReason) else str(reason)
        try:
            return await self.hand_back_turn(sender_id, value, in_request)
        except Exception:
            # The handoff is over whatever the bot's turn does.
            logger.exception("The hand-back turn of conversation %s failed.", sender_id)
            return []

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
                    if undelivered and in_request:
                        return await self.speech.say(chat.sender_id, "message_not_delivered")
                    return []
        self.relay.unwatch(chat)
        await self._cancel_timers(chat)
        # The relay's unsaved cursor and transcript go into the same write as
        # the end, ahead of it, so that nothing of the chat is saved after it.
        pending = self.relay.take_unsaved(chat)
        cause = FAULT_CAUSE if reason is EndReason.FAILED else None
        left = await self._leave_quietly(chat, cause) if leave else False
        lines = self._farewell(chat, reason, left)
        if undelivered:
            lines.append(Line("message_not_delivered"))
        messages = await self.speech.say_lines(chat.sender_id, lines)
        events = pending + cleared_slot_events() + ended_events(reason.value) + [bot_uttered(m) for m in messages]
        saved = True
        try:
            await self.slots.write(chat.sender_id, events)
        except StoreUnavailable as error:
            # The chat is over either way (left, or closed by ServiceNow), so
            # it ends here too; the tracker catches up before the next turn.
            # No hand-back turn: it would run on a tracker still in handoff.
            saved = False
            self._hold_end_save(chat, events, error)
        await self._tell_status(chat.sender_id, active=False, chat_id=chat.chat_id)
        self.observe.handoff_ended(chat.sender_id, chat.chat_id, reason.value)
        answer = await self._deliver(chat.sender_id, messages, in_request=in_request)
        if saved:
            # After the notice: out of band it is in the outbox already, in a
            # request the turn's replies follow it in the same answer.
            answer = answer + await self.hand_back(chat.sender_id, reason, in_request=in_request)
        return answer

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

    def _farewell(self, chat: LiveChat, reason: EndReason, left: bool) -> List[Line]:
        if reason is EndReason.USER_ENDED:
            return [Line("user_ended")]
        if reason is EndReason.AGENT_CLOSED:
            return [Line("agent_closed")]
        if reason is EndReason.RETURNED or reason is EndReason.BOT_ENDED:
            return [Line("chat_ended")]
        if reason is EndReason.NO_AGENT:
            return [Line("no_agent")]
        if reason is EndReason.USER_IDLE:
            return [Line("user_idle")]
        if not left:
            return [Line("session_lost")]
        placeholders = {"chat_id": chat.chat_id, "last_message_at": format_time(chat.last_updated)}
        return [Line("connection_lost", placeholders)]

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

    # -- waiting for an agent, idle users (waiting.py) -----------------------

    def start_timers(self) -> None:
        """Run this replica's timer loop (the channel calls it once the server runs)."""
        if self.settings.agent_wait_timeout or self.settings.waiting_notice_interval or self.settings.user_idle_timeout:
            self.timers.start()

    async def _set_timer(self, kind: str, chat: LiveChat, delay: float) -> None:
        try:
            await self.timers.schedule(timer_name(kind, chat.chat_id), time.time() + delay)
        except StoreUnavailable as error:
            # The chat goes on; it only misses this timer.
            logger.warning("Could not set the %s timer of chat %s: %s", kind, chat.chat_id, error)

    async def _set_waiting_timers(self, chat: LiveChat) -> None:
        if self.settings.agent_wait_timeout:
            await self._set_timer(NO_AGENT, chat, self.settings.agent_wait_timeout)
        if self.settings.waiting_notice_interval:
            await self._set_timer(WAITING, chat, self.settings.waiting_notice_interval)

    async def _restart_timers(self, chat: LiveChat) -> None:
        """A chat resumed from the tracker after a restart (in-process store,
        whose timers died with the process): its timers count from now. The
        tracker does not say whether an agent had joined: the waiting timers
        are set only where ServiceNow can tell before they act (Connect's
        session state), and the idle one waits for a sign of the agent."""
        if self.backend.pulls:
            await self._set_waiting_timers(chat)
        if self.settings.user_idle_timeout:
            await self._set_timer(IDLE, chat, self.settings.user_idle_timeout)

    async def _cancel_timers(self, chat: LiveChat, kinds: Tuple[str, ...] = (NO_AGENT, WAITING, IDLE)) -> None:
        if not (self.settings.agent_wait_timeout or self.settings.waiting_notice_interval or self.settings.user_idle_timeout):
            return
        for kind in kinds:
            try:
                await self.timers.cancel(timer_name(kind, chat.chat_id))
            except StoreUnavailable as error:
                # It fires later, finds the chat ended or the agent there, and does nothing.
                logger.warning("Could not drop the %s timer of chat %s: %s", kind, chat.chat_id, error)

    async def _progress(self, chat: LiveChat) -> None:
        """The relay saw the chat move on: an agent joined (the waiting
        timers go, the idle one starts) or a new wait estimate came."""
        if self.shared:
            await self._save_record(chat)
        if chat.agent_joined:
            await self._cancel_timers(chat, (NO_AGENT, WAITING))
            if self.settings.user_idle_timeout:
                await self._set_timer(IDLE, chat, self.settings.user_idle_timeout)

    async def _live_chat_by_id(self, chat_id: str) -> Optional[LiveChat]:
        if self.shared:
            record = await self.store.handoff_by_chat(chat_id)
            return self._adopt(record.sender_id, record) if record is not None else None
        return self.registry.by_chat_id(chat_id)

    async def _queue_status(self, chat: LiveChat) -> QueueStatus:
        try:
            status = await self.backend.queue_status(chat)
        except ServiceNowError as error:
            logger.warning("Could not read the queue status of chat %s: %s", chat.chat_id, error)
            status = QueueStatus()
        if status.wait_time is None and chat.wait_estimate:
            status = dataclasses.replace(status, wait_time=chat.wait_estimate)
        return status

    async def _fire_timer(self, claim: TimerClaim) -> None:
        """A due timer, claimed by this replica only. Each kind checks the
        chat is still in the state it was set for before it acts."""
        parsed = parse_timer_name(claim.name)
        if parsed is None:
            return
        kind, chat_id = parsed
        chat = await self._live_chat_by_id(chat_id)
        if chat is None or chat.ended:
            return
        if kind == IDLE:
            await self._idle(chat, claim)
            return
        if chat.agent_joined:
            return
        status = await self._queue_status(chat)
        if status.waiting is False:
            # An agent took it (the relay may not have seen a sign of it yet,
            # or the chat was resumed after a restart): the idle count starts.
            chat.agent_joined = True
            await self._progress(chat)
            return
        if kind == NO_AGENT:
            logger.info("No agent accepted ServiceNow chat %s in time (agent_wait_timeout); leaving it.", chat.chat_id)
            await self._end(chat, EndReason.NO_AGENT, in_request=False)
        elif kind == WAITING:
            await self._tell(chat.sender_id, [self._waiting_text(status)], in_request=False)
            await self._set_timer(WAITING, chat, self.settings.waiting_notice_interval)

    def _waiting_text(self, status: QueueStatus) -> Line:
        wait_time = describe_seconds(status.wait_time)
        values = {"position": status.position, "wait_time": wait_time or "a few minutes"}
        if status.position:
            return Line("waiting_position", values)
        if wait_time:
            return Line("waiting_wait_time", values)
        return Line("waiting", values)

    async def _idle(self, chat: LiveChat, claim: TimerClaim) -> None:
        due = await self.store.timer_due_at(claim.name)
        if due is not None and round(due * 1000) != claim.held_until:
            return  # the user wrote while it was firing: it was moved
        timeout = self.settings.user_idle_timeout
        if not chat.agent_joined and (await self._queue_status(chat)).waiting is not False:
            # Resumed after a restart and still queued, or no sign of the
            # agent yet: idle counts once an agent is there.
            await self._set_timer(IDLE, chat, timeout)
            return
        logger.info("The user of ServiceNow chat %s sent nothing for %.0f s (user_idle_timeout); leaving it.", chat.chat_id, timeout)
        # To the agent, in the operator's words: not a domain response in the user's language.
        notice = fill(self.texts.user_idle_agent, {"idle_time": describe_duration(timeout)})
        async with chat.send_lock:
            if chat.ended:
                return
            try:
                await self.backend.send(chat, notice)
            except ServiceNowError as error:
                logger.warning("Could not tell the agent of chat %s that the user is idle: %s", chat.chat_id, error)
        await self._end(chat, EndReason.USER_IDLE, in_request=False)

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
            await self._restart_timers(chat)
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
        await self.timers.stop(timeout)
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

    async def _tell(
        self, sender_id: str, lines: List[Union[str, Line]], *, in_request: bool, record: bool = True
    ) -> Messages:
        """Say texts (``UserTexts`` names, or lines with placeholders), record
        them in the tracker, and deliver them."""
        messages = await self.speech.say_lines(sender_id, lines)
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


def chat_of(record: HandoffRecord) -> LiveChat:
    """This replica's chat object for a handoff record."""
    return LiveChat(
        sender_id=record.sender_id,
        chat_id=record.chat_id,
        user=record.user,
        last_updated=record.last_updated,
        seen_ids=record.seen_ids,
        agent_joined=record.agent_joined,
        wait_estimate=record.wait_estimate,
    )


def format_time(epoch_ms: Optional[float]) -> str:
    if epoch_ms is None:
        return "unknown time"
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
