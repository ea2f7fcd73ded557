"""The Table API, read side: ``GET /api/now/table/{tableName}`` and ``GET /api/now/table/{tableName}/{sys_id}``
(also under ``/api/now/v1/`` and ``/api/now/v2/``), over the tables the emulator keeps:

* ``sys_cs_conversation``, ``interaction``, ``sys_cs_message``: the Virtual Agent conversations (records.py);
* ``sys_user``: the agents (and integration users) the emulator has met, so reference links resolve;
* ``sys_cs_provider_application``: the provider applications of ``va_provider_applications`` (what the doctor checks
  an ``appInboundId`` against).

What ServiceNow's Table API documentation gives [V c_TableAPI.md] and is emulated: ``{"result": [...]}`` (one object
for a single record), every value a string, reference fields as ``{"link", "value"}`` unless
``sysparm_exclude_reference_link=true`` (then the sys_id), ``sysparm_display_value`` ``false``/``true``/``all``,
``sysparm_fields``, ``sysparm_limit`` (default 10000), ``sysparm_offset``, ``sysparm_no_count``, the
``X-Total-Count`` and ``Link`` headers, name-value pair filters, and ``sysparm_query``: conditions
``<field><operator><value>`` joined by ``^`` (AND), ``^OR`` (OR with the condition before), ``^NQ`` (a new query,
OR-ed), ordering by ``ORDERBY<field>`` and ``ORDERBYDESC<field>``, operators ``=``, ``!=``, ``>``, ``>=``, ``<``,
``<=``, ``LIKE``, ``NOT LIKE``, ``STARTSWITH``, ``ENDSWITH``, ``IN``, ``NOT IN``, ``ISEMPTY``, ``ISNOTEMPTY``. An
invalid part of a query (unknown field or operator) is ignored, as the instance does by default; with
``table_invalid_query_returns_no_rows`` (the instance's ``glide.invalid_query.returns_no_rows``) it returns no rows.
Version 1 answers 404 for a query without results, later versions 200 with ``[]`` [V].

Emulator choices [I]: without ``ORDERBY`` rows come in creation order; ``>``/``<`` compare numbers on numeric fields
(``sequence``) and text otherwise (which orders ``YYYY-MM-DD HH:MM:SS`` dates correctly); a table the emulator does
not keep answers like a URI no API serves (400); a table the caller may not read (not in ``table_read_access``) is a 403
``Insufficient rights to query records``, the body public clients report from real instances.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple, Union
from urllib.parse import urlencode

from aiohttp import web

from .clock import format_glide_datetime
from .responses import NO_RECORD, sn_error
from .state import STATE_KEY, EmulatorState

TABLE_PREFIX = "/api/now/table/"
#: The default (latest) version behaves like v2.
_ROUTES = ("/api/now/table/{table}", "/api/now/{version:v[0-9]+}/table/{table}")
DEFAULT_LIMIT = 10000
INSUFFICIENT_RIGHTS = ("Insufficient rights to query records", "Field(s) present in the query do not have permission to be read")
#: Longest first, so ``!=`` is not read as ``=`` and ``NOT LIKE`` not as ``LIKE``.
OPERATORS = (
    "ISNOTEMPTY",
    "ISEMPTY",
    "NOT LIKE",
    "NOT IN",
    "STARTSWITH",
    "ENDSWITH",
    "LIKE",
    "IN",
    "!=",
    ">=",
    "<=",
    "=",
    ">",
    "<",
)
_TERM = re.compile(r"^([a-z_][a-z0-9_]*)(" + "|".join(re.escape(op) for op in OPERATORS) + r")(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Ref:
    """A reference field: the referenced record's table, sys_id and display value."""

    table: str
    sys_id: str
    display: str


Value = Union[str, Ref]
Row = Dict[str, Value]


