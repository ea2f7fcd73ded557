"""Outbound VA callback delivery (reference 5.4, 5.5): headers and auth, ordering, retries with the same payload,
timeouts, callback fault rules (status, drop, duplicate, delay, body_regex) and the delivery log."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from connectors.servicenow.emulator import EmulatorConfig, start_emulator
from connectors.servicenow.emulator.config import parse_overrides

from .va_support import Answer, VaClient, describe, items_of

LIVE = 8  # callbacks of an AGENT request (3) and of an accept with the greeting (5)
#: How the delivery log shows an auth header: its kind only.
REDACTED = {"Basic": "Basic [redacted]", "Bearer": "Bearer [redacted]"}


def callback_rule(respond, times=1, **match):
    return {"match": {"api": "callback", **match}, "respond": respond, "times": times}


@pytest.mark.parametrize(
    "auth, expected",
    [
        ("none", {}),
        ("basic:svc:p:w", {"Authorization": "Basic " + base64.b64encode(b"svc:p:w").decode()}),
        ("bearer:abc.def", {"Authorization": "Bearer abc.def"}),
        ({"X-Api-Key": "k1", "X-Tenant": "acme"}, {"X-Api-Key": "k1", "X-Tenant": "acme"}),
    ],
)
async def test_callback_headers_and_auth(va, receiver, auth, expected):
    await va.client.ok("POST", "config", {"va_callback_auth": auth})
    await va.send("hi")
    (got,) = await receiver.wait_for(1)
    assert got.path_qs == "/webhook?secret=s3cr3t"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "ServiceNow"
    assert {k: got.headers[k] for k in expected} == expected
    if auth == "none":
        assert "Authorization" not in got.headers
    (logged,) = (await va.settled())["callbacks"]
    assert logged["headers"]["User-Agent"] == "ServiceNow"
    redacted = {name: REDACTED.get(value.partition(" ")[0], "[redacted]") for name, value in expected.items()}
    assert {name: logged["headers"][name] for name in expected} == redacted


async def test_callback_auth_config_is_validated(client):
    for bad in ("basic:nopassword", "bearer:", "digest:x", {str(i): "v" for i in range(11)}, {"X": 1}, 7):
        assert (await client.control("POST", "config", {"va_callback_auth": bad})).status == 400, bad
    for bad in (
        {"va_callback_url": "ftp://x"},
        {"va_batching": "sometimes"},
        {"va_validation": "loose"},
        {"close_style": "abrupt"},
        {"va_callback_retries": -1},
        {"va_callback_retries": 1.5},
        {"va_callback_timeout_ms": 0},
        {"va_escalation_texts": "agent"},
        {"va_static_token": ""},
        {"va_long_action_names": "yes"},
    ):
        assert (await client.control("POST", "config", bad)).status == 400, bad
    assert EmulatorConfig().va_callback_auth == "none"
    assert EmulatorConfig(va_callback_auth={str(i): "v" for i in range(10)}).va_callback_auth


async def test_callbacks_of_a_session_go_out_one_at_a_time_in_creation_order(va, receiver):
    await va.client.ok("POST", "config", {"va_callback_timeout_ms": 60_000})  # the held one stays in flight
    await va.live()
    first = asyncio.Event()
    receiver.script(Answer(hold=first))
    for n in range(5):
        await va.client.ok("POST", "agent/message", {"text": f"message {n}"})
    await receiver.wait_for(LIVE + 1)
    # While the first is unanswered, the next one does not go out (a bounded wait, then release).
    assert not await receiver.arrives_within(LIVE + 2, timeout=0.3)
    first.set()
    await receiver.wait_for(LIVE + 5)
    assert items_of(receiver.payloads[LIVE:]) == [f"OutputText:message {n}" for n in range(5)]
    assert receiver.max_in_flight == 1


async def test_sessions_do_not_wait_for_each_other(va, receiver):
    await va.client.ok("POST", "config", {"va_callback_timeout_ms": 60_000})  # the held one stays in flight
    release = asyncio.Event()
    receiver.script(Answer(hold=release))
    await va.send("hi", session="slow")
    await receiver.wait_for(1)
    await va.send("hi", session="fast")
    await receiver.wait_for(2, timeout=3)
    assert [r.body["clientSessionId"] for r in receiver.received] == ["slow", "fast"]
    release.set()
    await va.settled()


async def test_a_failed_delivery_is_retried_with_the_same_payload(va, receiver):
    await va.client.ok("POST", "config", {"va_callback_retries": 2, "va_callback_retry_delay_ms": 20})
    receiver.script(Answer(status=500), Answer(status=503))
    await va.send("hi")
    attempts = await receiver.wait_for(3)
    assert attempts[0].raw == attempts[1].raw == attempts[2].raw
    log = (await va.settled())["callbacks"]
    assert [(r["attempt"], r["outcome"], r["status"]) for r in log] == [
        (1, "failed", 500),
        (2, "failed", 503),
        (3, "delivered", 200),
    ]
    assert len({r["callback_id"] for r in log}) == 1
    assert all(r["payload"] == attempts[0].body for r in log)


async def test_without_retries_a_failed_delivery_is_lost(va, receiver):
    receiver.script(Answer(status=500))
    await va.send("hi")
    await va.send("hi again")
    await receiver.wait_for(2)
    log = (await va.settled())["callbacks"]
    assert [(r["attempt"], r["outcome"]) for r in log] == [(1, "failed"), (1, "delivered")]
    assert receiver.payloads[0]["requestId"] != receiver.payloads[1]["requestId"]


async def test_a_timed_out_delivery_is_retried_so_the_connector_sees_it_twice(va, receiver):
    await va.client.ok(
        "POST", "config", {"va_callback_timeout_ms": 200, "va_callback_retries": 1, "va_callback_retry_delay_ms": 0}
    )
    slow = asyncio.Event()
    receiver.script(Answer(hold=slow))  # the connector gets it but answers too late
    await va.send("hi")
    first, retry = await receiver.wait_for(2)
    slow.set()
    assert first.raw == retry.raw
    log = (await va.settled())["callbacks"]
    assert [(r["attempt"], r["outcome"]) for r in log] == [(1, "timeout"), (2, "delivered")]
    # The attempt gave up at the timeout, not before it. asyncio may fire a timer up to its clock resolution early and
    # the log rounds to 0.1 ms, so "at the timeout" is judged with a little slack.
    assert log[0]["status"] is None and log[0]["latency_ms"] >= 200 - 5


async def test_status_fault_fails_the_attempt_without_sending(va, receiver):
    await va.client.ok("POST", "config", {"va_callback_retries": 1, "va_callback_retry_delay_ms": 0})
    await va.client.ok("POST", "faults", callback_rule({"status": 502}, session="chat-1"))
    await va.send("hi")
    (got,) = await receiver.wait_for(1)
    log = (await va.settled())["callbacks"]
    assert [(r["attempt"], r["outcome"], r["status"]) for r in log] == [(1, "fault", 502), (2, "delivered", 200)]
    assert log[0]["fault"] is not None and log[1]["fault"] is None
    assert len(receiver.received) == 1 and got.body == log[1]["payload"]


async def test_drop_connection_loses_the_callback(va, receiver):
    await va.client.ok("POST", "faults", callback_rule({"drop_connection": True}))
    await va.send("first")
    await va.send("second")
    (got,) = await receiver.wait_for(1)
    assert got.body["message"]["text"] == "second"
    log = (await va.settled())["callbacks"]
    assert [(r["outcome"], r["payload"]["message"]["text"]) for r in log] == [
        ("dropped", "first"),
        ("delivered", "second"),
    ]


async def test_duplicate_delivers_the_same_callback_twice(va, receiver):
    await va.live()
    await va.client.ok("POST", "faults", callback_rule({"duplicate": True}, body_regex="Hi, I'm Beth"))
    await va.client.ok("POST", "agent/message", {"text": "Hi, I'm Beth"})
    await va.client.ok("POST", "agent/message", {"text": "How can I help?"})
    got = (await receiver.wait_for(LIVE + 3))[LIVE:]
    assert got[0].raw == got[1].raw
    assert items_of([r.body for r in got]) == ["OutputText:Hi, I'm Beth", "OutputText:Hi, I'm Beth",
                                                "OutputText:How can I help?"]
    log = (await va.settled())["callbacks"][LIVE:]
    assert [(r["attempt"], r["duplicate"], r["outcome"]) for r in log] == [
        (1, False, "delivered"),
        (1, True, "delivered"),
        (1, False, "delivered"),
    ]


async def test_delay_holds_one_callback_back_and_the_next_overtakes_it(va, receiver):
    await va.live()
    await va.client.ok("POST", "faults", callback_rule({"delay_ms": 400}, body_regex="first agent message"))
    await va.client.ok("POST", "agent/message", {"text": "first agent message"})
    await va.client.ok("POST", "agent/message", {"text": "second agent message"})
    got = (await receiver.wait_for(LIVE + 2))[LIVE:]
    assert items_of([r.body for r in got]) == ["OutputText:second agent message", "OutputText:first agent message"]


async def test_callback_rules_match_session_and_inbound_rules_never_touch_callbacks(va, receiver):
    rules = [
        callback_rule({"status": 500}, times=None, session="other"),
        # No api: this would match the callback's path, but rules without api are for inbound requests only.
        {"match": {"path_regex": "^/webhook$"}, "respond": {"drop_connection": True}, "times": None},
    ]
    await va.client.ok("POST", "faults", rules)
    await va.send("hi", session="chat-1")
    (got,) = await receiver.wait_for(1)
    assert got.body["clientSessionId"] == "chat-1"
    assert [r["outcome"] for r in (await va.settled())["callbacks"]] == ["delivered"]


async def test_body_regex_and_session_match_inbound_va_requests(va, receiver):
    rule = {"match": {"api": "va", "body_regex": "forbidden words", "session": "chat-1"}, "respond": {"status": 503},
            "times": None}
    await va.client.ok("POST", "faults", rule)
    assert (await va.post(va.body("some forbidden words"))).status == 503
    assert (await va.post(va.body("some forbidden words", session="chat-2"))).status == 200
    assert (await va.post(va.body("harmless"))).status == 200
    (listed,) = (await va.client.ok("GET", "faults"))["faults"]
    assert listed["match"]["body_regex"] == "forbidden words" and listed["fired"] == 1
    assert listed["respond"]["duplicate"] is False


async def test_connection_errors_are_logged_and_retried(va, receiver):
    await va.client.ok("POST", "config", {"va_callback_url": "http://127.0.0.1:1/webhook", "va_callback_retries": 1,
                                          "va_callback_retry_delay_ms": 0})
    await va.send("hi")
    log = (await va.settled())["callbacks"]
    assert [(r["attempt"], r["outcome"]) for r in log] == [(1, "error"), (2, "error")]
    assert log[0]["error"]


async def test_without_a_callback_url_callbacks_are_only_logged(client):
    va = VaClient(client, receiver=None)
    await va.send("I need a human", action="AGENT")
    log = await va.settled()
    assert [(r["outcome"], r["url"]) for r in log["callbacks"]] == [("not_configured", None)] * 3
    assert [describe(r["payload"]["body"][0]) for r in log["callbacks"]][0].startswith("OutputText:Please stand by")


async def test_callback_log_fields_and_session_filter(va, receiver):
    await va.send("hi", session="a")
    await va.send("hi", session="b")
    await receiver.wait_for(2)
    log = await va.settled()
    assert log["pending"] == 0
    entry = log["callbacks"][0]
    assert set(entry) == {
        "callback_id", "session", "url", "headers", "payload", "attempt", "duplicate", "outcome", "status",
        "latency_ms", "fault", "error", "at_ms",
    }
    assert (entry["url"], entry["status"], entry["attempt"], entry["outcome"]) == (receiver.url, 200, 1, "delivered")
    assert entry["latency_ms"] >= 0 and entry["payload"] == receiver.payloads[0]
    only_b = await va.client.ok("GET", "callbacks?session=b")
    assert [c["session"] for c in only_b["callbacks"]] == ["b"]


async def test_pending_counts_unfinished_deliveries(va, receiver):
    release = asyncio.Event()
    receiver.script(Answer(hold=release))
    await va.send("hi")
    await receiver.wait_for(1)
    assert (await va.client.ok("GET", "callbacks"))["pending"] == 1
    release.set()
    assert (await va.settled())["pending"] == 0


async def test_the_http_client_is_closed_with_the_app(receiver):
    emulator = await start_emulator(EmulatorConfig(va_callback_url=receiver.url))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{emulator.url}/api/sn_va_as_service/bot/integration",
                data=json.dumps({"userId": "u", "message": {"text": "hi", "typed": True}}),
                headers={"Accept": "application/json", "Content-Type": "application/json"},
                auth=aiohttp.BasicAuth("rasa.integration", "secret"),
            ) as response:
                assert response.status == 200
        await receiver.wait_for(1)
        http_client = emulator.state.callbacks._http
        assert http_client is not None and not http_client.closed
    finally:
        await emulator.close()
    assert http_client.closed


def test_va_config_defaults_and_cli_overrides():
    config = EmulatorConfig()
    assert (config.va_callback_url, config.va_callback_auth, config.va_callback_timeout_ms) == (None, "none", 5000)
    assert (config.va_callback_retries, config.va_callback_retry_delay_ms) == (0, 1000)
    assert (config.va_static_token, config.va_hash_secret, config.va_silent_token_failure) == (None, None, False)
    assert (config.va_batching, config.va_validation, config.close_style) == ("separate", "strict", "switch")
    assert config.va_escalation_texts == ["agent", "live agent", "Live Agent Support."]
    assert config.va_long_action_names is False
    overridden = config.patched(
        parse_overrides(
            [
                "va_callback_url=http://127.0.0.1:5005/webhooks/servicenow/callback?secret=x",
                'va_callback_auth={"X-Api-Key": "k"}',
                "va_batching=batched",
                "va_callback_retries=2",
                'va_escalation_texts=["human"]',
            ]
        )
    )
    assert overridden.va_callback_url.endswith("?secret=x")
    assert (overridden.va_callback_auth, overridden.va_batching) == ({"X-Api-Key": "k"}, "batched")
    assert (overridden.va_callback_retries, overridden.va_escalation_texts) == (2, ["human"])
