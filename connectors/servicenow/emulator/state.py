"""In-memory state of one emulator instance.

All state hangs off one :class:`EmulatorState` stored on the aiohttp app (``app[STATE_KEY]``); there are no
module-level globals, so several emulators can run in one process. The dataclasses here are records; how they look on
the wire is decided by the API modules (``connect.py`` for Connect Support, ``va.py`` for the Virtual Agent API).
"""

from __future__ import annotations

import enum
import itertools
import random
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple, Union

from aiohttp import web

from .callbacks import CallbackDispatcher
from .clock import Clock
from .config import EmulatorConfig
from .faults import FaultRule, RateLimitRule, parse_rules


def _seed(configured: Optional[int]) -> int:
    """The fault draws' seed: the configured one, or a fresh one (shown by ``GET /__emu/faults`` for a replay)."""
    return configured if configured is not None else random.SystemRandom().randrange(2**31)


def new_sys_id() -> str:
    """A ServiceNow-style sys_id: 32 lowercase hex characters."""
    return uuid.uuid4().hex


def display_name(user_name: str) -> str:
    """``beth.anglin`` becomes ``Beth Anglin``: a stand-in for the sys_user name when a test gives none."""
    return " ".join(part.capitalize() for part in user_name.replace("_", ".").split(".") if part)


class QueueEntryState(enum.IntEnum):
    """``chat_queue_entry.state`` codes as the Connect UI compares them (numbers, not strings) [V 1.3]."""

    WAITING = 1
    WORK_IN_PROGRESS = 2
    CLOSED_COMPLETE = 3
    CLOSED_ESCALATED = 4
    CLOSED_BY_CLIENT = 7
    CLOSED_ABANDONED = 8

    @property
    def is_open(self) -> bool:
        return self in (QueueEntryState.WAITING, QueueEntryState.WORK_IN_PROGRESS)


@dataclass
class UserRecord:
    """A ServiceNow user as far as chat is concerned: ``sys_user`` id and its ``live_profile`` id."""

    user_name: str
    name: str
    sys_id: str = field(default_factory=new_sys_id)
    profile: str = field(default_factory=new_sys_id)


@dataclass
class Message:
    """A ``live_message`` row. ``author`` is ``None`` for system messages."""

    sys_id: str
    group: str
    text: str
    author: Optional[UserRecord]
    timestamp: int
    #: Insertion order; breaks ties between messages that share a millisecond.
    seq: int
    reflected_field: str = "comments"
    attachments: List[Any] = field(default_factory=list)

    @property
    def is_work_note(self) -> bool:
        return self.reflected_field == "work_notes"


@dataclass
class ConnectSession:
    """A Connect Support chat: the ``chat_queue_entry`` plus its conversation (``group``) and messages."""

    sys_id: str
    number: str
    queue_id: str
    group: str
    requester: UserRecord
    short_description: str
    created_ms: int
    #: Insertion order among sessions, for "oldest waiting".
    seq: int
    state: QueueEntryState = QueueEntryState.WAITING
    agent: Optional[UserRecord] = None
    #: Order of acceptance, for "the most recently accepted live session".
    accept_seq: int = -1
    work_start_ms: Optional[int] = None
    work_end_ms: Optional[int] = None
    updated_ms: int = 0
    last_activity_ms: int = 0
    requester_left: bool = False
    transfer_state: str = ""
    transfer_from: str = ""
    transfer_to: str = ""
    transfer_updated_ms: Optional[int] = None
    #: Kept in ``(timestamp, seq)`` order, so a page is a slice however long the thread grows.
    messages: List[Message] = field(default_factory=list)


class VaState(str, enum.Enum):
    """Where a Virtual Agent conversation is (reference 5.4 state table). ``CLOSED``: ended (END/FAULT_CONVERSATION,
    timeout, no agents, an agent's close with ``close_style: "completed"``); the next user message starts a new
    conversation (new ``interactionId``). An agent's close with ``close_style: "switch"`` returns to ``VA``."""

    VA = "VA"
    QUEUED = "QUEUED"
    LIVE = "LIVE"
    CLOSED = "CLOSED"

    @property
    def is_open(self) -> bool:
        """A live-agent chat is waiting or in progress: the counterpart of Connect's states 1 and 2."""
        return self in (VaState.QUEUED, VaState.LIVE)


#: ``(appInboundId or "default", userId, clientSessionId)`` [I 5.4].
VaKey = Tuple[str, str, str]


