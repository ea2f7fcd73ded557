"""Every way a handoff ends, each leaving the record, the slots and the user
in a known state:

* the user types an end command: the chat is left, ``user_ended``;
* the agent closes it: ``agent_closed``;
* ServiceNow hands control back (no agent available, time-out): ``chat_ended``,
  after ServiceNow's own explanation;
* ServiceNow keeps failing: the chat is left (Virtual Agent: faulted) and the
  user gets ``connection_lost`` with the chat id and the time of the last
  message, or ``session_lost`` when that fails too;
* no agent accepts within ``agent_wait_timeout``: the chat is left, ``no_agent``;
* the user sends nothing for ``user_idle_timeout`` in a live chat: the agent is
  told (``user_idle_agent``), the chat is left, ``user_idle`` (timeouts.py);
* the bot ends it (a custom payload ``{"handoff": {"end": true}}`` in a turn
  Rasa runs outside a request): ``bot_ended``, told ``chat_ended``.

After the notice the bot takes its hand-back turn (handback.py) with the
reason as an entity: the replica that ends the handoff runs it, once.

The stores can fail at any step, and the end fails closed:

* a user's end command is saved before the chat is left: if the save fails,
  nothing changes and the user is told (``end_failed``), so no restart can
  bring back a chat the user has left;
* an end from ServiceNow's side whose save fails is still an end here (the
  chat is over there), and the save is retried in the background and, before
  anything else, on the conversation's next message, which waits (503) until
  it lands (``UnsavedEnds``); the hand-back turn runs once it has;
* an end from ServiceNow's side can reach several replicas (a close read back
  by each that watches the chat), and the removal of the handoff record
  decides which one ended it. When the store cannot take that removal, the
  chat stops here at once, and the farewell, the tracker write and the
  hand-back wait (``HeldEnds``) until the removal lands: they run if this
  replica's removal ended the chat, and are dropped if another replica's came
  first. A store away for longer than ``END_HOLD_S`` ends it here anyway.
"""

import asyncio
import datetime
import logging
from enum import Enum
from typing import Any, Coroutine, Dict, List, Optional

from connectors.servicenow.core.chat import ChatRegistry, LiveChat
from connectors.servicenow.core.handback import Handback
from connectors.servicenow.core.notices import Messages, Notices
from connectors.servicenow.core.records import Records, Removal
from connectors.servicenow.core.timers import Timers
from connectors.servicenow.errors import ConversationBusy, ServiceNowError, StoreUnavailable
from connectors.servicenow.locks import ConversationLocks
from connectors.servicenow.ops.observe import Observer
from connectors.servicenow.rasa_glue.nlg import Line
from connectors.servicenow.rasa_glue.pending import PendingWrites
from connectors.servicenow.retry import STORE_RECOVERY
from connectors.servicenow.rasa_glue.slots import (
    TrackerEvent,
    TrackerSlots,
    bot_uttered,
    cleared_slot_events,
    ended_events,
    without_slots,
)
from connectors.servicenow.servicenow.base import Backend, ChatClosed, CloseReason
from connectors.servicenow.store import HandoffRecord, Store
from connectors.servicenow.tasks import TaskSet, within

logger = logging.getLogger(__name__)

#: The ``cause`` sent with ``FAULT_CONVERSATION`` when this side gives up.
FAULT_CAUSE = "EXTERNAL_FAILURE"
#: How long the save of an unsaved end waits for the conversation's earlier one.
SAVE_WAIT_S = 30.0
#: How long an end from ServiceNow's side waits for its record's removal
#: (which tells whether this replica or another ended the chat) before it is
#: told here anyway: a Redis restart or failover fits inside.
END_HOLD_S = 30.0


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


