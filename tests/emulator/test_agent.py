"""The human agent through the control plane (reference 5.5): accept, message, work note, transfer, close, timeout."""

from __future__ import annotations

from connectors.servicenow.emulator import DEFAULT_AGENT, DEFAULT_GREETING


async def test_accept_sets_state_assignment_and_posts_the_greeting(client):
    entry = await client.create_session()
    body = await client.ok("POST", "agent/accept", {"session": entry["group"]})
    assert body["session"]["state"] == 2
    assert body["session"]["agent"]["user_name"] == DEFAULT_AGENT
    (greeting,) = body["messages"]
    assert (greeting["message"], greeting["created_by"], greeting["sender_name"]) == (
        DEFAULT_GREETING,
        DEFAULT_AGENT,
        "Beth Anglin",
    )
    fetched = await client.entry(entry["group"])
    assert fetched["state"] == 2
    assert fetched["assigned_to"] == body["session"]["agent"]["id"]
    assert fetched["work_start"] != ""
    assert (await client.messages(entry["group"]))[0]["sys_id"] == greeting["sys_id"]


async def test_accept_with_named_agent_join_message_and_no_greeting(client):
    await client.ok("POST", "config", {"join_message": True, "greeting_text": None})
    entry = await client.create_session()
    agent = {"name": "Abel Tuter", "user_name": "abel.tuter", "id": "f" * 32}
    body = await client.ok("POST", "agent/accept", {"session": entry["group"], "agent": agent})
    assert [(m["created_by"], m["message"]) for m in body["messages"]] == [
        ("system", "Abel Tuter has joined the support session")
    ]
    assert body["messages"][0]["sender_name"] == "system"
    assert (await client.entry(entry["group"]))["assigned_to"] == "f" * 32


async def test_accept_without_session_takes_the_oldest_waiting(client):
    first = await client.create_session("first")
    second = await client.create_session("second")
    assert (await client.ok("POST", "agent/accept"))["session"]["group"] == first["group"]
    assert (await client.ok("POST", "agent/accept"))["session"]["group"] == second["group"]
    assert (await client.control("POST", "agent/accept")).status == 404
    assert (await client.control("POST", "agent/accept", {"session": first["group"]})).status == 409


async def test_message_without_session_goes_to_the_latest_accepted(client):
    first = await client.create_session("first")
    second = await client.create_session("second")
    await client.ok("POST", "agent/accept", {"session": first["group"]})
    await client.ok("POST", "agent/accept", {"session": second["group"]})
    await client.ok("POST", "agent/message", {"text": "for the second chat"})
    assert (await client.messages(second["group"]))[0]["message"] == "for the second chat"
    assert (await client.messages(first["group"]))[0]["message"] == DEFAULT_GREETING


async def test_agent_message_work_note_and_system_message(client, live):
    group = live["group"]
    await client.ok("POST", "agent/message", {"session": group, "text": "Hi, I'm Beth"})
    await client.ok("POST", "agent/message", {"session": group, "text": "user seems stuck", "work_note": True})
    await client.ok("POST", "agent/message", {"session": group, "text": "Recording started", "system": True})
    system, note, text = (await client.messages(group))[:3]
    assert (text["message"], text["created_by"], text["reflected_field"]) == ("Hi, I'm Beth", DEFAULT_AGENT, "comments")
    assert (note["created_by"], note["reflected_field"]) == (DEFAULT_AGENT, "work_notes")
    assert (system["created_by"], system["sender_name"], system["profile"]) == ("system", "system", "")


async def test_agent_message_needs_a_live_session(client):
    entry = await client.create_session()
    assert (await client.control("POST", "agent/message", {"session": entry["group"], "text": "x"})).status == 409
    assert (await client.control("POST", "agent/message", {"text": "x"})).status == 404
    assert (await client.control("POST", "agent/message", {"session": entry["group"]})).status == 400
    assert (await client.control("POST", "agent/message", {"session": "nope", "text": "x"})).status == 404


async def test_typing_is_not_supported_over_connect(client, live):
    body = await client.ok("POST", "agent/typing", {"session": live["group"], "on": True})
    assert body == {"supported": False}
    assert len(await client.messages(live["group"])) == 2


async def test_close_agent_first_says_has_left(client, live):
    body = await client.ok("POST", "agent/close", {"session": live["group"]})
    assert [m["message"] for m in body["messages"]] == ["Beth Anglin has left the support session"]
    newest = (await client.messages(live["group"]))[0]
    assert (newest["created_by"], newest["message"]) == ("system", "Beth Anglin has left the support session")
    entry = await client.entry(live["group"])
    assert entry["state"] == 3 and entry["work_end"] != ""


