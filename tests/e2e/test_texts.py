"""The channel's texts from the domain: a German conversation (the demo's
``language`` slot) hears the handoff notices from ``utter_servicenow_*``
responses, in the webhook's answer and out of band; an English one, for which
the demo has no fitting variation, hears the ``messages`` option or the default."""

from typing import Iterator, Tuple

import pytest

from tests.e2e.conftest import BACKENDS, TEXTS, channel_options, point_emulator_at
from tests.e2e.harness import CallbackReceiver, Emulator, RasaServer, new_sender, wait_for

CUSTOM_AGENT_CLOSED = "The agent has left (from the messages option)."
GERMAN_CONNECTING = "Ich verbinde Sie mit einem Mitarbeiter. Bitte warten Sie hier; die Antwort kommt in diesem Chat."
GERMAN_AGENT_CLOSED = "Der Mitarbeiter hat den Chat beendet. Sie sind wieder beim virtuellen Assistenten."
GERMAN_USER_ENDED = "Sie haben den Chat mit dem Mitarbeiter verlassen. Sie sind wieder beim virtuellen Assistenten."


@pytest.fixture(scope="module", params=BACKENDS)
def running(request, e2e_dir, demo_model, emulator: Emulator, callback: CallbackReceiver) -> Iterator[Tuple[str, RasaServer]]:
    backend = request.param
    options = channel_options(emulator, callback, backend, messages={"agent_closed": CUSTOM_AGENT_CLOSED})
    started = RasaServer(e2e_dir, demo_model, options, name=f"rasa-texts-{backend}").start()
    yield backend, started
    started.stop()


@pytest.fixture
def server(running: Tuple[str, RasaServer], emulator: Emulator) -> RasaServer:
    backend, started = running
    if backend == "virtual_agent":
        point_emulator_at(emulator, started)
    return started


def texts(replies):
    return [reply.get("text") for reply in replies]


def german(server: RasaServer, sender: str) -> None:
    assert texts(server.say(sender, '/set_language{"language":"de"}')) == ["Alles klar, ich antworte auf Deutsch."]
    assert server.slots(sender)["language"] == "de"


def test_a_german_conversation_hears_the_handoff_notices_in_german(
    server: RasaServer, emulator: Emulator, callback: CallbackReceiver
):
    sender = new_sender()
    german(server, sender)
    assert texts(server.say(sender, "Mitarbeiter")) == [GERMAN_CONNECTING]
    chat = server.slots(sender)["live_chat_id"]
    emulator.accept(chat)
    callback.wait_for_text(sender, lambda text: text.startswith("Thank you for contacting support"))

    emulator.close(chat)  # out of band: through the outbox to the callback URL
    callback.wait_for_text(sender, lambda text: text == GERMAN_AGENT_CLOSED)
    wait_for(lambda: server.slots(sender)["handoff_active"] is False, what="the handoff to end")
    assert CUSTOM_AGENT_CLOSED not in callback.texts(sender)

    # The tracker records the notices as the domain's responses.
    uttered = [e for e in server.tracker(sender)["events"] if e["event"] == "bot" and e["text"] == GERMAN_AGENT_CLOSED]
    assert uttered[-1]["metadata"]["utter_action"] == "utter_servicenow_agent_closed"

    replies = server.say(sender, "hallo")  # back with the bot, still in German
    assert replies[0]["text"].startswith("Hallo! Ich bin der virtuelle Assistent")


def test_a_german_user_who_leaves_hears_it_in_german_in_the_answer(server: RasaServer):
    sender = new_sender()
    german(server, sender)
    assert texts(server.say(sender, "Mitarbeiter")) == [GERMAN_CONNECTING]
    assert texts(server.say(sender, "/end_chat")) == [GERMAN_USER_ENDED]
    assert server.slots(sender)["handoff_active"] is False


def test_an_english_conversation_hears_the_messages_option_then_the_default(
    server: RasaServer, emulator: Emulator, callback: CallbackReceiver
):
    sender = new_sender()
    assert texts(server.say(sender, "talk to live agent")) == [TEXTS.connecting]
    chat = server.slots(sender)["live_chat_id"]
    emulator.accept(chat)
    emulator.close(chat)
    callback.wait_for_text(sender, lambda text: text == CUSTOM_AGENT_CLOSED)
    assert GERMAN_AGENT_CLOSED not in callback.texts(sender)
