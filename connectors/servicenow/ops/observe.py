"""What operators see of a handoff: one INFO line per transition (started,
agent joined, ended) with its ids, reason and durations, and the metrics
beside it. One call at each transition does both.

Lines carry the conversation, the chat id, the reason and durations, never
a message body. Their fields also go in as ``extra=`` so that with
``log_format: json`` they arrive as structured fields::

    {"message": "Handoff ended (user_ended): ...", "event": "handoff_ended",
     "sender_id": "alice", "chat_id": "...", "reason": "user_ended",
     "chat_duration_s": 42.1, ...}

Durations need the moment a chat started, which only the process that
started it knows; a chat resumed after a restart logs its end without them.
The hot paths (forwarding a user message, a bot turn) call nothing here.
"""

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from connectors.servicenow.logsafe import loggable
from connectors.servicenow.ops.metrics import (
    HandoffMetrics,
    endpoint_template,
    rejection_reason,
    route_label,
    status_label,
)

# Named as documented (docs/configuration.md): operators filter on it.
logger = logging.getLogger("connectors.servicenow.observe")

#: Chats whose start time is kept for their durations; the oldest go first
#: (a chat that ended on another replica never says so here).
TIMINGS_KEPT = 100_000
#: Arrival times of queued items kept for the delivery-latency histogram.
ARRIVALS_KEPT = 10_000


@dataclass(slots=True)
class _Timing:
    started: float
    agent_joined: Optional[float] = None
    #: Picked up after a restart: its start (and so its durations) is unknown.
    resumed: bool = False


def _rounded(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds, 3)


def _text(seconds: Optional[float]) -> str:
    return "unknown" if seconds is None else f"{seconds:.1f} s"


