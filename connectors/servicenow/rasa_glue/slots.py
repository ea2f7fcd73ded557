"""The handoff slots: the Rasa-visible, durable mirror of the store's
handoff records, and every tracker event the channel writes.

Slots (declared in ``domain.yml``):

``handoff_active``
    True while the user talks to a human agent.
``live_chat_id``
    The ServiceNow chat: the Connect conversation ``group``.
``live_chat_user``
    The ServiceNow account the chat runs as, whose own messages are filtered out.
``live_chat_last_updated``
    ServiceNow's time (epoch ms) of the newest message seen in the chat.
``live_chat_seen_ids``
    Ids of the newest messages already handled, so a message that shares a
    timestamp with others, or that ServiceNow commits late, is delivered once.

Optional slots, written only when the domain declares them (so the tracker
shows the handoff's course to a Rasa user; see handback.py):

``handoff_status``
    ``waiting`` once the chat is open, ``agent_joined``, ``ended``.
``handoff_end_reason``
    Why the last handoff ended (``user_ended``, ``agent_closed``, ...).

Transitions, each written under Rasa's lock for the conversation and saved to
the tracker store: *inactive -> active* when a chat opens, *active -> active*
when agent messages move the cursor, *active -> inactive* when the handoff
ends. Only this channel writes these slots.

Rasa wraps every tracker store in ``FailSafeTrackerStore``, which answers a
failed read with "no tracker" and a failed save by saving to memory. That is
right for the bot's own turns and wrong for the handoff flag: a user in
handoff would look like a new user and reach the bot. So these reads and
writes go to the configured store itself, and its failures surface as
``StoreUnavailable``.
"""

import asyncio
import logging
from typing import Any, AsyncIterator, List, Mapping, Optional, Sequence, Tuple

from rasa.shared.core.events import BotUttered, Event, SlotSet, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker

from connectors.servicenow.errors import StoreUnavailable
from connectors.servicenow.rasa_glue.channels import Agent, AgentSource
from connectors.servicenow.rasa_glue.versions import FailSafeTrackerStore, TrackerStore
from connectors.servicenow.retry import Pauses
from connectors.servicenow.store import HandoffRecord

logger = logging.getLogger(__name__)

#: A tracker event (``rasa.shared.core.events.Event``; Rasa ships no type
#: information), as the core hands them around without looking inside.
TrackerEvent = Any

SLOT_ACTIVE = "handoff_active"
SLOT_CHAT_ID = "live_chat_id"
SLOT_USER = "live_chat_user"
SLOT_LAST_UPDATED = "live_chat_last_updated"
SLOT_SEEN_IDS = "live_chat_seen_ids"
HANDOFF_SLOTS = (SLOT_ACTIVE, SLOT_CHAT_ID, SLOT_USER, SLOT_LAST_UPDATED, SLOT_SEEN_IDS)
SLOT_STATUS = "handoff_status"
SLOT_END_REASON = "handoff_end_reason"
#: Written only if the domain declares them (Rasa logs an error for a SlotSet of an unknown slot).
OPTIONAL_SLOTS = frozenset((SLOT_STATUS, SLOT_END_REASON))

#: Values of the ``handoff_status`` slot, when the domain declares it.
STATUS_WAITING = "waiting"
STATUS_AGENT_JOINED = "agent_joined"
STATUS_ENDED = "ended"

# Waiting on Rasa's ticket lock polls at this interval (Rasa's default is 1 s,
# which would put up to a second on every agent message that races a write).
LOCK_POLL_S = 0.02
# A failed write of the handoff state is tried again after each of these
# pauses: four attempts within 1.3 s, short enough to stay inside a webhook
# request, long enough to ride out a dropped connection or a failover.
WRITE_PAUSES = Pauses((0.1, 0.3, 0.9))
#: Trackers read at once by the start-up scan.
SCAN_CONCURRENCY = 8


# -- the events the channel writes ----------------------------------------------


def handoff_slot_events(chat_id: str, user: Optional[str], last_updated: Optional[float], seen_ids: Sequence[str]) -> List[Event]:
    """The slots of a handoff that just opened."""
    return [
        SlotSet(SLOT_ACTIVE, True),
        SlotSet(SLOT_CHAT_ID, chat_id),
        SlotSet(SLOT_USER, user),
        SlotSet(SLOT_LAST_UPDATED, last_updated),
        SlotSet(SLOT_SEEN_IDS, list(seen_ids)),
    ]


def cursor_events(last_updated: Optional[float], seen_ids: Sequence[str]) -> List[Event]:
    return [SlotSet(SLOT_LAST_UPDATED, last_updated), SlotSet(SLOT_SEEN_IDS, list(seen_ids))]


