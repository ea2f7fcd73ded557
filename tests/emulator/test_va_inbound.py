"""The VA inbound route (reference 2.2, 2.3, 2.6, 5.4): validation, Basic/Bearer, static token, HMAC signature, the
immediate reply, the envelope of the callbacks it causes, and the Virtual Agent's own replies before a handoff."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re

import aiohttp
import pytest

from .va_support import HEX32, VA_PATH, Answer, describe, flags

INVALID = "Invalid request"


async def test_agent_answers_success_then_queues_with_three_callbacks_echoing_the_request(va, receiver):
    body = va.body("I need a human", action="AGENT", clientVariables={"tenant": "acme", "n": [1, 2]})
    reply = await va.post(body)
    assert (reply.status, reply.body) == (200, {"status": "success"})
    payloads = [r.body for r in await receiver.wait_for(3)]
    assert [describe(item) for p in payloads for item in p["body"]] == [
        "OutputText:Please stand by while I connect you to a live agent.",
        "ActionMsg:StartSpinner",
        "ActionMsg:SubscribeToSupportQueue",
    ]
    assert payloads[1]["body"][0] == {
        "uiType": "ActionMsg",
        "actionType": "StartSpinner",
        "spinnerType": "wait_time",
        "message": "Routing you to a live agent...",
        "waitTime": "8 Seconds",
    }
    for payload in payloads:
        assert list(payload) == [
            "requestId",
            "clientSessionId",
            "nowSessionId",
            "message",
            "userId",
            "clientVariables",
            "interactionId",
            "body",
            "agentChat",
            "score",
        ]
        assert payload["requestId"] == body["requestId"]
        assert payload["clientSessionId"] == "chat-1"
        assert payload["nowSessionId"] == ""
        assert payload["message"] == {"text": "I need a human", "typed": True}
        assert payload["userId"] == "abel.tuter"
        assert payload["clientVariables"] == {"tenant": "acme", "n": [1, 2]}
        assert re.match(HEX32, payload["interactionId"])
        assert (payload["agentChat"], payload["score"]) == (True, 1)
    stand_by = payloads[0]["body"][0]
    assert (stand_by["group"], stand_by["maskType"]) == ("DefaultText", "NONE")
    assert re.match(HEX32, stand_by["messageId"])
    summary = (await va.transcript())["session"]
    assert (summary["state"], summary["open"], summary["requestId"]) == ("QUEUED", True, body["requestId"])


async def test_callbacks_echo_the_latest_request_id_and_client_variables(va, receiver):
    await va.escalate(clientVariables={"v": 1})
    later = await va.send("are you there?", clientVariables={"v": 2})
    await va.client.ok("POST", "agent/accept")
    accepted = [r.body for r in await receiver.wait_for(8)][3:]
    assert {p["requestId"] for p in accepted} == {later["requestId"]}
    assert {json.dumps(p["clientVariables"]) for p in accepted} == {'{"v": 2}'}
    # Agent-side callbacks echo the latest user message.
    assert {json.dumps(p["message"]) for p in accepted} == {json.dumps({"text": "are you there?", "typed": True})}


async def test_plain_text_before_a_handoff_gets_the_virtual_agent_greeting(va, receiver):
    sent = await va.send("hi")
    (callback,) = [r.body for r in await receiver.wait_for(1)]
    assert [describe(i) for i in callback["body"]] == [
        "OutputText:Hi, I'm your Virtual Agent. Let me know how I can help you today."
    ]
    assert flags(callback) == {}
    assert callback["message"] == sent["message"]
    assert (await va.transcript())["session"]["state"] == "VA"


@pytest.mark.parametrize("text", ["agent", "live agent", "Live Agent Support.", "  LIVE AGENT SUPPORT. "])
async def test_escalation_texts_start_a_handoff(va, receiver, text):
    await va.send(text)
    first = (await receiver.wait_for(1))[0].body
    assert describe(first["body"][0]) == "OutputText:Please stand by while I connect you to a live agent."
    assert (await va.transcript())["session"]["state"] == "QUEUED"


async def test_escalation_texts_are_configurable(va, receiver):
    await va.client.ok("POST", "config", {"va_escalation_texts": ["human please"]})
    await va.send("agent", session="a")
    await va.send("Human Please", session="b")
    await receiver.wait_until(lambda got: {r.body["clientSessionId"] for r in got} == {"a", "b"} and len(got) >= 4)
    by_session = {r.body["clientSessionId"]: describe(r.body["body"][0]) for r in receiver.received}
    assert by_session["a"].startswith("OutputText:Hi, I'm your Virtual Agent")
    assert (await va.transcript("b"))["session"]["state"] == "QUEUED"


async def test_silent_message_suppresses_virtual_agent_replies(va, receiver):
    await va.send("hi", silentMessage=True)
    await va.send("I need a human", action="AGENT")  # live-agent callbacks are not suppressed
    first = (await receiver.wait_for(1))[0].body
    assert describe(first["body"][0]) == "OutputText:Please stand by while I connect you to a live agent."


@pytest.mark.parametrize(
    "body, detail",
    [
        ({"message": {"text": "hi", "typed": True}}, "'userId' is required"),
        ({"userId": "u", "message": {"text": "hi"}}, "'message.typed' is required"),
        ({"userId": "u", "message": {"typed": True}}, "'message.text' is required"),
        ({"userId": "u"}, "'message.text' is required"),
        ({"userId": "u", "action": "AGENT"}, "'message.text' is required"),
        ({"userId": "u", "action": "END_CONVERSATION", "message": {"text": "bye", "typed": True}}, "must be empty"),
        ({"userId": "u", "action": "DANCE", "message": {"text": "x", "typed": True}}, "Unknown action"),
        ({"userId": "u", "action": "UPDATE_MESSAGES"}, "UPDATE_MESSAGES needs"),
        ({"userId": "u", "message": "hi"}, "'message' must be an object"),
        ({"userId": "u", "contextVariables": [1], "message": {"text": "x", "typed": True}}, "contextVariables"),
    ],
)
async def test_strict_validation_rejects_with_the_failure_envelope(va, body, detail):
    reply = await va.post(body)
    assert reply.status == 400
    assert reply.body["status"] == "failure"
    assert reply.body["error"]["message"] == INVALID
    assert detail in reply.body["error"]["detail"]
    assert (await va.client.ok("GET", "sessions"))["sessions"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"userId": "u", "action": "END_CONVERSATION", "message": {"text": "", "typed": True}},
        {"userId": "u", "action": "TYPING"},
        {"userId": "u", "action": "VIEWING"},
        {"userId": "u", "action": "START_CONVERSATION"},
        {"userId": "u", "action": "SET_USER_TIMEZONE", "timezone": "Europe/Berlin"},
        {"userId": "u", "action": "FAULT_CONVERSATION", "cause": "EXTERNAL_FAILURE"},
        {"userId": "u", "action": "UPDATE_MESSAGES", "message": [{"id": "m1", "status": "sent_to_user"}]},
        {
            "userId": "u",
            "message": {"typed": True, "attachment": [{"url": "https://x/y.png", "contentType": "image/png", "fileName": "y.png"}]},
        },
    ],
)
async def test_strict_validation_accepts_the_text_less_forms(va, body):
    reply = await va.post(body)
    assert (reply.status, reply.body) == (200, {"status": "success"})


async def test_malformed_json_is_400(va):
    reply = await va.post(None, data=b"{not json")
    assert reply.status == 400 and reply.body["status"] == "failure"


async def test_lenient_validation_only_needs_user_id_and_text(va):
    await va.client.ok("POST", "config", {"va_validation": "lenient"})
    assert (await va.post({"userId": "u", "message": {"text": "hi"}})).status == 200
    assert (await va.post({"userId": "u", "action": "DANCE", "message": {"text": "x"}})).status == 200
    assert (await va.post({"userId": "u", "message": {"typed": True}})).status == 400
    # These requests have no clientSessionId: the interactionId names the session.
    (session,) = (await va.client.ok("GET", "sessions"))["sessions"]
    transcript = await va.client.ok("GET", f"transcript/{session['interactionId']}")
    assert [e["action"] for e in transcript["events"]] == ["DANCE"]


async def test_inbound_needs_basic_or_bearer_auth(va):
    body = va.body("hi")
    missing = await va.post(body, auth=None)
    assert missing.status == 401
    assert missing.body == {
        "error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"},
        "status": "failure",
    }
    assert (await va.post(body, auth=aiohttp.BasicAuth("rasa.integration", "nope"))).status == 401
    token = (await va.client.password_token())["access_token"]
    bearer = await va.post(body, auth=None, headers={"Authorization": f"Bearer {token}"})
    assert (bearer.status, bearer.body) == (200, {"status": "success"})
    assert (await va.post(body)).status == 200


async def test_inbound_needs_json_headers(va):
    reply = await va.client.request(
        "POST", VA_PATH, data=b'{"userId": "u"}', auth=aiohttp.BasicAuth("rasa.integration", "secret"),
        headers={"Accept": "application/json", "Content-Type": "text/plain"},
    )
    assert reply.status == 400


async def test_static_token_in_header_or_body_and_the_header_wins(va):
    await va.client.ok("POST", "config", {"va_static_token": "tok-123"})
    body = va.body("hi")
    missing = await va.post(body)
    assert missing.status == 401
    assert missing.body["status"] == "failure"
    assert set(missing.body["error"]) == {"message", "detail"}
    assert (await va.post(body, headers={"token": "tok-123"})).status == 200
    assert (await va.post({**body, "token": "tok-123"})).status == 200
    assert (await va.post({**body, "token": "tok-123"}, headers={"token": "wrong"})).status == 401
    assert (await va.post({**body, "token": "wrong"}, headers={"token": "tok-123"})).status == 200
    assert (await va.post({**body, "token": "wrong"})).status == 401


async def test_rejected_token_has_no_effect(va, receiver):
    await va.client.ok("POST", "config", {"va_static_token": "tok-123"})
    assert (await va.post(va.body("agent", session="rejected"))).status == 401
    assert (await va.client.ok("GET", "sessions"))["sessions"] == []
    await va.post(va.body("hi", session="accepted"), headers={"token": "tok-123"})
    (first,) = await receiver.wait_for(1)
    assert first.body["clientSessionId"] == "accepted"


async def test_silent_token_failure_answers_success_and_does_nothing(va, receiver):
    await va.client.ok("POST", "config", {"va_static_token": "tok-123", "va_silent_token_failure": True})
    reply = await va.post(va.body("agent", session="dropped"))
    assert (reply.status, reply.body) == (200, {"status": "success"})
    await va.post(va.body("hi", session="kept"), headers={"token": "tok-123"})
    (first,) = await receiver.wait_for(1)
    assert first.body["clientSessionId"] == "kept"
    assert [s["session"] for s in (await va.client.ok("GET", "sessions"))["sessions"]] == ["kept"]


def sign(secret: str, body: object, ensure_ascii: bool = True) -> str:
    compact = json.dumps(body, separators=(",", ":"), ensure_ascii=ensure_ascii)
    return hmac.new(secret.encode(), compact.encode(), hashlib.sha1).hexdigest()


async def test_hmac_signature_over_the_compact_json_body(va):
    await va.client.ok("POST", "config", {"va_hash_secret": "shh"})
    body = va.body("hi", clientVariables={"a": 1})
    assert (await va.post(body, headers={"x-b2b-signature": sign("shh", body)})).status == 200
    # The signature is over the re-serialised body, so the sender's whitespace does not matter.
    pretty = json.dumps(body, indent=2).encode()
    assert (await va.post(None, data=pretty, headers={"x-b2b-signature": sign("shh", body)})).status == 200
    assert (await va.post(body, headers={"x-b2b-signature": sign("other", body)})).status == 401
    tampered = {**body, "userId": "someone.else"}
    assert (await va.post(tampered, headers={"x-b2b-signature": sign("shh", body)})).status == 401
    missing = await va.post(body)
    assert missing.status == 401 and missing.body["status"] == "failure"
    assert (await va.post(body, headers={"x-b2b-signature": "zz-\u00e9"})).status == 401  # not a 500


async def test_hmac_of_non_ascii_text_matches_either_serialisation(va):
    await va.client.ok("POST", "config", {"va_hash_secret": "shh"})
    body = va.body("Grüße, ça va?")
    assert (await va.post(body, headers={"x-b2b-signature": sign("shh", body, ensure_ascii=True)})).status == 200
    assert (await va.post(body, headers={"x-b2b-signature": sign("shh", body, ensure_ascii=False)})).status == 200


async def test_token_and_signature_together(va):
    await va.client.ok("POST", "config", {"va_static_token": "tok", "va_hash_secret": "shh"})
    body = va.body("hi")
    assert (await va.post(body, headers={"token": "tok"})).status == 401
    assert (await va.post(body, headers={"x-b2b-signature": sign("shh", body)})).status == 401
    assert (await va.post(body, headers={"token": "tok", "x-b2b-signature": sign("shh", body)})).status == 200


async def test_request_log_redacts_the_static_token(va):
    await va.client.ok("POST", "config", {"va_static_token": "tok-123"})
    await va.post({**va.body("hi"), "token": "tok-123"}, headers={"token": "tok-123"})
    (logged,) = (await va.client.ok("GET", "requests"))["requests"]
    assert logged["headers"]["token"] == "[redacted]"
    assert logged["body"]["token"] == "[redacted]"
    assert "tok-123" not in json.dumps(await va.transcript())


async def test_the_reply_does_not_wait_for_the_callbacks(va, receiver):
    await va.client.ok("POST", "config", {"va_callback_timeout_ms": 60_000})  # the held one stays in flight
    release = asyncio.Event()
    receiver.script(Answer(hold=release))
    # Were the callbacks sent before answering, this reply would wait for the held one.
    reply = await asyncio.wait_for(va.post(va.body("agent")), 3)
    assert reply.status == 200
    await receiver.wait_for(1)
    release.set()
    await receiver.wait_for(3)


async def test_sessions_are_keyed_by_app_user_and_client_session(va, receiver):
    await va.send("hi", session="same", user="u1")
    await va.send("hi", session="same", user="u2")
    await va.send("hi", session="same", user="u1", appInboundId="second-bot")
    await va.send("hi again", session="same", user="u1")
    sessions = (await va.client.ok("GET", "sessions"))["sessions"]
    assert [(s["userId"], s["appInboundId"]) for s in sessions] == [
        ("u1", "default"),
        ("u2", "default"),
        ("u1", "second-bot"),
    ]
    assert len({s["interactionId"] for s in sessions}) == 3
    # Shared clientSessionId: the control plane asks for the interactionId.
    assert (await va.client.control("GET", "transcript/same")).status == 409
    first = await va.client.ok("GET", f"transcript/{sessions[0]['interactionId']}")
    assert [m["message"] for m in first["messages"]] == ["hi", "hi again"]


async def test_rate_limit_and_faults_apply_to_the_va_api(va):
    await va.client.ok("POST", "faults", {"per_user_per_hour": 1, "scope": "va"})
    assert (await va.post(va.body("hi"))).status == 200
    limited = await va.post(va.body("hi"))
    assert limited.status == 429
    assert limited.body["error"]["detail"] == "Rate limit of 1 requests per hour for VA Bot Integration API exceeded"
    assert (await va.client.api("GET", "/support/queues")).status == 200  # Connect is not counted