@dataclass(frozen=True)
class Table:
    name: str
    #: Every field a row has, in the order records show them.
    fields: Tuple[str, ...]
    #: Every row, or with a list of values of ``indexed`` only the rows that have one of them.
    rows: Callable[..., Iterable[Row]]
    #: Fields compared and ordered as numbers.
    numeric: FrozenSet[str] = frozenset()
    #: Display values of choice fields.
    choices: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: A field the table is indexed on [I, for speed]: a query that asks for given values of it in every
    #: alternative reads only those records (``rows(state, values)``); the answer is the same.
    indexed: Optional[str] = None


def _when(ms: Optional[int]) -> str:
    return format_glide_datetime(ms) if ms is not None else ""


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _user_ref(state: EmulatorState, user: Any) -> Value:
    return Ref("sys_user", user.sys_id, user.name) if user is not None else ""


def _conversation_rows(state: EmulatorState) -> Iterable[Row]:
    for conversation in state.va_tables.conversations.values():
        yield {
            "sys_id": conversation.sys_id,
            "state": conversation.state,
            "conversation_completed": _when(conversation.completed_ms),
            "live_agent_transfer_time": _when(conversation.live_agent_transfer_ms),
            "device_type": "bot_to_bot",
            "sys_created_on": _when(conversation.created_ms),
            "sys_updated_on": _when(conversation.updated_ms),
        }


def _interaction_rows(state: EmulatorState, only: Optional[Iterable[str]] = None) -> Iterable[Row]:
    tables = state.va_tables
    if only is None:
        chosen: Iterable[Any] = tables.interactions.values()
    else:
        chosen = [i for session in only for i in tables.interactions_by_session.get(session, [])]
    for interaction in chosen:
        yield {
            "sys_id": interaction.sys_id,
            "number": interaction.number,
            "type": "chat",
            "state": interaction.state,
            "state_reason": interaction.state_reason,
            "active": _flag(interaction.active),
            "virtual_agent": "true",
            "agent_chat": _flag(interaction.agent_chat),
            "assigned_to": _user_ref(state, interaction.assigned_to),
            "client_session_id": interaction.client_session_id,
            "channel_metadata_table": "sys_cs_conversation",
            "channel_metadata_document": interaction.conversation,
            "opened_at": _when(interaction.opened_ms),
            "closed_at": _when(interaction.closed_ms),
            "sys_created_on": _when(interaction.opened_ms),
            "sys_updated_on": _when(interaction.updated_ms),
        }


def _message_rows(state: EmulatorState, only: Optional[Iterable[str]] = None) -> Iterable[Row]:
    tables = state.va_tables
    if only is None:
        chosen: Iterable[Any] = tables.messages
    else:
        chosen = [m for conversation in only for m in tables.messages_by_conversation.get(conversation, [])]
    for message in chosen:
        yield {
            "sys_id": message.sys_id,
            "conversation": Ref("sys_cs_conversation", message.conversation, message.conversation),
            "sequence": str(message.sequence),
            "direction": message.direction,
            "is_agent": _flag(message.is_agent),
            "is_bot_message": _flag(message.is_bot_message),
            "sender": message.sender,
            "payload": message.payload,
            "external_chat_status": message.external_chat_status,
            "send_time": _when(message.created_ms),
            "sys_created_on": _when(message.created_ms),
            "sys_created_by": message.sender,
            "sys_updated_on": _when(message.updated_ms),
        }


def _user_rows(state: EmulatorState) -> Iterable[Row]:
    for user in state.users.values():
        yield {"sys_id": user.sys_id, "user_name": user.user_name, "name": user.name}


def _provider_application_rows(state: EmulatorState) -> Iterable[Row]:
    for inbound_id, name in state.config.va_provider_applications.items():
        # A stable sys_id per Inbound Id, so repeated reads agree.
        yield {"sys_id": hashlib.md5(inbound_id.encode()).hexdigest(), "name": name, "inbound_id": inbound_id}


