"""Reconciliation in the core (reconcile.py, and its parts in intake.py and polling.py): a tick reads what no push
brought, against the emulator's records of a real chat; each message is stored under its own key, so a push, a
read and another replica deliver it once; the loop runs under the chat's lease and a failing read never ends the
chat."""

import asyncio
import dataclasses
from typing import List

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.core.reconcile import Reconciler, after_delivered
from connectors.servicenow.core.reconciling import ReconcileLoop
from connectors.servicenow.servicenow.base import (
    AgentJoined,
    AgentMessage,
    AgentTyping,
    ChatClosed,
    CloseReason,
    SystemNotice,
)
from connectors.servicenow.servicenow.va_records import Recovered, RecordCursor
from connectors.servicenow.store import HandoffRecord, MemoryStore
from connectors.servicenow.store.keys import poll_lease
from connectors.servicenow.tasks import TaskSet
from tests.unit.core.helpers import PushBackend, Recorder, RecordingSlots, Relay, two_stores
from tests.unit.servicenow.va_instance import Instance, instance  # noqa: F401 (instance is a fixture)

SETTINGS = ServiceNowSettings.from_credentials(
    {
        "instance_url": "https://acme.service-now.com", "api": "virtual_agent", "username": "u", "password": "p",
        "webhook_secret": "s", "reconcile_interval": 0.05,
    }
)


def recovered(*ids: str) -> List[Recovered]:
    return [Recovered(n, message_id, (AgentMessage(message_id, message_id, None, 0),)) for n, message_id in enumerate(ids, 1)]


def test_without_a_cursor_the_seen_ids_say_where_delivery_got_to():
    records = recovered("a", "b", "c", "d", "e", "f")
    # c and e were delivered (the newest ids kept); d was missed; a and b lie before the window.
    assert [r.message_id for r in after_delivered(records, ("e", "c"))] == ["d", "f"]
    assert [r.message_id for r in after_delivered(records, ("z",))] == ["a", "b", "c", "d", "e", "f"]
    assert after_delivered(records, ("f", "a")) == [r for r in records if r.message_id in ("b", "c", "d", "e")]


# -- one tick, against the emulator --------------------------------------------------------------------------------


async def live_chat(instance: Instance) -> LiveChat:
    chat_id = await instance.open_chat()
    await instance.agent("accept", chat_id)
    chat = LiveChat(sender_id="user-1", chat_id=chat_id)
    first = await Reconciler(instance.records).read(chat)
    for event in first.events:
        chat.note_message(getattr(event, "message_id", None), None)
    chat.records = first.cursor
    return chat


async def test_a_tick_gives_what_no_push_brought_in_order_and_moves_the_cursor(instance):
    chat = await live_chat(instance)
    reconciler = Reconciler(instance.records)
    pushed = await instance.agent("message", chat.chat_id, text="pushed")
    chat.note_message(pushed[0]["body"][0]["messageId"], None)  # its push arrived
    await instance.agent("message", chat.chat_id, text="lost one")
    await instance.agent("message", chat.chat_id, text="lost two")
    found = await reconciler.read(chat)
    assert [event.text for event in found.events] == ["lost one", "lost two"]
    assert len(found.recovered) == 2 and found.cursor.after(chat.records)


async def test_a_state_tick_costs_one_request_while_the_chat_lasts_and_ends_it_when_over(instance):
    await instance.control("config", {"close_style": "completed"})
    chat = await live_chat(instance)
    reconciler = Reconciler(instance.records)
    before = instance.table_requests()
    assert (await reconciler.read(chat, state_only=True)).events == ()
    assert instance.table_requests() - before == 1
    await instance.agent("message", chat.chat_id, text="last words")
    await instance.agent("close", chat.chat_id, message=False)
    found = await reconciler.read(chat, state_only=True)
    texts = [getattr(event, "text", None) for event in found.events]
    assert texts[0] == "last words" and found.events[-1] == ChatClosed(CloseReason.AGENT_CLOSED)


