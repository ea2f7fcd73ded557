"""One conversation in handoff as this process holds it, the chats it holds,
and the handoffs being opened.

A ``LiveChat`` is the in-process side of a handoff record: the record's
fields (the slots' mirror) plus what only lives here: the locks that keep
the user's messages and the agent's events in order, the ``ended`` flag that
late pollers and callbacks check, the chat's poller.
"""

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Tuple

from connectors.servicenow.locks import ChatLock
from connectors.servicenow.servicenow.base import SEEN_IDS_KEPT, ChatRef, Cursor
from connectors.servicenow.servicenow.va_records import RecordCursor
from connectors.servicenow.store import HandoffRecord

#: Failed opens remembered so that messages sent while one was opening get
#: a clear answer; only the newest are kept.
FAILED_OPENS_KEPT = 1000


@dataclass(eq=False, slots=True)
class LiveChat:
    sender_id: str
    chat_id: str
    user: Optional[str] = None
    last_updated: Optional[float] = None
    seen_ids: Tuple[str, ...] = ()
    #: Set once the handoff has ended, so late pollers and callbacks stand down.
    ended: bool = False
    #: Keeps the user's messages in order on their way to ServiceNow.
    send_lock: ChatLock = field(default_factory=ChatLock, repr=False)
    #: Keeps agent events in order on their way to the user.
    dispatch_lock: ChatLock = field(default_factory=ChatLock, repr=False)
    #: A live agent has accepted; queue notices that arrive later are stale.
    agent_joined: bool = False
    #: ServiceNow's latest wait estimate while queued (Virtual Agent's wait spinner).
    wait_estimate: Optional[str] = None
    #: The task polling the chat (Connect) or reading its record back
    #: (Virtual Agent reconciliation), stopped when the chat ends here.
    poller: "Optional[asyncio.Task[None]]" = field(default=None, repr=False)
    #: Virtual Agent: how far ServiceNow's record of the chat was read (va_records.py).
    records: RecordCursor = field(default_factory=RecordCursor)

    #: The chat as ServiceNow calls name it (made once: its fields never change).
    ref: ChatRef = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ref = ChatRef(self.chat_id, self.sender_id, self.user)

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.last_updated, self.seen_ids)

    def move_to(self, cursor: Cursor) -> None:
        self.last_updated, self.seen_ids = cursor.last_updated, tuple(cursor.seen_ids)

    def has_seen(self, message_id: str) -> bool:
        return message_id in self.seen_ids

    def note_message(self, message_id: Optional[str], timestamp: Optional[float]) -> None:
        """Move the cursor past a message this side has seen (or written)."""
        if timestamp is not None and (self.last_updated is None or timestamp > self.last_updated):
            self.last_updated = timestamp
        if message_id and message_id not in self.seen_ids:
            self.seen_ids = ((message_id,) + self.seen_ids)[:SEEN_IDS_KEPT]

    def record(self, api: str, started_at: Optional[float] = None) -> HandoffRecord:
        return HandoffRecord(
            sender_id=self.sender_id,
            chat_id=self.chat_id,
            api=api,
            user=self.user,
            last_updated=self.last_updated,
            seen_ids=self.seen_ids,
            agent_joined=self.agent_joined,
            started_at=started_at,
            wait_estimate=self.wait_estimate,
            conversation=self.records.conversation_id,
            sequence=self.records.sequence,
        )

    @classmethod
    def of(cls, record: HandoffRecord) -> "LiveChat":
        """This process's chat object for a handoff record."""
        return cls(
            sender_id=record.sender_id,
            chat_id=record.chat_id,
            user=record.user,
            last_updated=record.last_updated,
            seen_ids=record.seen_ids,
            agent_joined=record.agent_joined,
            wait_estimate=record.wait_estimate,
            records=RecordCursor(record.conversation, record.sequence),
        )


class ChatRegistry:
    """The live chats this process holds, by sender and by chat id. The
    store's records decide routing; these are the objects (locks, pollers)
    that go with the records this process has seen."""

    def __init__(self) -> None:
        self._active: Dict[str, LiveChat] = {}
        self._by_chat_id: Dict[str, LiveChat] = {}

    def __len__(self) -> int:
        return len(self._active)

    def __iter__(self) -> Iterator[LiveChat]:
        return iter(list(self._active.values()))

    def get(self, sender_id: str) -> Optional[LiveChat]:
        return self._active.get(sender_id)

    def by_chat_id(self, chat_id: str) -> Optional[LiveChat]:
        return self._by_chat_id.get(chat_id)

    def activate(self, chat: LiveChat) -> LiveChat:
        """Register a chat; if one is already registered for the sender, keep that one."""
        registered = self._active.setdefault(chat.sender_id, chat)
        self._by_chat_id.setdefault(registered.chat_id, registered)
        return registered

    def deactivate(self, chat: LiveChat) -> bool:
        """Unregister and stop its poller; False when the chat had already
        ended (so ending runs once)."""
        if chat.ended:
            return False
        chat.ended = True
        if self._active.get(chat.sender_id) is chat:
            del self._active[chat.sender_id]
        if self._by_chat_id.get(chat.chat_id) is chat:
            del self._by_chat_id[chat.chat_id]
        stop_polling(chat)
        return True


def stop_polling(chat: LiveChat) -> None:
    """Cancel the chat's poll in flight (unless it is the caller): its
    messages stay unread in ServiceNow."""
    poller, chat.poller = chat.poller, None
    if poller is not None and poller is not asyncio.current_task():
        poller.cancel()


class OpensInFlight:
    """Handoffs being opened: messages of the conversation wait for them
    (``by_sender``), and so do ServiceNow's pushes for a chat id chosen before
    the open returned (``by_chat_id``). Each future resolves to the chat, or
    None when the open failed. Failed opens are remembered for a while, so a
    message sent during one gets a clear answer instead of the bot."""

    def __init__(self) -> None:
        self.by_sender: Dict[str, "asyncio.Future[Optional[LiveChat]]"] = {}
        self.by_chat_id: Dict[str, "asyncio.Future[Optional[LiveChat]]"] = {}
        #: Sender -> (when the open was asked for, when it failed), loop time.
        self._failed: "OrderedDict[str, Tuple[float, float]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self.by_sender)

    def failed(self, sender_id: str, asked_at: float, failed_at: float) -> None:
        self._failed[sender_id] = (asked_at, failed_at)
        self._failed.move_to_end(sender_id)
        while len(self._failed) > FAILED_OPENS_KEPT:
            self._failed.popitem(last=False)

    def failed_for(self, sender_id: str, arrived_at: float) -> bool:
        """True when a message that arrived at ``arrived_at`` (loop time) was
        sent while a handoff of its conversation was opening and failed to."""
        window = self._failed.get(sender_id)
        return window is not None and window[0] <= arrived_at < window[1]
