"""A Virtual Agent chat read back from ServiceNow's own record of it, over the
Table API: what the pushes said, also those that never arrived.

ServiceNow documents no retry for its pushes, so one made while no replica
was up, or lost on the way, is gone; the conversation itself is kept by the
instance (docs/reliability.md lists the sources):

* ``interaction``: one per chat, found by ``client_session_id`` (the chat id;
  stored when the provider property ``third_party_chat`` is true);
  ``channel_metadata_document`` is its conversation, ``active``, ``state``
  and ``state_reason`` say whether and how it ended.
* ``sys_cs_message``: every message of the conversation, both ways, numbered
  by ``sequence``. An outbound record's ``sys_id`` is the ``messageId`` of
  the push item that carried it, and its ``payload`` that item.

``ConversationRecords.catch_up`` reads one chat's outbound records after a
cursor (the last ``sequence`` handled), in ``sequence`` order, a page at a
time, and turns each into the events its push gives
(``virtual_agent.item_events``): a recovered message has the pushed one's
id, text and rich fields, and a recovered ``SwitchToVirtualAgent`` ends the
chat as the push would. Once the conversation is known a call costs one
request; the interaction (is the chat over?) is read again when asked, or
when the records hold a message no push brought: a push was lost, and the
one that ended the chat may have been too.

Every record is checked against what was asked: an instance ignores a
condition on a field it does not have (``glide.invalid_query.returns_no_rows``
is false by default) and would answer with other conversations' records.

Without read access (403) this says so once, and calls fail fast with
``NoReadAccess`` until ``ACCESS_RECHECK_S`` has passed: the channel goes on
with pushes alone. 429, 5xx and timeouts are retried by ``ServiceNowHTTP``
under the configured policy and end as ``ServiceNowUnavailable``.
"""

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from connectors.servicenow.servicenow.base import AgentEvent, ChatClosed, CloseReason, checked_chat_id
from connectors.servicenow.servicenow.http import ServiceNowHTTP, result_of
from connectors.servicenow.servicenow.virtual_agent import item_events
from connectors.servicenow.errors import AuthenticationFailed, ServiceNowRejected
from connectors.servicenow.payloads import MAX_CALLBACK_BYTES, PayloadError, decode_json

logger = logging.getLogger(__name__)

TABLE_PATH = "/api/now/table/"
INTERACTION_TABLE = "interaction"
MESSAGE_TABLE = "sys_cs_message"
CONVERSATION_TABLE = "sys_cs_conversation"
#: What reconciliation reads; the doctor checks the same list.
TABLES = (INTERACTION_TABLE, MESSAGE_TABLE)
#: The role that may read both (KB0818857; the Interaction Management components page).
READ_ROLE = "interaction_agent"
#: Records per request; a chat's backlog beyond ``PAGE_SIZE * MAX_PAGES`` is read on the next call.
PAGE_SIZE = 100
MAX_PAGES = 10
#: How long a refused table is left alone before it is tried again.
ACCESS_RECHECK_S = 600.0
#: ``interaction.state`` values of an interaction that is over (va-interactions.md; ``faulted`` [I]).
CLOSED_STATES = frozenset({"closed_complete", "closed_abandoned", "faulted"})
#: The ``state_reason`` of an agent's close: the push said ``completed``; every other end said ``takeControl``.
AGENT_ENDED = "Agent Ended"
_INTERACTION_FIELDS = "sys_id,client_session_id,state,state_reason,active,channel_metadata_table,channel_metadata_document"
_MESSAGE_FIELDS = "sys_id,conversation,sequence,direction,is_agent,is_bot_message,payload"

Clock = Callable[[], float]
#: Whether a message id was already delivered (by a push or an earlier read).
Seen = Callable[[str], bool]


class NoReadAccess(ServiceNowRejected):
    """The integration user may not read a table reconciliation needs."""

    def __init__(self, table: str, detail: str = "") -> None:
        super().__init__(f"The integration user may not read {table}", status=403, detail=detail)
        self.table = table


