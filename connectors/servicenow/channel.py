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
``GET  /metrics``  Prometheus metrics (``metrics: true``; docs/metrics.md).

While a conversation is in handoff its messages never reach Rasa: the channel
posts them to ServiceNow and answers with an empty list. When the tracker
store cannot say whether it is, the webhook answers 503 (``Retry-After``)
rather than guess; a conversation's messages are handled one at a time, in
arrival order, and a handled message runs to the end even if the client
hangs up. A bot response with a custom payload ``{"handoff": {...}}`` starts
the handoff; no action server or policy is involved (a custom action's
``dispatcher.utter_message(json_message=...)`` arrives the same way). In a
turn Rasa runs outside a request, ``{"handoff": {"end": true}}`` ends it. When
a handoff ends the bot takes the hand-back turn (handback.py).
"""

import asyncio
import base64
import dataclasses
import hmac
import json
import logging
import threading
import uuid
import weakref
from pathlib import Path
from typing import Any, Awaitable, Dict, FrozenSet, Mapping, Optional, Set, Union

from rasa.core.agent import Agent
from rasa.core.channels.channel import InputChannel, OutputChannel
from sanic import Blueprint, Sanic, response
from sanic.exceptions import InvalidUsage, PayloadTooLarge, SanicException
from sanic.request import Request
from sanic.response import HTTPResponse

from connectors.servicenow import webchat
from connectors.servicenow.backends.base import Backend, Requester
from connectors.servicenow.backends.connect import ConnectBackend
from connectors.servicenow.backends.http import ServiceNowHTTP
from connectors.servicenow.backends.virtual_agent import CallbackError, VirtualAgentBackend
from connectors.servicenow.config import CONNECT_API, VIRTUAL_AGENT_API, ServiceNowSettings
from connectors.servicenow.delivery import PER_SENDER, Outbox, Outgoing, StreamLimitReached
from connectors.servicenow.errors import ConfigurationError, ConversationBusy, StoreUnavailable
from connectors.servicenow.frontdoor import (
    OUT_OF_BAND_HANDOFF_TEXT,
    FrontDoor,
    HandoffAwareOutput,
    OnNewMessage,
    TurnCollector,
    handoff_request,
)
from connectors.servicenow.handback import HandBackTurn
from connectors.servicenow.handoff import HandoffManager
from connectors.servicenow.identity import Claims, Unauthenticated, bearer_token, check_subject, verify_token
from connectors.servicenow.logsafe import escape_log_arguments, redact_access_log_tokens
from connectors.servicenow.logs import use_json_logs
from connectors.servicenow.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from connectors.servicenow.metrics import HandoffMetrics
from connectors.servicenow.observe import STREAM_SINK, Observer, callback_backlog
from connectors.servicenow.open_streams import OpenStreams
from connectors.servicenow.payloads import (
    MAX_BODY_BYTES,
    MAX_CALLBACK_BYTES,
    PayloadError,
    UserPayload,
    parse_json_object,
    parse_sender,
    parse_typing_payload,
    parse_user_payload,
)
from connectors.servicenow.rasa_glue.workers import check_workers
from connectors.servicenow.rasa_tuning import cache_event_class_lookup, freeze_startup_heap
from connectors.servicenow.shared_delivery import CALLBACK_LEASE_PREFIX, SharedOutbox
from connectors.servicenow.store import Store, open_store

logger = logging.getLogger(__name__)

STREAM_HEARTBEAT_S = 15.0
CHAT_PAGE_DIR = Path(__file__).with_name("webchat")
CHAT_PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "webchat.css": "text/css; charset=utf-8",
    "webchat.js": "text/javascript; charset=utf-8",
}
HOUSEKEEPING_INTERVAL_S = 300.0
#: Retry-After of a stream refused by a cap: EventSource's own reconnect delay is 2 s.
STREAM_RETRY_AFTER_S = 5
SHUTDOWN_TIMEOUT_S = 10.0
#: ``Retry-After`` (seconds) of a 503 for a failing tracker store or a busy conversation.
RETRY_AFTER_S = 2
#: Pauses between attempts to resume live chats while the tracker store fails at startup.
RESUME_RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)
#: Where Rasa mounts the webhook flavour's routes (``rasa run`` registers channels under ``/webhooks/<name>``).
ROUTE_PREFIX = "/webhooks/servicenow"
#: The routes that take a request body (all POST, all read with ``read_body``).
BODY_ROUTE_NAMES = ("webhook", "typing", "callback")
BODY_ROUTES = frozenset(f"{ROUTE_PREFIX}/{name}" for name in BODY_ROUTE_NAMES)


def body_routes(prefix: str) -> FrozenSet[str]:
    return frozenset(f"{prefix}/{name}" for name in BODY_ROUTE_NAMES)


#: How much of a refused body is still read and thrown away so the client sees the answer.
UNREAD_BODY_DRAINED = 1024 * 1024
#: A ``Content-Length`` longer than this many digits is not a length any route accepts.
MAX_CONTENT_LENGTH_DIGITS = 12


class ServiceNowInput(InputChannel):
    @classmethod
    def name(cls) -> str:
        return "servicenow"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[str, Any]]) -> InputChannel:
        if not credentials:
            cls.raise_missing_credentials_exception()
        settings = ServiceNowSettings.from_credentials(credentials)
        check_workers(settings.redis_url)
        if settings.log_format == "json":
            use_json_logs()
        return cls(settings)

    #: Per configuration, the door that built the core in this process: the
    #: other door (webhook and socket.io configured together) shares it, so
    #: one registry, one outbox and one set of pollers serve both.
    _core_owners: "weakref.WeakValueDictionary[str, ServiceNowInput]" = weakref.WeakValueDictionary()

    def __init__(self, settings: ServiceNowSettings, store: Optional[Store] = None) -> None:
        """``store``: where handoff state is shared; by default the one
        ``redis_url`` names, or an in-process one without it."""
        # Sender and chat ids reach many log lines; none may forge one.
        escape_log_arguments("connectors.servicenow")
        redact_access_log_tokens()
        self.settings = settings
        self._app: Optional[Sanic] = None
        self._background: Set["asyncio.Task[Any]"] = set()
        self.open_streams = OpenStreams()
        key = core_key(settings)
        owner = self._core_owners.get(key) if store is None else None
        #: Whether this door runs the core's background work (start, resume, shutdown).
        self.owns_core = owner is None or type(owner) is type(self)
        if self.owns_core:
            self._build_core(settings, store)
            if store is None:
                self._core_owners[key] = self
            turns = None
        else:
            assert owner is not None
            self._share_core(owner)
            turns = owner.front.turns
        #: The core this door hands messages to (the same logic for every door).
        self.front = FrontDoor(settings, self.handoffs, input_channel=self.name(), turns=turns)

    def _build_core(self, settings: ServiceNowSettings, store: Optional[Store]) -> None:
        self.metrics = HandoffMetrics() if settings.metrics or settings.metrics_port else None
        self.observe = Observer(self.metrics)
        self.http = ServiceNowHTTP(settings)
        self.backend = build_backend(settings, self.http)
        #: Handoff records, dedupe marks, leases and (when shared) the outbox:
        #: in this process, or in Redis shared by every replica (``redis_url``).
        self.store: Store = store if store is not None else open_store(settings.redis_url, prefix=settings.redis_prefix)
        #: This replica, as the holder of leases.
        self.replica_id = uuid.uuid4().hex[:12]
        self.outbox: Union[Outbox, SharedOutbox]
        if self.store.shared:
            self.outbox = SharedOutbox(
                self.store,
                settings.callback_url,
                owner=self.replica_id,
                request_timeout=settings.request_timeout,
                max_streams_per_sender=settings.max_streams_per_sender,
                max_open_streams=settings.max_open_streams,
            )
        else:
            self.outbox = Outbox(
                settings.callback_url,
                request_timeout=settings.request_timeout,
                max_streams_per_sender=settings.max_streams_per_sender,
                max_open_streams=settings.max_open_streams,
            )
        self.handoffs = HandoffManager(settings, self.backend, self.outbox, agent=self._agent, store=self.store)
        self.handoffs.relay.owner = self.replica_id
        self.handback = HandBackTurn(self._agent, settings.handback_intent)
        self.handoffs.hand_back_turn = self._hand_back_turn
        if isinstance(self.outbox, SharedOutbox):
            self.outbox.on_taken = self.handoffs.report_taken
        self._metrics_server: Optional[Any] = None
        if self.metrics is not None:
            self._instrument(self.metrics)
        self.handoffs.observe = self.handoffs.relay.observe = self.observe

    def _share_core(self, owner: "ServiceNowInput") -> None:
        """Serve the other door's core: its registry, outbox, pollers, store and metrics."""
        self.metrics, self.observe, self.http, self.backend = owner.metrics, owner.observe, owner.http, owner.backend
        self.store, self.replica_id, self.outbox, self.handoffs = owner.store, owner.replica_id, owner.outbox, owner.handoffs
        self._metrics_server = None
        logger.info("The %s door shares the handoff state of the %s door.", self.name(), owner.name())

    def _instrument(self, metrics: HandoffMetrics) -> None:
        """Wire the metrics in. Without them none of this runs: the HTTP
        client, the outbox and the routes do no extra work at all."""
        self.http.on_attempt = self.observe.servicenow_attempt
        self.http.on_retry = self.observe.servicenow_retry
        self.outbox.on_delivered = self.observe.reached_sink
        metrics.read_live_chats(lambda: len(self.handoffs.registry))
        metrics.read_outbox_backlog(lambda: callback_backlog(self.outbox))

    def _serve_metrics_port(self) -> None:
        """The metrics on a port of their own (``metrics_port``), in
        prometheus-client's own small server thread."""
        from prometheus_client import start_http_server

        assert self.metrics is not None
        server, _thread = start_http_server(
            self.settings.metrics_port, addr=self.settings.metrics_host, registry=self.metrics.registry
        )
        self._metrics_server = server
        logger.info(
            "Serving metrics on http://%s:%d/metrics (metrics_port).", self.settings.metrics_host, self.settings.metrics_port
        )

    def _stop_metrics_port(self) -> None:
        if self._metrics_server is not None:
            server, self._metrics_server = self._metrics_server, None
            # shutdown() waits for the serving thread; it must not hold up the event loop.
            threading.Thread(target=lambda: (server.shutdown(), server.server_close()), daemon=True).start()

    def bind(self, app: Sanic) -> None:
        """Remember the app whose ``ctx.agent`` serves this channel."""
        self._app = app

    def _agent(self) -> Optional[Agent]:
        return getattr(self._app.ctx, "agent", None) if self._app is not None else None

    def spawn(self, work: Awaitable[Any]) -> "asyncio.Task[Any]":
        """Run work in the background, holding a reference until it is done."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _hand_back_turn(self, sender_id: str, reason: str, in_request: bool) -> list:
        """The bot's turn after a handoff ended. In a request its replies join
        the door's answer (the client is waiting for it, and the outbox
        would deliver them after the answer's own notice anyway); otherwise
        they go through the outbox, behind the end notice already there."""
        if not in_request:
            await self.handback.run(sender_id, reason, OutOfBandOutput(self))
            return []
        collector = TurnCollector()
        await self.handback.run(sender_id, reason, collector)
        replies = list(collector.messages)
        if collector.handoff is not None:
            request = handoff_request(
                sender_id, collector.handoff, OUT_OF_BAND_HANDOFF_TEXT, {}, Requester(user_id=sender_id)
            )
            replies += await self.handoffs.start(request, in_request=True)
        return replies

    def new_blueprint(self, name: str) -> Blueprint:
        """The blueprint the routes are added to (the socket.io door's attaches its server too)."""
        return Blueprint(name, __name__)

    def get_output_channel(self) -> OutputChannel:
        """Where Rasa sends messages it produces outside a webhook request
        (``output_channel=latest`` on its HTTP API, reminders)."""
        return OutOfBandOutput(self)

    def blueprint(self, on_new_message: OnNewMessage) -> Blueprint:
        blueprint = self.new_blueprint(f"{self.name()}_webhook")

        if not self.owns_core:
            self._add_sharing_listeners(blueprint)
        else:
            self._add_core_listeners(blueprint)
        self._add_routes(blueprint, on_new_message)
        return blueprint

    def _add_sharing_listeners(self, blueprint: Blueprint) -> None:
        """A door that shares another's core: that door starts and stops it."""

        @blueprint.listener("after_server_start")
        async def bind_app(app: Sanic, _loop: Any) -> None:
            self.bind(app)

        @blueprint.listener("before_server_stop")
        async def finish_turns(_app: Sanic, _loop: Any) -> None:
            await self.open_streams.close(SHUTDOWN_TIMEOUT_S)
            if self._background:
                await asyncio.wait(list(self._background), timeout=SHUTDOWN_TIMEOUT_S)

    def _add_core_listeners(self, blueprint: Blueprint) -> None:
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
            if self.settings.cache_event_classes:
                cache_event_class_lookup()
            if self.settings.freeze_gc_at_start:
                freeze_startup_heap()
            if self.store.shared:
                await self._check_store()
                app.add_task(self._take_over(), name="servicenow-takeover")
            if self.settings.metrics_port:
                self._serve_metrics_port()
            app.add_task(self._resume(), name="servicenow-resume")
            self.handoffs.start_timers()
            app.add_task(self._housekeeping(), name="servicenow-housekeeping")

        @blueprint.listener("before_server_stop")
        async def stop_background_work(app: Sanic, _loop: Any) -> None:
            await self.open_streams.close(SHUTDOWN_TIMEOUT_S)
            await app.cancel_task("servicenow-housekeeping", raise_exception=False)
            if self.store.shared:
                await app.cancel_task("servicenow-takeover", raise_exception=False)
            # Callbacks already acknowledged to ServiceNow are delivered before
            # the relay saves its state and the outbox drains.
            if self._background:
                await asyncio.wait(list(self._background), timeout=SHUTDOWN_TIMEOUT_S)
            await self.handoffs.shutdown(SHUTDOWN_TIMEOUT_S)
            await self.http.aclose()
            await self.outbox.aclose()
            self._stop_metrics_port()
            await self.store.aclose()

    def _add_routes(self, blueprint: Blueprint, on_new_message: OnNewMessage) -> None:
        prefix = f"/webhooks/{self.name()}"
        routes_with_body = body_routes(prefix)

        @blueprint.listener("before_server_start")
        async def answer_malformed_requests_in_json(app: Sanic, _loop: Any) -> None:
            # Raised before Sanic has routed the request, so only an app-level
            # handler sees it; it is this channel's own exception class, so no
            # other route's errors change.
            app.error_handler.add(MalformedRequest, self._malformed_request_response)

        # Sanic reads the request framing itself, before any route runs, and
        # answers a non-numeric Content-Length or a Transfer-Encoding other
        # than chunked with a 500; this hook refuses them first, for this
        # channel's routes only.
        @blueprint.signal("http.lifecycle.request")
        async def refuse_malformed_framing(request: Request, **_: Any) -> None:
            if request.path == prefix or request.path.startswith(prefix + "/"):
                check_framing(request, routes_with_body)

        @blueprint.route("/", methods=["GET"])
        async def health(_: Request) -> HTTPResponse:
            return response.json(
                {
                    "status": "ok",
                    "api": self.settings.api,
                    "live_chats": len(self.handoffs.registry),
                    # Per-conversation state the channel holds: flat under anonymous traffic.
                    "mailboxes": self.outbox.mailbox_count,
                    "open_streams": self.outbox.open_streams,
                }
            )

        @blueprint.route("/webhook", methods=["POST"], stream=True)
        async def receive(request: Request) -> HTTPResponse:
            self.bind(request.app)
            try:
                # The body is read (within its cap) before a 401 too: an unread
                # body would be left to Sanic's clean-up.
                body = await read_body(request, MAX_BODY_BYTES)
                claims = self.authenticate(request)
                payload = parse_user_payload(body, max_message_length=self.settings.max_message_length)
                self.authorize(claims, payload.sender)
            except PayloadError as error:
                return error_response(error)
            agent = self._agent()
            if agent is None or not agent.is_ready():
                error = PayloadError(503, "AgentNotReady", "The assistant is not loaded yet; try again shortly.")
                return response.json(error.body(), status=503)
            # A task of its own, so that a client hanging up (Sanic then
            # cancels this handler) cannot cut a handoff's start or end in half.
            turn = self.spawn(self.handle(payload, on_new_message, claims))
            try:
                replies = await asyncio.shield(turn)
            except asyncio.CancelledError:
                turn.add_done_callback(log_unanswered_turn)
                raise
            except (StoreUnavailable, ConversationBusy) as error:
                logger.warning("Answering 503 to a message of conversation %s: %s", payload.sender, error)
                return retry_later(error)
            return response.json(replies)

        if self.metrics is not None:
            metrics = self.metrics

            @blueprint.middleware("response")
            async def count_rejected_input(request: Request, answer: HTTPResponse) -> None:
                if answer is not None and answer.status >= 400:
                    self._count_rejection(request.path, answer)

            if self.settings.metrics:

                @blueprint.route("/metrics", methods=["GET"])
                async def metrics_route(_: Request) -> HTTPResponse:
                    return response.raw(metrics.render(), content_type=METRICS_CONTENT_TYPE)

        if self.settings.chat_page:

            @blueprint.route("/chat", methods=["GET"])
            async def chat_page(_: Request) -> HTTPResponse:
                return await chat_asset("index.html")

            @blueprint.route("/chat/<name>", methods=["GET"])
            async def chat_page_asset(_: Request, name: str) -> HTTPResponse:
                return await chat_asset(name)

        @blueprint.route("/typing", methods=["POST"], stream=True)
        async def typing(request: Request) -> HTTPResponse:
            try:
                body = await read_body(request, MAX_BODY_BYTES)
                claims = self.authenticate(request)
                payload = parse_typing_payload(body)
                self.authorize(claims, payload.sender)
            except PayloadError as error:
                return error_response(error)
            self.bind(request.app)
            if self.store.shared:
                # The chat may have started on another replica.
                try:
                    await self.handoffs.refresh(payload.sender)
                except StoreUnavailable as error:
                    return retry_later(error)
            self.handoffs.user_typing(payload.sender, payload.typing)
            return response.json({"status": "accepted"}, status=202)

        @blueprint.route("/callback", methods=["POST"], stream=True)
        async def servicenow_callback(request: Request) -> HTTPResponse:
            if self.backend.pulls:
                await discard_body(request, MAX_CALLBACK_BYTES)
                error = PayloadError(404, "NotEnabled", "Callbacks are used with 'api: virtual_agent' only.")
                return response.json(error.body(), status=404)
            if not callback_authorized(self.settings, request.headers):
                self.observe.callback_unauthorized()
                await discard_body(request, MAX_CALLBACK_BYTES)
                error = PayloadError(401, "Unauthorized", "Missing or wrong callback credentials.")
                return response.json(error.body(), status=401)
            try:
                body = await read_body(request, MAX_CALLBACK_BYTES)
                payload = parse_json_object(body, '{"clientSessionId": "...", "body": []}', max_bytes=MAX_CALLBACK_BYTES)
                callback = self.backend.parse_callback(payload)
            except PayloadError as error:
                return response.json(error.body(), status=error.status)
            except CallbackError as error:
                return response.json(PayloadError(400, "InvalidCallback", str(error)).body(), status=400)
            self.bind(request.app)
            try:
                await self.handoffs.find_callback_chat(callback)
                if self.store.shared:
                    # Stored (and deduplicated) before the 200: acknowledged means durable.
                    await asyncio.shield(self.spawn(self.handoffs.receive_callback(callback)))
            except (StoreUnavailable, ConversationBusy) as error:
                # Refused, not acknowledged and dropped: ServiceNow retries.
                logger.warning("Answering 503 to a callback for chat %s: %s", callback.chat_id, error)
                return retry_later(error)
            if not self.store.shared:
                # Answer at once (ServiceNow waits 5 s at most); deliver afterwards.
                self.spawn(self.handoffs.receive_callback(callback))
            return response.json({"status": "success"})

        @blueprint.route("/stream", methods=["GET"])
        async def stream(request: Request) -> Optional[HTTPResponse]:
            try:
                sender = parse_sender(request.args.get("sender"))
            except PayloadError as error:
                error.message += " Give the conversation as '?sender=<id>'."
                return error_response(error)
            try:
                self.authorize(self.authenticate(request, query_token=request.args.get("token")), sender)
            except PayloadError as error:
                return error_response(error)
            last_event_id = request.headers.get("last-event-id") or request.args.get("last_event_id")
            try:
                subscription = self.outbox.subscribe(sender, last_event_id)
            except StreamLimitReached as limit:
                return error_response(stream_limit_error(limit), headers={"Retry-After": str(STREAM_RETRY_AFTER_S)})
            try:
                stream_response = await request.respond(
                    content_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
                # Heartbeats keep proxies and Sanic's response timeout from
                # closing a stream that waits a long time for an agent.
                await stream_response.send("retry: 2000\n: connected\n\n")
                with self.open_streams.track():
                    while True:
                        item = await subscription.next(STREAM_HEARTBEAT_S)
                        await stream_response.send(": keep-alive\n\n" if item is None else item.sse())
                        if item is not None:
                            self.observe.reached_sink(item.event_id, STREAM_SINK)
            except asyncio.CancelledError:
                if not self.open_streams.closing:
                    raise  # the client went away
            except StoreUnavailable as error:
                # The browser reconnects (retry: 2000) with its Last-Event-ID and misses nothing.
                logger.warning("Closing a stream of conversation %s: %s", sender, error)
            finally:
                subscription.close()

    def _count_rejection(self, path: str, answer: HTTPResponse) -> None:
        """Count an error answer by the reason in its envelope (4xx and 503 alike)."""
        try:
            reason = json.loads(answer.body or b"{}").get("reason")
        except (ValueError, AttributeError):
            return
        if isinstance(reason, str):
            self.observe.input_rejected(path, reason)

    async def _malformed_request_response(self, request: Request, exception: "MalformedRequest") -> HTTPResponse:
        # Raised before routing, so the blueprint's response middleware never sees it.
        self.observe.input_rejected(request.path, exception.error.reason)
        return await malformed_request_response(request, exception)

    def authenticate(self, request: Request, query_token: Optional[str] = None) -> Optional[Claims]:
        """The caller's verified JWT claims; None when ``jwt_key`` is not set
        (then a sender id is the identity, as with Rasa's REST channel)."""
        if not self.settings.jwt_key:
            return None
        try:
            return verify_token(
                bearer_token(request.headers, query_token), self.settings.jwt_key, self.settings.jwt_method,
                max_lifetime_s=self.settings.jwt_max_lifetime,
            )
        except Unauthenticated as problem:
            raise PayloadError(401, "Unauthorized", str(problem)) from None

    @staticmethod
    def authorize(claims: Optional[Claims], sender_id: str) -> None:
        if claims is not None:
            try:
                check_subject(claims, sender_id)
            except Unauthenticated as problem:
                raise PayloadError(401, "Unauthorized", str(problem)) from None

    async def handle(self, payload: UserPayload, on_new_message: OnNewMessage, claims: Optional[Claims] = None) -> list:
        """What the webhook does with a valid message (``FrontDoor.handle``)."""
        return await self.front.handle(payload, on_new_message, claims)

    async def _resume(self) -> None:
        agent = self._agent()
        if agent is None or not agent.is_ready():
            logger.warning("No model is loaded; live chats from before the restart are resumed on their next message.")
            return
        attempt = 0
        while True:
            try:
                await self.handoffs.resume()
                return
            except StoreUnavailable as error:
                # Meanwhile each conversation's first message or callback
                # reads its own tracker (503 while the store fails).
                delay = RESUME_RETRY_S[min(attempt, len(RESUME_RETRY_S) - 1)]
                logger.error("Could not resume live chats from the tracker store (retrying in %.0f s): %s", delay, error)
                attempt += 1
                await asyncio.sleep(delay)

    async def _check_store(self) -> None:
        try:
            await self.store.ping()
            logger.info("Handoff state is shared through Redis (prefix %r).", self.settings.redis_prefix)
        except StoreUnavailable as error:
            # Not fatal: Redis may come up after this replica. Until it does,
            # messages and callbacks are answered with 503, never guessed.
            logger.error("Redis (redis_url) does not answer; answering 503 until it does: %s", error)

    async def _take_over(self) -> None:
        """Take over the work of replicas that stopped or died (shared store):
        polling their Connect chats, posting their conversations' callbacks."""
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                if self.backend.pulls:
                    await self.handoffs.take_over_free_chats()
                if self.settings.callback_url and isinstance(self.outbox, SharedOutbox):
                    for name in await self.store.free_leases():
                        if name.startswith(CALLBACK_LEASE_PREFIX):
                            self.outbox.take_over(name[len(CALLBACK_LEASE_PREFIX) :])
            except StoreUnavailable as error:
                logger.warning("Could not look for Connect chats to take over: %s", error)
            except Exception:
                logger.exception("Looking for Connect chats to take over failed; trying again.")

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            self.outbox.prune()
            self.handoffs.typing.prune()
            if self.store.shared:
                try:
                    await self.handoffs.forget_ended_elsewhere()
                except StoreUnavailable as error:
                    logger.warning("Could not check this replica's chats against the store: %s", error)


def error_response(error: PayloadError, headers: Optional[Dict[str, str]] = None) -> HTTPResponse:
    extra = dict(headers or {})
    if error.status == 401:
        extra.setdefault("WWW-Authenticate", "Bearer")
    return response.json(error.body(), status=error.status, headers=extra or None)


def stream_limit_error(limit: StreamLimitReached) -> PayloadError:
    if limit.scope == PER_SENDER:
        return PayloadError(
            429, "TooManyStreams", f"This conversation has {limit.limit} open streams already; close one first."
        )
    return PayloadError(503, "StreamCapacityReached", "The server has no room for another stream; try again shortly.")


def retry_later(error: Exception) -> HTTPResponse:
    """The 503 for a message or callback that was not handled, and may be sent again."""
    if isinstance(error, ConversationBusy):
        failure = PayloadError(
            503, "ConversationBusy", "An earlier message of this conversation is still being handled; try again shortly."
        )
    else:
        failure = PayloadError(503, "StoreUnavailable", "The conversation store is unavailable; try again shortly.")
    return response.json(failure.body(), status=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def log_unanswered_turn(turn: "asyncio.Task[Any]") -> None:
    """The client hung up before its answer; say how the turn ended."""
    if turn.cancelled():
        return
    error = turn.exception()
    if error is not None:
        logger.warning("A message whose client hung up was not handled: %r", error)
    else:
        logger.info("A message was handled to the end after its client hung up; its answer was not delivered.")


class MalformedRequest(InvalidUsage):
    """A request to this channel's routes that Sanic would mis-handle; answered with ``error``."""

    def __init__(self, error: PayloadError) -> None:
        super().__init__(error.message, status_code=error.status)
        self.error = error


async def malformed_request_response(_: Request, exception: MalformedRequest) -> HTTPResponse:
    return response.json(exception.error.body(), status=exception.error.status)


def check_framing(request: Request, routes_with_body: FrozenSet[str] = BODY_ROUTES) -> None:
    """Refuse body framing that is ambiguous or that Sanic cannot parse, and
    bodies on routes that take none, before Sanic reads a byte of the body."""
    headers = request.headers
    lengths = headers.getall("content-length", [])
    encodings = headers.getall("transfer-encoding", [])
    if len(lengths) > 1 or len(encodings) > 1:
        raise MalformedRequest(PayloadError(400, "InvalidHeaders", "Content-Length and Transfer-Encoding may be given once."))
    if lengths and encodings:
        # Two framings for one body is how requests are smuggled past proxies.
        raise MalformedRequest(PayloadError(400, "InvalidHeaders", "Give Content-Length or Transfer-Encoding, not both."))
    if encodings and encodings[0] != "chunked":
        raise MalformedRequest(PayloadError(400, "InvalidHeaders", "The only Transfer-Encoding accepted is 'chunked'."))
    length = lengths[0].strip() if lengths else None
    if length is not None and not (length.isascii() and length.isdigit() and len(length) <= MAX_CONTENT_LENGTH_DIGITS):
        raise MalformedRequest(PayloadError(400, "InvalidHeaders", "Content-Length must be a number of bytes."))
    if length is not None and int(length) > MAX_CALLBACK_BYTES:
        raise MalformedRequest(
            PayloadError(413, "PayloadTooLarge", f"The request body is larger than {MAX_CALLBACK_BYTES} bytes.")
        )
    has_body = bool(encodings) or (length is not None and int(length) > 0)
    if has_body and not (request.method.upper() == "POST" and request.path.rstrip("/") in routes_with_body):
        # Only the routes that read their body in capped chunks take one;
        # elsewhere Sanic would buffer it (up to Rasa's 100 MB) before routing.
        raise MalformedRequest(
            PayloadError(400, "UnexpectedBody", f"{request.method.upper()} {request.path} takes no request body.")
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The body of a ``stream=True`` route, refused as soon as it passes
    ``limit`` bytes: neither a large Content-Length nor a long chunked body
    is buffered first."""
    too_large = PayloadError(413, "PayloadTooLarge", f"The request body is larger than {limit} bytes.")
    declared = request.headers.get("content-length")
    stream = request.stream
    if stream is None:
        return request.body or b""
    # Sanic reads away (without keeping) what a route leaves unread, up to
    # this, so the client can read the 413; past it, it closes the connection.
    stream.request_max_size = limit + UNREAD_BODY_DRAINED
    if declared is not None and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    try:
        while True:
            chunk = await stream.read()
            if chunk is None:
                break
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except PayloadTooLarge:
        raise too_large from None
    except SanicException as error:
        # Sanic's own "Bad chunked encoding". Nothing after it can be read, and
        # Sanic would otherwise try again (and log the failure) once the route answers.
        stream.request_body = None
        raise PayloadError(400, "InvalidBody", str(error) or "The request body is malformed.") from None
    return b"".join(chunks)


async def discard_body(request: Request, limit: int) -> None:
    """Read and drop the body of a request refused before its body mattered,
    so a malformed one ends here rather than in Sanic's clean-up."""
    try:
        await read_body(request, limit)
    except PayloadError:
        pass


async def chat_asset(name: str) -> HTTPResponse:
    """A file of the reference chat page; only the known ones, never a path."""
    content_type = CHAT_PAGE_FILES.get(name)
    if content_type is None:
        error = PayloadError(404, "NotFound", "No such file.")
        return response.json(error.body(), status=404)
    body = (CHAT_PAGE_DIR / name).read_bytes()
    return response.raw(body, content_type=content_type, headers={"Cache-Control": "no-cache", **webchat.HEADERS})


class OutOfBandOutput(HandoffAwareOutput):
    """Sends through the outbox (callback and stream)."""

    def __init__(self, channel: ServiceNowInput) -> None:
        super().__init__()
        self._channel = channel

    @classmethod
    def name(cls) -> str:
        return "servicenow"

    async def _persist_message(self, message: Dict[str, Any]) -> None:
        await self._channel.outbox.put(message["recipient_id"], [Outgoing(message)])

    def on_handoff(self, recipient_id: str, options: Dict[str, Any]) -> None:
        # Rasa holds the conversation's lock while this runs; the start waits
        # for it in its own task.
        request = handoff_request(recipient_id, options, OUT_OF_BAND_HANDOFF_TEXT, {}, Requester(user_id=recipient_id))
        self._channel.spawn(self._channel.handoffs.start(request, in_request=False))

    def on_handoff_end(self, recipient_id: str) -> None:
        # Also under Rasa's lock: the end writes the tracker, so it waits in its own task.
        self._channel.spawn(self._channel.handoffs.end_by_bot(recipient_id))


def callback_authorized(settings: ServiceNowSettings, headers: Mapping[str, str]) -> bool:
    """Shared secret in a header, or Basic credentials; compared in constant time."""
    if settings.webhook_secret:
        provided = _header_bytes(headers.get(settings.webhook_secret_header, ""))
        if hmac.compare_digest(provided, settings.webhook_secret.encode()):
            return True
    if settings.webhook_username and settings.webhook_password:
        scheme, _, encoded = headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                username, _, password = base64.b64decode(_header_bytes(encoded), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            user_ok = hmac.compare_digest(username.encode(), settings.webhook_username.encode())
            password_ok = hmac.compare_digest(password.encode(), settings.webhook_password.encode())
            return user_ok and password_ok
    return False


def _header_bytes(value: str) -> bytes:
    """A header value as bytes, whatever it holds: Sanic decodes headers with
    ``surrogateescape``, so a non-UTF-8 byte arrives as a lone surrogate.
    Such bytes never equal a configured (UTF-8) secret, and nothing here
    raises before authentication has answered."""
    return value.encode("utf-8", "surrogatepass")


def core_key(settings: ServiceNowSettings) -> str:
    """Equal for equal ServiceNow options (secrets included, never logged)."""
    return json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str)


def build_backend(settings: ServiceNowSettings, http: ServiceNowHTTP) -> Backend:
    if settings.api == CONNECT_API:
        return ConnectBackend(settings, http)
    if settings.api == VIRTUAL_AGENT_API:
        return VirtualAgentBackend(settings, http)
    raise ConfigurationError(f"No backend for 'api: {settings.api}'.")
