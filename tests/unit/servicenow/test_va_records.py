"""Reading a Virtual Agent chat back from ServiceNow's tables (va_records.py): against the emulator on a loopback
port (the records a real chat leaves, read with the channel's own HTTP client and credentials), and against
aioresponses for answers the emulator does not give (foreign records, odd payloads)."""

import logging
import re
from typing import Any, AsyncIterator, Dict, List, Optional

import pytest
from aioresponses import aioresponses

from connectors.servicenow.servicenow.base import AgentJoined, AgentMessage, ChatClosed, CloseReason
from connectors.servicenow.servicenow.http import ServiceNowHTTP
from connectors.servicenow.servicenow.va_records import (
    ACCESS_RECHECK_S,
    ConversationRecords,
    NoReadAccess,
    RecordCursor,
)
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.errors import ServiceNowUnavailable

from tests.unit.servicenow.va_instance import TABLE, Instance, instance, no_sleep, same  # noqa: F401 (instance is a fixture)


def flat(catch_up: Any) -> List[Any]:
    return [same(event) for recovered in catch_up.recovered for event in recovered.events]


async def test_a_chat_read_back_gives_the_events_its_pushes_gave_in_sequence_order(instance):
    chat = await instance.open_chat()
    pushes = await instance.agent("accept", chat)
    pushes += await instance.agent("message", chat, text="Unplug it, then plug it back in")
    pushes += await instance.agent("message", chat, text="Then hold the power button")
    catch_up = await instance.records.catch_up(chat, RecordCursor())
    pushed = [same(event) for event in instance.events_of(pushes) if not isinstance(event, AgentJoined)]
    read = flat(catch_up)
    # Everything the agent's side pushed after the opening, identical, in the same order.
    assert read[-len(pushed):] == pushed
    assert [r.sequence for r in catch_up.recovered] == sorted(r.sequence for r in catch_up.recovered)
    texts = [event.text for r in catch_up.recovered for event in r.events if isinstance(event, AgentMessage)]
    assert texts[-2:] == ["Unplug it, then plug it back in", "Then hold the power button"]
    assert any(isinstance(event, AgentJoined) for r in catch_up.recovered for event in r.events)
    assert catch_up.closed is None
    assert catch_up.cursor.conversation_id and catch_up.cursor.sequence == catch_up.recovered[-1].sequence
    # The conversation was unknown: one read of the interaction, one of the messages.
    assert catch_up.requests == 2


async def test_from_a_cursor_only_what_came_after_it_in_one_request(instance):
    chat = await instance.open_chat()
    await instance.agent("accept", chat)
    first = await instance.records.catch_up(chat, RecordCursor())
    seen = {r.message_id for r in first.recovered}
    await instance.agent("message", chat, text="one")
    await instance.agent("message", chat, text="two")
    before = instance.table_requests()
    second = await instance.records.catch_up(chat, first.cursor, lambda message_id: message_id in seen)
    assert [event.text for r in second.recovered for event in r.events] == ["one", "two"]
    # Both unseen: the interaction is read too, in case the chat's end was lost with them.
    assert second.unseen == 2 and second.requests == 2 == instance.table_requests() - before
    seen |= {r.message_id for r in second.recovered}
    quiet = await instance.records.catch_up(chat, second.cursor, lambda message_id: message_id in seen)
    assert (quiet.recovered, quiet.requests, quiet.cursor) == ((), 1, second.cursor)


async def test_a_long_backlog_is_read_a_page_at_a_time(instance):
    chat = await instance.open_chat()
    await instance.agent("accept", chat)
    start = await instance.records.catch_up(chat, RecordCursor())
    for number in range(5):
        await instance.agent("message", chat, text=f"message {number}")
    paged = ConversationRecords(instance.http, page_size=2)
    catch_up = await paged.catch_up(chat, start.cursor, lambda _id: True)
    assert [event.text for r in catch_up.recovered for event in r.events] == [f"message {n}" for n in range(5)]
    # Pages of 2, 2 and 1: the last one, short, says the backlog is read.
    assert catch_up.requests == 3
    queries = [r.query["sysparm_query"] for r in instance.emulator.state.requests if r.path == TABLE + "sys_cs_message"]
    assert [q.split("^")[2] for q in queries[-3:]] == [
        f"sequence>{start.cursor.sequence}", f"sequence>{start.cursor.sequence + 2}", f"sequence>{start.cursor.sequence + 4}",
    ]


async def test_an_agents_close_with_the_default_style_is_the_switch_to_virtual_agent_record(instance):
    chat = await instance.open_chat()
    await instance.agent("accept", chat)
    start = await instance.records.catch_up(chat, RecordCursor())
    pushes = await instance.agent("close", chat)
    catch_up = await instance.records.catch_up(chat, start.cursor, check_state=True)
    events = [event for r in catch_up.recovered for event in r.events]
    closes = [event for event in events if isinstance(event, ChatClosed)]
    assert closes and all(event.reason is CloseReason.AGENT_CLOSED for event in closes)
    assert [same(e) for e in events] == [same(e) for e in instance.events_of(pushes) if isinstance(e, ChatClosed)]
    # The interaction stays open (the conversation went back to the Virtual Agent): the record is the end.
    assert catch_up.closed is None


