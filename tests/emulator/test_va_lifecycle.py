"""The VA session state machine (reference 5.4 table) as a connector's webhook sees it: accept, agent messages,
typing, transfer, the ways a chat ends, idle timeout, batching, and what the transcript and summaries record."""

from __future__ import annotations

import re

from connectors.servicenow.emulator import DEFAULT_GREETING

from .va_support import HEX32, describe, flags, items_of

ENTERED = "ActionMsg:System:Beth Anglin has entered the chat."
STAND_BY = "OutputText:Please stand by while I connect you to a live agent."
QUEUEING = [STAND_BY, "ActionMsg:StartSpinner", "ActionMsg:SubscribeToSupportQueue"]
ACCEPT = [
    "ActionMsg:EndSpinner",
    "ActionMsg:SubscribeToChatPresence",
    "ActionMsg:SwitchToLiveAgent",
    ENTERED,
    f"OutputText:{DEFAULT_GREETING}",
]


async def test_full_lifecycle_callbacks_in_order(va, receiver):
    await va.escalate()
    accepted = await va.client.ok("POST", "agent/accept", {"session": "chat-1"})
    await va.client.ok("POST", "agent/message", {"session": "chat-1", "text": "Hi, I'm Beth"})
    closed = await va.client.ok("POST", "agent/close", {"session": "chat-1"})
    payloads = [r.body for r in await receiver.wait_for(11)]
    assert items_of(payloads) == [
        *QUEUEING,
        *ACCEPT,
        "OutputText:Hi, I'm Beth",
        "ActionMsg:System:Beth Anglin has closed the support session.",
        "ActionMsg:SwitchToVirtualAgent",
    ]
    assert all(len(p["body"]) == 1 and flags(p) == {"agentChat": True} for p in payloads)
    assert payloads[3]["body"][0] == {"uiType": "ActionMsg", "actionType": "EndSpinner", "spinnerType": "wait_time"}
    greeting, message = payloads[7]["body"][0], payloads[8]["body"][0]
    for item in (greeting, message):
        assert (item["group"], item["maskType"]) == ("DefaultText", "NONE")
        assert re.match(HEX32, item["messageId"])
        info = item["agentInfo"]
        assert list(info) == ["sentFromAgent", "agentName", "agentAvatar", "agentId"]
        assert (info["sentFromAgent"], info["agentName"]) == (True, "Beth Anglin")
        assert info["agentAvatar"].endswith(".iix?t=small")
        assert re.match(HEX32, info["agentId"])
    assert greeting["messageId"] != message["messageId"]
    # The control plane answers with what it created.
    assert items_of(accepted["callbacks"]) == ACCEPT
    assert [m["message"] for m in accepted["messages"]] == ["Beth Anglin has entered the chat.", DEFAULT_GREETING]
    assert (closed["session"]["state"], closed["session"]["open"]) == ("VA", False)


async def test_accept_without_greeting_and_with_a_named_agent(va, receiver):
    await va.client.ok("POST", "config", {"greeting_text": None})
    await va.escalate()
    agent = {"name": "Abel Tuter", "user_name": "abel.tuter", "id": "f" * 32}
    body = await va.client.ok("POST", "agent/accept", {"agent": agent})
    assert items_of(body["callbacks"]) == [*ACCEPT[:3], "ActionMsg:System:Abel Tuter has entered the chat."]
    assert body["session"]["agent"] == agent
    await va.client.ok("POST", "agent/message", {"text": "Abel here"})
    last = (await receiver.wait_for(8))[-1].body
    assert last["body"][0]["agentInfo"]["agentName"] == "Abel Tuter"
    assert "f" * 32 in last["body"][0]["agentInfo"]["agentAvatar"]


async def test_agent_operations_need_the_right_state(va):
    await va.send("hi")
    assert (await va.client.control("POST", "agent/accept", {"session": "chat-1"})).status == 409
    assert (await va.client.control("POST", "agent/message", {"session": "chat-1", "text": "x"})).status == 409
    assert (await va.client.control("POST", "agent/typing", {"session": "chat-1"})).status == 409
    assert (await va.client.control("POST", "agent/close", {"session": "chat-1"})).status == 409
    assert (await va.client.control("POST", "va/no_agents", {"session": "chat-1"})).status == 409
    await va.escalate()
    assert (await va.client.control("POST", "agent/message", {"session": "chat-1", "text": "x"})).status == 409
    await va.client.ok("POST", "agent/accept", {"session": "chat-1"})
    assert (await va.client.control("POST", "agent/accept", {"session": "chat-1"})).status == 409
    assert (await va.client.control("POST", "agent/message", {"session": "nope", "text": "x"})).status == 404


