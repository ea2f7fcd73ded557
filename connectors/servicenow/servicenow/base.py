"""The interface every ServiceNow client implements, the values it takes
and the events it produces for the core.

A client ("backend") speaks one ServiceNow API. It opens a chat for a
handoff request, sends the user's messages, leaves the chat, and turns what
ServiceNow says into ``AgentEvent`` values. It holds no conversation state:
every call names its chat (``ChatRef``) and, to read, where reading got to
(``Cursor``). How events arrive differs: a pull client (Connect Support) is
polled by the core, a push client (Virtual Agent) is fed by ServiceNow's
callbacks. Everything after that, delivery to the user, deduplication and
ending the handoff, is the same for both (core/intake.py).
"""

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote

from connectors.servicenow.attachments import AttachmentPolicy, AttachmentRefused, UserAttachment
from connectors.servicenow.errors import UnsafeChatId
from connectors.servicenow.logsafe import loggable

#: What a chat id may look like: Connect's ``group`` sys_ids and the Virtual
#: Agent ``clientSessionId`` values this channel makes are hex; a little more
#: room for other instances, never a slash, a dot-dot or a query.
CHAT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:-]{0,127}")


def is_valid_chat_id(chat_id: Any) -> bool:
    return isinstance(chat_id, str) and CHAT_ID_PATTERN.fullmatch(chat_id) is not None


def checked_chat_id(chat_id: Any) -> str:
    """``chat_id`` when it is one ServiceNow could have given; ``UnsafeChatId`` otherwise.

    Chat ids are read back from tracker stores, which are outside this
    channel's control: one is checked before every request that carries it.
    """
    if not is_valid_chat_id(chat_id):
        raise UnsafeChatId(f"refusing to use the malformed chat id {loggable(chat_id)!r}")
    return chat_id


def chat_path_segment(chat_id: Any) -> str:
    """A checked chat id, quoted for a URL path (a no-op for a valid id; kept so no path is ever built raw)."""
    return quote(checked_chat_id(chat_id), safe="")


#: How many recent message ids a cursor keeps to recognise what it has handled.
SEEN_IDS_KEPT = 100


@dataclass(frozen=True, slots=True)
class ChatRef:
    """Which ServiceNow chat a call is about, and on whose behalf."""

    chat_id: str
    #: The Rasa conversation (Virtual Agent echoes it in ``clientVariables``).
    sender_id: str
    #: The ServiceNow account the chat runs as: the Connect integration user
    #: (whose own messages a poll skips), the Virtual Agent ``userId``.
    user: Optional[str] = None


@dataclass(frozen=True)
class Cursor:
    """Where reading a chat got to: ServiceNow's time (epoch ms) of the
    newest message seen, and the ids of the newest ones, so that messages
    sharing a timestamp, or committed late, are read once."""

    last_updated: Optional[float] = None
    seen_ids: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Turn:
    """One earlier turn of the conversation, for the agent's context."""

    text: str
    from_bot: bool
    timestamp_ms: float


@dataclass(frozen=True)
class Requester:
    """Who the user is, as far as ServiceNow is told. The channel fills it
    from a verified token or a trusted frontend only (see docs/security.md);
    a backend sends what it finds here and nothing from the request metadata."""

    #: Virtual Agent ``userId``; the sender id when not set.
    user_id: Optional[str] = None
    #: Virtual Agent ``emailId``.
    email: Optional[str] = None
    #: The user's display name (Virtual Agent history entries).
    name: Optional[str] = None


@dataclass(frozen=True)
class HandoffRequest:
    """What the bot asked for when it handed the conversation over."""

    sender_id: str
    #: The user's request; the agent sees it as the first message of the chat.
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: Routes the chat to another queue than the configured one.
    queue_id: Optional[str] = None
    #: Extra routing variables for this handoff (Virtual Agent ``contextVariables``).
    context_variables: Mapping[str, Any] = field(default_factory=dict)
    #: The conversation so far, oldest first (sent where the API has room for it).
    history: Sequence[Turn] = ()
    requester: Requester = field(default_factory=Requester)


@dataclass(frozen=True)
class OpenedChat:
    chat_id: str
    #: The ServiceNow identity of the chat's requester: the Connect
    #: integration account, or the Virtual Agent ``userId``.
    user: Optional[str]
    #: ServiceNow's time of the opening message (epoch ms), when it says.
    opened_at: Optional[float] = None


@dataclass(frozen=True)
class AgentMessage:
    message_id: str
    text: str
    agent_name: Optional[str]
    timestamp: float
    #: Rich content mapped to Rasa message fields (``image``, ``buttons``, ``attachment``, ``custom``).
    rich: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SystemNotice:
    """Something ServiceNow says to the user that no agent typed: an agent
    joining (``kind="system"``), a queue wait estimate (``kind="wait"``),
    or the virtual agent speaking (``kind="virtual_agent"``)."""

    message_id: str
    text: str
    timestamp: float
    kind: str = "system"
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentTyping:
    typing: bool


