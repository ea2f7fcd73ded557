"""The control plane under ``/__emu/`` (reference 5.5): how a test, or a person with curl, plays the human agent,
moves the clock, injects faults and inspects what the connector sent. The package docstring lists every route.

Unauthenticated and, unless ``control_plane_loopback_only`` is off, loopback only. Bodies are JSON objects (an empty
body counts as ``{}``); errors are ``{"error": "<text>"}`` with 400 (bad input), 404 (no such session) or 409 (the
session is not in a state that allows the operation). Agent operations answer
``{"session": <session summary>, "messages": [<messages this call posted>]}``, plus ``"callbacks": [<payloads>]`` for
a Virtual Agent session.

``session`` names a Connect conversation (``group``) or a VA conversation (``clientSessionId``, or its
``interactionId`` when several users share one ``clientSessionId``); the operations do the right thing for either.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from aiohttp import web

from . import connect, files, va
from .config import DEFAULT_AGENT, START_UP_ONLY
from .faults import parse_rules
from .oauth import expire_tokens
from .responses import ApiError, control_error
from .state import (
    STATE_KEY,
    ConnectSession,
    EmulatorState,
    Message,
    QueueEntryState,
    UserRecord,
    VaSession,
    VaState,
    new_sys_id,
)

#: A session of either API, as the control plane names them.
AnySession = Union[ConnectSession, VaSession]

PREFIX = "/__emu"
CLOSE_ORDERS = ("agent_first", "after_requester_left")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(f"{PREFIX}/reset", reset)
    r.add_get(f"{PREFIX}/config", get_config)
    r.add_post(f"{PREFIX}/config", patch_config)
    r.add_get(f"{PREFIX}/sessions", list_sessions)
    r.add_post(f"{PREFIX}/agent/accept", agent_accept)
    r.add_post(f"{PREFIX}/agent/message", agent_message)
    r.add_post(f"{PREFIX}/agent/typing", agent_typing)
    r.add_post(f"{PREFIX}/agent/transfer", agent_transfer)
    r.add_post(f"{PREFIX}/agent/close", agent_close)
    r.add_post(f"{PREFIX}/timeout", timeout)
    r.add_post(f"{PREFIX}/va/no_agents", va_no_agents)
    r.add_get(f"{PREFIX}/transcript/{{session}}", transcript)
    r.add_get(f"{PREFIX}/requests", list_requests)
    r.add_get(f"{PREFIX}/callbacks", list_callbacks)
    r.add_post(f"{PREFIX}/oauth/expire", oauth_expire)
    r.add_get(f"{PREFIX}/clock", get_clock)
    r.add_post(f"{PREFIX}/clock", set_clock)
    r.add_get(f"{PREFIX}/faults", list_faults)
    r.add_post(f"{PREFIX}/faults", add_faults)
    r.add_delete(f"{PREFIX}/faults", clear_faults)


# ---------------------------------------------------------------------------------------------------------------------
# State, config, inspection


async def reset(request: web.Request) -> web.Response:
    """Forget sessions, tokens, faults, the request log and clock changes; restore the config the app started with."""
    request.app[STATE_KEY].reset()
    return web.json_response({"reset": True})


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].config.to_dict())


async def patch_config(request: web.Request) -> web.Response:
    """Replace the given top-level keys, e.g. ``{"connect_page_size": 2, "greeting_text": null}``. The settings that
    guard the control plane itself (``START_UP_ONLY``) are fixed at start: a request cannot loosen them."""
    state = request.app[STATE_KEY]
    changes = await _body(request)
    fixed = sorted(k for k in changes if k in START_UP_ONLY and changes[k] != getattr(state.config, k))
    if fixed:
        raise control_error(
            403, f"{', '.join(fixed)}: start-up setting(s); restart the emulator with --set to change them"
        )
    try:
        state.apply_config(state.config.patched(changes))
    except ValueError as exc:
        raise control_error(400, str(exc)) from None
    return web.json_response(state.config.to_dict())


async def list_sessions(request: web.Request) -> web.Response:
    """Every Connect and VA session, oldest first."""
    state = request.app[STATE_KEY]
    sessions: List[AnySession] = [*state.sessions.values(), *state.va_sessions.values()]
    return web.json_response({"sessions": [summary(state, s) for s in sorted(sessions, key=lambda s: s.seq)]})


async def transcript(request: web.Request) -> web.Response:
    """Everything in the conversation, oldest first, work notes and system messages included; for a VA session also
    the recorded events, history, context variables and inbound requests."""
    state = request.app[STATE_KEY]
    session = _find(state, request.match_info["session"])
    if isinstance(session, VaSession):
        return web.json_response(va.transcript(session))
    ordered = sorted(session.messages, key=lambda m: (m.timestamp, m.seq))
    return web.json_response(
        {"session": session_summary(state, session), "messages": [connect.message_wire(m) for m in ordered]}
    )


async def list_requests(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.json_response({"requests": [dataclasses.asdict(r) for r in state.requests]})


async def list_callbacks(request: web.Request) -> web.Response:
    """The VA callback delivery log, one entry per attempt, oldest first; ``?session=<clientSessionId>`` filters.
    ``pending`` counts callbacks whose delivery (with retries) has not finished."""
    state = request.app[STATE_KEY]
    wanted = request.query.get("session")
    records = [dataclasses.asdict(r) for r in state.callbacks.log if wanted in (None, r.session)]
    return web.json_response({"callbacks": records, "pending": state.callbacks.pending})


def summary(state: EmulatorState, session: AnySession) -> Dict[str, Any]:
    return va.summary(session) if isinstance(session, VaSession) else session_summary(state, session)


def session_summary(state: EmulatorState, session: ConnectSession) -> Dict[str, Any]:
    queue = state.config.connect_queues.get(session.queue_id, {})
    return {
        "api": "connect",
        "session": session.group,
        "group": session.group,
        "sys_id": session.sys_id,
        "number": session.number,
        "state": int(session.state),
        "state_name": session.state.name,
        # Waiting or in progress; the VA summary has the same key (QUEUED or LIVE).
        "open": session.state.is_open,
        "queue": session.queue_id,
        "queue_name": queue.get("name"),
        "requester": session.requester.user_name,
        "requester_left": session.requester_left,
        "agent": _agent_summary(session.agent),
        "transfer_state": session.transfer_state,
        "message_count": len(session.messages),
        # As the queue entry says it: 1-based among the waiting entries, 0 once accepted.
        "position": connect.queue_entry_wire(state, session)["position"],
    }


def _agent_summary(agent: Optional[UserRecord]) -> Optional[Dict[str, str]]:
    if agent is None:
        return None
    return {"name": agent.name, "user_name": agent.user_name, "id": agent.sys_id}


# ---------------------------------------------------------------------------------------------------------------------
# The human agent


async def agent_accept(request: web.Request) -> web.Response:
    """``{"session"?, "agent"?: {"name", "user_name", "id"}}``. Connect: state 2, ``assigned_to``, join text, greeting.
    VA: QUEUED to LIVE with its callbacks. Without ``session``: the oldest waiting one of either API."""
    state = request.app[STATE_KEY]
    body = await _body(request)
    session = _target(state, body, lambda: _oldest_waiting(state), "no session is waiting")
    if isinstance(session, VaSession):
        if session.state is not VaState.QUEUED:
            raise _conflict(session, "is not queued")
        return _va_result(session, *va.accept(state, session, _agent(state, body.get("agent"), session)))
    if session.state is not QueueEntryState.WAITING:
        raise _conflict(session, "is not waiting")
    posted = connect.accept(state, session, _agent(state, body.get("agent"), session))
    return _agent_result(state, session, posted)


async def agent_message(request: web.Request) -> web.Response:
    """``{"session"?, "text", "work_note"?: false, "system"?: false, "attachment"?}``. A work note has
    ``reflected_field`` ``work_notes`` (VA: transcript only, no callback); a system message has ``created_by``
    ``system`` (VA: an ActionMsg System callback) and may be posted in any state. ``attachment`` is a file the agent
    sends (``text`` is then optional): ``{"name", "content_type", "data_base64"}``, stored and served by the emulator,
    or ``{"name", "content_type", "url"}``."""
    state = request.app[STATE_KEY]
    body = await _body(request)
    text = body.get("text")
    spec = body.get("attachment")
    if spec is not None and not isinstance(spec, dict):
        raise control_error(400, "'attachment' must be an object {name, content_type, data_base64 | url}")
    if spec is not None and text in (None, ""):
        text = ""
    elif not isinstance(text, str) or not text:
        raise control_error(400, "'text' must be a non-empty string")
    work_note, system = _flag(body, "work_note", False), _flag(body, "system", False)
    if spec is not None and (work_note or system):
        raise control_error(400, "an 'attachment' is sent by the agent, not as a work note or system message")
    session = _target(state, body, lambda: _latest_live(state), "no session is live")
    if isinstance(session, VaSession):
        if not system and session.state is not VaState.LIVE:
            raise _conflict(session, "is not live (accept it first)")
        if spec is not None:
            file = files.agent_file(state, files.base_url_of(request), spec, session.client_session_id, "interaction")
            return _va_result(session, *va.agent_file(state, session, text, file))
        return _va_result(session, *va.agent_message(state, session, text, work_note, system))
    if not system and session.state is not QueueEntryState.WORK_IN_PROGRESS:
        raise _conflict(session, "is not live (accept it first)")
    reflected_field = "work_notes" if work_note else "comments"
    if spec is not None:
        file = files.agent_file(state, files.base_url_of(request), spec, session.group, files.CONNECT_TABLE)
        record = file.get("record") or {
            "sys_id": new_sys_id(), "file_name": file["name"], "content_type": file["content_type"], "download_link": file["url"]
        }
        message = connect.add_message(state, session, text or file["name"], session.agent, reflected_field, [record])
        return _agent_result(state, session, [message])
    message = connect.add_message(state, session, text, None if system else session.agent, reflected_field)
    return _agent_result(state, session, [message])


async def agent_typing(request: web.Request) -> web.Response:
    """``{"session"?, "on"?: true}``. VA: Start/EndTypingIndicator callback, answer ``{"supported": true, ...}``.
    Connect Support shows typing only over AMB, never over REST [V/I 1.2], so there this changes nothing and answers
    ``{"supported": false}``."""
    state = request.app[STATE_KEY]
    body = await _body(request)
    on = _flag(body, "on", True)
    if body.get("session") is not None:
        session: Optional[AnySession] = _find(state, str(body["session"]))
    else:
        session = _latest_live(state)
    if not isinstance(session, VaSession):
        return web.json_response({"supported": False})
    if session.state is not VaState.LIVE:
        raise _conflict(session, "is not live")
    _, payloads = va.agent_typing(state, session, on)
    return web.json_response(
        {"supported": True, "session": va.summary(session), "messages": [], "callbacks": payloads}
    )


async def agent_transfer(request: web.Request) -> web.Response:
    """``{"session"?, "to": {"user_name", "name"?, "id"?}, "message"?: true}``."""
    state = request.app[STATE_KEY]
    body = await _body(request)
    to = body.get("to")
    if not isinstance(to, dict) or not to.get("user_name"):
        raise control_error(400, "'to' must be an object with at least 'user_name'")
    announce = _flag(body, "message", True)
    session = _target(state, body, lambda: _latest_live(state), "no session is live")
    if isinstance(session, VaSession):
        if session.state is not VaState.LIVE:
            raise _conflict(session, "is not live")
        return _va_result(session, *va.transfer(state, session, _agent(state, to, session), announce))
    if session.state is not QueueEntryState.WORK_IN_PROGRESS:
        raise _conflict(session, "is not live")
    posted = connect.transfer(state, session, _agent(state, to, session), announce)
    return _agent_result(state, session, posted)


async def agent_close(request: web.Request) -> web.Response:
    """``{"session"?, "who"?: "agent"|"requester", "order"?: "agent_first"|"after_requester_left", "message"?: true}``.

    Connect, ``who="agent"`` (default): state 3 and the KB0598883 text ("has left" when the agent closes first, "has
    closed" after the requester left; without ``order`` the variant follows whether the requester already left).
    ``"message": false`` closes silently. ``who="requester"``: the requester leaves, as ``POST .../leave`` does.

    VA, ``who="agent"``: System "<Agent> has closed the support session." + SwitchToVirtualAgent (``close_style``);
    ``order`` does not change the text (Agent Chat uses it for either side [V async-chat.md]); ``"message": false``
    sends only SwitchToVirtualAgent. ``who="requester"``: as an inbound END_CONVERSATION.
    """
    state = request.app[STATE_KEY]
    body = await _body(request)
    who = body.get("who", "agent")
    order = body.get("order")
    if who not in ("agent", "requester"):
        raise control_error(400, "'who' must be 'agent' or 'requester'")
    if order is not None and order not in CLOSE_ORDERS:
        raise control_error(400, f"'order' must be one of {CLOSE_ORDERS}")
    announce = _flag(body, "message", True)
    closable = (QueueEntryState.WORK_IN_PROGRESS, QueueEntryState.CLOSED_BY_CLIENT)
    session = _target(state, body, lambda: _latest_closable(state), "no session to close")
    if isinstance(session, VaSession):
        if who == "requester":
            if session.state is VaState.CLOSED:
                raise _conflict(session, "is already closed")
            return _va_result(session, [], va.end_conversation(state, session))
        if session.state is not VaState.LIVE:
            raise _conflict(session, "has no agent to close it")
        return _va_result(session, *va.agent_close(state, session, announce))
    if who == "requester":
        connect.requester_leave(state, session)
        return _agent_result(state, session, [])
    if session.agent is None or session.state not in closable:
        raise _conflict(session, "has no agent to close it")
    posted = connect.agent_close(state, session, order, announce=announce)
    return _agent_result(state, session, posted)


async def timeout(request: web.Request) -> web.Response:
    """``{"session"?}``: the idle-timeout path now. Connect: state 8 (CLOSED_ABANDONED); VA: the timeout callback with
    ``takeControl``, CLOSED. Without ``session``: the latest accepted live session."""
    state = request.app[STATE_KEY]
    body = await _body(request)
    session = _target(state, body, lambda: _latest_live(state), "no session is live")
    if isinstance(session, VaSession):
        if session.state is VaState.CLOSED:
            raise _conflict(session, "is already closed")
        return _va_result(session, *va.timeout(state, session))
    if not session.state.is_open:
        raise _conflict(session, "is already closed")
    connect.abandon(state, session)
    return _agent_result(state, session, [])


async def va_no_agents(request: web.Request) -> web.Response:
    """``{"session"?}``: no agent can take a queued VA chat ("There are no agents available ..." + ``takeControl``).
    Without ``session``: the oldest queued VA session."""
    state = request.app[STATE_KEY]
    body = await _body(request)
    session = _target(state, body, lambda: va.oldest_queued(state), "no VA session is queued")
    if not isinstance(session, VaSession):
        raise control_error(400, f"session {session.group} is a Connect session; va/no_agents is for VA sessions")
    if session.state is not VaState.QUEUED:
        raise _conflict(session, "is not queued")
    return _va_result(session, *va.no_agents(state, session))


def _oldest_waiting(state: EmulatorState) -> Optional[AnySession]:
    connect_waiting, va_queued = connect.oldest_waiting(state), va.oldest_queued(state)
    candidates: List[AnySession] = [s for s in (connect_waiting, va_queued) if s is not None]
    # Both counters come from state.next_seq(): a Connect session's creation, a VA session's entry into the queue.
    return min(candidates, key=lambda s: s.seq if isinstance(s, ConnectSession) else s.queued_seq, default=None)


def _latest_live(state: EmulatorState) -> Optional[AnySession]:
    return _latest_accepted([connect.latest_accepted(state), va.latest_live(state)])


def _latest_closable(state: EmulatorState) -> Optional[AnySession]:
    closable = (QueueEntryState.WORK_IN_PROGRESS, QueueEntryState.CLOSED_BY_CLIENT)
    return _latest_accepted([connect.latest_accepted(state, closable), va.latest_live(state)])


def _latest_accepted(candidates: Sequence[Optional[AnySession]]) -> Optional[AnySession]:
    present = [s for s in candidates if s is not None]
    return max(present, key=lambda s: s.accept_seq, default=None)


# ---------------------------------------------------------------------------------------------------------------------
# Credentials, clock, faults


async def oauth_expire(request: web.Request) -> web.Response:
    """``{"token"?: "*"|<token>, "refresh_tokens"?: false}``: the next call with an expired token gets 401."""
    state = request.app[STATE_KEY]
    body = await _body(request)
    which = body.get("token", "*")
    if not isinstance(which, str):
        raise control_error(400, "'token' must be '*' or a token")
    return web.json_response({"expired": expire_tokens(state, which, _flag(body, "refresh_tokens", False))})


async def get_clock(request: web.Request) -> web.Response:
    return _clock_result(request.app[STATE_KEY])


async def set_clock(request: web.Request) -> web.Response:
    """``{"now_ms": N}`` freezes the clock at N, ``{"now_ms": null}`` returns to real time, ``{"advance_ms": N}``
    moves it forward (frozen or not)."""
    state = request.app[STATE_KEY]
    body = await _body(request)
    if "now_ms" not in body and "advance_ms" not in body:
        raise control_error(400, "give 'now_ms' (a number or null) and/or 'advance_ms'")
    if "now_ms" in body:
        state.clock.freeze(_int_or_none(body["now_ms"], "now_ms"))
    if "advance_ms" in body:
        delta = _int_or_none(body["advance_ms"], "advance_ms")
        if delta is None:
            raise control_error(400, "'advance_ms' must be a number")
        state.clock.advance(delta)
    return _clock_result(state)


async def list_faults(request: web.Request) -> web.Response:
    """The rules, the rate limit and ``seed``: the seed of the probability draws, to replay a run with
    ``random_seed``."""
    state = request.app[STATE_KEY]
    rate_limit = state.rate_limit.to_dict() if state.rate_limit else None
    return web.json_response(
        {"faults": [r.to_dict() for r in state.faults], "rate_limit": rate_limit, "seed": state.fault_seed}
    )


async def add_faults(request: web.Request) -> web.Response:
    """One rule or a list of rules, appended (see faults.py); a ``per_user_per_hour`` rule sets the rate limit."""
    state = request.app[STATE_KEY]
    try:
        rules = parse_rules(json.loads(await request.read() or b"null"))
    except (ValueError, TypeError) as exc:
        raise control_error(400, f"bad fault rule: {exc}") from None
    state.add_faults(rules)
    return _faults_result(state)


async def clear_faults(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.faults.clear()
    state.rate_limit = None
    return _faults_result(state)


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


async def _body(request: web.Request) -> Dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise control_error(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise control_error(400, "the body must be a JSON object")
    return body


def _find(state: EmulatorState, session_id: str) -> AnySession:
    """A Connect session by ``group``, else a VA session by ``clientSessionId`` or ``interactionId``."""
    connect_session = state.find_session(session_id)
    if connect_session is not None:
        return connect_session
    found = state.find_va_sessions(session_id)
    if len(found) > 1:
        raise control_error(
            409, f"{len(found)} VA sessions have clientSessionId {session_id!r}; name one by its interactionId"
        )
    if not found:
        raise control_error(404, f"no session {session_id!r}")
    return found[0]


def _target(
    state: EmulatorState, body: Dict[str, Any], default: Callable[[], Optional[AnySession]], none_text: str
) -> AnySession:
    """The session named by ``body["session"]``, or the default pick when it is omitted."""
    if body.get("session") is not None:
        return _find(state, str(body["session"]))
    session = default()
    if session is None:
        raise control_error(404, none_text)
    return session


def _agent(state: EmulatorState, spec: Any, session: AnySession) -> UserRecord:
    """The agent described by ``{"name", "user_name", "id"}`` (all optional). By default the first agent of the
    session's queue; VA chats are not routed to a Connect queue, so they default to the first queue's first agent."""
    if spec is None:
        spec = {}
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k, ""), str) for k in ("name", "user_name", "id")):
        raise control_error(400, "an agent is an object with string 'name', 'user_name' and 'id'")
    queues = state.config.connect_queues
    if isinstance(session, ConnectSession):
        queue = queues.get(session.queue_id, {})
    else:
        queue = next(iter(queues.values()), {})
    agents = queue.get("agents") or [DEFAULT_AGENT]
    return state.user(spec.get("user_name") or agents[0], name=spec.get("name"), sys_id=spec.get("id"))


def _agent_result(state: EmulatorState, session: ConnectSession, posted: List[Message]) -> web.Response:
    return web.json_response(
        {"session": session_summary(state, session), "messages": [connect.message_wire(m) for m in posted]}
    )


def _va_result(session: VaSession, posted: List[Message], payloads: List[Dict[str, Any]]) -> web.Response:
    return web.json_response(
        {
            "session": va.summary(session),
            "messages": [va.message_wire(session, m) for m in posted],
            "callbacks": payloads,
        }
    )


def _conflict(session: AnySession, what: str) -> ApiError:
    if isinstance(session, VaSession):
        return control_error(409, f"VA session {session.client_session_id} {what} (state {session.state.value})")
    return control_error(409, f"session {session.group} {what} (state {int(session.state)} {session.state.name})")


def _flag(body: Dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise control_error(400, f"'{key}' must be true or false")
    return value


def _int_or_none(value: Any, key: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise control_error(400, f"'{key}' must be a number")
    return int(value)


def _clock_result(state: EmulatorState) -> web.Response:
    return web.json_response({"now_ms": state.clock.now_ms(), "frozen": state.clock.frozen})


def _faults_result(state: EmulatorState) -> web.Response:
    rate_limit = state.rate_limit.to_dict() if state.rate_limit else None
    return web.json_response({"faults": [r.to_dict() for r in state.faults], "rate_limit": rate_limit})
