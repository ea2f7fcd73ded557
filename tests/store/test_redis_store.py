"""What only the Redis store has: a server that goes away and comes back,
durability through AOF, connection URLs, key prefixes, the key layout."""

import asyncio
import signal
import time

import pytest

from connectors.servicenow.store import Cap, HandoffRecord, StartLimits, NewEntry, StoreUnavailable, open_store
from connectors.servicenow.store.memory import MemoryStore
from connectors.servicenow.store.redis import RedisStore
from tests.store.conftest import free_port, wait_until


def record(sender: str = "user-1", chat: str = "chat-1") -> HandoffRecord:
    return HandoffRecord(sender_id=sender, chat_id=chat, api="virtual_agent")


async def every_call_is_unavailable(store: RedisStore) -> None:
    calls = [
        store.get_handoff("user-1"),
        store.create_handoff(record("user-2", "chat-2")),
        store.claim_once("k", 60),
        store.append("user-1", [NewEntry({"text": "x"})]),
        store.read("user-1", block=0.5),
        store.acquire_lease("poll:chat-1", "a", 30),
        store.claim_due_timers(),
        store.ping(),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call


async def answers(store: RedisStore) -> bool:
    try:
        await store.ping()
        return True
    except StoreUnavailable:
        return False


async def test_no_redis_is_a_clear_unavailable_not_a_hang():
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", operation_timeout=2)
    began = time.monotonic()
    try:
        await every_call_is_unavailable(store)
    finally:
        await store.aclose()
    assert time.monotonic() - began < 10


async def test_a_redis_restart_is_unavailable_while_down_and_keeps_the_data(own_redis_server):
    store = RedisStore.from_url(own_redis_server.url, operation_timeout=2)
    try:
        await store.create_handoff(record())
        entries = await store.append("user-1", [NewEntry({"text": "kept"})])
        assert await store.claim_once("sn-msg-1", 3600)
        await store.schedule_timer("idle:user-1", time.time() + 600)
        await store.register_lease("poll:chat-1")

        own_redis_server.stop(signal.SIGTERM)
        await every_call_is_unavailable(store)

        own_redis_server.start()
        # The same store object recovers: no reconnect by the caller.
        assert await store.get_handoff("user-1") == record()
        assert [entry.entry_id for entry in await store.read("user-1")] == [entries[0].entry_id]
        assert not await store.claim_once("sn-msg-1", 3600)
        assert await store.timer_due_at("idle:user-1") is not None
        assert await store.free_leases() == ["poll:chat-1"]
    finally:
        await store.aclose()


async def test_a_crash_of_redis_loses_nothing_acknowledged_with_aof_always(own_redis_server):
    store = RedisStore.from_url(own_redis_server.url, operation_timeout=2)
    try:
        appended = []
        for n in range(50):
            appended += await store.append("user-1", [NewEntry({"text": str(n)})], dedupe_key=f"cb:{n}", dedupe_ttl=3600)
        own_redis_server.stop(signal.SIGKILL)
        own_redis_server.start()
        kept = await store.read("user-1", limit=1000)
        assert [entry.entry_id for entry in kept] == [entry.entry_id for entry in appended]
        assert await store.append("user-1", [NewEntry({"text": "again"})], dedupe_key="cb:49", dedupe_ttl=3600) is None
    finally:
        await store.aclose()


async def test_a_blocked_reader_learns_that_redis_went_away(own_redis_server):
    store = RedisStore.from_url(own_redis_server.url, operation_timeout=2)
    try:
        await store.ping()
        reader = asyncio.ensure_future(store.read("user-1", block=30))
        await asyncio.sleep(0.2)  # wait-ok: lets the blocking read reach Redis; the test passes either way
        own_redis_server.stop(signal.SIGKILL)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(reader, 10)
    finally:
        await store.aclose()


async def test_a_redis_that_hangs_is_unavailable_after_the_operation_timeout(own_redis_server):
    store = RedisStore.from_url(own_redis_server.url, operation_timeout=0.5)
    try:
        await store.ping()
        own_redis_server.send(signal.SIGSTOP)
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.get_handoff("user-1")
        assert time.monotonic() - began < 3
        own_redis_server.send(signal.SIGCONT)
        await wait_until(lambda: answers(store), what="the store to answer again")
        assert await store.create_handoff(record())
        assert await store.get_handoff("user-1") == record()
    finally:
        await store.aclose()


async def test_stores_with_different_prefixes_do_not_meet(redis_server):
    blue = RedisStore.from_url(redis_server.url, prefix="blue:")
    green = RedisStore.from_url(redis_server.url, prefix="green:")
    try:
        await blue.create_handoff(record("prefix-user", "prefix-chat"))
        assert await green.get_handoff("prefix-user") is None
        assert [handoff.sender_id async for handoff in green.handoffs()] == []
        assert await green.claim_once("prefix-key", 60)
        assert await blue.claim_once("prefix-key", 60)
    finally:
        await blue.aclose()
        await green.aclose()


async def test_the_key_layout_is_as_documented(redis_server):
    store = RedisStore.from_url(redis_server.url, prefix="layout:", stream_ttl=600)
    raw = store._redis
    try:
        await raw.delete(*(await raw.keys("layout:*")) or ["layout:none"])
        await store.create_handoff(record())
        await store.append("user-1", [NewEntry({"text": "x"})])
        entries = await store.read("user-1")
        await store.advance_sink("user-1", "callback", entries[0].entry_id)
        await store.claim_once("m1", 60)
        await store.register_lease("poll:chat-1")
        await store.acquire_lease("poll:chat-1", "a", 30)
        await store.schedule_timer("idle:user-1", time.time() + 60)
        await store.take_slot("replica:sid", [Cap("streams", 10)], ttl=60)
        await store.admit_handoff("user-2", StartLimits(max_live=5, per_sender=3, interval_s=1, burst=5))
        keys = {key.decode(): (await raw.type(key)).decode() for key in await raw.keys("layout:*")}
        assert keys == {
            "layout:live": "set",
            "layout:n:streams": "zset",
            "layout:places": "zset",
            "layout:r:user-2": "zset",
            "layout:rate": "string",
            "layout:h:user-1": "string",
            "layout:c:chat-1": "string",
            "layout:o:user-1": "stream",
            "layout:s:user-1": "hash",
            "layout:d:m1": "string",
            "layout:l:poll:chat-1": "string",
            "layout:leases": "zset",
            "layout:timers": "zset",
        }
        # What expires, and what lives as long as the handoff.
        assert 0 < await raw.pttl("layout:o:user-1") <= 600_000
        assert 0 < await raw.pttl("layout:s:user-1") <= 600_000
        assert 0 < await raw.pttl("layout:d:m1") <= 60_000
        assert 0 < await raw.pttl("layout:l:poll:chat-1") <= 30_000
        assert 0 < await raw.pttl("layout:n:streams") <= 60_000
        assert 0 < await raw.pttl("layout:r:user-2") <= 60_000
        assert 0 < await raw.pttl("layout:rate") <= 1_000
        assert await raw.pttl("layout:h:user-1") == -1
        assert await raw.pttl("layout:c:chat-1") == -1
    finally:
        await store.aclose()


def test_open_store_picks_the_store_by_url():
    assert isinstance(open_store(None), MemoryStore)
    assert isinstance(open_store(""), MemoryStore)
    redis_store = open_store("redis://127.0.0.1:1/3", prefix="bot:")
    assert isinstance(redis_store, RedisStore) and redis_store.prefix == "bot:"
    pool = redis_store._redis.connection_pool
    assert pool.connection_kwargs["db"] == 3


def test_rediss_urls_connect_with_tls():
    store = open_store("rediss://:secret@redis.example:6380/0")
    pool = store._redis.connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["password"] == "secret"
    assert "secret" not in repr(store._redis)


@pytest.fixture
async def layout_store(redis_server):
    store = RedisStore.from_url(redis_server.url, prefix=f"retry{time.monotonic_ns()}:")
    yield store
    await store.aclose()


async def test_a_retried_claim_is_recognised_as_the_same_call(layout_store):
    # What redis-py's one retry after a dropped connection does: the same
    # script with the same arguments, possibly after the first one ran.
    store = layout_store
    key = [store._key("d:", "sn-msg-1")]
    assert await store._claim_once(keys=key, args=["token-a", 60_000]) == 1
    assert await store._claim_once(keys=key, args=["token-a", 60_000]) == 1
    assert await store._claim_once(keys=key, args=["token-b", 60_000]) == 0


async def test_a_retried_deduped_append_returns_its_own_ids_and_stores_once(layout_store):
    store = layout_store
    keys = [store._key("o:", "user-1"), store._key("s:", "user-1"), store._key("d:", "cb:1")]
    no_guard = ["", "", "", "", 0]
    args = [200, 60_000, 60_000, "token-a", *no_guard, "message", "1", '{"text":"x"}', "", "message", "1", '{"text":"y"}', ""]
    first = await store._append(keys=keys, args=args)
    assert len(first) == 2
    assert await store._append(keys=keys, args=args) == first
    assert await store._append(keys=keys, args=args[:3] + ["token-b"] + args[4:]) is None
    assert len(await store.read("user-1")) == 2


async def test_a_retried_guarded_append_returns_its_own_ids_and_stores_once(layout_store):
    # A poll's messages: no dedupe key, a once key per message; the first
    # once key's mark carries the call's ids.
    store = layout_store
    assert await store.create_handoff(HandoffRecord("user-1", "chat-1", "connect"))
    assert await store.acquire_lease("poll:chat-1", "replica-a", 30)
    keys = [store._key("o:", "user-1"), store._key("s:", "user-1")]
    guard = [store._key("h:", "user-1"), "6:chat-1", store._key("l:", "poll:chat-1"), "replica-a", 60_000]
    entries = ["message", "1", '{"text":"x"}', store._key("d:", "msg:chat-1:m1"), "typing", "0", "{}", "",
               "message", "1", '{"text":"y"}', store._key("d:", "msg:chat-1:m2")]
    args = [200, 60_000, 0, "token-a", *guard, *entries]
    first = await store._append(keys=keys, args=args)
    assert len(first) == 3
    assert await store._append(keys=keys, args=args) == first
    assert await store._append(keys=keys, args=args[:3] + ["token-b"] + args[4:]) == [
        2, store._key("d:", "msg:chat-1:m1").encode(), store._key("d:", "msg:chat-1:m2").encode()
    ]
    assert len(await store.read("user-1")) == 3


async def test_a_retried_sink_advance_is_recognised_as_the_same_call(layout_store):
    store = layout_store
    (entry,) = await store.append("user-1", [NewEntry({"text": "x"})])
    keys = [store._key("s:", "user-1"), store._key("o:", "user-1")]
    assert await store._advance_sink(keys=keys, args=["callback", entry.entry_id, 60_000, "token-a"]) == 1
    assert await store._advance_sink(keys=keys, args=["callback", entry.entry_id, 60_000, "token-a"]) == 1
    assert await store._advance_sink(keys=keys, args=["callback", entry.entry_id, 60_000, "token-b"]) == 0
    assert await store.sink_position("user-1", "callback") == entry.entry_id


async def test_a_lease_whose_key_lives_on_is_not_listed_as_free(layout_store):
    # The score is the expiry by the taker's clock; the key expires by Redis's.
    # A score already past (a taker whose clock runs behind, or the moment
    # between the two) must not make a held job look free.
    store = layout_store
    await store.register_lease("poll:chat-1")
    assert await store.acquire_lease("poll:chat-1", "a", ttl=30)
    await store._redis.zadd(store._key("leases"), {"poll:chat-1": 1})
    assert await store.free_leases() == []
    await store._redis.delete(store._key("l:", "poll:chat-1"))
    assert await store.free_leases() == ["poll:chat-1"]


async def test_a_chat_index_that_outlived_its_handoff_finds_nothing(layout_store):
    # The index is written and removed beside the record; one left behind
    # (or pointing at a sender now in another chat) must not find that chat.
    store = layout_store
    await store.create_handoff(record("user-1", "chat-2"))
    await store._redis.set(store._key("c:", "chat-1"), "user-1")
    await store._redis.set(store._key("c:", "chat-9"), "nobody")
    assert await store.handoff_by_chat("chat-1") is None
    assert await store.handoff_by_chat("chat-9") is None
    assert await store.handoff_by_chat("chat-2") == record("user-1", "chat-2")


async def test_a_retried_handoff_creation_is_recognised_as_the_same_call(layout_store):
    store = layout_store
    assert await store.create_handoff(record())
    assert await store.create_handoff(record()), "the same chat id: the first try ran"
    assert not await store.create_handoff(record(chat="chat-2"))


async def test_a_bounded_pool_waits_for_a_connection_instead_of_failing(redis_server):
    store = RedisStore.from_url(redis_server.url, prefix="pool:", max_connections=2)
    try:
        results = await asyncio.gather(*(store.claim_once(f"pool-{n}-{time.monotonic_ns()}", 60) for n in range(50)))
        assert all(results)
    finally:
        await store.aclose()


async def test_parked_readers_hold_no_connection(redis_server):
    # Four connections for 50 parked readers, and still room for other work:
    # the readers wait on one pub/sub connection, not in XREAD BLOCK.
    prefix = f"share{time.monotonic_ns()}:"
    reading = RedisStore.from_url(redis_server.url, prefix=prefix, max_connections=4)
    writing = RedisStore.from_url(redis_server.url, prefix=prefix)
    raw = writing._redis
    readers = []
    try:
        readers = [asyncio.ensure_future(reading.read(f"user-{n}", block=20)) for n in range(50)]
        channels = [reading._key("o:", f"user-{n}") for n in range(50)]

        async def subscribers():
            return [count for _, count in await raw.pubsub_numsub(*channels)]

        await wait_until(lambda: _all(subscribers(), lambda count: count >= 1), what="every reader to listen")
        assert not any("b" in client["flags"] for client in await raw.client_list()), "a connection is parked"
        assert await reading.get_handoff("user-1") is None, "the store still has connections for other work"
        for n in range(50):
            await writing.append(f"user-{n}", [NewEntry({"n": n})])
        woken = await asyncio.wait_for(asyncio.gather(*readers), 10)
        assert [entries[0].payload["n"] for entries in woken] == list(range(50))
        await wait_until(lambda: _all(subscribers(), lambda count: count == 0), what="the subscriptions to end")
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await reading.aclose()
        await writing.aclose()


async def _all(values, predicate) -> bool:
    return all(predicate(value) for value in await values)


async def test_many_readers_of_one_stream_all_wake(redis_server):
    prefix = f"many{time.monotonic_ns()}:"
    one = RedisStore.from_url(redis_server.url, prefix=prefix)
    two = RedisStore.from_url(redis_server.url, prefix=prefix)
    try:
        (first,) = await one.append("user-1", [NewEntry({"n": 0})])
        readers = [
            asyncio.ensure_future(store.read("user-1", after=first.entry_id, block=20)) for store in [one, two] * 10
        ]
        channel = one._key("o:", "user-1")

        async def listening():
            ((_, count),) = await one._redis.pubsub_numsub(channel)
            return count >= 2  # one subscription per store's connection

        await wait_until(listening, what="both replicas to listen")
        await one.append("user-1", [NewEntry({"n": 1})])
        woken = await asyncio.wait_for(asyncio.gather(*readers), 10)
        assert all([entry.payload["n"] for entry in entries] == [1] for entries in woken)
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_cancel_that_comes_as_a_redis_call_completes_is_not_lost():
    # Each call ran under asyncio.wait_for, which before Python 3.12 returns the
    # call's answer when the answer and a cancel come in the same turn of the
    # loop (CPython gh-86296): a socket.io reader cancelled so read on for ever.
    import fakeredis.aioredis

    store = RedisStore(fakeredis.aioredis.FakeRedis(), prefix="t:")
    answer: "asyncio.Future[list]" = asyncio.get_running_loop().create_future()
    asked = asyncio.Event()

    async def xread(*_args, **_options):
        asked.set()
        return await answer

    store._redis.xread = xread
    reading = asyncio.ensure_future(store.read("user-1"))
    try:
        await asked.wait()
        answer.set_result([])
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
    finally:
        await store.aclose()


#: What uvloop, the loop ``rasa run`` runs on, raises for a write to a connection that closed.
UVLOOP_CLOSED = "unable to perform operation on <TCPTransport closed=True reading=False 0x7f00>; the handler is closed"


async def listening(store: RedisStore) -> bool:
    return any(
        listener.subscribed.is_set() for state in store._notices._channels.values() for listener in state.listeners
    )


async def test_a_notice_connection_that_closed_under_uvloop_is_dropped_not_raised():
    # Under uvloop redis-py passes on a RuntimeError for a write to a connection
    # that closed as Redis went away. Seen in the soak: an SSE stream's wait
    # ending as Redis stopped, its unsubscribe raised that, and the stream's
    # handler ended with an error of its own instead of the store's outage.
    import fakeredis.aioredis

    store = RedisStore(fakeredis.aioredis.FakeRedis(), prefix="t:")

    async def unsubscribe(*_channels: bytes) -> None:
        raise RuntimeError(UVLOOP_CLOSED)

    try:
        reading = asyncio.ensure_future(store.read("user-1", block=30))
        await wait_until(lambda: listening(store), what="the reader to listen")
        store._notices._pubsub.unsubscribe = unsubscribe
        reading.cancel()  # the stream's client went away: its wait ends, and it unsubscribes
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(reading, 10)
        assert store._notices._pubsub is None, "the broken connection is dropped"
        # The next reader has a connection of its own and hears an append.
        reader = asyncio.ensure_future(store.read("user-1", block=10))
        await wait_until(lambda: listening(store), what="the next reader to listen")
        await store.append("user-1", [NewEntry({"n": 1})])
        assert [entry.payload for entry in await asyncio.wait_for(reader, 10)] == [{"n": 1}]
    finally:
        await store.aclose()


async def test_only_uvloops_closed_connection_is_taken_for_redis_going_away():
    from connectors.servicenow.store.redis import _as_store_errors

    async def fails(error: Exception) -> None:
        raise error

    with pytest.raises(StoreUnavailable, match="its connection closed"):
        await _as_store_errors(fails(RuntimeError(UVLOOP_CLOSED)), 1.0)
    with pytest.raises(RuntimeError, match="a bug of ours"):
        await _as_store_errors(fails(RuntimeError("a bug of ours")), 1.0)


def test_uvloop_says_the_handler_is_closed_for_a_write_to_a_closed_connection():
    # The words _closed_under_uvloop looks for, from the installed uvloop itself.
    uvloop = pytest.importorskip("uvloop")
    from connectors.servicenow.store.redis import _closed_under_uvloop

    async def write_after_close() -> RuntimeError:
        server = await asyncio.start_server(lambda _reader, _writer: None, "127.0.0.1", 0)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            writer.transport.abort()
            await writer.wait_closed()  # uvloop closes the handle as it reports the connection lost
            with pytest.raises(RuntimeError) as raised:
                writer.writelines([b"UNSUBSCRIBE\r\n"])
            return raised.value
        finally:
            server.close()

    loop = uvloop.new_event_loop()
    try:
        error = loop.run_until_complete(write_after_close())
    finally:
        loop.close()
    assert _closed_under_uvloop(error), error
