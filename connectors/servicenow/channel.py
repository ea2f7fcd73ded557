"""The Rasa glue: the input/output channel that ``credentials.yml`` loads as
``connectors.servicenow.ServiceNowInput``.

Routes, under ``/webhooks/servicenow/``:

``GET  /``         health check.
``POST /webhook``  a user message, ``{"sender", "message", "metadata"?}``; the
                   answer is the list of messages for this turn, as Rasa's REST
                   channel answers.
``GET  /stream``   ``?sender=<id>``: Server-Sent Events with everything said to
                   the user outside a request (agent replies, notices, typing).
``POST /typing``   ``{"sender", "typing": true|false}``: the user's typing
                   state, shown to the agent where the API can.
``POST /callback`` ServiceNow's Virtual Agent pushes (authenticated).
``GET  /chat``     a reference chat page for the end user (``chat_page: true``).

While a conversation is in handoff its messages never reach Rasa: the channel
posts them to ServiceNow and answers with an empty list. A bot response with
a custom payload ``{"handoff": {...}}`` starts the handoff; no action server
or policy is involved.
"""

import asyncio
import base64
import gc
import hmac
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional, Set

from rasa.core.agent import Agent
from rasa.core.channels.channel import CollectingOutputChannel, InputChannel, OutputChannel, UserMessage
from sanic import Blueprint, Sanic, response
from sanic.request import Request
from sanic.response import HTTPResponse

from connectors.servicenow.backends.base import Backend, HandoffRequest
from connectors.servicenow.backends.connect import ConnectBackend
from connectors.servicenow.backends.http import ServiceNowHTTP
from connectors.servicenow.backends.virtual_agent import CallbackError, VirtualAgentBackend
from connectors.servicenow.config import CONNECT_API, VIRTUAL_AGENT_API, ServiceNowSettings
from connectors.servicenow.delivery import Outbox
from connectors.servicenow.errors import ConfigurationError
from connectors.servicenow.handoff import HandoffManager
from connectors.servicenow.logs import use_json_logs
from connectors.servicenow.payloads import (
    PayloadError,
    UserPayload,
    parse_json_object,
    parse_typing_payload,
    parse_user_payload,
)

logger = logging.getLogger(__name__)

#: Key of the custom payload that starts a handoff, e.g. in ``domain.yml``:
#: ``custom: {handoff: {}}``. Optional entries: ``message`` (what the agent
#: sees first; defaults to the user's last message), ``queue_id`` (Connect)
#: and ``context_variables`` (Virtual Agent routing).
HANDOFF_PAYLOAD_KEY = "handoff"
RESTART_COMMAND = "/restart"
#: What the agent reads first when a handoff starts outside a webhook request
#: (Rasa's HTTP API) and the payload gives no ``message``.
OUT_OF_BAND_HANDOFF_TEXT = "The user asked for a live agent."
STREAM_HEARTBEAT_S = 15.0
CHAT_PAGE_DIR = Path(__file__).with_name("webchat")
CHAT_PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "webchat.css": "text/css; charset=utf-8",
    "webchat.js": "text/javascript; charset=utf-8",
}
HOUSEKEEPING_INTERVAL_S = 300.0
SHUTDOWN_TIMEOUT_S = 10.0

OnNewMessage = Callable[[UserMessage], Awaitable[Any]]


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from later
    collections; returns how many were frozen. They are the long-lived
    startup heap: the model, TensorFlow, imported modules."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("Froze %d startup objects out of the garbage collector's scans (freeze_gc_at_start).", frozen)
    return frozen


