"""Replicas sharing one store: handoff records decide routing, pushes and
agent messages are handled once per deployment, one replica polls a chat.

Two channels stand for two ``rasa run`` processes: they share the demo
agent's tracker store (as replicas share a SQL tracker store) and a Redis
store through fakeredis (the real-Redis runs are in tests/e2e). ServiceNow
(Connect) is mocked with aioresponses."""

import asyncio
import uuid
from types import SimpleNamespace

import fakeredis
import pytest
from aioresponses import aioresponses
from fakeredis import aioredis as fake_aioredis

from connectors.servicenow import ServiceNowInput
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.core.polling import Polling
from connectors.servicenow.errors import StoreUnavailable
from connectors.servicenow.servicenow.base import AgentMessage, PollResult
from connectors.servicenow.store import MemoryStore, StoreUnavailable as RedisDown
from connectors.servicenow.store.keys import poll_lease
from connectors.servicenow.store.redis import RedisStore
from connectors.servicenow.tasks import TaskSet
from tests.unit.core.test_intake import PullBackend, Relay, Recorder, RecordingSlots
from tests.unit.support import GROUP, LEAVE, MESSAGES, OPTIONS, SESSIONS, TEXTS, bound, close, requests_to, say, start

SETTINGS = ServiceNowSettings.from_credentials({**OPTIONS, "poll_interval": 0.02, "idle_poll_interval": 0.02})


@pytest.fixture
def redis_server():
    return fakeredis.FakeServer()


def two_stores(server):
    """Two replicas' connections to one Redis."""
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    return tuple(RedisStore(fake_aioredis.FakeRedis(server=server), prefix=prefix) for _ in range(2))


@pytest.fixture
async def replicas(agent, redis_server):
    made = []
    prefix = f"t{uuid.uuid4().hex[:6]}:"

    def new(store=None):
        store = store or RedisStore(fake_aioredis.FakeRedis(server=redis_server), prefix=prefix)
        channel = bound(ServiceNowInput(ServiceNowSettings.from_credentials(OPTIONS), store=store), agent)
        made.append(channel)
        return channel

    yield new
    for channel in made:
        await close(channel)
        await channel.core.store.aclose()


def forwarded(mock):
    return len(requests_to(mock, "POST", MESSAGES))


# -- options and errors -------------------------------------------------------


def test_redis_options_are_read_and_a_bad_url_is_refused_without_echoing_it():
    settings = ServiceNowSettings.from_credentials({**OPTIONS, "redis_url": "rediss://:s3cret@redis:6380/2", "redis_prefix": "bot1:"})
    assert settings.redis_url == "rediss://:s3cret@redis:6380/2" and settings.redis_prefix == "bot1:"
    assert "s3cret" not in repr(settings)
    assert ServiceNowSettings.from_credentials(OPTIONS).redis_prefix == "snow:"
    from connectors.servicenow.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as refused:
        ServiceNowSettings.from_credentials({**OPTIONS, "redis_url": "http://:s3cret@redis:6379"})
    assert "s3cret" not in str(refused.value)


def test_without_redis_url_the_store_is_in_process_and_with_it_redis():
    assert isinstance(ServiceNowInput.from_credentials(OPTIONS).core.store, MemoryStore)
    channel = ServiceNowInput.from_credentials({**OPTIONS, "redis_url": "redis://127.0.0.1:1/0"})
    assert isinstance(channel.core.store, RedisStore)


def test_one_except_clause_catches_the_tracker_stores_and_redis_failures():
    assert issubclass(RedisDown, StoreUnavailable)


# -- routing by the shared record ---------------------------------------------


async def test_a_handoff_started_on_one_replica_routes_messages_on_another(replicas, rasa_turn):
    a, b = replicas(), replicas()
    with aioresponses() as mock:
        await start(a, rasa_turn, mock)
        rasa_turn.reset_mock()
        mock.post(MESSAGES, payload={"result": {"sys_id": "m1", "timestamp": 1}})
        assert await say(b, rasa_turn, "are you there?") == []
        assert forwarded(mock) == 1
    rasa_turn.assert_not_awaited()
    record = await b.core.store.get_handoff("u1")
    assert record.chat_id == GROUP and record.api == "connect"