async def test_a_chat_without_a_cursor_is_read_from_its_start_past_what_it_delivered(instance):
    chat = await live_chat(instance)
    for text in ("one", "two", "three"):
        await instance.agent("message", chat.chat_id, text=text)
    everything = await Reconciler(instance.records).read(dataclasses.replace(chat, records=RecordCursor(), seen_ids=()))
    delivered_two = next(e.message_id for e in everything.events if getattr(e, "text", "") == "two")
    # Read back from the tracker after a restart: no cursor, the newest ids it delivered.
    resumed = LiveChat(sender_id="user-1", chat_id=chat.chat_id, seen_ids=(delivered_two,) + chat.seen_ids)
    found = await Reconciler(instance.records).read(resumed)
    assert [getattr(e, "text", None) for e in found.events] == ["one", "three"]


# -- each message once: push, read, replicas -----------------------------------------------------------------------


async def test_a_message_a_push_delivered_on_one_replica_is_not_delivered_again_by_a_read_on_another(redis_server):
    store_a, store_b = two_stores(redis_server)
    relay_a = Relay(PushBackend(), SETTINGS, RecordingSlots(), Recorder(), store=store_a, keyed=True)
    relay_b = Relay(PushBackend(), SETTINGS, RecordingSlots(), Recorder(), store=store_b, keyed=True)
    message = AgentMessage("m1", "hello", "Beth", 1)
    on_a, on_b = LiveChat(sender_id="u1", chat_id="c1"), LiveChat(sender_id="u1", chat_id="c1")
    assert await relay_a.dispatch(on_a, [message], dedupe_key="push:c1:f1", dedupe_ttl=600)
    later = AgentMessage("m2", "and more", "Beth", 2)
    # B's read finds both; only the second is new to the deployment.
    await relay_b.dispatch(on_b, [message, later], records=RecordCursor("conv", 7), recovered=("m1", "m2"))
    # (The agent's arrival, announced before their first word, is a status item without text.)
    assert [entry.payload["text"] for entry in await store_a.read("u1") if "text" in entry.payload] == ["hello", "and more"]
    assert on_b.records == RecordCursor("conv", 7) and on_b.seen_ids == ("m2", "m1")
    for relay in (relay_a, relay_b):
        await relay.stop()
    await store_a.aclose()
    await store_b.aclose()


async def test_what_has_no_key_goes_with_the_next_message_and_a_repeated_push_is_dropped():
    store = MemoryStore()
    relay = Relay(PushBackend(), SETTINGS, RecordingSlots(), Recorder(), store=store, keyed=True)
    chat = LiveChat(sender_id="u1", chat_id="c1")
    push = [AgentJoined("Beth", "j1"), AgentTyping(True), AgentMessage("m1", "hi", "Beth", 1), AgentTyping(False)]
    assert await relay.dispatch(chat, push, dedupe_key="push:c1:f1", dedupe_ttl=600)
    other = LiveChat(sender_id="u1", chat_id="c1")  # the same push on a replica that has seen nothing
    assert not await relay.dispatch(other, push, dedupe_key="push:c1:f1", dedupe_ttl=600)
    typing_only = [AgentTyping(True)]
    assert await relay.dispatch(chat, typing_only, dedupe_key="push:c1:f2", dedupe_ttl=600)
    assert not await relay.dispatch(chat, typing_only, dedupe_key="push:c1:f2", dedupe_ttl=600)
    kinds = [(entry.kind, entry.payload.get("text")) for entry in await store.read("u1")]
    assert kinds == [("handoff", None), ("typing", None), ("message", "hi"), ("typing", None), ("typing", None)]
    assert chat.seen_ids == ("m1", "j1")  # the agent's arrival is seen too
    await relay.stop()


async def test_a_read_or_a_push_for_a_chat_another_replica_ended_stores_nothing(redis_server):
    # Soak finding 1's guard holds on the keyed path too (each message stored
    # under its own key): what a reconciliation pass recovers, or a push
    # brings, after another replica stored the end is not shown after it.
    store_a, store_b = two_stores(redis_server)
    b = Relay(PushBackend(), SETTINGS, RecordingSlots(), Recorder(), store=store_b, keyed=True)
    assert await store_a.create_handoff(HandoffRecord("u1", "c1", "virtual_agent"))
    assert await store_a.end_handoff("u1", "c1")
    read = LiveChat(sender_id="u1", chat_id="c1")
    late = [AgentMessage("m1", "too late", "Beth", 1), AgentMessage("m2", "later still", "Beth", 2)]
    assert await b.dispatcher.dispatch(read, late, records=RecordCursor("conv", 7), recovered=("m1", "m2"))
    pushed = LiveChat(sender_id="u1", chat_id="c1")
    assert await b.dispatcher.dispatch(pushed, [AgentMessage("m3", "last", "Beth", 3)], dedupe_key="push:c1:f", dedupe_ttl=60)
    assert await store_b.read("u1") == []
    assert b.gone == [read, pushed], "dropped here, without an end of its own"
    assert read.records != RecordCursor("conv", 7), "the cursor does not move past what was not stored"
    await b.stop()
    await store_a.aclose()
    await store_b.aclose()