@pytest.mark.parametrize(
    "end, reason",
    [
        (("close", {"message": False}), CloseReason.AGENT_CLOSED),
        (("timeout", {}), CloseReason.RETURNED),
    ],
)
async def test_an_ended_interaction_is_the_end_of_the_chat(instance, end, reason):
    await instance.control("config", {"close_style": "completed"})
    chat = await instance.open_chat()
    await instance.agent("accept", chat)
    start = await instance.records.catch_up(chat, RecordCursor())
    what, body = end
    if what == "timeout":
        await instance.control("timeout", {"session": chat})
    else:
        await instance.agent(what, chat, **body)
    catch_up = await instance.records.catch_up(chat, start.cursor, lambda _id: True, check_state=True)
    assert catch_up.closed == ChatClosed(reason)


async def test_no_agent_available_ends_the_chat_as_takecontrol_did(instance):
    chat = await instance.open_chat()
    await instance.control("va/no_agents", {"session": chat})
    catch_up = await instance.records.catch_up(chat, RecordCursor())
    assert catch_up.closed == ChatClosed(CloseReason.RETURNED)
    assert [e.text for r in catch_up.recovered for e in r.events][-1].startswith("There are no agents available")


async def test_a_message_no_push_brought_makes_it_read_the_interaction_too(instance):
    """The push that announced the end (takeControl) is lost with the message before it: both are recovered."""
    chat = await instance.open_chat()
    await instance.agent("accept", chat)
    start = await instance.records.catch_up(chat, RecordCursor())
    await instance.control("timeout", {"session": chat})
    catch_up = await instance.records.catch_up(chat, start.cursor)
    assert catch_up.unseen == 1 and catch_up.requests == 2
    assert catch_up.closed == ChatClosed(CloseReason.RETURNED)
    # A caller that leaves the state to a later pass (the push order) makes one request.
    hurried = await instance.records.catch_up(chat, start.cursor, state_on_unseen=False)
    assert (hurried.requests, hurried.closed) == (1, None)


async def test_oauth_credentials_read_the_tables_too(instance):
    with_oauth = Instance(instance.emulator, instance.control_http, oauth=True)
    try:
        chat = await instance.open_chat()
        await instance.agent("accept", chat)
        catch_up = await with_oauth.records.catch_up(chat, RecordCursor())
        assert any(isinstance(e, AgentMessage) for r in catch_up.recovered for e in r.events)
        assert {r.headers.get("Authorization", "")[:6] for r in instance.emulator.state.requests
                if r.path.startswith(TABLE)} >= {"Bearer"}
    finally:
        await with_oauth.http.aclose()


async def test_without_read_access_it_says_so_once_and_stops_asking_until_the_recheck(instance, caplog):
    chat = await instance.open_chat()
    await instance.control("config", {"table_read_access": ["sys_user"]})
    caplog.set_level(logging.DEBUG, logger="connectors.servicenow.servicenow.va_records")
    with pytest.raises(NoReadAccess) as refused:
        await instance.records.catch_up(chat, RecordCursor())
    assert refused.value.table == "interaction" and refused.value.status == 403
    assert not instance.records.readable()
    asked = instance.table_requests()
    with pytest.raises(NoReadAccess):
        await instance.records.catch_up(chat, RecordCursor())
    assert instance.table_requests() == asked  # no request while the refusal is fresh
    instance.clock.now += ACCESS_RECHECK_S
    with pytest.raises(NoReadAccess):
        await instance.records.catch_up(chat, RecordCursor())
    assert instance.table_requests() == asked + 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.endswith("va_records")]
    assert len(warnings) == 1 and "interaction_agent" in warnings[0].getMessage()
    # Access given: it reads again, and says so once.
    await instance.control("config", {"table_read_access": ["interaction", "sys_cs_message"]})
    instance.clock.now += ACCESS_RECHECK_S
    assert instance.records.readable()
    await instance.records.catch_up(chat, RecordCursor())
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "again" in r.getMessage()]


async def test_messages_refused_while_interactions_are_readable(instance):
    chat = await instance.open_chat()
    await instance.control("config", {"table_read_access": ["interaction"]})
    with pytest.raises(NoReadAccess) as refused:
        await instance.records.catch_up(chat, RecordCursor())
    assert refused.value.table == "sys_cs_message"


async def test_rate_limits_and_server_errors_are_retried_by_the_clients_policy(instance):
    chat = await instance.open_chat()
    await instance.control("faults", [
        {"match": {"api": "table"}, "respond": {"status": 429, "headers": {"Retry-After": "1"}}, "times": 1},
        {"match": {"api": "table"}, "respond": {"status": 503}, "times": 1},
    ])
    catch_up = await instance.records.catch_up(chat, RecordCursor())
    assert catch_up.cursor.conversation_id
    await instance.control("faults", {"match": {"api": "table"}, "respond": {"status": 503}, "times": None})
    with pytest.raises(ServiceNowUnavailable):
        await instance.records.catch_up(chat, catch_up.cursor)
    assert instance.records.readable()  # a failing instance is not a refusal