TABLES: Dict[str, Table] = {
    table.name: table
    for table in (
        Table(
            "sys_cs_conversation",
            ("sys_id", "state", "conversation_completed", "live_agent_transfer_time", "device_type", "sys_created_on",
             "sys_updated_on"),
            _conversation_rows,
            choices={"state": {"open": "Open", "completed": "Completed", "canceled": "Canceled", "faulted": "Faulted"}},
        ),
        Table(
            "interaction",
            ("sys_id", "number", "type", "state", "state_reason", "active", "virtual_agent", "agent_chat", "assigned_to",
             "client_session_id", "channel_metadata_table", "channel_metadata_document", "opened_at", "closed_at",
             "sys_created_on", "sys_updated_on"),
            _interaction_rows,
            indexed="client_session_id",
            choices={
                "state": {
                    "work_in_progress": "Work in Progress",
                    "closed_complete": "Closed Complete",
                    "closed_abandoned": "Closed Abandoned",
                    "faulted": "Faulted",
                },
                "type": {"chat": "Chat"},
            },
        ),
        Table(
            "sys_cs_message",
            ("sys_id", "conversation", "sequence", "direction", "is_agent", "is_bot_message", "sender", "payload",
             "external_chat_status", "send_time", "sys_created_on", "sys_created_by", "sys_updated_on"),
            _message_rows,
            indexed="conversation",
            numeric=frozenset({"sequence"}),
            choices={"direction": {"inbound": "Inbound", "outbound": "Outbound"}},
        ),
        Table("sys_user", ("sys_id", "user_name", "name"), _user_rows),
        Table("sys_cs_provider_application", ("sys_id", "name", "inbound_id"), _provider_application_rows),
    )
}


# ---------------------------------------------------------------------------------------------------------------------
# Encoded queries


@dataclass(frozen=True)
class Condition:
    field: str
    operator: str
    value: str


@dataclass
class Query:
    #: ``^NQ``-separated queries (OR-ed); each is a list of OR-groups that are AND-ed.
    alternatives: List[List[List[Condition]]]
    order: List[Tuple[str, bool]]
    #: True when a part could not be understood (unknown field, operator or shape).
    invalid: bool = False


def parse_query(text: str, fields: Iterable[str]) -> Query:
    """Parse a ``sysparm_query``; conditions on fields the table does not have make the query ``invalid`` and are
    left out, as the instance leaves out an invalid part."""
    known = set(fields)
    query = Query(alternatives=[], order=[])
    for part in text.split("^NQ"):
        groups: List[List[Condition]] = []
        for term in part.split("^"):
            if not term or term == "EQ":
                continue
            if term.startswith("ORDERBYDESC") or term.startswith("ORDERBY"):
                desc = term.startswith("ORDERBYDESC")
                name = term[len("ORDERBYDESC") :] if desc else term[len("ORDERBY") :]
                if name in known:
                    query.order.append((name, desc))
                else:
                    query.invalid = True
                continue
            alternative = term.startswith("OR") and bool(groups)
            condition = _condition(term[2:] if alternative else term)
            if condition is None or condition.field not in known:
                query.invalid = True
                continue
            if alternative:
                groups[-1].append(condition)
            else:
                groups.append([condition])
        query.alternatives.append(groups)
    return query


def _condition(term: str) -> Optional[Condition]:
    found = _TERM.match(term)
    if found is None:
        return None
    name, operator, value = found.groups()
    if operator in ("ISEMPTY", "ISNOTEMPTY") and value:
        return None
    return Condition(name, operator, value)


def matches(row: Row, condition: Condition, table: Table) -> bool:
    actual = _raw(row.get(condition.field, ""))
    wanted = condition.value
    op = condition.operator
    if op == "ISEMPTY":
        return actual == ""
    if op == "ISNOTEMPTY":
        return actual != ""
    if op == "=":
        return actual == wanted
    if op == "!=":
        return actual != wanted
    if op == "LIKE":
        return wanted in actual
    if op == "NOT LIKE":
        return wanted not in actual
    if op == "STARTSWITH":
        return actual.startswith(wanted)
    if op == "ENDSWITH":
        return actual.endswith(wanted)
    if op in ("IN", "NOT IN"):
        return (actual in wanted.split(",")) == (op == "IN")
    left, right = _comparable(actual, table, condition.field), _comparable(wanted, table, condition.field)
    if type(left) is not type(right):
        return False
    if op == ">":
        return left > right  # type: ignore[operator]
    if op == ">=":
        return left >= right  # type: ignore[operator]
    if op == "<":
        return left < right  # type: ignore[operator]
    return left <= right  # type: ignore[operator]


