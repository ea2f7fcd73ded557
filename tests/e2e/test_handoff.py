"""The shared behaviour suite, run end to end for each ServiceNow backend: a
real ``rasa run`` with the channel, the emulator as ServiceNow, a callback
receiver as the user's frontend. Numbers refer to the behaviours in the README."""

import json
import threading
import time
from typing import List

import pytest
import requests

from tests.e2e.conftest import TEXTS, Handoff
from tests.e2e.harness import close_stream, new_sender, wait_for


# -- 1. start -------------------------------------------------------------


def test_asking_for_an_agent_opens_a_chat_and_sets_the_slots(handoff: Handoff):
    sender = new_sender()
    chat = handoff.start(sender, "talk to live agent")

    session = handoff.emulator.session(chat)
    assert session["open"] is True
    if handoff.backend == "connect":
        assert session["queue"] == handoff.emulator.queue_id
    else:
        assert session["state"] == "QUEUED"
    # The agent sees the user's request as the first message of the chat.
    assert handoff.user_messages(sender, chat)[0] == "talk to live agent"
    assert handoff.rasa.slots(sender)["live_chat_user"] == handoff.requester(sender)


# -- 2. during the handoff, messages bypass Rasa ----------------------------


def test_messages_during_the_handoff_go_to_servicenow_and_never_to_rasa(handoff: Handoff):
    sender = new_sender()
    chat = handoff.start(sender)
    events_before = len(handoff.rasa.tracker(sender)["events"])

    assert handoff.rasa.say(sender, "hi") == []
    assert handoff.rasa.say(sender, "my laptop does not boot") == []

    assert handoff.user_messages(sender, chat)[-2:] == ["hi", "my laptop does not boot"]
    tracker = handoff.rasa.tracker(sender)
    new_events = tracker["events"][events_before:]
    assert not [event for event in new_events if event["event"] in ("user", "action")]
    assert not [event for event in new_events if event["event"] == "bot" and (event.get("metadata") or {}).get("source") is None]
    assert tracker["latest_message"]["text"] == "talk to live agent"


# -- 3. agent replies arrive on their own, once each, in order --------------


def test_agent_replies_reach_the_user_without_the_user_writing(handoff: Handoff):
    sender = new_sender()
    chat = handoff.start(sender)
    handoff.emulator.accept(chat)
    said_at = time.monotonic()
    handoff.emulator.say(chat, "Hi, I'm Beth. How can I help?")

    handoff.callback.wait_for_text(sender, lambda text: text == "Hi, I'm Beth. How can I help?")
    # About one poll interval for Connect (0.2 s here), immediate for the
    # Virtual Agent; loose enough for slow CI, well below the 5 s idle interval.
    assert time.monotonic() - said_at < 2.0
    item = next(i for i in handoff.callback.for_user(sender) if i.get("text") == "Hi, I'm Beth. How can I help?")
    assert item["metadata"]["source"] == "agent"
    assert item["metadata"]["agent_name"] == "Beth Anglin"


def test_agent_replies_arrive_once_each_and_in_order(handoff: Handoff):
    sender = new_sender()
    chat = handoff.start_live(sender)
    handoff.rasa.say(sender, "are you there?")
    for text in ["one", "two", "three"]:
        handoff.emulator.say(chat, text)
    handoff.emulator.say(chat, "internal: check the asset DB", work_note=True)
    handoff.callback.wait_for_text(sender, lambda text: text == "three")
    handoff.emulator.say(chat, "marker")
    handoff.callback.wait_for_text(sender, lambda text: text == "marker")

    texts = handoff.callback.texts(sender)
    assert [t for t in handoff.callback.agent_texts(sender) if t in ("one", "two", "three", "marker")] == [
        "one", "two", "three", "marker"
    ]
    assert "internal: check the asset DB" not in texts  # work notes stay internal
    assert "are you there?" not in texts  # the user's own message is not echoed


def read_in_background(stream: requests.Response) -> List[dict]:
    """The stream's events as they come (``{"event": ..., **data}``), read by a thread until the test closes it."""
    received: List[dict] = []

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
    return received


