"""The Virtual Agent client against a mocked instance, and its reading of callbacks."""

import hashlib
import hmac
import json

import aiohttp
import pytest
from aioresponses import aioresponses

from connectors.servicenow.servicenow.base import (
    AgentJoined,
    AgentMessage,
    AgentTyping,
    ChatClosed,
    CloseReason,
    HandoffRequest,
    Requester,
    SystemNotice,
    Turn,
)
from connectors.servicenow.servicenow.http import ServiceNowHTTP
from connectors.servicenow.servicenow.virtual_agent import SENDER_VARIABLE, CallbackError, VirtualAgentBackend
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.errors import ServiceNowRejected
from connectors.servicenow.core.chat import LiveChat

BASE = "https://acme.service-now.com"
URL = BASE + "/api/sn_va_as_service/bot/integration"
OPTIONS = {
    "instance_url": BASE, "api": "virtual_agent", "username": "bot", "password": "pw",
    "webhook_secret": "s3cret", "context_variables": {"b2b_category": "it"}, "language": "en",
}


async def no_sleep(_delay):
    return None


@pytest.fixture
async def backend_factory():
    clients = []

    def make(**overrides):
        settings = ServiceNowSettings.from_credentials({**OPTIONS, **overrides})
        http = ServiceNowHTTP(settings, sleep=no_sleep)
        clients.append(http)
        return VirtualAgentBackend(settings, http)

    yield make
    for http in clients:
        await http.aclose()


def sent(mock, index=-1):
    call = mock.requests[("POST", aiohttp.client.URL(URL))][index]
    return json.loads(call.kwargs["data"]), call.kwargs["headers"]


CHAT = LiveChat(sender_id="rasa-user", chat_id="c" * 32, user="abel.tuter")


async def test_the_handoff_is_an_agent_action_with_routing_identity_and_history(backend_factory):
    backend = backend_factory()
    request = HandoffRequest(
        sender_id="rasa-user",
        text="my laptop is broken",
        # The backend sends the identity the channel settled, never the metadata's own claims.
        metadata={"userId": "mallory", "emailId": "mallory@example.com", "language": "de", "timezone": "Europe/Berlin"},
        context_variables={"priority": "high"},
        history=[Turn("hi", False, 1000.0), Turn("Hello! How can I help?", True, 2000.0)],
        requester=Requester(user_id="abel.tuter", email="abel@example.com", name="Abel Tuter"),
    )
    with aioresponses() as mock:
        mock.post(URL, payload={"status": "success"})
        opened = await backend.open_chat(request, "chat-1")
        body, _ = sent(mock)
    assert opened.chat_id == "chat-1" and opened.user == "abel.tuter"
    assert body["action"] == "AGENT" and body["clientSessionId"] == "chat-1"
    assert body["message"]["text"] == "my laptop is broken" and body["message"]["typed"] is True
    assert body["userId"] == "abel.tuter" and body["emailId"] == "abel@example.com"
    assert body["timezone"] == "Europe/Berlin"
    assert body["contextVariables"] == {"requester_session_language": "de", "b2b_category": "it", "priority": "high"}
    assert body["clientVariables"] == {SENDER_VARIABLE: "rasa-user"}
    assert body["history"] == [
        {"displayName": "Abel Tuter", "isBotMessage": False, "timestamp": "1000", "type": "text", "value": "hi"},
        {"displayName": "Virtual Agent", "isBotMessage": True, "timestamp": "2000", "type": "text", "value": "Hello! How can I help?"},
    ]
    assert len(body["requestId"]) == 32


async def test_without_metadata_the_rasa_sender_is_the_user(backend_factory):
    with aioresponses() as mock:
        mock.post(URL, payload={"status": "success"})
        opened = await backend_factory().open_chat(HandoffRequest(sender_id="rasa-user", text="help"))
        body, _ = sent(mock)
    assert body["userId"] == "rasa-user" and opened.user == "rasa-user"
    assert "history" not in body and body["contextVariables"] == {"requester_session_language": "en", "b2b_category": "it"}


async def test_message_auth_sends_the_token_and_the_signature_of_the_exact_body(backend_factory):
    backend = backend_factory(message_token="tok", message_hash_secret="hash")
    with aioresponses() as mock:
        mock.post(URL, payload={"status": "success"})
        await backend.send(CHAT.ref, "hello")
        call = mock.requests[("POST", aiohttp.client.URL(URL))][0]
    raw = call.kwargs["data"]
    assert call.kwargs["headers"]["token"] == "tok"
    assert call.kwargs["headers"]["x-b2b-signature"] == hmac.new(b"hash", raw, hashlib.sha1).hexdigest()
    assert raw == json.dumps(json.loads(raw), separators=(",", ":")).encode()  # the compact form ServiceNow checks


