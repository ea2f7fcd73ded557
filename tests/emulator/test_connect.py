"""Connect Support routes (reference 5.3): sessions, messages, paging, leave, close, access rules."""

from __future__ import annotations

import re

import aiohttp

from connectors.servicenow.emulator import DEFAULT_AGENT, DEFAULT_QUEUE_SYS_ID, DEFAULT_USER
from connectors.servicenow.emulator.config import DEFAULT_GREETING

HEX32 = re.compile(r"^[0-9a-f]{32}$")
GLIDE_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
MESSAGE_FIELDS = {
    "sys_id", "id", "group", "message", "formatted_message", "created_by", "sender_name", "profile",
    "created_on", "timestamp", "reflected_field", "links", "attachments", "mentions",
}  # fmt: skip
ENTRY_FIELDS = {
    "sys_id", "number", "queue", "group", "state", "position", "wait_time", "average_wait_time", "opened_by",
    "assigned_to", "short_description", "work_start", "work_end", "transfer_state", "transfer_to", "transfer_from",
    "transfer_change", "transfer_should_close", "transfer_updated_on", "sys_updated_on",
}  # fmt: skip
MALLORY = aiohttp.BasicAuth("mallory", "pw")
BETH = aiohttp.BasicAuth(DEFAULT_AGENT, "pw")


async def test_queue_list_has_the_queue_fields(client):
    (queue,) = (await client.api("GET", "/support/queues")).result
    assert queue == {
        "sys_id": DEFAULT_QUEUE_SYS_ID,
        "name": "IT Support",
        "question": "",
        "average_wait_time": "0",
        "waiting_count": 0,
        "not_available": False,
        "escalate_to": "",
        "is_agent_for": False,
    }


async def test_create_session_returns_a_waiting_queue_entry(client):
    entry = await client.create_session("My laptop will not boot")
    assert set(entry) == ENTRY_FIELDS
    assert HEX32.match(entry["group"]) and HEX32.match(entry["sys_id"])
    assert entry["state"] == 1 and entry["position"] == 1
    assert entry["queue"] == DEFAULT_QUEUE_SYS_ID
    assert entry["short_description"] == "My laptop will not boot"
    assert entry["number"] == "CHAT0010001"
    assert entry["assigned_to"] == ""
    assert GLIDE_DATETIME.match(entry["sys_updated_on"])


async def test_first_message_is_the_question_with_every_field(client):
    entry = await client.create_session("My laptop will not boot")
    (message,) = await client.messages(entry["group"])
    assert set(message) == MESSAGE_FIELDS
    assert message["message"] == message["formatted_message"] == "My laptop will not boot"
    assert message["created_by"] == DEFAULT_USER
    assert message["sender_name"] == "Rasa Integration"
    assert message["group"] == entry["group"]
    assert message["reflected_field"] == "comments"
    assert HEX32.match(message["sys_id"]) and HEX32.match(message["profile"])
    assert isinstance(message["timestamp"], int)
    assert GLIDE_DATETIME.match(message["created_on"])
    assert message["links"] == message["attachments"] == message["mentions"] == []


async def test_create_session_errors(client):
    reply = await client.api("POST", f"/support/queues/{'0' * 32}/sessions", {"message": "hi"})
    assert reply.status == 404
    assert reply.body["error"]["message"] == "No Record found"
    reply = await client.api("POST", f"/support/queues/{DEFAULT_QUEUE_SYS_ID}/sessions", {})
    assert reply.status == 400
    queues = {DEFAULT_QUEUE_SYS_ID: {"name": "IT Support", "agents": [], "not_available": "Closed for lunch"}}
    await client.ok("POST", "config", {"connect_queues": queues})
    reply = await client.api("POST", f"/support/queues/{DEFAULT_QUEUE_SYS_ID}/sessions", {"message": "hi"})
    assert (reply.status, reply.body) == (403, {"result": "Closed for lunch"})