class UnsavedEnds:
    """Ends whose tracker write failed: the events still to save, by sender.
    Retried in the background, and first thing on the conversation's next
    message (``save``): the bot must not take a turn on a tracker that says
    "in handoff", and a new handoff must not start before the old end lands.
    The hand-back turn the end owes runs once its write lands (it would have
    run on a tracker still in handoff before); only the replica that ended
    the chat holds its end, so the turn runs once."""

    def __init__(self, slots: TrackerSlots, handback: Handback) -> None:
        self._slots = slots
        self._handback = handback
        self._events: Dict[str, List[TrackerEvent]] = {}
        # The hand-back turn each end owes: its reason, or None (``/restart``).
        self._owed: Dict[str, Optional[str]] = {}
        self._savers: Dict[str, "asyncio.Task[None]"] = {}
        # Per conversation, so that one conversation's failing save does not
        # hold up another's.
        self._locks = ConversationLocks()
        self.pauses = STORE_RECOVERY

    def __contains__(self, sender_id: object) -> bool:
        return sender_id in self._events

    def __len__(self) -> int:
        return len(self._events)

    def hold(self, chat: LiveChat, events: List[TrackerEvent], error: Exception, hand_back: Optional[str]) -> None:
        """Keep the end's ``events`` to save later, and the reason of the
        hand-back turn to run once they are saved (None: no turn)."""
        logger.error(
            "The handoff of conversation %s to ServiceNow chat %s ended, but saving that failed; "
            "retrying, and holding the conversation's next message until it is saved: %s",
            chat.sender_id, chat.chat_id, error,
        )
        self._events.setdefault(chat.sender_id, []).extend(events)
        self._owed[chat.sender_id] = hand_back
        if chat.sender_id not in self._savers:
            self._savers[chat.sender_id] = asyncio.ensure_future(self._save_later(chat.sender_id))

    async def save(self, sender_id: str) -> None:
        """Save an end whose save failed before, then run the hand-back turn
        it owes (through the outbox, before the message that asked waits
        on); ``StoreUnavailable`` if the save still fails."""
        async with self._locks.hold(sender_id, SAVE_WAIT_S):
            events = self._events.get(sender_id)
            if events is None:
                return
            await self._slots.write(sender_id, events)
            del self._events[sender_id]
            reason = self._owed.pop(sender_id, None)
            logger.info("Saved the end of the handoff of conversation %s after all.", sender_id)
            if reason is not None:
                # Under the lock: a second caller waits for the turn, then finds nothing to save.
                await self._handback.run(sender_id, reason, in_request=False)
        saver = self._savers.pop(sender_id, None)
        if saver is not None and saver is not asyncio.current_task():
            saver.cancel()

    async def _save_later(self, sender_id: str) -> None:
        attempt = 0
        while sender_id in self._events:
            await self.pauses.sleep(attempt)
            attempt += 1
            try:
                await self.save(sender_id)
            except (StoreUnavailable, ConversationBusy) as error:
                logger.warning("Still cannot save the end of the handoff of conversation %s: %s", sender_id, error)
        if self._savers.get(sender_id) is asyncio.current_task():
            del self._savers[sender_id]

    async def stop(self) -> None:
        """Try each once more (a graceful shutdown)."""
        for saver in list(self._savers.values()):
            saver.cancel()
        for sender_id in list(self._events):
            try:
                await self.save(sender_id)
            except (StoreUnavailable, ConversationBusy) as error:
                # After the restart the tracker still says "in handoff" (a
                # known limit, docs/how-it-works.md): Connect finds the chat
                # closed and ends it again; a Virtual Agent chat cannot tell.
                logger.error("Stopping with the end of the handoff of conversation %s unsaved: %s", sender_id, error)