async def test_a_failure_status_is_a_rejection(backend_factory):
    with aioresponses() as mock:
        mock.post(URL, payload={"status": "failure", "error": {"message": "Invalid userId"}})
        with pytest.raises(ServiceNowRejected, match="refused"):
            await backend_factory().send(CHAT.ref, "hello")


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda b: b.leave(CHAT.ref), {"action": "END_CONVERSATION", "message_text": ""}),
        (lambda b: b.abort(CHAT.ref, "EXTERNAL_FAILURE"), {"action": "FAULT_CONVERSATION", "cause": "EXTERNAL_FAILURE"}),
        (lambda b: b.send_typing(CHAT.ref, True), {"action": "TYPING"}),
        (lambda b: b.send_typing(CHAT.ref, False), {"action": "VIEWING"}),
        (lambda b: b.report_delivery(CHAT.ref, "m1", True), {"action": "UPDATE_MESSAGES", "message": {"id": "m1", "status": "sent_to_user", "typed": True}}),
        (lambda b: b.report_delivery(CHAT.ref, "m1", False), {"action": "UPDATE_MESSAGES", "message": {"id": "m1", "status": "external_error", "typed": True}}),
    ],
)
async def test_actions(backend_factory, call, expected):
    with aioresponses() as mock:
        mock.post(URL, payload={"status": "success"})
        await call(backend_factory())
        body, _ = sent(mock)
    assert body["clientSessionId"] == CHAT.chat_id and body["userId"] == "abel.tuter"
    for key, value in expected.items():
        if key == "message_text":
            assert body["message"]["text"] == value
        else:
            assert body[key] == value


def callback(body, **flags):
    return {
        "requestId": "r1", "clientSessionId": "chat-1", "nowSessionId": "", "userId": "abel.tuter",
        "clientVariables": {SENDER_VARIABLE: "rasa-user"}, "interactionId": "i1", "body": body, "score": 1, **flags,
    }


def parse(payload):
    return VirtualAgentBackend(ServiceNowSettings.from_credentials(OPTIONS), http=None).parse_callback(payload)


def test_the_live_agent_lifecycle_becomes_events():
    queued = parse(callback([
        {"uiType": "OutputText", "group": "DefaultText", "value": "Please stand by while I connect you to a live agent."},
        {"uiType": "ActionMsg", "actionType": "StartSpinner", "spinnerType": "wait_time", "message": "Routing you to a live agent...", "waitTime": "8 Seconds"},
        {"uiType": "ActionMsg", "actionType": "SubscribeToSupportQueue"},
    ], agentChat=True))
    assert queued.chat_id == "chat-1" and queued.sender_id == "rasa-user"
    stand_by, wait = queued.events
    assert isinstance(stand_by, SystemNotice) and stand_by.kind == "system"
    assert wait.kind == "wait" and wait.text == "Routing you to a live agent..." and wait.details == {"wait_time": "8 Seconds"}

    accepted = parse(callback([
        {"uiType": "ActionMsg", "actionType": "EndSpinner", "spinnerType": "wait_time"},
        {"uiType": "ActionMsg", "actionType": "SwitchToLiveAgent"},
        {"uiType": "ActionMsg", "actionType": "System", "message": "Beth Anglin has entered the chat."},
        {"uiType": "ActionMsg", "actionType": "StartTypingIndicatorActionMsg"},
        {"uiType": "OutputText", "group": "DefaultText", "value": "Hi, Beth here.", "messageId": "m1",
         "agentInfo": {"sentFromAgent": True, "agentName": "Beth Anglin", "agentId": "a1"}},
        {"uiType": "ActionMsg", "actionType": "EndTypingIndicator"},
    ], agentChat=True))
    assert accepted.events[0] == AgentJoined(None)
    assert accepted.events[1].text == "Beth Anglin has entered the chat."
    assert accepted.events[2] == AgentTyping(True)
    message = accepted.events[3]
    assert isinstance(message, AgentMessage) and (message.message_id, message.text, message.agent_name) == ("m1", "Hi, Beth here.", "Beth Anglin")
    assert accepted.events[4] == AgentTyping(False)

    closed = parse(callback([
        {"uiType": "ActionMsg", "actionType": "System", "message": "Beth Anglin has closed the support session."},
        {"uiType": "ActionMsg", "actionType": "SwitchToVirtualAgent"},
    ], agentChat=True))
    assert [event.reason for event in closed.events] == [CloseReason.AGENT_CLOSED, CloseReason.AGENT_CLOSED]