async def test_positions_and_queue_sessions_shape(client):
    first = await client.create_session("one")
    second = await client.create_session("two")
    listed = (await client.api("GET", f"/support/queues/{DEFAULT_QUEUE_SYS_ID}/sessions")).result
    assert [(e["queueEntry"]["group"], e["queueEntry"]["position"]) for e in listed] == [
        (first["group"], 1),
        (second["group"], 2),
    ]
    await client.ok("POST", "agent/accept", {"session": first["group"]})
    assert (await client.entry(second["group"]))["position"] == 1
    assert (await client.entry(first["group"]))["position"] == 0


async def test_find_sessions_filters_on_closed(client):
    open_entry = await client.create_session("open")
    closed_entry = await client.create_session("closed")
    await client.api("POST", f"/support/sessions/{closed_entry['group']}/leave", {})
    closed = (await client.api("GET", "/support/sessions?closed=true")).result
    still_open = (await client.api("GET", "/support/sessions?closed=false")).result
    assert [e["group"] for e in closed] == [closed_entry["group"]]
    assert [e["group"] for e in still_open] == [open_entry["group"]]


async def test_requester_posts_and_reads_newest_first(client):
    entry = await client.create_session("question")
    posted = (await client.api("POST", f"/conversations/{entry['group']}/messages", {"message": "more detail"})).result
    assert set(posted) == MESSAGE_FIELDS
    assert posted["created_by"] == DEFAULT_USER
    assert [m["message"] for m in await client.messages(entry["group"])] == ["more detail", "question"]


async def test_paging_with_before(client):
    await client.ok("POST", "config", {"connect_page_size": 3})
    await client.ok("POST", "clock", {"now_ms": 1_700_000_000_000})
    entry = await client.create_session("m0")
    for i in range(1, 7):
        await client.ok("POST", "clock", {"advance_ms": 1000})
        await client.api("POST", f"/conversations/{entry['group']}/messages", {"message": f"m{i}"})
    pages = []
    before = None
    for _ in range(5):  # bounded: a paging bug must fail the test, not hang it
        page = await client.messages(entry["group"], before=before)
        pages.append([m["message"] for m in page])
        if not page:
            break
        before = page[-1]["timestamp"]
    assert pages == [["m6", "m5", "m4"], ["m3", "m2", "m1"], ["m0"], []]


async def test_a_message_stamped_earlier_after_the_clock_moves_back_is_paged_by_its_timestamp(client):
    await client.ok("POST", "clock", {"now_ms": 1_700_000_010_000})
    entry = await client.create_session("q at 10 s")
    await client.ok("POST", "clock", {"advance_ms": -5000})
    await client.api("POST", f"/conversations/{entry['group']}/messages", {"message": "at 5 s"})
    await client.ok("POST", "clock", {"advance_ms": 10_000})
    await client.api("POST", f"/conversations/{entry['group']}/messages", {"message": "at 15 s"})

    newest_first = [m["message"] for m in await client.messages(entry["group"])]
    assert newest_first == ["at 15 s", "q at 10 s", "at 5 s"]
    older = await client.messages(entry["group"], before=1_700_000_010_000)
    assert [m["message"] for m in older] == ["at 5 s"]


async def test_frozen_clock_gives_equal_timestamps_in_stable_order(client):
    await client.ok("POST", "clock", {"now_ms": 1_700_000_000_123})
    entry = await client.create_session("q")
    await client.ok("POST", "agent/accept", {"session": entry["group"]})
    for text in ("a", "b", "c"):
        await client.ok("POST", "agent/message", {"text": text})
    first = await client.messages(entry["group"])
    second = await client.messages(entry["group"])
    assert [m["message"] for m in first] == ["c", "b", "a", DEFAULT_GREETING, "q"]
    assert first == second
    assert {m["timestamp"] for m in first} == {1_700_000_000_123}
    assert {m["created_on"] for m in first} == {"2023-11-14 22:13:20"}
    assert len({m["sys_id"] for m in first}) == len(first)


async def test_clock_returns_to_real_time(client):
    frozen = await client.ok("POST", "clock", {"now_ms": 1000})
    assert frozen == {"now_ms": 1000, "frozen": True}
    real = await client.ok("POST", "clock", {"now_ms": None})
    assert real["frozen"] is False and real["now_ms"] > 1_600_000_000_000


