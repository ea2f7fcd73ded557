"""What ServiceNow says, pushed (Virtual Agent callbacks) or polled
(Connect), taken in one way: ``Dispatcher.dispatch``.

Per chat and in order, ``dispatch`` drops what was already handled, puts
messages, typing and status in the outbox, moves the chat's cursor (saved
to the tracker a moment later, coalesced, with a record of the delivered
messages: rasa_glue/pending.py), and reports the end of the chat. Each agent
message is delivered once per deployment: a pushed callback is stored with
its dedupe key in one step before ServiceNow hears 200, and a polled message
is stored with its message id's mark in one step, so a poller that took over
from a stale cursor does not repeat it and one killed in between does not
lose it. Every append of an agent's words is guarded (``store.Guard``): only
while the chat is live, so no replica shows them after another ended the
chat, and for a poll only while its poller holds the chat's lease.

Pushes reach it through callbacks.py, polls through polling.py.
``DeliveryReports`` tells ServiceNow an agent message reached the user
(``report_delivery``).
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Awaitable, Callable, Dict, List, Optional, Sequence, Set, Tuple

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.core.ordering import PushOrder
from connectors.servicenow.errors import ServiceNowError, StoreUnavailable
from connectors.servicenow.ops.observe import Observer
from connectors.servicenow.outbox.base import TYPING_EVENT, OutboundItem, Outgoing, status_item
from connectors.servicenow.outbox.stream import Outbox
from connectors.servicenow.rasa_glue.pending import PendingWrites
from connectors.servicenow.rasa_glue.slots import TrackerEvent, agent_joined_events, bot_uttered, cursor_events
from connectors.servicenow.servicenow.va_records import RecordCursor
from connectors.servicenow.servicenow.base import (
    AgentEvent,
    AgentJoined,
    AgentMessage,
    AgentTyping,
    Backend,
    ChatClosed,
    ChatRef,
    Cursor,
    SystemNotice,
)
from connectors.servicenow.store import AlreadyStored, ChatNotLive, Guard, OutboxEntry, Store
from connectors.servicenow.store.keys import message_dedupe, poll_lease
from connectors.servicenow.tasks import TaskSet

logger = logging.getLogger(__name__)

# Pushed callbacks can overtake each other. The end of a chat waits this long
# so that an agent's last message, pushed just before the close, still
# reaches the user before the "chat ended" notice.
END_GRACE_S = 0.5
#: How long an agent message id is remembered across the deployment to
#: deliver it once: longer than any cursor can lag behind.
MESSAGE_DEDUPE_TTL_S = 3600.0
#: How long a pushed callback is remembered to drop ServiceNow's repeats of
#: it (its retries come within seconds; a mark costs about 100 bytes).
CALLBACK_DEDUPE_TTL_S = 600.0
# Fields of a Rasa bot message a rich ServiceNow item can map to.
RASA_MESSAGE_FIELDS = ("image", "buttons", "attachment", "custom")

#: The chat ended on ServiceNow's side.
OnClosed = Callable[[LiveChat, ChatClosed], Awaitable[Any]]
#: The chat moved on while queued: an agent joined, or a new wait estimate came.
OnProgress = Callable[[LiveChat], Awaitable[Any]]
#: The chat ended on another replica (its record is gone): drop it here.
OnGone = Callable[[LiveChat], None]


@dataclass
class _Batch:
    """What one dispatch puts in the outbox and changes about the chat."""

    outgoing: List[Outgoing] = field(default_factory=list)
    #: Per item of ``outgoing``: the dedupe key of the message it carries (keyed delivery), or None.
    keys: List[Optional[str]] = field(default_factory=list)
    #: Where the messages (not typing or status) are in ``outgoing``.
    queued: List[int] = field(default_factory=list)
    records: List[TrackerEvent] = field(default_factory=list)
    #: Message ids and times a push moves the cursor past.
    noted: List[Tuple[str, Optional[float]]] = field(default_factory=list)
    #: Every message id (and an agent's arrival's) the chat has now seen, in order.
    seen: List[Tuple[str, Optional[float]]] = field(default_factory=list)
    joined: bool = False
    estimate: Optional[str] = None
    closed: Optional[ChatClosed] = None


class Dispatcher:
    def __init__(
        self,
        settings: ServiceNowSettings,
        backend: Backend,
        store: Store,
        outbox: Outbox,
        pending: PendingWrites,
        observe: Observer,
        work: TaskSet,
        *,
        on_closed: OnClosed,
        on_progress: OnProgress,
        on_gone: OnGone,
        order: Optional[PushOrder] = None,
        keyed: bool = False,
    ) -> None:
        """``order``: pushes are put in ServiceNow's order first (Virtual Agent
        with reconciliation). ``keyed``: each message is stored with its own
        dedupe key, so a push, a read of the record and another replica
        deliver it once between them."""
        self._settings = settings
        self._backend = backend
        self._store = store
        self._outbox = outbox
        self._pending = pending
        self._observe = observe
        self._work = work
        self._on_closed = on_closed
        self._on_progress = on_progress
        self._on_gone = on_gone
        self._order = order
        self._keyed = keyed

    async def dispatch(
        self,
        chat: LiveChat,
        events: Sequence[AgentEvent],
        cursor: Optional[Cursor] = None,
        *,
        dedupe_key: Optional[str] = None,
        dedupe_ttl: float = 0.0,
        poller: Optional[str] = None,
        records: Optional[RecordCursor] = None,
        recovered: Sequence[str] = (),
    ) -> bool:
        """Deliver events in order, at most once each, then move the cursor
        (a poll's ``cursor``; a push moves it past its own messages).

        With ``dedupe_key`` (a pushed callback) what the events say is stored
        in one step with the key, before this returns, and an end of the
        chat is handled in the background: False when the key was seen before
        (a repeat, dropped; keyed, a push whose every message was stored
        before still ends the chat it closes); ``StoreUnavailable`` when nothing could be stored
        (nothing changed, the push may come again). ``poller``: the owner of
        the chat's polling lease that found ``events``; when it holds the
        lease no more, ``LeaseLost`` and nothing delivered or moved (the new
        holder polls from the saved cursor). A poll whose events cannot be
        stored raises ``StoreUnavailable`` the same way: it is made again.

        ``records``: where a read of the chat's record got to (reconciliation),
        with the ids of the messages it ``recovered``; the chat's record
        cursor moves there once the events are stored."""
        arrived = time.monotonic()
        async with chat.dispatch_lock:
            if chat.ended:
                return True
            from_records = set(recovered)
            if self._order is not None and dedupe_key is not None:
                arranged = await self._order.arrange(chat.chat_id, chat.records, chat.has_seen, events)
                self._observe.push_ordered(arranged.waited, arranged.ordered)
                events, records, from_records = arranged.events, arranged.cursor, set(arranged.recovered)
            try:
                batch, items = await self._put(chat, events, cursor is not None, poller, dedupe_key, dedupe_ttl)
            except ChatNotLive:
                logger.info("Dropping what ServiceNow chat %s said after it ended on another replica.", chat.chat_id)
                self._on_gone(chat)
                return True
            if items is None:
                if batch.closed is None or not self._keyed:
                    return False
                # Its messages came another way (a read): the end is still news.
                items = [None] * len(batch.outgoing)
            self._note_queued(batch, items, arrived)
            self._count_recovered(chat, batch, items, from_records, pushed=dedupe_key is not None)
            batch.records = [record for record, index in zip(batch.records, batch.queued) if items[index] is not None]
            progressed = self._move_on(chat, batch, cursor)
            if records is not None and records.after(chat.records):
                chat.records = records
        if progressed and not chat.ended:
            await self._on_progress(chat)
        if batch.closed is not None:
            await self._closed(chat, batch.closed, pushed=dedupe_key is not None)
        return True

    def _note_queued(self, batch: _Batch, items: Sequence[Optional[OutboundItem]], arrived: float) -> None:
        for index in batch.queued:
            item = items[index]
            if item is not None:
                self._observe.agent_message_queued(item.event_id, arrived)

    async def _closed(self, chat: LiveChat, closed: ChatClosed, *, pushed: bool) -> None:
        if pushed:
            # The push is stored: acknowledge it now, end the chat after.
            self._work.spawn(self._close_after_grace(chat, closed))
            return
        if not self._backend.pulls:
            await asyncio.sleep(END_GRACE_S)
        await self._on_closed(chat, closed)

    async def _put(
        self,
        chat: LiveChat,
        events: Sequence[AgentEvent],
        polled: bool,
        poller: Optional[str],
        dedupe_key: Optional[str],
        dedupe_ttl: float,
    ) -> Tuple[_Batch, Optional[Sequence[Optional[OutboundItem]]]]:
        """Put what the events say in the outbox under the chat's guard: the
        batch, and per item what was stored (None in all: a repeated push)."""
        guard = Guard(
            chat.sender_id, chat.chat_id, lease=poll_lease(chat.chat_id) if poller else None, owner=poller,
            once_ttl=MESSAGE_DEDUPE_TTL_S,
        )
        stored_before: AbstractSet[str] = frozenset()
        while True:
            batch = self._sort(chat, events, polled=polled, stored_before=stored_before)
            try:
                return batch, await self._store_batch(chat, batch, dedupe_key, dedupe_ttl, guard)
            except AlreadyStored as stored:
                # Another poller of this chat stored these (this one took
                # over from a cursor saved before them): the rest go on.
                stored_before = stored_before | stored.keys

    def _sort(
        self, chat: LiveChat, events: Sequence[AgentEvent], *, polled: bool, stored_before: AbstractSet[str]
    ) -> _Batch:
        """Turn events into outbox items, dropping what is handled already
        (``stored_before``: the once keys of polled messages another poller stored)."""
        batch = _Batch(joined=chat.agent_joined, estimate=chat.wait_estimate)
        for event in events:
            if isinstance(event, ChatClosed):
                batch.closed = event
                break
            if isinstance(event, AgentTyping):
                batch.outgoing.append(Outgoing({"recipient_id": chat.sender_id, "typing": event.typing}, TYPING_EVENT))
                batch.keys.append(None)
                continue
            if isinstance(event, AgentJoined):
                if event.message_id and chat.has_seen(event.message_id):
                    continue
                self._observe.agent_joined(chat.sender_id, chat.chat_id)
                batch.joined = True
                batch.outgoing.append(self._joined(chat, event.agent_name))
                batch.keys.append(self._key(chat, event.message_id))
                if event.message_id:
                    batch.seen.append((event.message_id, None))
                continue
            if not polled and event.message_id in chat.seen_ids:
                self._observe.duplicate_dropped("message")
                continue
            once_key = message_dedupe(chat.chat_id, event.message_id) if polled and event.message_id else None
            if once_key is not None and once_key in stored_before:
                self._observe.duplicate_dropped("message")
                continue
            self._add_message(chat, batch, event, polled=polled, once_key=once_key)
        return batch

    def _add_message(
        self, chat: LiveChat, batch: _Batch, event: AgentEvent, *, polled: bool, once_key: Optional[str]
    ) -> None:
        assert isinstance(event, (AgentMessage, SystemNotice))
        if isinstance(event, SystemNotice) and event.kind == "wait":
            if batch.joined:
                return  # a queue notice overtaken by the agent's arrival
            if event.details.get("wait_time"):
                batch.estimate = str(event.details["wait_time"])
        if isinstance(event, AgentMessage):
            self._observe.agent_joined(chat.sender_id, chat.chat_id)
            if not batch.joined:
                # The agent's first word is their arrival where ServiceNow
                # announced none (Connect): the stream hears it first.
                batch.outgoing.append(self._joined(chat, event.agent_name))
                batch.keys.append(None)  # goes with the message after it
            batch.joined = True
        message = user_message(chat.sender_id, event)
        batch.queued.append(len(batch.outgoing))
        batch.outgoing.append(Outgoing(message, once_key=once_key))
        batch.keys.append(self._key(chat, event.message_id))
        batch.records.append(bot_uttered(message))
        if not polled:
            batch.noted.append((event.message_id, event.timestamp))
            batch.seen.append((event.message_id, event.timestamp))

    def _joined(self, chat: LiveChat, agent_name: Optional[str]) -> Outgoing:
        return status_item(
            chat.sender_id, active=True, chat_id=chat.chat_id, api=self._backend.api, agent_joined=True, agent_name=agent_name
        )

    def _move_on(self, chat: LiveChat, batch: _Batch, cursor: Optional[Cursor]) -> bool:
        """Once its events are on their way, the chat moves on; True when it
        progressed (an agent joined, a new wait estimate)."""
        # The tracker shows the agent's arrival (``handoff_status``).
        status = agent_joined_events() if batch.joined and not chat.agent_joined else []
        progressed = batch.joined != chat.agent_joined or batch.estimate != chat.wait_estimate
        chat.agent_joined, chat.wait_estimate = batch.joined, batch.estimate
        for message_id, timestamp in batch.seen:
            chat.note_message(message_id, timestamp)
        if cursor is not None:
            chat.move_to(cursor)
        if batch.records or status:
            self._pending.save_later(chat.sender_id, self._to_save(batch.records, chat) + status)
        if batch.records:
            logger.info("Relayed %d agent message(s) to conversation %s.", len(batch.records), chat.sender_id)
        return progressed

    async def _store_batch(
        self, chat: LiveChat, batch: _Batch, dedupe_key: Optional[str], dedupe_ttl: float, guard: Guard
    ) -> Optional[Sequence[Optional[OutboundItem]]]:
        if self._keyed:
            return await self._put_keyed(chat, batch, dedupe_key, dedupe_ttl, guard)
        return await self._outbox.put(
            chat.sender_id, batch.outgoing, dedupe_key=dedupe_key, dedupe_ttl=dedupe_ttl, guard=guard
        )

    def _key(self, chat: LiveChat, message_id: Optional[str]) -> Optional[str]:
        return message_dedupe(chat.chat_id, message_id) if self._keyed and message_id else None

    async def _put_keyed(
        self, chat: LiveChat, batch: _Batch, push_key: Optional[str], push_ttl: float, guard: Guard
    ) -> Optional[List[Optional[OutboundItem]]]:
        """Store each message with its own dedupe key, in order; what has no
        key (typing, an agent's arrival without an id) goes with the message
        after it, or the last one, or alone under the push's key. Per item of
        ``batch.outgoing``: what was stored, None for a repeat; None in all
        when nothing was stored and everything was a repeat. Each group is
        stored under ``guard``: a chat that ends in between stores no more."""
        groups: List[Tuple[List[int], Optional[str], float]] = []
        waiting: List[int] = []
        for index, key in enumerate(batch.keys):
            waiting.append(index)
            if key is not None:
                groups.append((waiting, key, MESSAGE_DEDUPE_TTL_S))
                waiting = []
        if waiting and groups:
            groups[-1][0].extend(waiting)
        elif waiting:
            groups.append((waiting, push_key, push_ttl))
        stored: List[Optional[OutboundItem]] = [None] * len(batch.outgoing)
        repeats = 0
        for indices, key, ttl in groups:
            put = await self._outbox.put(
                chat.sender_id, [batch.outgoing[i] for i in indices], dedupe_key=key, dedupe_ttl=ttl, guard=guard
            )
            if put is None:
                repeats += 1
                self._observe.duplicate_dropped("message")
                continue
            for index, item in zip(indices, put):
                stored[index] = item
        if groups and repeats == len(groups):
            return None
        return stored

    def _count_recovered(
        self, chat: LiveChat, batch: _Batch, items: Sequence[Optional[OutboundItem]], recovered: Set[str], *, pushed: bool
    ) -> None:
        """Messages stored from the record, not from a push: by a push's
        ordering read (``push``) or by a reconciliation pass (``pass``)."""
        if not recovered:
            return
        count = sum(
            1 for (message_id, _), index in zip(batch.noted, batch.queued)
            if message_id in recovered and items[index] is not None
        )
        if count:
            how = "push" if pushed else "pass"
            self._observe.messages_reconciled(how, count)
            # Stored here first for the whole deployment: their push was lost (or is still on its way).
            logger.info("Recovered %d message(s) of chat %s from ServiceNow's record (%s).", count, chat.chat_id, how)

    async def _close_after_grace(self, chat: LiveChat, closed: ChatClosed) -> None:
        await asyncio.sleep(END_GRACE_S)
        await self._on_closed(chat, closed)

    def _to_save(self, records: List[TrackerEvent], chat: LiveChat) -> List[TrackerEvent]:
        """What a delivery leaves in the tracker. Only deliveries are saved: a
        cursor that moved over the user's own messages needs no save, since
        after a restart those are read again and filtered again."""
        transcript = records if self._settings.record_transcript else []
        # Connect reads from its cursor after a restart; a Virtual Agent chat
        # keeps seen ids only to drop a push ServiceNow repeats across one.
        # With reconciliation the seen ids tell, after a restart of a store
        # that forgets, where delivery got to (reconcile.py).
        if self._backend.pulls or self._keyed or transcript:
            return transcript + cursor_events(chat.last_updated, chat.seen_ids)
        return []


def user_message(recipient_id: str, event: AgentEvent) -> Dict[str, Any]:
    """The bot message that carries an agent message or a ServiceNow notice to the user."""
    if isinstance(event, AgentMessage):
        metadata: Dict[str, Any] = {"source": "agent", "agent_name": event.agent_name, "message_id": event.message_id}
        return {"recipient_id": recipient_id, "text": event.text, **event.rich, "metadata": metadata}
    assert isinstance(event, SystemNotice)
    metadata = {"source": "system", "kind": event.kind, "message_id": event.message_id}
    fields = {key: value for key, value in event.details.items() if key in RASA_MESSAGE_FIELDS}
    metadata.update({key: value for key, value in event.details.items() if key not in RASA_MESSAGE_FIELDS})
    return {"recipient_id": recipient_id, "text": event.text, **fields, "metadata": metadata}


class DeliveryReports:
    """Tells ServiceNow whether an agent message reached the user
    (``report_delivery``), from whichever replica's sink took it: the
    outbox's ``on_taken``."""

    def __init__(self, settings: ServiceNowSettings, store: Store, backend: Backend, work: TaskSet) -> None:
        self._enabled = settings.report_delivery
        self._store = store
        self._backend = backend
        self._work = work

    def taken(self, sender_id: str, entry: OutboxEntry, delivered: bool) -> None:
        metadata = entry.payload.get("metadata") or {}
        if not self._enabled or metadata.get("source") != "agent" or not metadata.get("message_id"):
            return
        self._work.spawn(self._report(sender_id, str(metadata["message_id"]), delivered))

    async def _report(self, sender_id: str, message_id: str, delivered: bool) -> None:
        try:
            record = await self._store.get_handoff(sender_id)
        except StoreUnavailable as error:
            logger.warning("Could not report delivery of message %s: %s", message_id, error)
            return
        if record is None:
            return  # the chat is over: nobody to report to
        try:
            await self._backend.report_delivery(ChatRef(record.chat_id, sender_id, record.user), message_id, delivered)
        except ServiceNowError as error:
            logger.warning("Could not report delivery of message %s to ServiceNow: %s", message_id, error)