class Observer:
    """Logs handoff transitions and, with ``metrics``, records them.
    Without metrics it still logs: the lines are for every deployment."""

    def __init__(self, metrics: Optional[HandoffMetrics] = None, clock: Any = time.monotonic) -> None:
        self.metrics = metrics
        self._clock = clock
        self._timings: "OrderedDict[str, _Timing]" = OrderedDict()
        self._arrivals: "OrderedDict[str, float]" = OrderedDict()
        # Labelled children, looked up once: ``labels()`` costs more than the
        # increment. The label sets are bounded, and so are these.
        self._request_series: Dict[Tuple[str, str, Optional[int]], Tuple[Any, Any]] = {}
        self._sink_series: Dict[str, Any] = {}

    # -- handoff transitions ------------------------------------------------

    def handoff_started(self, sender_id: str, chat_id: str, time_to_open: Optional[float] = None) -> None:
        """The chat is open and saved. ``time_to_open``: seconds since the user asked."""
        self._timings[chat_id] = _Timing(self._clock())
        while len(self._timings) > TIMINGS_KEPT:
            self._timings.popitem(last=False)
        if self.metrics is not None:
            self.metrics.handoffs_started.inc()
            if time_to_open is not None:
                self.metrics.time_to_open.observe(time_to_open)
        logger.info(
            "Handoff started: conversation %s is in ServiceNow chat %s (time to open %s).",
            loggable(sender_id), loggable(chat_id), _text(time_to_open),
            extra={
                "event": "handoff_started", "sender_id": sender_id, "chat_id": chat_id,
                "time_to_open_s": _rounded(time_to_open),
            },
        )

    def agent_joined(self, sender_id: str, chat_id: str) -> None:
        """A live agent joined or first wrote; only the first call per chat counts."""
        timing = self._timings.get(chat_id)
        if timing is not None and timing.agent_joined is not None:
            return
        now = self._clock()
        waited = None
        if timing is not None:
            timing.agent_joined = now
            waited = now - timing.started
            if self.metrics is not None:
                self.metrics.time_to_agent.observe(waited)
        else:
            # Resumed after a restart: remember the join so it is logged once.
            self._timings[chat_id] = _Timing(now, now, resumed=True)
        logger.info(
            "Agent joined: conversation %s, ServiceNow chat %s (time to agent %s).",
            loggable(sender_id), loggable(chat_id), _text(waited),
            extra={
                "event": "agent_joined", "sender_id": sender_id, "chat_id": chat_id,
                "time_to_agent_s": _rounded(waited),
            },
        )

    def handoff_ended(self, sender_id: str, chat_id: str, reason: str) -> None:
        """The handoff ended for ``reason`` (``core.ending.EndReason`` values)."""
        timing = self._timings.pop(chat_id, None)
        now = self._clock()
        known = timing if timing is not None and not timing.resumed else None
        duration = now - known.started if known is not None else None
        time_to_agent = (
            known.agent_joined - known.started if known is not None and known.agent_joined is not None else None
        )
        if self.metrics is not None:
            self.metrics.handoffs_ended.labels(reason).inc()
            if duration is not None:
                self.metrics.chat_duration.labels(reason).observe(duration)
        logger.info(
            "Handoff ended (%s): conversation %s left ServiceNow chat %s (chat duration %s, time to agent %s).",
            reason, loggable(sender_id), loggable(chat_id), _text(duration),
            "none joined" if known is not None and known.agent_joined is None else _text(time_to_agent),
            extra={
                "event": "handoff_ended", "sender_id": sender_id, "chat_id": chat_id, "reason": reason,
                "chat_duration_s": _rounded(duration), "time_to_agent_s": _rounded(time_to_agent),
                "agent_joined": timing is not None and timing.agent_joined is not None,
            },
        )

    # -- agent-side events --------------------------------------------------

    def agent_message_queued(self, event_id: str, arrived: float) -> None:
        """An agent-side message went into the outbox; ``arrived`` (monotonic)
        is when the dispatch received it (callback accepted, or poll answered)."""
        if self.metrics is None:
            return
        self.metrics.agent_messages_delivered.inc()
        self._arrivals[event_id] = arrived
        if len(self._arrivals) > ARRIVALS_KEPT:
            self._arrivals.popitem(last=False)

    def reached_sink(self, event_id: str, sink: str) -> None:
        """An outbox item reached the user through ``sink``; only items the
        dispatch queued are timed (the rest are not agent-side messages)."""
        if self.metrics is None:
            return
        arrived = self._arrivals.get(event_id)
        if arrived is not None:
            series = self._sink_series.get(sink)
            if series is None:
                series = self._sink_series[sink] = self.metrics.delivery_latency.labels(sink)
            series.observe(time.monotonic() - arrived)

    def duplicate_dropped(self, kind: str) -> None:
        """``message``: an already-seen message id; ``callback``: a repeated push."""
        if self.metrics is not None:
            self.metrics.duplicates_dropped.labels(kind).inc()

    def messages_reconciled(self, how: str, count: int) -> None:
        """``count`` messages no push brought were queued from the record: ``push`` or ``pass``."""
        if self.metrics is not None:
            self.metrics.messages_reconciled.labels(how).inc(count)

    def push_ordered(self, waited: float, ordered: bool) -> None:
        """A push waited ``waited`` seconds for its ordering read (0 when it needed none)."""
        if self.metrics is not None and waited > 0:
            self.metrics.push_order_wait.labels("ordered" if ordered else "as_came").observe(waited)

    # -- the edges: ServiceNow calls and our routes -------------------------

    def servicenow_attempt(self, method: str, path: str, status: Optional[int], seconds: float) -> None:
        if self.metrics is None:
            return
        endpoint = endpoint_template(path)
        key = (endpoint, method, status)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = (
                self.metrics.servicenow_requests.labels(endpoint, method, status_label(status)),
                self.metrics.servicenow_request_duration.labels(endpoint, method),
            )
        series[0].inc()
        series[1].observe(seconds)

    def servicenow_retry(self, method: str, path: str) -> None:
        if self.metrics is not None:
            self.metrics.servicenow_retries.labels(endpoint_template(path), method).inc()

    def callback_unauthorized(self) -> None:
        if self.metrics is not None:
            self.metrics.callback_auth_failures.inc()

    def input_rejected(self, path: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected_input.labels(route_label(path), rejection_reason(reason)).inc()
