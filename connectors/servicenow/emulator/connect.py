"""Connect Support: the ``/api/now/connect`` routes (reference 5.3) and the agent-side operations behind them.

The requester side is what a connector calls: create a chat in a queue, post and read messages, leave. The agent side
(accept, message, transfer, close, time out) is driven either through the real agent route
``POST .../queues/{qid}/accept`` plus the message and close routes, or through the control plane (``control.py``),
which calls the functions of this module directly.

Wire shapes follow ServiceNow's own Connect UI code and third-party clients ([V] in the reference); the choices no
source pins down are marked [I] where they are made.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from aiohttp import web

from . import files
from .clock import format_glide_datetime
from .responses import NO_RECORD, connect_forbidden, result, sn_error
from .state import STATE_KEY, ConnectSession, EmulatorState, Message, QueueEntryState, UserRecord, new_sys_id

log = logging.getLogger("connectors.servicenow.emulator.connect")

BASE = "/api/now/connect"
REFLECTED_FIELDS = ("comments", "work_notes")
_SESSION_PATH = re.compile(r"^/api/now/connect/(?:conversations|support/sessions)/([^/]+)")


# ---------------------------------------------------------------------------------------------------------------------
# Wire shapes


def message_wire(message: Message) -> Dict[str, Any]:
    """A message with every field any known client reads (reference 5.3 item 6)."""
    author = message.author
    return {
        "sys_id": message.sys_id,
        # No source separates ``id`` from ``sys_id``; one record, one id [I].
        "id": message.sys_id,
        "group": message.group,
        "message": message.text,
        # Plain text: the emulator never produces @M[...] / @L[...] markup [I].
        "formatted_message": message.text,
        "created_by": author.user_name if author else "system",
        "sender_name": author.name if author else "system",
        "profile": author.profile if author else "",
        "created_on": format_glide_datetime(message.timestamp),
        "timestamp": message.timestamp,
        "reflected_field": message.reflected_field,
        "links": [],
        "attachments": list(message.attachments),
        "mentions": [],
    }


def queue_entry_wire(state: EmulatorState, session: ConnectSession) -> Dict[str, Any]:
    """The ``chat_queue_entry`` fields the Connect UI reads (reference 1.3)."""

    def when(ms: Optional[int]) -> str:
        return format_glide_datetime(ms) if ms is not None else ""

    return {
        "sys_id": session.sys_id,
        "number": session.number,
        "queue": session.queue_id,
        "group": session.group,
        "state": int(session.state),
        "position": _position(state, session),
        "wait_time": str(_wait_seconds(state, session)),
        "average_wait_time": _average_wait(state, session.queue_id),
        "opened_by": session.requester.sys_id,
        "assigned_to": session.agent.sys_id if session.agent else "",
        "short_description": session.short_description,
        "work_start": when(session.work_start_ms),
        "work_end": when(session.work_end_ms),
        "transfer_state": session.transfer_state,
        "transfer_to": session.transfer_to,
        "transfer_from": session.transfer_from,
        "transfer_change": "",
        "transfer_should_close": False,
        "transfer_updated_on": when(session.transfer_updated_ms),
        "sys_updated_on": when(session.updated_ms),
    }


def queue_wire(state: EmulatorState, sys_id: str, queue: Mapping[str, Any], caller: str) -> Dict[str, Any]:
    """The queue fields ``factory.queue.js`` reads (reference 1.3)."""
    waiting = [s for s in state.sessions.values() if s.queue_id == sys_id and s.state is QueueEntryState.WAITING]
    return {
        "sys_id": sys_id,
        "name": queue["name"],
        "question": queue.get("question", ""),
        "average_wait_time": _average_wait(state, sys_id),
        "waiting_count": len(waiting),
        "not_available": bool(queue.get("not_available", False)),
        "escalate_to": "",
        "is_agent_for": caller in queue.get("agents", []),
    }


def _average_wait(state: EmulatorState, queue_id: str) -> str:
    """The queue's wait estimate in seconds, as a string like the other duration fields [I format]; set by config."""
    queue = state.config.connect_queues.get(queue_id) or {}
    return str(int(queue.get("average_wait_time", 0)))