def test_structured_end_signals_need_no_english_text():
    assert parse(callback([{"uiType": "ActionMsg", "actionType": "SwitchToVirtualAgent"}])).events[0].reason is CloseReason.AGENT_CLOSED
    no_agents = parse(callback([{"uiType": "OutputText", "value": "Es ist gerade niemand da."}], takeControl=True))
    assert isinstance(no_agents.events[0], SystemNotice) and no_agents.events[0].kind == "virtual_agent"
    assert no_agents.events[1] == ChatClosed(CloseReason.RETURNED)
    assert parse(callback([], completed=True)).events == [ChatClosed(CloseReason.AGENT_CLOSED)]


def test_rich_items_map_to_rasa_message_fields():
    agent = {"sentFromAgent": True, "agentName": "Beth"}
    events = parse(callback([
        {"uiType": "OutputImage", "value": "https://x/img.png", "label": "Screenshot", "agentInfo": agent, "messageId": "i"},
        {"uiType": "OutputLink", "label": "Reset your password", "value": {"action": "https://kb/42"}, "agentInfo": agent, "messageId": "l"},
        {"uiType": "OutputHtml", "value": "<b>Bold</b> &amp; clear", "agentInfo": agent, "messageId": "h"},
        {"uiType": "OutputCard", "data": json.dumps({"title": "INC001", "fields": [{"fieldLabel": "State", "fieldValue": "New"}]}), "agentInfo": agent, "messageId": "c"},
        {"uiType": "Picker", "label": "Pick one", "options": [{"label": "Yes", "value": "yes"}, {"label": "No", "value": "no"}], "agentInfo": agent, "messageId": "p"},
    ], agentChat=True)).events
    image, link, html, card, picker = events
    assert (image.text, image.rich) == ("Screenshot", {"image": "https://x/img.png"})
    assert (link.text, link.rich) == ("Reset your password", {"attachment": "https://kb/42"})
    assert html.text == "Bold  & clear" and html.rich["custom"]["html"].startswith("<b>")
    assert card.text == "INC001\nState: New" and card.rich["custom"]["card"]["title"] == "INC001"
    assert picker.rich == {"buttons": [{"title": "Yes", "payload": "yes"}, {"title": "No", "payload": "no"}]}


def test_a_link_or_image_that_is_not_a_plain_web_url_is_not_passed_on():
    """The security review's OutputLink (issue 22): newlines in the URL smuggle
    Markdown; a javascript: image. Neither reaches any sink as a URL."""
    agent = {"sentFromAgent": True, "agentName": "Mallory"}
    smuggled = "https://example.com/\n\n[z]:javascript:alert%28document.domain%29\n[Click]\t[z]"
    events = parse(callback([
        {"uiType": "OutputLink", "value": {"action": smuggled}, "agentInfo": agent, "messageId": "l1"},
        {"uiType": "OutputLink", "label": "Open", "value": {"action": "javascript:alert(1)"}, "agentInfo": agent, "messageId": "l2"},
        {"uiType": "OutputImage", "label": "pic", "value": "javascript:alert(2)", "agentInfo": agent, "messageId": "i"},
    ], agentChat=True)).events
    # The unlabelled link says nothing once its URL is refused.
    labelled, image = events
    assert (labelled.text, labelled.rich) == ("Open", {})
    assert (image.text, image.rich) == ("pic", {})


def test_a_repeated_callback_has_the_same_fingerprint_and_ids():
    payload = callback([{"uiType": "OutputText", "value": "Please stand by."}], agentChat=True)
    first, again = parse(payload), parse(json.loads(json.dumps(payload)))
    assert first.fingerprint == again.fingerprint
    assert first.events[0].message_id == again.events[0].message_id
    assert parse(callback([{"uiType": "OutputText", "value": "Something else."}])).fingerprint != first.fingerprint


@pytest.mark.parametrize("payload", [{"body": []}, {"clientSessionId": "", "body": []}, {"clientSessionId": "c", "body": {}}])
def test_malformed_callbacks_are_refused(payload):
    with pytest.raises(CallbackError):
        parse(payload)


# -- hostile callbacks: parse_callback is total ---------------------------------

import random  # noqa: E402

from connectors.servicenow.errors import UnsafeChatId  # noqa: E402