@dataclass
class VaSession:
    """A conversation of the VA Bot Integration API, and the live-agent chat it may turn into."""

    key: VaKey
    #: The emulator's own id (orders the callback outbox; stable across a reopen).
    uid: str
    #: The end user as the transcript shows it (``created_by`` = ``userId``).
    user: UserRecord
    #: The current conversation's ``interaction`` sys_id (pushed as ``interactionId``); new when a closed
    #: conversation starts again (records.py).
    interaction_id: str
    created_ms: int
    seq: int
    #: Base URL the connector reached the emulator at: stands in for the instance URL in ``agentAvatar``.
    instance_url: str
    state: VaState = VaState.VA
    #: ``requestId`` of the latest inbound request that had one; echoed in every callback.
    request_id: str = ""
    #: Latest ``clientVariables`` received; echoed in every callback.
    client_variables: Any = field(default_factory=dict)
    #: The latest user message (``message`` object with text or attachments); echoed by agent-side callbacks.
    last_message: Dict[str, Any] = field(default_factory=dict)
    context_variables: Dict[str, Any] = field(default_factory=dict)
    history: List[Any] = field(default_factory=list)
    #: ``silentMessage`` of the latest request that set it: no Virtual Agent replies while true [V bot-api.md].
    silent: bool = False
    agent: Optional[UserRecord] = None
    #: Order of entering the queue, for "the oldest waiting session" (shares the counter with Connect's ``seq``).
    queued_seq: int = -1
    #: When it last entered the queue (emulator clock), for the agent console's "waiting since".
    queued_ms: Optional[int] = None
    accept_seq: int = -1
    last_activity_ms: int = 0
    #: Transcript: user texts, agent messages (``sys_id`` = the callback's ``messageId``), system texts.
    messages: List[Message] = field(default_factory=list)
    #: TYPING/VIEWING, UPDATE_MESSAGES, END/FAULT_CONVERSATION, ... with timestamps.
    events: List[Dict[str, Any]] = field(default_factory=list)
    #: The accepted inbound requests (``token`` redacted).
    requests: List[Dict[str, Any]] = field(default_factory=list)
    #: ``messageId`` to the latest UPDATE_MESSAGES status (``sent_to_user`` / ``external_error``).
    delivery_status: Dict[str, str] = field(default_factory=dict)
    #: Callbacks created so far.
    callback_count: int = 0
    #: The current conversation's ``sys_cs_conversation`` sys_id (records.py).
    conversation_id: str = ""

    @property
    def client_session_id(self) -> str:
        return self.key[2]


#: ``sys_cs_conversation.state`` values [I, see records.py].
CONVERSATION_OPEN = "open"
CONVERSATION_COMPLETED = "completed"
CONVERSATION_CANCELED = "canceled"
CONVERSATION_FAULTED = "faulted"
#: ``interaction.state`` while the conversation lasts.
INTERACTION_IN_PROGRESS = "work_in_progress"


@dataclass
class CsConversation:
    """A ``sys_cs_conversation`` record."""

    sys_id: str
    created_ms: int
    updated_ms: int
    state: str = CONVERSATION_OPEN
    completed_ms: Optional[int] = None
    live_agent_transfer_ms: Optional[int] = None
    #: The last ``sequence`` given to one of its messages.
    last_sequence: int = 0


@dataclass
class InteractionRecord:
    """An ``interaction`` record of a bot-to-bot conversation."""

    sys_id: str
    number: str
    conversation: str
    client_session_id: str
    user_id: str
    opened_ms: int
    updated_ms: int
    state: str = INTERACTION_IN_PROGRESS
    state_reason: str = ""
    agent_chat: bool = False
    assigned_to: Optional[UserRecord] = None
    closed_ms: Optional[int] = None

    @property
    def active(self) -> bool:
        return self.closed_ms is None


@dataclass
class CsMessage:
    """A ``sys_cs_message`` record."""

    sys_id: str
    conversation: str
    sequence: int
    #: ``inbound`` (from the user, through the connector) or ``outbound`` (to the user, pushed).
    direction: str
    is_agent: bool
    is_bot_message: bool
    #: Who sent it: the ``userId``, the agent's user name, ``system`` or ``virtual_agent`` [I values].
    sender: str
    #: The message as JSON text: the pushed body item, or the inbound ``message`` object.
    payload: str
    created_ms: int
    updated_ms: int
    #: The delivery status the connector reported with UPDATE_MESSAGES (``sent_to_user``, ``external_error``).
    external_chat_status: str = ""


@dataclass
class ConversationTables:
    """The three tables of one emulator."""

    conversations: Dict[str, CsConversation] = field(default_factory=dict)
    interactions: Dict[str, InteractionRecord] = field(default_factory=dict)
    #: In creation order, which is also ``sequence`` order within a conversation.
    messages: List[CsMessage] = field(default_factory=list)
    messages_by_id: Dict[str, CsMessage] = field(default_factory=dict)
    #: Indexes for the Table API: a query on one conversation or one client session reads only its records.
    messages_by_conversation: Dict[str, List[CsMessage]] = field(default_factory=dict)
    interactions_by_session: Dict[str, List[InteractionRecord]] = field(default_factory=dict)
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1001))

    def next_number(self) -> str:
        return f"IMS{next(self._numbers):07d}"


