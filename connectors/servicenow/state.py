"""The handoff state of a conversation: tracker slots as the durable truth,
and an in-process registry so the per-message flag check costs no tracker load.

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
ends. Only this channel writes these slots; the registry relies on that.

Rasa wraps every tracker store in ``FailSafeTrackerStore``, which answers a
failed read with "no tracker" and a failed save by saving to memory. That is
right for the bot's own turns and wrong for the handoff flag: a user in
handoff would look like a new user and reach the bot. So these reads and
writes go to the configured store itself, and its failures surface as
``StoreUnavailable``.
"""

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from rasa.core.agent import Agent
from rasa.shared.core.events import BotUttered, Event, SlotSet, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker

from connectors.servicenow.errors import ConversationBusy, StoreUnavailable
from connectors.servicenow.rasa_glue.versions import FailSafeTrackerStore, TrackerStore

logger = logging.getLogger(__name__)

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

# Waiting on Rasa's ticket lock polls at this interval (Rasa's default is 1 s,
# which would put up to a second on every agent message that races a write).
LOCK_POLL_S = 0.02
# A failed write of the handoff state is tried again after each of these
# pauses: four attempts within 1.3 s, short enough to stay inside a webhook
# request, long enough to ride out a dropped connection or a failover.
WRITE_RETRY_DELAYS_S = (0.1, 0.3, 0.9)
# How many recent message ids a chat keeps to recognise what it has handled.
SEEN_IDS_KEPT = 100


@dataclass(eq=False, slots=True)
class LiveChat:
    """One conversation in handoff. The first five fields mirror the slots;
    the rest lives only in this process."""

    sender_id: str
    chat_id: str
    user: Optional[str] = None
    last_updated: Optional[float] = None
    seen_ids: Tuple[str, ...] = ()
    #: Set once the handoff has ended, so late pollers and callbacks stand down.
    ended: bool = False
    #: Keeps the user's messages in order on their way to ServiceNow.
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    #: Keeps agent events in order on their way to the user.
    dispatch_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    #: A live agent has accepted; queue notices that arrive later are stale.
    agent_joined: bool = False
    #: ServiceNow's latest wait estimate while queued (Virtual Agent's wait spinner).
    wait_estimate: Optional[str] = None

    def slot_events(self) -> List[Event]:
        return [
            SlotSet(SLOT_ACTIVE, True),
            SlotSet(SLOT_CHAT_ID, self.chat_id),
            SlotSet(SLOT_USER, self.user),
            SlotSet(SLOT_LAST_UPDATED, self.last_updated),
            SlotSet(SLOT_SEEN_IDS, list(self.seen_ids)),
        ]

    def cursor_events(self) -> List[Event]:
        return [SlotSet(SLOT_LAST_UPDATED, self.last_updated), SlotSet(SLOT_SEEN_IDS, list(self.seen_ids))]

    def note_message(self, message_id: Optional[str], timestamp: Optional[float]) -> None:
        """Move the cursor past a message this side has seen (or written)."""
        if timestamp is not None and (self.last_updated is None or timestamp > self.last_updated):
            self.last_updated = timestamp
        if message_id and message_id not in self.seen_ids:
            self.seen_ids = ((message_id,) + self.seen_ids)[:SEEN_IDS_KEPT]

    @classmethod
    def from_tracker(cls, tracker: DialogueStateTracker) -> Optional["LiveChat"]:
        if tracker.get_slot(SLOT_ACTIVE) is not True:
            return None
        chat_id = tracker.get_slot(SLOT_CHAT_ID)
        if not chat_id:
            logger.warning(
                "Conversation %s has '%s' set without '%s'; ignoring it.", tracker.sender_id, SLOT_ACTIVE, SLOT_CHAT_ID
            )
            return None
        last_updated = tracker.get_slot(SLOT_LAST_UPDATED)
        seen = tracker.get_slot(SLOT_SEEN_IDS) or ()
        return cls(
            sender_id=tracker.sender_id,
            chat_id=str(chat_id),
            user=tracker.get_slot(SLOT_USER),
            last_updated=float(last_updated) if isinstance(last_updated, (int, float)) else None,
            seen_ids=tuple(str(item) for item in seen),
        )