class HeldEnds:
    """Ends from ServiceNow's side waiting for their record's removal to say
    whether this replica ended the chat, by sender. The conversation's next
    message waits for its end to be told (or dropped) first."""

    def __init__(self) -> None:
        self._ends: Dict[str, "asyncio.Task[None]"] = {}
        self._tasks = TaskSet()

    def __contains__(self, sender_id: object) -> bool:
        return sender_id in self._ends

    def __len__(self) -> int:
        return len(self._ends)

    def hold(self, sender_id: str, end: Coroutine[Any, Any, None]) -> None:
        task = self._tasks.spawn(end, name=f"servicenow-held-end-{sender_id}")
        self._ends[sender_id] = task

        def forget(done: "asyncio.Task[None]") -> None:
            if self._ends.get(sender_id) is done:
                del self._ends[sender_id]

        task.add_done_callback(forget)

    async def wait(self, sender_id: str, wait_s: float) -> None:
        """Wait for the sender's held end, if any, to be told or dropped."""
        task = self._ends.get(sender_id)
        if task is None:
            return
        try:
            async with within(wait_s):
                await asyncio.shield(task)
        except asyncio.TimeoutError:
            raise ConversationBusy(f"the end of the handoff of conversation {sender_id} is still being told") from None

    async def stop(self, timeout: float) -> None:
        """Let the held ends finish (a graceful shutdown: the records' last
        removals have landed, or given up, before this)."""
        await self._tasks.wait(timeout)


def drop_ended_elsewhere(registry: ChatRegistry, pending: PendingWrites, chat: LiveChat) -> None:
    """Drop a chat another replica ended, without an end of its own here."""
    if registry.deactivate(chat):
        keep_transcript(pending, chat)


def keep_transcript(pending: PendingWrites, chat: LiveChat) -> None:
    """The replica that ended the chat wrote the cleared slots; this one's
    cursor must not land after them, its transcript records may."""
    records = without_slots(pending.take(chat.sender_id))
    if records:
        pending.save_later(chat.sender_id, records)
    logger.info("ServiceNow chat %s of conversation %s was ended by another replica.", chat.chat_id, chat.sender_id)


async def leave_quietly(backend: Backend, chat: LiveChat, cause: Optional[str] = None) -> bool:
    """Leave the chat on ServiceNow's side; False (logged) when that failed."""
    try:
        if cause:
            await backend.abort(chat.ref, cause)
        else:
            await backend.leave(chat.ref)
        return True
    except ServiceNowError as error:
        logger.warning("Leaving ServiceNow chat %s failed: %s", chat.chat_id, error)
        return False


