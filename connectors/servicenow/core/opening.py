"""Starting a handoff: a chat opened in ServiceNow, its record filed, its
slots saved, the user told; or, when it may not start, nothing opened and the
user told why.

A handoff that may not start (``business_hours``, the Connect queue's
``not_available``, ``max_live_chats``, ``handoff_starts_per_minute``) opens
nothing and tells the user why, all through ``_refuse``; the bot then takes
its hand-back turn with the refusal's reason.

The stores fail closed here too: a chat whose record cannot be filed is not
opened (nobody could route to it), and a chat whose slots cannot be saved is
left again, with ``start_failed`` for the user either way.
"""

import asyncio
import dataclasses
import datetime
import logging
import time
from typing import Any, List, Mapping, Optional, Tuple

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.chat import LiveChat, OpensInFlight
from connectors.servicenow.core.chats import OPEN_WAIT_S, Chats
from connectors.servicenow.core.ending import leave_quietly
from connectors.servicenow.core.handback import Handback
from connectors.servicenow.core.notices import Messages, Notices
from connectors.servicenow.core.records import Records
from connectors.servicenow.core.timers import Timers
from connectors.servicenow.errors import ConversationBusy, ServiceNowError, StoreUnavailable
from connectors.servicenow.ops.observe import Observer
from connectors.servicenow.rasa_glue.nlg import Line
from connectors.servicenow.rasa_glue.slots import TrackerSlots, bot_uttered, handoff_slot_events, started_events
from connectors.servicenow.servicenow.base import Backend, HandoffRequest, Requester, Turn
from connectors.servicenow.store import REFUSED_BUSY, REFUSED_SENDER_RATE, StartLimits

logger = logging.getLogger(__name__)

