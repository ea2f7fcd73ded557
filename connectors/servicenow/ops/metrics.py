"""The channel's Prometheus metrics, in a registry of its own.

A registry per channel (not prometheus-client's global default) keeps two
channels in one process, and the tests, from counting into each other. Every
label has a bounded set of values: ServiceNow paths are reduced to route
templates, input rejections to the error codes the channel gives out.

Names follow Prometheus conventions: a ``servicenow_handoff_`` prefix, units
in the name (``_seconds``), ``_total`` on counters. docs/metrics.md lists them.
"""

import logging
import threading
from typing import Any, Callable, Iterable, Optional, Set, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

logger = logging.getLogger(__name__)

PREFIX = "servicenow_handoff_"
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: The error reasons the channel answers with (``PayloadError.reason``); any
#: other is counted as ``other`` so the label set stays bounded.
REJECTION_REASONS = frozenset(
    {
        "AgentNotReady",
        "ConversationBusy",
        "InvalidBody",
        "InvalidCallback",
        "InvalidEncoding",
        "InvalidHeaders",
        "InvalidJSON",
        "InvalidMessage",
        "InvalidMetadata",
        "InvalidPayload",
        "InvalidSender",
        "InvalidSession",
        "InvalidTyping",
        "MessageTooLong",
        "NoSession",
        "NotEnabled",
        "NotFound",
        "PayloadTooLarge",
        "StoreUnavailable",
        "ShuttingDown",
        "StreamCapacityReached",
        "TooManyClientStreams",
        "TooManyStreams",
        "Unauthorized",
        "UnexpectedBody",
    }
)
#: The channel's routes, by last path segment; others count as ``other``.
ROUTES = frozenset({"health", "webhook", "typing", "callback", "stream", "chat", "metrics", "socketio"})

#: ServiceNow paths without ids, as they are.
_FIXED_ENDPOINTS = frozenset(
    {
        "/api/sn_va_as_service/bot/integration",
        "/api/now/table/interaction",
        "/api/now/table/sys_cs_message",
        "/api/now/connect/support/sessions",
        "/api/now/connect/support/queues",
        "/oauth_token.do",
    }
)
#: (prefix, suffix) around one id segment -> route template. Ids never become labels.
_ENDPOINTS_WITH_ID: Tuple[Tuple[str, str, str], ...] = (
    ("/api/now/connect/conversations/", "/messages", "/api/now/connect/conversations/{group}/messages"),
    ("/api/now/connect/support/queues/", "/sessions", "/api/now/connect/support/queues/{queue}/sessions"),
    ("/api/now/connect/support/sessions/", "/leave", "/api/now/connect/support/sessions/{group}/leave"),
)
#: HTTP statuses are few, but a broken proxy can invent any: only real ones are labels.
_KNOWN_STATUS = range(100, 600)

#: Seconds. Time to agent spans a queue (seconds to many minutes).
TIME_TO_AGENT_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
#: Seconds. Delivery from arrival to a sink: milliseconds, seconds with a slow callback.
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))
#: Seconds. ServiceNow answers in tens to hundreds of milliseconds, time-outs at ``request_timeout``.
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))
#: Seconds. Handoffs last minutes.
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf"))


def endpoint_template(path: str) -> str:
    """The route template of a ServiceNow path, ``other`` when unknown."""
    # String tests, not regular expressions: this runs on every ServiceNow call.
    path = path.partition("?")[0]
    if path in _FIXED_ENDPOINTS:
        return path
    for prefix, suffix, template in _ENDPOINTS_WITH_ID:
        if path.startswith(prefix) and path.endswith(suffix):
            segment = path[len(prefix) : len(path) - len(suffix)]
            if segment and "/" not in segment:
                return template
    return "other"


def rejection_reason(reason: str) -> str:
    return reason if reason in REJECTION_REASONS else "other"


def route_label(path: str) -> str:
    """``webhook`` for ``/webhooks/servicenow/webhook``; ``health`` for the root."""
    tail = path.rstrip("/").rsplit("/", 1)[-1]
    if tail in ("servicenow", "servicenow_socketio"):
        return "health"
    return tail if tail in ROUTES else "other"


def status_label(status: Optional[int]) -> str:
    if status is None:
        return "error"
    return str(status) if status in _KNOWN_STATUS else "other"


