"""Behaviours 1 to 8 of the handoff, end to end: a real ``rasa run`` with the
channel, the emulator as ServiceNow, a callback receiver as the frontend."""

import json
import threading
import time
from typing import List

import pytest
import requests

from connectors.servicenow.texts import UserTexts
from tests.e2e.harness import Emulator, RasaServer, new_sender, wait_for

TEXTS = UserTexts()


def start_handoff(rasa: RasaServer, sender: str, request: str = "talk to live agent") -> str:
    replies = rasa.say(sender, request)
    assert [reply["text"] for reply in replies] == [TEXTS.connecting]
    slots = rasa.slots(sender)
    assert slots["handoff_active"] is True
    return slots["live_chat_id"]


def user_messages_in(emulator: Emulator, group: str) -> List[str]:
    return [m["message"] for m in emulator.transcript(group) if m["created_by"] == "rasa.integration"]


def wait_until_handoff_over(rasa: RasaServer, sender: str) -> None:
    wait_for(lambda: rasa.slots(sender)["handoff_active"] is False, what="the handoff to end")


def assert_slots_cleared(rasa: RasaServer, sender: str) -> None:
    slots = rasa.slots(sender)
    assert slots["handoff_active"] is False
    assert slots["live_chat_id"] is None


def assert_back_with_the_bot(rasa: RasaServer, sender: str) -> None:
    replies = rasa.say(sender, "hi")
    assert replies and replies[0]["text"].startswith("Hello! I'm the virtual assistant")


# -- 1. start -------------------------------------------------------------


def test_asking_for_an_agent_opens_a_connect_session_in_the_queue(rasa, emulator):
    sender = new_sender()
    group = start_handoff(rasa, sender, "talk to live agent")

    session = emulator.session(group)
    assert session["queue"] == emulator.queue_id
    assert session["state"] == 1  # waiting for an agent
    # The agent sees the user's request as the first message of the chat.
    assert emulator.transcript(group)[0]["message"] == "talk to live agent"
    assert rasa.slots(sender)["live_chat_user"] == "rasa.integration"


# -- 2. during the handoff, messages bypass Rasa ----------------------------


def test_messages_during_the_handoff_go_to_servicenow_and_never_to_rasa(rasa, emulator):
    sender = new_sender()
    group = start_handoff(rasa, sender)
    events_before = len(rasa.tracker(sender)["events"])

    assert rasa.say(sender, "hi") == []
    assert rasa.say(sender, "my laptop does not boot") == []

    assert user_messages_in(emulator, group)[-2:] == ["hi", "my laptop does not boot"]
    tracker = rasa.tracker(sender)
    new_events = tracker["events"][events_before:]
    assert not [e for e in new_events if e["event"] in ("user", "action", "bot")]
    assert tracker["latest_message"]["text"] == "talk to live agent"


# -- 3. agent replies arrive on their own, once each, in order --------------


def test_agent_replies_reach_the_user_without_the_user_writing(rasa, emulator, callback):
    sender = new_sender()
    group = start_handoff(rasa, sender)
    emulator.accept(group)
    said_at = time.monotonic()
    emulator.say(group, "Hi, I'm Beth. How can I help?")

    callback.wait_for_text(sender, lambda text: text == "Hi, I'm Beth. How can I help?")
    # About one poll interval (0.2 s here); the bound is loose for slow CI
    # machines but well below the 5 s idle interval.
    assert time.monotonic() - said_at < 2.0
    agent_item = next(i for i in callback.for_user(sender) if i.get("text") == "Hi, I'm Beth. How can I help?")
    assert agent_item["metadata"]["source"] == "agent"
    assert agent_item["metadata"]["agent_name"] == "Beth Anglin"