def _position(state: EmulatorState, session: ConnectSession) -> int:
    """1-based place among the waiting entries of the queue; 0 once no longer waiting [I]."""
    if session.state is not QueueEntryState.WAITING:
        return 0
    ahead = [
        s
        for s in state.sessions.values()
        if s.queue_id == session.queue_id and s.state is QueueEntryState.WAITING and s.seq < session.seq
    ]
    return len(ahead) + 1


def _wait_seconds(state: EmulatorState, session: ConnectSession) -> int:
    end = session.work_start_ms or session.work_end_ms or state.clock.now_ms()
    return max(0, (end - session.created_ms) // 1000)


# ---------------------------------------------------------------------------------------------------------------------
# Operations (shared by the REST routes and the control plane)


def open_session(state: EmulatorState, queue_id: str, requester: UserRecord, text: str) -> ConnectSession:
    """Create a waiting chat and post the requester's question as its first message (``queue.join`` does) [V]."""
    now = state.clock.now_ms()
    session = ConnectSession(
        sys_id=new_sys_id(),
        number=state.next_chat_number(),
        queue_id=queue_id,
        group=new_sys_id(),
        requester=requester,
        short_description=text,
        created_ms=now,
        seq=state.next_seq(),
        updated_ms=now,
        last_activity_ms=now,
    )
    state.sessions[session.group] = session
    add_message(state, session, text, requester)
    queue = state.config.connect_queues.get(queue_id, {}).get("name", queue_id)
    log.info("Connect chat %s opened in %s (group %s)", session.number, queue, session.group)
    return session


def add_message(
    state: EmulatorState,
    session: ConnectSession,
    text: str,
    author: Optional[UserRecord],
    reflected_field: str = "comments",
    attachments: Optional[List[Any]] = None,
) -> Message:
    """Append a message; ``author=None`` makes it a system message."""
    now = state.clock.now_ms()
    message = Message(
        sys_id=new_sys_id(),
        group=session.group,
        text=text,
        author=author,
        timestamp=now,
        seq=state.next_seq(),
        reflected_field=reflected_field,
        attachments=attachments or [],
    )
    # The clock can be moved back (or the system clock step back), so a new message is not always the newest.
    if session.messages and _thread_order(session.messages[-1]) > _thread_order(message):
        bisect.insort(session.messages, message, key=_thread_order)
    else:
        session.messages.append(message)
    session.last_activity_ms = now
    if len(session.messages) > 1:
        # Who wrote, and how many messages the chat has: never the text (logs carry no message bodies).
        log.info("Connect chat %s: %s (%d messages)", session.number, _kind(session, message), len(session.messages))
    return message


def _kind(session: ConnectSession, message: Message) -> str:
    if message.author is None:
        return "system message"
    if message.is_work_note:
        return "work note"
    return "user message" if message.author.user_name == session.requester.user_name else "agent message"


def _thread_order(message: Message) -> Tuple[int, int]:
    return (message.timestamp, message.seq)


def accept(state: EmulatorState, session: ConnectSession, agent: UserRecord) -> List[Message]:
    """The agent takes a waiting chat: state 2, then the optional join text and the queue greeting [I]."""
    now = state.clock.now_ms()
    session.state = QueueEntryState.WORK_IN_PROGRESS
    session.agent = agent
    session.accept_seq = state.next_seq()
    session.work_start_ms = session.updated_ms = session.last_activity_ms = now
    log.info("Connect chat %s: %s joined", session.number, agent.name)
    posted = []
    if state.config.join_message:
        posted.append(add_message(state, session, f"{agent.name} has joined the support session", None))
    if state.config.greeting_text:
        posted.append(add_message(state, session, state.config.greeting_text, agent))
    return posted


def requester_leave(state: EmulatorState, session: ConnectSession) -> None:
    """The requester ends the chat: state 7 (CLOSED_BY_CLIENT) while it is open [I mapping]; idempotent."""
    session.requester_left = True
    if session.state.is_open:
        _close(state, session, QueueEntryState.CLOSED_BY_CLIENT)


def agent_close(state: EmulatorState, session: ConnectSession, order: Optional[str], announce: bool) -> List[Message]:
    """The agent closes the chat: state 3 and the KB0598883 system message [V text].

    ``order="agent_first"`` gives "<Agent> has left the support session"; ``"after_requester_left"`` gives "<Agent>
    has closed the support session" and marks the requester as gone if they were not. ``None`` picks the variant
    from whether the requester already left. ``announce=False`` changes the state only, so a client can only notice
    the end through the session state.
    """
    assert session.agent is not None
    if order is None:
        order = "after_requester_left" if session.requester_left else "agent_first"
    if order == "after_requester_left":
        requester_leave(state, session)
    verb = "closed" if order == "after_requester_left" else "left"
    # A requester-closed entry (7) becomes 3 when the agent closes it afterwards (spec 5.5: "state 3") [I].
    _close(state, session, QueueEntryState.CLOSED_COMPLETE)
    if not announce:
        return []
    return [add_message(state, session, f"{session.agent.name} has {verb} the support session", None)]


def transfer(state: EmulatorState, session: ConnectSession, to: UserRecord, announce: bool) -> List[Message]:
    """Hand a live chat to another agent. ``transfer_state`` passes through ``pending`` to ``accepted`` in one step;
    the texts "<A> has left ..." + "<B> has joined the support session" are [I]: no source gives the real wording.
    Note that the first one reads like an end-of-chat text while the entry stays in state 2."""
    assert session.agent is not None
    previous = session.agent
    now = state.clock.now_ms()
    session.agent = to
    log.info("Connect chat %s: transferred from %s to %s", session.number, previous.name, to.name)
    session.transfer_state = "accepted"
    session.transfer_from, session.transfer_to = previous.sys_id, to.sys_id
    session.transfer_updated_ms = session.updated_ms = session.last_activity_ms = now
    if not announce:
        return []
    return [
        add_message(state, session, f"{previous.name} has left the support session", None),
        add_message(state, session, f"{to.name} has joined the support session", None),
    ]


def abandon(state: EmulatorState, session: ConnectSession) -> None:
    """Idle timeout: state 8 (CLOSED_ABANDONED). No source gives a Connect timeout text, so none is posted [I]."""
    _close(state, session, QueueEntryState.CLOSED_ABANDONED)


def sweep_idle(state: EmulatorState) -> None:
    """Abandon open chats idle for ``idle_timeout_s`` (0 disables). Run lazily before each request, so moving the
    emulator clock forward is enough to trigger it."""
    limit_ms = state.config.idle_timeout_s * 1000
    if not limit_ms:
        return
    now = state.clock.now_ms()
    for session in state.sessions.values():
        if session.state.is_open and now - session.last_activity_ms >= limit_ms:
            abandon(state, session)


def _close(state: EmulatorState, session: ConnectSession, new_state: QueueEntryState) -> None:
    now = state.clock.now_ms()
    log.info(
        "Connect chat %s closed: state %d %s (%d messages)",
        session.number, int(new_state), new_state.name.lower(), len(session.messages),
    )
    session.state = new_state
    session.updated_ms = now
    if session.work_end_ms is None:
        session.work_end_ms = now


# ---------------------------------------------------------------------------------------------------------------------
# REST routes


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{BASE}/support/queues", list_queues)
    r.add_post(f"{BASE}/support/queues/{{qid}}/sessions", create_session)
    r.add_get(f"{BASE}/support/queues/{{qid}}/sessions", queue_sessions)
    r.add_post(f"{BASE}/support/queues/{{qid}}/accept", accept_next)
    r.add_get(f"{BASE}/support/sessions", find_sessions)
    r.add_post(f"{BASE}/support/sessions/{{gid}}/leave", leave)
    r.add_post(f"{BASE}/support/sessions/{{gid}}/close", close)
    r.add_post(f"{BASE}/conversations/{{gid}}/messages", post_message)
    r.add_get(f"{BASE}/conversations/{{gid}}/messages", get_messages)


def session_of(request: web.Request, body: bytes) -> Optional[str]:
    """The conversation a Connect request is about (for fault rules that match a session)."""
    found = _SESSION_PATH.match(request.path)
    return found.group(1) if found else None


async def list_queues(request: web.Request) -> web.Response:
    state, caller = _context(request)
    queues = state.config.connect_queues
    return result([queue_wire(state, sys_id, queue, caller.user_name) for sys_id, queue in queues.items()])


async def create_session(request: web.Request) -> web.Response:
    state, caller = _context(request)
    queue_id = request.match_info["qid"]
    queue = _queue(state, queue_id)
    body = await read_json_object(request)
    text = body.get("message")
    if not isinstance(text, str) or not text.strip():
        raise sn_error(400, "Invalid request", "A non-empty 'message' is required")
    reason = queue.get("not_available", False)
    if reason:
        # Trigger [I]; the 403 {"result": reason} shape is what the UI handles [V].
        raise connect_forbidden(reason if isinstance(reason, str) else f"{queue['name']} is not available")
    # from_table / from_sysid (link to a record) are accepted and not modelled.
    session = open_session(state, queue_id, caller, text)
    return result(queue_entry_wire(state, session))


async def queue_sessions(request: web.Request) -> web.Response:
    """The caller's open entries in a queue, in the ``{"queueEntry": ...}`` wrapping of the IBM sample [V shape]."""
    state, caller = _context(request)
    queue_id = request.match_info["qid"]
    _queue(state, queue_id)
    entries = [
        {"queueEntry": queue_entry_wire(state, s)}
        for s in state.sessions.values()
        if s.queue_id == queue_id and s.state.is_open and _is_member(s, caller)
    ]
    return result(entries)


async def accept_next(request: web.Request) -> web.Response:
    """The real agent route [V askmenow]: the caller, an agent of the queue, takes the oldest waiting chat."""
    state, caller = _context(request)
    queue_id = request.match_info["qid"]
    queue = _queue(state, queue_id)
    if caller.user_name not in queue.get("agents", []):
        raise connect_forbidden(f"You are not an agent of {queue['name']}")
    waiting = oldest_waiting(state, queue_id)
    if waiting is None:
        raise sn_error(404, *NO_RECORD)
    accept(state, waiting, caller)
    return result(queue_entry_wire(state, waiting))


async def find_sessions(request: web.Request) -> web.Response:
    """``?group_id=&queue_id=&closed=true|false`` [V]; only entries the caller is requester or agent of [I]."""
    state, caller = _context(request)
    query = request.query
    closed = query.get("closed")
    found = [
        s
        for s in state.sessions.values()
        if _is_member(s, caller)
        and query.get("group_id") in (None, s.group)
        and query.get("queue_id") in (None, s.queue_id)
        and (closed is None or (closed == "true") != s.state.is_open)
    ]
    return result([queue_entry_wire(state, s) for s in found])


async def leave(request: web.Request) -> web.Response:
    state, caller = _context(request)
    session = _session(state, request)
    if caller.user_name != session.requester.user_name:
        raise connect_forbidden("Only the requester can leave this support session")
    await read_json_object(request)
    requester_leave(state, session)
    return result(queue_entry_wire(state, session))


async def close(request: web.Request) -> web.Response:
    """``{"agent_leave": bool}`` [V body]. Closed by the assigned agent: as ``/__emu/agent/close``; by the requester:
    state 3 without a message [I]. Closing a closed entry changes nothing."""
    state, caller = _context(request)
    session = _session(state, request)
    _require_member(session, caller)
    await read_json_object(request)  # agent_leave: accepted, not modelled
    if session.agent is not None and caller.user_name == session.agent.user_name and session.state in (
        QueueEntryState.WORK_IN_PROGRESS,
        QueueEntryState.CLOSED_BY_CLIENT,
    ):
        agent_close(state, session, order=None, announce=True)
    elif session.state.is_open:
        _close(state, session, QueueEntryState.CLOSED_COMPLETE)
    return result(queue_entry_wire(state, session))


async def post_message(request: web.Request) -> web.Response:
    state, caller = _context(request)
    session = _session(state, request)
    _require_member(session, caller)
    body = await read_json_object(request)
    if not session.state.is_open:
        raise connect_forbidden("This support session is closed")  # [I]
    text = body.get("message")
    if not isinstance(text, str) or not text:
        raise sn_error(400, "Invalid request", "A non-empty 'message' is required")
    reflected_field = body.get("reflected_field", "comments")
    if reflected_field not in REFLECTED_FIELDS:
        raise sn_error(400, "Invalid request", f"'reflected_field' must be one of {', '.join(REFLECTED_FIELDS)}")
    attachments = body.get("attachments", [])
    if not isinstance(attachments, list):
        raise sn_error(400, "Invalid request", "'attachments' must be a list")
    # The UI sends the sys_ids of files uploaded with the Attachment API [V]; the thread shows their records [I].
    attachments = files.records(state, attachments)
    # "group" and "context" (sent by the UI) are accepted; the path names the conversation.
    message = add_message(state, session, text, caller, reflected_field, attachments)
    return result(message_wire(message))


async def get_messages(request: web.Request) -> web.Response:
    """Newest first, at most ``connect_page_size``; ``?before=<ms>`` keeps ``timestamp < before`` [V semantics].

    Like the real paging it copies, a page boundary inside a run of equal timestamps skips the rest of that run on the
    next ``before=`` page. Work notes are returned too: hiding them from the end user is the connector's job.
    """
    state, caller = _context(request)
    session = _session(state, request)
    _require_member(session, caller)
    before_raw = request.query.get("before")
    end = len(session.messages)
    if before_raw is not None:
        try:
            before = int(before_raw)
        except ValueError:
            raise sn_error(400, "Invalid request", "'before' must be a timestamp in epoch milliseconds") from None
        end = bisect.bisect_left(session.messages, before, key=lambda m: m.timestamp)
    page = session.messages[max(0, end - state.config.connect_page_size) : end]
    return result([message_wire(m) for m in reversed(page)])


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def oldest_waiting(state: EmulatorState, queue_id: Optional[str] = None) -> Optional[ConnectSession]:
    waiting = [
        s
        for s in state.sessions.values()
        if s.state is QueueEntryState.WAITING and queue_id in (None, s.queue_id)
    ]
    return min(waiting, key=lambda s: s.seq, default=None)


def latest_accepted(
    state: EmulatorState, states: Iterable[QueueEntryState] = (QueueEntryState.WORK_IN_PROGRESS,)
) -> Optional[ConnectSession]:
    """The most recently accepted session among those in ``states`` (by default: live ones)."""
    wanted = set(states)
    candidates = [s for s in state.sessions.values() if s.agent is not None and s.state in wanted]
    return max(candidates, key=lambda s: s.accept_seq, default=None)


async def read_json_object(request: web.Request) -> Dict[str, Any]:
    """The JSON object body; an empty body counts as ``{}``."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise sn_error(400, "Exception while reading request", "The payload is not valid JSON") from None
    if not isinstance(body, dict):
        raise sn_error(400, "Exception while reading request", "The payload must be a JSON object")
    return body


def _context(request: web.Request) -> Tuple[EmulatorState, UserRecord]:
    state = request.app[STATE_KEY]
    return state, state.user(request["user"])


def _queue(state: EmulatorState, queue_id: str) -> Mapping[str, Any]:
    queue = state.config.connect_queues.get(queue_id)
    if queue is None:
        raise sn_error(404, *NO_RECORD)
    return queue


def _session(state: EmulatorState, request: web.Request) -> ConnectSession:
    session = state.sessions.get(request.match_info["gid"])
    if session is None:
        raise sn_error(404, *NO_RECORD)  # [I]
    return session


def _is_member(session: ConnectSession, user: UserRecord) -> bool:
    return user.user_name == session.requester.user_name or (
        session.agent is not None and user.user_name == session.agent.user_name
    )


def _require_member(session: ConnectSession, user: UserRecord) -> None:
    """Only the requester and the assigned agent may read or post; others get 403 like the UI's "restricted" [V]."""
    if not _is_member(session, user):
        raise connect_forbidden("You are not a member of this conversation")
