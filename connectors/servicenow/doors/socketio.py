"""The socket.io front door: ``connectors.servicenow.ServiceNowSocketIOInput``,
for frontends that speak Rasa's socketio protocol (botfront's rasa-webchat
and the like), with the same handoff as the webhook door: it composes the
same core (core/), and serves the same HTTP routes (routes.py).

``credentials.yml``::

    connectors.servicenow.ServiceNowSocketIOInput:
      user_message_evt: user_uttered
      bot_message_evt: bot_uttered
      session_persistence: true
      # ...and every option of connectors.servicenow.ServiceNowInput

The socket.io server is at ``socketio_path`` (``/socket.io``), as with
Rasa's ``socketio`` channel; the HTTP routes of the webhook door (health,
``/callback`` for Virtual Agent, ``/metrics``...) are served under
``/webhooks/servicenow_socketio/``. Events, payload shapes and replay:
docs/socketio.md.
"""

import asyncio
import logging
import uuid
from typing import Any, Dict, Mapping, Optional, Set, Tuple

from sanic import Blueprint, Sanic
from socketio import AsyncRedisManager
from socketio.exceptions import ConnectionRefusedError

from connectors.servicenow.config import SOCKETIO_DEFAULTS, ServiceNowSettings, SocketIOSettings
from connectors.servicenow.core.core import SHUTDOWN_TIMEOUT_S, Core
from connectors.servicenow.doors.http import RETRY_AFTER_S, client_address, stream_limit_error
from connectors.servicenow.doors.routes import STREAM_RETRY_AFTER_S, HTTPRoutes
from connectors.servicenow.doors.socket_server import REFUSED_AUTH, REFUSED_INPUT_EVT, SocketServer, refused_input
from connectors.servicenow.doors.shapes import AGENT_TYPING_EVT, HANDOFF_STATUS_EVT, socketio_events, socketio_messages
from connectors.servicenow.errors import ConversationBusy, StoreUnavailable
from connectors.servicenow.identity import Claims, Unauthenticated, verify_token
from connectors.servicenow.logsafe import escape_log_arguments, redact_access_log_tokens
from connectors.servicenow.ops.logs import use_json_logs
from connectors.servicenow.outbox.base import OutboundItem, StreamLimitReached
from connectors.servicenow.outbox.capacity import SOCKETIO, Slot
from connectors.servicenow.outbox.sinks.socketio import SessionReader
from connectors.servicenow.payloads import MAX_BODY_BYTES, PayloadError, decode_json_text, is_valid_sender, parse_user_message
from connectors.servicenow.rasa_glue.channels import InputChannel, OutputChannel, SocketBlueprint
from connectors.servicenow.rasa_glue.output import OnNewMessage
from connectors.servicenow.rasa_glue.versions import expand_deferred_variables
from connectors.servicenow.rasa_glue.workers import check_workers
from connectors.servicenow.store import Store
from connectors.servicenow.store.keys import SOCKETIO_MANAGER

logger = logging.getLogger(__name__)

__all__ = ["AGENT_TYPING_EVT", "ERROR_EVT", "HANDOFF_STATUS_EVT", "ServiceNowSocketIOInput", "USER_TYPING_EVT"]

#: Input refused or not handled (``{"reason", "message", "retry_after"?}``), to the socket that sent it.
ERROR_EVT = "servicenow_error"
#: From the client: the user's typing state (``{"session_id"?, "typing": true|false}``).
USER_TYPING_EVT = "servicenow_user_typing"