async def test_close_after_requester_left_says_has_closed(client, live):
    left = (await client.api("POST", f"/support/sessions/{live['group']}/leave", {})).result
    assert left["state"] == 7
    body = await client.ok("POST", "agent/close")  # default: the latest accepted, even after the requester left
    assert body["session"]["group"] == live["group"]
    assert [m["message"] for m in body["messages"]] == ["Beth Anglin has closed the support session"]
    assert (await client.entry(live["group"]))["state"] == 3


async def test_close_with_explicit_orders(client):
    for order, text in (
        ("after_requester_left", "Beth Anglin has closed the support session"),
        ("agent_first", "Beth Anglin has left the support session"),
    ):
        entry = await client.create_session()
        await client.ok("POST", "agent/accept", {"session": entry["group"]})
        body = await client.ok("POST", "agent/close", {"session": entry["group"], "order": order})
        assert [m["message"] for m in body["messages"]] == [text]
        assert body["session"]["requester_left"] is (order == "after_requester_left")


async def test_silent_close_changes_only_the_state(client, live):
    before = await client.messages(live["group"])
    body = await client.ok("POST", "agent/close", {"session": live["group"], "message": False})
    assert body["messages"] == []
    assert await client.messages(live["group"]) == before
    assert (await client.entry(live["group"]))["state"] == 3


async def test_close_by_requester_and_close_rules(client, live):
    body = await client.ok("POST", "agent/close", {"session": live["group"], "who": "requester"})
    assert body["session"]["state"] == 7 and body["messages"] == []
    await client.ok("POST", "agent/close", {"session": live["group"]})
    assert (await client.control("POST", "agent/close", {"session": live["group"]})).status == 409
    assert (await client.control("POST", "agent/close", {"who": "nobody"})).status == 400
    waiting = await client.create_session()
    assert (await client.control("POST", "agent/close", {"session": waiting["group"]})).status == 409


async def test_transfer_reassigns_and_announces(client, live):
    to = {"name": "Abel Tuter", "user_name": "abel.tuter"}
    body = await client.ok("POST", "agent/transfer", {"session": live["group"], "to": to})
    assert [m["message"] for m in body["messages"]] == [
        "Beth Anglin has left the support session",
        "Abel Tuter has joined the support session",
    ]
    entry = await client.entry(live["group"])
    assert entry["state"] == 2 and entry["transfer_state"] == "accepted"
    assert entry["assigned_to"] == body["session"]["agent"]["id"] == entry["transfer_to"]
    assert entry["transfer_from"] != entry["transfer_to"]
    await client.ok("POST", "agent/message", {"text": "Abel here"})
    assert (await client.messages(live["group"]))[0]["created_by"] == "abel.tuter"
    closed = await client.ok("POST", "agent/close")
    assert closed["messages"][0]["message"] == "Abel Tuter has left the support session"


async def test_timeout_abandons_the_session(client, live):
    body = await client.ok("POST", "timeout", {"session": live["group"]})
    assert body["session"]["state"] == 8
    assert (await client.entry(live["group"]))["state"] == 8
    assert (await client.control("POST", "timeout", {"session": live["group"]})).status == 409


async def test_idle_sessions_are_abandoned_when_the_clock_moves(client):
    await client.ok("POST", "config", {"idle_timeout_s": 60})
    entry = await client.create_session()
    await client.ok("POST", "clock", {"advance_ms": 59_000})
    assert (await client.entry(entry["group"]))["state"] == 1
    await client.ok("POST", "clock", {"advance_ms": 1_000})
    assert (await client.entry(entry["group"]))["state"] == 8


async def test_transcript_lists_everything_oldest_first(client, live):
    await client.ok("POST", "agent/message", {"text": "note", "work_note": True})
    body = await client.ok("GET", f"transcript/{live['group']}")
    assert [m["message"] for m in body["messages"]] == ["My laptop will not boot", DEFAULT_GREETING, "note"]
    assert body["session"]["message_count"] == 3
    assert (await client.control("GET", "transcript/nope")).status == 404


async def test_sessions_overview(client, live):
    await client.create_session("second")
    sessions = (await client.ok("GET", "sessions"))["sessions"]
    assert [(s["group"], s["state"], s["requester"], s["message_count"]) for s in sessions] == [
        (live["group"], 2, "rasa.integration", 2),
        (sessions[1]["group"], 1, "rasa.integration", 1),
    ]
    assert sessions[0]["agent"]["user_name"] == DEFAULT_AGENT and sessions[1]["agent"] is None
    assert sessions[0]["queue_name"] == "IT Support"