def cleared_slot_events() -> List[Event]:
    return [
        SlotSet(SLOT_ACTIVE, False),
        SlotSet(SLOT_CHAT_ID, None),
        SlotSet(SLOT_USER, None),
        SlotSet(SLOT_LAST_UPDATED, None),
        SlotSet(SLOT_SEEN_IDS, None),
    ]


def started_events() -> List[Event]:
    """What a new handoff adds to the tracker besides the handoff slots: a
    status to follow, and no reason left over from an earlier handoff."""
    return [SlotSet(SLOT_STATUS, STATUS_WAITING), SlotSet(SLOT_END_REASON, None)]


def agent_joined_events() -> List[Event]:
    return [SlotSet(SLOT_STATUS, STATUS_AGENT_JOINED)]


def ended_events(reason: str) -> List[Event]:
    return [SlotSet(SLOT_STATUS, STATUS_ENDED), SlotSet(SLOT_END_REASON, reason)]


def bot_uttered(message: Mapping[str, Any]) -> BotUttered:
    """Record a message the channel delivered itself, so the tracker keeps
    the whole conversation, agent part included."""
    data = {key: value for key, value in message.items() if key not in ("recipient_id", "text", "metadata")}
    return BotUttered(text=message.get("text"), data=data, metadata=message.get("metadata") or {})


def user_message_event(text: str, chat_id: str, input_channel: str = "servicenow") -> UserUttered:
    """A user's message to the agent, for the tracker only: no intent, no
    entities, NLU never ran on it. It is never followed by an action, so no
    policy ever sees it as the latest message: the next turn (the hand-back
    turn, or the user's next message to the bot) brings its own."""
    return UserUttered(
        text=text,
        intent=None,
        input_channel=input_channel,
        metadata={"source": "user", "handoff": {"chat_id": chat_id}},
    )


def _not_typed(event: Event) -> bool:
    """A user turn nobody typed: Rasa's external intents (the hand-back turn,
    reminders) and the hand-back payload a CALM assistant gets (handback.py)."""
    metadata = getattr(event, "metadata", None) or {}
    handoff = metadata.get("handoff")
    return isinstance(event, UserUttered) and (
        bool(metadata.get("is_external")) or (isinstance(handoff, dict) and "ended" in handoff)
    )


def coalesced(events: Sequence[Event]) -> List[Event]:
    """The events in order, but only the last value of each slot."""
    last_slot = {event.key: index for index, event in enumerate(events) if isinstance(event, SlotSet)}
    return [
        event for index, event in enumerate(events) if not isinstance(event, SlotSet) or last_slot[event.key] == index
    ]


def without_slots(events: Sequence[Event]) -> List[Event]:
    """The transcript records among ``events``, without slot changes."""
    return [event for event in events if not isinstance(event, SlotSet)]


def record_from_tracker(tracker: DialogueStateTracker, api: str) -> Optional[HandoffRecord]:
    """The handoff a tracker's slots hold, if active."""
    if tracker.get_slot(SLOT_ACTIVE) is not True:
        return None
    chat_id = tracker.get_slot(SLOT_CHAT_ID)
    if not chat_id:
        logger.warning("Conversation %s has '%s' set without '%s'; ignoring it.", tracker.sender_id, SLOT_ACTIVE, SLOT_CHAT_ID)
        return None
    last_updated = tracker.get_slot(SLOT_LAST_UPDATED)
    seen = tracker.get_slot(SLOT_SEEN_IDS) or ()
    return HandoffRecord(
        sender_id=tracker.sender_id,
        chat_id=str(chat_id),
        api=api,
        user=tracker.get_slot(SLOT_USER),
        last_updated=float(last_updated) if isinstance(last_updated, (int, float)) else None,
        seen_ids=tuple(str(item) for item in seen),
    )


# -- reading and writing ----------------------------------------------------------


