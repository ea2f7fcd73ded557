"""The outbox: items stored in order per conversation, a repeated push stored
once, items kept in the process while the store is down, the caps on open
readers, and what a conversation costs while nobody reads it."""

import asyncio
import time

import pytest

from connectors.servicenow.errors import StoreUnavailable
from connectors.servicenow.outbox.base import HANDOFF_EVENT, IN_TOTAL, PER_SENDER, StreamLimitReached, status_item
from connectors.servicenow.store import MemoryStore
from tests.unit.outbox.conftest import CALLBACK, message, take


async def test_items_put_on_one_replica_reach_a_stream_on_another_in_order(replicas):
    a, b = replicas(), replicas()
    subscription = b.subscribe("u1")
    reading = asyncio.ensure_future(take(subscription, 3))
    await asyncio.sleep(0)  # wait-ok: one turn of the loop, so the stream waits before anything is put
    stored = await a.put("u1", [message("one"), message("two")])
    stored += await a.put("u1", [status_item("u1", active=False, chat_id="c", api="connect")])
    items = await asyncio.wait_for(reading, 5)
    assert [item.event_id for item in items] == [item.event_id for item in stored]
    assert [item.payload.get("text") for item in items] == ["one", "two", None]
    assert items[2].kind == HANDOFF_EVENT
    subscription.close()


async def test_a_repeated_push_is_stored_once(replicas):
    a, b = replicas(), replicas()
    assert await a.put("u1", [message("hi")], dedupe_key="push:c:f", dedupe_ttl=60)
    assert await b.put("u1", [message("hi")], dedupe_key="push:c:f", dedupe_ttl=60) is None
    assert len(await a.store.read("u1")) == 1


async def test_while_redis_is_down_items_wait_in_order_and_pushes_are_refused(replicas, server):
    a = replicas()
    server.connected = False
    with pytest.raises(StoreUnavailable):
        await a.put("u1", [message("push")], dedupe_key="push:c:f", dedupe_ttl=60)
    await a.put("u1", [message("one")])
    await a.put("u1", [message("two")])
    assert a.mailbox_count == 1
    server.connected = True

    async def stored():
        while len(await a.store.read("u1")) < 2:
            await asyncio.sleep(0.05)  # wait-ok: polling a condition with a deadline

    await asyncio.wait_for(stored(), 10)
    assert [entry.payload["text"] for entry in await a.store.read("u1")] == ["one", "two"]
    # A refused push was not claimed: ServiceNow's retry is stored.
    assert await a.put("u1", [message("push")], dedupe_key="push:c:f", dedupe_ttl=60)


async def test_items_waiting_for_the_store_count_in_the_backlog(replicas, server):
    a, no_callback = replicas(CALLBACK), replicas()
    server.connected = False
    await a.put("u1", [message("one"), status_item("u1", active=True, chat_id="c", api="va")])
    await no_callback.put("u2", [message("one")])
    assert a.callback_backlog == 1  # the status event is not the callback's
    assert no_callback.callback_backlog == 0  # without a callback there is nothing to post
    for outbox in (a, no_callback):
        for worker in outbox._backlog_workers.values():
            worker.cancel()
    server.connected = True


# -- what a conversation costs -------------------------------------------------------


async def test_a_stream_for_a_quiet_conversation_leaves_nothing_behind(outboxes):
    store = MemoryStore()
    outbox = outboxes(store)
    for n in range(500):
        stream = outbox.subscribe(f"anonymous-{n}", last_event_id=f"whatever-{n}")
        assert outbox.mailbox_count == 1 and outbox.open_streams == 1
        assert await stream.next(heartbeat=0.0001) is None  # a read that waited, and timed out
        stream.close()
        stream.close()  # twice is harmless
    assert outbox.mailbox_count == 0 and outbox.open_streams == 0
    assert not store._streams  # nothing kept in the store either


async def test_an_anonymous_stream_leaves_nothing_behind_in_redis(replicas):
    a = replicas()
    keys_before = set(await a.store._redis.keys("*"))
    subscription = a.subscribe("nobody")
    assert await subscription.next(0.05) is None
    subscription.close()
    assert a.mailbox_count == 0 and a.open_streams == 0
    assert set(await a.store._redis.keys("*")) == keys_before


async def test_a_conversations_items_stay_while_it_holds_some_and_go_when_idle(outboxes):
    clock = [1000.0]
    store = MemoryStore(stream_ttl=3600, clock=lambda: clock[0])
    outbox = outboxes(store)
    await outbox.put("u1", [message("m0")])
    first, second = outbox.subscribe("u1"), outbox.subscribe("u2")
    assert (await first.next(heartbeat=1)).payload["text"] == "m0"
    first.close()
    assert await second.next(heartbeat=0.001) is None
    second.close()
    # u1's item is kept for a reconnect (Last-Event-ID); the quiet u2 left nothing.
    assert [entry.payload["text"] for entry in await store.read("u1")] == ["m0"]
    assert set(store._streams) == {"u1"}
    clock[0] += 3600 * 10  # an hour and more without news: gone
    assert await store.read("u1") == []
    assert not store._streams


async def test_streams_are_capped_per_conversation_and_in_total_and_a_refusal_changes_nothing(outboxes):
    outbox = outboxes(max_streams_per_sender=2, max_open_streams=3)
    tabs = [outbox.subscribe("u1"), outbox.subscribe("u1")]
    with pytest.raises(StreamLimitReached) as refused:
        outbox.subscribe("u1")
    assert refused.value.scope == PER_SENDER and outbox.open_streams == 2
    tabs.append(outbox.subscribe("u2"))
    with pytest.raises(StreamLimitReached) as refused:
        outbox.subscribe("u3")
    assert refused.value.scope == IN_TOTAL
    assert outbox.open_streams == 3 and outbox.mailbox_count == 2  # nothing for the refused u3
    tabs.pop().close()
    tabs.append(outbox.subscribe("u3"))  # room again once a stream closed
    for tab in tabs:
        tab.close()
    assert outbox.open_streams == 0 and outbox.mailbox_count == 0


async def test_stream_caps_count_this_replicas_streams(replicas):
    a = replicas(max_streams_per_sender=1, max_open_streams=2)
    first = a.subscribe("u1")
    with pytest.raises(StreamLimitReached):
        a.subscribe("u1")
    second = a.subscribe("u2")
    with pytest.raises(StreamLimitReached):
        a.subscribe("u3")
    first.close()
    second.close()
    a.subscribe("u3").close()


async def test_socketio_readers_count_against_the_same_caps(outboxes):
    async def emit(item):
        return True

    outbox = outboxes(max_streams_per_sender=1, max_open_streams=5)
    reader = outbox.reader("s1", emit)
    with pytest.raises(StreamLimitReached):
        outbox.subscribe("s1")
    reader.close()
    outbox.subscribe("s1").close()
    assert outbox.open_streams == 0


async def test_an_idle_stream_expires_in_the_memory_store_as_in_redis(outboxes):
    clock = [time.time()]
    store = MemoryStore(stream_ttl=60, clock=lambda: clock[0])
    outbox = outboxes(store)
    await outbox.put("u1", [message("old")])
    clock[0] += 61
    await outbox.put("u1", [message("new")])
    stream = outbox.subscribe("u1")
    assert [item.payload["text"] for item in await take(stream, 1)] == ["new"]
    assert await stream.next(heartbeat=0.001) is None
    stream.close()