def test_messages_sharing_a_timestamp_are_each_delivered_once_in_order(rasa, emulator, callback):
    sender = new_sender()
    group = start_handoff(rasa, sender)
    emulator.accept(group)
    callback.wait_for_text(sender, lambda text: text.startswith("Thank you for contacting support"))
    rasa.say(sender, "are you there?")

    clock = emulator.get("clock")
    emulator.control("clock", {"now_ms": clock.get("now_ms") or clock.get("now")})
    try:
        for text in ["one", "two", "three"]:
            emulator.say(group, text)
        emulator.say(group, "internal: check the asset DB", work_note=True)
        callback.wait_for_text(sender, lambda text: text == "three")
        emulator.say(group, "four")  # later polls see the same millisecond again
        callback.wait_for_text(sender, lambda text: text == "four")
    finally:
        emulator.control("clock", {"now_ms": None})
    emulator.say(group, "marker")
    callback.wait_for_text(sender, lambda text: text == "marker")

    texts = callback.texts(sender)
    agent_texts = [t for t in texts if t in ("one", "two", "three", "four", "marker")]
    assert agent_texts == ["one", "two", "three", "four", "marker"]
    assert "internal: check the asset DB" not in texts  # work notes stay internal
    assert "are you there?" not in texts  # the user's own message is not echoed


def test_agent_replies_are_streamed_to_a_browser(rasa, emulator):
    sender = new_sender()
    group = start_handoff(rasa, sender)
    received: List[dict] = []
    stream = requests.get(f"{rasa.url}/webhooks/servicenow/stream", params={"sender": sender}, stream=True, timeout=30)
    assert stream.headers["Content-Type"].startswith("text/event-stream")

    def read() -> None:
        event = None
        try:
            for line in stream.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    received.append({"event": event, **json.loads(line[6:])})
        except (requests.RequestException, AttributeError):
            pass  # the test closed the stream under the reader

    threading.Thread(target=read, daemon=True).start()
    emulator.accept(group)
    emulator.say(group, "streamed hello")
    wait_for(lambda: any(item.get("text") == "streamed hello" for item in received), what="the streamed reply")
    stream.close()
    kinds = [item["event"] for item in received]
    assert kinds[0] == "handoff" and received[0]["handoff"]["active"] is True
    assert [item["text"] for item in received if item["event"] == "message"][-1] == "streamed hello"


# -- 4. the user ends the chat --------------------------------------------


@pytest.mark.parametrize("command", ["/end_chat", "/restart"])
def test_the_user_ends_the_chat(rasa, emulator, command):
    sender = new_sender()
    group = start_handoff(rasa, sender)
    emulator.accept(group)

    replies = rasa.say(sender, command)

    assert replies[0]["text"] == TEXTS.user_ended
    assert emulator.requests_for(group, "POST", "/leave")
    assert emulator.session(group)["state"] == 7  # closed by the client
    assert command not in user_messages_in(emulator, group)
    assert_slots_cleared(rasa, sender)
    assert_back_with_the_bot(rasa, sender)


# -- 5. the agent ends the chat --------------------------------------------


@pytest.mark.parametrize("how", [{"order": "agent_first"}, {"order": "after_requester_left"}, {"message": False}])
def test_the_agent_closing_the_chat_ends_the_handoff(rasa, emulator, callback, how):
    sender = new_sender()
    group = start_handoff(rasa, sender)
    emulator.accept(group)
    emulator.say(group, "Glad I could help, bye!")
    callback.wait_for_text(sender, lambda text: text == "Glad I could help, bye!")

    emulator.close(group, **how)

    callback.wait_for_text(sender, lambda text: text == TEXTS.agent_closed)
    assert_slots_cleared(rasa, sender)
    assert_back_with_the_bot(rasa, sender)


def test_a_transfer_to_another_agent_keeps_the_chat_going(rasa, emulator, callback):
    sender = new_sender()
    group = start_handoff(rasa, sender)
    emulator.accept(group)
    emulator.control("agent/transfer", {"session": group, "to": {"user_name": "fred.luddy", "name": "Fred Luddy"}})
    emulator.say(group, "Hi, Fred here. I'll take it from here.")

    callback.wait_for_text(sender, lambda text: text == "Hi, Fred here. I'll take it from here.")
    assert rasa.slots(sender)["handoff_active"] is True
    assert "Fred Luddy has joined the support session" in callback.texts(sender)


# -- 6. ServiceNow keeps failing ------------------------------------------


def test_polling_that_keeps_failing_ends_the_handoff_with_a_summary(rasa, emulator, callback):
    sender = new_sender()
    group = start_handoff(rasa, sender)
    emulator.accept(group)
    callback.wait_for_text(sender, lambda text: text.startswith("Thank you for contacting support"))
    last_message = emulator.transcript(group)[-1]

    emulator.fault(match={"api": "connect", "method": "GET", "path_regex": "/messages$", "session": group},
                   respond={"status": 500}, times=100)

    summary = callback.wait_for_text(sender, lambda text: text.startswith("Sorry, we lost the connection"))
    assert group in summary
    assert last_message["created_on"] in summary  # the time of the last message, UTC
    assert emulator.requests_for(group, "POST", "/leave")
    assert_slots_cleared(rasa, sender)
    assert_back_with_the_bot(rasa, sender)