async def test_user_text_while_live_is_stored_without_a_callback(va, receiver):
    await va.live()
    sent = await va.send("my printer is on fire", clientMessageId="c-1")
    # A callback for the text would come before the typing one: the session's callbacks keep their order.
    await va.client.ok("POST", "agent/typing", {"on": True})
    ninth = (await receiver.wait_for(9))[8].body
    assert items_of([ninth]) == ["ActionMsg:StartTypingIndicator"]
    assert ninth["message"] == sent["message"]
    user_messages = [m for m in (await va.transcript())["messages"] if m["created_by"] == "abel.tuter"]
    assert [m["message"] for m in user_messages] == ["I need a human", "my printer is on fire"]
    assert {(m["sender_name"], m["reflected_field"]) for m in user_messages} == {("abel.tuter", "comments")}


async def test_user_text_while_queued_is_stored_without_a_callback(va, receiver):
    await va.escalate()
    await va.send("still there?")
    await va.send("Switch to live agent", action="AGENT")  # pypestream's second AGENT: nothing new
    await va.client.ok("POST", "agent/accept")
    await receiver.wait_for(8)
    assert items_of(receiver.payloads[3:8]) == ACCEPT
    texts = [m["message"] for m in (await va.transcript())["messages"] if m["created_by"] == "abel.tuter"]
    assert texts == ["I need a human", "still there?", "Switch to live agent"]


async def test_typing_on_and_off(va, receiver):
    await va.live()
    on = await va.client.ok("POST", "agent/typing", {"on": True})
    await va.client.ok("POST", "agent/typing", {"on": False})
    payloads = [r.body for r in await receiver.wait_for(10)][8:]
    assert items_of(payloads) == ["ActionMsg:StartTypingIndicator", "ActionMsg:EndTypingIndicator"]
    assert all(flags(p) == {"agentChat": True} for p in payloads)
    assert on["supported"] is True and items_of(on["callbacks"]) == ["ActionMsg:StartTypingIndicator"]


async def test_typing_with_long_action_names(va, receiver):
    await va.client.ok("POST", "config", {"va_long_action_names": True})
    await va.live()
    await va.client.ok("POST", "agent/typing", {"on": True})
    await va.client.ok("POST", "agent/typing", {"on": False})
    payloads = [r.body for r in await receiver.wait_for(10)][8:]
    assert items_of(payloads) == [
        "ActionMsg:StartTypingIndicatorActionMsg",
        "ActionMsg:EndTypingIndicatorActionMsg",
    ]


async def test_typing_on_connect_stays_unsupported(va, client):
    entry = await client.create_session()
    await client.ok("POST", "agent/accept", {"session": entry["group"]})
    assert await client.ok("POST", "agent/typing", {"session": entry["group"], "on": True}) == {"supported": False}
    assert await client.ok("POST", "agent/typing", {"on": True}) == {"supported": False}


async def test_transfer_announces_both_agents_and_switches_agent_info(va, receiver):
    await va.live()
    to = {"name": "Abel Tuter", "user_name": "abel.tuter"}
    body = await va.client.ok("POST", "agent/transfer", {"to": to})
    await va.client.ok("POST", "agent/message", {"text": "Abel here"})
    payloads = [r.body for r in await receiver.wait_for(11)][8:]
    assert items_of(payloads) == [
        "ActionMsg:System:Beth Anglin has left the chat.",
        "ActionMsg:System:Abel Tuter has entered the chat.",
        "OutputText:Abel here",
    ]
    assert all(flags(p) == {"agentChat": True} for p in payloads)
    assert payloads[2]["body"][0]["agentInfo"]["agentName"] == "Abel Tuter"
    assert body["session"]["agent"]["user_name"] == "abel.tuter"
    await va.client.ok("POST", "agent/close")
    await receiver.wait_for(13)
    assert describe(receiver.payloads[11]["body"][0]) == "ActionMsg:System:Abel Tuter has closed the support session."


