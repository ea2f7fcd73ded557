"""Handoff transitions: one INFO line each, with ids, reason and durations
(never a message body), and the metrics beside them."""

import json
import logging

import pytest

from connectors.servicenow.ops.logs import JSONFormatter
from connectors.servicenow.ops.metrics import PREFIX, HandoffMetrics
from connectors.servicenow.ops.observe import ARRIVALS_KEPT, Observer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def metrics():
    return HandoffMetrics()


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(PREFIX + name, labels) or 0.0


def observer_lines(caplog):
    return [record for record in caplog.records if record.name == "connectors.servicenow.observe"]


def test_a_whole_handoff_is_logged_and_counted_with_its_durations(metrics, clock, caplog):
    observe = Observer(metrics, clock=clock)
    with caplog.at_level(logging.INFO, logger="connectors.servicenow.observe"):
        observe.handoff_started("alice", "chat-1", time_to_open=0.25)
        clock.now += 30
        observe.agent_joined("alice", "chat-1")
        clock.now += 5
        observe.agent_joined("alice", "chat-1")  # a later message of the same agent
        clock.now += 60
        observe.handoff_ended("alice", "chat-1", "user_ended")

    assert value(metrics, "handoffs_started_total") == 1
    assert value(metrics, "handoffs_ended_total", reason="user_ended") == 1
    assert value(metrics, "time_to_agent_seconds_count") == 1
    assert value(metrics, "time_to_agent_seconds_sum") == pytest.approx(30)
    assert value(metrics, "time_to_open_seconds_sum") == pytest.approx(0.25)
    assert value(metrics, "chat_duration_seconds_sum", reason="user_ended") == pytest.approx(95)

    started, joined, ended = observer_lines(caplog)
    assert all(record.levelno == logging.INFO for record in (started, joined, ended))
    assert started.event == "handoff_started" and started.time_to_open_s == 0.25
    assert joined.event == "agent_joined" and joined.time_to_agent_s == 30
    assert ended.event == "handoff_ended" and ended.reason == "user_ended"
    assert ended.chat_duration_s == 95 and ended.time_to_agent_s == 30 and ended.agent_joined is True
    assert "user_ended" in ended.getMessage() and "95.0 s" in ended.getMessage()
    assert ended.chat_id == "chat-1" and ended.sender_id == "alice"


def test_an_end_before_any_agent_says_so(metrics, clock, caplog):
    observe = Observer(metrics, clock=clock)
    with caplog.at_level(logging.INFO, logger="connectors.servicenow.observe"):
        observe.handoff_started("bob", "chat-2", time_to_open=0.1)
        clock.now += 12
        observe.handoff_ended("bob", "chat-2", "returned")
    ended = observer_lines(caplog)[-1]
    assert "none joined" in ended.getMessage()
    assert ended.agent_joined is False and ended.time_to_agent_s is None and ended.chat_duration_s == 12
    assert value(metrics, "time_to_agent_seconds_count") == 0


def test_a_chat_resumed_after_a_restart_has_no_durations(metrics, clock, caplog):
    observe = Observer(metrics, clock=clock)
    with caplog.at_level(logging.INFO, logger="connectors.servicenow.observe"):
        observe.agent_joined("carol", "chat-3")
        observe.agent_joined("carol", "chat-3")
        observe.handoff_ended("carol", "chat-3", "agent_closed")
    joined = [record for record in observer_lines(caplog) if record.event == "agent_joined"]
    assert len(joined) == 1 and joined[0].time_to_agent_s is None
    ended = observer_lines(caplog)[-1]
    assert ended.chat_duration_s is None and "unknown" in ended.getMessage()
    assert value(metrics, "handoffs_ended_total", reason="agent_closed") == 1
    assert value(metrics, "chat_duration_seconds_count", reason="agent_closed") == 0
    assert value(metrics, "time_to_agent_seconds_count") == 0


