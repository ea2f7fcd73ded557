"""The Table API over the Virtual Agent conversations (records.py, table.py): the sys_cs_message, sys_cs_conversation and
interaction records a live chat leaves, the query syntax, the response shapes, read access, faults."""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional
from urllib.parse import urlencode

import aiohttp
import pytest

from connectors.servicenow.emulator import EmulatorConfig, start_emulator

from .conftest import BASIC, JSON_HEADERS, EmulatorClient, Reply
from .va_support import HEX32

TABLE = "/api/now/table/"
GLIDE_TIME = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"


async def table(client: EmulatorClient, name: str, auth: Optional[aiohttp.BasicAuth] = BASIC, **params: str) -> Reply:
    query = f"?{urlencode(params)}" if params else ""
    return await client.request("GET", f"{TABLE}{name}{query}", auth=auth, headers={"Accept": "application/json"})


async def rows(client: EmulatorClient, name: str, **params: str) -> List[Dict[str, Any]]:
    reply = await table(client, name, **params)
    assert reply.status == 200, reply.body
    return reply.body["result"]


async def interaction_of(client: EmulatorClient, chat: str) -> Dict[str, Any]:
    (found,) = await rows(client, "interaction", sysparm_query=f"client_session_id={chat}^ORDERBYDESCnumber",
                          sysparm_limit="1", sysparm_exclude_reference_link="true")
    return found


async def messages_of(client: EmulatorClient, chat: str, query: str = "", **params: str) -> List[Dict[str, Any]]:
    conversation = (await interaction_of(client, chat))["channel_metadata_document"]
    wanted = f"conversation={conversation}" + (f"^{query}" if query else "") + "^ORDERBYsequence"
    return await rows(client, "sys_cs_message", sysparm_query=wanted, sysparm_exclude_reference_link="true", **params)