class Ending:
    def __init__(
        self,
        backend: Backend,
        store: Store,
        registry: ChatRegistry,
        records: Records,
        slots: TrackerSlots,
        pending: PendingWrites,
        unsaved: UnsavedEnds,
        held: HeldEnds,
        notices: Notices,
        timers: Timers,
        handback: Handback,
        observe: Observer,
    ) -> None:
        self._backend = backend
        self._store = store
        self._registry = registry
        self._records = records
        self._slots = slots
        self._pending = pending
        self._unsaved = unsaved
        self._held = held
        self.hold_s = END_HOLD_S
        self._notices = notices
        self._speech = notices.speech
        self._timers = timers
        self._handback = handback
        self._observe = observe

    async def end(
        self, chat: LiveChat, reason: EndReason, *, in_request: bool, undelivered: bool = False, leave: bool = True
    ) -> Messages:
        """End the handoff for ``reason`` (anything but the user's command):
        over here whatever the stores say. Returns what to answer a request with."""
        async with chat.dispatch_lock:  # waits for a user's end that is saving
            if not self._registry.deactivate(chat):
                # Ended meanwhile here (the poller gave up too, and told the
                # user); a message that failed still gets its own answer.
                return await self._not_delivered(chat.sender_id) if undelivered and in_request else []
            removal: Optional[Removal] = None
            if not await self._records.remove(chat.sender_id, chat.chat_id):
                removal = self._records.removing(chat.sender_id)
                if removal is None:
                    # Another replica ended it first, and told the user.
                    keep_transcript(self._pending, chat)
                    return await self._not_delivered(chat.sender_id) if undelivered and in_request else []
        if removal is not None and not in_request:
            # The store is away, so which replica ended the chat is known only
            # once the removal lands (in a request the user is answered now).
            self._held.hold(chat.sender_id, self._end_once_removed(chat, reason, removal, leave))
            return []
        return await self._finish(chat, reason, in_request=in_request, undelivered=undelivered, leave=leave)

    async def _end_once_removed(self, chat: LiveChat, reason: EndReason, removal: Removal, leave: bool) -> None:
        ended = await self._records.outcome(chat.sender_id, removal, self.hold_s)
        if ended is False or await self._told_elsewhere(chat):
            keep_transcript(self._pending, chat)
            return
        if ended is None:
            logger.warning(
                "The store is still away %.0f s after ServiceNow chat %s ended; telling conversation %s all the same.",
                self.hold_s, chat.chat_id, chat.sender_id,
            )
        try:
            await self._finish(chat, reason, in_request=False, undelivered=False, leave=leave)
        except Exception:
            logger.exception("Telling conversation %s that its handoff ended failed.", chat.sender_id)

    async def _told_elsewhere(self, chat: LiveChat) -> bool:
        """Whether the tracker shows this chat over already: a replica that
        ended it in a request (answered at once, its removal pending too) or
        that held it past the store's absence told the user and wrote the end.
        When the tracker cannot say, the end is told (twice beats never)."""
        try:
            mirrored = await self._slots.load_handoff(chat.sender_id)
        except StoreUnavailable:
            return False
        return mirrored is None or mirrored.chat_id != chat.chat_id

    async def _finish(self, chat: LiveChat, reason: EndReason, *, in_request: bool, undelivered: bool, leave: bool) -> Messages:
        """The end, once it is this replica's: leave, tell, save, hand back."""
        await self._timers.cancel(chat)
        # The unsaved cursor and transcript go into the same write as the
        # end, ahead of it, so that nothing of the chat is saved after it.
        pending = self._pending.take(chat.sender_id)
        left = await leave_quietly(self._backend, chat, FAULT_CAUSE if reason is EndReason.FAILED else None) if leave else False
        lines = farewell(chat, reason, left)
        if undelivered:
            lines.append(Line("message_not_delivered"))
        messages = await self._speech.say_lines(chat.sender_id, lines)
        events = pending + cleared_slot_events() + ended_events(reason.value) + [bot_uttered(m) for m in messages]
        saved = True
        try:
            await self._slots.write(chat.sender_id, events)
        except StoreUnavailable as error:
            # The chat is over either way (left, or closed by ServiceNow), so
            # it ends here too; the tracker catches up before the next turn,
            # and the hand-back turn runs then (now it would run on a tracker
            # still in handoff).
            saved = False
            self._unsaved.hold(chat, events, error, hand_back=reason.value)
        await self._notices.status(chat.sender_id, active=False, chat_id=chat.chat_id, agent_joined=chat.agent_joined)
        self._observe.handoff_ended(chat.sender_id, chat.chat_id, reason.value)
        answer = await self._notices.deliver(chat.sender_id, messages, in_request=in_request)
        if saved:
            # After the notice: out of band it is in the outbox already, in a
            # request the turn's replies follow it in the same answer.
            answer = answer + await self._handback.run(chat.sender_id, reason.value, in_request=in_request)
        return answer

    async def _not_delivered(self, sender_id: str) -> Messages:
        return await self._speech.say(sender_id, "message_not_delivered")

    async def end_by_user(self, chat: LiveChat, *, hand_back: bool = True) -> Messages:
        """End the handoff at the user's request. Saved first, left after:
        when the save fails the chat goes on (``chat.ended`` stays False) and
        the answer says so. The answer is the notice, then the replies of the
        hand-back turn (unless ``hand_back`` is False: ``/restart``)."""
        messages = await self._speech.say(chat.sender_id, "user_ended")
        async with chat.dispatch_lock:
            # Holding the dispatch lock: no agent message is delivered while
            # this saves, and none after it (the chat is ended before release).
            if chat.ended:
                return []
            saved = await self._save_users_end(chat, messages, hand_back)
            if saved is None:
                return await self._speech.say(chat.sender_id, "end_failed") if not chat.ended else []
            self._registry.deactivate(chat)
        await self._records.unregister_poll(chat.chat_id)
        await self._timers.cancel(chat)
        await leave_quietly(self._backend, chat)
        await self._notices.status(chat.sender_id, active=False, chat_id=chat.chat_id, agent_joined=chat.agent_joined)
        self._observe.handoff_ended(chat.sender_id, chat.chat_id, EndReason.USER_ENDED.value)
        if hand_back and saved:
            messages = messages + await self._handback.run(chat.sender_id, EndReason.USER_ENDED.value, in_request=True)
        return messages

    async def _save_users_end(self, chat: LiveChat, messages: Messages, hand_back: bool) -> Optional[bool]:
        """The record goes (it decides, for every replica), then the tracker
        follows. True when both are saved, False when the tracker's save is
        held (the record could not be put back), None when nothing changed
        (the chat goes on; ``chat.ended`` tells whether another replica had
        ended it already)."""
        try:
            ended = await self._store.end_handoff(chat.sender_id, chat.chat_id)
        except StoreUnavailable as error:
            logger.error(
                "Could not end the handoff record of conversation %s; ServiceNow chat %s goes on: %s",
                chat.sender_id, chat.chat_id, error,
            )
            return None
        if ended is None:
            drop_ended_elsewhere(self._registry, self._pending, chat)
            return None
        pending = self._pending.take(chat.sender_id)
        events = pending + cleared_slot_events() + ended_events(EndReason.USER_ENDED.value) + [bot_uttered(m) for m in messages]
        try:
            await self._slots.write(chat.sender_id, events)
            return True
        except StoreUnavailable as error:
            if await self._put_back(ended):
                self._pending.give_back(chat.sender_id, pending)
                logger.error(
                    "Could not save the end of the handoff of conversation %s; ServiceNow chat %s goes on: %s",
                    chat.sender_id, chat.chat_id, error,
                )
                return None
            self._unsaved.hold(chat, events, error, hand_back=EndReason.USER_ENDED.value if hand_back else None)
            return False

    async def _put_back(self, record: HandoffRecord) -> bool:
        """File an ended record again: the user's end did not land in the
        tracker, so the chat goes on. False when the store fails meanwhile
        (then the end stands, and its tracker save is held)."""
        try:
            return await self._store.create_handoff(record)
        except StoreUnavailable:
            return False

    def ended_elsewhere(self, chat: LiveChat) -> None:
        """The chat's record is gone: another replica ended it (and told the user)."""
        drop_ended_elsewhere(self._registry, self._pending, chat)

    async def closed_by_servicenow(self, chat: LiveChat, closed: ChatClosed) -> None:
        logger.info("ServiceNow chat %s ended (%s).", chat.chat_id, closed.reason.value)
        if closed.reason is CloseReason.NOT_FOUND:
            await self.end(chat, EndReason.FAILED, in_request=False, leave=False)
        elif closed.reason is CloseReason.RETURNED:
            await self.end(chat, EndReason.RETURNED, in_request=False)
        else:
            await self.end(chat, EndReason.AGENT_CLOSED, in_request=False)

    async def failed_in_background(self, chat: LiveChat, error: ServiceNowError) -> None:
        await self.end(chat, EndReason.FAILED, in_request=False)


def farewell(chat: LiveChat, reason: EndReason, left: bool) -> List[Line]:
    """What the user hears when the handoff ends for ``reason``."""
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


def format_time(epoch_ms: Optional[float]) -> str:
    if epoch_ms is None:
        return "unknown time"
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
