"""The outbox on the shared store: two ``SharedOutbox`` objects over one
Redis (fakeredis) stand for two replicas. The same flows over a real
redis-server and real ``rasa run`` processes are in tests/e2e/test_replicas.py."""

import asyncio
import uuid

import fakeredis
import pytest
from aioresponses import aioresponses
from fakeredis import aioredis as fake_aioredis

from connectors.servicenow.delivery import HANDOFF_EVENT, Outgoing, StreamLimitReached, status_item
from connectors.servicenow.errors import StoreUnavailable
from connectors.servicenow.shared_delivery import CALLBACK_SINK, SharedOutbox
from connectors.servicenow.store.redis import RedisStore

CALLBACK = "http://frontend.test/callback"


@pytest.fixture
def server():
    return fakeredis.FakeServer()


@pytest.fixture
async def replicas(server):
    made = []
    prefix = f"t{uuid.uuid4().hex[:6]}:"

    def new(callback_url=None, **options):
        store = RedisStore(fake_aioredis.FakeRedis(server=server), prefix=prefix)
        outbox = SharedOutbox(store, callback_url, owner=uuid.uuid4().hex[:8], **options)
        made.append(outbox)
        return outbox

    yield new
    for outbox in made:
        await outbox.drain(1)
        await outbox.aclose()
        await outbox.store.aclose()


def message(text, sender="u1"):
    return Outgoing({"recipient_id": sender, "text": text})


async def take(subscription, count, heartbeat=2.0):
    items = []
    while len(items) < count:
        item = await subscription.next(heartbeat)
        assert item is not None, f"only {len(items)} of {count} items came"
        items.append(item)
    return items


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


async def test_last_event_id_resumes_exactly_after_it_on_any_replica(replicas):
    a, b = replicas(), replicas()
    stored = await a.put("u1", [message(str(n)) for n in range(5)])
    subscription = b.subscribe("u1", last_event_id=stored[1].event_id)
    assert [item.payload["text"] for item in await take(subscription, 3)] == ["2", "3", "4"]
    subscription.close()


async def test_a_foreign_or_future_event_id_does_not_hide_items(replicas):
    a, b = replicas(), replicas()
    other = await a.put("someone-else", [message("theirs", "someone-else")])
    await a.put("u1", [message("seen")])
    first = b.subscribe("u1")
    assert [item.payload["text"] for item in await take(first, 1)] == ["seen"]
    first.close()
    for foreign in (other[0].event_id, "99999999999999-0", "garbage"):
        await a.put("u1", [message(f"after {foreign}")])
        stream = b.subscribe("u1", last_event_id=foreign)
        # Not "after the foreign id": after what streams have taken already.
        assert [item.payload["text"] for item in await take(stream, 1)] == [f"after {foreign}"]
        assert await stream.next(0.05) is None
        stream.close()
    later = b.subscribe("u1", last_event_id="99999999999999-0")
    reading = asyncio.ensure_future(take(later, 1))
    await asyncio.sleep(0)  # wait-ok: one turn of the loop, so the stream waits first
    await a.put("u1", [message("later")])
    assert [item.payload["text"] for item in await asyncio.wait_for(reading, 5)] == ["later"]
    later.close()


async def test_an_anonymous_stream_leaves_nothing_behind(replicas, server):
    a = replicas()
    keys_before = set(await a.store._redis.keys("*"))
    subscription = a.subscribe("nobody")
    assert await subscription.next(0.05) is None
    subscription.close()
    assert a.mailbox_count == 0 and a.open_streams == 0
    assert set(await a.store._redis.keys("*")) == keys_before


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


async def test_the_callback_gets_each_item_once_in_order_whichever_replica_put_it(replicas):
    a, b = replicas(CALLBACK), replicas(CALLBACK)
    with aioresponses() as mock:
        mock.post(CALLBACK, status=200, repeat=True)
        await a.put("u1", [message("one")])
        await b.put("u1", [message("two"), status_item("u1", active=True, chat_id="c", api="va")])
        await a.put("u1", [message("three")])
        stored = await b.put("u1", [message("four")])

        async def caught_up():
            while await a.store.sink_position("u1", CALLBACK_SINK) != stored[-1].event_id:
                await asyncio.sleep(0.01)  # wait-ok: polling a condition with a deadline

        await asyncio.wait_for(caught_up(), 5)
        await asyncio.wait_for(asyncio.gather(*a._posters.values(), *b._posters.values()), 5)
        posted = [call.kwargs["json"]["text"] for call in next(iter(mock.requests.values()))]
    assert posted == ["one", "two", "three", "four"]  # the status event is for streams only
    assert await a.store.free_leases() == []  # nothing left for a takeover


