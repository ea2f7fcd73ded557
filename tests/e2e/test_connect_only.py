"""Connect Support behaviours that only a polled API has: timestamps shared by
several messages, a session closed without a system message, and polls that
fail."""

import pytest

from tests.e2e.conftest import TEXTS, Handoff
from tests.e2e.harness import new_sender


pytestmark = pytest.mark.parametrize("backend", ["connect"], indirect=True)


@pytest.fixture
def connect(handoff: Handoff) -> Handoff:
    return handoff


def test_messages_sharing_a_timestamp_are_each_delivered_once_in_order(connect: Handoff):
    sender = new_sender()
    chat = connect.start_live(sender)
    emulator = connect.emulator
    emulator.control("clock", {"now_ms": emulator.get("clock")["now_ms"]})
    try:
        for text in ["one", "two", "three"]:
            emulator.say(chat, text)
        connect.callback.wait_for_text(sender, lambda text: text == "three")
        emulator.say(chat, "four")  # later polls see the same millisecond again
        connect.callback.wait_for_text(sender, lambda text: text == "four")
    finally:
        emulator.control("clock", {"now_ms": None})
    emulator.say(chat, "marker")
    connect.callback.wait_for_text(sender, lambda text: text == "marker")

    assert connect.callback.agent_texts(sender)[-5:] == ["one", "two", "three", "four", "marker"]


def test_a_session_closed_without_a_message_is_noticed_from_its_state(connect: Handoff):
    sender = new_sender()
    chat = connect.start_live(sender)
    connect.emulator.close(chat, message=False)
    connect.callback.wait_for_text(sender, lambda text: text == TEXTS.agent_closed)
    connect.assert_slots_cleared(sender)


def test_polling_that_keeps_failing_ends_the_handoff_with_a_summary(connect: Handoff):
    sender = new_sender()
    chat = connect.start_live(sender)
    last_message = connect.emulator.transcript(chat)[-1]

    connect.fail_inbound(chat, status=500, method="GET", path_regex="/messages$")

    summary = connect.callback.wait_for_text(sender, lambda text: text.startswith("Sorry, we lost the connection"))
    assert chat in summary
    assert last_message["created_on"] in summary  # the time of the last message, UTC
    assert connect.left_by_user(chat)
    connect.assert_slots_cleared(sender)
    connect.assert_back_with_the_bot(sender)


def test_polls_that_fail_now_and_then_lose_nothing(connect: Handoff):
    sender = new_sender()
    chat = connect.start_live(sender)
    # Two failures in a row fit inside one call's three attempts.
    connect.fail_inbound(chat, status=503, times=1, method="GET", path_regex="/messages$")
    connect.emulator.fault(
        match={"api": "connect", "method": "GET", "path_regex": "/messages$", "session": chat},
        respond={"delay_ms": 2500}, times=1,  # longer than the request timeout
    )
    connect.emulator.say(chat, "still here")
    connect.callback.wait_for_text(sender, lambda text: text == "still here")

    assert connect.rasa.slots(sender)["handoff_active"] is True
    assert connect.callback.texts(sender).count("still here") == 1
