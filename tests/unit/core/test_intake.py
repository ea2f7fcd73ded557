"""The dispatch of agent events (pushed or polled): order, dedupe, the
cursor and its coalesced tracker save, the end of the chat, delivery reports."""

import asyncio
import dataclasses

import pytest

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.rasa_glue.slots import SLOT_LAST_UPDATED, SLOT_SEEN_IDS
from connectors.servicenow.servicenow.base import (
    AgentJoined,
    AgentMessage,
    AgentTyping,
    ChatClosed,
    CloseReason,
    PollResult,
    SystemNotice,
)

from connectors.servicenow.store import HandoffRecord, LeaseLost, StoreUnavailable
from connectors.servicenow.store.keys import poll_lease
from tests.unit.core.helpers import PullBackend, PushBackend, Recorder, RecordingSlots, Relay, make_relay, streamed, two_stores

SETTINGS = ServiceNowSettings.from_credentials(
    {
        "instance_url": "https://acme.service-now.com", "username": "u", "password": "p", "queue_id": "q",
        "poll_interval": 1, "idle_poll_interval": 10, "idle_after": 60, "session_check_interval": 30,
    }
)


async def test_pushed_events_are_delivered_in_order_and_repeats_dropped():
    relay, outbox, slots, _ = make_relay(PushBackend())
    chat = LiveChat(sender_id="u1", chat_id="c1")
    hello = AgentMessage("m1", "hello", "Beth", 1000)
    await relay.dispatch(chat, [SystemNotice("s1", "Beth has entered the chat.", 900), AgentTyping(True), hello])
    await relay.dispatch(chat, [hello])  # ServiceNow repeated the callback

    items = await streamed(outbox, 4)
    # The agent's first message is their arrival: a status item comes first (issue 21).
    assert [item.kind for item in items] == ["message", "typing", "handoff", "message"]
    assert items[2].payload["handoff"] == {"active": True, "chat_id": "c1", "api": "virtual_agent", "agent_joined": True, "agent_name": "Beth"}
    assert items[3].payload == {
        "recipient_id": "u1", "text": "hello",
        "metadata": {"source": "agent", "agent_name": "Beth", "message_id": "m1"},
    }
    assert chat.seen_ids == ("m1", "s1") and chat.last_updated == 1000
    assert slots.writes == []  # saved a moment later, off the delivery path
    await relay.flush(chat)
    assert len(slots.writes) == 1  # both dispatches in one tracker write
    bot_texts = [event.text for write in slots.writes for event in write if event.type_name == "bot"]
    assert bot_texts == ["Beth has entered the chat.", "hello"]
    await relay.stop()


async def test_a_poll_result_moves_the_cursor_and_saves_it_with_the_transcript():
    relay, outbox, slots, _ = make_relay()
    chat = LiveChat(sender_id="u1", chat_id="c1", last_updated=10, seen_ids=("a",))
    result = PollResult([AgentMessage("b", "hi", "Beth", 20)], last_updated=20, seen_ids=("b", "a"))
    await relay.dispatch(chat, result.events, result.cursor)
    assert (chat.last_updated, chat.seen_ids) == (20, ("b", "a"))
    await relay.stop()  # saves what is pending
    saved = {event.key: event.value for event in slots.writes[-1] if event.type_name == "slot"}
    # The agent's first message is also their arrival, which the tracker shows.
    assert saved == {SLOT_LAST_UPDATED: 20, SLOT_SEEN_IDS: ["b", "a"], "handoff_status": "agent_joined"}


async def test_an_unchanged_poll_writes_nothing():
    relay, _, slots, _ = make_relay()
    chat = LiveChat(sender_id="u1", chat_id="c1", last_updated=10, seen_ids=("a",))
    await relay.dispatch(chat, [], PollResult([], last_updated=10, seen_ids=("a",)).cursor)
    await relay.stop()
    assert slots.writes == []


async def test_pending_writes_keep_each_slots_last_value_only():
    relay, _, slots, _ = make_relay()
    chat = LiveChat(sender_id="u1", chat_id="c1", last_updated=10, seen_ids=("a",))
    for step in (1, 2, 3):
        result = PollResult([AgentMessage(f"m{step}", f"text {step}", "Beth", 10 + step)], 10 + step, (f"m{step}",))
        await relay.dispatch(chat, result.events, result.cursor)
    await relay.stop()
    (write,) = slots.writes
    assert [event.text for event in write if event.type_name == "bot"] == ["text 1", "text 2", "text 3"]
    assert [event.value for event in write if event.type_name == "slot" and event.key == SLOT_LAST_UPDATED] == [13]