def junk(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if roll < 0.6 or depth > 3:
        return rng.choice([None, True, False, 0, -1, 2**70, 1.5, "", " ", "x", "\x00", "a\nb", "{", "[1]", '{"fields": 3}'])
    if roll < 0.8:
        return [junk(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["uiType", "value", "label", "header", "messageId", "agentInfo", "actionType", "options", "data",
            "fields", "title", "agentName", "sentFromAgent", "spinnerType", "waitTime", "message", "promptMsg"]
    return {rng.choice(keys): junk(rng, depth + 1) for _ in range(rng.randint(0, 5))}


UI_TYPES = ["OutputText", "OutputImage", "OutputLink", "OutputHtml", "OutputCard", "Picker", "ActionMsg", None, 7]


def test_parse_callback_answers_any_json_object_with_a_callback_or_a_callback_error():
    rng = random.Random(8)
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(3000):
        items = []
        for _ in range(rng.randint(0, 4)):
            item = junk(rng)
            if isinstance(item, dict) and rng.random() < 0.8:
                item["uiType"] = rng.choice(UI_TYPES)
                if item["uiType"] == "ActionMsg":
                    item["actionType"] = rng.choice(["System", "StartSpinner", "SwitchToLiveAgent", "StartTypingIndicator", junk(rng)])
                    item["spinnerType"] = "wait_time"
            items.append(item)
        payload = callback(items if rng.random() < 0.9 else junk(rng))
        for key in ("clientSessionId", "clientVariables", "agentChat", "completed", "takeControl"):
            if rng.random() < 0.2:
                payload[key] = junk(rng)
        try:
            parsed = parse(payload)
        except CallbackError:
            outcomes["refused"] += 1
            continue
        outcomes["parsed"] += 1
        for event in parsed.events:
            for field in ("text", "message_id", "agent_name"):
                value = getattr(event, field, None)
                assert value is None or isinstance(value, str)
    assert outcomes["parsed"] > 500 and outcomes["refused"] > 500


@pytest.mark.parametrize("fields", [3, "abc", {"fieldLabel": "a"}, None, [1, "x", None]])
def test_a_card_whose_fields_are_not_a_list_of_objects_keeps_its_title(fields):
    parsed = parse(callback([{"uiType": "OutputCard", "data": {"title": "Incident INC1", "fields": fields}}]))
    assert parsed.events[0].text == "Incident INC1"


def test_a_card_sent_as_deeply_nested_json_text_is_not_a_recursion_error():
    parsed = parse(callback([{"uiType": "OutputCard", "label": "Card", "data": "[" * 100_000}]))
    assert parsed.events[0].text == "Card"


@pytest.mark.parametrize("body", [["text"], [1], [None], [{"uiType": "OutputText", "value": "hi"}, []]])
def test_body_items_that_are_not_objects_refuse_the_callback(body):
    with pytest.raises(CallbackError):
        parse(callback(body))


@pytest.mark.parametrize("chat_id", ["../../api/now/table/sys_user", "a/b", "a?b=c", "x" * 129, "id\nbreak", " c1", "c.1"])
def test_a_session_id_this_channel_could_not_have_issued_refuses_the_callback(chat_id):
    with pytest.raises(CallbackError):
        parse({**callback([]), "clientSessionId": chat_id})


@pytest.mark.parametrize("sender", ["a\nb", "", 42, {"x": 1}, " padded"])
def test_an_echoed_sender_that_is_not_a_valid_id_is_ignored(sender):
    assert parse({**callback([]), "clientVariables": {SENDER_VARIABLE: sender}}).sender_id is None


def test_structured_values_are_not_shown_as_python_reprs():
    parsed = parse(callback([
        {"uiType": "OutputText", "value": "hi", "agentInfo": {"agentName": {"first": "Beth"}}, "messageId": ["m"]},
        {"uiType": "Picker", "promptMsg": "Pick", "options": [{"label": {"x": 1}, "value": "a"}, {"label": None, "value": None}]},
    ]))
    message, picker = parsed.events
    assert message.agent_name is None and "{" not in message.message_id
    assert picker.details["buttons"] == [{"title": "a", "payload": "a"}]


async def test_a_malformed_chat_id_from_the_tracker_is_never_sent(backend_factory):
    backend = backend_factory()
    crafted = LiveChat(sender_id="rasa-user", chat_id="c1\", \"action\": \"x", user="abel.tuter")
    with aioresponses() as mock:
        with pytest.raises(UnsafeChatId):
            await backend.send(crafted.ref, "hello")
        with pytest.raises(UnsafeChatId):
            await backend.leave(crafted.ref)
        assert not mock.requests
