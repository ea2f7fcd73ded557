"""Polling Connect chats: the schedule, fast while active and slow once
quiet, with periodic session checks; ticks keep their cadence; one replica
polls a chat, under its lease, and another takes it over when it stops."""

import asyncio

from aioresponses import aioresponses

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.core.polling import PollSchedule, next_tick
from connectors.servicenow.servicenow.base import AgentMessage, PollResult
from connectors.servicenow.store import HandoffRecord
from connectors.servicenow.store.keys import poll_lease
from tests.unit.core.helpers import CountingPullBackend, pollers, start_live, stop, two_stores
from tests.unit.support import GROUP, LEAVE, CountingRenewals, say

SETTINGS = ServiceNowSettings.from_credentials(
    {
        "instance_url": "https://acme.service-now.com", "username": "u", "password": "p", "queue_id": "q",
        "poll_interval": 1, "idle_poll_interval": 10, "idle_after": 60, "session_check_interval": 30,
    }
)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_schedule_polls_fast_while_active_and_slow_once_quiet():
    clock = Clock()
    schedule = PollSchedule(SETTINGS, clock)
    assert schedule.delay() == 1
    clock.now += 61
    assert schedule.delay() == 10
    schedule.note_activity()
    assert schedule.delay() == 1


def test_schedule_checks_the_session_state_once_per_interval_of_quiet():
    clock = Clock()
    schedule = PollSchedule(SETTINGS, clock)
    checks = []
    for _ in range(90):  # 90 one-second ticks, nothing happening
        clock.now += 1
        checks.append(schedule.state_check_due())
    assert checks.count(True) == 3


def test_schedule_does_not_trade_polls_for_state_checks_while_messages_flow():
    clock = Clock()
    schedule = PollSchedule(SETTINGS, clock)
    checks = []
    for tick in range(90):
        clock.now += 1
        if tick % 10 == 0:
            schedule.note_activity()  # a message every ten seconds
        checks.append(schedule.state_check_due())
    assert checks.count(True) == 0


def test_a_late_tick_does_not_push_the_following_ones_later():
    # Due at 10.0, started 30 ms late: the next is still due at 11.0, so the
    # chat is polled once per second on average, not once per 1.03 s.
    assert next_tick(previous=9.0, interval=1.0, now=10.03) == 10.0
    assert next_tick(previous=10.0, interval=1.0, now=11.0) == 11.0


def test_after_a_stall_the_cadence_restarts_instead_of_catching_up():
    # Three intervals behind: no burst of make-up polls, the next is due a whole interval from now.
    assert next_tick(previous=5.0, interval=1.0, now=9.0) == 9.0


async def test_a_started_chat_is_polled_by_its_replica_and_taken_over_after_a_graceful_stop(replicas, rasa_turn):
    a, b = replicas(), replicas()
    with aioresponses() as mock:
        await start_live(a, rasa_turn, mock)
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


class SlowPullBackend(CountingPullBackend):
    """A ServiceNow whose polls answer only when released (slow, or retrying)."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer
        self.release = asyncio.Event()

    async def poll(self, chat, cursor):
        self.polls += 1
        self.polled.set()
        await self.release.wait()
        return self.answer


async def test_a_poll_that_outlasts_the_lease_keeps_it_and_delivers(redis_server):
    # Soak finding 3: the lease (two poll intervals) was shorter than one
    # poll can take (request_timeout plus retries); another replica took the
    # chat over while the poll ran and the two split its messages. The lease
    # is renewed while the poll runs.
    store_a, store_b = two_stores(redis_server)
    counting = CountingRenewals(store_a)
    message = AgentMessage("m1", "hello", "Beth", 20)
    backend = SlowPullBackend(PollResult([message], 20, ("m1",)))
    polling = pollers(backend, counting, "a")
    assert await store_a.create_handoff(HandoffRecord("u1", "c1", "connect"))
    chat = LiveChat(sender_id="u1", chat_id="c1")
    polling.watch(chat)
    await asyncio.wait_for(backend.polled.wait(), 5)
    # Several lease lengths (0.54 s each) go by while ServiceNow has not answered.
    deadline = asyncio.get_running_loop().time() + 10
    while counting.renewals < 4:
        assert asyncio.get_running_loop().time() < deadline, "the lease was not renewed while the poll ran"
        await asyncio.sleep(0.01)  # wait-ok: polling a condition with a deadline
    assert not await store_b.acquire_lease(poll_lease("c1"), "b", 1), "still A's: nobody takes the chat over"
    backend.release.set()
    deadline = asyncio.get_running_loop().time() + 5
    while not await store_b.read("u1"):
        assert asyncio.get_running_loop().time() < deadline, "the poll's message was not delivered"
        await asyncio.sleep(0.01)  # wait-ok: polling a condition with a deadline
    assert [entry.payload["text"] for entry in await store_b.read("u1") if entry.kind == "message"] == ["hello"]
    await stop(polling)
    await store_a.aclose()
    await store_b.aclose()


async def test_a_poller_whose_lease_was_taken_stops_and_delivers_nothing(redis_server):
    # Starved past its lease anyway: the replica that took the chat over
    # delivers; the late poll's result is refused in the store.
    store_a, store_b = two_stores(redis_server)
    message = AgentMessage("m1", "hello", "Beth", 20)
    backend = SlowPullBackend(PollResult([message], 20, ("m1",)))
    polling = pollers(backend, store_a, "a")
    assert await store_a.create_handoff(HandoffRecord("u1", "c1", "connect"))
    chat = LiveChat(sender_id="u1", chat_id="c1")
    polling.watch(chat)
    await asyncio.wait_for(backend.polled.wait(), 5)
    await store_b.unregister_lease(poll_lease("c1"))  # as if it had expired
    assert await store_b.acquire_lease(poll_lease("c1"), "b", 30)
    backend.release.set()
    deadline = asyncio.get_running_loop().time() + 5
    while polling.is_watching(chat):
        assert asyncio.get_running_loop().time() < deadline, "A went on polling a chat B holds"
        await asyncio.sleep(0.01)  # wait-ok: polling a condition with a deadline
    assert await store_b.read("u1") == []
    assert chat.last_updated is None, "A's cursor stays where it was"
    await stop(polling)
    await store_a.aclose()
    await store_b.aclose()
