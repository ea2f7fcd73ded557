"""Virtual Agent behaviours on top of the shared suite: the authenticated
callback, repeated and reordered callbacks, typing and wait notices in both
directions, ServiceNow handing the chat back (no agents, time-out), the
history sent with the handoff, and delivery reports."""

import pytest
import requests

from tests.e2e.conftest import TEXTS, WEBHOOK_SECRET, Handoff
from tests.e2e.harness import new_sender, wait_for

pytestmark = pytest.mark.parametrize("backend", ["virtual_agent"], indirect=True)


@pytest.fixture
def va(handoff: Handoff) -> Handoff:
    return handoff


def callback_url(va: Handoff) -> str:
    return f"{va.rasa.url}/webhooks/servicenow/callback"


def agent_says(chat: str, text: str) -> dict:
    return {
        "requestId": "r1", "clientSessionId": chat, "nowSessionId": "", "userId": "u", "clientVariables": {},
        "agentChat": True, "score": 1,
        "body": [{"uiType": "OutputText", "group": "DefaultText", "value": text, "messageId": text.replace(" ", "-"),
                  "agentInfo": {"sentFromAgent": True, "agentName": "Mallory"}}],
    }


def transcript_events(va: Handoff, chat: str) -> list:
    return va.emulator.get(f"transcript/{chat}")["events"]


