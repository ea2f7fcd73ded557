"""The relay carries what the agent side says to the user.

For a pull backend (Connect) it runs one polling loop per live chat: fast
while the chat is active, slower once it has been quiet for a while, with a
periodic check of the session state in place of a poll. Push backends hand
their events to ``dispatch`` directly.

``dispatch`` is where both meet: per chat and in order, it drops what was
already handled, queues messages and typing for delivery, moves the chat's
cursor in the tracker (together with a record of the delivered messages),
and reports the end of the chat. Delivery is queued first; the tracker write
follows up to two seconds later, coalesced with others, so it never delays a
delivery. A graceful shutdown waits for both, so a restart neither loses nor
repeats; a crash can repeat what arrived in its last two seconds.
"""

import asyncio
import logging
import time
import uuid
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Set, Tuple

from rasa.shared.core.events import Event, SlotSet

from connectors.servicenow.backends.base import (
    AgentEvent,
    AgentJoined,
    AgentMessage,
    AgentTyping,
    Backend,
    ChatClosed,
    PollResult,
    SystemNotice,
)
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.delivery import TYPING_EVENT, Outbox, Outgoing, status_item
from connectors.servicenow.errors import ServiceNowError, StoreUnavailable
from connectors.servicenow.handback import agent_joined_events
from connectors.servicenow.observe import Observer
from connectors.servicenow.state import LiveChat, TrackerSlots, bot_uttered
from connectors.servicenow.store import Store

logger = logging.getLogger(__name__)

OnClosed = Callable[[LiveChat, ChatClosed], Awaitable[Any]]
OnFailed = Callable[[LiveChat, ServiceNowError], Awaitable[Any]]
OnCursor = Callable[[LiveChat], Awaitable[Any]]
#: The chat moved on while queued: an agent joined, or a new wait estimate came.
OnProgress = Callable[[LiveChat], Awaitable[Any]]

# Pushed callbacks can overtake each other. The end of a chat waits this long
# so that an agent's last message, pushed just before the close, still
# reaches the user before the "chat ended" notice.
END_GRACE_S = 0.5
# Tracker writes (the cursor, the delivered messages) wait this long and go
# out together: a tracker load and save per agent message would sit on the
# event loop, in the way of the next delivery, and the tracker store (SQL in
# production) would see one write per message instead of one per chat and
# interval. A crash loses at most this much of the cursor: Connect then
# shows the messages of those seconds again.
PERSIST_DELAY_S = 2.0
#: How long an agent message id is remembered across the deployment (shared
#: store) to deliver it once: longer than any cursor can lag behind.
MESSAGE_DEDUPE_TTL_S = 3600.0
POLL_LEASE_PREFIX = "poll:"


def poll_lease(chat_id: str) -> str:
    """The lease name of polling Connect chat ``chat_id`` (shared store)."""
    return POLL_LEASE_PREFIX + chat_id


def chat_of_poll_lease(name: str) -> Optional[str]:
    return name[len(POLL_LEASE_PREFIX) :] if name.startswith(POLL_LEASE_PREFIX) else None


def lease_time(delay: float) -> float:
    """A polling lease outlives one missed renewal, no more: a dead poller's
    chats are free again two intervals after its last poll."""
    return 2 * delay + 0.5


