"""The socket.io front door: ``connectors.servicenow.ServiceNowSocketIOInput``,
for frontends that speak Rasa's socketio protocol (botfront's rasa-webchat
and the like), with the same handoff as the webhook flavour (one core,
``frontdoor.FrontDoor``).

``credentials.yml``::

    connectors.servicenow.ServiceNowSocketIOInput:
      user_message_evt: user_uttered
      bot_message_evt: bot_uttered
      session_persistence: true
      # ...and every option of connectors.servicenow.ServiceNowInput

The socket.io server is at ``socketio_path`` (``/socket.io``), as with
Rasa's ``socketio`` channel; the HTTP routes of the webhook flavour (health,
``/callback`` for Virtual Agent, ``/metrics``...) are served under
``/webhooks/servicenow_socketio/``. Events, payload shapes and replay:
docs/socketio.md.
"""

import asyncio
import json
import logging
import uuid
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from rasa.core.channels.channel import InputChannel, OutputChannel
from rasa.core.channels.socketio import SocketBlueprint
from sanic import Blueprint, Sanic
from socketio import AsyncRedisManager

from connectors.servicenow.channel import SHUTDOWN_TIMEOUT_S, OutOfBandOutput, ServiceNowInput
from connectors.servicenow.config import SOCKETIO_DEFAULTS, ServiceNowSettings, SocketIOSettings
from connectors.servicenow.delivery import HANDOFF_EVENT, TYPING_EVENT, OutboundItem
from connectors.servicenow.errors import ConversationBusy, StoreUnavailable
from connectors.servicenow.frontdoor import OnNewMessage
from connectors.servicenow.identity import Claims, Unauthenticated, verify_token
from connectors.servicenow.logs import use_json_logs
from connectors.servicenow.markdown import escape_text, web_url
from connectors.servicenow.payloads import PayloadError, is_valid_sender, parse_user_message
from connectors.servicenow.rasa_glue.workers import check_workers
from connectors.servicenow.socket_server import SocketServer
from connectors.servicenow.socket_sink import SessionPointers, SessionReader
from connectors.servicenow.store import Store

logger = logging.getLogger(__name__)

#: Handoff status (``{"active", "chat_id", "api", "agent_joined", "agent_name"?}``).
HANDOFF_STATUS_EVT = "servicenow_handoff"
#: The agent's typing state (``{"typing": true|false}``).
AGENT_TYPING_EVT = "servicenow_typing"
#: Input refused or not handled (``{"reason", "message", "retry_after"?}``), to the socket that sent it.
ERROR_EVT = "servicenow_error"
#: From the client: the user's typing state (``{"session_id"?, "typing": true|false}``).
USER_TYPING_EVT = "servicenow_user_typing"
RETRY_AFTER_S = 2
VIDEO_SUFFIXES = (".mp4", ".webm", ".ogg", ".mov")
VIDEO_HOSTS = ("youtube.com/", "youtu.be/", "vimeo.com/")
# Whose text may not carry Markdown links: what agents and ServiceNow wrote.
UNTRUSTED_SOURCES = ("agent", "system")