def _comparable(value: str, table: Table, name: str) -> Union[int, str]:
    if name in table.numeric:
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _raw(value: Value) -> str:
    return value.sys_id if isinstance(value, Ref) else value


def select(rows: List[Row], query: Query, table: Table) -> List[Row]:
    def accepted(row: Row) -> bool:
        return any(
            all(any(matches(row, condition, table) for condition in group) for group in groups)
            for groups in query.alternatives
        )

    chosen = [row for row in rows if accepted(row)] if query.alternatives else list(rows)
    # Stable sorts, least significant key first.
    for name, desc in reversed(query.order):
        chosen.sort(key=lambda row: _sort_key(row, table, name), reverse=desc)
    return chosen


def _sort_key(row: Row, table: Table, name: str) -> Tuple[int, Any]:
    value = _comparable(_raw(row.get(name, "")), table, name)
    # Numbers before text, so a stray non-number in a numeric field does not break the sort.
    return (0, value) if isinstance(value, int) else (1, value)


# ---------------------------------------------------------------------------------------------------------------------
# Wire shapes


def render(row: Row, table: Table, fields: List[str], display: str, exclude_links: bool, base_url: str) -> Dict[str, Any]:
    """One record as the Table API answers it."""
    names = [name for name in fields if name in row] if fields else list(row)
    return {name: _render_value(row[name], table.choices.get(name), display, exclude_links, base_url) for name in names}


def _render_value(
    value: Value, choices: Optional[Mapping[str, str]], display: str, exclude_links: bool, base_url: str
) -> Any:
    if isinstance(value, Ref):
        link = f"{base_url}{TABLE_PREFIX}{value.table}/{value.sys_id}"
        if display == "true":
            return value.display
        if display == "all":
            shown: Dict[str, str] = {"display_value": value.display}
            if not exclude_links:
                shown["link"] = link
            shown["value"] = value.sys_id
            return shown
        return value.sys_id if exclude_links else {"link": link, "value": value.sys_id}
    label = choices.get(value, value) if choices else value
    if display == "true":
        return label
    if display == "all":
        return {"display_value": label, "value": value}
    return value


# ---------------------------------------------------------------------------------------------------------------------
# Routes


def add_routes(app: web.Application) -> None:
    for route in _ROUTES:
        app.router.add_get(route, list_records)
        app.router.add_get(route + "/{sys_id}", get_record)


def session_of(request: web.Request, body: bytes) -> Optional[str]:
    """The ``clientSessionId`` a Table API read is about, when its query names a conversation, an interaction or a
    client session the emulator knows (for fault rules that match a session)."""
    state = request.app[STATE_KEY]
    tables = state.va_tables
    text = " ".join([request.query.get("sysparm_query", ""), request.match_info.get("sys_id", ""), *request.query.values()])
    by_conversation = {i.conversation: i.client_session_id for i in tables.interactions.values()}
    sessions = {i.client_session_id for i in tables.interactions.values()}
    for token in re.findall(r"[A-Za-z0-9_.:-]+", text):
        interaction = tables.interactions.get(token)
        if interaction is not None:
            return interaction.client_session_id
        if token in by_conversation:
            return by_conversation[token]
        if token in sessions:
            return token
    return None


def _table(request: web.Request) -> Table:
    state = request.app[STATE_KEY]
    name = request.match_info["table"]
    table = TABLES.get(name)
    if table is None:
        # A table the emulator does not keep: answered like any URI no API serves (middleware.errors).
        raise sn_error(400, "Requested URI does not represent any resource", None)
    if name not in state.config.table_read_access:
        raise sn_error(403, *INSUFFICIENT_RIGHTS)
    return table


