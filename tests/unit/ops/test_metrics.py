"""The metrics module: names, bounded labels, a registry per channel."""

import re

from prometheus_client.parser import text_string_to_metric_families

from connectors.servicenow.ops.metrics import (
    PREFIX,
    HandoffMetrics,
    endpoint_template,
    rejection_reason,
    route_label,
    status_label,
)

GROUP = "0123456789abcdef0123456789abcdef"


def test_servicenow_paths_become_route_templates_without_ids():
    assert endpoint_template(f"/api/now/connect/conversations/{GROUP}/messages") == (
        "/api/now/connect/conversations/{group}/messages"
    )
    assert endpoint_template("/api/now/connect/support/queues/q1/sessions") == "/api/now/connect/support/queues/{queue}/sessions"
    assert endpoint_template(f"/api/now/connect/support/sessions/{GROUP}/leave") == (
        "/api/now/connect/support/sessions/{group}/leave"
    )
    assert endpoint_template("/api/now/connect/support/sessions?group_id=x") == "/api/now/connect/support/sessions"
    assert endpoint_template("/api/sn_va_as_service/bot/integration") == "/api/sn_va_as_service/bot/integration"
    assert endpoint_template("/oauth_token.do") == "/oauth_token.do"
    assert endpoint_template(f"/api/now/table/incident/{GROUP}") == "other"
    assert endpoint_template(f"/api/now/connect/conversations/{GROUP}/messages/extra") == "other"


def test_labels_stay_within_a_bounded_set():
    assert rejection_reason("InvalidJSON") == "InvalidJSON"
    assert rejection_reason("Something\nforged") == "other"
    assert route_label("/webhooks/servicenow/webhook") == "webhook"
    assert route_label("/webhooks/servicenow/") == "health"
    assert route_label("/webhooks/servicenow/chat/../../etc") == "other"
    assert status_label(200) == "200"
    assert status_label(None) == "error"
    assert status_label(999) == "other"


def test_each_channel_has_its_own_registry():
    first, second = HandoffMetrics(), HandoffMetrics()
    first.handoffs_started.inc()
    assert first.registry.get_sample_value(PREFIX + "handoffs_started_total") == 1
    assert second.registry.get_sample_value(PREFIX + "handoffs_started_total") == 0


def test_names_follow_prometheus_conventions():
    metrics = HandoffMetrics()
    metrics.read_live_chats(lambda: 0)
    metrics.read_outbox_backlog(lambda: 0)
    metrics.read_open_streams(lambda kind: 0, ("sse", "socketio"), lambda: 0)
    families = list(text_string_to_metric_families(metrics.render().decode()))
    assert families
    for family in families:
        assert family.name.startswith(PREFIX), family.name
        assert re.fullmatch(r"[a-z_]+", family.name), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
    counters = [sample.name for family in families if family.type == "counter" for sample in family.samples]
    assert counters and all(name.endswith(("_total", "_created")) for name in counters)


def test_gauges_are_read_at_scrape_time():
    metrics = HandoffMetrics()
    live = [3]
    metrics.read_live_chats(lambda: live[0])
    metrics.read_outbox_backlog(lambda: 7)
    assert metrics.registry.get_sample_value(PREFIX + "live_chats") == 3
    live[0] = 1
    assert metrics.registry.get_sample_value(PREFIX + "live_chats") == 1
    assert metrics.registry.get_sample_value(PREFIX + "outbox_backlog") == 7


def test_open_streams_by_kind_and_socketio_readers_are_read_at_scrape_time():
    """Issue 22: 3,000 socket.io readers were counted nowhere."""
    metrics = HandoffMetrics()
    open_by_kind = {"sse": 2, "socketio": 5}
    metrics.read_open_streams(lambda kind: open_by_kind[kind], ("sse", "socketio"), lambda: 4)
    assert metrics.registry.get_sample_value(PREFIX + "open_streams", {"kind": "sse"}) == 2
    assert metrics.registry.get_sample_value(PREFIX + "open_streams", {"kind": "socketio"}) == 5
    open_by_kind["socketio"] = 1
    assert metrics.registry.get_sample_value(PREFIX + "open_streams", {"kind": "socketio"}) == 1
    assert metrics.registry.get_sample_value(PREFIX + "socketio_readers") == 4


def test_names_lists_every_series_even_before_it_is_touched():
    names = HandoffMetrics().names()
    assert PREFIX + "handoffs_ended_total" in names
    assert PREFIX + "time_to_agent_seconds_bucket" in names
    assert PREFIX + "live_chats" in names
    assert PREFIX + "handoffs_ended" not in names