async def test_the_end_of_the_chat_is_reported_after_what_came_before_it():
    relay, outbox, _, recorder = make_relay()
    chat = LiveChat(sender_id="u1", chat_id="c1")
    closed = ChatClosed(CloseReason.AGENT_CLOSED, "Beth has left the support session")
    await relay.dispatch(chat, [AgentMessage("m1", "bye", "Beth", 1), closed, AgentMessage("m2", "ghost", "Beth", 2)])
    assert [item.payload["text"] for item in await streamed(outbox, 1, statuses=False)] == ["bye"]
    assert recorder.closed == [closed]
    await relay.stop()


async def test_nothing_is_delivered_for_a_chat_that_already_ended():
    relay, outbox, slots, _ = make_relay()
    chat = LiveChat(sender_id="u1", chat_id="c1", ended=True)
    await relay.dispatch(chat, [AgentMessage("m1", "late", "Beth", 1)])
    subscription = outbox.subscribe("u1")
    assert await subscription.next(heartbeat=0.01) is None
    assert slots.writes == []


async def test_a_queue_notice_that_arrives_after_the_agent_is_dropped():
    relay, outbox, _, _ = make_relay(PushBackend())
    chat = LiveChat(sender_id="u1", chat_id="c1")
    await relay.dispatch(chat, [AgentJoined("Beth"), AgentMessage("m1", "hi", "Beth", 1)])
    await relay.dispatch(chat, [SystemNotice("w1", "Routing you to a live agent...", 0, kind="wait")])
    items = await streamed(outbox, 2)
    assert [item.kind for item in items] == ["handoff", "message"]
    assert items[0].payload["handoff"]["agent_name"] == "Beth" and items[0].payload["handoff"]["agent_joined"] is True
    subscription = outbox.subscribe("u1")
    assert await subscription.next(heartbeat=0.01) is None
    subscription.close()
    await relay.stop()


async def test_a_pushed_end_waits_for_late_messages_then_ends():
    relay, outbox, _, recorder = make_relay(PushBackend())
    chat = LiveChat(sender_id="u1", chat_id="c1")
    closing = asyncio.ensure_future(relay.dispatch(chat, [ChatClosed(CloseReason.AGENT_CLOSED)]))
    await relay.dispatch(chat, [AgentMessage("late", "one more thing", "Beth", 2)])  # overtaken by the close
    assert not recorder.closed
    await closing
    assert [item.payload["text"] for item in await streamed(outbox, 1, statuses=False)] == ["one more thing"]
    assert len(recorder.closed) == 1
    await relay.stop()


async def test_delivery_is_reported_back_when_enabled():
    settings = dataclasses.replace(SETTINGS, report_delivery=True)
    backend = PushBackend()
    relay, outbox, _, _ = make_relay(backend, settings)
    chat = LiveChat(sender_id="u1", chat_id="c1")
    await relay.store.create_handoff(chat.record("virtual_agent"))  # reports go to the live chat's record
    await relay.dispatch(chat, [AgentMessage("m1", "hi", "Beth", 1), SystemNotice("s1", "note", 1)])
    assert backend.reports == []  # nobody has the message yet
    subscription = outbox.subscribe("u1")  # a stream takes the waiting items: delivered
    taken = [await subscription.next(heartbeat=1) for _ in range(3)]
    assert [item.payload.get("text") for item in taken if item.kind == "message"] == ["hi", "note"]
    await asyncio.wait_for(backend.reported.wait(), timeout=5)
    await relay.stop()
    subscription.close()
    assert backend.reports == [("m1", True)]


async def test_a_cursor_moved_only_by_the_users_own_messages_is_not_saved():
    relay, _, slots, _ = make_relay()
    chat = LiveChat(sender_id="u1", chat_id="c1", last_updated=10, seen_ids=("a",))
    await relay.dispatch(chat, [], PollResult([], last_updated=20, seen_ids=("own", "a")).cursor)
    await relay.stop()
    assert chat.last_updated == 20 and slots.writes == []


