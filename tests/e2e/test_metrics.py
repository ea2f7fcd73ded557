"""Metrics and transition logs in a real ``rasa run`` against the emulator:
a Connect handoff with ``metrics: true`` moves the counters, the route and
``metrics_port`` serve the same registry, and without the option the route
does not exist."""

import json

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import TEXTS, channel_options, point_emulator_at
from tests.e2e.harness import RasaServer, free_port, new_sender, wait_for

PREFIX = "servicenow_handoff_"


def scrape(url: str) -> dict:
    """Every sample of a scrape, by (name, sorted labels)."""
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((PREFIX + name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def metered(e2e_dir, demo_model, emulator, callback):
    port = free_port()
    options = channel_options(emulator, callback, "connect", metrics=True, metrics_port=port, log_format="json")
    server = RasaServer(e2e_dir, demo_model, options, name="rasa-metrics")
    server.start()
    try:
        yield server, f"http://127.0.0.1:{port}/metrics"
    finally:
        server.stop()


def test_a_handoff_moves_the_counters_and_logs_each_transition(metered, emulator, callback):
    server, port_url = metered
    route_url = f"{server.url}/webhooks/servicenow/metrics"
    before = scrape(route_url)
    assert value(before, "handoffs_started_total") == 0

    bad = server.post_raw(b'{"sender": "x", "message": ')
    assert bad.status_code == 400 and bad.json()["reason"] == "InvalidJSON"

    sender = new_sender()
    assert [reply["text"] for reply in server.say(sender, "talk to live agent")] == [TEXTS.connecting]
    chat = server.slots(sender)["live_chat_id"]
    emulator.accept(chat)
    emulator.say(chat, "Hello from the agent")
    callback.wait_for_text(sender, lambda text: text == "Hello from the agent")
    wait_for(lambda: value(scrape(route_url), "live_chats") == 1, what="the live-chat gauge")
    assert server.say(sender, "my secret body text") == []
    server.say(sender, "/end_chat")
    wait_for(lambda: server.slots(sender)["handoff_active"] is False, what="the handoff to end")

    after = scrape(route_url)
    assert value(after, "handoffs_started_total") == 1
    assert value(after, "handoffs_ended_total", reason="user_ended") == 1
    assert value(after, "live_chats") == 0
    assert value(after, "time_to_agent_seconds_count") == 1
    assert value(after, "time_to_open_seconds_count") == 1
    assert value(after, "chat_duration_seconds_count", reason="user_ended") == 1
    assert value(after, "agent_messages_delivered_total") >= 1
    wait_for(
        lambda: value(scrape(route_url), "delivery_latency_seconds_count", sink="callback") >= 1,
        what="the callback delivery to be timed",
    )
    assert value(after, "rejected_input_total", route="webhook", reason="InvalidJSON") == 1
    opened = value(
        after, "servicenow_requests_total",
        endpoint="/api/now/connect/support/queues/{queue}/sessions", method="POST", status="200",
    )
    assert opened == 1
    sent = value(
        after, "servicenow_requests_total",
        endpoint="/api/now/connect/conversations/{group}/messages", method="POST", status="200",
    )
    assert sent == 1
    polls = value(
        after, "servicenow_requests_total",
        endpoint="/api/now/connect/conversations/{group}/messages", method="GET", status="200",
    )
    assert polls >= 1
    left = value(
        after, "servicenow_requests_total",
        endpoint="/api/now/connect/support/sessions/{group}/leave", method="POST", status="200",
    )
    assert left == 1
    assert value(
        after, "servicenow_request_duration_seconds_count",
        endpoint="/api/now/connect/conversations/{group}/messages", method="POST",
    ) == 1

    exposition = requests.get(route_url, timeout=10).text
    assert chat not in exposition and sender not in exposition

    # The port of its own serves the same registry.
    assert value(scrape(port_url), "handoffs_started_total") == 1
    assert value(scrape(port_url), "handoffs_ended_total", reason="user_ended") == 1

    entries = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    transitions = [entry for entry in entries if entry.get("sender_id") == sender and "event" in entry]
    assert [entry["event"] for entry in transitions] == ["handoff_started", "agent_joined", "handoff_ended"]
    assert all(entry["level"] == "INFO" and entry["chat_id"] == chat for entry in transitions)
    ended = transitions[-1]
    assert ended["reason"] == "user_ended" and ended["chat_duration_s"] > 0 and ended["time_to_agent_s"] >= 0
    assert transitions[0]["time_to_open_s"] > 0
    assert not any("my secret body text" in entry["message"] for entry in entries if entry["level"] == "INFO")


@pytest.mark.parametrize("backend", ["connect"], indirect=True)
def test_without_the_option_there_is_no_metrics_route(rasa):
    response = requests.get(f"{rasa.url}/webhooks/servicenow/metrics", timeout=10)
    assert response.status_code == 404


def raw_request(server: RasaServer, request: bytes) -> bytes:
    """Send bytes as they are (framing that an HTTP client library refuses to build)."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(request)
        return connection.recv(65536)


def test_virtual_agent_callbacks_auth_failures_and_duplicates_are_counted(e2e_dir, demo_model, emulator, callback):
    options = channel_options(emulator, callback, "virtual_agent", metrics=True)
    server = RasaServer(e2e_dir, demo_model, options, name="rasa-metrics-va")
    server.start()
    try:
        point_emulator_at(emulator, server)
        route_url = f"{server.url}/webhooks/servicenow/metrics"
        refused = requests.post(
            f"{server.url}/webhooks/servicenow/callback", json={"clientSessionId": "x", "body": []},
            headers={"X-Webhook-Secret": "wrong"}, timeout=10,
        )
        assert refused.status_code == 401
        smuggled = raw_request(
            server,
            b"POST /webhooks/servicenow/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        assert smuggled.startswith(b"HTTP/1.1 400")

        sender = new_sender()
        server.say(sender, "talk to live agent")
        chat = server.slots(sender)["live_chat_id"]
        emulator.accept(chat)
        callback.wait_for_text(sender, lambda text: text.startswith("Thank you for contacting support"))
        emulator.fault(match={"api": "callback", "session": chat, "body_regex": "say it twice"}, respond={"duplicate": True}, times=1)
        emulator.say(chat, "say it twice")
        emulator.say(chat, "marker")
        callback.wait_for_text(sender, lambda text: text == "marker")
        emulator.close(chat)
        wait_for(lambda: server.slots(sender)["handoff_active"] is False, what="the handoff to end")

        after = scrape(route_url)
        assert value(after, "callback_auth_failures_total") == 1
        assert value(after, "rejected_input_total", route="callback", reason="Unauthorized") == 1
        assert value(after, "rejected_input_total", route="webhook", reason="InvalidHeaders") == 1
        assert value(after, "handoffs_started_total") == 1
        assert value(after, "handoffs_ended_total", reason="agent_closed") == 1
        assert value(after, "time_to_agent_seconds_count") == 1
        dropped = value(after, "duplicates_dropped_total", kind="callback") + value(
            after, "duplicates_dropped_total", kind="message"
        )
        assert dropped >= 1
        integration = value(
            after, "servicenow_requests_total",
            endpoint="/api/sn_va_as_service/bot/integration", method="POST", status="200",
        )
        assert integration >= 2  # the start and the end at least
        assert value(after, "delivery_latency_seconds_count", sink="callback") >= 2
    finally:
        server.stop()