def cleared_slot_events() -> List[Event]:
    return [
        SlotSet(SLOT_ACTIVE, False),
        SlotSet(SLOT_CHAT_ID, None),
        SlotSet(SLOT_USER, None),
        SlotSet(SLOT_LAST_UPDATED, None),
        SlotSet(SLOT_SEEN_IDS, None),
    ]


def bot_uttered(message: Dict[str, Any]) -> BotUttered:
    """Record a message the channel delivered itself, so the tracker keeps
    the whole conversation, agent part included."""
    data = {key: value for key, value in message.items() if key not in ("recipient_id", "text", "metadata")}
    return BotUttered(text=message.get("text"), data=data, metadata=message.get("metadata") or {})


def _not_typed(event: Event) -> bool:
    """A user turn nobody typed: Rasa's external intents (the hand-back turn,
    reminders) and the hand-back payload a CALM assistant gets (handback.py)."""
    metadata = getattr(event, "metadata", None) or {}
    handoff = metadata.get("handoff")
    return isinstance(event, UserUttered) and (
        bool(metadata.get("is_external")) or (isinstance(handoff, dict) and "ended" in handoff)
    )


class TrackerSlots:
    """Reads and writes the handoff slots in the tracker store, failing loudly."""

    def __init__(
        self, agent: Callable[[], Optional[Agent]], retry_delays: Sequence[float] = WRITE_RETRY_DELAYS_S
    ) -> None:
        self._agent = agent
        self._retry_delays = tuple(retry_delays)

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

    async def load(self, sender_id: str) -> Optional[LiveChat]:
        """The conversation's handoff, if active. Reads without side effects;
        ``StoreUnavailable`` when the store cannot say."""
        tracker = await self._retrieve(sender_id)
        return LiveChat.from_tracker(tracker) if tracker is not None else None

    async def history(self, sender_id: str, limit: int) -> List[Tuple[str, bool, float]]:
        """The last ``limit`` user and bot texts of the current session, oldest
        first, as ``(text, from_bot, epoch_ms)``."""
        if limit <= 0:
            return []
        tracker = await self._retrieve(sender_id)
        if tracker is None:
            return []
        turns = [
            (event.text, isinstance(event, BotUttered), event.timestamp * 1000)
            for event in tracker.events
            if isinstance(event, (UserUttered, BotUttered)) and event.text and not _not_typed(event)
        ]
        return turns[-limit:]

    async def write(self, sender_id: str, events: Sequence[Event]) -> None:
        """Append events to the conversation's tracker, retrying a failing
        store; ``StoreUnavailable`` once every attempt failed."""
        attempts = len(self._retry_delays) + 1
        for attempt, delay in enumerate(self._retry_delays + (None,), start=1):
            try:
                await self._write_once(sender_id, events)
                return
            except Exception as error:
                if delay is None:
                    raise StoreUnavailable(
                        f"saving the handoff state of conversation {sender_id} failed {attempts} times: {describe(error)}"
                    ) from error
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

    async def active_chats(self, concurrency: int = 8) -> AsyncIterator[LiveChat]:
        """Every conversation whose tracker says it is in handoff (used after a
        restart); ``StoreUnavailable`` when the store cannot list them."""
        store = self._store()
        try:
            keys = list(await store.keys())
        except Exception as error:
            raise StoreUnavailable(f"listing the conversations failed: {describe(error)}") from error
        semaphore = asyncio.Semaphore(concurrency)

        async def load(key: str) -> Optional[LiveChat]:
            async with semaphore:
                try:
                    return await self.load(key)
                except StoreUnavailable as error:  # one broken tracker must not stop the others resuming
                    logger.error("Not resuming conversation %s now: %s", key, error)
                    return None

        for chunk_start in range(0, len(keys), 256):
            chunk = keys[chunk_start : chunk_start + 256]
            for chat in await asyncio.gather(*(load(key) for key in chunk)):
                if chat is not None:
                    yield chat


