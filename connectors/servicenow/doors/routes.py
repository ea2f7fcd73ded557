"""The HTTP routes every door serves, under ``/webhooks/<door name>/``:

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

While a conversation is in handoff its messages never reach Rasa: they go to
ServiceNow and the answer is an empty list. When the store cannot say whether
it is, the answer is 503 (``Retry-After``) rather than a guess; a
conversation's messages are handled one at a time, in arrival order, and a
handled message runs to the end even if the client hangs up.
"""

import asyncio
import json
import logging
from typing import Any, List, Optional

from sanic import Blueprint, Sanic, response
from sanic.request import Request
from sanic.response import HTTPResponse

from connectors.servicenow.core.core import SHUTDOWN_TIMEOUT_S, Core
from connectors.servicenow.doors.chat_page import add_chat_page
from connectors.servicenow.doors.http import (
    UNFRAMED,
    UNFRAMED_ERRORS,
    BodyReads,
    body_routes,
    callback_authorized,
    client_address,
    error_response,
    framing_error,
    is_unframed,
    log_unanswered_turn,
    refuse_framing,
    retry_later,
    shutting_down,
    stream_limit_error,
)
from connectors.servicenow.doors.open_streams import OpenStreams
from connectors.servicenow.errors import ConversationBusy, StoreUnavailable
from connectors.servicenow.identity import Claims, Unauthenticated, bearer_token, check_subject, verify_token
from connectors.servicenow.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from connectors.servicenow.outbox.base import StreamLimitReached
from connectors.servicenow.outbox.capacity import SOCKETIO, SSE
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
from connectors.servicenow.rasa_glue.output import OnNewMessage
from connectors.servicenow.servicenow.virtual_agent import CallbackError
from connectors.servicenow.store.keys import STREAM_SINK

logger = logging.getLogger(__name__)

STREAM_HEARTBEAT_S = 15.0
#: Retry-After of a stream refused by a cap: EventSource's own reconnect delay is 2 s.
STREAM_RETRY_AFTER_S = 5