async def test_without_a_transcript_connect_saves_only_its_cursor_and_the_virtual_agent_nothing():
    settings = dataclasses.replace(SETTINGS, record_transcript=False)
    relay, _, slots, _ = make_relay(PullBackend(), settings)
    chat = LiveChat(sender_id="u1", chat_id="c1", last_updated=10, seen_ids=("a",))
    result = PollResult([AgentMessage("b", "hi", "Beth", 20)], last_updated=20, seen_ids=("b", "a"))
    await relay.dispatch(chat, result.events, result.cursor)
    await relay.stop()
    assert [event.key for event in slots.writes[0]] == [SLOT_LAST_UPDATED, SLOT_SEEN_IDS, "handoff_status"]

    relay, _, slots, _ = make_relay(PushBackend(), settings)
    chat = LiveChat(sender_id="u2", chat_id="c2")
    await relay.dispatch(chat, [AgentMessage("m", "hi", "Beth", 1)])
    await relay.dispatch(chat, [AgentMessage("n", "more", "Beth", 2)])
    await relay.stop()
    # Only the agent's arrival, once per chat: no transcript, no cursor.
    assert [[(event.key, event.value) for event in write] for write in slots.writes] == [
        [("handoff_status", "agent_joined")]
    ]


async def test_a_cursor_save_the_store_refuses_is_kept_and_saved_later(monkeypatch):
    from connectors.servicenow.errors import StoreUnavailable

    monkeypatch.setattr("connectors.servicenow.rasa_glue.pending.PERSIST_DELAY_S", 0.01)
    relay, _, slots, _ = make_relay()
    refusals = []
    record = slots.write

    async def write(sender_id, events):
        if len(refusals) < 2:
            refusals.append(sender_id)
            raise StoreUnavailable("the tracker store is down")
        await record(sender_id, events)

    slots.write = write
    chat = LiveChat(sender_id="u1", chat_id="c1")
    result = PollResult([AgentMessage("m1", "hi", "Beth", 10)], last_updated=10, seen_ids=("m1",))
    await relay.dispatch(chat, result.events, result.cursor)
    await relay.flush(chat)  # refused: kept for the next save, which comes by itself
    for _ in range(500):
        if slots.writes:
            break
        await asyncio.sleep(0.01)  # wait-ok: polling for the retried save, with a bound
    assert len(refusals) == 2 and len(slots.writes) == 1
    saved = slots.writes[0]
    assert [event.text for event in saved if event.type_name == "bot"] == ["hi"]
    assert [event.value for event in saved if event.type_name == "slot" and event.key == SLOT_LAST_UPDATED] == [10]
    await relay.stop()


async def test_the_end_of_a_handoff_takes_the_unsaved_events_so_none_land_after_it():
    relay, _, slots, _ = make_relay()
    chat = LiveChat(sender_id="u1", chat_id="c1")
    result = PollResult([AgentMessage("m1", "hi", "Beth", 10)], last_updated=10, seen_ids=("m1",))
    await relay.dispatch(chat, result.events, result.cursor)
    taken = relay.take_unsaved(chat)
    assert [event.text for event in taken if event.type_name == "bot"] == ["hi"]
    await relay.stop()
    assert slots.writes == []  # nothing left to save on its own


async def test_a_polled_agent_message_seen_by_two_replicas_is_delivered_once(redis_server):
    # A poller that took over from a cursor saved a moment too early sees
    # the same message again: the store's claim drops it.
    store_a, store_b = two_stores(redis_server)
    relays = []
    for store in (store_a, store_b):
        relay = Relay(PullBackend(), SETTINGS, RecordingSlots(), Recorder(), store=store)
        relays.append(relay)
        chat = LiveChat(sender_id="u1", chat_id="c1")
        message = AgentMessage("m1", "hello", "Beth", 1000)
        await relay.dispatch(chat, [message], PollResult([message], 1000, ("m1",)).cursor)
    assert [entry.payload["text"] for entry in await store_a.read("u1") if entry.kind == "message"] == ["hello"]
    for relay in relays:
        await relay.stop()
    await store_a.aclose()
    await store_b.aclose()


