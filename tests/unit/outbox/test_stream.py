"""The outbox: items stored in order per conversation, a repeated push stored
once, items kept in the process while the store is down, the caps on open
readers, and what a conversation costs while nobody reads it."""

import asyncio
import time

import pytest

from connectors.servicenow.errors import StoreUnavailable
from connectors.servicenow.outbox.base import HANDOFF_EVENT, IN_TOTAL, PER_CLIENT, PER_SENDER, StreamLimitReached, status_item
from connectors.servicenow.store import MemoryStore
from tests.store.conftest import wait_until
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
        slot = await outbox.capacity.open_slot("sse", client="10.0.0.1", sender=f"anonymous-{n}")
        stream = outbox.subscribe(f"anonymous-{n}", last_event_id=f"whatever-{n}")
        assert outbox.mailbox_count == 1 and outbox.open_streams == 1
        assert await stream.next(heartbeat=0.0001) is None  # a read that waited, and timed out
        stream.close()
        stream.close()  # twice is harmless
        outbox.capacity.close(slot)
        outbox.capacity.close(slot)
    assert outbox.mailbox_count == 0 and outbox.open_streams == 0
    await outbox.capacity.release_all(1)
    assert not store._streams  # nothing kept in the store either
    assert await store.count_slots(["streams", "streams:c:10.0.0.1"]) == [0, 0] and not store._counted.slots


async def test_an_anonymous_stream_leaves_nothing_behind_in_redis(replicas):
    a = replicas()
    keys_before = set(await a.store._redis.keys("*"))
    slot = await a.capacity.open_slot("sse", client="10.0.0.1", sender="nobody")
    subscription = a.subscribe("nobody")
    assert await subscription.next(0.05) is None
    subscription.close()
    a.capacity.close(slot)
    await a.capacity.release_all(1)
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


async def test_streams_are_capped_per_conversation_per_client_and_in_total_and_a_refusal_changes_nothing(outboxes):
    outbox = outboxes(max_streams_per_sender=2, max_streams_per_client=3, max_open_streams=4)
    capacity = outbox.capacity
    tabs = [await capacity.open_slot("sse", client="10.0.0.1", sender="u1") for _ in range(2)]
    with pytest.raises(StreamLimitReached) as refused:
        await capacity.open_slot("sse", client="10.0.0.2", sender="u1")
    assert refused.value.scope == PER_SENDER and outbox.open_streams == 2
    tabs.append(await capacity.open_slot("socketio", client="10.0.0.1"))
    with pytest.raises(StreamLimitReached) as refused:
        await capacity.open_slot("sse", client="10.0.0.1", sender="u2")
    assert refused.value.scope == PER_CLIENT
    tabs.append(await capacity.open_slot("sse", client="10.0.0.2", sender="u2"))
    with pytest.raises(StreamLimitReached) as refused:
        await capacity.open_slot("sse", client="10.0.0.3", sender="u3")
    assert refused.value.scope == IN_TOTAL
    assert outbox.open_streams == 4 and capacity.open_by_kind == {"sse": 3, "socketio": 1}
    assert capacity.conversations == {"u1", "u2"}  # nothing for the refused u3
    capacity.close(tabs.pop())
    tabs.append(await capacity.open_slot("sse", client="10.0.0.3", sender="u3"))  # room again once one closed
    for tab in tabs:
        capacity.close(tab)
    assert outbox.open_streams == 0 and outbox.mailbox_count == 0


async def test_a_socket_counts_against_its_sessions_cap_once_it_joins_it(outboxes):
    capacity = outboxes(max_streams_per_sender=1).capacity
    first = await capacity.open_slot("socketio", client="10.0.0.1")
    second = await capacity.open_slot("socketio", client="10.0.0.2")
    await capacity.join(first, "s1")
    with pytest.raises(StreamLimitReached) as refused:
        await capacity.join(second, "s1")
    assert refused.value.scope == PER_SENDER
    await capacity.join(first, "s2")  # a second session_request moves the socket
    await capacity.join(second, "s1")
    for slot in (first, second):
        capacity.close(slot)


async def test_stream_caps_count_every_replicas_streams(replicas):
    """Issue 22: with redis_url the caps were per replica."""
    a, b = replicas(max_streams_per_sender=1, max_open_streams=2), replicas(max_streams_per_sender=1, max_open_streams=2)
    first = await a.capacity.open_slot("sse", client="10.0.0.1", sender="u1")
    with pytest.raises(StreamLimitReached):
        await b.capacity.open_slot("sse", client="10.0.0.2", sender="u1")
    second = await b.capacity.open_slot("socketio", client="10.0.0.2")
    with pytest.raises(StreamLimitReached) as refused:
        await a.capacity.open_slot("sse", client="10.0.0.3", sender="u3")
    assert refused.value.scope == IN_TOTAL
    a.capacity.close(first)
    await a.capacity.release_all(1)
    third = await b.capacity.open_slot("sse", client="10.0.0.3", sender="u3")
    for slot in (second, third):
        b.capacity.close(slot)


async def test_the_slots_of_a_replica_that_died_expire_and_a_live_ones_are_renewed(replicas, monkeypatch):
    monkeypatch.setattr("connectors.servicenow.outbox.capacity.RENEW_EVERY_S", 0.05)
    a, b = replicas(max_open_streams=2), replicas(max_open_streams=2)
    # Real time (the slots expire in the store): a ttl a loaded CI worker's
    # stalls stay well under, between opening a's slot and the check that it
    # still counts (0.3 s was not: the check found it expired).
    ttl = a.capacity._ttl = b.capacity._ttl = 1.0
    await a.capacity.open_slot("sse", client="10.0.0.1", sender="u1")  # a dies: nothing renews its slot
    renewing = asyncio.ensure_future(b.capacity.renew_forever())
    try:
        kept = await b.capacity.open_slot("sse", client="10.0.0.2", sender="u2")
        with pytest.raises(StreamLimitReached):
            await b.capacity.open_slot("sse", client="10.0.0.3", sender="u3")

        async def third_slot():
            try:
                return await b.capacity.open_slot("sse", client="10.0.0.3", sender="u3")
            except StreamLimitReached:
                return None

        third = await wait_until(third_slot, timeout=10 * ttl, what="the dead replica's slot to expire")
        # b's own slots outlive their ttl twice over: they are renewed.
        await asyncio.sleep(2 * ttl)  # wait-ok: two ttls, through which only renewals keep b's slots
        with pytest.raises(StreamLimitReached):
            await b.capacity.open_slot("sse", client="10.0.0.4", sender="u4")
        for slot in (kept, third):
            b.capacity.close(slot)
    finally:
        renewing.cancel()


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