def test_agent_replies_are_streamed_to_a_browser(handoff: Handoff):
    sender = new_sender()
    chat = handoff.start(sender)
    stream = requests.get(
        f"{handoff.rasa.url}/webhooks/servicenow/stream", params={"sender": sender}, stream=True, timeout=30
    )
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    received = read_in_background(stream)
    handoff.emulator.accept(chat)
    handoff.emulator.say(chat, "streamed hello")
    wait_for(lambda: any(item.get("text") == "streamed hello" for item in received), what="the streamed reply")
    close_stream(stream)
    assert received[0]["event"] == "handoff" and received[0]["handoff"]["active"] is True
    assert [item["text"] for item in received if item["event"] == "message"][-1] == "streamed hello"


def test_the_stream_hears_the_agent_join_and_the_end_says_an_agent_had_joined(handoff: Handoff):
    """Issue 21: Connect announced no agent on the stream, and both APIs
    ended with ``agent_joined: false`` after an agent took the chat."""
    sender = new_sender()
    chat = handoff.start(sender)
    stream = requests.get(
        f"{handoff.rasa.url}/webhooks/servicenow/stream", params={"sender": sender}, stream=True, timeout=30
    )
    received = read_in_background(stream)
    try:
        handoff.emulator.accept(chat)
        handoff.emulator.say(chat, "joined hello")
        wait_for(lambda: any(item.get("text") == "joined hello" for item in received), what="the agent's message")
        handoff.rasa.say(sender, "/end_chat")
        wait_for(lambda: any(not item["handoff"]["active"] for item in received if item["event"] == "handoff"),
                 what="the end status")
    finally:
        stream.close()
    statuses = [item["handoff"] for item in received if item["event"] == "handoff"]
    joined = [status for status in statuses if status["active"] and status["agent_joined"]]
    assert joined, statuses
    if handoff.backend == "connect":
        assert joined[0]["agent_name"], statuses  # the name of the agent's first message
    first_agent_text = next(index for index, item in enumerate(received) if item.get("text") == "joined hello")
    assert received.index(next(item for item in received if item.get("handoff") == joined[0])) < first_agent_text
    assert statuses[-1] == {"active": False, "chat_id": chat, "api": handoff.backend, "agent_joined": True}


# -- 4. the user ends the chat --------------------------------------------


@pytest.mark.parametrize("command", ["/end_chat", "/restart"])
def test_the_user_ends_the_chat(handoff: Handoff, command):
    sender = new_sender()
    chat = handoff.start(sender)
    handoff.emulator.accept(chat)

    replies = handoff.rasa.say(sender, command)

    assert replies[0]["text"] == TEXTS.user_ended
    assert handoff.left_by_user(chat)
    assert handoff.emulator.session(chat)["open"] is False
    assert command not in handoff.user_messages(sender, chat)
    handoff.assert_slots_cleared(sender)
    handoff.assert_back_with_the_bot(sender)


# -- 5. the agent ends the chat --------------------------------------------


@pytest.mark.parametrize("order", ["agent_first", "after_requester_left"])
def test_the_agent_closing_the_chat_ends_the_handoff(handoff: Handoff, order):
    sender = new_sender()
    chat = handoff.start_live(sender)
    handoff.emulator.say(chat, "Glad I could help, bye!")
    handoff.callback.wait_for_text(sender, lambda text: text == "Glad I could help, bye!")

    handoff.emulator.close(chat, order=order)

    handoff.callback.wait_for_text(sender, lambda text: text == TEXTS.agent_closed)
    handoff.assert_slots_cleared(sender)
    handoff.assert_back_with_the_bot(sender)


