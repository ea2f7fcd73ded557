"""Behaviour 9: with a persistent tracker store, a restart of Rasa in the
middle of a handoff keeps the handoff, and what the agent wrote while Rasa
was down arrives afterwards, nothing twice.

This server also authenticates with OAuth (client credentials), and its
token is revoked half-way, so the OAuth path is covered end to end."""

from tests.e2e.conftest import channel_options
from tests.e2e.harness import RasaServer, new_sender
from tests.e2e.test_connect_handoff import start_handoff


def test_a_restart_mid_handoff_keeps_the_chat_and_delivers_the_backlog_once(
    e2e_dir, demo_model, emulator, callback
):
    endpoints = {"tracker_store": {"type": "SQL", "dialect": "sqlite", "db": str(e2e_dir / "trackers.db")}}
    oauth = {"username": "", "password": "", "client_id": "rasa-connector", "client_secret": "rasa-connector-secret"}
    server = RasaServer(e2e_dir, demo_model, channel_options(emulator, callback, **oauth), endpoints, name="restart")
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

        emulator.control("oauth/expire", {"token": "*"})  # the next call gets a 401 and a new token
        emulator.say(group, "after the restart")
        callback.wait_for_text(sender, lambda text: text == "after the restart")
        assert server.say(sender, "thanks, all good") == []  # still talking to the agent

        token_grants = [r for r in emulator.get("requests")["requests"] if r["path"] == "/oauth_token.do"]
        assert len(token_grants) >= 3  # before the restart, after it, after the revocation

        agent_texts = [t for t in callback.texts(sender) if not t.startswith("Thank you for contacting")]
        assert agent_texts == [
            "before the restart",
            "while Rasa was down (1)",
            "while Rasa was down (2)",
            "after the restart",
        ]
    finally:
        server.stop()
