"""Item 5 of the hostile-input issue, for each backend: the SQL tracker store
goes away in the middle of a handoff, and Rasa has restarted meanwhile, so
nothing about the user is cached. The channel fails closed: 503 with
``Retry-After`` for the user's messages (a Virtual Agent callback too), none
reaches the bot, and once the database is back the retried message reaches
the agent once and everything carries on.

The database "goes away" the way a lost volume does: the file moves out and
a directory takes its path, so SQLite cannot open it ("unable to open
database file", an ``OperationalError`` from SQLAlchemy) even for root."""

import shutil
from pathlib import Path

import requests

from tests.e2e.conftest import TEXTS, Handoff, channel_options, point_emulator_at
from tests.e2e.harness import RasaServer, new_sender, wait_for


def break_database(db: Path) -> Path:
    away = db.with_name(db.name + ".away")
    shutil.move(str(db), str(away))
    db.mkdir()
    return away


def restore_database(db: Path, away: Path) -> None:
    db.rmdir()
    shutil.move(str(away), str(db))


def post(server: RasaServer, sender: str, message: str) -> requests.Response:
    return requests.post(
        f"{server.url}/webhooks/servicenow/webhook", json={"sender": sender, "message": message}, timeout=60
    )


def user_texts(server: RasaServer, sender: str):
    return [event.get("text") for event in server.tracker(sender)["events"] if event["event"] == "user"]


def test_a_tracker_store_outage_answers_503_and_sends_nothing_to_the_bot(backend, e2e_dir, demo_model, emulator, callback):
    db = e2e_dir / f"outage-{backend}" / "trackers.db"
    db.parent.mkdir()
    endpoints = {"tracker_store": {"type": "SQL", "dialect": "sqlite", "db": str(db)}}
    server = RasaServer(
        e2e_dir, demo_model, channel_options(emulator, callback, backend), endpoints, name=f"outage-{backend}"
    )
    if backend == "virtual_agent":
        # As ServiceNow: a push answered 503 is not sent again.
        point_emulator_at(emulator, server, va_callback_retries=0)
    handoff = Handoff(backend, server, emulator, callback)
    away = None
    server.start()
    try:
        sender = new_sender()
        chat = handoff.start_live(sender)
        users_before = user_texts(server, sender)

        server.stop()
        away = break_database(db)
        server.start()  # a cold process: the resume scan fails and retries

        for _ in range(3):
            refused = post(server, sender, "are you still there?")
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"] == "2"
            assert refused.json() == {
                "status": "failure", "code": 503, "reason": "StoreUnavailable",
                "message": "The conversation store is unavailable; try again shortly.",
            }
        emulator.say(chat, "said during the outage")
        if backend == "virtual_agent":
            # The push is refused (503) and never comes again: the chat's record
            # is read back once the store is back and the chat resumes.
            wait_for(lambda: "Answering 503 to a callback" in server.log_path.read_text(), what="a refused callback")

        restore_database(db, away)
        away = None
        # The client retries as Retry-After says; one attempt gets through.
        assert wait_for(lambda: post(server, sender, "are you still there?").status_code == 200, timeout=30)
        callback.wait_for_text(sender, lambda text: text == "said during the outage", timeout=30)
        assert handoff.user_messages(sender, chat).count("are you still there?") == 1

        # Nothing of it reached the bot: no new user turn, no NLU reply.
        assert user_texts(server, sender) == users_before
        assert server.slots(sender)["handoff_active"] is True

        # And it all carries on.
        emulator.say(chat, "back to normal")
        callback.wait_for_text(sender, lambda text: text == "back to normal")
        assert [reply["text"] for reply in server.say(sender, "/end_chat")] == [TEXTS.user_ended]
        handoff.assert_slots_cleared(sender)
        handoff.assert_back_with_the_bot(sender)
    finally:
        server.stop()
        if away is not None:
            restore_database(db, away)