class PollSchedule:
    """When a chat is polled next, and whether that tick checks the session
    state instead. One ServiceNow request per tick keeps the request rate at
    ``1 / poll_interval`` for an active chat and ``1 / idle_poll_interval``
    for a quiet one.

    The state check stands in for a poll only once the chat has been quiet
    for ``session_check_interval``: while messages flow the system messages
    announce the end anyway, and a skipped poll would delay the next reply
    by a whole interval."""

    def __init__(self, settings: ServiceNowSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._last_activity = clock()
        self._last_state_check = self._last_activity

    def note_activity(self) -> None:
        self._last_activity = self._clock()

    def is_active(self) -> bool:
        return self._clock() - self._last_activity < self._settings.idle_after

    def delay(self) -> float:
        return self._settings.poll_interval if self.is_active() else self._settings.idle_poll_interval

    def state_check_due(self) -> bool:
        now = self._clock()
        interval = self._settings.session_check_interval
        if now - self._last_activity < interval or now - self._last_state_check < interval:
            return False
        self._last_state_check = now
        return True


class _Poller:
    def __init__(self, schedule: PollSchedule, chat_id: str) -> None:
        self.schedule = schedule
        self.chat_id = chat_id
        self.wake = asyncio.Event()
        self.task: Optional["asyncio.Task[None]"] = None
        self._last_tick = time.monotonic()

    async def sleep(self) -> None:
        """Wait for the next tick.

        Ticks keep their cadence: the poll's own time counts towards the
        interval, and the next tick is planned from when this one was due,
        not from when a busy event loop got round to it, so a chat is polled
        exactly once per interval on average instead of drifting later with
        every late wake-up. Activity cuts an idle wait short."""
        while True:
            self.wake.clear()
            remaining = self.schedule.delay() - (time.monotonic() - self._last_tick)
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                break
            if self.wake.is_set():
                self._last_tick = time.monotonic()
                return
        self._last_tick = next_tick(self._last_tick, self.schedule.delay(), time.monotonic())


def next_tick(previous: float, interval: float, now: float) -> float:
    """When the tick that is starting now was due: one interval after the
    previous one, or now when a stall (or a change of interval) left that
    more than an interval behind, so missed ticks are not made up in a burst."""
    due = previous + interval
    return due if now - due < interval else now


class Relay:
    def __init__(
        self,
        settings: ServiceNowSettings,
        backend: Backend,
        outbox: Outbox,
        slots: TrackerSlots,
        *,
        on_closed: OnClosed,
        on_failed: OnFailed,
        store: Optional[Store] = None,
        on_cursor: Optional[OnCursor] = None,
        on_progress: Optional[OnProgress] = None,
    ) -> None:
        """``store``: the shared store, when replicas share the work: a chat
        is then polled only under its lease, and agent messages are
        delivered once per deployment. ``on_cursor`` saves a moved cursor there."""
        self._settings = settings
        self._store = store
        self._on_cursor = on_cursor
        self._on_progress = on_progress
        #: This replica, as a lease holder.
        self.owner = f"{uuid.uuid4().hex[:12]}"
        self._backend = backend
        self._outbox = outbox
        self._slots = slots
        self._on_closed = on_closed
        self._on_failed = on_failed
        self._pollers: Dict[str, _Poller] = {}
        self._dispatches: Set["asyncio.Task[Any]"] = set()
        self._unsaved: Dict[str, List[Event]] = {}
        self._savers: Dict[str, "asyncio.Task[None]"] = {}
        self._stopping = False
        self.observe = Observer()  # replaced by the handoff manager's
        # Lease calls under way: a stop waits for them before letting go.
        self._lease_calls: Set["asyncio.Task[bool]"] = set()

    # -- lifecycle of one chat ---------------------------------------------

    def watch(self, chat: LiveChat) -> None:
        """Start relaying the chat's agent side. Idempotent."""
        if not self._backend.pulls or chat.sender_id in self._pollers or chat.ended:
            return
        poller = _Poller(PollSchedule(self._settings), chat.chat_id)
        poller.task = asyncio.create_task(self._poll_loop(chat, poller), name=f"servicenow-poll-{chat.sender_id}")
        self._pollers[chat.sender_id] = poller

    def unwatch(self, chat: LiveChat) -> None:
        poller = self._pollers.pop(chat.sender_id, None)
        if poller and poller.task and poller.task is not asyncio.current_task():
            poller.task.cancel()

    def note_activity(self, chat: LiveChat) -> None:
        """The user wrote: an answer is likely soon, so poll at the fast rate."""
        poller = self._pollers.get(chat.sender_id)
        if poller:
            was_idle = not poller.schedule.is_active()
            poller.schedule.note_activity()
            if was_idle:
                poller.wake.set()

    @property
    def watched(self) -> int:
        return len(self._pollers)

    def is_watching(self, chat: LiveChat) -> bool:
        return chat.sender_id in self._pollers

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop polling, let deliveries under way finish, save what is unsaved."""
        self._stopping = True
        pollers = list(self._pollers.values())
        self._pollers.clear()
        for poller in pollers:
            if poller.task:
                poller.task.cancel()
        # Pending saves need not wait out their delay: they happen below.
        for saver in self._savers.values():
            saver.cancel()
        tasks = [poller.task for poller in pollers if poller.task] + list(self._dispatches)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for sender_id in list(self._unsaved):
            await self._save(sender_id)
        if self._lease_calls:
            # A cancelled loop's last renewal may still reach Redis, on its own
            # connection, after a release sent on another: let it land first.
            await asyncio.wait(list(self._lease_calls), timeout=timeout)
        if self._store is not None:
            # Another replica takes the chats over at once, not after expiry.
            for chat_id in [poller.chat_id for poller in pollers]:
                try:
                    await self._store.release_lease(poll_lease(chat_id), self.owner)
                except StoreUnavailable as error:
                    logger.warning("Could not release the polling lease of chat %s: %s", chat_id, error)

    # -- saving to the tracker -------------------------------------------------

    def _save_soon(self, chat: LiveChat, events: List[Event]) -> None:
        self.save_later(chat.sender_id, events)

    def save_later(self, sender_id: str, events: List[Event]) -> None:
        """Queue tracker events for the next coalesced save."""
        self._unsaved.setdefault(sender_id, []).extend(events)
        if sender_id not in self._savers:
            self._savers[sender_id] = self._track(self._save_later(sender_id))

    async def _save_later(self, sender_id: str) -> None:
        await asyncio.sleep(PERSIST_DELAY_S)
        await self._save(sender_id)

    async def flush(self, chat: LiveChat) -> None:
        """Save the chat's pending tracker events now."""
        saver = self._savers.get(chat.sender_id)
        if saver is not None and saver is not asyncio.current_task():
            saver.cancel()
        await self._save(chat.sender_id)

    def take_unsaved(self, chat: LiveChat) -> List[Event]:
        """Hand over the chat's pending tracker events (the end of the handoff
        saves them in its own write, so they cannot land after it)."""
        saver = self._savers.pop(chat.sender_id, None)
        if saver is not None and saver is not asyncio.current_task():
            saver.cancel()
        return coalesced(self._unsaved.pop(chat.sender_id, []))

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

    def give_back_unsaved(self, chat: LiveChat, events: List[Event]) -> None:
        """Take back what ``take_unsaved`` handed over, when that write failed."""
        self._keep(chat.sender_id, events)

    def _keep(self, sender_id: str, events: List[Event]) -> None:
        if not events:
            return
        self._unsaved[sender_id] = events + self._unsaved.get(sender_id, [])
        if sender_id not in self._savers and not self._stopping:
            self._savers[sender_id] = self._track(self._save_later(sender_id))

    # -- polling -----------------------------------------------------------

    async def _poll_loop(self, chat: LiveChat, poller: _Poller) -> None:
        while not chat.ended:
            await poller.sleep()
            if chat.ended:
                return
            if self._store is not None and not await self._hold_lease(chat, poller):
                return
            before = (chat.last_updated, chat.seen_ids)
            try:
                if poller.schedule.state_check_due():
                    closed = await self._backend.check_closed(chat)
                    result = PollResult([closed], chat.last_updated, chat.seen_ids) if closed else None
                else:
                    result = await self._backend.poll(chat)
            except ServiceNowError as error:
                if not chat.ended:
                    logger.warning("Polling ServiceNow chat %s keeps failing: %s", chat.chat_id, error)
                    await self._on_failed(chat, error)
                return
            except Exception:
                logger.exception("Unexpected error while polling ServiceNow chat %s; retrying.", chat.chat_id)
                continue
            if result is None or chat.ended:
                continue
            if not result.events:
                # Nothing to deliver (the usual poll): move the cursor in
                # place. Only this loop dispatches a polled chat, so no
                # delivery can be under way to race with it.
                chat.last_updated, chat.seen_ids = result.last_updated, tuple(result.seen_ids)
            else:
                poller.schedule.note_activity()
                # Shielded: a shutdown that cancels the loop must not cut a
                # delivery off between queueing messages and saving the cursor.
                await asyncio.shield(self._track(self.dispatch(chat, result.events, result)))
            if self._on_cursor is not None and not chat.ended and (chat.last_updated, chat.seen_ids) != before:
                # The replica that takes over polling starts from here.
                await self._on_cursor(chat)

    async def _hold_lease(self, chat: LiveChat, poller: _Poller) -> bool:
        """Take or renew this chat's polling lease (shared store). False, and
        the loop ends, when another replica polls it; a store that fails
        skips the tick (nobody else can take the lease meanwhile either)."""
        name = poll_lease(chat.chat_id)
        while True:
            try:
                call = asyncio.ensure_future(
                    self._store.acquire_lease(name, self.owner, lease_time(poller.schedule.delay()))
                )
                self._lease_calls.add(call)
                call.add_done_callback(self._lease_calls.discard)
                if await asyncio.shield(call):
                    return True
            except StoreUnavailable as error:
                logger.warning("Not polling ServiceNow chat %s this time: %s", chat.chat_id, error)
                await poller.sleep()
                if chat.ended:
                    return False
                continue
            if self._pollers.get(chat.sender_id) is poller:
                del self._pollers[chat.sender_id]
            logger.debug("ServiceNow chat %s is polled by another replica.", chat.chat_id)
            return False

    # -- delivery ----------------------------------------------------------

    async def dispatch(
        self,
        chat: LiveChat,
        events: Sequence[AgentEvent],
        cursor: Optional[PollResult] = None,
        *,
        dedupe_key: Optional[str] = None,
        dedupe_ttl: float = 0.0,
    ) -> bool:
        """Deliver events in order, at most once each, then save the cursor.

        With ``dedupe_key`` (a pushed callback, on the shared store) what the
        events say is stored in one step with the key, before this returns,
        and an end of the chat is handled in the background: False when the
        key was seen before (a repeat, dropped); ``StoreUnavailable`` when
        nothing could be stored (nothing changed, the push may come again)."""
        closed: Optional[ChatClosed] = None
        arrived = time.monotonic()
        async with chat.dispatch_lock:
            if chat.ended:
                return True
            outgoing: List[Outgoing] = []
            reports: List[Tuple[int, str]] = []
            #: Where the messages (not typing or status) are in ``outgoing``.
            queued: List[int] = []
            records = []
            noted: List[Tuple[str, Optional[float]]] = []
            joined = chat.agent_joined
            estimate = chat.wait_estimate
            for event in events:
                if isinstance(event, ChatClosed):
                    closed = event
                    break
                if isinstance(event, AgentTyping):
                    outgoing.append(Outgoing({"recipient_id": chat.sender_id, "typing": event.typing}, TYPING_EVENT))
                    continue
                if isinstance(event, AgentJoined):
                    self.observe.agent_joined(chat.sender_id, chat.chat_id)
                    joined = True
                    outgoing.append(
                        status_item(
                            chat.sender_id,
                            active=True,
                            chat_id=chat.chat_id,
                            api=self._backend.api,
                            agent_joined=True,
                            agent_name=event.agent_name,
                        )
                    )
                    continue
                if event.message_id in chat.seen_ids and cursor is None:
                    self.observe.duplicate_dropped("message")
                    continue
                if (
                    self._store is not None
                    and cursor is not None
                    and event.message_id
                    and not await self._first_delivery(chat, event.message_id)
                ):
                    continue
                if isinstance(event, SystemNotice) and event.kind == "wait":
                    if joined:
                        continue  # a queue notice overtaken by the agent's arrival
                    if event.details.get("wait_time"):
                        estimate = str(event.details["wait_time"])
                if isinstance(event, AgentMessage):
                    self.observe.agent_joined(chat.sender_id, chat.chat_id)
                    joined = True
                message = _user_message(chat.sender_id, event)
                if self._settings.report_delivery and isinstance(event, AgentMessage):
                    reports.append((len(outgoing), event.message_id))
                queued.append(len(outgoing))
                outgoing.append(Outgoing(message, track=self._settings.report_delivery and isinstance(event, AgentMessage)))
                records.append(bot_uttered(message))
                if cursor is None:
                    noted.append((event.message_id, event.timestamp))
            items = await self._outbox.put(chat.sender_id, outgoing, dedupe_key=dedupe_key, dedupe_ttl=dedupe_ttl)
            if items is None:
                return False
            for index in queued:
                self.observe.agent_message_queued(items[index].event_id, arrived)
            # The tracker shows the agent's arrival (``handoff_status``).
            status = agent_joined_events() if joined and not chat.agent_joined else []
            # The chat moves on only once its events are on their way.
            progressed = joined != chat.agent_joined or estimate != chat.wait_estimate
            chat.agent_joined, chat.wait_estimate = joined, estimate
            for message_id, timestamp in noted:
                chat.note_message(message_id, timestamp)
            for index, message_id in reports:
                outcome = items[index].outcome
                if outcome is not None:
                    outcome.add_done_callback(
                        lambda done, message_id=message_id: self._report(chat, message_id, done.result())
                    )
            if cursor is not None:
                chat.last_updated, chat.seen_ids = cursor.last_updated, tuple(cursor.seen_ids)
            if records or status:
                self._save_soon(chat, self._to_save(records, chat) + status)
            if records:
                logger.info("Relayed %d agent message(s) to conversation %s.", len(records), chat.sender_id)
        if progressed and self._on_progress is not None and not chat.ended:
            await self._on_progress(chat)
        if closed is not None:
            if dedupe_key is not None:
                # The push is stored: acknowledge it now, end the chat after.
                self._track(self._close_after_grace(chat, closed))
            else:
                if not self._backend.pulls:
                    await asyncio.sleep(END_GRACE_S)
                await self._on_closed(chat, closed)
        return True

    async def _close_after_grace(self, chat: LiveChat, closed: ChatClosed) -> None:
        await asyncio.sleep(END_GRACE_S)
        await self._on_closed(chat, closed)

    async def _first_delivery(self, chat: LiveChat, message_id: str) -> bool:
        """Whether no replica delivered this message before (a poller that
        took over from a stale cursor, a push repeated to another replica).
        When the store cannot say, yes: a repeat beats a loss."""
        try:
            return await self._store.claim_once(f"msg:{chat.chat_id}:{message_id}", MESSAGE_DEDUPE_TTL_S)
        except StoreUnavailable as error:
            logger.warning("Could not check message %s for a repeat (delivering it): %s", message_id, error)
            return True

    def _to_save(self, records: List[Event], chat: LiveChat) -> List[Event]:
        """What a delivery leaves in the tracker. Only deliveries are saved: a
        cursor that moved over the user's own messages needs no save, since
        after a restart those are read again and filtered again."""
        transcript = records if self._settings.record_transcript else []
        # Connect reads from its cursor after a restart; a Virtual Agent chat
        # keeps seen ids only to drop a push ServiceNow repeats across one.
        if self._backend.pulls or transcript:
            return transcript + chat.cursor_events()
        return []

    def _report(self, chat: LiveChat, message_id: str, delivered: bool) -> None:
        async def report() -> None:
            try:
                await self._backend.report_delivery(chat, message_id, delivered)
            except ServiceNowError as error:
                logger.warning("Could not report delivery of message %s to ServiceNow: %s", message_id, error)

        self._track(report())

    def track(self, work: Awaitable[Any]) -> "asyncio.Task[Any]":
        """Run work that ``stop()`` waits for (e.g. a delivery report)."""
        return self._track(work)

    def _track(self, work: Awaitable[Any]) -> "asyncio.Task[Any]":
        """Run work as a task that ``stop()`` waits for."""
        task = asyncio.ensure_future(work)
        self._dispatches.add(task)
        task.add_done_callback(self._dispatches.discard)
        return task


def coalesced(events: List[Event]) -> List[Event]:
    """The events in order, but only the last value of each slot."""
    last_slot = {event.key: index for index, event in enumerate(events) if isinstance(event, SlotSet)}
    return [
        event for index, event in enumerate(events) if not isinstance(event, SlotSet) or last_slot[event.key] == index
    ]


def _user_message(recipient_id: str, event: Any) -> Dict[str, Any]:
    if isinstance(event, AgentMessage):
        metadata: Dict[str, Any] = {"source": "agent", "agent_name": event.agent_name, "message_id": event.message_id}
        return {"recipient_id": recipient_id, "text": event.text, **event.rich, "metadata": metadata}
    assert isinstance(event, SystemNotice)
    metadata = {"source": "system", "kind": event.kind, "message_id": event.message_id}
    fields = {key: value for key, value in event.details.items() if key in RASA_MESSAGE_FIELDS}
    metadata.update({key: value for key, value in event.details.items() if key not in RASA_MESSAGE_FIELDS})
    return {"recipient_id": recipient_id, "text": event.text, **fields, "metadata": metadata}


# Fields of a Rasa bot message a rich ServiceNow item can map to.
RASA_MESSAGE_FIELDS = ("image", "buttons", "attachment", "custom")