@dataclass
class Token:
    """An issued OAuth access token."""

    access_token: str
    user: str
    client_id: str
    scope: str
    expires_ms: int
    revoked: bool = False


@dataclass
class RefreshGrant:
    """What a refresh token can be exchanged for."""

    refresh_token: str
    user: str
    client_id: str
    scope: str
    revoked: bool = False


@dataclass
class RequestRecord:
    """One inbound request as ``GET /__emu/requests`` shows it (credentials redacted)."""

    at_ms: int
    method: str
    path: str
    query: Dict[str, str]
    headers: Dict[str, str]
    body: Any
    user: Optional[str]
    status: Optional[int]
    #: The fault rule that answered or delayed the request, if any.
    fault: Optional[str]
    #: True when a fault rule closed the connection without a response.
    dropped: bool
    duration_ms: float


class EmulatorState:
    """Everything one emulator instance knows. ``reset()`` returns it to a fresh start with the initial config."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.initial_config = config
        self.clock = Clock()
        #: Outbound VA callbacks; lives as long as the app (its HTTP client is closed on app cleanup).
        self.callbacks = CallbackDispatcher(self, config.request_log_limit)
        self.reset()

    def reset(self) -> None:
        self.config: EmulatorConfig = self.initial_config
        self.clock.freeze(None)
        self.users: Dict[str, UserRecord] = {}
        #: Connect sessions by conversation id (``group``).
        self.sessions: Dict[str, ConnectSession] = {}
        #: Virtual Agent conversations by ``(appInboundId, userId, clientSessionId)``.
        self.va_sessions: Dict[VaKey, VaSession] = {}
        self.access_tokens: Dict[str, Token] = {}
        self.refresh_grants: Dict[str, RefreshGrant] = {}
        self.faults: List[FaultRule] = []
        self.rate_limit: Optional[RateLimitRule] = None
        self.set_faults(self.config.faults)
        #: ``sys_attachment`` records with their bytes, by sys_id (files.py).
        self.files: Dict[str, Any] = {}
        #: The Virtual Agent conversations as ServiceNow's tables hold them (records.py, table.py).
        self.va_tables = ConversationTables()
        self.requests: Deque[RequestRecord] = deque(maxlen=self.config.request_log_limit)
        self.fault_seed = _seed(self.config.random_seed)
        self._seq = itertools.count()
        self._chat_numbers = itertools.count(10001)
        self.callbacks.reset(self.config.request_log_limit)

    def apply_config(self, config: EmulatorConfig) -> None:
        """Switch to ``config`` at runtime, keeping sessions, tokens and faults."""
        if config.request_log_limit != self.config.request_log_limit:
            self.requests = deque(self.requests, maxlen=config.request_log_limit)
            self.callbacks.resize_log(config.request_log_limit)
        if config.random_seed != self.config.random_seed:
            self.fault_seed = _seed(config.random_seed)
        if config.faults != self.config.faults:
            self.set_faults(config.faults)
        self.config = config

    def add_faults(self, rules: List[Union[FaultRule, RateLimitRule]]) -> None:
        """Append fault rules (a rate-limit rule replaces the current one); each keeps its place for its draws."""
        for rule in rules:
            if isinstance(rule, FaultRule):
                rule.ordinal = len(self.faults)
                self.faults.append(rule)
            else:
                self.rate_limit = rule

    def set_faults(self, specs: List[Dict[str, Any]]) -> None:
        """Replace every fault rule with ``specs`` (the ``faults`` config key); they were validated with the config."""
        self.faults = []
        self.rate_limit = None
        self.add_faults(parse_rules(specs))

    def next_seq(self) -> int:
        return next(self._seq)

    def next_chat_number(self) -> str:
        return f"CHAT{next(self._chat_numbers):07d}"

    def user(self, user_name: str, name: Optional[str] = None, sys_id: Optional[str] = None) -> UserRecord:
        """The record for ``user_name``, created on first use; ``name``/``sys_id`` update it when given."""
        record = self.users.get(user_name)
        if record is None:
            record = self.users[user_name] = UserRecord(user_name, name or display_name(user_name))
        if name:
            record.name = name
        if sys_id:
            record.sys_id = sys_id
        return record

    def find_session(self, session_id: str) -> Optional[ConnectSession]:
        """The Connect session whose ``group`` is ``session_id`` (VA sessions: :meth:`find_va_sessions`)."""
        return self.sessions.get(session_id)

    def find_va_sessions(self, session_id: str) -> List[VaSession]:
        """VA sessions a control-plane caller may mean by ``session_id``: its ``clientSessionId`` or, to tell apart
        sessions that share one, its current ``interactionId``."""
        by_client = [s for s in self.va_sessions.values() if s.client_session_id == session_id]
        return by_client or [s for s in self.va_sessions.values() if s.interaction_id == session_id]


STATE_KEY = web.AppKey("servicenow_emulator_state", EmulatorState)