def test_when_leaving_fails_too_the_user_gets_the_generic_message(rasa, emulator, callback):
    sender = new_sender()
    group = start_handoff(rasa, sender)
    for method, path in (("GET", "/messages$"), ("POST", "/leave$")):
        emulator.fault(match={"api": "connect", "method": method, "path_regex": path, "session": group},
                       respond={"status": 503}, times=100)

    callback.wait_for_text(sender, lambda text: text == TEXTS.session_lost)
    assert_slots_cleared(rasa, sender)


def test_a_message_that_cannot_be_delivered_ends_the_handoff_and_says_so(rasa, emulator):
    sender = new_sender()
    group = start_handoff(rasa, sender)
    emulator.fault(match={"api": "connect", "method": "POST", "path_regex": "/messages$", "session": group},
                   respond={"status": 502}, times=100)

    replies = [reply["text"] for reply in rasa.say(sender, "are you still there?")]

    assert replies[0].startswith("Sorry, we lost the connection") and group in replies[0]
    assert replies[1] == TEXTS.message_not_delivered
    assert_slots_cleared(rasa, sender)


# -- 7. transient failures are ridden out -----------------------------------


def test_transient_failures_are_retried_without_ending_the_chat_or_losing_messages(rasa, emulator, callback):
    sender = new_sender()
    group = start_handoff(rasa, sender)
    emulator.accept(group)
    callback.wait_for_text(sender, lambda text: text.startswith("Thank you for contacting support"))

    emulator.fault(match={"api": "connect", "method": "POST", "path_regex": "/messages$", "session": group},
                   respond={"drop_connection": True}, times=1)
    emulator.fault(match={"api": "connect", "method": "POST", "path_regex": "/messages$", "session": group},
                   respond={"status": 429, "headers": {"Retry-After": "1"}}, times=1)
    assert rasa.say(sender, "first try") == []
    assert user_messages_in(emulator, group).count("first try") == 1

    # Two failures in a row fit inside one call's three attempts.
    emulator.fault(match={"api": "connect", "method": "GET", "path_regex": "/messages$", "session": group},
                   respond={"status": 503}, times=1)
    emulator.fault(match={"api": "connect", "method": "GET", "path_regex": "/messages$", "session": group},
                   respond={"delay_ms": 2500}, times=1)  # longer than the request timeout
    emulator.say(group, "still here")
    callback.wait_for_text(sender, lambda text: text == "still here")

    assert rasa.slots(sender)["handoff_active"] is True
    assert callback.texts(sender).count("still here") == 1


# -- 8. several users at once ----------------------------------------------


def test_each_user_gets_only_their_own_agents_messages(rasa, emulator, callback):
    users = [new_sender() for _ in range(3)]
    groups = {user: start_handoff(rasa, user) for user in users}
    for user, group in groups.items():
        emulator.accept(group)
        emulator.say(group, f"reply for {user}")
    for user in users:
        callback.wait_for_text(user, lambda text, user=user: text == f"reply for {user}")
    for user in users:
        foreign = [t for t in callback.texts(user) if t.startswith("reply for") and t != f"reply for {user}"]
        assert foreign == []


# -- bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status",
    [
        (b"{not json", 400),
        (b'{"message": "hi"}', 400),
        (b'{"sender": 7, "message": "hi"}', 400),
        (b'{"sender": "x", "message": ""}', 400),
        (b'{"sender": "x", "message": "hi", "metadata": []}', 400),
        (b'{"sender": "x", "message": "' + b"a" * 70_000 + b'"}', 413),
    ],
)
def test_bad_input_gets_a_4xx_and_changes_nothing(rasa, body, status):
    sender = "x"
    events_before = len(rasa.tracker(sender)["events"])
    response = rasa.post_raw(body)
    assert response.status_code == status
    assert response.json()["status"] == "failure"
    assert len(rasa.tracker(sender)["events"]) == events_before