async def test_close_style_completed_marks_the_last_callback(va, receiver):
    await va.client.ok("POST", "config", {"close_style": "completed"})
    await va.live()
    body = await va.client.ok("POST", "agent/close")
    system, switch = [r.body for r in await receiver.wait_for(10)][8:]
    assert items_of([system, switch]) == [
        "ActionMsg:System:Beth Anglin has closed the support session.",
        "ActionMsg:SwitchToVirtualAgent",
    ]
    assert flags(system) == {"agentChat": True}
    assert flags(switch) == {"agentChat": True, "completed": True}
    assert (body["session"]["state"], body["session"]["open"]) == ("CLOSED", False)


async def test_silent_close_sends_only_switch_to_virtual_agent(va, receiver):
    await va.live()
    await va.client.ok("POST", "agent/close", {"message": False})
    (switch,) = [r.body for r in await receiver.wait_for(9)][8:]
    assert items_of([switch]) == ["ActionMsg:SwitchToVirtualAgent"]


async def test_after_a_close_the_virtual_agent_answers_again(va, receiver):
    await va.live()
    await va.client.ok("POST", "agent/close")
    await va.send("thanks")
    last = (await receiver.wait_for(11))[10].body
    assert items_of([last]) == ["OutputText:Hi, I'm your Virtual Agent. Let me know how I can help you today."]
    assert flags(last) == {}


async def test_end_conversation_completes_and_closes(va, receiver):
    await va.live()
    sent = await va.send("", action="END_CONVERSATION", cause="USER_ENDED")
    (ended,) = [r.body for r in await receiver.wait_for(9)][8:]
    assert items_of([ended]) == ["OutputText:The conversation has ended. If you need help again, type hi."]
    assert flags(ended) == {"completed": True}
    assert ended["message"] == {"text": "", "typed": True}
    assert ended["requestId"] == sent["requestId"]
    transcript = await va.transcript()
    assert (transcript["session"]["state"], transcript["session"]["open"]) == ("CLOSED", False)
    (event,) = [e for e in transcript["events"] if e["action"] == "END_CONVERSATION"]
    assert (event["cause"], event["state"], event["requestId"]) == ("USER_ENDED", "LIVE", sent["requestId"])
    assert (await va.client.control("POST", "agent/message", {"session": "chat-1", "text": "x"})).status == 409


async def test_requester_close_from_the_control_plane_is_an_end_conversation(va, receiver):
    await va.live()
    body = await va.client.ok("POST", "agent/close", {"who": "requester"})
    assert [flags(p) for p in body["callbacks"]] == [{"completed": True}]
    assert body["session"]["state"] == "CLOSED"


async def test_a_new_message_after_the_end_starts_a_new_conversation(va, receiver):
    await va.escalate()
    before = (await va.transcript())["session"]["interactionId"]
    await va.send("", action="END_CONVERSATION")
    await va.send("hi")
    greeting = (await receiver.wait_for(5))[4].body
    assert describe(greeting["body"][0]).startswith("OutputText:Hi, I'm your Virtual Agent")
    assert greeting["interactionId"] != before
    transcript = await va.transcript()
    assert transcript["session"]["state"] == "VA"
    assert [e["action"] for e in transcript["events"]] == ["AGENT", "END_CONVERSATION", "NEW_CONVERSATION"]


async def test_fault_conversation_hands_control_back_with_score_zero(va, receiver):
    await va.live()
    await va.send(None, action="FAULT_CONVERSATION", cause="EXTERNAL_FAILURE")
    (fault,) = [r.body for r in await receiver.wait_for(9)][8:]
    assert (fault["body"], fault["takeControl"], fault["score"]) == ([], True, 0)
    assert "agentChat" not in fault and "completed" not in fault
    transcript = await va.transcript()
    assert transcript["session"]["state"] == "CLOSED"
    assert [(e["action"], e["cause"]) for e in transcript["events"] if "cause" in e] == [
        ("FAULT_CONVERSATION", "EXTERNAL_FAILURE")
    ]