@dataclass(frozen=True, slots=True)
class RecordCursor:
    """How far a chat's records were read: its conversation, once found, and
    the last outbound ``sequence`` handled."""

    conversation_id: Optional[str] = None
    sequence: int = 0

    def after(self, other: "RecordCursor") -> bool:
        """Whether this cursor is further on than ``other``: a later sequence
        of the same conversation, or another conversation found since."""
        if self.conversation_id != other.conversation_id:
            return self.conversation_id is not None
        return self.sequence > other.sequence

    def to_dict(self) -> Dict[str, Any]:
        return {"conversation_id": self.conversation_id, "sequence": self.sequence}

    @classmethod
    def from_dict(cls, value: Any) -> "RecordCursor":
        """A cursor from ``to_dict``'s shape; the start for anything else (a
        cursor read back from a store is outside this channel's control)."""
        if not isinstance(value, Mapping):
            return cls()
        conversation = value.get("conversation_id")
        sequence = value.get("sequence")
        return cls(
            conversation if isinstance(conversation, str) and conversation else None,
            sequence if isinstance(sequence, int) and not isinstance(sequence, bool) and sequence >= 0 else 0,
        )


@dataclass(frozen=True)
class Interaction:
    sys_id: str
    conversation_id: str
    state: str
    state_reason: str
    active: bool

    @property
    def ended(self) -> bool:
        return not self.active or self.state in CLOSED_STATES

    def closed(self) -> Optional[ChatClosed]:
        """The end of the chat as the push that announced it would give it."""
        if not self.ended:
            return None
        reason = CloseReason.AGENT_CLOSED if self.state_reason == AGENT_ENDED else CloseReason.RETURNED
        return ChatClosed(reason)


@dataclass(frozen=True)
class Recovered:
    """One outbound record, as the events its push gives."""

    sequence: int
    message_id: str
    events: Tuple[AgentEvent, ...]


@dataclass(frozen=True)
class CatchUp:
    #: The outbound records after the cursor, in ``sequence`` order, seen or not.
    recovered: Tuple[Recovered, ...]
    #: Where the next call starts.
    cursor: RecordCursor
    #: The chat is over on ServiceNow's side; comes after ``recovered``.
    closed: Optional[ChatClosed]
    #: Records ``seen`` did not know: messages whose push did not arrive (yet).
    unseen: int
    #: Requests made (retries not counted).
    requests: int


