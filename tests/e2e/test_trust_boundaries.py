"""Values the channel reads back from places it does not control, end to end."""

import json

import requests

from tests.e2e.conftest import TEXTS, Handoff
from tests.e2e.harness import new_sender

CRAFTED_CHAT_ID = "../../api/now/table/sys_user?sysparm_query=active=true"


def test_a_crafted_chat_id_in_the_tracker_ends_the_handoff_without_reaching_servicenow(handoff: Handoff):
    """Anyone who can write the tracker store (or Rasa's HTTP API) could put a
    path into ``live_chat_id``; the channel must not call it with the
    integration user's credentials, and the user must not stay stuck."""
    rasa = handoff.rasa
    sender = new_sender()
    written = requests.post(
        f"{rasa.url}/conversations/{sender}/tracker/events",
        json=[
            {"event": "slot", "name": "handoff_active", "value": True},
            {"event": "slot", "name": "live_chat_id", "value": CRAFTED_CHAT_ID},
        ],
        timeout=30,
    )
    assert written.status_code == 200, written.text
    seen_before = len(handoff.emulator.get("requests")["requests"])

    texts = [reply.get("text") for reply in rasa.say(sender, "is anyone there?")]

    assert TEXTS.session_lost in texts and TEXTS.message_not_delivered in texts
    handoff.assert_slots_cleared(sender)
    since = handoff.emulator.get("requests")["requests"][seen_before:]
    assert not [entry for entry in since if "sys_user" in json.dumps(entry) or "/../" in entry["path"]]
    handoff.assert_back_with_the_bot(sender)
