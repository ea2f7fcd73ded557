"""Races that used to lose messages or leave half-done state, for each
backend: a client that hangs up while its message starts or ends a handoff.
Sanic cancels the request's handler when the client goes away; the start or
end runs to completion all the same."""

import pytest
import requests

from tests.e2e.harness import new_sender, wait_for


def hang_up_after(handoff, sender: str, message: str) -> None:
    """Send a message and give up on the answer long before it comes."""
    with pytest.raises(requests.Timeout):
        requests.post(
            f"{handoff.rasa.url}/webhooks/servicenow/webhook", json={"sender": sender, "message": message}, timeout=0.5
        )


def opens_of(handoff, sender: str):
    if handoff.backend == "connect":
        return [
            entry for entry in handoff.emulator.get("requests")["requests"]
            if entry["method"] == "POST" and entry["path"].endswith("/sessions")
        ]
    return [None]  # the Virtual Agent chat id is the client's own; one session per sender is checked below


def test_a_client_that_hangs_up_while_its_handoff_opens_gets_a_whole_handoff(handoff, emulator):
    sender = new_sender()
    api = "connect" if handoff.backend == "connect" else "va"
    opening = {"path_regex": "/sessions$"} if handoff.backend == "connect" else {"body_regex": sender}
    emulator.fault(match={"api": api, "method": "POST", **opening}, respond={"delay_ms": 1500}, times=1)
    opens_before = len(opens_of(handoff, sender))

    hang_up_after(handoff, sender, "talk to live agent")

    chat = wait_for(lambda: handoff.rasa.slots(sender)["live_chat_id"], what="the handoff to be saved")
    assert handoff.rasa.slots(sender)["handoff_active"] is True
    assert emulator.session(chat)  # the chat exists in ServiceNow, and is the one in the slots
    assert not handoff.left_by_user(chat)
    if handoff.backend == "connect":
        assert len(opens_of(handoff, sender)) == opens_before + 1  # exactly one chat, no orphan
    assert handoff.rasa.say(sender, "still here") == []
    wait_for(lambda: "still here" in handoff.user_messages(sender, chat), what="the message at the agent")
    handoff.rasa.say(sender, "/end_chat")


def test_a_client_that_hangs_up_while_its_handoff_ends_leaves_no_slots_set(handoff, emulator):
    sender = new_sender()
    chat = handoff.start(sender)
    api = "connect" if handoff.backend == "connect" else "va"
    ending = {"path_regex": "/leave$"} if handoff.backend == "connect" else {"body_regex": "END_CONVERSATION"}
    emulator.fault(match={"api": api, "method": "POST", "session": chat, **ending}, respond={"delay_ms": 1500}, times=1)

    hang_up_after(handoff, sender, "/end_chat")

    handoff.wait_until_over(sender)
    handoff.assert_slots_cleared(sender)
    wait_for(lambda: handoff.left_by_user(chat), what="the chat to be left in ServiceNow")
    handoff.assert_back_with_the_bot(sender)