class ServiceNowSocketIOInput(ServiceNowInput):
    """Rasa's socketio protocol in front of the ServiceNow handoff."""

    @classmethod
    def name(cls) -> str:
        return "servicenow_socketio"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[str, Any]]) -> InputChannel:
        if not credentials:
            cls.raise_missing_credentials_exception()
        socket = SocketIOSettings.from_credentials(credentials)
        settings = ServiceNowSettings.from_credentials(
            {key: value for key, value in credentials.items() if key not in SOCKETIO_DEFAULTS}
        )
        check_workers(settings.redis_url)
        if settings.log_format == "json":
            use_json_logs()
        return cls(settings, socket)

    def __init__(
        self, settings: ServiceNowSettings, socket: Optional[SocketIOSettings] = None, store: Optional[Store] = None
    ) -> None:
        super().__init__(settings, store)
        self.socket = socket or SocketIOSettings()
        self.sio: Optional[SocketServer] = None
        self.pointers = SessionPointers()
        #: This replica's sockets: sid -> session, session -> sids.
        self._session_of: Dict[str, str] = {}
        self._sids_of: Dict[str, Set[str]] = {}
        self._claims: Dict[str, Claims] = {}
        self._readers: Dict[str, Tuple[SessionReader, "asyncio.Task[None]"]] = {}

    # -- the server ----------------------------------------------------------

    def _server(self) -> SocketServer:
        manager = None
        if self.settings.redis_url:
            # Emits to a session's room reach its sockets on every replica.
            manager = AsyncRedisManager(self.settings.redis_url, channel=f"{self.settings.redis_prefix}socketio")
        # cors_allowed_origins=[]: as Rasa's channel, no Origin check here (python-socketio#205).
        return SocketServer(async_mode="sanic", cors_allowed_origins=[], client_manager=manager)

    def new_blueprint(self, name: str) -> Blueprint:
        assert self.sio is not None
        return SocketBlueprint(self.sio, self.socket.socketio_path, name, __name__)

    def get_output_channel(self) -> OutputChannel:
        """Messages Rasa produces outside a user's turn go through the outbox,
        so the replica holding the socket emits them and a reload replays them."""
        return OutOfBandOutput(self)

    def blueprint(self, on_new_message: OnNewMessage) -> Blueprint:
        self.sio = sio = self._server()
        blueprint = super().blueprint(on_new_message)
        namespace = self.socket.namespace

        @blueprint.listener("before_server_stop")
        async def stop_sockets(_app: Sanic, _loop: Any) -> None:
            for _reader, task in list(self._readers.values()):
                task.cancel()
            # python-socketio's own advice: stop its background tasks (pings) before the web server.
            await sio.close(SHUTDOWN_TIMEOUT_S)

        @sio.on("connect", namespace=namespace)
        async def connect(sid: str, _environ: Dict, auth: Optional[Dict] = None) -> bool:
            if self.settings.jwt_key:
                claims = self._verify(auth)
                if claims is None:
                    return False  # python-socketio refuses the connection (connect_error)
                self._claims[sid] = claims
            if not self.socket.session_persistence:
                # The socket is the conversation: its own room, its own outbox.
                await self._join(sid, sid)
            return True

        @sio.on("disconnect", namespace=namespace)
        async def disconnect(sid: str, *_: Any) -> None:
            self._claims.pop(sid, None)
            self._leave(sid)

        @sio.on("session_request", namespace=namespace)
        async def session_request(sid: str, data: Any = None) -> None:
            session_id = await self._session_for(sid, data)
            if session_id is None:
                return
            await sio.emit("session_confirm", session_id, room=sid, namespace=namespace)
            if self.socket.session_persistence:
                # After the confirm: rasa-webchat clears its history when the
                # confirmed id is new, and the replay must come after that.
                await sio.enter_room(sid, session_id, namespace=namespace)
                await self._join(sid, session_id)

        @sio.on(self.socket.user_message_evt, namespace=namespace)
        async def handle_message(sid: str, data: Any = None) -> None:
            await self._handle_message(sid, data, on_new_message)

        @sio.on(USER_TYPING_EVT, namespace=namespace)
        async def user_typing(sid: str, data: Any = None) -> None:
            sender = self._sender_of(sid, data if isinstance(data, dict) else {})
            if sender is None or not isinstance(data, dict) or not isinstance(data.get("typing"), bool):
                await self._refuse(sid, PayloadError(400, "InvalidTyping", "Send {\"session_id\", \"typing\": true|false}."))
                return
            if self.store.shared:
                try:
                    await self.handoffs.refresh(sender)
                except StoreUnavailable:
                    return  # a typing state is not worth an error; the next one may pass
            self.handoffs.user_typing(sender, data["typing"])

        return blueprint

    # -- authentication and sessions -------------------------------------------

    def _verify(self, auth: Any) -> Optional[Claims]:
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str):
            logger.info("Refused a socket.io connection without a token (jwt_key is set).")
            return None
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()  # Rasa's decode_jwt takes either
        try:
            assert self.settings.jwt_key is not None
            return verify_token(token, self.settings.jwt_key, self.settings.jwt_method, max_lifetime_s=self.settings.jwt_max_lifetime)
        except Unauthenticated as problem:
            logger.info("Refused a socket.io connection: %s", problem)
            return None

    async def _session_for(self, sid: str, data: Any) -> Optional[str]:
        """The session id to confirm: the token's subject with ``jwt_key``
        (a token speaks for one conversation), else the id asked for, else a new one."""
        requested = data.get("session_id") if isinstance(data, dict) else None
        claims = self._claims.get(sid)
        if claims is not None and self.socket.session_persistence:
            return str(claims["sub"])
        if requested is None or requested == "":
            return uuid.uuid4().hex
        if not is_valid_sender(requested):
            await self._refuse(
                sid, PayloadError(400, "InvalidSession", "'session_id' must be a non-empty string of at most 255 characters.")
            )
            return None
        return str(requested)

    def _sender_of(self, sid: str, data: Mapping[str, Any]) -> Optional[str]:
        """The conversation a socket speaks for: its confirmed session (the
        event's ``session_id`` must be it), or the socket itself without
        ``session_persistence``."""
        if not self.socket.session_persistence:
            return sid
        session_id = self._session_of.get(sid)
        if session_id is None or data.get("session_id") != session_id:
            return None
        return session_id

    async def _join(self, sid: str, session_id: str) -> None:
        previous = self._session_of.get(sid)
        if previous is not None and previous != session_id:
            # A second session_request for another session: the socket speaks for the new one only.
            self._leave(sid)
            if self.sio is not None and self.socket.session_persistence:
                await self.sio.leave_room(sid, previous, namespace=self.socket.namespace)
        self._session_of[sid] = session_id
        self._sids_of.setdefault(session_id, set()).add(sid)
        if session_id not in self._readers:
            reader = SessionReader(self.outbox, session_id, lambda item: self._emit_item(session_id, item), self.pointers)
            task = self.spawn(reader.run())
            self._readers[session_id] = (reader, task)
            task.add_done_callback(lambda done: self._reader_done(session_id, done))

    def _reader_done(self, session_id: str, task: "asyncio.Task[None]") -> None:
        current = self._readers.get(session_id)
        if current is not None and current[1] is task:
            del self._readers[session_id]
        if not task.cancelled() and task.exception() is not None:
            logger.error("The socket.io reader of session %s failed: %r", session_id, task.exception())

    def _leave(self, sid: str) -> None:
        session_id = self._session_of.pop(sid, None)
        if session_id is None:
            return
        sids = self._sids_of.get(session_id)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._sids_of[session_id]
                reader = self._readers.pop(session_id, None)
                if reader is not None:
                    reader[1].cancel()

    def reader(self, session_id: str) -> Optional[SessionReader]:
        """This replica's outbox reader of a session, if a socket of it is connected here."""
        entry = self._readers.get(session_id)
        return entry[0] if entry is not None else None

    # -- messages --------------------------------------------------------------

    async def _handle_message(self, sid: str, data: Any, on_new_message: OnNewMessage) -> None:
        if not isinstance(data, dict):
            await self._refuse(sid, PayloadError(400, "InvalidMessage", "Send {\"message\", \"session_id\"}."))
            return
        sender = self._sender_of(sid, data)
        if sender is None:
            await self._refuse(
                sid,
                PayloadError(
                    400, "NoSession", "Send 'session_request' first and give the confirmed 'session_id' with each message."
                ),
            )
            return
        metadata = data.get(self.socket.metadata_key)
        if isinstance(metadata, str):
            # Rasa's channel accepts metadata as a JSON string too.
            try:
                data = {**data, self.socket.metadata_key: json.loads(metadata)}
            except ValueError:
                await self._refuse(
                    sid, PayloadError(400, "InvalidMetadata", f"'{self.socket.metadata_key}' is not valid JSON.")
                )
                return
        try:
            payload = parse_user_message(
                sender, data, max_message_length=self.settings.max_message_length, metadata_key=self.socket.metadata_key
            )
        except PayloadError as error:
            await self._refuse(sid, error)
            return
        agent = self._agent()
        if agent is None or not agent.is_ready():
            await self._refuse(sid, PayloadError(503, "AgentNotReady", "The assistant is not loaded yet; try again shortly."))
            return
        try:
            # A task of its own: a disconnect must not cut a handoff's start or end in half.
            replies = await asyncio.shield(self.spawn(self.front.handle(payload, on_new_message, self._claims.get(sid))))
        except (StoreUnavailable, ConversationBusy) as error:
            logger.warning("Could not handle a socket.io message of conversation %s: %s", sender, error)
            reason = "ConversationBusy" if isinstance(error, ConversationBusy) else "StoreUnavailable"
            await self._refuse(
                sid, PayloadError(503, reason, "The message was not handled; send it again shortly."), notice=True
            )
            return
        room = sender if self.socket.session_persistence else sid
        for reply in replies:
            for message in socketio_messages(reply):
                await self.sio.emit(self.socket.bot_message_evt, message, room=room, namespace=self.socket.namespace)

    async def _refuse(self, sid: str, error: PayloadError, *, notice: bool = False) -> None:
        """Tell the socket its input was not handled: ``servicenow_error``
        for the frontend's code, and with ``notice`` a text the user reads."""
        assert self.sio is not None
        body: Dict[str, Any] = {"reason": error.reason, "message": error.message}
        if error.status == 503:
            body["retry_after"] = RETRY_AFTER_S
        # Counted under the route label ``socketio``.
        self.observe.input_rejected("/socketio", error.reason)
        await self.sio.emit(ERROR_EVT, body, room=sid, namespace=self.socket.namespace)
        if notice:
            await self.sio.emit(
                self.socket.bot_message_evt,
                {"text": self.settings.texts.message_not_handled},
                room=sid,
                namespace=self.socket.namespace,
            )

    async def _emit_item(self, session_id: str, item: OutboundItem) -> bool:
        """Emit an outbox item to this replica's sockets of the session; False
        when none is connected here (the item stays for the next one)."""
        assert self.sio is not None
        if not self._sids_of.get(session_id):
            return False
        for event, data in socketio_events(item, self.socket.bot_message_evt):
            # ignore_queue: this replica's sockets only; another replica's
            # reader serves its own (each session's items are emitted once per socket).
            await self.sio.emit(event, data, room=session_id, namespace=self.socket.namespace, ignore_queue=True)
        return True