class HandoffRegistry:
    """Which conversations are in handoff, as far as this process knows.

    Active chats are held in full. Conversations known to be *not* in handoff
    are remembered in a bounded LRU, so a busy bot does not reload trackers
    to answer the same question twice, and memory stays flat.
    """

    def __init__(self, inactive_capacity: int = 100_000) -> None:
        self._active: Dict[str, LiveChat] = {}
        self._by_chat_id: Dict[str, LiveChat] = {}
        self._inactive: "OrderedDict[str, None]" = OrderedDict()
        self._inactive_capacity = inactive_capacity

    def __len__(self) -> int:
        return len(self._active)

    def __iter__(self) -> Iterable[LiveChat]:
        return iter(list(self._active.values()))

    def get(self, sender_id: str) -> Optional[LiveChat]:
        return self._active.get(sender_id)

    def by_chat_id(self, chat_id: str) -> Optional[LiveChat]:
        return self._by_chat_id.get(chat_id)

    def known_inactive(self, sender_id: str) -> bool:
        if sender_id in self._inactive:
            self._inactive.move_to_end(sender_id)
            return True
        return False

    def activate(self, chat: LiveChat) -> LiveChat:
        """Register a chat; if one is already registered for the sender, keep that one."""
        self._inactive.pop(chat.sender_id, None)
        registered = self._active.setdefault(chat.sender_id, chat)
        self._by_chat_id.setdefault(registered.chat_id, registered)
        return registered

    def deactivate(self, chat: LiveChat) -> bool:
        """Unregister; False when the chat had already ended (so ending runs once)."""
        if chat.ended:
            return False
        chat.ended = True
        if self._active.get(chat.sender_id) is chat:
            del self._active[chat.sender_id]
        if self._by_chat_id.get(chat.chat_id) is chat:
            del self._by_chat_id[chat.chat_id]
        self.mark_inactive(chat.sender_id)
        return True

    def mark_inactive(self, sender_id: str) -> None:
        if sender_id in self._active:
            return
        self._inactive[sender_id] = None
        self._inactive.move_to_end(sender_id)
        while len(self._inactive) > self._inactive_capacity:
            self._inactive.popitem(last=False)


@dataclass(eq=False)
class _Turns:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ConversationLocks:
    """One first-come-first-served lock per conversation, so that its
    messages are handled one after the other in arrival order: a message
    sent while the previous one opens a handoff goes to the agent once the
    chat is open, never to the bot. Entries go when nobody holds or waits."""

    def __init__(self) -> None:
        self._turns: Dict[str, _Turns] = {}

    def __len__(self) -> int:
        return len(self._turns)

    @contextlib.asynccontextmanager
    async def hold(self, sender_id: str, timeout: float) -> AsyncIterator[None]:
        """Hold the conversation's lock; ``ConversationBusy`` after waiting ``timeout``."""
        turns = self._turns.setdefault(sender_id, _Turns())
        turns.users += 1
        try:
            try:
                await asyncio.wait_for(turns.lock.acquire(), timeout)
            except asyncio.TimeoutError:
                raise ConversationBusy(f"conversation {sender_id} is busy with an earlier message") from None
            try:
                yield
            finally:
                turns.lock.release()
        finally:
            turns.users -= 1
            if not turns.users:
                del self._turns[sender_id]


def describe(error: BaseException) -> str:
    """A store error for the log, without the statement and its parameters
    that SQLAlchemy appends (they hold the conversation's messages)."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def now_ms() -> float:
    return time.time() * 1000