class ServiceNowInput(InputChannel):
    @classmethod
    def name(cls) -> str:
        return "servicenow"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[str, Any]]) -> InputChannel:
        if not credentials:
            cls.raise_missing_credentials_exception()
        settings = ServiceNowSettings.from_credentials(credentials)
        if settings.log_format == "json":
            use_json_logs()
        return cls(settings)

    def __init__(self, settings: ServiceNowSettings) -> None:
        self.settings = settings
        self.http = ServiceNowHTTP(settings)
        self.backend = build_backend(settings, self.http)
        self.outbox = Outbox(settings.callback_url, request_timeout=settings.request_timeout)
        self.handoffs = HandoffManager(settings, self.backend, self.outbox, agent=self._agent)
        self._app: Optional[Sanic] = None
        self._background: Set["asyncio.Task[Any]"] = set()

    def bind(self, app: Sanic) -> None:
        """Remember the app whose ``ctx.agent`` serves this channel."""
        self._app = app

    def _agent(self) -> Optional[Agent]:
        return getattr(self._app.ctx, "agent", None) if self._app is not None else None

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run work in the background, holding a reference until it is done."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def get_output_channel(self) -> OutputChannel:
        """Where Rasa sends messages it produces outside a webhook request
        (``output_channel=latest`` on its HTTP API, reminders)."""
        return OutOfBandOutput(self)

    def blueprint(self, on_new_message: OnNewMessage) -> Blueprint:
        blueprint = Blueprint("servicenow_webhook", __name__)

        @blueprint.listener("after_server_start")
        async def start_background_work(app: Sanic, _loop: Any) -> None:
            self.bind(app)
            missing = self.handoffs.slots.missing_slots()
            if missing:
                logger.error(
                    "domain.yml does not declare the slot(s) %s; the ServiceNow handoff cannot keep its state. "
                    "See the README for the slot definitions.",
                    ", ".join(missing),
                )
            if self.settings.freeze_gc_at_start:
                freeze_startup_heap()
            app.add_task(self._resume(), name="servicenow-resume")
            app.add_task(self._housekeeping(), name="servicenow-housekeeping")

        @blueprint.listener("before_server_stop")
        async def stop_background_work(app: Sanic, _loop: Any) -> None:
            await app.cancel_task("servicenow-housekeeping", raise_exception=False)
            # Callbacks already acknowledged to ServiceNow are delivered before
            # the relay saves its state and the outbox drains.
            if self._background:
                await asyncio.wait(list(self._background), timeout=SHUTDOWN_TIMEOUT_S)
            await self.handoffs.shutdown(SHUTDOWN_TIMEOUT_S)
            await self.http.aclose()
            await self.outbox.aclose()

        @blueprint.route("/", methods=["GET"])
        async def health(_: Request) -> HTTPResponse:
            return response.json({"status": "ok", "api": self.settings.api, "live_chats": len(self.handoffs.registry)})

        @blueprint.route("/webhook", methods=["POST"])
        async def receive(request: Request) -> HTTPResponse:
            self.bind(request.app)
            try:
                payload = parse_user_payload(request.body, max_message_length=self.settings.max_message_length)
            except PayloadError as error:
                return response.json(error.body(), status=error.status)
            agent = self._agent()
            if agent is None or not agent.is_ready():
                error = PayloadError(503, "AgentNotReady", "The assistant is not loaded yet; try again shortly.")
                return response.json(error.body(), status=503)
            return response.json(await self.handle(payload, on_new_message))

        if self.settings.chat_page:

            @blueprint.route("/chat", methods=["GET"])
            async def chat_page(_: Request) -> HTTPResponse:
                return await chat_asset("index.html")

            @blueprint.route("/chat/<name>", methods=["GET"])
            async def chat_page_asset(_: Request, name: str) -> HTTPResponse:
                return await chat_asset(name)

        @blueprint.route("/typing", methods=["POST"])
        async def typing(request: Request) -> HTTPResponse:
            try:
                payload = parse_typing_payload(request.body)
            except PayloadError as error:
                return response.json(error.body(), status=error.status)
            self.bind(request.app)
            self.spawn(self.handoffs.user_typing(payload.sender, payload.typing))
            return response.json({"status": "accepted"}, status=202)

        @blueprint.route("/callback", methods=["POST"])
        async def servicenow_callback(request: Request) -> HTTPResponse:
            if self.backend.pulls:
                error = PayloadError(404, "NotEnabled", "Callbacks are used with 'api: virtual_agent' only.")
                return response.json(error.body(), status=404)
            if not callback_authorized(self.settings, request.headers):
                error = PayloadError(401, "Unauthorized", "Missing or wrong callback credentials.")
                return response.json(error.body(), status=401)
            try:
                callback = self.backend.parse_callback(parse_json_object(request.body, '{"clientSessionId": "...", "body": []}'))
            except PayloadError as error:
                return response.json(error.body(), status=error.status)
            except CallbackError as error:
                return response.json(PayloadError(400, "InvalidCallback", str(error)).body(), status=400)
            self.bind(request.app)
            # Answer at once (ServiceNow waits 5 s at most); deliver afterwards.
            self.spawn(self.handoffs.receive_callback(callback))
            return response.json({"status": "success"})

        @blueprint.route("/stream", methods=["GET"])
        async def stream(request: Request) -> Optional[HTTPResponse]:
            sender = request.args.get("sender")
            if not sender:
                error = PayloadError(400, "InvalidSender", "Give the conversation as '?sender=<id>'.")
                return response.json(error.body(), status=400)
            last_event_id = request.headers.get("last-event-id") or request.args.get("last_event_id")
            subscription = self.outbox.subscribe(sender, last_event_id)
            try:
                stream_response = await request.respond(
                    content_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
                # Heartbeats keep proxies and Sanic's response timeout from
                # closing a stream that waits a long time for an agent.
                await stream_response.send("retry: 2000\n: connected\n\n")
                while True:
                    item = await subscription.next(STREAM_HEARTBEAT_S)
                    await stream_response.send(": keep-alive\n\n" if item is None else item.sse())
            finally:
                subscription.close()

        return blueprint

    async def handle(self, payload: UserPayload, on_new_message: OnNewMessage) -> list:
        """What the webhook does with a valid message; returns this turn's replies."""
        chat = await self.handoffs.active_chat(payload.sender)
        if chat is not None:
            command = payload.message.lower()
            if command == RESTART_COMMAND:
                replies = await self.handoffs.end_by_user(chat)
                return replies + (await self._run_turn(payload, on_new_message)).messages
            if command in self.settings.end_chat_commands:
                return await self.handoffs.end_by_user(chat)
            return await self.handoffs.forward(chat, payload.message)

        collector = await self._run_turn(payload, on_new_message)
        replies = list(collector.messages)
        if collector.handoff is not None:
            request = handoff_request(payload.sender, collector.handoff, payload.message, payload.metadata)
            replies += await self.handoffs.start(request, in_request=True)
        return replies

    async def _run_turn(self, payload: UserPayload, on_new_message: OnNewMessage) -> "TurnCollector":
        collector = TurnCollector()
        message = UserMessage(
            payload.message, collector, payload.sender, input_channel=self.name(), metadata=dict(payload.metadata) or None
        )
        try:
            await on_new_message(message)
        except asyncio.CancelledError:
            logger.error("Rasa did not answer conversation %s in time.", payload.sender)
        except Exception:
            logger.exception("Rasa failed to handle a message of conversation %s.", payload.sender)
        return collector

    async def _resume(self) -> None:
        agent = self._agent()
        if agent is None or not agent.is_ready():
            logger.warning("No model is loaded; live chats from before the restart are resumed on their next message.")
            return
        try:
            await self.handoffs.resume()
        except Exception:
            logger.exception("Could not resume live chats from the tracker store.")

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            self.outbox.prune()


async def chat_asset(name: str) -> HTTPResponse:
    """A file of the reference chat page; only the known ones, never a path."""
    content_type = CHAT_PAGE_FILES.get(name)
    if content_type is None:
        error = PayloadError(404, "NotFound", "No such file.")
        return response.json(error.body(), status=404)
    body = (CHAT_PAGE_DIR / name).read_bytes()
    return response.raw(body, content_type=content_type, headers={"Cache-Control": "no-cache"})


class _HandoffAwareOutput(CollectingOutputChannel):
    """Takes the handoff custom payload out of the bot's response; the user never sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.handoff: Optional[Dict[str, Any]] = None

    async def send_custom_json(self, recipient_id: str, json_message: Dict[str, Any], **kwargs: Any) -> None:
        if isinstance(json_message, dict) and HANDOFF_PAYLOAD_KEY in json_message:
            options = json_message[HANDOFF_PAYLOAD_KEY]
            self.handoff = options if isinstance(options, dict) else {}
            self.on_handoff(recipient_id, self.handoff)
            json_message = {key: value for key, value in json_message.items() if key != HANDOFF_PAYLOAD_KEY}
            if not json_message:
                return
        await super().send_custom_json(recipient_id, json_message, **kwargs)

    def on_handoff(self, recipient_id: str, options: Dict[str, Any]) -> None:
        """Hook for outputs that act on the request themselves."""


class TurnCollector(_HandoffAwareOutput):
    """Collects one webhook turn's replies; the channel starts the handoff
    after Rasa has released the conversation's lock."""

    @classmethod
    def name(cls) -> str:
        return "servicenow"


class OutOfBandOutput(_HandoffAwareOutput):
    """Sends through the outbox (callback and stream)."""

    def __init__(self, channel: ServiceNowInput) -> None:
        super().__init__()
        self._channel = channel

    @classmethod
    def name(cls) -> str:
        return "servicenow"

    async def _persist_message(self, message: Dict[str, Any]) -> None:
        self._channel.outbox.publish(message["recipient_id"], message)

    def on_handoff(self, recipient_id: str, options: Dict[str, Any]) -> None:
        # Rasa holds the conversation's lock while this runs; the start waits
        # for it in its own task.
        request = handoff_request(recipient_id, options, OUT_OF_BAND_HANDOFF_TEXT, {})
        self._channel.spawn(self._channel.handoffs.start(request, in_request=False))


def handoff_request(
    sender_id: str, options: Mapping[str, Any], user_text: str, metadata: Mapping[str, Any]
) -> HandoffRequest:
    message = options.get("message")
    queue_id = options.get("queue_id")
    context_variables = options.get("context_variables")
    return HandoffRequest(
        sender_id=sender_id,
        text=message if isinstance(message, str) and message.strip() else user_text,
        metadata=metadata,
        queue_id=queue_id if isinstance(queue_id, str) and queue_id else None,
        context_variables=context_variables if isinstance(context_variables, dict) else {},
    )


def callback_authorized(settings: ServiceNowSettings, headers: Mapping[str, str]) -> bool:
    """Shared secret in a header, or Basic credentials; compared in constant time."""
    if settings.webhook_secret:
        provided = headers.get(settings.webhook_secret_header, "")
        if hmac.compare_digest(provided.encode(), settings.webhook_secret.encode()):
            return True
    if settings.webhook_username and settings.webhook_password:
        scheme, _, encoded = headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            user_ok = hmac.compare_digest(username.encode(), settings.webhook_username.encode())
            password_ok = hmac.compare_digest(password.encode(), settings.webhook_password.encode())
            return user_ok and password_ok
    return False


def build_backend(settings: ServiceNowSettings, http: ServiceNowHTTP) -> Backend:
    if settings.api == CONNECT_API:
        return ConnectBackend(settings, http)
    if settings.api == VIRTUAL_AGENT_API:
        return VirtualAgentBackend(settings, http)
    raise ConfigurationError(f"No backend for 'api: {settings.api}'.")
