"""The hand-back turn end to end: when a handoff ends, the bot runs its
``handoff_ended`` intent with the reason, and its replies reach the user
(in the webhook's answer, or out of band after the end notice). Real
``rasa run`` with the demo bot, the emulator, both ServiceNow APIs."""

from typing import Any, Dict, Iterator, List

import pytest
import requests

from tests.e2e.conftest import TEXTS, Handoff, channel_options
from tests.e2e.harness import RasaServer, new_sender, wait_for

RATING_QUESTION = "How was your chat with the agent?"
RATING_THANKS = "Thank you for rating the chat!"


def hand_back_events(tracker: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [
        event for event in tracker["events"]
        if event["event"] == "user" and (event.get("parse_data") or {}).get("intent", {}).get("name") == "handoff_ended"
    ]


def status_values(tracker: Dict[str, Any]) -> List[Any]:
    return [event["value"] for event in tracker["events"] if event["event"] == "slot" and event["name"] == "handoff_status"]


def test_the_agent_closing_gets_a_rating_question_after_the_end_notice(handoff: Handoff):
    sender = new_sender()
    chat = handoff.start_live(sender)

    handoff.emulator.close(chat)

    handoff.callback.wait_for_text(sender, lambda text: text == RATING_QUESTION)
    texts = handoff.callback.texts(sender)
    assert texts.index(TEXTS.agent_closed) < texts.index(RATING_QUESTION)
    question = next(item for item in handoff.callback.for_user(sender) if item.get("text") == RATING_QUESTION)
    assert [button["title"] for button in question["buttons"]] == ["Good", "Bad"]
    tracker = handoff.rasa.tracker(sender)
    [turn] = hand_back_events(tracker)
    assert turn["parse_data"]["entities"] == [{"entity": "handoff_end_reason", "value": "agent_closed"}]
    assert tracker["slots"]["handoff_end_reason"] == "agent_closed"
    # The tracker tells the handoff's course: opened, agent joined, ended.
    assert status_values(tracker) == ["waiting", "agent_joined", "ended"]

    # The rating is an ordinary bot turn; the rules go on predicting.
    assert [button["payload"] for button in question["buttons"]] == ["/rate_chat_good", "/rate_chat_bad"]
    replies = handoff.rasa.say(sender, "/rate_chat_good")
    assert [reply["text"] for reply in replies] == [RATING_THANKS]
    handoff.assert_back_with_the_bot(sender)


def test_the_user_ending_runs_the_turn_with_user_ended_inside_the_request(handoff: Handoff):
    sender = new_sender()
    chat = handoff.start(sender)
    handoff.emulator.accept(chat)

    replies = handoff.rasa.say(sender, "/end_chat")

    # The demo's rule for this reason says nothing: the answer is the notice alone.
    assert [reply["text"] for reply in replies] == [TEXTS.user_ended]
    tracker = handoff.rasa.tracker(sender)
    [turn] = hand_back_events(tracker)
    assert turn["parse_data"]["entities"] == [{"entity": "handoff_end_reason", "value": "user_ended"}]
    assert tracker["slots"]["handoff_end_reason"] == "user_ended"
    assert tracker["latest_action_name"] == "action_listen"
    assert RATING_QUESTION not in handoff.callback.texts(sender)
    handoff.assert_back_with_the_bot(sender)


def test_a_restart_runs_no_hand_back_turn(handoff: Handoff):
    sender = new_sender()
    handoff.start(sender)

    replies = handoff.rasa.say(sender, "/restart")

    assert replies[0]["text"] == TEXTS.user_ended
    assert hand_back_events(handoff.rasa.tracker(sender)) == []


def test_the_bot_ends_a_handoff_with_the_end_payload(handoff: Handoff):
    """A turn Rasa runs outside a request (here its HTTP API, as a reminder
    or an external event would) answers with ``{"handoff": {"end": true}}``."""
    sender = new_sender()
    chat = handoff.start(sender)
    handoff.emulator.accept(chat)

    response = requests.post(
        f"{handoff.rasa.url}/conversations/{sender}/execute",
        params={"output_channel": "latest"},
        json={"name": "utter_end_handoff"},
        timeout=30,
    )
    assert response.status_code == 200, response.text

    handoff.callback.wait_for_text(sender, lambda text: text == TEXTS.chat_ended)
    handoff.wait_until_over(sender)
    wait_for(lambda: handoff.left_by_user(chat), what="the chat to be left in ServiceNow")
    wait_for(lambda: hand_back_events(handoff.rasa.tracker(sender)), what="the hand-back turn")
    tracker = handoff.rasa.tracker(sender)
    assert tracker["slots"]["handoff_end_reason"] == "bot_ended"
    # The payload itself never reaches the user.
    assert not any("handoff" in (item.get("custom") or {}) for item in handoff.callback.for_user(sender))
    handoff.assert_back_with_the_bot(sender)


# -- the user's messages in the tracker (record_user_messages) -------------


@pytest.fixture(scope="module")
def recording_rasa(e2e_dir, demo_model, emulator, callback) -> Iterator[RasaServer]:
    options = channel_options(emulator, callback, "connect", record_user_messages=True)
    server = RasaServer(e2e_dir, demo_model, options, name="rasa-recording").start()
    yield server
    server.stop()


def test_the_users_messages_to_the_agent_are_recorded_without_nlu(recording_rasa, emulator, callback):
    handoff = Handoff("connect", recording_rasa, emulator, callback)
    sender = new_sender()
    chat = handoff.start_live(sender)
    # "hi" is the greet intent's keyword: NLU would have classified it.
    for text in ("hi", "my printer is on fire"):
        assert recording_rasa.say(sender, text) == []
    wait_for(lambda: handoff.user_messages(sender, chat)[-2:] == ["hi", "my printer is on fire"], what="delivery")

    handoff.emulator.close(chat)
    callback.wait_for_text(sender, lambda text: text == RATING_QUESTION)

    events = recording_rasa.tracker(sender)["events"]
    recorded = [event for event in events if event["event"] == "user" and (event.get("metadata") or {}).get("handoff")]
    assert [event["text"] for event in recorded] == ["hi", "my printer is on fire"]
    assert all(not event["parse_data"]["intent"] for event in recorded)
    assert all(event["metadata"]["handoff"] == {"chat_id": chat} for event in recorded)
    # Recorded before the hand-back turn, which the rules still answer correctly.
    hand_back = hand_back_events({"events": events})[0]
    assert events.index(recorded[-1]) < events.index(hand_back)
    replies = recording_rasa.say(sender, "/rate_chat_bad")
    assert [reply["text"] for reply in replies] == [RATING_THANKS]
    handoff.assert_back_with_the_bot(sender)
