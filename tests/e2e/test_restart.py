"""Behaviour 9, for each backend: with a persistent tracker store, a restart
of Rasa in the middle of a handoff keeps the handoff, and what the agent
wrote while Rasa was down arrives afterwards, nothing twice.

Connect finds the backlog by polling from the saved cursor. The Virtual
Agent API pushes each message once (ServiceNow documents no retry, and the
emulator retries none here): the backlog is read back from ServiceNow's
record of the chat when the channel starts (reconciliation).

This server also authenticates with OAuth (client credentials), and its
token is revoked half-way, so renewal after a 401 is covered end to end."""

from tests.e2e.conftest import Handoff, channel_options, point_emulator_at
from tests.e2e.harness import RasaServer, new_sender

OAUTH = {"username": "", "password": "", "client_id": "rasa-connector", "client_secret": "rasa-connector-secret"}


def test_a_restart_mid_handoff_keeps_the_chat_and_delivers_the_backlog_once(
    backend, e2e_dir, demo_model, emulator, callback
):
    endpoints = {"tracker_store": {"type": "SQL", "dialect": "sqlite", "db": str(e2e_dir / f"trackers-{backend}.db")}}
    server = RasaServer(
        e2e_dir, demo_model, channel_options(emulator, callback, backend, **OAUTH), endpoints, name=f"restart-{backend}"
    )
    if backend == "virtual_agent":
        point_emulator_at(emulator, server, va_callback_retries=0)
    handoff = Handoff(backend, server, emulator, callback)
    started_ms = emulator.get("clock")["now_ms"]
    server.start()
    try:
        sender = new_sender()
        chat = handoff.start_live(sender)
        emulator.say(chat, "before the restart")
        callback.wait_for_text(sender, lambda text: text == "before the restart")

        server.stop()
        emulator.say(chat, "while Rasa was down (1)")
        emulator.say(chat, "while Rasa was down (2)")
        server.start()

        # Nothing from the user is needed: the channel resumes the chat itself.
        callback.wait_for_text(sender, lambda text: text == "while Rasa was down (2)", timeout=30)
        assert server.slots(sender)["handoff_active"] is True
        assert server.slots(sender)["live_chat_id"] == chat
        assert server.say(sender, "back again") == []  # still talking to the agent

        emulator.control("oauth/expire", {"token": "*"})  # the next call gets a 401 and a new token
        emulator.say(chat, "after the restart")
        callback.wait_for_text(sender, lambda text: text == "after the restart")
        assert server.say(sender, "thanks, all good") == []
        assert handoff.user_messages(sender, chat)[-2:] == ["back again", "thanks, all good"]

        token_grants = [
            r for r in emulator.get("requests")["requests"] if r["path"] == "/oauth_token.do" and r["at_ms"] >= started_ms
        ]
        assert len(token_grants) >= 3  # before the restart, after it, after the revocation

        assert [t for t in callback.agent_texts(sender) if not t.startswith("Thank you for contacting")] == [
            "before the restart",
            "while Rasa was down (1)",
            "while Rasa was down (2)",
            "after the restart",
        ]
    finally:
        server.stop()
