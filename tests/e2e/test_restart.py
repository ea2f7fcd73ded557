"""Behaviour 9: with a persistent tracker store, a restart of Rasa in the
middle of a handoff keeps the handoff, and what the agent wrote while Rasa
was down arrives afterwards, nothing twice."""

from tests.e2e.conftest import channel_options
from tests.e2e.harness import RasaServer, new_sender
from tests.e2e.test_connect_handoff import start_handoff


def test_a_restart_mid_handoff_keeps_the_chat_and_delivers_the_backlog_once(
    e2e_dir, demo_model, emulator, callback
):
    endpoints = {"tracker_store": {"type": "SQL", "dialect": "sqlite", "db": str(e2e_dir / "trackers.db")}}
    server = RasaServer(e2e_dir, demo_model, channel_options(emulator, callback), endpoints, name="restart")
    server.start()
    try:
        sender = new_sender()
        group = start_handoff(server, sender)
        emulator.accept(group)
        emulator.say(group, "before the restart")
        callback.wait_for_text(sender, lambda text: text == "before the restart")

        server.stop()
        emulator.say(group, "while Rasa was down (1)")
        emulator.say(group, "while Rasa was down (2)")
        server.start()

        # Nothing from the user is needed: the channel resumes the chat itself.
        callback.wait_for_text(sender, lambda text: text == "while Rasa was down (2)")
        assert server.slots(sender)["handoff_active"] is True
        assert server.slots(sender)["live_chat_id"] == group

        emulator.say(group, "after the restart")
        callback.wait_for_text(sender, lambda text: text == "after the restart")
        assert server.say(sender, "thanks, all good") == []  # still talking to the agent

        agent_texts = [t for t in callback.texts(sender) if not t.startswith("Thank you for contacting")]
        assert agent_texts == [
            "before the restart",
            "while Rasa was down (1)",
            "while Rasa was down (2)",
            "after the restart",
        ]
    finally:
        server.stop()