async def test_an_end_on_one_replica_sends_the_next_message_to_the_bot_on_another(replicas, rasa_turn):
    a, b = replicas(), replicas()
    with aioresponses() as mock:
        await start(a, rasa_turn, mock)
        mock.post(MESSAGES, payload={"result": {"sys_id": "m1", "timestamp": 1}})
        await say(b, rasa_turn, "hello agent")  # B now holds the chat in its registry
        mock.post(LEAVE, payload={})
        assert [reply["text"] for reply in await say(a, rasa_turn, "/end_chat")] == [TEXTS.user_ended]
        rasa_turn.reset_mock()
        replies = await say(b, rasa_turn, "hello")
    rasa_turn.assert_awaited_once()
    assert replies and replies[0]["text"].startswith("Hello!")
    assert await b.core.store.get_handoff("u1") is None
    assert b.core.registry.get("u1") is None


async def test_a_second_replica_cannot_start_a_second_chat_for_the_same_user(replicas, rasa_turn):
    a, b = replicas(), replicas()
    with aioresponses() as mock:
        await start(a, rasa_turn, mock)
        other = "d" * 32
        mock.post(SESSIONS, payload={"result": {"group": other, "state": 1}})
        mock.post(f"https://acme.service-now.com/api/now/connect/support/sessions/{other}/leave", payload={})
        # B's own start (out of band: Rasa's API) loses to the filed record and leaves its chat.
        from connectors.servicenow.servicenow.base import HandoffRequest

        assert await b.core.opening.start(HandoffRequest(sender_id="u1", text="agent please"), in_request=True) == []
        assert len(requests_to(mock, "POST", f"https://acme.service-now.com/api/now/connect/support/sessions/{other}/leave")) == 1
    assert (await a.core.store.get_handoff("u1")).chat_id == GROUP


async def test_redis_down_answers_503_and_never_reaches_the_bot(replicas, rasa_turn, redis_server):
    a = replicas()
    with aioresponses() as mock:
        await start(a, rasa_turn, mock)
    rasa_turn.reset_mock()
    redis_server.connected = False
    for sender in ("u1", "someone-else"):
        with pytest.raises(StoreUnavailable):
            await say(a, rasa_turn, "hello", sender=sender)
    rasa_turn.assert_not_awaited()
    redis_server.connected = True
    with aioresponses() as mock:
        mock.post(MESSAGES, payload={"result": {"sys_id": "m1", "timestamp": 1}})
        assert await say(a, rasa_turn, "hello") == []
    rasa_turn.assert_not_awaited()


async def test_a_handoff_is_not_opened_while_redis_is_down(replicas, rasa_turn, redis_server):
    a = replicas()
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        redis_server.connected = False
        # The routing check itself fails first: 503, the bot is not asked.
        with pytest.raises(StoreUnavailable):
            await say(a, rasa_turn, "talk to live agent")
        assert not requests_to(mock, "POST", SESSIONS)


# -- once per deployment --------------------------------------------------------


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
    assert [entry.payload["text"] for entry in await store_a.read("u1")] == ["hello"]
    for relay in relays:
        await relay.stop()
    await store_a.aclose()
    await store_b.aclose()


# -- polling leases -------------------------------------------------------------


async def test_a_started_chat_is_polled_by_its_replica_and_taken_over_after_a_graceful_stop(replicas, rasa_turn):
    a, b = replicas(), replicas()
    with aioresponses() as mock:
        await start(a, rasa_turn, mock)
        assert a.core.polling.is_watching(a.core.registry.get("u1"))
        assert await b.core.store.lease_owner(poll_lease(GROUP)) == a.core.polling.owner
        assert await b.core.chats.take_over_free_chats() == 0  # held: nothing to take
        await a.core.shutdown(timeout=1)
        assert await b.core.chats.take_over_free_chats() == 1
        assert b.core.polling.is_watching(b.core.registry.get("u1"))
        mock.post(LEAVE, payload={})
        await say(b, rasa_turn, "/end_chat")
    # The ended chat is no job any more: nothing left to take over.
    assert await b.core.store.free_leases() == []


