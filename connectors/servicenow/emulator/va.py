"""Virtual Agent Bot Integration API (reference 2 and 5.4): the inbound route
``POST /api/sn_va_as_service/bot/integration``, the conversation state machine, and the callbacks each event makes.

The connector calls the inbound route; it answers ``200 {"status": "success"}`` at once and everything else (Virtual
Agent replies, the live agent's messages, typing, system events) reaches the connector later as callbacks POSTed to
``va_callback_url`` (``callbacks.py`` delivers them). The agent side (accept, message, typing, transfer, close, time
out, no agents) is driven through the control plane (``control.py``), which calls the functions of this module.

Only the asynchronous mode is emulated (``va_mode: sync`` of reference 5.1 is not). Wire shapes follow ``bot-api.md``
and the public integrations ([V] in the reference); choices no source pins down are marked [I] where they are made.

Which callbacks carry ``agentChat: true`` [I beyond the "stand by" example]: those that come from the live-agent side
(queueing, accept, agent messages, typing, transfer, close, and a timeout while queued or live), not the Virtual
Agent's own replies (greeting, "The conversation has ended", "no agents", fault). With ``va_batching: "separate"``
every callback of one event carries its ``agentChat``, and ``completed``/``takeControl`` go on the event's last
callback only, so a connector that stops on them has already received the rest of the event.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

from aiohttp import web

from . import connect, files, records
from .callbacks import Callback
from .responses import ApiError, sn_error
from .state import STATE_KEY, EmulatorState, Message, UserRecord, VaKey, VaSession, VaState, new_sys_id

log = logging.getLogger("connectors.servicenow.emulator.va")

INBOUND_PATH = "/api/sn_va_as_service/bot/integration"

#: Every documented ``action`` [V bot-api.md]; anything else is 400 in strict validation [I].
ACTIONS = frozenset(
    {
        "START_CONVERSATION",
        "CREATE_CONVERSATION",
        "START_CREATED_CONVERSATION",
        "AGENT",
        "END_CONVERSATION",
        "FAULT_CONVERSATION",
        "SEND_HISTORY",
        "SET_USER_TIMEZONE",
        "SWITCH",
        "TYPING",
        "VIEWING",
        "UPDATE_MESSAGES",
    }
)
#: Actions that need no ``message.text`` (reference 5.4).
TEXT_OPTIONAL_ACTIONS = frozenset(
    {
        "END_CONVERSATION",
        "TYPING",
        "VIEWING",
        "SEND_HISTORY",
        "SET_USER_TIMEZONE",
        "START_CONVERSATION",
        "START_CREATED_CONVERSATION",
        "FAULT_CONVERSATION",
        "UPDATE_MESSAGES",
    }
)
#: Actions that are only recorded (transcript ``events``) and never change the conversation or make a callback.
RECORD_ONLY_ACTIONS = frozenset({"TYPING", "VIEWING", "UPDATE_MESSAGES", "SEND_HISTORY", "SET_USER_TIMEZONE", "SWITCH"})

# Texts. The VA greeting, "stand by", spinner, "ended" and "has closed the support session." are [V]; "has entered
# the chat." is from the Agent Chat system-message table [V async-chat.md]; transfer, timeout, no-agent texts are [I].
VA_GREETING = "Hi, I'm your Virtual Agent. Let me know how I can help you today."
STAND_BY = "Please stand by while I connect you to a live agent."
ROUTING = "Routing you to a live agent..."
CONVERSATION_ENDED = "The conversation has ended. If you need help again, type hi."
TIMED_OUT = "The conversation with a live agent has timed out."
NO_AGENTS = "There are no agents available to chat right now. Please try again later."


def entered_text(name: str) -> str:
    return f"{name} has entered the chat."


def left_text(name: str) -> str:
    return f"{name} has left the chat."


def closed_text(name: str) -> str:
    return f"{name} has closed the support session."


# ---------------------------------------------------------------------------------------------------------------------
# Wire shapes


def output_text(text: str, agent_info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """An ``OutputText`` item. Every one gets a fresh ``messageId`` (the ``sys_cs_message`` sys_id) so a connector can
    deduplicate and report delivery with UPDATE_MESSAGES [V field; I that VA's own texts carry one too]."""
    item: Dict[str, Any] = {
        "uiType": "OutputText",
        "group": "DefaultText",
        "value": text,
        "maskType": "NONE",
        "messageId": new_sys_id(),
    }
    if agent_info is not None:
        item["agentInfo"] = agent_info
    return item


def action_msg(action_type: str, **fields: Any) -> Dict[str, Any]:
    return {"uiType": "ActionMsg", "actionType": action_type, **fields}


def system_msg(text: str) -> Dict[str, Any]:
    """An ``ActionMsg`` ``System`` with its ``messageId`` (the ``sys_cs_message`` sys_id, as for every kept message)."""
    return action_msg("System", message=text, messageId=new_sys_id())


def agent_info(session: VaSession, agent: UserRecord) -> Dict[str, Any]:
    """``agentInfo`` [V va-features-v2.md]; ``agentId`` is the agent's live_profile sys_id (3.14.3+) [V]. The avatar
    is an ``.iix`` image URL on the instance, here the URL the connector reached the emulator at (not served)."""
    return {
        "sentFromAgent": True,
        "agentName": agent.name,
        "agentAvatar": f"{session.instance_url}/{agent.sys_id}.iix?t=small",
        "agentId": agent.profile,
    }


def summary(session: VaSession) -> Dict[str, Any]:
    """The control plane's view of a VA session (``GET /__emu/sessions``, agent operations, transcript)."""
    app_inbound_id, user_id, client_session_id = session.key
    agent = session.agent
    return {
        "api": "va",
        "session": client_session_id,
        "clientSessionId": client_session_id,
        "userId": user_id,
        "appInboundId": app_inbound_id,
        "interactionId": session.interaction_id,
        "state": session.state.value,
        "open": session.state.is_open,
        "agent": {"name": agent.name, "user_name": agent.user_name, "id": agent.sys_id} if agent else None,
        "requestId": session.request_id,
        "message_count": len(session.messages),
        "callback_count": session.callback_count,
    }


def message_wire(session: VaSession, message: Message) -> Dict[str, Any]:
    """A transcript message with the keys of a Connect message object (so backend-agnostic tests can read both), plus
    the delivery status the connector reported for it with UPDATE_MESSAGES (``None`` when none)."""
    wire = connect.message_wire(message)
    wire["delivery_status"] = session.delivery_status.get(message.sys_id)
    return wire


def transcript(session: VaSession) -> Dict[str, Any]:
    ordered = sorted(session.messages, key=lambda m: (m.timestamp, m.seq))
    return {
        "session": summary(session),
        "messages": [message_wire(session, m) for m in ordered],
        "events": list(session.events),
        "history": list(session.history),
        "context_variables": dict(session.context_variables),
        "client_variables": session.client_variables,
        "requests": list(session.requests),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Callbacks


def emit(
    state: EmulatorState,
    session: VaSession,
    items: List[Dict[str, Any]],
    *,
    agent_chat: bool = False,
    completed: bool = False,
    take_control: bool = False,
    score: int = 1,
    message: Optional[Mapping[str, Any]] = None,
) -> List[Dict[str, Any]]:
    """Create the callbacks of one event, queue them for delivery and return their payloads.

    The envelope echoes the session's latest ``requestId`` and ``clientVariables`` and the triggering inbound
    ``message`` (for agent-side events: the latest user message) [V fields, I for agent-originated pushes].
    """
    # Every message gets its sys_cs_message record (and sequence) before any push of it can leave [records.py].
    for item in items:
        records.add_outbound(state, session, item)
    batched = state.config.va_batching == "batched"
    bodies = [items] if batched or not items else [[item] for item in items]
    echo = dict(message) if message is not None else session.last_message
    payloads = []
    for index, body in enumerate(bodies):
        last = index == len(bodies) - 1
        payload: Dict[str, Any] = {
            "requestId": session.request_id,
            "clientSessionId": session.client_session_id,
            "nowSessionId": "",
            "message": echo,
            "userId": session.key[1],
            "clientVariables": session.client_variables,
            "interactionId": session.interaction_id,
            "body": body,
        }
        if agent_chat:
            payload["agentChat"] = True
        if completed and last:
            payload["completed"] = True
        if take_control and last:
            payload["takeControl"] = True
        payload["score"] = score
        payloads.append(payload)
    callbacks = [Callback.create(session.client_session_id, session.uid, p) for p in payloads]
    session.callback_count += len(callbacks)
    state.callbacks.enqueue(callbacks)
    return [c.payload for c in callbacks]


# ---------------------------------------------------------------------------------------------------------------------
# Operations (the inbound route and the control plane share them). Agent-side ones return the transcript messages
# they added and the callback payloads they created.

Outcome = Tuple[List[Message], List[Dict[str, Any]]]


def add_message(
    state: EmulatorState,
    session: VaSession,
    text: str,
    author: Optional[UserRecord],
    reflected_field: str = "comments",
    attachments: Optional[List[Any]] = None,
    sys_id: Optional[str] = None,
) -> Message:
    """Append to the transcript; ``author=None`` is a system message. Agent messages reuse the callback's
    ``messageId`` as ``sys_id``, so UPDATE_MESSAGES statuses attach to them."""
    now = state.clock.now_ms()
    message = Message(
        sys_id=sys_id or new_sys_id(),
        group=session.client_session_id,
        text=text,
        author=author,
        timestamp=now,
        seq=state.next_seq(),
        reflected_field=reflected_field,
        attachments=list(attachments or []),
    )
    session.messages.append(message)
    session.last_activity_ms = now
    if session.state.is_open:
        # Who wrote, and how many messages the chat has: never the text (logs carry no message bodies).
        kind = "system message" if author is None else "work note" if message.is_work_note else (
            "user message" if author is session.user else "agent message"
        )
        log.info("VA chat %s: %s (%d messages)", session.client_session_id, kind, len(session.messages))
    return message


def _wait_time(state: EmulatorState) -> Dict[str, Any]:
    wait_time = state.config.va_wait_time
    return {"waitTime": wait_time} if wait_time else {}


def escalate(state: EmulatorState, session: VaSession, message: Optional[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """VA to QUEUED: "stand by" [V], the wait-time spinner [V va-features-v2.md] and SubscribeToSupportQueue [V type,
    I order]."""
    session.state = VaState.QUEUED
    session.queued_seq = state.next_seq()
    session.queued_ms = state.clock.now_ms()
    session.agent = None
    records.queued(state, session)
    log.info("VA chat %s asks for a live agent", session.client_session_id)
    items = [
        output_text(STAND_BY),
        action_msg("StartSpinner", spinnerType="wait_time", message=ROUTING, **_wait_time(state)),
        action_msg("SubscribeToSupportQueue"),
    ]
    return emit(state, session, items, agent_chat=True, message=message)


def accept(state: EmulatorState, session: VaSession, agent: UserRecord) -> Outcome:
    """QUEUED to LIVE: EndSpinner, SubscribeToChatPresence, SwitchToLiveAgent, System "<Agent> has entered the chat."
    and the greeting (``greeting_text``) from the agent [V types and texts, I order]."""
    session.state = VaState.LIVE
    session.agent = agent
    session.accept_seq = state.next_seq()
    records.assigned(state, session, agent)
    log.info("VA chat %s: %s joined", session.client_session_id, agent.name)
    entered = system_msg(entered_text(agent.name))
    posted = [add_message(state, session, entered["message"], None, sys_id=entered["messageId"])]
    items = [
        action_msg("EndSpinner", spinnerType="wait_time"),
        action_msg("SubscribeToChatPresence"),
        action_msg("SwitchToLiveAgent"),
        entered,
    ]
    greeting = state.config.greeting_text
    if greeting:
        item = output_text(greeting, agent_info(session, agent))
        items.append(item)
        posted.append(add_message(state, session, greeting, agent, sys_id=item["messageId"]))
    return posted, emit(state, session, items, agent_chat=True)


def agent_message(state: EmulatorState, session: VaSession, text: str, work_note: bool, system: bool) -> Outcome:
    """An agent text (OutputText with ``agentInfo``), a work note (transcript only: never shown to the user [I]) or a
    system message (ActionMsg System)."""
    if system:
        item = system_msg(text)
        posted = [add_message(state, session, text, None, sys_id=item["messageId"])]
        return posted, emit(state, session, [item], agent_chat=session.state.is_open)
    assert session.agent is not None
    if work_note:
        return [add_message(state, session, text, session.agent, reflected_field="work_notes")], []
    item = output_text(text, agent_info(session, session.agent))
    posted = [add_message(state, session, text, session.agent, sys_id=item["messageId"])]
    return posted, emit(state, session, [item], agent_chat=True)


def agent_file(state: EmulatorState, session: VaSession, text: str, file: Mapping[str, Any]) -> Outcome:
    """A file from the agent: ``OutputImage`` for an image, ``OutputLink`` for anything else, with ``agentInfo``
    [V uiTypes and their fields as Mattermost's client reads them; I that Agent Chat sends agent files this way]."""
    assert session.agent is not None
    info = agent_info(session, session.agent)
    items: List[Dict[str, Any]] = []
    posted: List[Message] = []
    if text:
        item = output_text(text, info)
        items.append(item)
        posted.append(add_message(state, session, text, session.agent, sys_id=item["messageId"]))
    message_id = new_sys_id()
    if str(file["content_type"]).startswith("image/"):
        item = {"uiType": "OutputImage", "group": "DefaultOutputImage", "value": file["url"], "altText": file["name"]}
    else:
        item = {
            "uiType": "OutputLink",
            "group": "DefaultOutputLink",
            "label": file["name"],
            "header": file["name"],
            "value": {"action": file["url"]},
        }
    items.append({**item, "maskType": "NONE", "messageId": message_id, "agentInfo": info})
    attachment = {"url": file["url"], "contentType": file["content_type"], "fileName": file["name"]}
    posted.append(add_message(state, session, "", session.agent, attachments=[attachment], sys_id=message_id))
    return posted, emit(state, session, items, agent_chat=True)


def agent_typing(state: EmulatorState, session: VaSession, on: bool) -> Outcome:
    name = "StartTypingIndicator" if on else "EndTypingIndicator"
    if state.config.va_long_action_names:
        name += "ActionMsg"
    session.last_activity_ms = state.clock.now_ms()
    return [], emit(state, session, [action_msg(name)], agent_chat=True)


def transfer(state: EmulatorState, session: VaSession, to: UserRecord, announce: bool) -> Outcome:
    """The chat moves to another agent: System "<A> has left the chat." and "<B> has entered the chat." [I: no source
    gives the transfer wording]; later agent messages carry B's ``agentInfo``."""
    assert session.agent is not None
    previous, session.agent = session.agent, to
    session.last_activity_ms = state.clock.now_ms()
    records.assigned(state, session, to)
    log.info("VA chat %s: transferred from %s to %s", session.client_session_id, previous.name, to.name)
    if not announce:
        return [], []
    items = [system_msg(left_text(previous.name)), system_msg(entered_text(to.name))]
    posted = [add_message(state, session, item["message"], None, sys_id=item["messageId"]) for item in items]
    return posted, emit(state, session, items, agent_chat=True)


def agent_close(state: EmulatorState, session: VaSession, announce: bool) -> Outcome:
    """The agent closes: System "<Agent> has closed the support session." [V text] then SwitchToVirtualAgent [V type].
    With ``close_style: "switch"`` the conversation goes back to the Virtual Agent (state VA, as SwitchToVirtualAgent
    says); with ``"completed"`` the last callback also has ``completed: true`` and the conversation is over (CLOSED)
    [I]. ``announce=False`` leaves out the System text (SwitchToVirtualAgent remains the only end signal)."""
    assert session.agent is not None
    completed = state.config.close_style == "completed"
    if completed:
        records.ended(state, session, records.INTERACTION_CLOSED_COMPLETE, records.AGENT_ENDED)
    else:
        records.assigned(state, session, None)
        log.info("VA chat %s: the agent closed it, back to the Virtual Agent", session.client_session_id)
    posted, items = [], []
    if announce:
        item = system_msg(closed_text(session.agent.name))
        posted.append(add_message(state, session, item["message"], None, sys_id=item["messageId"]))
        items.append(item)
    items.append(action_msg("SwitchToVirtualAgent"))
    payloads = emit(state, session, items, agent_chat=True, completed=completed)
    session.state = VaState.CLOSED if completed else VaState.VA
    session.last_activity_ms = state.clock.now_ms()
    return posted, payloads


def end_conversation(
    state: EmulatorState, session: VaSession, message: Optional[Mapping[str, Any]] = None
) -> List[Dict[str, Any]]:
    """The user (connector) ends the conversation: "The conversation has ended ..." with ``completed: true`` [V]."""
    if session.state is VaState.QUEUED:
        records.ended(state, session, records.INTERACTION_CLOSED_ABANDONED, records.LEFT_BEFORE_ENGAGEMENT)
    else:
        records.ended(state, session, records.INTERACTION_CLOSED_COMPLETE, records.USER_ENDED)
    session.state = VaState.CLOSED
    return emit(state, session, [output_text(CONVERSATION_ENDED)], completed=True, message=message)


def timeout(state: EmulatorState, session: VaSession) -> Outcome:
    """Idle timeout (or ``/__emu/timeout``): System "The conversation with a live agent has timed out." [I text,
    V meaning] with ``takeControl: true`` [V va-features-v3: sent on idle timeout]; the conversation is over."""
    was_live = session.state.is_open
    if session.state is VaState.QUEUED:
        records.ended(state, session, records.INTERACTION_CLOSED_ABANDONED, records.NO_ACTIVITY)
    else:
        records.ended(state, session, records.INTERACTION_CLOSED_COMPLETE, records.NO_USER_RESPONSE)
    session.state = VaState.CLOSED
    item = system_msg(TIMED_OUT)
    posted = [add_message(state, session, TIMED_OUT, None, sys_id=item["messageId"])]
    payloads = emit(state, session, [item], agent_chat=was_live, take_control=True)
    return posted, payloads


def no_agents(state: EmulatorState, session: VaSession) -> Outcome:
    """Nobody can take the queued chat: the Virtual Agent says so and hands control back (``takeControl``) [I text;
    Kore matches "There are no agents"]."""
    records.ended(state, session, records.INTERACTION_CLOSED_ABANDONED, records.NO_AGENT_AVAILABLE)
    session.state = VaState.CLOSED
    return [], emit(state, session, [output_text(NO_AGENTS)], take_control=True)


def fault(state: EmulatorState, session: VaSession, message: Optional[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """FAULT_CONVERSATION: ``{"body": [], "takeControl": true, "score": 0}`` [V example]; the conversation is over."""
    records.ended(state, session, records.INTERACTION_FAULTED, records.ERROR)
    session.state = VaState.CLOSED
    return emit(state, session, [], take_control=True, score=0, message=message)


def sweep_idle(state: EmulatorState) -> None:
    """Time out live-agent chats (QUEUED or LIVE) idle for ``idle_timeout_s`` (0 disables), like ServiceNow's hourly
    "Time Out Abandoned B2B Conversations" job [V]; run lazily before each request, so moving the emulator clock is
    enough. Conversations in state VA are left alone, as the Connect sweep leaves closed chats alone: the real job
    would close them too [I], but after an agent's close (back to VA) a late "timed out with a live agent" callback
    would only confuse a connector that has ended its handoff. ``/__emu/timeout`` can still time them out."""
    limit_ms = state.config.idle_timeout_s * 1000
    if not limit_ms:
        return
    now = state.clock.now_ms()
    for session in state.va_sessions.values():
        if session.state.is_open and now - session.last_activity_ms >= limit_ms:
            timeout(state, session)


def oldest_queued(state: EmulatorState) -> Optional[VaSession]:
    queued = [s for s in state.va_sessions.values() if s.state is VaState.QUEUED]
    return min(queued, key=lambda s: s.queued_seq, default=None)


def latest_live(state: EmulatorState) -> Optional[VaSession]:
    live = [s for s in state.va_sessions.values() if s.state is VaState.LIVE]
    return max(live, key=lambda s: s.accept_seq, default=None)


# ---------------------------------------------------------------------------------------------------------------------
# Inbound


def add_routes(app: web.Application) -> None:
    app.router.add_post(INBOUND_PATH, integration)


def session_of(request: web.Request, body: bytes) -> Optional[str]:
    """The ``clientSessionId`` an inbound request is about (for fault rules that match a session)."""
    try:
        data = json.loads(body or b"null")
    except ValueError:
        return None
    value = data.get("clientSessionId") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


async def integration(request: web.Request) -> web.Response:
    """``POST /api/sn_va_as_service/bot/integration`` (asynchronous mode). Basic/Bearer auth and the header checks
    happen in the middleware; here: the JSON body, message auth, validation, then the state machine."""
    state = request.app[STATE_KEY]
    body = await connect.read_json_object(request)
    problem = _message_auth_problem(state, request, body)
    if problem is not None:
        if state.config.va_silent_token_failure:
            # What the real instance does: the worker thread rejects the token after the 200 [V bot-api.md].
            log.warning("VA message auth failed (silently ignored): %s", problem[1])
            return web.json_response({"status": "success"})
        raise sn_error(401, *problem)
    _validate(state, body)
    # request.url would do, but this yarl rejects a Host header with a port there.
    handle_inbound(state, f"{request.scheme}://{request.host}", body)
    return web.json_response({"status": "success"})


def _message_auth_problem(
    state: EmulatorState, request: web.Request, body: Mapping[str, Any]
) -> Optional[Tuple[str, str]]:
    """Static token (header ``token``, else body ``token``: the header wins) and ``x-b2b-signature`` (hex HMAC-SHA1 of
    the compact JSON body) [V configure-send-request.md]. Returns ``(message, detail)`` of the 401 [I texts]."""
    config = state.config
    if config.va_static_token is not None:
        given = request.headers["token"] if "token" in request.headers else body.get("token")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), config.va_static_token.encode()):
            return "Token verification failed", "The static token is missing or does not match"
    if config.va_hash_secret is not None:
        signature = request.headers.get("x-b2b-signature", "").strip().lower().encode()
        expected = signatures(config.va_hash_secret, body)
        if not signature or not any(hmac.compare_digest(signature, s.encode()) for s in expected):
            return "Message verification failed", "x-b2b-signature is missing or is not the HMAC-SHA1 of the body"
    return None


def signatures(secret: str, body: Any) -> List[str]:
    """The accepted ``x-b2b-signature`` values: hex HMAC-SHA1 over ``json.dumps(body, separators=(",", ":"))``, as the
    public Python sample does, and over the same without ASCII escapes, as the doc's ``JSON.stringify`` gives for
    non-ASCII text [V both]."""
    key = secret.encode("utf-8")
    results = []
    for ensure_ascii in (True, False):
        compact = json.dumps(body, separators=(",", ":"), ensure_ascii=ensure_ascii).encode("utf-8")
        results.append(hmac.new(key, compact, hashlib.sha1).hexdigest())
    return results


def _validate(state: EmulatorState, body: Mapping[str, Any]) -> None:
    """Reference 5.4 (strict): ``userId``; ``message.typed`` when there is a ``message``; ``message.text`` unless an
    attachment or a text-less action; no text with END_CONVERSATION [V rule, I that it is rejected]; known actions
    only [I]. Lenient (``va_validation``): ``userId`` and ``message.text`` only [V va-common-errors.md]."""
    strict = state.config.va_validation == "strict"

    def bad(detail: str) -> ApiError:
        return sn_error(400, "Invalid request", detail)

    user_id = body.get("userId")
    if not isinstance(user_id, str) or not user_id:
        raise bad("'userId' is required")
    for name in ("clientSessionId", "appInboundId", "requestId"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise bad(f"'{name}' must be a string")
    if body.get("contextVariables") is not None and not isinstance(body["contextVariables"], dict):
        raise bad("'contextVariables' must be an object")
    action = body.get("action")
    if action is not None and not isinstance(action, str):
        raise bad("'action' must be a string")
    if strict and action is not None and action not in ACTIONS:
        raise bad(f"Unknown action '{action}'")
    message = body.get("message")
    if action == "UPDATE_MESSAGES":
        statuses = message if isinstance(message, list) else [message]
        if strict and not all(isinstance(s, dict) and isinstance(s.get("id"), str) for s in statuses):
            raise bad("UPDATE_MESSAGES needs 'message' {id, status} or a list of them")
        return
    if message is not None and not isinstance(message, dict):
        raise bad("'message' must be an object")
    message = message or {}
    if strict and body.get("message") is not None and not isinstance(message.get("typed"), bool):
        raise bad("'message.typed' is required")
    text = message.get("text")
    if text is not None and not isinstance(text, str):
        raise bad("'message.text' must be a string")
    if strict and message.get("attachment") is not None:
        problem = files.check_va_attachment(message["attachment"])
        if problem:
            raise bad(problem)
    has_text = bool(text and text.strip())
    if not has_text and not message.get("attachment") and action not in TEXT_OPTIONAL_ACTIONS:
        raise bad("'message.text' is required")
    if strict and action == "END_CONVERSATION" and text:
        raise bad("'message.text' must be empty for END_CONVERSATION")


def handle_inbound(state: EmulatorState, instance_url: str, body: Mapping[str, Any]) -> None:
    """Apply one validated inbound request to its conversation (reference 5.4 state table)."""
    now = state.clock.now_ms()
    key: VaKey = (body.get("appInboundId") or "default", body["userId"], body.get("clientSessionId") or "")
    session = state.va_sessions.get(key)
    if session is None:
        session = state.va_sessions[key] = VaSession(
            key=key,
            uid=new_sys_id(),
            # Not registered in state.users: end users are not ServiceNow agents.
            user=UserRecord(body["userId"], body["userId"]),
            interaction_id="",
            created_ms=now,
            seq=state.next_seq(),
            instance_url=instance_url,
        )
        records.open_conversation(state, session)
    session.last_activity_ms = now
    action = body.get("action")
    if body.get("requestId"):
        session.request_id = body["requestId"]
    if "clientVariables" in body:
        session.client_variables = body["clientVariables"]
    session.context_variables.update(body.get("contextVariables") or {})
    history = body.get("history")
    if isinstance(history, list):
        session.history.extend(history)
    elif history is not None:
        session.history.append(history)
    if "silentMessage" in body:
        session.silent = bool(body["silentMessage"])
    session.requests.append(
        {"at_ms": now, "requestId": body.get("requestId"), "action": action, "body": _redacted(body)}
    )
    message = body.get("message")
    if action is not None:
        _record_event(session, body, now)
    if action in RECORD_ONLY_ACTIONS or (action is not None and action not in ACTIONS):
        # An unknown action (only accepted by lenient validation) is recorded and otherwise ignored [I].
        if action == "UPDATE_MESSAGES":
            for status in message if isinstance(message, list) else [message]:
                if isinstance(status, dict) and isinstance(status.get("id"), str):
                    session.delivery_status[status["id"]] = str(status.get("status"))
                    records.delivery_reported(state, status["id"], str(status.get("status")))
        return
    if action == "END_CONVERSATION":
        end_conversation(state, session, message)
        return
    if action == "FAULT_CONVERSATION":
        fault(state, session, message)
        return

    # A message for the conversation: no action, AGENT or a START/CREATE action.
    if session.state is VaState.CLOSED:
        # "If you need help again, type hi": a new conversation (new interaction) for the same key [I].
        session.state = VaState.VA
        session.agent = None
        records.open_conversation(state, session)
        session.events.append({"action": "NEW_CONVERSATION", "timestamp": now, "requestId": body.get("requestId")})
    message = message if isinstance(message, dict) else {}
    text = message.get("text") or ""
    kept: List[Dict[str, Any]] = []
    if message.get("attachment"):
        # A type the instance does not take is dropped and nobody is told [I]: only the transcript's events show it.
        kept, dropped = files.accepted_va_attachments(state, message["attachment"])
        for item in dropped:
            session.events.append(
                {"action": "ATTACHMENT_DROPPED", "timestamp": now, "contentType": item.get("contentType"), "fileName": item.get("fileName")}
            )
    if text.strip() or kept:
        posted = add_message(state, session, text, session.user, attachments=kept)
        records.add_inbound(state, session, message, posted.sys_id)
        session.last_message = dict(message)
    if session.state is not VaState.VA:
        # QUEUED/LIVE: the agent sees the text in the transcript, no callback [I 2.5 step 6]. A second AGENT while
        # queued (pypestream sends one after 3 s) changes nothing either [I].
        return
    escalation = {t.strip().lower() for t in state.config.va_escalation_texts}
    if action == "AGENT" or text.strip().lower() in escalation:
        escalate(state, session, message)
    elif action == "CREATE_CONVERSATION":
        item = action_msg(
            "CreateConversation",
            conversationId=session.conversation_id,
            interactionId=session.interaction_id,
            messageId=new_sys_id(),
        )
        emit(state, session, [item], message=message)
    elif not session.silent:
        emit(state, session, [output_text(VA_GREETING)], message=message)


def _record_event(session: VaSession, body: Mapping[str, Any], now: int) -> None:
    """A transcript ``event``: the action, when, in which state, and what it carried."""
    action = body.get("action")
    event: Dict[str, Any] = {
        "action": action,
        "timestamp": now,
        "requestId": body.get("requestId"),
        "state": session.state.value,
    }
    message = body.get("message")
    if action == "UPDATE_MESSAGES":
        statuses = message if isinstance(message, list) else [message]
        event["messages"] = [
            {"id": s.get("id"), "status": s.get("status")} for s in statuses if isinstance(s, dict)
        ]
    if action in ("END_CONVERSATION", "FAULT_CONVERSATION"):
        event["cause"] = body.get("cause")
    if action == "SET_USER_TIMEZONE":
        event["timezone"] = body.get("timezone")
    if action == "SWITCH":
        event["intent"], event["topic"] = body.get("intent"), body.get("topic")
    session.events.append(event)


def _redacted(body: Mapping[str, Any]) -> Dict[str, Any]:
    """The request body as the transcript keeps it: the static token is a credential."""
    copy = dict(body)
    if "token" in copy:
        copy["token"] = "[redacted]"
    return copy