async def test_nothing_is_delivered_for_a_chat_another_replica_ended(redis_server):
    # Soak finding 1: replica A stored the end of the chat (the user's
    # /end_chat) while B was storing what the agent said: B's append must
    # not land after the end, whether pushed or polled.
    store_a, store_b = two_stores(redis_server)
    b = Relay(PushBackend(), SETTINGS, RecordingSlots(), Recorder(), store=store_b)
    chat = LiveChat(sender_id="u1", chat_id="c1")
    assert await store_a.create_handoff(HandoffRecord("u1", "c1", "virtual_agent"))
    assert await store_a.end_handoff("u1", "c1")
    pushed = await b.dispatcher.dispatch(chat, [AgentMessage("m1", "too late", "Beth", 10)], dedupe_key="push:c1:f", dedupe_ttl=60)
    assert pushed, "acknowledged: the chat is over, there is nothing to retry"
    polling = LiveChat(sender_id="u1", chat_id="c1")
    polled = PollResult([AgentMessage("m2", "too late", "Beth", 20)], 20, ("m2",))
    await b.dispatcher.dispatch(polling, polled.events, polled.cursor)
    assert await store_b.read("u1") == []
    assert b.gone == [chat, polling], "dropped here, without an end of its own"
    await b.stop()
    await store_a.aclose()
    await store_b.aclose()


async def test_a_poller_that_lost_its_lease_delivers_nothing_and_keeps_its_cursor(redis_server):
    # Soak finding 3: a poll that outlived its lease (ServiceNow slow) while
    # another replica took the chat over must not deliver what it found.
    store_a, store_b = two_stores(redis_server)
    a = Relay(PullBackend(), SETTINGS, RecordingSlots(), Recorder(), store=store_a)
    chat = LiveChat(sender_id="u1", chat_id="c1", last_updated=10, seen_ids=("m0",))
    assert await store_b.acquire_lease(poll_lease("c1"), "b", 30)
    result = PollResult([AgentMessage("m1", "hello", "Beth", 20)], 20, ("m1", "m0"))
    with pytest.raises(LeaseLost):
        await a.dispatch(chat, result.events, result.cursor, poller="a")
    assert await store_a.read("u1") == []
    assert (chat.last_updated, chat.seen_ids) == (10, ("m0",))
    await a.stop()
    await store_a.aclose()
    await store_b.aclose()


class Unanswered:
    """A store that does not answer (Redis restarting) for the next ``calls`` calls."""

    def __init__(self, store, calls):
        self.store, self.calls = store, calls

    def __getattr__(self, name):
        method = getattr(self.store, name)
        if name not in ("append", "append_and_take", "claim_once"):
            return method

        async def unanswered(*args, **kwargs):
            if self.calls > 0:
                self.calls -= 1
                raise StoreUnavailable("Redis is unavailable: ConnectionError")
            return await method(*args, **kwargs)

        return unanswered


async def test_a_poll_the_store_could_not_take_is_delivered_once_by_whoever_polls_next(redis_server):
    # Soak findings 4 and 9: a poller whose store call failed delivered the
    # message anyway ("a repeat beats a loss"), and the poller that took over
    # delivered it again; the claim of a message and its append are one step
    # now, so a failed step delivers nothing and the next poll delivers once.
    store_a, store_b = two_stores(redis_server)
    unanswered = Unanswered(store_a, calls=2)
    a = Relay(PullBackend(), SETTINGS, RecordingSlots(), Recorder(), store=unanswered)
    b = Relay(PullBackend(), SETTINGS, RecordingSlots(), Recorder(), store=store_b)
    chat_a, chat_b = LiveChat(sender_id="u1", chat_id="c1"), LiveChat(sender_id="u1", chat_id="c1")
    result = PollResult([AgentMessage("m1", "hello", "Beth", 20)], 20, ("m1",))
    with pytest.raises(StoreUnavailable):
        await a.dispatch(chat_a, result.events, result.cursor)
    assert chat_a.last_updated is None, "the cursor stays: the next poll finds it again"
    await b.dispatch(chat_b, result.events, result.cursor)  # B took the chat over
    unanswered.calls = 0
    await a.dispatch(chat_a, result.events, result.cursor)  # and A polls again once Redis answers
    await a.stop()
    await b.stop()
    assert [entry.payload["text"] for entry in await store_b.read("u1") if entry.kind == "message"] == ["hello"]
    await store_a.aclose()
    await store_b.aclose()