class ServiceNowSocketIOInput(InputChannel):
    """Rasa's socketio protocol in front of the ServiceNow handoff."""

    @classmethod
    def name(cls) -> str:
        return "servicenow_socketio"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[str, Any]]) -> InputChannel:
        if not credentials:
            cls.raise_missing_credentials_exception()
        credentials = expand_deferred_variables(credentials or {})
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
        escape_log_arguments("connectors.servicenow")
        # A stream's JWT may ride in its query string; the access log must not keep it.
        redact_access_log_tokens()
        self.settings = settings
        self.socket = socket or SocketIOSettings()
        self.core = Core(settings, store) if store is not None else Core.for_door(settings, self.name())
        self.routes = HTTPRoutes(self.core, self.name())
        self.sio = self._server()
        #: This replica's sockets: sid -> session, session -> sids.
        self._session_of: Dict[str, str] = {}
        self._sids_of: Dict[str, Set[str]] = {}
        self._claims: Dict[str, Claims] = {}
        self._readers: Dict[str, Tuple[SessionReader, "asyncio.Task[None]"]] = {}
        #: Each socket's slot among the deployment's open streams and sockets.
        self._slots: Dict[str, Slot] = {}

    def _server(self) -> SocketServer:
        manager = None
        if self.settings.redis_url:
            # Emits to a session's room reach its sockets on every replica.
            manager = AsyncRedisManager(self.settings.redis_url, channel=f"{self.settings.redis_prefix}{SOCKETIO_MANAGER}")
        # cors_allowed_origins=[]: as Rasa's channel, no Origin check here (python-socketio#205).
        return SocketServer(async_mode="sanic", cors_allowed_origins=[], client_manager=manager)

    def bind(self, app: Any) -> None:
        self.core.bind(app)

    def get_output_channel(self) -> OutputChannel:
        """Messages Rasa produces outside a user's turn go through the outbox,
        so the replica holding the socket emits them and a reload replays them."""
        return self.core.out_of_band_output()

    def blueprint(self, on_new_message: OnNewMessage) -> Blueprint:
        blueprint = SocketBlueprint(self.sio, self.socket.socketio_path, f"{self.name()}_webhook", __name__)
        self.routes.add(blueprint, on_new_message)
        sio, namespace = self.sio, self.socket.namespace

        @blueprint.listener("before_server_stop")
        async def stop_sockets(_app: Sanic, _loop: Any) -> None:
            for _reader, task in list(self._readers.values()):
                task.cancel()
            # python-socketio's own advice: stop its background tasks (pings) before the web server.
            await sio.close(SHUTDOWN_TIMEOUT_S)

        sio.on("connect", namespace=namespace)(self._connect)
        sio.on("disconnect", namespace=namespace)(self._disconnect)
        sio.on("session_request", namespace=namespace)(self._session_request)
        sio.on(USER_TYPING_EVT, namespace=namespace)(self._user_typing)
        sio.on(REFUSED_INPUT_EVT, namespace=namespace)(self._refused_input)

        @sio.on(self.socket.user_message_evt, namespace=namespace)
        async def handle_message(sid: str, data: Any = None) -> None:
            await self._handle_message(sid, data, on_new_message)

        return blueprint

    # -- socket events -----------------------------------------------------------

    async def _connect(self, sid: str, environ: Dict[str, Any], auth: Optional[Dict[str, Any]] = None) -> bool:
        if isinstance(auth, dict) and REFUSED_AUTH in auth:
            refusal = auth[REFUSED_AUTH]
            logger.info("Refused a socket.io connection: its auth data failed the checks (%s).", refusal["reason"])
            raise ConnectionRefusedError(refusal["message"], refusal)
        claims = None
        if self.settings.jwt_key:
            claims = self._verify(auth)
            if claims is None:
                return False  # python-socketio refuses the connection (connect_error)
        # A socket is counted for the deployment before it is accepted: one
        # client cannot use up the sockets, sessions and readers of all.
        sender = str(claims["sub"]) if claims is not None and self.socket.session_persistence else None
        self._slots[sid] = await self._slot(environ, sender)
        if claims is not None:
            self._claims[sid] = claims
        if not self.socket.session_persistence:
            # The socket is the conversation: its own room, its own outbox.
            await self._join(sid, sid)
        return True

    async def _slot(self, environ: Dict[str, Any], sender: Optional[str]) -> Slot:
        """This socket's slot, or ``ConnectionRefusedError`` with the reason the client receives."""
        request = environ.get("sanic.request")
        client = client_address(request) if request is not None else str(environ.get("REMOTE_ADDR", "unknown"))
        try:
            return await self.core.outbox.capacity.open_slot(SOCKETIO, client=client, sender=sender)
        except StreamLimitReached as limit:
            refusal = stream_limit_error(limit, STREAM_RETRY_AFTER_S)
        except StoreUnavailable:
            refusal = PayloadError(503, "StoreUnavailable", "The server cannot count connections now; try again shortly.",
                                   retry_after=RETRY_AFTER_S)
        logger.info("Refused a socket.io connection from %s: %s", client, refusal.message)
        self.core.observe.input_rejected("/socketio", refusal.reason)
        body = {"reason": refusal.reason, "message": refusal.message, "retry_after": refusal.retry_after}
        raise ConnectionRefusedError(refusal.message, body)

    async def _disconnect(self, sid: str, *_: Any) -> None:
        self._claims.pop(sid, None)
        self._leave(sid)
        slot = self._slots.pop(sid, None)
        if slot is not None:
            self.core.outbox.capacity.close(slot)

    async def _session_request(self, sid: str, data: Any = None) -> None:
        session_id = await self._session_for(sid, data)
        if session_id is None:
            return
        namespace = self.socket.namespace
        slot = self._slots.get(sid)
        if slot is not None and self.socket.session_persistence:
            try:
                await self.core.outbox.capacity.join(slot, session_id)
            except (StreamLimitReached, StoreUnavailable) as error:
                refusal = (
                    stream_limit_error(error, STREAM_RETRY_AFTER_S) if isinstance(error, StreamLimitReached)
                    else PayloadError(503, "StoreUnavailable", "The session could not be joined; try again shortly.")
                )
                await self._refuse(sid, refusal)
                await self.sio.disconnect(sid, namespace=namespace)
                return
        await self.sio.emit("session_confirm", session_id, room=sid, namespace=namespace)
        if self.socket.session_persistence:
            # After the confirm: rasa-webchat clears its history when the
            # confirmed id is new, and the replay must come after that.
            await self.sio.enter_room(sid, session_id, namespace=namespace)
            await self._join(sid, session_id)

    async def _refused_input(self, sid: str, data: Any = None) -> None:
        """A packet that failed the webhook's checks (socket_server.ScreenedPacket)."""
        await self._refuse(sid, refused_input(data) or PayloadError(400, "InvalidMessage", "The message was refused."))

    async def _user_typing(self, sid: str, data: Any = None) -> None:
        sender = self._sender_of(sid, data if isinstance(data, dict) else {})
        if sender is None or not isinstance(data, dict) or not isinstance(data.get("typing"), bool):
            await self._refuse(sid, PayloadError(400, "InvalidTyping", "Send {\"session_id\", \"typing\": true|false}."))
            return
        try:
            await self.core.router.user_typing(sender, data["typing"])
        except StoreUnavailable:
            return  # a typing state is not worth an error; the next one may pass

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
            self._start_reader(session_id)

    def _start_reader(self, session_id: str) -> None:
        # Every session with a socket here has a reader: its socket holds the slot.
        reader = self.core.outbox.reader(session_id, lambda item: self._emit_item(session_id, item))
        task = asyncio.ensure_future(reader.run())
        self._readers[session_id] = (reader, task)
        task.add_done_callback(lambda done: self._reader_done(session_id, done))

    def _reader_done(self, session_id: str, task: "asyncio.Task[None]") -> None:
        current = self._readers.get(session_id)
        if current is None or current[1] is not task:
            return
        del self._readers[session_id]
        if not task.cancelled() and task.exception() is not None:
            logger.error("The socket.io reader of session %s failed: %r", session_id, task.exception())
        if not task.cancelled() and self._sids_of.get(session_id):
            # A socket of the session joined while the reader was stopping
            # (it found no socket a moment before): what comes must not wait
            # for the next reload.
            self._start_reader(session_id)

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
                data = {**data, self.socket.metadata_key: decode_json_text(metadata, max_bytes=MAX_BODY_BYTES)}
            except PayloadError as error:
                await self._refuse(
                    sid, PayloadError(400, "InvalidMetadata", f"'{self.socket.metadata_key}': {error.message}")
                )
                return
        try:
            payload = parse_user_message(
                sender, data, max_message_length=self.settings.max_message_length, metadata_key=self.socket.metadata_key
            )
        except PayloadError as error:
            await self._refuse(sid, error)
            return
        agent = self.core.agent()
        if agent is None or not agent.is_ready():
            await self._refuse(sid, PayloadError(503, "AgentNotReady", "The assistant is not loaded yet; try again shortly."))
            return
        try:
            # A task of its own: a disconnect must not cut a handoff's start or end in half.
            replies = await self.core.work.run_to_end(self.routes.handle(payload, on_new_message, self._claims.get(sid)))
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
        body: Dict[str, Any] = {"reason": error.reason, "message": error.message}
        if error.retry_after is not None:
            body["retry_after"] = error.retry_after
        elif error.status == 503:
            body["retry_after"] = RETRY_AFTER_S
        # Counted under the route label ``socketio``.
        self.core.observe.input_rejected("/socketio", error.reason)
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
        if not self._sids_of.get(session_id):
            return False
        for event, data in socketio_events(item, self.socket.bot_message_evt):
            # ignore_queue: this replica's sockets only; another replica's
            # reader serves its own (each session's items are emitted once per socket).
            await self.sio.emit(event, data, room=session_id, namespace=self.socket.namespace, ignore_queue=True)
        return True