# -- shapes ------------------------------------------------------------------


def socketio_events(item: OutboundItem, bot_message_evt: str) -> List[Tuple[str, Dict[str, Any]]]:
    """What an outbox item is on the socket: messages as ``bot_message_evt``,
    typing and handoff status as events of their own."""
    if item.kind == TYPING_EVENT:
        return [(AGENT_TYPING_EVT, {"typing": bool(item.payload.get("typing"))})]
    if item.kind == HANDOFF_EVENT:
        status = item.payload.get("handoff")
        return [(HANDOFF_STATUS_EVT, dict(status) if isinstance(status, Mapping) else {})]
    return [(bot_message_evt, message) for message in socketio_messages(item.payload)]


def socketio_messages(message: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """A Rasa bot message (``text``, ``buttons``, ``image``, ``attachment``,
    ``custom``) in the shapes Rasa's ``SocketIOOutput`` emits and
    rasa-webchat renders: each ``\\n\\n``-separated part of the text on its
    own, quick replies on the last part, images and videos as attachments,
    links as Markdown text.

    rasa-webchat renders text as Markdown and keeps any link scheme
    (``transformLinkUri: null``), so whatever the bot's author did not write
    (agents, ServiceNow, values ServiceNow filled into the channel's texts) is
    escaped, and every link is built from a validated URL (``markdown.py``)."""
    written = message.get("text")
    written = written.strip() if isinstance(written, str) else ""
    metadata = message.get("metadata")
    from_servicenow = isinstance(metadata, Mapping) and metadata.get("source") in UNTRUSTED_SOURCES
    text = written if markdown_allowed(message) else escape_text(written)
    attachment = message.get("attachment")
    link_url: Optional[str] = None
    if isinstance(attachment, str) and attachment:
        link_url = web_url(attachment)
        if link_url is None and not text:
            text = escape_text(attachment.strip())
    out: List[Dict[str, Any]] = []
    if link_url is not None and not is_video(link_url):
        # A link: its label as Markdown (rasa-webchat renders it as a link).
        text = f"[{text}]({link_url})" if text and written != attachment else link_url
    buttons = message.get("buttons")
    parts = [part for part in text.split("\n\n") if part.strip()] if text else []
    if isinstance(buttons, list) and buttons:
        parts = parts or [text]
        out.extend({"text": part} for part in parts[:-1])
        out.append({"text": parts[-1], "quick_replies": [quick_reply(button) for button in buttons if isinstance(button, dict)]})
    else:
        out.extend({"text": part} for part in parts)
    image = message.get("image")
    if isinstance(image, str) and image:
        source = web_url(image) if from_servicenow else image
        if source is not None:
            out.append({"attachment": {"type": "image", "payload": {"src": source}}})
    if link_url is not None and is_video(link_url):
        # rasa-webchat plays a video in an iframe: only a validated web URL reaches it.
        out.append({"attachment": {"type": "video", "payload": {"src": link_url}}})
    elif isinstance(attachment, dict) and not from_servicenow:
        out.append({"attachment": attachment})
    custom = message.get("custom")
    # A bot's custom payload goes out as Rasa's channel sends it (its ``data``);
    # ServiceNow's rich items (HTML, cards) only when their text said nothing.
    if isinstance(custom, dict) and (not from_servicenow or not out):
        out.append(custom["data"] if "data" in custom else custom)
    return out


def markdown_allowed(message: Mapping[str, Any]) -> bool:
    """Whether the message's text is the bot author's Markdown: not for what
    agents and ServiceNow wrote, nor for a channel text that a value from
    outside filled in (``metadata.markdown`` false, set by ``speech``)."""
    metadata = message.get("metadata")
    if not isinstance(metadata, Mapping):
        return True
    return metadata.get("source") not in UNTRUSTED_SOURCES and metadata.get("markdown") is not False


def quick_reply(button: Mapping[str, Any]) -> Dict[str, Any]:
    title = button.get("title")
    payload = button.get("payload", title)
    return {"content_type": "text", "title": title, "payload": payload}


def is_video(url: str) -> bool:
    lowered = url.lower().split("?", 1)[0]
    return lowered.endswith(VIDEO_SUFFIXES) or any(host in lowered for host in VIDEO_HOSTS)