class HTTPRoutes:
    """The routes of the door named ``door`` on its core."""

    def __init__(self, core: Core, door: str) -> None:
        self.core = core
        self.door = door
        #: This door's open ``/stream`` handlers, ended when the server stops.
        self.open_streams = OpenStreams()
        self.prefix = f"/webhooks/{door}"
        self.settings = core.settings
        #: Request bodies being read, each within ``body_read_timeout``, at most ``max_body_reads`` at once.
        self.body_reads = BodyReads(core.settings.max_body_reads, core.settings.body_read_timeout)

    def add(self, blueprint: Blueprint, on_new_message: OnNewMessage) -> None:
        self._add_lifecycle(blueprint)
        self._add_guards(blueprint)

        # Functions, not bound methods: Sanic marks its handlers with attributes.
        @blueprint.route("/", methods=["GET"], stream=True)
        async def health(request: Request) -> HTTPResponse:
            return await self.health(request)

        @blueprint.route("/webhook", methods=["POST"], stream=True)
        async def receive(request: Request) -> HTTPResponse:
            return await self.receive(request, on_new_message)

        @blueprint.route("/typing", methods=["POST"], stream=True)
        async def typing(request: Request) -> HTTPResponse:
            return await self.typing(request)

        @blueprint.route("/callback", methods=["POST"], stream=True)
        async def servicenow_callback(request: Request) -> HTTPResponse:
            return await self.servicenow_callback(request)

        @blueprint.route("/stream", methods=["GET"], stream=True)
        async def stream(request: Request) -> Optional[HTTPResponse]:
            return await self.stream(request)

        if self.core.metrics is not None and self.settings.metrics:

            @blueprint.route("/metrics", methods=["GET"], stream=True)
            async def metrics_route(request: Request) -> HTTPResponse:
                return await self.metrics_route(request)

        if self.settings.chat_page:
            add_chat_page(blueprint)

    def _add_lifecycle(self, blueprint: Blueprint) -> None:
        core = self.core

        @blueprint.listener("after_server_start")
        async def start_core(app: Sanic, _loop: Any) -> None:
            await core.start(app)

        # Sanic runs before_server_stop as soon as SIGTERM comes, while it
        # still serves, then waits (GRACEFUL_SHUTDOWN_TIMEOUT) for the
        # requests under way, then runs after_server_stop. So: refuse new
        # work first (503 ShuttingDown: a balancer's health check drops this
        # replica, a client or ServiceNow sends again), end the streams (else
        # Sanic waits 15 s for them), let the core finish and save what runs
        # while Rasa's agent and event broker are still open (Rasa closes
        # them in after_server_stop, before listeners registered earlier
        # run), and close the clients last, when no request can use them.
        @blueprint.listener("before_server_stop")
        async def stop_core(_app: Sanic, _loop: Any) -> None:
            core.stopping = True
            await self.open_streams.close(SHUTDOWN_TIMEOUT_S)
            await core.stop()

        @blueprint.listener("after_server_stop")
        async def close_core(_app: Sanic, _loop: Any) -> None:
            await core.close()

    def _add_guards(self, blueprint: Blueprint) -> None:
        routes_with_body = body_routes(self.prefix)
        prefix = self.prefix

        @blueprint.listener("before_server_start")
        async def answer_unframed_requests_in_json(app: Sanic, _loop: Any) -> None:
            # Sanic answers a body it cannot frame with a 500 (sanic 21.12) or
            # a plain-text 400 (sanic 25), before routing: only an app-level
            # handler sees that. Every other error keeps Sanic's own answer.
            prefixes = getattr(app.ctx, "servicenow_prefixes", None)
            if prefixes is None:
                prefixes = app.ctx.servicenow_prefixes = set()
                default = app.error_handler.default

                def unframed_request(request: Request, exception: Exception) -> HTTPResponse:
                    ours = any(request.path == door or request.path.startswith(door + "/") for door in prefixes)
                    if ours and is_unframed(request, exception):
                        self.core.observe.input_rejected(request.path, UNFRAMED.reason)
                        return error_response(UNFRAMED)
                    return default(request, exception)

                for error in UNFRAMED_ERRORS:
                    app.error_handler.add(error, unframed_request)
            prefixes.add(prefix)

        # A blueprint middleware, not an ``http.lifecycle`` signal: one
        # signal handler makes sanic dispatch every lifecycle event of every
        # request (its ODE optimisation keeps a namespace with any handler),
        # about 9% of a forwarded message's CPU. The routes are all
        # ``stream=True``, so nothing of the body is read before this runs.
        # A plain function: Sanic awaits a middleware only when it returns an awaitable.
        @blueprint.middleware("request")
        def refuse_malformed_framing(request: Request) -> Optional[HTTPResponse]:
            error = framing_error(request, routes_with_body)
            return None if error is None else refuse_framing(request, error)

        if self.core.metrics is not None:

            @blueprint.middleware("response")
            async def count_rejected_input(request: Request, answer: HTTPResponse) -> None:
                if answer is not None and answer.status >= 400:
                    self._count_rejection(request.path, answer)

    # -- the routes ----------------------------------------------------------------

    async def health(self, _: Request) -> HTTPResponse:
        outbox = self.core.outbox
        return response.json(
            {
                "status": "stopping" if self.core.stopping else "ok",
                "api": self.settings.api,
                "live_chats": len(self.core.registry),
                # Per-conversation state the channel holds: flat under anonymous traffic.
                "mailboxes": outbox.mailbox_count,
                # SSE streams and socket.io sockets open on this replica (each holds a slot of the caps).
                "open_streams": outbox.open_streams,
                "socketio_sockets": outbox.capacity.open_by_kind[SOCKETIO],
                "socketio_readers": outbox.readers,
            },
            status=503 if self.core.stopping else 200,
        )

    async def receive(self, request: Request, on_new_message: OnNewMessage) -> HTTPResponse:
        self.core.bind(request.app)
        try:
            # The body is read (within its cap) before a 401 too: an unread
            # body would be left to Sanic's clean-up.
            body = await self.body_reads.read(request, MAX_BODY_BYTES)
            claims = self.authenticate(request)
            payload = parse_user_payload(body, max_message_length=self.settings.max_message_length)
            self.authorize(claims, payload.sender)
        except PayloadError as error:
            return error_response(error)
        if self.core.stopping:
            return shutting_down()
        agent = self.core.agent()
        if agent is None or not agent.is_ready():
            not_ready = PayloadError(503, "AgentNotReady", "The assistant is not loaded yet; try again shortly.")
            return response.json(not_ready.body(), status=503)
        # A task of its own, so that a client hanging up (Sanic then
        # cancels this handler) cannot cut a handoff's start or end in half.
        turn = self.core.router.handle(payload, on_new_message, claims, self.door)
        try:
            replies = await self.core.work.run_to_end(turn, on_abandoned=log_unanswered_turn)
        except (StoreUnavailable, ConversationBusy) as error:
            logger.warning("Answering 503 to a message of conversation %s: %s", payload.sender, error)
            return retry_later(error)
        return response.json(replies)

    async def handle(self, payload: UserPayload, on_new_message: OnNewMessage, claims: Optional[Claims] = None) -> List[Any]:
        """What the door does with a valid message (``Router.handle``)."""
        return await self.core.router.handle(payload, on_new_message, claims, self.door)

    async def typing(self, request: Request) -> HTTPResponse:
        try:
            body = await self.body_reads.read(request, MAX_BODY_BYTES)
            claims = self.authenticate(request)
            payload = parse_typing_payload(body)
            self.authorize(claims, payload.sender)
        except PayloadError as error:
            return error_response(error)
        if self.core.stopping:
            return shutting_down()
        self.core.bind(request.app)
        try:
            # The chat may have started on another replica: the store says.
            await self.core.router.user_typing(payload.sender, payload.typing)
        except StoreUnavailable as error:
            return retry_later(error)
        return response.json({"status": "accepted"}, status=202)

    async def servicenow_callback(self, request: Request) -> HTTPResponse:
        if self.core.backend.pulls:
            await self.body_reads.discard(request, MAX_CALLBACK_BYTES)
            error = PayloadError(404, "NotEnabled", "Callbacks are used with 'api: virtual_agent' only.")
            return response.json(error.body(), status=404)
        if not callback_authorized(self.settings, request.headers):
            self.core.observe.callback_unauthorized()
            await self.body_reads.discard(request, MAX_CALLBACK_BYTES)
            error = PayloadError(401, "Unauthorized", "Missing or wrong callback credentials.")
            return response.json(error.body(), status=401)
        try:
            body = await self.body_reads.read(request, MAX_CALLBACK_BYTES)
            payload = parse_json_object(body, '{"clientSessionId": "...", "body": []}', max_bytes=MAX_CALLBACK_BYTES)
            callback = self.core.backend.parse_callback(payload)
        except PayloadError as error:
            return response.json(error.body(), status=error.status)
        except CallbackError as error:
            return response.json(PayloadError(400, "InvalidCallback", str(error)).body(), status=400)
        if self.core.stopping:
            return shutting_down()  # not acknowledged: ServiceNow pushes it again
        self.core.bind(request.app)
        intake = self.core.callbacks
        try:
            await intake.find_chat(callback)
            # Stored (and deduplicated) before the 200: acknowledged means durable.
            await self.core.work.run_to_end(intake.receive(callback))
        except (StoreUnavailable, ConversationBusy) as error:
            # Refused, not acknowledged: ServiceNow does not send it again, the
            # chat's record is read back instead (reconciliation).
            logger.warning("Answering 503 to a callback for chat %s: %s", callback.chat_id, error)
            intake.refused(callback.chat_id)
            return retry_later(error)
        return response.json({"status": "success"})

    async def stream(self, request: Request) -> Optional[HTTPResponse]:
        try:
            sender = parse_sender(request.args.get("sender"))
        except PayloadError as error:
            error.message += " Give the conversation as '?sender=<id>'."
            return error_response(error)
        try:
            self.authorize(self.authenticate(request, query_token=request.args.get("token")), sender)
        except PayloadError as error:
            return error_response(error)
        if self.core.stopping:
            return shutting_down()  # the browser reconnects, to another replica
        last_event_id = request.headers.get("last-event-id") or request.args.get("last_event_id")
        capacity = self.core.outbox.capacity
        try:
            # Counted for the deployment before anything is set up for it.
            slot = await capacity.open_slot(SSE, client=client_address(request), sender=sender)
        except StreamLimitReached as limit:
            logger.info("Refused a stream of conversation %s: %s.", sender, limit)
            return error_response(stream_limit_error(limit, STREAM_RETRY_AFTER_S))
        except StoreUnavailable as error:
            return retry_later(error)
        subscription = self.core.outbox.subscribe(sender, last_event_id)
        observe = self.core.observe
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
                        observe.reached_sink(item.event_id, STREAM_SINK)
        except asyncio.CancelledError:
            if not self.open_streams.closing:
                raise  # the client went away
        except StoreUnavailable as error:
            # The browser reconnects (retry: 2000) with its Last-Event-ID and misses nothing.
            logger.warning("Closing a stream of conversation %s: %s", sender, error)
        finally:
            subscription.close()
            capacity.close(slot)
        return None

    async def metrics_route(self, _: Request) -> HTTPResponse:
        assert self.core.metrics is not None
        return response.raw(self.core.metrics.render(), content_type=METRICS_CONTENT_TYPE)

    # -- who is calling --------------------------------------------------------------

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

    # -- counting refusals -------------------------------------------------------------

    def _count_rejection(self, path: str, answer: HTTPResponse) -> None:
        """Count an error answer by the reason in its envelope (4xx and 503 alike)."""
        try:
            reason = json.loads(answer.body or b"{}").get("reason")
        except (ValueError, AttributeError):
            return
        if isinstance(reason, str):
            self.core.observe.input_rejected(path, reason)