@pytest.mark.parametrize("headers", [{}, {"X-Webhook-Secret": "wrong"}, {"Authorization": "Bearer " + WEBHOOK_SECRET}])
def test_a_callback_without_the_secret_gets_401_and_changes_nothing(va: Handoff, headers):
    sender = new_sender()
    chat = va.start_live(sender)
    response = requests.post(callback_url(va), json=agent_says(chat, "forged message"), headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json()["status"] == "failure"

    # The genuine agent still gets through afterwards, the forged text never did.
    va.emulator.say(chat, "genuine message")
    va.callback.wait_for_text(sender, lambda text: text == "genuine message")
    assert "forged message" not in va.callback.texts(sender)


def test_a_callback_with_the_secret_is_answered_before_the_user_is_reached(va: Handoff):
    sender = new_sender()
    chat = va.start_live(sender)
    # ServiceNow gives up on a push after a few seconds, so the answer must not wait for a slow frontend.
    va.callback.answering.clear()
    try:
        response = requests.post(
            callback_url(va), json=agent_says(chat, "pushed by hand"), headers={"X-Webhook-Secret": WEBHOOK_SECRET},
            timeout=10,
        )
        assert response.status_code == 200 and response.json() == {"status": "success"}
        assert "pushed by hand" not in va.callback.texts(sender)
    finally:
        va.callback.answering.set()
    va.callback.wait_for_text(sender, lambda text: text == "pushed by hand")


def test_malformed_callbacks_get_400(va: Handoff):
    headers = {"X-Webhook-Secret": WEBHOOK_SECRET, "Content-Type": "application/json"}
    for body in (b"{oops", b"[]", b'{"body": []}', b'{"clientSessionId": "c", "body": "x"}'):
        assert requests.post(callback_url(va), data=body, headers=headers, timeout=10).status_code == 400


def test_wrong_secret_configured_in_servicenow_delivers_nothing(va: Handoff):
    sender = new_sender()
    chat = va.start_live(sender)
    va.emulator.configure(va_callback_auth={"X-Webhook-Secret": "not-the-secret"}, va_callback_retries=0)
    va.emulator.say(chat, "lost to a misconfiguration")

    def refused() -> bool:
        deliveries = [d for d in va.emulator.get("callbacks")["callbacks"] if "lost to a misconfiguration" in str(d["payload"])]
        return bool(deliveries) and deliveries[-1]["status"] == 401

    wait_for(refused, what="the connector to refuse the callback")
    assert "lost to a misconfiguration" not in va.callback.texts(sender)
    assert va.rasa.slots(sender)["handoff_active"] is True


def test_repeated_callbacks_are_delivered_once(va: Handoff):
    sender = new_sender()
    chat = va.start_live(sender)
    va.emulator.fault(match={"api": "callback", "session": chat, "body_regex": "say it twice"}, respond={"duplicate": True}, times=1)
    va.emulator.fault(match={"api": "callback", "session": chat, "body_regex": "fails once"}, respond={"status": 500}, times=1)
    va.emulator.say(chat, "say it twice")
    va.emulator.say(chat, "fails once")
    va.emulator.say(chat, "marker")
    va.callback.wait_for_text(sender, lambda text: text == "marker")
    va.callback.wait_for_text(sender, lambda text: text == "fails once")  # delivered by ServiceNow's retry

    texts = va.callback.agent_texts(sender)
    assert texts.count("say it twice") == 1 and texts.count("fails once") == 1


def test_the_agents_last_words_come_before_the_end_even_when_overtaken(va: Handoff):
    sender = new_sender()
    chat = va.start_live(sender)
    va.emulator.fault(match={"api": "callback", "session": chat, "body_regex": "last words"}, respond={"delay_ms": 250}, times=1)
    va.emulator.say(chat, "last words")
    va.emulator.close(chat)

    va.callback.wait_for_text(sender, lambda text: text == TEXTS.agent_closed)
    texts = va.callback.texts(sender)
    assert texts.index("last words") < texts.index(TEXTS.agent_closed)
    va.assert_slots_cleared(sender)


def test_a_queue_notice_overtaken_by_the_agent_is_not_shown(va: Handoff):
    sender = new_sender()
    va.emulator.fault(match={"api": "callback", "body_regex": "StartSpinner"}, respond={"delay_ms": 600}, times=1)
    chat = va.start(sender)
    va.emulator.accept(chat)
    va.emulator.say(chat, "Hi there")
    va.callback.wait_for_text(sender, lambda text: text == "Hi there")

    def spinner_delivered() -> bool:
        return any("StartSpinner" in str(d["payload"]) and d["status"] == 200 for d in va.emulator.get("callbacks")["callbacks"]
                   if d["payload"].get("clientSessionId") == chat)

    wait_for(spinner_delivered, what="the late queue notice to reach the connector")
    va.emulator.say(chat, "marker")
    va.callback.wait_for_text(sender, lambda text: text == "marker")
    assert "Routing you to a live agent..." not in va.callback.texts(sender)


def test_wait_notices_and_typing_reach_the_user_as_such(va: Handoff):
    sender = new_sender()
    chat = va.start(sender)
    wait_notice = None

    def notice() -> bool:
        nonlocal wait_notice
        wait_notice = next((i for i in va.callback.for_user(sender) if (i.get("metadata") or {}).get("kind") == "wait"), None)
        return wait_notice is not None

    wait_for(notice, what="the wait notice")
    assert wait_notice["text"] == "Routing you to a live agent..."
    assert wait_notice["metadata"]["wait_time"] == "8 Seconds"

    va.emulator.accept(chat)
    va.emulator.control("agent/typing", {"session": chat, "on": True})
    va.emulator.control("agent/typing", {"session": chat, "on": False})
    va.emulator.say(chat, "typed it")
    va.callback.wait_for_text(sender, lambda text: text == "typed it")
    typing = [item["typing"] for item in va.callback.events(sender) if "typing" in item]
    assert typing == [True, False]
    assert any(text.endswith("has entered the chat.") for text in va.callback.texts(sender))


def test_the_users_typing_is_shown_to_the_agent(va: Handoff):
    sender = new_sender()
    chat = va.start_live(sender)
    for typing in (True, False):
        response = requests.post(f"{va.rasa.url}/webhooks/servicenow/typing", json={"sender": sender, "typing": typing}, timeout=10)
        assert response.status_code == 202
    wait_for(
        lambda: [e["action"] for e in transcript_events(va, chat) if e.get("action") in ("TYPING", "VIEWING")] == ["TYPING", "VIEWING"],
        what="TYPING then VIEWING at the agent",
    )
    assert requests.post(f"{va.rasa.url}/webhooks/servicenow/typing", json={"sender": sender}, timeout=10).status_code == 400


@pytest.mark.parametrize("how", ["no_agents", "timeout"])
def test_servicenow_handing_the_chat_back_ends_the_handoff(va: Handoff, how):
    sender = new_sender()
    chat = va.start(sender)
    if how == "no_agents":
        va.emulator.control("va/no_agents", {"session": chat})
        explanation = "There are no agents available"
    else:
        va.emulator.accept(chat)
        va.emulator.control("timeout", {"session": chat})
        explanation = "timed out"

    va.callback.wait_for_text(sender, lambda text: text == TEXTS.chat_ended)
    texts = va.callback.texts(sender)
    said = next(i for i, text in enumerate(texts) if explanation in text)
    assert said < texts.index(TEXTS.chat_ended)  # ServiceNow's reason first, then the hand-back
    va.assert_slots_cleared(sender)
    va.assert_back_with_the_bot(sender)


def test_an_idle_chat_times_out(va: Handoff):
    sender = new_sender()
    chat = va.start_live(sender)
    va.emulator.configure(idle_timeout_s=60)
    try:
        va.emulator.control("clock", {"advance_ms": 61_000})
        va.emulator.get("sessions")  # the emulator notices idle chats on its next request
        va.callback.wait_for_text(sender, lambda text: text == TEXTS.chat_ended)
    finally:
        va.emulator.configure(idle_timeout_s=3600)
        # The emulator is shared: a clock left 61 s ahead jumps back when the
        # next test returns it to real time, past Connect's late-commit window.
        va.emulator.control("clock", {"now_ms": None})
    va.assert_slots_cleared(sender)


def test_the_agent_gets_the_conversation_so_far(va: Handoff):
    sender = new_sender()
    va.rasa.say(sender, "hi")
    chat = va.start(sender, "talk to live agent")
    history = va.emulator.get(f"transcript/{chat}")["history"]
    assert [(turn["isBotMessage"], turn["value"]) for turn in history] == [
        (False, "hi"),
        (True, "Hello! I'm the virtual assistant. Ask me anything, or type \"live agent\" to talk to a person."),
    ]
    assert all(len(turn["timestamp"]) == 13 for turn in history)


def test_delivery_of_agent_messages_is_reported_back(va: Handoff):
    sender, unreachable = new_sender(), new_sender()
    chat = va.start_live(sender)
    va.emulator.say(chat, "did you get this?")
    va.callback.wait_for_text(sender, lambda text: text == "did you get this?")

    def statuses(chat_id: str) -> list:
        reports = [e["messages"] for e in transcript_events(va, chat_id) if e.get("action") == "UPDATE_MESSAGES"]
        return [message["status"] for report in reports for message in report]

    wait_for(lambda: "sent_to_user" in statuses(chat), what="UPDATE_MESSAGES sent_to_user")

    va.callback.refuse.add(unreachable)
    other = va.start(unreachable)
    va.emulator.accept(other)
    wait_for(lambda: "external_error" in statuses(other), timeout=30, what="UPDATE_MESSAGES external_error")
