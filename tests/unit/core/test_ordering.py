"""Pushes shown in ServiceNow's order (ordering.py), against the emulator's records of a real chat: the pushes an
agent's actions made are handed to ``arrange`` in the order a test chooses, as if they overtook each other."""

from typing import Any, Dict, List, Set

import pytest

from connectors.servicenow.servicenow.base import AgentEvent, AgentMessage, AgentTyping, ChatClosed, CloseReason
from connectors.servicenow.servicenow.va_records import RecordCursor
from connectors.servicenow.core.ordering import Arranged, PushOrder, message_id_of

from tests.unit.servicenow.va_instance import TABLE, Instance, instance, same  # noqa: F401 (instance is a fixture)

WAIT_S = 5.0


class Chat:
    """One chat as a dispatcher keeps it: what was delivered, in order, and where its records were read to."""

    def __init__(self, instance: Instance, chat_id: str, order: PushOrder) -> None:
        self.instance = instance
        self.chat_id = chat_id
        self.order = order
        self.cursor = RecordCursor()
        self.delivered: List[AgentEvent] = []
        self.seen: Set[str] = set()

    async def push(self, push: Dict[str, Any]) -> Arranged:
        """A push arrives: arranged, then delivered with duplicates dropped (what the dispatcher does)."""
        events = self.instance.backend.parse_callback(push).events
        arranged = await self.order.arrange(self.chat_id, self.cursor, self.seen.__contains__, events)
        for event in arranged.events:
            message_id = message_id_of(event)
            if message_id and message_id in self.seen:
                continue
            if message_id:
                self.seen.add(message_id)
            self.delivered.append(event)
        self.cursor = arranged.cursor
        return arranged

    def texts(self) -> List[str]:
        return [event.text for event in self.delivered if isinstance(event, AgentMessage)]


async def live_chat(instance: Instance, wait: float = WAIT_S) -> "tuple[Chat, List[Dict[str, Any]]]":
    """A chat an agent accepted, with every push so far delivered in order."""
    chat_id = await instance.open_chat()
    chat = Chat(instance, chat_id, PushOrder(instance.records, wait))
    opening = [entry["payload"] for entry in (await instance.control(f"callbacks?session={chat_id}", method="GET"))["callbacks"]]
    for push in opening + await instance.agent("accept", chat_id):
        await chat.push(push)
    return chat, opening


async def test_a_push_that_overtook_another_brings_the_earlier_message_first(instance):
    chat, _ = await live_chat(instance)
    (one,) = await instance.agent("message", chat.chat_id, text="one")
    (two,) = await instance.agent("message", chat.chat_id, text="two")
    before = instance.table_requests()
    arranged = await chat.push(two)
    assert chat.texts()[-2:] == ["one", "two"]
    assert (arranged.ordered, len(arranged.recovered), instance.table_requests() - before) == (True, 1, 1)
    # The overtaken push comes late: its message is seen, no read, nothing shown twice.
    late = await chat.push(one)
    assert (late.ordered, instance.table_requests() - before) == (False, 1)
    assert chat.texts()[-2:] == ["one", "two"] and chat.texts().count("one") == 1


async def test_a_push_that_never_comes_is_recovered_at_its_place(instance):
    chat, _ = await live_chat(instance)
    await chat.push((await instance.agent("message", chat.chat_id, text="one"))[0])
    await instance.agent("message", chat.chat_id, text="two")  # its push is lost
    arranged = await chat.push((await instance.agent("message", chat.chat_id, text="three"))[0])
    assert chat.texts()[-3:] == ["one", "two", "three"]
    assert len(arranged.recovered) == 1


async def test_later_records_come_along_and_their_pushes_are_then_repeats(instance):
    chat, _ = await live_chat(instance)
    (one,) = await instance.agent("message", chat.chat_id, text="one")
    (two,) = await instance.agent("message", chat.chat_id, text="two")
    await chat.push(one)
    assert chat.texts()[-2:] == ["one", "two"]
    delivered = len(chat.delivered)
    await chat.push(two)
    assert len(chat.delivered) == delivered


async def test_a_recovered_message_is_the_message_its_push_carried(instance):
    chat, _ = await live_chat(instance)
    (one,) = await instance.agent("message", chat.chat_id, text="one")
    (two,) = await instance.agent("message", chat.chat_id, text="two")
    await chat.push(two)
    from_records = [same(e) for e in chat.delivered[-2:]]
    pushed = [same(e) for push in (one, two) for e in instance.backend.parse_callback(push).events]
    assert from_records == pushed