class ConversationRecords:
    """Reads Virtual Agent chats back from the instance's tables with the
    channel's HTTP client (its credentials, pool and retry policy)."""

    def __init__(self, http: ServiceNowHTTP, *, clock: Clock = time.monotonic, page_size: int = PAGE_SIZE) -> None:
        self._http = http
        self._clock = clock
        self._page_size = page_size
        self._refused_until: Dict[str, float] = {}
        self._said_refused: Set[str] = set()
        self._said: Set[str] = set()

    def readable(self) -> bool:
        """False while a table was refused and is not due for another try."""
        now = self._clock()
        return all(now >= self._refused_until.get(table, 0.0) for table in TABLES)

    async def interaction(self, chat_id: str) -> Optional[Interaction]:
        """The chat's newest interaction, or None when the instance shows none."""
        rows = await self._read(
            INTERACTION_TABLE,
            {
                "sysparm_query": f"client_session_id={checked_chat_id(chat_id)}^ORDERBYDESCsys_created_on^ORDERBYDESCnumber",
                "sysparm_fields": _INTERACTION_FIELDS,
                "sysparm_limit": "1",
            },
        )
        for row in rows:
            found = _interaction(row, chat_id)
            if found is not None:
                return found
            self._say_once("foreign", "ServiceNow answered an interaction query with another chat's record (a field "
                                      "the instance does not have?); reconciliation ignores it.")
        if not rows:
            self._say_once("no-interaction", "ServiceNow shows no interaction for chat %s: reconciliation needs the "
                                             "provider property third_party_chat=true (docs/servicenow-setup.md).",
                           chat_id, level=logging.INFO)
        return None

    async def messages_after(self, conversation_id: str, sequence: int) -> Tuple[List["_Record"], int, bool]:
        """The conversation's outbound records after ``sequence``, in order:
        the records, the requests made, and whether more remain unread."""
        records: List[_Record] = []
        after = sequence
        for page in range(MAX_PAGES):
            rows = await self._read(
                MESSAGE_TABLE,
                {
                    "sysparm_query": f"conversation={conversation_id}^direction=outbound^sequence>{after}^ORDERBYsequence",
                    "sysparm_fields": _MESSAGE_FIELDS,
                    "sysparm_limit": str(self._page_size),
                },
            )
            valid = [record for record in (_record(row, conversation_id, after) for row in rows) if record is not None]
            if len(valid) != len(rows):
                # The instance did not apply the query: reading on would walk other conversations.
                self._say_once("foreign", "ServiceNow answered a sys_cs_message query with records outside it (a field "
                                          "the instance does not have?); reconciliation ignores them.")
                return _ordered(records + valid), page + 1, False
            records.extend(valid)
            if len(rows) < self._page_size:
                return _ordered(records), page + 1, False
            after = max(record.sequence for record in valid)
        return _ordered(records), MAX_PAGES, True

    async def catch_up(
        self,
        chat_id: str,
        cursor: RecordCursor,
        seen: Seen = lambda _message_id: False,
        *,
        check_state: bool = False,
        state_on_unseen: bool = True,
    ) -> CatchUp:
        """What the chat's records say after ``cursor``: see the module docstring.

        Raises ``NoReadAccess`` (also without a request while a refusal is
        fresh), ``ServiceNowUnavailable`` or ``ServiceNowRejected``."""
        requests = 0
        interaction: Optional[Interaction] = None
        if cursor.conversation_id is None or check_state:
            interaction = await self.interaction(chat_id)
            requests += 1
            if interaction is None:
                return CatchUp((), cursor, None, 0, requests)
            if interaction.conversation_id != cursor.conversation_id:
                # A conversation not read before starts from its first message.
                cursor = RecordCursor(interaction.conversation_id, 0)
        assert cursor.conversation_id is not None
        records, made, _more = await self.messages_after(cursor.conversation_id, cursor.sequence)
        requests += made
        arrived = time.time() * 1000
        recovered = tuple(Recovered(r.sequence, r.message_id, r.events(arrived)) for r in records)
        unseen = sum(1 for item in recovered if not seen(item.message_id))
        if interaction is None and unseen and state_on_unseen:
            interaction = await self.interaction(chat_id)
            requests += 1
        if records:
            cursor = RecordCursor(cursor.conversation_id, records[-1].sequence)
        closed = interaction.closed() if interaction is not None else None
        if unseen:
            logger.debug("Read %d message(s) of chat %s not seen here.", unseen, chat_id)
        return CatchUp(recovered, cursor, closed, unseen, requests)

    async def _read(self, table: str, params: Dict[str, str]) -> List[Mapping[str, Any]]:
        until = self._refused_until.get(table)
        if until is not None and self._clock() < until:
            raise NoReadAccess(table)
        query = {**params, "sysparm_exclude_reference_link": "true", "sysparm_no_count": "true"}
        try:
            body = await self._http.request("GET", TABLE_PATH + table, params=query)
        except ServiceNowRejected as error:
            if error.status == 403 and not isinstance(error, AuthenticationFailed):
                self._refused(table, error.detail)
                raise NoReadAccess(table, error.detail) from None
            raise
        self._granted(table)
        rows = result_of(body)
        if not isinstance(rows, list):
            raise ServiceNowRejected(f"ServiceNow answered a {table} query without a list", status=200)
        return [row for row in rows if isinstance(row, dict)]

    def _refused(self, table: str, detail: str) -> None:
        self._refused_until[table] = self._clock() + ACCESS_RECHECK_S
        if table in self._said_refused:
            logger.debug("ServiceNow still refuses to let the integration user read %s.", table)
            return
        self._said_refused.add(table)
        logger.warning(
            "The integration user may not read %s (HTTP 403%s): messages whose push is lost cannot be recovered, "
            "pushes alone are relayed. Give the user the %s role (docs/servicenow-setup.md); tried again every %.0f s.",
            table, f": {detail}" if detail else "", READ_ROLE, ACCESS_RECHECK_S,
        )

    def _granted(self, table: str) -> None:
        if self._refused_until.pop(table, None) is not None:
            self._said_refused.discard(table)
            logger.info("The integration user may read %s again: reconciliation resumes.", table)

    def _say_once(self, key: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
        if key in self._said:
            logger.debug(message, *args)
            return
        self._said.add(key)
        logger.log(level, message, *args)


@dataclass(frozen=True)
class _Record:
    sys_id: str
    sequence: int
    is_agent: bool
    is_bot_message: bool
    payload: Any

    @property
    def message_id(self) -> str:
        item = self.item()
        message_id = item.get("messageId") if item is not None else None
        return message_id if isinstance(message_id, str) and message_id else self.sys_id

    def item(self) -> Optional[Dict[str, Any]]:
        """The push body item the record keeps (its ``payload``)."""
        payload = self.payload
        if isinstance(payload, str):
            try:
                payload = decode_json(payload.encode("utf-8", "surrogatepass"), max_bytes=MAX_CALLBACK_BYTES)
            except PayloadError:
                # [I] a payload that is not the item: its text, as the agent's or the system's.
                text = self.payload.strip()
                if not text:
                    return None
                item: Dict[str, Any] = {"uiType": "OutputText", "value": text}
                if self.is_agent:
                    item["agentInfo"] = {"sentFromAgent": True}
                return item
        return dict(payload) if isinstance(payload, dict) else None

    def events(self, arrived: float) -> Tuple[AgentEvent, ...]:
        item = self.item()
        if item is None:
            return ()
        # The push's agentChat is not kept; the record says whether the
        # Virtual Agent itself spoke (whose own texts came without it).
        agent_chat = not self.is_bot_message
        return tuple(item_events(item, agent_chat=agent_chat, fallback_id=self.message_id, arrived=arrived))


def _interaction(row: Mapping[str, Any], chat_id: str) -> Optional[Interaction]:
    if _value(row.get("client_session_id")) != chat_id:
        return None
    metadata_table = _value(row.get("channel_metadata_table"))
    conversation = _value(row.get("channel_metadata_document"))
    sys_id = _value(row.get("sys_id"))
    if not conversation or not sys_id or metadata_table not in ("", CONVERSATION_TABLE):
        return None
    return Interaction(
        sys_id=sys_id,
        conversation_id=conversation,
        state=_value(row.get("state")),
        state_reason=_value(row.get("state_reason")),
        active=_value(row.get("active")) != "false",
    )


def _record(row: Mapping[str, Any], conversation_id: str, after: int) -> Optional[_Record]:
    sys_id = _value(row.get("sys_id"))
    try:
        sequence = int(_value(row.get("sequence")))
    except ValueError:
        return None
    if (
        not sys_id
        or sequence <= after
        or _value(row.get("conversation")) != conversation_id
        or _value(row.get("direction")) != "outbound"
    ):
        return None
    return _Record(
        sys_id=sys_id,
        sequence=sequence,
        is_agent=_value(row.get("is_agent")) == "true",
        is_bot_message=_value(row.get("is_bot_message")) == "true",
        payload=row.get("payload"),
    )


def _ordered(records: List[_Record]) -> List[_Record]:
    return sorted(records, key=lambda record: record.sequence)


def _value(field: Any) -> str:
    """A Table API value as text: a reference's sys_id (``{"value": ...}``), a string, else empty."""
    if isinstance(field, dict):
        field = field.get("value")
    return field if isinstance(field, str) else ""