async def test_a_repeated_push_is_stored_once(replicas):
    a, b = replicas(), replicas()
    assert await a.put("u1", [message("hi")], dedupe_key="cb:c:f", dedupe_ttl=60)
    assert await b.put("u1", [message("hi")], dedupe_key="cb:c:f", dedupe_ttl=60) is None
    assert len(await a.store.read("u1")) == 1


async def test_while_redis_is_down_items_wait_in_order_and_pushes_are_refused(replicas, server):
    a = replicas()
    server.connected = False
    with pytest.raises(StoreUnavailable):
        await a.put("u1", [message("push")], dedupe_key="cb:c:f", dedupe_ttl=60)
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
    assert await a.put("u1", [message("push")], dedupe_key="cb:c:f", dedupe_ttl=60)


async def test_without_a_callback_the_first_stream_to_take_an_entry_reports_it_once(replicas):
    taken = []
    a, b = replicas(), replicas()
    for outbox in (a, b):
        outbox.on_taken = lambda recipient, entry, delivered: taken.append((recipient, entry.payload["text"], delivered))
    streams = [a.subscribe("u1"), b.subscribe("u1")]
    readers = [asyncio.ensure_future(take(stream, 2)) for stream in streams]
    await asyncio.sleep(0)  # wait-ok: one turn of the loop, so the stream waits first
    await a.put("u1", [message("one"), message("two")])
    await asyncio.wait_for(asyncio.gather(*readers), 5)
    assert sorted(taken) == [("u1", "one", True), ("u1", "two", True)]
    for stream in streams:
        stream.close()


async def test_with_a_callback_the_poster_reports_what_the_frontend_answered(replicas):
    taken = []
    a = replicas(CALLBACK)
    a.on_taken = lambda recipient, entry, delivered: taken.append((entry.payload["text"], delivered))
    with aioresponses() as mock:
        mock.post(CALLBACK, status=200)
        await a.put("u1", [message("one"), status_item("u1", active=True, chat_id="c", api="va")])
        await asyncio.wait_for(asyncio.gather(*a._posters.values()), 5)
    assert taken == [("one", True)]  # the status event is not the callback's


async def test_the_replica_that_posts_reports_each_answered_callback_and_its_backlog(replicas):
    delivered = []
    a, b = replicas(CALLBACK), replicas(CALLBACK)
    for outbox in (a, b):
        outbox.on_delivered = lambda event_id, sink, outbox=outbox: delivered.append((outbox, event_id, sink))
    answer = asyncio.Event()

    async def held(url, **kwargs):
        await answer.wait()

    with aioresponses() as mock:
        mock.post(CALLBACK, status=200, repeat=True, callback=held)
        stored = await a.put("u1", [message("one"), message("two"), status_item("u1", active=True, chat_id="c", api="va")])
        stored += await b.put("u1", [message("three")])

        async def owed(count):
            while a.callback_backlog + b.callback_backlog != count:
                await asyncio.sleep(0.01)  # wait-ok: polling a condition with a deadline

        # a took the lease with its append and its first POST hangs: it owes
        # the two messages it read (the status event is not the callback's);
        # b appended behind a's lease and owes none: a reads "three" after
        # its batch.
        await asyncio.wait_for(owed(2), 5)
        assert b.callback_backlog == 0 and not b._posters
        answer.set()
        await asyncio.wait_for(owed(0), 5)
        await asyncio.wait_for(asyncio.gather(*a._posters.values(), *b._posters.values()), 5)
    messages = [item.event_id for item in stored if item.kind != HANDOFF_EVENT]
    assert [(outbox, event_id, sink) for outbox, event_id, sink in delivered] == [(a, e, "callback") for e in messages]


async def test_a_refused_callback_leaves_the_backlog_without_a_delivery(replicas, monkeypatch):
    from connectors.servicenow import delivery
    from connectors.servicenow.config import RetryPolicy

    monkeypatch.setattr(delivery, "CALLBACK_RETRY", RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.01))
    delivered = []
    a = replicas(CALLBACK)
    a.on_delivered = lambda event_id, sink: delivered.append(event_id)
    with aioresponses() as mock:
        mock.post(CALLBACK, status=400, repeat=True)
        await a.put("u1", [message("one")])
        await asyncio.wait_for(asyncio.gather(*a._posters.values()), 5)
    assert delivered == [] and a.callback_backlog == 0


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