async def test_a_push_that_closes_the_chat_ends_it_even_when_its_messages_came_another_way(redis_server):
    # Found by the soak after reconciliation was merged: the agent's closing
    # text was stored by a read (on another replica, or a push's ordering
    # read) before the push that carries it and the end arrived; every message
    # of that push was then a repeat, the push was dropped as one, and its end
    # with it: the user stayed in a handoff whose chat was over.
    store_a, store_b = two_stores(redis_server)
    recorder = Recorder()
    a = Relay(PushBackend(), SETTINGS, RecordingSlots(), Recorder(), store=store_a, keyed=True)
    b = Relay(PushBackend(), SETTINGS, RecordingSlots(), recorder, store=store_b, keyed=True)
    closing = SystemNotice("s9", "Beth has closed the chat.", 9)
    await a.dispatch(LiveChat(sender_id="u1", chat_id="c1"), [closing], records=RecordCursor("conv", 9), recovered=("s9",))
    chat = LiveChat(sender_id="u1", chat_id="c1")
    await b.dispatcher.dispatch(chat, [closing, ChatClosed(CloseReason.AGENT_CLOSED)], dedupe_key="push:c1:f9", dedupe_ttl=600)
    await b.stop()  # the end runs after END_GRACE_S, in the background
    assert recorder.closed == [ChatClosed(CloseReason.AGENT_CLOSED)]
    assert [entry.payload["text"] for entry in await store_a.read("u1")] == ["Beth has closed the chat."]
    await a.stop()
    await store_a.aclose()
    await store_b.aclose()


async def test_a_cursor_never_moves_back():
    relay = Relay(PushBackend(), SETTINGS, RecordingSlots(), Recorder(), keyed=True)
    chat = LiveChat(sender_id="u1", chat_id="c1", records=RecordCursor("conv", 9))
    await relay.dispatch(chat, [], records=RecordCursor("conv", 5))
    assert chat.records == RecordCursor("conv", 9)
    await relay.dispatch(chat, [], records=RecordCursor("another", 1))
    assert chat.records == RecordCursor("another", 1)
    await relay.stop()


# -- the loop ------------------------------------------------------------------------------------------------------


def reading(instance: Instance, store, owner: str, interval: float = 0.05):
    cursors: List[LiveChat] = []

    async def on_cursor(chat):
        cursors.append(chat)

    settings = dataclasses.replace(SETTINGS, instance_url=instance.emulator.url)
    relay = Relay(PushBackend(), settings, RecordingSlots(), Recorder(), store=store, keyed=True)
    loop = ReconcileLoop(
        Reconciler(instance.records), store, relay.dispatcher, TaskSet(), owner=owner, interval=interval, on_cursor=on_cursor
    )
    return loop, relay, cursors