class TrackerSlots:
    """Reads and writes the handoff slots in the tracker store, failing loudly;
    the store's ``HandoffMirror``."""

    def __init__(self, agent: AgentSource, api: str, write_pauses: Pauses = WRITE_PAUSES) -> None:
        self._agent = agent
        self._api = api
        self.write_pauses = write_pauses

    def _ready_agent(self) -> Agent:
        agent = self._agent()
        if agent is None or agent.tracker_store is None or agent.lock_store is None:
            raise StoreUnavailable("the Rasa agent is not loaded yet")
        return agent

    def _store(self) -> TrackerStore:
        """The configured store, unwrapped from Rasa's ``FailSafeTrackerStore``
        (which keeps it as ``_tracker_store``) so that its errors reach us."""
        store = self._ready_agent().tracker_store
        while isinstance(store, FailSafeTrackerStore):
            store = store._tracker_store
        return store

    def missing_slots(self) -> List[str]:
        agent = self._agent()
        if agent is None or agent.domain is None:
            return []
        declared = {slot.name for slot in agent.domain.slots}
        return [name for name in HANDOFF_SLOTS if name not in declared]

    async def _retrieve(self, sender_id: str) -> Optional[DialogueStateTracker]:
        store = self._store()
        try:
            return await store.retrieve(sender_id)
        except Exception as error:
            raise StoreUnavailable(f"reading the tracker of conversation {sender_id} failed: {describe(error)}") from error

    async def load_handoff(self, sender_id: str) -> Optional[HandoffRecord]:
        """The conversation's handoff, if active. Reads without side effects;
        ``StoreUnavailable`` when the store cannot say."""
        tracker = await self._retrieve(sender_id)
        return record_from_tracker(tracker, self._api) if tracker is not None else None

    async def history(self, sender_id: str, limit: int) -> List[Tuple[str, bool, float]]:
        """The last ``limit`` user and bot texts of the current session, oldest
        first, as ``(text, from_bot, epoch_ms)``."""
        if limit <= 0:
            return []
        tracker = await self._retrieve(sender_id)
        if tracker is None:
            return []
        turns = [
            (str(event.text), isinstance(event, BotUttered), event.timestamp * 1000)
            for event in tracker.events
            if isinstance(event, (UserUttered, BotUttered)) and event.text and not _not_typed(event)
        ]
        return turns[-limit:]

    async def write(self, sender_id: str, events: Sequence[Event]) -> None:
        """Append events to the conversation's tracker, retrying a failing
        store; ``StoreUnavailable`` once every attempt failed."""
        delays = self.write_pauses.delays
        attempts = len(delays) + 1
        for attempt in range(1, attempts + 1):
            try:
                await self._write_once(sender_id, events)
                return
            except Exception as error:
                if attempt == attempts:
                    raise StoreUnavailable(
                        f"saving the handoff state of conversation {sender_id} failed {attempts} times: {describe(error)}"
                    ) from error
                delay = self.write_pauses.after(attempt - 1)
                logger.warning(
                    "Saving the handoff state of conversation %s failed (attempt %d of %d, retrying in %.1f s): %s",
                    sender_id, attempt, attempts, delay, describe(error),
                )
                await asyncio.sleep(delay)

    async def _write_once(self, sender_id: str, events: Sequence[Event]) -> None:
        agent = self._ready_agent()
        store = self._store()
        async with agent.lock_store.lock(sender_id, wait_time_in_seconds=LOCK_POLL_S):
            # Not processor.get_tracker(): through the fail-safe wrapper a
            # failed read becomes a fresh tracker, and saving that appends
            # these events to the wrong history once the store is back.
            tracker = await store.retrieve(sender_id)
            if tracker is None:
                tracker = store.init_tracker(sender_id)
            if agent.processor is not None:
                metadata = agent.processor.model_metadata
                tracker.model_id = metadata.model_id
                if tracker.assistant_id is None:
                    tracker.assistant_id = metadata.assistant_id
            declared = {slot.name for slot in agent.domain.slots} if agent.domain is not None else set()
            for event in events:
                if isinstance(event, SlotSet) and event.key in OPTIONAL_SLOTS and event.key not in declared:
                    continue
                tracker.update(event, agent.domain)
            await store.save(tracker)

    async def live_handoffs(self) -> AsyncIterator[HandoffRecord]:
        """Every conversation whose tracker says it is in handoff (read after
        a restart); ``StoreUnavailable`` when the store cannot list them."""
        store = self._store()
        try:
            keys = list(await store.keys())
        except Exception as error:
            raise StoreUnavailable(f"listing the conversations failed: {describe(error)}") from error
        semaphore = asyncio.Semaphore(SCAN_CONCURRENCY)

        async def load(key: str) -> Optional[HandoffRecord]:
            async with semaphore:
                try:
                    return await self.load_handoff(key)
                except StoreUnavailable as error:  # one broken tracker must not stop the others resuming
                    logger.error("Not resuming conversation %s now: %s", key, error)
                    return None

        for chunk_start in range(0, len(keys), 256):
            chunk = keys[chunk_start : chunk_start + 256]
            for record in await asyncio.gather(*(load(key) for key in chunk)):
                if record is not None:
                    yield record


def describe(error: BaseException) -> str:
    """A store error for the log, without the statement and its parameters
    that SQLAlchemy appends (they hold the conversation's messages)."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"
