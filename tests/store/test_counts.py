"""Counted capacity, one contract on three stores (in-process, fakeredis, a
real redis-server): slots counted for the whole deployment with expiry, and
the admission of handoff starts (live chats, the conversation's rate, the
deployment's rate). Two store instances stand for two replicas."""

import asyncio

from connectors.servicenow.store import REFUSED_BUSY, REFUSED_DEPLOYMENT_RATE, REFUSED_SENDER_RATE, Cap, HandoffRecord, StartLimits
from tests.store.conftest import wait_until


def record(sender: str, chat: str) -> HandoffRecord:
    return HandoffRecord(sender_id=sender, chat_id=chat, api="connect")


async def test_a_cap_counts_holders_of_every_replica_and_refuses_beyond_its_limit(make_stores):
    one, two = make_stores()
    total, client = Cap("streams", 3), Cap("streams:c:10.0.0.1", 2)
    assert await one.take_slot("a:1", [total, client], ttl=60) is None
    assert await two.take_slot("b:1", [total, client], ttl=60) is None
    assert await one.take_slot("a:2", [total, client], ttl=60) == client  # full: nothing counted
    assert await two.take_slot("b:2", [total, Cap("streams:c:10.0.0.2", 2)], ttl=60) is None
    assert await one.take_slot("a:3", [total, Cap("streams:c:10.0.0.3", 2)], ttl=60) == total
    assert await two.count_slots(["streams", "streams:c:10.0.0.1", "streams:c:10.0.0.9"]) == [3, 2, 0]
    # A holder counted already does not find its own cap full.
    assert await one.take_slot("a:1", [total, client], ttl=60) is None
    await two.release_slot("a:1", ["streams", "streams:c:10.0.0.1"])
    assert await one.take_slot("a:2", [total, client], ttl=60) is None


async def test_the_slots_of_a_replica_that_stopped_renewing_expire(make_stores):
    one, two = make_stores()
    cap = Cap("streams", 2)
    # Long enough that a loaded machine still takes the third slot before they expire.
    assert await one.take_slot("dead:1", [cap], ttl=1.0) is None
    assert await one.take_slot("dead:2", [cap], ttl=1.0) is None
    assert await two.take_slot("live:1", [cap], ttl=60) == cap
    await wait_until(lambda: _free(two, cap), what="the dead slots to expire")

    async def only_the_live_one():
        return await two.count_slots(["streams"]) == [1]

    await wait_until(only_the_live_one, what="both dead slots to expire")


async def _free(store, cap):
    return await store.take_slot("live:1", [cap], ttl=60) is None


async def test_renewed_slots_outlive_their_first_ttl(make_stores):
    one, two = make_stores()
    # Renewed every quarter ttl for one and a half ttls: a stall of most of a
    # ttl between two renewals (a loaded machine) still leaves the slot counted.
    assert await one.take_slot("r:1", [Cap("streams", 5)], ttl=1.0) is None
    for _ in range(6):
        await one.renew_slots({"r:1": ["streams"]}, ttl=1.0)
        await asyncio.sleep(0.25)  # wait-ok: less than the ttl between renewals, as the renewing replica does
    assert await two.count_slots(["streams"]) == [1]
    # Renewing a slot that expired (the store was away longer than the ttl) counts it again.
    await one.release_slot("r:1", ["streams"])
    await one.renew_slots({"r:1": ["streams"]}, ttl=60)
    assert await two.count_slots(["streams"]) == [1]


async def test_admission_counts_live_handoffs_of_the_whole_deployment(make_stores):
    one, two = make_stores()
    limits = StartLimits(max_live=2)
    assert await one.admit_handoff("u1", limits) is None
    assert await two.admit_handoff("u2", limits) is None
    assert await one.admit_handoff("u3", limits) == REFUSED_BUSY
    # A place becomes the record's when it is filed, and frees when the handoff ends.
    assert await one.create_handoff(record("u1", "c1"))
    assert await two.live_handoff_count() == 2
    assert await one.admit_handoff("u3", limits) == REFUSED_BUSY
    await two.release_admission("u2")  # its start failed
    assert await one.admit_handoff("u3", limits) is None
    assert await two.end_handoff("u1", "c1") is not None
    assert await two.admit_handoff("u4", limits) is None
    assert await one.admit_handoff("u5", limits) == REFUSED_BUSY


async def test_a_place_not_filed_in_time_is_given_back(make_stores):
    one, two = make_stores()
    limits = StartLimits(max_live=1, hold_s=0.3)
    assert await one.admit_handoff("u1", limits) is None  # the replica died while opening the chat
    assert await two.admit_handoff("u2", limits) == REFUSED_BUSY
    await wait_until(lambda: _admitted(two, "u2", limits), what="the place to expire")


async def _admitted(store, sender, limits):
    return await store.admit_handoff(sender, limits) is None


async def test_a_conversation_starts_at_most_per_sender_times_in_its_window(make_stores):
    one, two = make_stores()
    limits = StartLimits(per_sender=2, window_s=0.5)
    assert await one.admit_handoff("u1", limits) is None
    assert await two.admit_handoff("u1", limits) is None
    assert await one.admit_handoff("u1", limits) == REFUSED_SENDER_RATE
    assert await two.admit_handoff("u2", limits) is None  # per conversation
    await wait_until(lambda: _admitted(one, "u1", limits), what="the window to pass")


async def test_the_deployment_starts_a_burst_then_one_per_interval(make_stores):
    one, two = make_stores()
    limits = StartLimits(interval_s=0.3, burst=3)
    answers = [await (one if n % 2 else two).admit_handoff(f"u{n}", limits) for n in range(5)]
    assert answers == [None, None, None, REFUSED_DEPLOYMENT_RATE, REFUSED_DEPLOYMENT_RATE]
    await wait_until(lambda: _admitted(one, "late", limits), what="the next start's turn")


async def test_a_refusal_counts_nothing(make_stores):
    one, two = make_stores()
    # Refused for lack of room: neither the conversation's allowance nor the deployment's rate is used.
    busy = StartLimits(max_live=1, per_sender=1, interval_s=60, burst=2)
    assert await one.admit_handoff("u1", busy) is None
    assert await two.admit_handoff("u2", busy) == REFUSED_BUSY
    await one.release_admission("u1")
    assert await two.admit_handoff("u2", busy) is None