def pollers(backend, store, owner):
    async def failed(chat, error):
        pass

    async def cursor_moved(chat):
        pass

    relay = Relay(backend, SETTINGS, RecordingSlots(), Recorder(), store=store)
    return Polling(
        SETTINGS, backend, store, relay.dispatcher, TaskSet(), owner=owner, on_failed=failed, on_cursor=cursor_moved
    )


async def stop(polling):
    await polling.release(await polling.stop_polling(timeout=1), timeout=1)


class CountingPullBackend(PullBackend):
    def __init__(self):
        super().__init__()
        self.polls = 0
        self.polled = asyncio.Event()

    async def poll(self, chat, cursor):
        self.polls += 1
        self.polled.set()
        return PollResult([], cursor.last_updated, cursor.seen_ids)

    async def check_closed(self, chat):
        return None


async def test_one_replica_polls_a_chat_and_another_takes_over_when_it_stops(redis_server):
    # Two connections: a stop must not let a cancelled renewal, still on its
    # way on one connection, land after the release sent on another.
    store_a, store_b = two_stores(redis_server)
    backends = CountingPullBackend(), CountingPullBackend()
    relays = [pollers(backend, store, owner) for backend, store, owner in zip(backends, (store_a, store_b), "ab")]
    await store_a.register_lease(poll_lease("c1"))
    chat_a, chat_b = LiveChat(sender_id="u1", chat_id="c1"), LiveChat(sender_id="u1", chat_id="c1")
    relays[0].watch(chat_a)
    await asyncio.wait_for(backends[0].polled.wait(), 5)
    relays[1].watch(chat_b)
    # B finds the lease held and stops its own loop without polling ServiceNow.
    deadline = asyncio.get_running_loop().time() + 5
    while relays[1].is_watching(chat_b):
        assert asyncio.get_running_loop().time() < deadline, "B kept polling a chat A holds"
        await asyncio.sleep(0.01)  # wait-ok: polling a condition with a deadline
    assert backends[1].polls == 0
    assert await store_a.lease_owner(poll_lease("c1")) == relays[0].owner

    await stop(relays[0])  # graceful: the lease is released at once
    assert await store_b.free_leases() == [poll_lease("c1")]
    relays[1].watch(chat_b)
    await asyncio.wait_for(backends[1].polled.wait(), 5)
    assert await store_b.lease_owner(poll_lease("c1")) == relays[1].owner
    await stop(relays[1])
    await store_a.aclose()
    await store_b.aclose()


async def test_a_replica_forgets_chats_that_ended_on_another(replicas, rasa_turn):
    a, b = replicas(), replicas()
    with aioresponses() as mock:
        await start(a, rasa_turn, mock)
        mock.post(MESSAGES, payload={"result": {"sys_id": "m1", "timestamp": 1}})
        await say(b, rasa_turn, "hello agent")
        mock.post(LEAVE, payload={})
        await say(a, rasa_turn, "/end_chat")
    assert len(b.core.registry) == 1  # B was not asked since
    assert await b.core.chats.forget_ended_elsewhere() == 1
    assert len(b.core.registry) == 0


async def test_typing_on_any_replica_finds_the_chat_through_the_store(replicas, rasa_turn):
    a, b = replicas(), replicas()
    assert await b.core.chats.refresh("u1") is None
    with aioresponses() as mock:
        await start(a, rasa_turn, mock)
        chat = await b.core.chats.refresh("u1")  # what the /typing route asks first
        assert chat is not None and chat.chat_id == GROUP
        mock.post(LEAVE, payload={})
        await say(a, rasa_turn, "/end_chat")
    assert await b.core.chats.refresh("u1") is None
    assert await b.core.router.user_typing("u1", True) is False  # nothing left to type to