def kept_items(payloads: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [item for payload in payloads for item in payload["body"] if "messageId" in item]


# ---------------------------------------------------------------------------------------------------------------------
# What a live chat leaves in the tables


async def test_every_pushed_message_is_a_sys_cs_message_with_the_push_messageid_in_order(va, receiver):
    await va.live()
    await va.send("my laptop is on fire")
    await va.client.ok("POST", "agent/message", {"session": "chat-1", "text": "Unplug it"})
    await va.client.ok("POST", "agent/close", {"session": "chat-1"})
    await receiver.wait_for(11)
    records = await messages_of(va.client, "chat-1")
    assert [int(r["sequence"]) for r in records] == list(range(1, len(records) + 1))
    outbound = [r for r in records if r["direction"] == "outbound"]
    pushed = kept_items(receiver.payloads)
    # Every kept item of every push, and nothing else, in the order the pushes went out.
    assert [r["sys_id"] for r in outbound] == [item["messageId"] for item in pushed]
    assert [json.loads(r["payload"]) for r in outbound] == pushed
    kinds = [(r["direction"], r["is_agent"], r["is_bot_message"], r["sender"]) for r in records]
    assert kinds == [
        ("inbound", "false", "false", "abel.tuter"),  # "I need a human"
        ("outbound", "false", "true", "virtual_agent"),  # "Please stand by ..."
        ("outbound", "false", "false", "system"),  # SwitchToLiveAgent
        ("outbound", "false", "false", "system"),  # System "Beth Anglin has entered the chat."
        ("outbound", "true", "false", "beth.anglin"),  # the greeting
        ("inbound", "false", "false", "abel.tuter"),
        ("outbound", "true", "false", "beth.anglin"),
        ("outbound", "false", "false", "system"),  # System "... has closed the support session."
        ("outbound", "false", "false", "system"),  # SwitchToVirtualAgent
    ]
    assert json.loads(records[5]["payload"])["text"] == "my laptop is on fire"
    for record in records:
        assert re.match(HEX32, record["sys_id"]) and re.match(GLIDE_TIME, record["send_time"])
    # Widget signals (spinners, Subscribe...) are neither kept nor given an id.
    signals = [item for p in receiver.payloads for item in p["body"] if "messageId" not in item]
    assert {item["actionType"] for item in signals} == {"StartSpinner", "SubscribeToSupportQueue", "EndSpinner",
                                                         "SubscribeToChatPresence"}


async def test_the_record_exists_before_its_push_arrives(va, receiver):
    seen: List[Optional[Dict[str, Any]]] = []

    async def look_up(received):
        for item in received.body["body"]:
            if "messageId" in item:
                reply = await table(va.client, f"sys_cs_message/{item['messageId']}")
                seen.append(reply.body.get("result") if reply.status == 200 else None)

    receiver.on_receive = look_up
    await va.live()
    await va.client.ok("POST", "agent/message", {"session": "chat-1", "text": "Hello"})
    await receiver.wait_for(9)
    assert len(seen) == 5 and all(record is not None for record in seen), seen
    assert [int(record["sequence"]) for record in seen] == sorted(int(record["sequence"]) for record in seen)


async def test_interaction_maps_the_client_session_to_its_conversation_and_records_the_agent(va, receiver):
    await va.live()
    interaction = await interaction_of(va.client, "chat-1")
    session = (await va.transcript())["session"]
    assert interaction["sys_id"] == session["interactionId"] == receiver.payloads[-1]["interactionId"]
    assert (interaction["state"], interaction["active"], interaction["agent_chat"]) == ("work_in_progress", "true", "true")
    assert interaction["channel_metadata_table"] == "sys_cs_conversation"
    assert re.match(r"^IMS\d{7}$", interaction["number"]) and interaction["closed_at"] == ""
    beth = (await rows(va.client, "sys_user", user_name="beth.anglin"))[0]
    assert interaction["assigned_to"] == beth["sys_id"]
    (conversation,) = await rows(va.client, "sys_cs_conversation", sys_id=interaction["channel_metadata_document"])
    assert conversation["state"] == "open" and re.match(GLIDE_TIME, conversation["live_agent_transfer_time"])


@pytest.mark.parametrize(
    "end, interaction_state, reason, conversation_state",
    [
        ("user", "closed_complete", "User Ended", "completed"),
        ("user_while_queued", "closed_abandoned", "Left Before Engagement", "canceled"),
        ("agent_completed", "closed_complete", "Agent Ended", "completed"),
        ("timeout", "closed_complete", "No User Response", "completed"),
        ("timeout_while_queued", "closed_abandoned", "No Activity", "canceled"),
        ("no_agents", "closed_abandoned", "No Agent Available", "canceled"),
        ("fault", "faulted", "Error", "faulted"),
    ],
)
async def test_an_ended_conversation_shows_in_interaction_and_conversation_before_the_push(
    va, receiver, end, interaction_state, reason, conversation_state
):
    states: List[str] = []

    async def look_up(received):
        if received.body.get("completed") or received.body.get("takeControl"):
            states.append((await interaction_of(va.client, "chat-1"))["state"])

    receiver.on_receive = look_up
    if end.endswith("queued") or end == "no_agents":
        await va.escalate()
    else:
        await va.live()
    if end.startswith("user"):
        await va.send(None, action="END_CONVERSATION", message={"text": "", "typed": True})
    elif end == "agent_completed":
        await va.client.ok("POST", "config", {"close_style": "completed"})
        await va.client.ok("POST", "agent/close", {"session": "chat-1"})
    elif end.startswith("timeout"):
        await va.client.ok("POST", "timeout", {"session": "chat-1"})
    elif end == "no_agents":
        await va.client.ok("POST", "va/no_agents", {"session": "chat-1"})
    else:
        await va.send(None, action="FAULT_CONVERSATION", cause="EXTERNAL_FAILURE")
    await receiver.wait_until(lambda received: bool(states))
    interaction = await interaction_of(va.client, "chat-1")
    assert (interaction["state"], interaction["state_reason"], interaction["active"]) == (interaction_state, reason, "false")
    assert re.match(GLIDE_TIME, interaction["closed_at"])
    (conversation,) = await rows(va.client, "sys_cs_conversation", sys_id=interaction["channel_metadata_document"])
    assert conversation["state"] == conversation_state and re.match(GLIDE_TIME, conversation["conversation_completed"])
    assert states == [interaction_state]


async def test_an_agent_close_that_switches_back_keeps_the_conversation_and_unassigns_the_interaction(va, receiver):
    await va.live()
    await va.client.ok("POST", "agent/close", {"session": "chat-1"})
    await receiver.wait_for(10)
    interaction = await interaction_of(va.client, "chat-1")
    assert (interaction["state"], interaction["active"], interaction["assigned_to"]) == ("work_in_progress", "true", "")
    last = (await messages_of(va.client, "chat-1", "direction=outbound"))[-1]
    assert json.loads(last["payload"])["actionType"] == "SwitchToVirtualAgent"


async def test_a_new_conversation_after_the_end_gets_a_new_interaction_and_sequence(va, receiver):
    await va.live()
    await va.send(None, action="END_CONVERSATION", message={"text": "", "typed": True})
    await receiver.wait_for(9)
    first = await interaction_of(va.client, "chat-1")
    await va.send("hi again")
    await receiver.wait_for(10)
    second = await interaction_of(va.client, "chat-1")
    assert second["sys_id"] != first["sys_id"] == receiver.payloads[8]["interactionId"]
    assert second["sys_id"] == receiver.payloads[9]["interactionId"]
    both = await rows(va.client, "interaction", client_session_id="chat-1")
    assert [i["active"] for i in both] == ["false", "true"]
    assert [int(r["sequence"]) for r in await messages_of(va.client, "chat-1")] == [1, 2]


async def test_delivery_reports_land_on_the_record(va, receiver):
    await va.live()
    greeting = receiver.payloads[7]["body"][0]["messageId"]
    await va.send(None, action="UPDATE_MESSAGES", message=[{"id": greeting, "status": "sent_to_user"}])
    record = (await table(va.client, f"sys_cs_message/{greeting}")).body["result"]
    assert record["external_chat_status"] == "sent_to_user"


# ---------------------------------------------------------------------------------------------------------------------
# Query syntax and response shapes


@pytest.fixture
async def chat(va, receiver) -> Dict[str, Any]:
    """A live chat with 13 messages (sequence 1 to 13): the user's AGENT request, 4 from accepting it, 3 user texts
    (6 to 8) and 5 agent texts (9 to 13)."""
    await va.live()
    for text in ("one", "two", "three"):
        await va.send(text)
    for text in ("a", "b", "c", "d", "e"):
        await va.client.ok("POST", "agent/message", {"session": "chat-1", "text": text})
    await receiver.wait_for(13)
    return await interaction_of(va.client, "chat-1")


async def test_sequence_compares_as_a_number_and_orders_both_ways(va, chat):
    conversation = chat["channel_metadata_document"]
    newer = await rows(va.client, "sys_cs_message", sysparm_query=f"conversation={conversation}^sequence>10^ORDERBYsequence",
                       sysparm_fields="sequence")
    assert newer == [{"sequence": "11"}, {"sequence": "12"}, {"sequence": "13"}]
    newest_first = await rows(va.client, "sys_cs_message",
                              sysparm_query=f"conversation={conversation}^ORDERBYDESCsequence", sysparm_fields="sequence",
                              sysparm_limit="2")
    assert newest_first == [{"sequence": "13"}, {"sequence": "12"}]
    between = await rows(va.client, "sys_cs_message",
                         sysparm_query=f"conversation={conversation}^sequence>=3^sequence<5", sysparm_fields="sequence")
    assert between == [{"sequence": "3"}, {"sequence": "4"}]


async def test_and_or_in_like_empty_and_new_query(va, chat):
    conversation = chat["channel_metadata_document"]
    base = f"conversation={conversation}"
    agent = await rows(va.client, "sys_cs_message", sysparm_query=f"{base}^direction=outbound^is_agent=true",
                       sysparm_fields="sequence")
    assert [r["sequence"] for r in agent] == ["5", "9", "10", "11", "12", "13"]
    either = await rows(va.client, "sys_cs_message", sysparm_query=f"{base}^sequence=1^ORsequence=13",
                        sysparm_fields="sequence")
    assert [r["sequence"] for r in either] == ["1", "13"]
    listed = await rows(va.client, "sys_cs_message", sysparm_query=f"{base}^sequenceIN2,4,99", sysparm_fields="sequence")
    assert [r["sequence"] for r in listed] == ["2", "4"]
    liked = await rows(va.client, "sys_cs_message", sysparm_query=f'{base}^payloadLIKE"value":"c"', sysparm_fields="sequence")
    assert [r["sequence"] for r in liked] == ["11"]
    empty = await rows(va.client, "sys_cs_message", sysparm_query=f"{base}^external_chat_statusISNOTEMPTY")
    assert empty == []
    new_query = await rows(va.client, "sys_cs_message", sysparm_query=f"{base}^sequence=2^NQ{base}^sequence=3",
                           sysparm_fields="sequence")
    assert [r["sequence"] for r in new_query] == ["2", "3"]
    starts = await rows(va.client, "interaction", sysparm_query="client_session_idSTARTSWITHchat-^stateINwork_in_progress",
                        sysparm_fields="client_session_id")
    assert starts == [{"client_session_id": "chat-1"}]


async def test_limit_offset_total_count_and_link_header(va, chat):
    conversation = chat["channel_metadata_document"]
    reply = await table(va.client, "sys_cs_message", sysparm_query=f"conversation={conversation}^ORDERBYsequence",
                        sysparm_fields="sequence", sysparm_limit="5", sysparm_offset="5")
    assert [r["sequence"] for r in reply.body["result"]] == ["6", "7", "8", "9", "10"]
    assert reply.headers["X-Total-Count"] == "13"
    links = dict((rel, url) for url, rel in re.findall(r'<([^>]+)>;rel="(\w+)"', reply.headers["Link"]))
    assert set(links) == {"first", "prev", "next", "last"}
    assert "sysparm_offset=10" in links["next"] and "sysparm_offset=0" in links["prev"]
    uncounted = await table(va.client, "sys_cs_message", sysparm_no_count="true", sysparm_limit="1")
    assert "X-Total-Count" not in uncounted.headers


async def test_values_are_strings_and_references_follow_the_reference_link_and_display_options(va, chat):
    message = (await rows(va.client, "sys_cs_message", sysparm_limit="1"))[0]
    assert all(isinstance(value, str) for key, value in message.items() if key != "conversation")
    conversation = message["conversation"]
    assert conversation == {
        "link": f"{va.client.url}/api/now/table/sys_cs_conversation/{chat['channel_metadata_document']}",
        "value": chat["channel_metadata_document"],
    }
    plain = (await rows(va.client, "interaction", sysparm_exclude_reference_link="true"))[0]
    shown = (await rows(va.client, "interaction", sysparm_display_value="true"))[0]
    both = (await rows(va.client, "interaction", sysparm_display_value="all", sysparm_fields="state,assigned_to"))[0]
    assert shown["assigned_to"] == "Beth Anglin" and shown["state"] == "Work in Progress"
    assert both["state"] == {"display_value": "Work in Progress", "value": "work_in_progress"}
    assert both["assigned_to"]["display_value"] == "Beth Anglin"
    assert both["assigned_to"]["value"] == plain["assigned_to"]
    assert both["assigned_to"]["link"].endswith(f"/api/now/table/sys_user/{plain['assigned_to']}")
    beth = await table(va.client, f"sys_user/{plain['assigned_to']}")
    assert beth.body["result"]["user_name"] == "beth.anglin"


async def test_fields_keep_the_order_asked_and_ignore_unknown_ones(va, chat):
    (record,) = await rows(va.client, "interaction", sysparm_fields="number,no_such_field,sys_id")
    assert list(record) == ["number", "sys_id"]


async def test_an_invalid_query_part_is_ignored_unless_the_instance_says_no_rows(va, chat):
    everything = await rows(va.client, "interaction", sysparm_query="no_such_field=1")
    assert len(everything) == 1
    await va.client.ok("POST", "config", {"table_invalid_query_returns_no_rows": True})
    assert await rows(va.client, "interaction", sysparm_query="no_such_field=1") == []


async def test_single_records_and_versions(va, chat):
    found = await table(va.client, f"interaction/{chat['sys_id']}")
    assert found.status == 200 and found.body["result"]["sys_id"] == chat["sys_id"]
    missing = await table(va.client, "interaction/0123456789abcdef0123456789abcdef")
    assert missing.status == 404 and missing.body["error"]["message"] == "No Record found"
    nothing = {"sysparm_query": "client_session_id=nobody"}
    assert (await table(va.client, "interaction", **nothing)).body == {"result": []}
    v2 = await va.client.request("GET", f"/api/now/v2/table/interaction?{urlencode(nothing)}", auth=BASIC,
                                 headers={"Accept": "application/json"})
    v1 = await va.client.request("GET", f"/api/now/v1/table/interaction?{urlencode(nothing)}", auth=BASIC,
                                 headers={"Accept": "application/json"})
    assert (v2.status, v2.body) == (200, {"result": []}) and v1.status == 404


async def test_bad_paging_numbers_are_400(client):
    assert (await table(client, "interaction", sysparm_limit="ten")).status == 400
    assert (await table(client, "interaction", sysparm_offset="-1")).status == 400


# ---------------------------------------------------------------------------------------------------------------------
# Access, faults


async def test_reading_needs_credentials_and_the_read_role(va, chat):
    assert (await table(va.client, "sys_cs_message", auth=None)).status == 401
    await va.client.ok("POST", "config", {"table_read_access": ["interaction", "sys_user"]})
    denied = await table(va.client, "sys_cs_message")
    assert denied.status == 403
    assert denied.body == {
        "error": {
            "message": "Insufficient rights to query records",
            "detail": "Field(s) present in the query do not have permission to be read",
        },
        "status": "failure",
    }
    assert (await table(va.client, f"sys_cs_conversation/{chat['channel_metadata_document']}")).status == 403
    assert (await table(va.client, "interaction")).status == 200


async def test_table_reads_can_be_faulted_per_chat(va, chat):
    await va.client.ok("POST", "faults", {"match": {"api": "table", "session": "chat-1"},
                                          "respond": {"status": 429, "headers": {"Retry-After": "3"}}, "times": 1})
    conversation = chat["channel_metadata_document"]
    limited = await table(va.client, "sys_cs_message", sysparm_query=f"conversation={conversation}")
    assert limited.status == 429 and limited.headers["Retry-After"] == "3"
    assert "for Table API exceeded" in limited.body["error"]["detail"]
    assert (await table(va.client, "sys_cs_message", sysparm_query=f"conversation={conversation}")).status == 200


async def test_provider_applications_are_still_listed(client):
    await client.ok("POST", "config", {"va_provider_applications": {"rasa-bot": "Rasa"}})
    (app,) = await rows(client, "sys_cs_provider_application", sysparm_query="inbound_id=rasa-bot")
    assert (app["name"], app["inbound_id"]) == ("Rasa", "rasa-bot") and re.match(HEX32, app["sys_id"])


async def test_a_table_read_goes_through_strict_headers(client):
    reply = await client.request("GET", f"{TABLE}interaction", auth=BASIC)
    assert reply.status == 400 and reply.body["error"]["message"] == "Invalid Accept header"


async def test_records_reset_with_the_emulator(va, chat):
    await va.client.ok("POST", "reset")
    assert await rows(va.client, "sys_cs_message", sysparm_query="") == []
    assert await rows(va.client, "interaction") == []


async def test_two_emulators_keep_their_own_records():
    async with await start_emulator(EmulatorConfig()) as one, await start_emulator(EmulatorConfig()) as two:
        async with aiohttp.ClientSession() as http:
            first, second = EmulatorClient(http, one), EmulatorClient(http, two)
            body = {"userId": "u", "clientSessionId": "c", "message": {"text": "hi", "typed": True}}
            reply = await first.request("POST", "/api/sn_va_as_service/bot/integration", json=body, auth=BASIC,
                                        headers=JSON_HEADERS)
            assert reply.status == 200
            assert len(await rows(first, "sys_cs_message")) == 2  # "hi" and the Virtual Agent's greeting
            assert await rows(second, "sys_cs_message") == []



async def test_a_query_on_one_conversation_or_session_reads_its_index_and_answers_the_same(va, chat, receiver):
    """Reads of one conversation's messages (or one client session's interactions) take only its records; the
    answer is what a full scan gives (an OR with a value nothing has forces the scan)."""
    await va.live("chat-2")
    await va.client.ok("POST", "agent/message", {"session": "chat-2", "text": "elsewhere"})
    conversation = chat["channel_metadata_document"]
    for table_name, condition in (("sys_cs_message", f"conversation={conversation}"),
                                  ("interaction", "client_session_id=chat-1")):
        indexed = await rows(va.client, table_name, sysparm_query=condition)
        scanned = await rows(va.client, table_name, sysparm_query=f"{condition}^OR{condition.split('=')[0]}=none")
        assert indexed == scanned and indexed
    assert len(await rows(va.client, "sys_cs_message", sysparm_query=f"conversation={conversation}")) == 13