def test_ids_are_escaped_in_the_line_and_structured_in_json(clock, caplog):
    observe = Observer(None, clock=clock)
    with caplog.at_level(logging.INFO, logger="connectors.servicenow.observe"):
        observe.handoff_started("eve\nINFO forged line", "chat-4", time_to_open=None)
    record = observer_lines(caplog)[-1]
    assert "\n" not in record.getMessage() and "eve\\nINFO forged line" in record.getMessage()
    entry = json.loads(JSONFormatter().format(record))
    assert entry["event"] == "handoff_started"
    assert entry["sender_id"] == "eve\nINFO forged line" and entry["chat_id"] == "chat-4"
    assert entry["time_to_open_s"] is None


def test_without_metrics_it_still_logs_and_records_nothing(clock, caplog):
    observe = Observer(None, clock=clock)
    with caplog.at_level(logging.INFO, logger="connectors.servicenow.observe"):
        observe.handoff_started("dan", "chat-5", 0.2)
        observe.agent_message_queued("box-1", 0.0)
        observe.reached_sink("box-1", "stream")
        observe.duplicate_dropped("message")
        observe.servicenow_attempt("GET", "/x", 200, 0.1)
        observe.handoff_ended("dan", "chat-5", "failed")
    assert [record.event for record in observer_lines(caplog)] == ["handoff_started", "handoff_ended"]
    assert not observe._arrivals


def test_delivery_latency_is_timed_from_arrival_to_each_sink(metrics, monkeypatch):
    observe = Observer(metrics)
    monkeypatch.setattr("connectors.servicenow.ops.observe.time.monotonic", lambda: 10.5)
    observe.agent_message_queued("box-1", arrived=10.0)
    observe.reached_sink("box-1", "stream")
    observe.reached_sink("box-1", "callback")
    observe.reached_sink("box-2", "stream")  # a notice the relay did not queue: not timed
    assert value(metrics, "agent_messages_delivered_total") == 1
    assert value(metrics, "delivery_latency_seconds_sum", sink="stream") == pytest.approx(0.5)
    assert value(metrics, "delivery_latency_seconds_count", sink="stream") == 1
    assert value(metrics, "delivery_latency_seconds_count", sink="callback") == 1


def test_arrival_times_kept_are_bounded(metrics):
    observe = Observer(metrics)
    for number in range(ARRIVALS_KEPT + 50):
        observe.agent_message_queued(f"box-{number}", 0.0)
    assert len(observe._arrivals) == ARRIVALS_KEPT
    assert "box-0" not in observe._arrivals


def test_servicenow_calls_are_counted_by_template_status_and_retry(metrics):
    observe = Observer(metrics)
    group = "a" * 32
    observe.servicenow_attempt("POST", f"/api/now/connect/conversations/{group}/messages", 503, 0.02)
    observe.servicenow_retry("POST", f"/api/now/connect/conversations/{group}/messages")
    observe.servicenow_attempt("POST", f"/api/now/connect/conversations/{group}/messages", 200, 0.03)
    observe.servicenow_attempt("POST", f"/api/now/connect/conversations/{group}/messages", None, 10.0)
    endpoint = "/api/now/connect/conversations/{group}/messages"
    assert value(metrics, "servicenow_requests_total", endpoint=endpoint, method="POST", status="503") == 1
    assert value(metrics, "servicenow_requests_total", endpoint=endpoint, method="POST", status="200") == 1
    assert value(metrics, "servicenow_requests_total", endpoint=endpoint, method="POST", status="error") == 1
    assert value(metrics, "servicenow_retries_total", endpoint=endpoint, method="POST") == 1
    assert value(metrics, "servicenow_request_duration_seconds_count", endpoint=endpoint, method="POST") == 3
    exposed = metrics.render().decode()
    assert group not in exposed


def test_rejections_auth_failures_and_duplicates(metrics):
    observe = Observer(metrics)
    observe.input_rejected("/webhooks/servicenow/webhook", "InvalidJSON")
    observe.input_rejected("/webhooks/servicenow/webhook", "made up")
    observe.callback_unauthorized()
    observe.duplicate_dropped("callback")
    assert value(metrics, "rejected_input_total", route="webhook", reason="InvalidJSON") == 1
    assert value(metrics, "rejected_input_total", route="webhook", reason="other") == 1
    assert value(metrics, "callback_auth_failures_total") == 1
    assert value(metrics, "duplicates_dropped_total", kind="callback") == 1