async def test_what_has_no_record_stays_with_its_push(instance):
    """Typing and the end flags have no record: they keep their place after the push's own messages."""
    await instance.control("config", {"close_style": "completed"})
    chat, _ = await live_chat(instance)
    before = instance.table_requests()
    (typing,) = await instance.agent("typing", chat.chat_id, on=True)
    arranged = await chat.push(typing)
    assert arranged.events == (AgentTyping(True),) and instance.table_requests() == before  # nothing to order
    (one,) = await instance.agent("message", chat.chat_id, text="one")
    closing = await instance.agent("close", chat.chat_id)
    assert closing[-1].get("completed") is True
    await chat.push(closing[-1])  # overtakes "one" and the close's System text
    kinds = [(type(e).__name__, getattr(e, "text", None)) for e in chat.delivered[-4:]]
    assert kinds[0] == ("AgentMessage", "one")
    assert [k for k, _ in kinds[1:]] == ["ChatClosed", "ChatClosed", "ChatClosed"]
    assert chat.delivered[-1] == ChatClosed(CloseReason.AGENT_CLOSED)  # the completed flag, last


UVLOOP_TIMER_SLACK_S = 0.001


async def test_a_slow_read_is_waited_for_no_longer_than_the_bound(instance):
    chat, _ = await live_chat(instance, wait=0.2)
    await instance.control("faults", {"match": {"api": "table"}, "respond": {"delay_ms": 2000}, "times": 1})
    (one,) = await instance.agent("message", chat.chat_id, text="one")
    (two,) = await instance.agent("message", chat.chat_id, text="two")
    cursor = chat.cursor
    arranged = await chat.push(two)
    assert not arranged.ordered and arranged.cursor == cursor
    assert [e.text for e in arranged.events] == ["two"]  # as it came
    # uvloop (installed with Rasa, the tests' loop) rounds timers to the
    # millisecond and may fire one up to 1 ms early: 0.19994 s was seen.
    assert 0.2 - UVLOOP_TIMER_SLACK_S <= arranged.waited < 2.0
    await instance.settled(TABLE)


async def test_without_read_access_pushes_are_shown_as_they_came_and_not_read_again(instance):
    chat, _ = await live_chat(instance)
    await instance.control("config", {"table_read_access": ["sys_user"]})
    (one,) = await instance.agent("message", chat.chat_id, text="one")
    (two,) = await instance.agent("message", chat.chat_id, text="two")
    first = await chat.push(two)
    before = instance.table_requests()
    second = await chat.push(one)
    assert (first.ordered, second.ordered) == (False, False)
    assert chat.texts()[-2:] == ["two", "one"] and instance.table_requests() == before


async def test_no_wait_configured_is_arrival_order_without_a_read(instance):
    chat, _ = await live_chat(instance, wait=0)
    (one,) = await instance.agent("message", chat.chat_id, text="one")
    (two,) = await instance.agent("message", chat.chat_id, text="two")
    before = instance.table_requests()
    await chat.push(two)
    await chat.push(one)
    assert chat.texts()[-2:] == ["two", "one"] and instance.table_requests() == before


async def test_the_first_push_of_a_chat_finds_its_conversation(instance):
    chat_id = await instance.open_chat()
    chat = Chat(instance, chat_id, PushOrder(instance.records, WAIT_S))
    pushes = [e["payload"] for e in (await instance.control(f"callbacks?session={chat_id}", method="GET"))["callbacks"]]
    before = instance.table_requests()
    arranged = await chat.push(pushes[0])
    assert arranged.ordered and arranged.cursor.conversation_id
    assert instance.table_requests() - before == 2  # the interaction, then the messages
    for push in await instance.agent("accept", chat_id):
        await chat.push(push)
    # One read for the accept's first message; it brings the rest along.
    assert instance.table_requests() - before == 3


@pytest.mark.parametrize("seen_all", [True, False])
async def test_a_push_of_seen_messages_needs_no_read(instance, seen_all):
    chat, _ = await live_chat(instance)
    (one,) = await instance.agent("message", chat.chat_id, text="one")
    message_id = one["body"][0]["messageId"]
    if seen_all:
        chat.seen.add(message_id)
    before = instance.table_requests()
    await chat.push(one)
    assert instance.table_requests() - before == (0 if seen_all else 1)