def test_a_transfer_to_another_agent_keeps_the_chat_going(handoff: Handoff):
    sender = new_sender()
    chat = handoff.start_live(sender)
    handoff.emulator.control("agent/transfer", {"session": chat, "to": {"user_name": "fred.luddy", "name": "Fred Luddy"}})
    handoff.emulator.say(chat, "Hi, Fred here. I'll take it from here.")

    handoff.callback.wait_for_text(sender, lambda text: text == "Hi, Fred here. I'll take it from here.")
    assert handoff.rasa.slots(sender)["handoff_active"] is True
    notices = [t for t in handoff.callback.texts(sender) if t not in handoff.callback.agent_texts(sender)]
    assert any("Fred Luddy" in notice for notice in notices)  # "... has joined" / "... has entered the chat."
    item = next(i for i in handoff.callback.for_user(sender) if i.get("text") == "Hi, Fred here. I'll take it from here.")
    assert item["metadata"]["agent_name"] == "Fred Luddy"


# -- 6. ServiceNow keeps failing ------------------------------------------


def test_a_message_that_cannot_be_delivered_ends_the_handoff_with_a_summary(handoff: Handoff):
    sender = new_sender()
    chat = handoff.start_live(sender)
    handoff.fail_inbound(chat, status=502, times=3, **handoff.sending("are you still there?"))  # the send's three attempts

    replies = [reply["text"] for reply in handoff.rasa.say(sender, "are you still there?")]

    assert replies[0].startswith("Sorry, we lost the connection") and chat in replies[0]
    assert "UTC" in replies[0]  # the time of the last message
    assert replies[1] == TEXTS.message_not_delivered
    assert handoff.emulator.session(chat)["open"] is False  # left (Connect) or faulted (Virtual Agent)
    if handoff.backend == "virtual_agent":
        faults = [e for e in handoff.emulator.get(f"transcript/{chat}")["events"] if e["action"] == "FAULT_CONVERSATION"]
        assert [fault["cause"] for fault in faults] == ["EXTERNAL_FAILURE"]
    handoff.assert_slots_cleared(sender)
    handoff.assert_back_with_the_bot(sender)


def test_when_ending_fails_too_the_user_gets_the_generic_message(handoff: Handoff):
    sender = new_sender()
    chat = handoff.start_live(sender)
    handoff.fail_inbound(chat, status=503, method="POST")  # sending, leaving and faulting all fail

    replies = [reply["text"] for reply in handoff.rasa.say(sender, "hello?")]

    assert replies == [TEXTS.session_lost, TEXTS.message_not_delivered]
    handoff.assert_slots_cleared(sender)


# -- 7. transient failures are ridden out -----------------------------------


def test_transient_failures_on_the_way_to_servicenow_lose_nothing(handoff: Handoff):
    sender = new_sender()
    chat = handoff.start_live(sender)
    send_path = handoff.sending("first try")
    api = "connect" if handoff.backend == "connect" else "va"
    handoff.emulator.fault(match={"api": api, "session": chat, **send_path}, respond={"drop_connection": True}, times=1)
    handoff.emulator.fault(
        match={"api": api, "session": chat, **send_path}, respond={"status": 429, "headers": {"Retry-After": "1"}}, times=1
    )

    assert handoff.rasa.say(sender, "first try") == []

    assert handoff.user_messages(sender, chat).count("first try") == 1
    handoff.emulator.say(chat, "got it")
    handoff.callback.wait_for_text(sender, lambda text: text == "got it")
    assert handoff.rasa.slots(sender)["handoff_active"] is True


# -- 8. several users at once ----------------------------------------------


def test_each_user_gets_only_their_own_agents_messages(handoff: Handoff):
    users = [new_sender() for _ in range(3)]
    chats = {user: handoff.start(user) for user in users}
    for user, chat in chats.items():
        handoff.emulator.accept(chat)
        handoff.emulator.say(chat, f"reply for {user}")
    for user in users:
        handoff.callback.wait_for_text(user, lambda text, user=user: text == f"reply for {user}")
    for user in users:
        foreign = [t for t in handoff.callback.texts(user) if t.startswith("reply for") and t != f"reply for {user}"]
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
def test_bad_input_gets_a_4xx_and_changes_nothing(handoff: Handoff, body, status):
    sender = "x"
    events_before = len(handoff.rasa.tracker(sender)["events"])
    response = handoff.rasa.post_raw(body)
    assert response.status_code == status
    assert response.json()["status"] == "failure"
    assert len(handoff.rasa.tracker(sender)["events"]) == events_before