#: What the agent reads first when a handoff starts outside a user's message
#: (Rasa's HTTP API) and the payload gives no ``message``.
OUT_OF_BAND_HANDOFF_TEXT = "The user asked for a live agent."


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why no chat is opened for a handoff request, and what the user hears."""

    #: ``outside_hours``, ``no_agent_available``, ``busy`` or ``rate_limited``.
    reason: str
    line: Line


#: How long an admitted start keeps its place among the live chats before
#: its record is filed: longer than opening a chat with every retry takes.
START_HOLD_S = 120.0


def start_limits(settings: ServiceNowSettings) -> StartLimits:
    """The limits on handoff starts, for the whole deployment (docs/configuration.md)."""
    rate = settings.deployment_handoff_starts_per_minute
    return StartLimits(
        max_live=settings.max_live_chats,
        per_sender=settings.handoff_starts_per_minute,
        window_s=60.0,
        interval_s=60.0 / rate if rate else 0.0,
        burst=max(1, settings.deployment_handoff_start_burst),
        hold_s=START_HOLD_S,
    )


def handoff_request(
    sender_id: str, options: Mapping[str, Any], user_text: str, metadata: Mapping[str, Any], requester: Requester
) -> HandoffRequest:
    """The request a handoff payload's ``options`` make (``message``,
    ``queue_id``, ``context_variables``, each optional)."""
    message = options.get("message")
    queue_id = options.get("queue_id")
    context_variables = options.get("context_variables")
    return HandoffRequest(
        sender_id=sender_id,
        text=message if isinstance(message, str) and message.strip() else user_text,
        metadata=metadata,
        queue_id=queue_id if isinstance(queue_id, str) and queue_id else None,
        context_variables=context_variables if isinstance(context_variables, dict) else {},
        requester=requester,
    )


def out_of_band_request(sender_id: str, options: Mapping[str, Any]) -> HandoffRequest:
    """A handoff asked for outside a user's message (Rasa's HTTP API, a hand-back turn)."""
    return handoff_request(sender_id, options, OUT_OF_BAND_HANDOFF_TEXT, {}, Requester(user_id=sender_id))


class Opening:
    def __init__(
        self,
        settings: ServiceNowSettings,
        backend: Backend,
        chats: Chats,
        in_flight: OpensInFlight,
        records: Records,
        slots: TrackerSlots,
        notices: Notices,
        timers: Timers,
        handback: Handback,
        observe: Observer,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._chats = chats
        self._registry = chats.registry
        self._in_flight = in_flight
        self._records = records
        self._slots = slots
        self._notices = notices
        self._speech = notices.speech
        self._timers = timers
        self._handback = handback
        self._observe = observe
        self._store = records.store
        self.limits = start_limits(settings)

    async def start(self, request: HandoffRequest, *, in_request: bool, requested_at: Optional[float] = None) -> Messages:
        """Open a chat for the request. ``requested_at`` (loop time) is when the
        user asked; messages they sent from then until a failed open get a
        clear answer instead of the bot (``OpensInFlight.failed_for``)."""
        sender = request.sender_id
        if sender in self._in_flight.by_sender or await self._still_live(sender) or sender in self._in_flight.by_sender:
            logger.info("Conversation %s asked for a live agent again while already connected.", sender)
            return []
        try:
            refusal = self._outside_hours(sender) or await self._admission(sender)
        except StoreUnavailable as error:
            logger.error("Not opening a chat for conversation %s: the store is unavailable: %s", sender, error)
            return await self._notices.tell(sender, ["start_failed"], in_request=in_request, record=False)
        if refusal is not None:
            return await self._refuse(sender, refusal, in_request=in_request)
        loop = asyncio.get_running_loop()
        requested_at = loop.time() if requested_at is None else requested_at
        opening: "asyncio.Future[Optional[LiveChat]]" = loop.create_future()
        self._in_flight.by_sender[sender] = opening
        chat: Optional[LiveChat] = None
        try:
            return await self._start(request, in_request)
        finally:
            del self._in_flight.by_sender[sender]
            chat = self._registry.get(sender)
            if chat is None:
                self._in_flight.failed(sender, requested_at, loop.time())
                await self._give_place_back(sender)
            opening.set_result(chat)
            if chat is not None:
                self._observe.handoff_started(sender, chat.chat_id, loop.time() - requested_at)

    async def _still_live(self, sender: str) -> bool:
        """Whether a chat held here for the sender is still live: the store
        says (another replica may have ended it). Nothing held here: the
        record filed by the start decides."""
        if self._registry.get(sender) is None:
            return False
        try:
            return await self._chats.refresh(sender) is not None
        except StoreUnavailable:
            return False  # filing the record fails the same way, and says so

    def _outside_hours(self, sender: str) -> Optional[Refusal]:
        hours = self._settings.business_hours
        if hours is None:
            return None
        now = datetime.datetime.now(datetime.timezone.utc)
        if hours.is_open(now):
            return None
        logger.info("Refused a handoff for conversation %s: outside business hours.", sender)
        return Refusal("outside_hours", Line("outside_hours", {"next_opening": hours.describe_opening(now)}))

    async def _admission(self, sender: str) -> Optional[Refusal]:
        """Whether the deployment has room for one more chat, and the
        conversation and the deployment may start one now: decided in the
        store for every replica at once (``Store.admit_handoff``), which
        holds the chat's place until its record is filed. A refusal counts
        nothing against either rate."""
        refused = await self._store.admit_handoff(sender, self.limits)
        if refused is None:
            return None
        if refused == REFUSED_SENDER_RATE:
            # INFO: one conversation's own retries must not flood the operator's warnings.
            logger.info(
                "Refused a handoff for conversation %s: more than %d starts in a minute (handoff_starts_per_minute).",
                sender, self.limits.per_sender,
            )
            return Refusal("rate_limited", Line("handoff_rate_limited"))
        if refused == REFUSED_BUSY:
            logger.warning("Refused a handoff for conversation %s: %d live chats is the limit (max_live_chats).",
                           sender, self.limits.max_live)
        else:
            logger.warning(
                "Refused a handoff for conversation %s: the deployment started %d chats in a burst "
                "(deployment_handoff_starts_per_minute, deployment_handoff_start_burst).", sender, self.limits.burst,
            )
        return Refusal("busy", Line("handoff_busy"))

    async def _give_place_back(self, sender: str) -> None:
        """A start that filed no record frees its place at once (else it expires)."""
        try:
            await self._store.release_admission(sender)
        except StoreUnavailable as error:
            logger.warning("Could not give back the place of conversation %s's failed start (it expires): %s", sender, error)

    async def _unavailable(self, request: HandoffRequest) -> Optional[Refusal]:
        """Whether ServiceNow says nobody can take a chat now (Connect: the
        queue's ``not_available``). A failed check opens the chat anyway: the
        open itself then says whether it can."""
        if not self._settings.check_queue_availability:
            return None
        try:
            reason = await self._backend.unavailable_reason(request.queue_id)
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
        messages = await self._notices.tell(sender, [refusal.line], in_request=in_request)
        # A refusal comes out of the bot's own turn, which holds the
        # conversation's lock until it returns: the hand-back turn waits for
        # that lock in the background and answers through the outbox.
        self._handback.spawn(sender, refusal.reason)
        return messages

    async def _start(self, request: HandoffRequest, in_request: bool) -> Messages:
        sender = request.sender_id
        # The end of the previous handoff must land first: its record would
        # refuse this one's, its tracker write would clear this one's slots.
        # A user's turn did this before the bot's; a start out of band (Rasa's
        # HTTP API) may come while an end waits for the store.
        try:
            await self._chats.settle_end(sender, OPEN_WAIT_S)
        except (StoreUnavailable, ConversationBusy) as error:
            logger.error("Not opening a chat for conversation %s: %s", sender, error)
            return await self._notices.tell(sender, ["start_failed"], in_request=in_request, record=False)
        unavailable = await self._unavailable(request)
        if unavailable is not None:
            return await self._refuse(sender, unavailable, in_request=in_request)
        if self._backend.wants_history:
            request = dataclasses.replace(request, history=await self._history(request))
        reserved = self._backend.reserve_chat_id()
        if reserved:
            self._in_flight.by_chat_id[reserved] = asyncio.get_running_loop().create_future()
        chat: Optional[LiveChat] = None
        # The chat id whose handoff record this start filed.
        filed: Optional[str] = None
        started_at = time.time()
        try:
            if reserved:
                # Filed before the open: ServiceNow may push the chat's first
                # callback to another replica before ``open_chat`` returns here.
                early = LiveChat(sender_id=sender, chat_id=reserved, user=request.requester.user_id or sender)
                outcome = await self._file(early, started_at, in_request)
                if outcome is not None:
                    return outcome
                filed = reserved
            opened, answer = await self._open(request, reserved, filed, started_at, in_request)
            if opened is None:
                return answer
            filed = opened.chat_id
            chat, answer = await self._save_start(opened, in_request)
            return answer
        finally:
            if filed and chat is None:
                await self._records.remove(sender, filed)
            if reserved:
                self._in_flight.by_chat_id.pop(reserved).set_result(chat)

    async def _open(
        self, request: HandoffRequest, reserved: Optional[str], filed: Optional[str], started_at: float, in_request: bool
    ) -> Tuple[Optional[LiveChat], Messages]:
        """Open the chat in ServiceNow and make sure its record is filed: the
        chat, or None and what to answer."""
        sender = request.sender_id
        try:
            opened = await self._backend.open_chat(request, reserved)
        except ServiceNowError as error:
            logger.warning("Could not open a ServiceNow chat for conversation %s: %s", sender, error)
            return None, await self._notices.tell(sender, ["start_failed"], in_request=in_request)
        chat = LiveChat(sender_id=sender, chat_id=opened.chat_id, user=opened.user, last_updated=opened.opened_at)
        if filed is not None:
            await self._records.save(chat, started_at)
            return chat, []
        outcome = await self._file(chat, started_at, in_request)
        if outcome is not None:
            await leave_quietly(self._backend, chat)
            return None, outcome
        return chat, []

    async def _file(self, chat: LiveChat, started_at: float, in_request: bool) -> Optional[Messages]:
        """File the handoff record of a chat being started. None when filed;
        otherwise what to answer: nothing when another replica started a chat
        for the sender first, ``start_failed`` when the store is down (a chat
        nobody can route to must not open)."""
        try:
            created = await self._records.file(chat, started_at)
        except StoreUnavailable as error:
            logger.error("Not opening a chat for conversation %s: the store is unavailable: %s", chat.sender_id, error)
            # Redis may have stored the record and lost only the reply (it
            # stopped right then): removed again, or it would route the
            # user's messages to a chat nobody is in. Until the removal lands
            # the conversation's messages wait for it (503, not the chat).
            await self._records.remove(chat.sender_id, chat.chat_id)
            return await self._notices.tell(chat.sender_id, ["start_failed"], in_request=in_request, record=False)
        if not created:
            logger.info("Conversation %s is already in a chat started by another replica.", chat.sender_id)
            return []
        return None

    async def _save_start(self, opened: LiveChat, in_request: bool) -> Tuple[Optional[LiveChat], Messages]:
        """Save the slots of an opened chat and take it up: the chat and what
        to answer, or None (the chat left again) when the save failed."""
        sender = opened.sender_id
        messages = await self._speech.say(sender, "connecting")
        slots = handoff_slot_events(opened.chat_id, opened.user, opened.last_updated, opened.seen_ids)
        try:
            await self._slots.write(sender, slots + started_events() + [bot_uttered(m) for m in messages])
        except StoreUnavailable as error:
            # An unsaved handoff would be forgotten by a restart with the
            # chat still open: leave it, and the user stays with the bot.
            logger.error(
                "Could not save the handoff of conversation %s to ServiceNow chat %s; leaving the chat: %s",
                sender, opened.chat_id, error,
            )
            await leave_quietly(self._backend, opened)
            return None, await self._notices.tell(sender, ["start_failed"], in_request=in_request, record=False)
        chat = self._chats.adopt(sender, opened.record(self._backend.api), fresh=True)
        assert chat is not None
        await self._timers.opened(chat)
        await self._notices.status(sender, active=True, chat_id=chat.chat_id)
        return chat, await self._notices.deliver(sender, messages, in_request=in_request)

    async def _history(self, request: HandoffRequest) -> List[Turn]:
        limit = self._settings.history_turns
        try:
            turns = await self._slots.history(request.sender_id, limit + 1)
        except StoreUnavailable as error:
            # The history is context for the agent, not worth failing the handoff over.
            logger.warning("Opening the chat without the conversation history of %s: %s", request.sender_id, error)
            return []
        # The request itself is the chat's first message; it need not repeat in the history.
        if turns and not turns[-1][1] and turns[-1][0] == request.text:
            turns = turns[:-1]
        return [Turn(text, from_bot, timestamp) for text, from_bot, timestamp in turns[-limit:]]