async def test_leave_is_idempotent(client):
    entry = await client.create_session()
    first = (await client.api("POST", f"/support/sessions/{entry['group']}/leave", {})).result
    second = (await client.api("POST", f"/support/sessions/{entry['group']}/leave", {})).result
    assert first["state"] == 7
    assert first == second


async def test_posting_after_close_is_403_with_result(client, live):
    await client.ok("POST", "agent/close", {"session": live["group"]})
    reply = await client.api("POST", f"/conversations/{live['group']}/messages", {"message": "hello?"})
    assert reply.status == 403
    assert isinstance(reply.body["result"], str)


async def test_unknown_conversation_is_404(client):
    assert (await client.api("GET", f"/conversations/{'a' * 32}/messages")).status == 404
    assert (await client.api("POST", f"/conversations/{'a' * 32}/messages", {"message": "x"})).status == 404
    assert (await client.api("POST", f"/support/sessions/{'a' * 32}/leave", {})).status == 404


async def test_only_requester_and_agent_may_use_a_conversation(client, live):
    await client.ok("POST", "config", {"basic_users": {DEFAULT_USER: "secret", "mallory": "pw"}})
    path = f"/conversations/{live['group']}/messages"
    reply = await client.api("POST", path, {"message": "let me in"}, auth=MALLORY)
    assert reply.status == 403 and isinstance(reply.body["result"], str)
    assert (await client.api("GET", path, auth=MALLORY)).status == 403
    assert (await client.api("POST", f"/support/sessions/{live['group']}/leave", {}, auth=MALLORY)).status == 403
    assert (await client.api("GET", f"/support/sessions?group_id={live['group']}", auth=MALLORY)).result == []


async def test_bad_before_and_bad_reflected_field_are_400(client):
    entry = await client.create_session()
    assert (await client.api("GET", f"/conversations/{entry['group']}/messages?before=yesterday")).status == 400
    reply = await client.api(
        "POST", f"/conversations/{entry['group']}/messages", {"message": "x", "reflected_field": "description"}
    )
    assert reply.status == 400


async def test_agent_works_through_the_real_agent_routes(client):
    await client.ok("POST", "config", {"basic_users": {DEFAULT_USER: "secret", DEFAULT_AGENT: "pw"}})
    entry = await client.create_session("printer on fire")
    accepted = (await client.api("POST", f"/support/queues/{DEFAULT_QUEUE_SYS_ID}/accept", {}, auth=BETH)).result
    assert accepted["group"] == entry["group"] and accepted["state"] == 2
    path = f"/conversations/{entry['group']}/messages"
    assert (await client.api("POST", path, {"message": "On my way"}, auth=BETH)).status == 200
    newest = (await client.messages(entry["group"]))[0]
    assert (newest["created_by"], newest["sender_name"]) == (DEFAULT_AGENT, "Beth Anglin")
    assert newest["message"] == "On my way"
    close = f"/support/sessions/{entry['group']}/close"
    closed = await client.api("POST", close, {"agent_leave": True}, auth=BETH)
    assert closed.result["state"] == 3
    assert (await client.messages(entry["group"]))[0]["message"] == "Beth Anglin has left the support session"


async def test_agent_accept_route_rules(client):
    await client.ok("POST", "config", {"basic_users": {DEFAULT_USER: "secret", DEFAULT_AGENT: "pw"}})
    reply = await client.api("POST", f"/support/queues/{DEFAULT_QUEUE_SYS_ID}/accept", {})
    assert reply.status == 403 and isinstance(reply.body["result"], str)
    reply = await client.api("POST", f"/support/queues/{DEFAULT_QUEUE_SYS_ID}/accept", {}, auth=BETH)
    assert reply.status == 404


async def test_requester_close_route_closes_without_a_message(client):
    entry = await client.create_session()
    closed = (await client.api("POST", f"/support/sessions/{entry['group']}/close", {"agent_leave": False})).result
    assert closed["state"] == 3
    assert len(await client.messages(entry["group"])) == 1