async def test_no_agents_hands_control_back(va, receiver):
    await va.escalate()
    body = await va.client.ok("POST", "va/no_agents")
    (no_agents,) = [r.body for r in await receiver.wait_for(4)][3:]
    assert items_of([no_agents]) == [
        "OutputText:There are no agents available to chat right now. Please try again later."
    ]
    assert flags(no_agents) == {"takeControl": True}
    assert (body["session"]["state"], body["session"]["open"]) == ("CLOSED", False)
    assert (await va.client.control("POST", "va/no_agents")).status == 404
    assert (await va.client.control("POST", "va/no_agents", {"session": "chat-1"})).status == 409


async def test_no_agents_is_for_va_sessions_only(va, client):
    entry = await client.create_session()
    assert (await client.control("POST", "va/no_agents", {"session": entry["group"]})).status == 400


async def test_explicit_timeout(va, receiver):
    await va.live()
    body = await va.client.ok("POST", "timeout")
    (timed_out,) = [r.body for r in await receiver.wait_for(9)][8:]
    assert items_of([timed_out]) == ["ActionMsg:System:The conversation with a live agent has timed out."]
    assert flags(timed_out) == {"agentChat": True, "takeControl": True}
    assert body["session"]["state"] == "CLOSED"
    assert (await va.client.control("POST", "timeout", {"session": "chat-1"})).status == 409


async def test_idle_sessions_time_out_when_the_clock_moves(va, receiver):
    await va.client.ok("POST", "config", {"idle_timeout_s": 60})
    await va.send("hi", session="bot-only")  # no live-agent chat: not timed out by idleness
    await va.escalate(session="idle")
    await va.escalate(session="busy")
    await va.client.ok("POST", "clock", {"advance_ms": 59_000})
    assert (await va.transcript("idle"))["session"]["state"] == "QUEUED"
    await va.send("still here", session="busy")
    await va.client.ok("POST", "clock", {"advance_ms": 1_000})
    assert (await va.transcript("idle"))["session"]["state"] == "CLOSED"
    assert (await va.transcript("busy"))["session"]["state"] == "QUEUED"
    assert (await va.transcript("bot-only"))["session"]["state"] == "VA"
    await receiver.wait_until(lambda got: any(r.body.get("takeControl") for r in got))
    (timed_out,) = [p for p in receiver.payloads if p.get("takeControl")]
    assert timed_out["clientSessionId"] == "idle"
    assert items_of([timed_out]) == ["ActionMsg:System:The conversation with a live agent has timed out."]


async def test_batched_mode_sends_one_callback_per_event(va, receiver):
    await va.client.ok("POST", "config", {"va_batching": "batched", "close_style": "completed"})
    await va.send("I need a human", action="AGENT")
    await va.client.ok("POST", "agent/accept")
    await va.client.ok("POST", "agent/close")
    queued, accepted, closed = [r.body for r in await receiver.wait_for(3)]
    assert items_of([queued]) == QUEUEING and flags(queued) == {"agentChat": True}
    assert items_of([accepted]) == ACCEPT and flags(accepted) == {"agentChat": True}
    assert items_of([closed]) == [
        "ActionMsg:System:Beth Anglin has closed the support session.",
        "ActionMsg:SwitchToVirtualAgent",
    ]
    assert flags(closed) == {"agentChat": True, "completed": True}
    assert len((await va.settled())["callbacks"]) == 3