class HandoffMetrics:
    """Every metric of one channel. Methods are not needed: callers use the
    metric objects; ``observe.Observer`` is the one that does."""

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._handoff_metrics(self.registry)
        self._delivery_metrics(self.registry)
        self._edge_metrics(self.registry)

    def _handoff_metrics(self, r: CollectorRegistry) -> None:
        self.handoffs_started = Counter(
            PREFIX + "handoffs_started", "Handoffs whose ServiceNow chat opened and was saved.", registry=r
        )
        self.handoffs_ended = Counter(
            PREFIX + "handoffs_ended",
            "Handoffs that ended, by reason (user_ended, agent_closed, returned, failed, no_agent, user_idle, bot_ended).",
            ["reason"],
            registry=r,
        )
        self.time_to_agent = Histogram(
            PREFIX + "time_to_agent_seconds",
            "From the chat opening to a live agent joining (or first writing).",
            buckets=TIME_TO_AGENT_BUCKETS,
            registry=r,
        )
        self.time_to_open = Histogram(
            PREFIX + "time_to_open_seconds",
            "From the user's request to the ServiceNow chat being open and saved.",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.chat_duration = Histogram(
            PREFIX + "chat_duration_seconds",
            "From the chat opening to its end (chats started by this process).",
            ["reason"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.live_chats = Gauge(PREFIX + "live_chats", "Conversations in handoff that this process serves.", registry=r)

    def _delivery_metrics(self, r: CollectorRegistry) -> None:
        self.agent_messages_delivered = Counter(
            PREFIX + "agent_messages_delivered",
            "Agent-side messages (agent replies and ServiceNow notices) queued for the user.",
            registry=r,
        )
        self.duplicates_dropped = Counter(
            PREFIX + "duplicates_dropped",
            "Agent-side events dropped as already handled, by kind (message: a seen message id; "
            "callback: a repeated Virtual Agent push).",
            ["kind"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            PREFIX + "delivery_latency_seconds",
            "From an agent-side event's arrival (callback accepted, or poll answered) to a sink "
            "(callback POST answered 2xx, or written to a stream), by sink.",
            ["sink"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.outbox_backlog = Gauge(
            PREFIX + "outbox_backlog",
            "Items waiting in the outbox: callback POSTs not yet answered.",
            registry=r,
        )
        self.open_streams = Gauge(
            PREFIX + "open_streams",
            "SSE streams (kind 'sse') and socket.io sockets ('socketio') open in this process; each holds a slot "
            "of the deployment's caps.",
            ["kind"],
            registry=r,
        )
        self.socketio_readers = Gauge(
            PREFIX + "socketio_readers", "socket.io sessions with an outbox reader in this process.", registry=r
        )
        self.messages_reconciled = Counter(
            PREFIX + "messages_reconciled",
            "Virtual Agent messages queued for the user from ServiceNow's record before (or instead of) their own push, "
            "by how (push: a push's ordering read, for messages it overtook or that follow it; pass: a reconciliation "
            "pass, for messages whose push is lost).",
            ["how"],
            registry=r,
        )
        self.push_order_wait = Histogram(
            PREFIX + "push_order_wait_seconds",
            "How long a Virtual Agent push waited for the read that puts it in ServiceNow's order, by outcome "
            "(ordered, or as_came when the read failed or took longer than order_wait).",
            ["outcome"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )

    def _edge_metrics(self, r: CollectorRegistry) -> None:
        self.servicenow_requests = Counter(
            PREFIX + "servicenow_requests",
            "ServiceNow API calls, each attempt, by endpoint template, method and status ('error': no answer).",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.servicenow_request_duration = Histogram(
            PREFIX + "servicenow_request_duration_seconds",
            "Time of one ServiceNow API attempt, by endpoint template and method.",
            ["endpoint", "method"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.servicenow_retries = Counter(
            PREFIX + "servicenow_retries",
            "ServiceNow API attempts that are retried, by endpoint template and method.",
            ["endpoint", "method"],
            registry=r,
        )
        self.callback_auth_failures = Counter(
            PREFIX + "callback_auth_failures",
            "Virtual Agent callbacks refused for missing or wrong credentials.",
            registry=r,
        )
        self.rejected_input = Counter(
            PREFIX + "rejected_input",
            "Requests to the channel's routes answered with an error envelope, by route and reason (the reason of the error envelope).",
            ["route", "reason"],
            registry=r,
        )

    def read_live_chats(self, count: Callable[[], int]) -> None:
        """Read the live-chat gauge from ``count`` at scrape time: nothing on the hot path."""
        self.live_chats.set_function(count)

    def read_outbox_backlog(self, count: Callable[[], int]) -> None:
        self.outbox_backlog.set_function(count)

    def read_open_streams(self, count: Callable[[str], int], kinds: Iterable[str], readers: Callable[[], int]) -> None:
        """Open streams and sockets of each kind, and socket.io readers, read at scrape time."""
        for kind in kinds:
            self.open_streams.labels(kind=kind).set_function(lambda kind=kind: count(kind))  # type: ignore[misc]
        self.socketio_readers.set_function(readers)

    def render(self) -> bytes:
        """The text exposition format, for a scrape."""
        return generate_latest(self.registry)

    def names(self) -> Set[str]:
        """Every series name the registry can expose, with the suffixes
        Prometheus adds (``_total``, ``_bucket``, ``_sum``, ``_count``), whether
        or not a labelled series has been touched yet."""
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
        names = set()
        for family in self.registry.collect():
            for suffix in suffixes.get(family.type, ("",)):
                names.add(family.name + suffix)
        return names


class MetricsPort:
    """The metrics on a port of their own (``metrics_port``), in
    prometheus-client's own small server thread."""

    def __init__(self, metrics: HandoffMetrics, host: str, port: int) -> None:
        self._metrics = metrics
        self.host = host
        self.port = port
        self._server: Optional[Any] = None

    def start(self) -> None:
        from prometheus_client import start_http_server

        self._server, _thread = start_http_server(self.port, addr=self.host, registry=self._metrics.registry)
        logger.info("Serving metrics on http://%s:%d/metrics (metrics_port).", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            # shutdown() waits for the serving thread; it must not hold up the event loop.
            threading.Thread(target=lambda: (server.shutdown(), server.server_close()), daemon=True).start()