async def wait_until(condition, timeout=10.0):
    """Until ``condition()`` (a value or an awaitable of one) is true, with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)  # wait-ok: polling a condition with a deadline


async def texts_of(store) -> List[str]:
    return [entry.payload.get("text") for entry in await store.read("u1")]


async def has_text(store, text: str) -> bool:
    return text in await texts_of(store)


async def test_a_chat_taken_up_is_read_at_once_under_its_lease_and_a_failing_read_never_ends_it(instance):
    store = MemoryStore()
    chat_id = await instance.open_chat()
    await instance.agent("accept", chat_id)
    await instance.agent("message", chat_id, text="while nobody listened")
    # A live chat has its record (what opening it files): the agent's words are stored only while it names the chat.
    assert await store.create_handoff(HandoffRecord("u1", chat_id, "virtual_agent"))
    loop, relay, cursors = reading(instance, store, "replica-a")
    chat = LiveChat(sender_id="u1", chat_id=chat_id)
    loop.watch(chat)
    # The pass moves the cursor, then saves it: wait for the save, not just the move.
    await wait_until(lambda: chat.records.sequence > 0 and cursors)
    assert cursors[0] is chat  # the moved cursor is saved
    await wait_until(lambda: has_text(store, "while nobody listened"))
    assert await store.lease_owner(poll_lease(chat_id)) == "replica-a"

    # ServiceNow fails every read for a while: the chat goes on, and is read again once it answers.
    await instance.control("faults", {"match": {"api": "table"}, "respond": {"status": 503}, "times": None})
    reads = instance.table_requests()
    await wait_until(lambda: instance.table_requests() >= reads + 3)
    assert not chat.ended and loop.is_watching(chat)
    await instance.control("faults", None, "DELETE")
    await instance.agent("message", chat_id, text="after the outage")

    async def recovered_after_the_outage() -> bool:
        return "after the outage" in await texts_of(store)

    await wait_until(recovered_after_the_outage)

    # Another replica that watches the chat finds the lease held and stops watching it.
    other, other_relay, _ = reading(instance, store, "replica-b")
    elsewhere = LiveChat(sender_id="u1", chat_id=chat_id)
    other.watch(elsewhere)
    await wait_until(lambda: not other.is_watching(elsewhere))
    assert await store.lease_owner(poll_lease(chat_id)) == "replica-a"
    assert [c.chat_id for c in await loop.stop(timeout=1)] == [chat_id]
    await other.stop(timeout=1)
    for each in (relay, other_relay):
        await each.stop()


async def test_many_chats_are_read_by_one_loop_each_once_per_interval():
    """The schedule alone: 200 chats, no task of their own, each read at its cadence."""

    class CountingReconciler:
        def __init__(self):
            self.reads: List[str] = []

        def readable(self):
            return True

        async def read(self, chat, *, state_only=False):
            self.reads.append(chat.chat_id)
            from connectors.servicenow.core.reconcile import Pass

            return Pass((), chat.records, ())

    async def on_cursor(chat):
        pass

    reconciler = CountingReconciler()
    store = MemoryStore()
    relay = Relay(PushBackend(), SETTINGS, RecordingSlots(), Recorder(), store=store, keyed=True)
    loop = ReconcileLoop(reconciler, store, relay.dispatcher, TaskSet(), owner="r", interval=0.2, on_cursor=on_cursor)
    tasks_before = len(asyncio.all_tasks())
    chats = [LiveChat(sender_id=f"u{n}", chat_id=f"c{n}") for n in range(200)]
    for chat in chats:
        loop.watch(chat, catch_up=False)
    assert len(asyncio.all_tasks()) - tasks_before == 1  # one loop, not a task per chat
    await wait_until(lambda: len(reconciler.reads) >= 600, timeout=20)
    counts = {chat.chat_id: reconciler.reads.count(chat.chat_id) for chat in chats}
    assert max(counts.values()) - min(counts.values()) <= 2  # each at its cadence, none starved
    # A chat that ends is read no more.
    chats[0].ended = True
    settled = len(reconciler.reads)
    await wait_until(lambda: len(reconciler.reads) >= settled + 400, timeout=20)
    assert not loop.is_watching(chats[0])
    await loop.stop(timeout=1)
    await relay.stop()


async def test_a_refused_push_has_its_chat_read_soon_not_at_the_next_tick(monkeypatch):
    monkeypatch.setattr("connectors.servicenow.core.reconciling.SOON_S", 0.01)
    reads: List[str] = []

    class Counting:
        def readable(self):
            return True

        async def read(self, chat, *, state_only=False):
            from connectors.servicenow.core.reconcile import Pass

            reads.append(chat.chat_id)
            return Pass((), chat.records, ())

    async def on_cursor(chat):
        pass

    store = MemoryStore()
    relay = Relay(PushBackend(), SETTINGS, RecordingSlots(), Recorder(), store=store, keyed=True)
    loop = ReconcileLoop(Counting(), store, relay.dispatcher, TaskSet(), owner="r", interval=3600, on_cursor=on_cursor)
    chat = LiveChat(sender_id="u1", chat_id="c1")
    loop.watch(chat, catch_up=False)  # opened here: nothing to catch up on, next read in an hour
    assert not loop.soon("unknown-chat")
    assert loop.soon("c1")
    await wait_until(lambda: reads == ["c1"])
    await loop.stop(timeout=1)
    await relay.stop()