async def test_transcript_records_typing_viewing_update_messages_history_and_context(va, receiver):
    history = [
        {"displayName": "Bot", "isBotMessage": True, "timestamp": "1714564800000", "type": "text", "value": "Hi"}
    ]
    await va.escalate(history=history, contextVariables={"b2b_category": "humanresource"})
    await va.client.ok("POST", "agent/accept")
    await receiver.wait_for(8)
    greeting_id = receiver.payloads[7]["body"][0]["messageId"]
    await va.send(None, action="TYPING")
    await va.send(None, action="VIEWING")
    await va.send(None, action="UPDATE_MESSAGES", message=[{"id": greeting_id, "status": "sent_to_user"}])
    await va.send(None, action="UPDATE_MESSAGES", message={"id": "unknown-id", "status": "external_error"})
    transcript = await va.transcript()
    assert [(e["action"], e["state"]) for e in transcript["events"]] == [
        ("AGENT", "VA"),
        ("TYPING", "LIVE"),
        ("VIEWING", "LIVE"),
        ("UPDATE_MESSAGES", "LIVE"),
        ("UPDATE_MESSAGES", "LIVE"),
    ]
    assert transcript["events"][3]["messages"] == [{"id": greeting_id, "status": "sent_to_user"}]
    assert transcript["events"][4]["messages"] == [{"id": "unknown-id", "status": "external_error"}]
    (greeting,) = [m for m in transcript["messages"] if m["sys_id"] == greeting_id]
    assert (greeting["message"], greeting["created_by"], greeting["delivery_status"]) == (
        DEFAULT_GREETING,
        "beth.anglin",
        "sent_to_user",
    )
    assert transcript["history"] == history
    assert transcript["context_variables"] == {"b2b_category": "humanresource"}
    assert [r["action"] for r in transcript["requests"]] == [
        "AGENT",
        "TYPING",
        "VIEWING",
        "UPDATE_MESSAGES",
        "UPDATE_MESSAGES",
    ]
    # None of these produced a callback.
    assert len((await va.settled())["callbacks"]) == 8


async def test_transcript_messages_use_the_connect_message_keys(va, client, receiver):
    await va.live()
    await va.client.ok("POST", "agent/message", {"text": "note to self", "work_note": True})
    await va.client.ok("POST", "agent/message", {"text": "Recording started", "system": True})
    va_messages = (await va.transcript())["messages"]
    assert [(m["created_by"], m["sender_name"], m["reflected_field"], m["message"]) for m in va_messages] == [
        ("abel.tuter", "abel.tuter", "comments", "I need a human"),
        ("system", "system", "comments", "Beth Anglin has entered the chat."),
        ("beth.anglin", "Beth Anglin", "comments", DEFAULT_GREETING),
        ("beth.anglin", "Beth Anglin", "work_notes", "note to self"),
        ("system", "system", "comments", "Recording started"),
    ]
    entry = await client.create_session()
    connect_message = (await client.ok("GET", f"transcript/{entry['group']}"))["messages"][0]
    assert set(connect_message) <= set(va_messages[0])
    # The work note made no callback; the system message did.
    await receiver.wait_for(9)
    assert items_of(receiver.payloads[8:]) == ["ActionMsg:System:Recording started"]
    assert len((await va.settled())["callbacks"]) == 9


async def test_open_flag_and_sessions_across_both_apis(va, client, receiver):
    entry = await client.create_session()
    await va.send("hi", session="va-chat")

    async def summaries():
        return {s["session"]: s for s in (await client.ok("GET", "sessions"))["sessions"]}

    listed = await summaries()
    assert [s["api"] for s in listed.values()] == ["connect", "va"]
    assert (listed[entry["group"]]["open"], listed["va-chat"]["open"]) == (True, False)
    assert listed["va-chat"]["state"] == "VA"
    await va.escalate(session="va-chat")
    assert (await summaries())["va-chat"]["open"] is True
    # Without a session, accept takes the oldest waiting chat of either API: the Connect one first.
    assert (await client.ok("POST", "agent/accept"))["session"]["api"] == "connect"
    assert (await client.ok("POST", "agent/accept"))["session"]["session"] == "va-chat"
    listed = await summaries()
    assert (listed[entry["group"]]["state"], listed["va-chat"]["state"]) == (2, "LIVE")
    # ... and message/close act on the most recently accepted one: the VA chat.
    assert "callbacks" in await client.ok("POST", "agent/message", {"text": "to the VA chat"})
    await client.ok("POST", "agent/close")
    await client.ok("POST", "agent/close")
    listed = await summaries()
    assert (listed[entry["group"]]["open"], listed["va-chat"]["open"]) == (False, False)
    assert (listed[entry["group"]]["state"], listed["va-chat"]["state"]) == (3, "VA")


async def test_reset_forgets_va_sessions_and_callbacks(va, receiver):
    await va.escalate()
    await va.settled()
    await va.client.ok("POST", "reset")
    assert (await va.client.ok("GET", "sessions"))["sessions"] == []
    assert (await va.client.ok("GET", "callbacks")) == {"callbacks": [], "pending": 0}
    assert (await va.client.ok("GET", "config"))["va_callback_url"] is None