def _narrowed(query: Query, table: Table) -> Tuple[Any, ...]:
    """``([value],)`` when every alternative of the query requires the table's indexed field to be one value (an
    ``=`` condition alone in its group), so only that value's records need reading; ``()`` otherwise (several
    values would change the creation order rows come in without ``ORDERBY``)."""
    if table.indexed is None or query.invalid or not query.alternatives:
        return ()
    values: List[str] = []
    for groups in query.alternatives:
        found = [
            group[0] for group in groups
            if len(group) == 1 and group[0].field == table.indexed and group[0].operator == "="
        ]
        if not found:
            return ()
        values.append(found[0].value)
    return ([values[0]],) if len(set(values)) == 1 else ()


def _options(request: web.Request) -> Tuple[List[str], str, bool]:
    query = request.query
    fields = [name.strip() for name in query.get("sysparm_fields", "").split(",") if name.strip()]
    display = query.get("sysparm_display_value", "false").lower()
    if display not in ("true", "false", "all"):
        display = "false"
    exclude_links = query.get("sysparm_exclude_reference_link", "false").lower() == "true"
    return fields, display, exclude_links


def _number(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise sn_error(400, f"Invalid {name}", f"{raw!r} is not a non-negative number")
    return int(raw)


async def list_records(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    table = _table(request)
    known = set(table.fields)
    text = request.query.get("sysparm_query")
    if text is None:
        # Name-value pairs filter like field=value terms; they stand in for sysparm_query [V].
        text = "^".join(f"{k}={v}" for k, v in request.query.items() if not k.startswith("sysparm_"))
    query = parse_query(text, known)
    rows = list(table.rows(state, *_narrowed(query, table)))
    if query.invalid and state.config.table_invalid_query_returns_no_rows:
        chosen: List[Row] = []
    else:
        chosen = select(rows, query, table)
    limit = _number(request, "sysparm_limit", DEFAULT_LIMIT)
    offset = _number(request, "sysparm_offset", 0)
    page = chosen[offset : offset + limit]
    if not page and request.match_info.get("version") == "v1":
        raise sn_error(404, *NO_RECORD)
    fields, display, exclude_links = _options(request)
    base_url = f"{request.scheme}://{request.host}"
    headers: Dict[str, str] = {}
    if request.query.get("sysparm_no_count", "false").lower() != "true":
        headers["X-Total-Count"] = str(len(chosen))
    if request.query.get("sysparm_suppress_pagination_header", "false").lower() != "true":
        headers["Link"] = _links(request, base_url, offset, limit, len(chosen))
    body = {"result": [render(row, table, fields, display, exclude_links, base_url) for row in page]}
    return web.json_response(body, headers=headers)


async def get_record(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    table = _table(request)
    wanted = request.match_info["sys_id"]
    row = next((row for row in table.rows(state) if row.get("sys_id") == wanted), None)
    if row is None:
        raise sn_error(404, *NO_RECORD)
    fields, display, exclude_links = _options(request)
    base_url = f"{request.scheme}://{request.host}"
    return web.json_response({"result": render(row, table, fields, display, exclude_links, base_url)})


def _links(request: web.Request, base_url: str, offset: int, limit: int, total: int) -> str:
    """The ``Link`` header: first, prev, next and last pages [V shape]."""

    def url(at: int) -> str:
        params = {k: v for k, v in request.query.items() if k not in ("sysparm_offset", "sysparm_limit")}
        params.update(sysparm_offset=str(at), sysparm_limit=str(limit))
        return f"<{base_url}{request.path}?{urlencode(params)}>"

    step = max(limit, 1)
    last = max(0, (total - 1) // step * step) if total else 0
    links = [f'{url(0)};rel="first"']
    if offset > 0:
        links.append(f'{url(max(0, offset - step))};rel="prev"')
    if offset + step < total:
        links.append(f'{url(offset + step)};rel="next"')
    links.append(f'{url(last)};rel="last"')
    return ",".join(links)