@dataclass(frozen=True)
class AgentJoined:
    """A live agent accepted the chat (no text of its own)."""

    agent_name: Optional[str] = None
    #: The ``SwitchToLiveAgent`` message's id, when ServiceNow gives one.
    message_id: Optional[str] = None


class CloseReason(str, Enum):
    AGENT_CLOSED = "agent_closed"
    ESCALATED = "escalated"
    ABANDONED = "abandoned"
    #: ServiceNow gave control back to the bot: no agent available, time-out, ...
    RETURNED = "returned"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class ChatClosed:
    reason: CloseReason
    #: ServiceNow's own wording, e.g. "Beth Anglin has left the support session".
    text: Optional[str] = None
    message_id: Optional[str] = None
    timestamp: Optional[float] = None


AgentEvent = Union[AgentMessage, SystemNotice, AgentTyping, AgentJoined, ChatClosed]


@dataclass(frozen=True)
class PollResult:
    """New events since the chat's cursor, and where the cursor moves."""

    events: Sequence[AgentEvent]
    last_updated: Optional[float]
    seen_ids: Sequence[str]
    requests: int = 1

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.last_updated, tuple(self.seen_ids))


@dataclass(frozen=True)
class SentMessage:
    message_id: Optional[str]
    timestamp: Optional[float]


@dataclass(frozen=True)
class Callback:
    """One push from ServiceNow, already parsed and authenticated."""

    chat_id: str
    #: The Rasa conversation, when ServiceNow echoed it back.
    sender_id: Optional[str]
    #: Identifies a repeat of the same callback.
    fingerprint: str
    events: Sequence[AgentEvent]


@dataclass(frozen=True)
class QueueStatus:
    """What ServiceNow says about a chat waiting in its queue, when it says."""

    #: Whether the chat still waits for an agent: None when the API cannot tell.
    waiting: Optional[bool] = None
    #: 1-based place in the queue.
    position: Optional[int] = None
    #: ServiceNow's estimate of the wait: seconds, or a text it worded ("8 Seconds").
    wait_time: Union[str, float, None] = None


class Backend(ABC):
    #: The ``api`` option value this backend serves.
    api: str
    #: True when the relay must poll ``poll()``; False when ServiceNow pushes.
    pulls: bool
    #: True when ``open_chat`` uses ``HandoffRequest.history``.
    wants_history: bool = False

    def reserve_chat_id(self) -> Optional[str]:
        """A chat id chosen before the chat opens, when the API lets the client
        choose it; callbacks can then arrive before ``open_chat`` returns."""
        return None

    @abstractmethod
    async def open_chat(self, request: HandoffRequest, chat_id: Optional[str] = None) -> OpenedChat:
        """Create the chat in ServiceNow with the user's request as first message."""

    @abstractmethod
    async def send(self, chat: ChatRef, text: str) -> SentMessage:
        """Post one user message into the chat."""

    async def send_attachment(
        self, chat: ChatRef, text: str, attachment: UserAttachment, policy: AttachmentPolicy
    ) -> SentMessage:
        """Post one user file (and its text, possibly empty) into the chat.
        Raises ``AttachmentRefused`` before anything is sent when ``policy`` refuses it."""
        raise AttachmentRefused(f"the {self.api} backend cannot send files")

    @abstractmethod
    async def leave(self, chat: ChatRef) -> None:
        """End the chat on ServiceNow's side. Leaving a closed chat is not an error."""

    async def abort(self, chat: ChatRef, cause: str) -> None:
        """End the chat because this side failed; ``cause`` is for ServiceNow's records."""
        await self.leave(chat)

    #: Whether ``send_typing`` shows anything to the agent.
    shows_typing: bool = False

    async def send_typing(self, chat: ChatRef, typing: bool) -> bool:
        """Show the agent that the user is typing; False where the API cannot."""
        return False

    async def report_delivery(self, chat: ChatRef, message_id: str, delivered: bool) -> None:
        """Tell ServiceNow whether an agent message reached the user, where the API can."""

    async def poll(self, chat: ChatRef, cursor: Cursor) -> PollResult:
        """Fetch what is new since ``cursor`` (pull backends only)."""
        raise NotImplementedError(f"the {self.api} backend does not poll")

    async def check_closed(self, chat: ChatRef) -> Optional[ChatClosed]:
        """Ask ServiceNow whether the chat has ended (pull backends only)."""
        return None

    async def unavailable_reason(self, queue_id: Optional[str]) -> Optional[str]:
        """Why no chat should be opened now (nobody is available to take it),
        or None when ServiceNow does not say so or cannot tell."""
        return None

    async def queue_status(self, chat: ChatRef) -> QueueStatus:
        """The chat's place in the queue while it waits, where the API tells."""
        return QueueStatus()

    def parse_callback(self, payload: Mapping[str, Any]) -> Callback:
        """Turn a pushed payload into events (push backends only)."""
        raise NotImplementedError(f"the {self.api} backend receives no callbacks")

    async def aclose(self) -> None:
        """Release connections."""