async def test_an_unknown_chat_has_no_interaction_and_nothing_to_recover(instance, caplog):
    caplog.set_level(logging.INFO, logger="connectors.servicenow.servicenow.va_records")
    catch_up = await instance.records.catch_up("0123456789abcdef0123456789abcdef", RecordCursor())
    again = await instance.records.catch_up("0123456789abcdef0123456789abcdee", RecordCursor())
    assert catch_up.recovered == again.recovered == () and catch_up.cursor == RecordCursor()
    assert len([r for r in caplog.records if "third_party_chat" in r.getMessage() and r.levelno >= logging.INFO]) == 1


# ---------------------------------------------------------------------------------------------------------------------
# Answers the emulator does not give

BASE = "https://acme.service-now.com"
CHAT = "0123456789abcdef0123456789abcdef"
CONVERSATION = "c" * 32


def interaction_row(**overrides: Any) -> Dict[str, Any]:
    row = {
        "sys_id": "i" * 32, "client_session_id": CHAT, "state": "work_in_progress", "state_reason": "", "active": "true",
        "channel_metadata_table": "sys_cs_conversation", "channel_metadata_document": CONVERSATION,
    }
    row.update(overrides)
    return row


def message_row(sequence: int, payload: Any, **overrides: Any) -> Dict[str, Any]:
    row = {
        "sys_id": f"{sequence:032x}", "conversation": CONVERSATION, "sequence": str(sequence), "direction": "outbound",
        "is_agent": "true", "is_bot_message": "false", "payload": payload,
    }
    row.update(overrides)
    return row


@pytest.fixture
async def mocked() -> AsyncIterator[ConversationRecords]:
    settings = ServiceNowSettings.from_credentials({
        "instance_url": BASE, "api": "virtual_agent", "username": "bot", "password": "pw", "webhook_secret": "s",
    })
    http = ServiceNowHTTP(settings, sleep=no_sleep)
    yield ConversationRecords(http)
    await http.aclose()


def route(table: str) -> Any:
    return re.compile(rf"^{BASE}{TABLE}{table}\?.*$")


async def test_records_outside_the_query_are_ignored_and_stop_the_reading(mocked):
    """An instance that ignores a condition it cannot apply answers with other conversations' records."""
    with aioresponses() as mock:
        mock.get(route("interaction"), payload={"result": [interaction_row(client_session_id="somebody-else")]})
        assert await mocked.interaction(CHAT) is None
        mock.get(route("sys_cs_message"), payload={"result": [
            message_row(3, '{"uiType":"OutputText","value":"mine"}'),
            message_row(4, '{"uiType":"OutputText","value":"not mine"}', conversation="d" * 32),
            message_row(5, '{"uiType":"OutputText","value":"an inbound"}', direction="inbound"),
        ]})
        records, requests, more = await mocked.messages_after(CONVERSATION, 2)
        assert [r.sequence for r in records] == [3] and (requests, more) == (1, False)


async def test_a_payload_that_is_not_the_push_item_is_shown_as_its_text(mocked):
    with aioresponses() as mock:
        mock.get(route("interaction"), payload={"result": [interaction_row()]})
        mock.get(route("sys_cs_message"), payload={"result": [
            message_row(2, "Plain words from the agent"),
            message_row(3, '{"uiType":"OutputImage","value":"https://acme.example/a.png","altText":"a","agentInfo":{"agentName":"Beth"}}'),
            message_row(4, "", is_agent="false"),
        ]})
        catch_up = await mocked.catch_up(CHAT, RecordCursor())
    events = [e for r in catch_up.recovered for e in r.events]
    assert [(type(e).__name__, e.text, dict(e.rich)) for e in events] == [
        ("AgentMessage", "Plain words from the agent", {}),
        ("AgentMessage", "a", {"image": "https://acme.example/a.png"}),
    ]
    # The record's sys_id is the message id when the payload does not carry one.
    assert events[0].message_id == f"{2:032x}"
    assert catch_up.cursor == RecordCursor(CONVERSATION, 4)


async def test_records_come_in_sequence_order_whatever_order_they_are_answered_in(mocked):
    with aioresponses() as mock:
        mock.get(route("sys_cs_message"), payload={"result": [
            message_row(9, '{"uiType":"OutputText","value":"b","messageId":"m9"}'),
            message_row(7, '{"uiType":"OutputText","value":"a","messageId":"m7"}'),
        ]})
        records, _, _ = await mocked.messages_after(CONVERSATION, 6)
    assert [(r.sequence, r.message_id) for r in records] == [(7, "m7"), (9, "m9")]


@pytest.mark.parametrize("stored", [None, "junk", {"conversation_id": 5, "sequence": -1}, {"sequence": True}])
def test_a_stored_cursor_that_is_not_one_is_the_start(stored: Optional[Any]):
    assert RecordCursor.from_dict(stored) == RecordCursor()


def test_a_cursor_survives_its_dict():
    cursor = RecordCursor(CONVERSATION, 12)
    assert RecordCursor.from_dict(cursor.to_dict()) == cursor
