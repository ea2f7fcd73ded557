"""The agent console: a small helpdesk web page, served by the emulator, where a person plays the human agent.

``GET /__emu/console`` serves the page; its static assets (``console/`` next to this module: ``index.html``,
``console.css``, ``console.js``, ``favicon.svg``) are served under ``/__emu/console/<name>``. The page is plain HTML,
CSS and JavaScript: no build step, nothing fetched from outside the emulator (a Content-Security-Policy header
enforces it). It polls ``GET /__emu/inbox`` and the selected chat's ``GET /__emu/transcript/{session}`` and acts
through the ordinary ``POST /__emu/agent/accept|message|typing|close`` routes, so everything it does can also be done
with curl.

``GET /__emu/inbox`` is the one route added for the console (read-only): every chat an agent can see, with what a
chat list shows and ``/__emu/sessions`` does not have (when it started and last changed, a preview of the last
message, how many messages the user wrote), plus the emulator clock and the default agent. Virtual Agent
conversations that never asked for a live agent are not in it: an agent never sees them.

Like the whole control plane, these routes answer loopback clients only (``control_plane_loopback_only``), under this
emulator's own names and origin (middleware.control_guard). The page's calls carry the control token
(``X-Emulator-Token``), which the page gets either from its address's fragment (``#token=...``, the link the emulator
and ``make run`` print; a fragment never reaches a server or a log) or, when the user typed the address (a navigation
only the user can start, ``Sec-Fetch-Site: none``), from a ``<meta name="emulator-control-token">`` the server fills
in. A page of another site can read neither: it cannot read this origin's pages, its address or its storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from aiohttp import web

from . import control, middleware
from .config import DEFAULT_AGENT
from .responses import control_error
from .state import STATE_KEY, ConnectSession, EmulatorState, Message, QueueEntryState, VaSession, VaState, display_name

PREFIX = f"{control.PREFIX}/console"
ASSET_DIR = Path(__file__).with_name("console")
#: The files the console is made of, with their content types. Nothing else in ``console/`` is served.
ASSETS = {
    "index.html": "text/html",
    "console.css": "text/css",
    "console.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
#: Only this origin's scripts, styles, images and fetches; no inline script, no framing, no forms posting elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

AnySession = Union[ConnectSession, VaSession]

#: Where the connector puts the Rasa sender id in a Virtual Agent call (``clientVariables``), as every callback echoes.
SENDER_VARIABLE = "rasa_sender_id"
#: Keys a channel may name the user by in ``contextVariables`` or ``clientVariables``.
NAME_VARIABLES = ("displayName", "display_name", "userName", "user_name", "name")
#: ``history`` display names that stand for nobody in particular (the connector's defaults).
PLACEHOLDER_NAMES = {"", "user", "virtual agent", "guest"}
#: Ids longer than this are shortened in the label (a UUID reads badly in a list); the full one is in the details.
SHORT_ID = 8


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(PREFIX, page)
    r.add_get(f"{PREFIX}/", page_slash)
    r.add_get(f"{PREFIX}/{{asset}}", asset)
    r.add_get(f"{control.PREFIX}/inbox", inbox)


# ---------------------------------------------------------------------------------------------------------------------
# The page and its assets


#: The page's placeholder for the token (index.html); filled only for a navigation the user started.
TOKEN_META = '<meta name="emulator-control-token" content="">'


async def page(request: web.Request) -> web.Response:
    body = (ASSET_DIR / "index.html").read_text(encoding="utf-8")
    if middleware.user_navigation(request):
        token = request.app[middleware.TOKEN_KEY]
        body = body.replace(TOKEN_META, f'<meta name="emulator-control-token" content="{token}">')
    # Never cached: the page may carry the token.
    headers = {**_HEADERS, "Cache-Control": "no-store"}
    return web.Response(text=body, content_type="text/html", charset="utf-8", headers=headers)


async def page_slash(request: web.Request) -> web.Response:
    raise web.HTTPFound(PREFIX)


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise control_error(404, f"no console asset {name!r}")
    return _serve(name)


def _serve(name: str) -> web.Response:
    # Read on every request: the files are small, and an edited asset shows on the next reload.
    body = (ASSET_DIR / name).read_bytes()
    return web.Response(body=body, content_type=ASSETS[name], charset="utf-8", headers=_HEADERS)


# ---------------------------------------------------------------------------------------------------------------------
# GET /__emu/inbox


async def inbox(request: web.Request) -> web.Response:
    """``{"now_ms", "agent": {"user_name", "name"}, "chats": [...]}``.

    ``chats`` are in queue order (a Connect chat's creation, a VA chat's latest entry into the queue). Each is the
    session summary of ``GET /__emu/sessions`` plus:

    * ``id``: stable for the chat's lifetime (Connect ``group``; VA: the emulator's own id, kept when a closed
      conversation starts again);
    * ``ref``: what to pass as ``session`` to the other control-plane routes (``session``, or the VA
      ``interactionId`` when several VA chats share a ``clientSessionId``);
    * ``status``: ``"waiting"`` (Connect 1, VA QUEUED), ``"live"`` (Connect 2, VA LIVE) or ``"closed"``;
    * ``requester_name`` (the account that opened the chat: for Connect always the integration user);
    * ``user_label``: who the user is, as the console names them: the name the channel sent (see :func:`user_of`),
      else ``Conversation <id>``; ``user_named`` says which; ``conversation_id``: the channel's id of the
      conversation (Virtual Agent: the Rasa sender id of ``clientVariables.rasa_sender_id``, else ``userId``;
      Connect: the chat number, as the channel sends nothing about the user);
    * ``started_ms`` (Connect: created; VA: entered the queue); ``updated_ms`` (the last message
      or state change);
    * ``last_message``: ``{"author": "user"|"agent"|"system"|"note", "text", "sender_name", "timestamp"}`` or null;
    * ``user_messages``: how many messages the user has written (the console's unread marker compares it).
    """
    state = request.app[STATE_KEY]
    sessions: List[AnySession] = [*state.sessions.values()]
    sessions += [s for s in state.va_sessions.values() if s.queued_seq >= 0]
    sessions.sort(key=lambda s: s.seq if isinstance(s, ConnectSession) else s.queued_seq)
    shared: Dict[str, int] = {}
    for session in state.va_sessions.values():
        shared[session.client_session_id] = shared.get(session.client_session_id, 0) + 1
    return web.json_response(
        {
            "now_ms": state.clock.now_ms(),
            "agent": default_agent(state),
            "chats": [_chat(state, s, shared) for s in sessions],
        }
    )


def default_agent(state: EmulatorState) -> Dict[str, str]:
    """The agent the control plane picks when none is named: the first agent of the first Connect queue."""
    queue = next(iter(state.config.connect_queues.values()), {})
    user_name = (queue.get("agents") or [DEFAULT_AGENT])[0]
    known = state.users.get(user_name)
    return {"user_name": user_name, "name": known.name if known else display_name(user_name)}


def author_kind(message: Message, requester: str) -> str:
    """``user``, ``agent``, ``system`` or ``note``, as the console (``data-author``) shows a message."""
    if message.author is None:
        return "system"
    if message.is_work_note:
        return "note"
    return "user" if message.author.user_name == requester else "agent"


def user_of(session: AnySession) -> Dict[str, Any]:
    """How the console names the user: ``{"user_label", "user_named", "conversation_id"}``.

    Virtual Agent, first found: a user turn's ``displayName`` in the ``history`` the channel sent with the handoff
    (the user's name when the channel knows it), a name in ``contextVariables`` or ``clientVariables``, the
    ``emailId``, the ``userId`` when it is not the conversation id (a verified user id); else ``Conversation <id>``
    with the Rasa sender id. Connect carries nothing about the user (every chat is the integration user's), so it is
    ``Conversation <chat number>``.
    """
    if isinstance(session, ConnectSession):
        return {"user_label": f"Conversation {session.number}", "user_named": False, "conversation_id": session.number}
    user_id = session.key[1]
    variables = session.client_variables if isinstance(session.client_variables, dict) else {}
    sender = variables.get(SENDER_VARIABLE)
    conversation_id = sender if isinstance(sender, str) and sender else user_id
    name = _history_name(session.history) or _variable_name(session.context_variables) or _variable_name(variables)
    if name is None:
        name = _latest(session, "emailId")
    if name is None and user_id != conversation_id:
        name = user_id
    if name is not None:
        return {"user_label": name, "user_named": True, "conversation_id": conversation_id}
    short = conversation_id if len(conversation_id) <= SHORT_ID + 4 else conversation_id[:SHORT_ID] + "…"
    return {"user_label": f"Conversation {short}", "user_named": False, "conversation_id": conversation_id}


def _history_name(history: List[Any]) -> Optional[str]:
    for entry in history:
        if isinstance(entry, dict) and not entry.get("isBotMessage"):
            name = entry.get("displayName")
            if isinstance(name, str) and name.strip().lower() not in PLACEHOLDER_NAMES:
                return name.strip()
    return None


def _variable_name(variables: Any) -> Optional[str]:
    if not isinstance(variables, dict):
        return None
    for key in NAME_VARIABLES:
        value = variables.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _latest(session: VaSession, key: str) -> Optional[str]:
    for request in reversed(session.requests):
        value = request.get("body", {}).get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _chat(state: EmulatorState, session: AnySession, shared: Dict[str, int]) -> Dict[str, Any]:
    summary = control.summary(state, session)
    if isinstance(session, VaSession):
        requester = session.user.user_name
        chat_id = session.uid
        ref = session.interaction_id if shared.get(session.client_session_id, 0) > 1 else session.client_session_id
        status = {VaState.QUEUED: "waiting", VaState.LIVE: "live"}.get(session.state, "closed")
        started: int = session.queued_ms if session.queued_ms is not None else session.created_ms
        changed = started
        requester_name = session.user.name
    else:
        requester = session.requester.user_name
        chat_id = ref = session.group
        status = {QueueEntryState.WAITING: "waiting", QueueEntryState.WORK_IN_PROGRESS: "live"}.get(
            session.state, "closed"
        )
        started = session.created_ms
        changed = session.updated_ms
        requester_name = session.requester.name
    ordered = sorted(session.messages, key=lambda m: (m.timestamp, m.seq))
    last: Optional[Message] = ordered[-1] if ordered else None
    last_message = None
    if last is not None:
        changed = max(changed, last.timestamp)
        last_message = {
            "author": author_kind(last, requester),
            "text": last.text,
            "sender_name": last.author.name if last.author else "system",
            "timestamp": last.timestamp,
        }
    return {
        **summary,
        "id": chat_id,
        "ref": ref,
        "status": status,
        "requester_name": requester_name,
        **user_of(session),
        "started_ms": started,
        "updated_ms": changed,
        "last_message": last_message,
        "user_messages": sum(1 for m in ordered if author_kind(m, requester) == "user"),
    }
