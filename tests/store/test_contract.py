"""One contract, three stores: the in-process store, Redis via fakeredis, and
a real redis-server. Two store instances over the same state stand for two
replicas; where they race, exactly one must win."""

import asyncio
import time

import pytest

from connectors.servicenow.store import (
    AlreadyStored,
    ChatNotLive,
    Guard,
    HandoffRecord,
    LeaseLost,
    NewEntry,
    TimerClaim,
    entry_id_after,
    is_entry_id,
)
from tests.store.conftest import wait_until

RACERS = 20


def record(sender: str = "user-1", chat: str = "chat-1", **fields) -> HandoffRecord:
    return HandoffRecord(sender_id=sender, chat_id=chat, api="virtual_agent", **fields)


def message(text: str, **options) -> NewEntry:
    return NewEntry({"recipient_id": "user-1", "text": text}, **options)


async def race(*calls):
    """Start every call at once (one event loop: interleaved at each await)."""
    return await asyncio.gather(*calls)


# -- handoff records ------------------------------------------------------------


async def test_a_handoff_is_found_by_sender_and_by_chat(make_stores):
    one, two = make_stores()
    started = record(user="bot-user", last_updated=1700000000123.0, started_at=1700000000.5)
    assert await one.create_handoff(started)
    assert await two.get_handoff("user-1") == started
    assert await two.handoff_by_chat("chat-1") == started
    assert await two.get_handoff("someone-else") is None
    assert await two.handoff_by_chat("chat-2") is None


async def test_ids_are_kept_as_given(make_stores):
    one, two = make_stores()
    odd = record(sender="wa:+49 170/ü*?[x]", chat="12:chat:with:colonsé", user="svc:bot", seen_ids=("a:1", "b 2"))
    assert await one.create_handoff(odd)
    assert await two.get_handoff(odd.sender_id) == odd
    assert await two.handoff_by_chat(odd.chat_id) == odd
    assert [handoff async for handoff in two.handoffs()] == [odd]
    assert await two.end_handoff(odd.sender_id, odd.chat_id) == odd


async def test_a_handoff_is_created_once(make_stores):
    one, two = make_stores()
    results = await race(*(store.create_handoff(record(chat=f"chat-{n}")) for n, store in enumerate([one, two] * 5)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert (await one.get_handoff("user-1")).chat_id == f"chat-{winner}"


async def test_filing_the_same_chat_again_is_no_conflict(make_stores):
    one, two = make_stores()
    assert await one.create_handoff(record(agent_joined=True))
    assert await two.create_handoff(record())
    assert await two.get_handoff("user-1") == record(agent_joined=True), "nothing changed"


async def test_an_update_keeps_the_cursor_while_the_chat_lives(make_stores):
    one, two = make_stores()
    await one.create_handoff(record())
    moved = record(last_updated=5.0, seen_ids=("m2", "m1"), agent_joined=True)
    assert await two.update_handoff(moved)
    assert await one.get_handoff("user-1") == moved
    assert await one.handoff_by_chat("chat-1") == moved


async def test_a_late_update_cannot_bring_an_ended_chat_back(make_stores):
    one, two = make_stores()
    await one.create_handoff(record())
    assert await one.end_handoff("user-1", "chat-1") == record()
    assert not await two.update_handoff(record(last_updated=9.0))
    assert await two.get_handoff("user-1") is None
    assert await two.handoff_by_chat("chat-1") is None
    # Nor can an update for an older chat touch the sender's new one.
    await one.create_handoff(record(chat="chat-2"))
    assert not await two.update_handoff(record(chat="chat-1", agent_joined=True))
    assert await two.get_handoff("user-1") == record(chat="chat-2")


async def test_a_handoff_ends_once(make_stores):
    one, two = make_stores()
    await one.create_handoff(record(agent_joined=True))
    ended = await race(*(store.end_handoff("user-1", "chat-1") for store in [one, two] * (RACERS // 2)))
    assert [result for result in ended if result is not None] == [record(agent_joined=True)]
    assert await one.end_handoff("user-1", "chat-1") is None


async def test_ending_another_chat_of_the_sender_changes_nothing(make_stores):
    one, _ = make_stores()
    await one.create_handoff(record(chat="chat-2"))
    assert await one.end_handoff("user-1", "chat-1") is None
    assert await one.get_handoff("user-1") == record(chat="chat-2")


async def test_every_live_handoff_is_listed(make_stores):
    one, two = make_stores()
    for n in range(30):
        await one.create_handoff(record(sender=f"user-{n}", chat=f"chat-{n}"))
    await one.end_handoff("user-7", "chat-7")
    listed = sorted([handoff.sender_id async for handoff in two.handoffs()])
    assert listed == sorted(f"user-{n}" for n in range(30) if n != 7)


# -- exactly once ---------------------------------------------------------------


async def test_a_dedupe_key_is_claimed_once_across_replicas(make_stores):
    one, two = make_stores()
    results = await race(*(store.claim_once("sn-msg-42", ttl=60) for store in [one, two] * (RACERS // 2)))
    assert results.count(True) == 1
    assert await one.claim_once("sn-msg-43", ttl=60)


async def test_a_dedupe_key_can_be_claimed_again_after_its_ttl(make_stores):
    one, two = make_stores()
    # Long enough that a loaded machine asks again before it expires.
    assert await one.claim_once("sn-msg-1", ttl=1.0)
    assert not await two.claim_once("sn-msg-1", ttl=1.0)
    await wait_until(lambda: two.claim_once("sn-msg-1", ttl=1.0), what="the dedupe mark to expire")


# -- outbox streams ---------------------------------------------------------------


async def test_entries_are_read_back_in_order_with_growing_ids(make_stores):
    one, two = make_stores()
    first = await one.append("user-1", [message("a"), message("b", kind="typing", to_callback=False)])
    second = await two.append("user-1", [message("c")])
    ids = [entry.entry_id for entry in first + second]
    assert all(is_entry_id(entry_id) for entry_id in ids)
    assert all(entry_id_after(later, earlier) for earlier, later in zip(ids, ids[1:]))
    read = await two.read("user-1")
    assert [entry.entry_id for entry in read] == ids
    assert [entry.payload["text"] for entry in read] == ["a", "b", "c"]
    assert [(entry.kind, entry.to_callback) for entry in read] == [("message", True), ("typing", False), ("message", True)]
    assert await one.read("nobody") == []


async def test_a_reader_resumes_exactly_after_an_entry_id(make_stores):
    one, two = make_stores()
    appended = await one.append("user-1", [message(str(n)) for n in range(10)])
    resumed = await two.read("user-1", after=appended[3].entry_id)
    assert [entry.payload["text"] for entry in resumed] == [str(n) for n in range(4, 10)]
    page = await two.read("user-1", after=appended[3].entry_id, limit=2)
    assert [entry.payload["text"] for entry in page] == ["4", "5"]
    assert await two.read("user-1", after=appended[-1].entry_id) == []


async def test_a_malformed_resume_point_is_refused(make_stores):
    one, _ = make_stores()
    with pytest.raises(ValueError):
        await one.read("user-1", after="3f2a9c1e-7")


async def test_a_blocked_reader_is_woken_by_an_append_on_another_replica(make_stores):
    one, two = make_stores()
    start = await one.append("user-1", [message("before")])
    reader = asyncio.ensure_future(two.read("user-1", after=start[0].entry_id, block=10))
    # The reader is parked (nothing to return yet) before the append.
    await asyncio.sleep(0.1)  # wait-ok: gives the blocking read time to reach the store; the test passes either way
    assert not reader.done()
    began = time.monotonic()
    appended = await one.append("user-1", [message("after")])
    woken = await asyncio.wait_for(reader, 5)
    assert [entry.entry_id for entry in woken] == [appended[0].entry_id]
    assert time.monotonic() - began < 2, "the reader was not woken by the append"


async def test_a_blocked_reader_of_a_new_stream_is_woken(make_stores):
    one, two = make_stores()
    reader = asyncio.ensure_future(two.read("fresh", block=10))
    await asyncio.sleep(0.1)  # wait-ok: gives the blocking read time to reach the store
    await one.append("fresh", [message("first")])
    assert [entry.payload["text"] for entry in await asyncio.wait_for(reader, 5)] == ["first"]


async def test_a_blocked_reader_cancelled_as_an_entry_comes_stops(make_stores):
    # A reader is cancelled when its socket leaves; an append in that same
    # turn of the loop must not swallow the cancel (the reader would read on
    # for ever: asyncio.wait_for before Python 3.12, CPython gh-86296).
    one, two = make_stores()
    reader = asyncio.ensure_future(two.read("user-1", block=10))
    await asyncio.sleep(0.1)  # wait-ok: gives the blocking read time to reach the store; the test passes either way
    await one.append("user-1", [message("now")])
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(reader, 5)


async def test_a_blocked_read_returns_nothing_when_nothing_comes(make_stores):
    one, _ = make_stores()
    began = time.monotonic()
    assert await one.read("user-1", block=0.3) == []
    assert 0.25 <= time.monotonic() - began < 3


async def test_a_stream_keeps_its_latest_entries(make_stores):
    one, two = make_stores(retained=10)
    appended = []
    for start in range(0, 400, 20):
        appended += await one.append("user-1", [message(str(n)) for n in range(start, start + 20)])
    kept = await two.read("user-1", limit=1000)
    kept_ids = [entry.entry_id for entry in kept]
    # Redis trims whole nodes (MAXLEN ~): at least the latest 10 stay, and
    # at most one node (100 entries) more.
    assert kept_ids[-10:] == [entry.entry_id for entry in appended[-10:]]
    assert 10 <= len(kept) <= 110
    assert appended[0].entry_id not in kept_ids


async def test_an_idle_stream_expires_with_its_sink_pointers(make_stores):
    one, two = make_stores(stream_ttl=0.3)
    appended = await one.append("user-1", [message("a")])
    assert await one.advance_sink("user-1", "callback", appended[0].entry_id)

    async def gone():
        return await two.read("user-1") == [] and await two.sink_position("user-1", "callback") is None

    await wait_until(gone, what="the idle stream to expire")
    # A new stream after expiry still counts up: an old SSE id stays behind it.
    again = await one.append("user-1", [message("b")])
    assert entry_id_after(again[0].entry_id, appended[0].entry_id)


async def test_a_callback_is_stored_once(make_stores):
    one, two = make_stores()
    results = await race(
        *(
            store.append("user-1", [message("x"), message("y")], dedupe_key="callback:abc", dedupe_ttl=60)
            for store in [one, two] * (RACERS // 2)
        )
    )
    stored = [result for result in results if result is not None]
    assert len(stored) == 1 and len(stored[0]) == 2
    assert [entry.payload["text"] for entry in await one.read("user-1")] == ["x", "y"]


async def test_a_repeat_callback_appends_nothing(make_stores):
    one, two = make_stores()
    assert await one.append("user-1", [message("x")], dedupe_key="callback:abc", dedupe_ttl=60)
    assert await two.append("user-1", [message("x")], dedupe_key="callback:abc", dedupe_ttl=60) is None
    assert len(await one.read("user-1")) == 1


# -- guarded appends: what an agent says -------------------------------------------


async def test_a_guarded_append_stores_while_the_chat_is_live(make_stores):
    one, _ = make_stores()
    assert await one.create_handoff(record())
    stored = await one.append("user-1", [message("hi")], guard=Guard("user-1", "chat-1"))
    assert [entry.payload["text"] for entry in stored] == ["hi"]


async def test_no_replica_appends_an_agents_words_after_the_chats_end(make_stores):
    # Finding 1 of the soak: one replica ended the chat while another was
    # storing what the agent said; the append must not land after the end.
    one, two = make_stores()
    assert await one.create_handoff(record())
    assert await one.end_handoff("user-1", "chat-1")
    with pytest.raises(ChatNotLive):
        await two.append("user-1", [message("late")], guard=Guard("user-1", "chat-1"))
    with pytest.raises(ChatNotLive):
        await two.append_and_take(
            "user-1", [message("late")], guard=Guard("user-1", "chat-1"),
            lease="cb:user-1", owner="b", ttl=30, sink="callback",
        )
    assert await two.read("user-1") == []
    assert await two.lease_owner("cb:user-1") is None, "refused: nothing taken either"


async def test_a_guarded_append_for_the_senders_previous_chat_is_refused(make_stores):
    one, two = make_stores()
    assert await one.create_handoff(record(chat="chat-2"))
    with pytest.raises(ChatNotLive):
        await two.append("user-1", [message("old chat")], guard=Guard("user-1", "chat-1"))
    assert await two.read("user-1") == []


async def test_a_poller_that_lost_its_lease_delivers_nothing(make_stores):
    # Finding 3: a poll that outlived its lease must not deliver what it found.
    one, two = make_stores()
    assert await one.create_handoff(record())
    assert await one.acquire_lease("poll:chat-1", "b", 30)
    guard = Guard("user-1", "chat-1", lease="poll:chat-1", owner="a", once_ttl=60)
    with pytest.raises(LeaseLost):
        await two.append("user-1", [message("m1", once_key="msg:chat-1:m1")], guard=guard)
    assert await one.release_lease("poll:chat-1", "b")
    with pytest.raises(LeaseLost):
        await two.append("user-1", [message("m1", once_key="msg:chat-1:m1")], guard=guard)
    assert await two.read("user-1") == []
    # Nothing was claimed: the holder of the lease delivers it.
    assert await one.acquire_lease("poll:chat-1", "b", 30)
    holder = Guard("user-1", "chat-1", lease="poll:chat-1", owner="b", once_ttl=60)
    assert await one.append("user-1", [message("m1", once_key="msg:chat-1:m1")], guard=holder)


async def test_a_message_is_stored_once_and_claimed_only_with_its_append(make_stores):
    # Finding 9: the claim of a message id and its append are one step; a
    # refused append claims nothing, and a stored message is never stored again.
    one, two = make_stores()
    assert await one.create_handoff(record())
    guard = Guard("user-1", "chat-1", once_ttl=60)
    first = [message("m1", once_key="msg:chat-1:m1"), NewEntry({"typing": True}, "typing", False)]
    assert len(await one.append("user-1", first, guard=guard)) == 2
    batch = [message("m1", once_key="msg:chat-1:m1"), message("m2", once_key="msg:chat-1:m2")]
    with pytest.raises(AlreadyStored) as refused:
        await two.append("user-1", batch, guard=guard)
    assert refused.value.keys == {"msg:chat-1:m1"}
    assert len(await two.read("user-1")) == 2, "nothing of the batch appended"
    assert await two.claim_once("msg:chat-1:m2", 60), "and m2 not claimed"


async def test_racing_pollers_store_each_message_once(make_stores):
    one, two = make_stores()
    assert await one.create_handoff(record())
    guard = Guard("user-1", "chat-1", once_ttl=60)

    async def deliver(store):
        try:
            return await store.append("user-1", [message("m1", once_key="msg:chat-1:m1")], guard=guard)
        except AlreadyStored:
            return None

    results = await race(*(deliver(store) for store in [one, two] * (RACERS // 2)))
    assert len([result for result in results if result]) == 1
    assert len(await one.read("user-1")) == 1


# -- sink pointers ----------------------------------------------------------------


async def test_a_sink_pointer_only_moves_forward(make_stores):
    one, two = make_stores()
    entries = await one.append("user-1", [message(str(n)) for n in range(3)])
    assert await one.sink_position("user-1", "callback") is None
    assert await one.advance_sink("user-1", "callback", entries[1].entry_id)
    assert await two.sink_position("user-1", "callback") == entries[1].entry_id
    assert not await two.advance_sink("user-1", "callback", entries[1].entry_id)
    assert not await two.advance_sink("user-1", "callback", entries[0].entry_id)
    assert await two.advance_sink("user-1", "callback", entries[2].entry_id)
    # Each sink keeps its own pointer.
    assert await one.sink_position("user-1", "sse") is None
    assert await one.advance_sink("user-1", "sse", entries[0].entry_id)
    assert await one.sink_position("user-1", "callback") == entries[2].entry_id


async def test_an_entry_is_taken_by_one_replica(make_stores):
    one, two = make_stores()
    entries = await one.append("user-1", [message(str(n)) for n in range(5)])
    for entry in entries:
        taken = await race(*(store.advance_sink("user-1", "callback", entry.entry_id) for store in [one, two] * 5))
        assert taken.count(True) == 1


# -- leases -----------------------------------------------------------------------


async def test_a_lease_has_one_holder(make_stores):
    one, two = make_stores()
    results = await race(
        *(store.acquire_lease("poll:chat-1", f"replica-{n}", ttl=30) for n, store in enumerate([one, two] * 10))
    )
    assert results.count(True) == 1
    winner = f"replica-{results.index(True)}"
    assert await one.lease_owner("poll:chat-1") == winner
    assert await two.acquire_lease("poll:chat-1", winner, ttl=30), "the holder re-acquires (renews)"


async def test_only_the_holder_renews_or_releases(make_stores):
    one, two = make_stores()
    assert await one.acquire_lease("poll:chat-1", "a", ttl=30)
    assert not await two.renew_lease("poll:chat-1", "b", ttl=30)
    assert not await two.release_lease("poll:chat-1", "b")
    assert await one.renew_lease("poll:chat-1", "a", ttl=30)
    assert await one.release_lease("poll:chat-1", "a")
    assert await one.lease_owner("poll:chat-1") is None
    assert not await one.renew_lease("poll:chat-1", "a", ttl=30), "a released lease is not renewed"
    assert await two.acquire_lease("poll:chat-1", "b", ttl=30)


@pytest.mark.parametrize("call", ["acquire_lease", "renew_lease"])
async def test_a_lease_call_made_takes_effect_though_its_caller_stops_and_a_release_comes_after_it(make_stores, call):
    # A stopping poller is cancelled with its renewal on its way; its replica
    # then releases the lease on another connection. Were the renewal dropped,
    # or did it land after the release, the lease would stay held by a
    # replica that polls no more until it expires.
    one, two = make_stores()
    assert await one.acquire_lease("poll:chat-1", "a", ttl=1.0)
    calling = asyncio.ensure_future(getattr(one, call)("poll:chat-1", "a", ttl=60))
    await asyncio.sleep(0)  # wait-ok: one turn of the loop, so the call is made before its caller stops
    calling.cancel()
    await asyncio.gather(calling, return_exceptions=True)
    await asyncio.sleep(1.2)  # wait-ok: time itself is tested; the first lease is over by now
    assert not await two.acquire_lease("poll:chat-1", "b", ttl=30), "the call took effect: still a's"
    assert await one.release_lease("poll:chat-1", "a")
    assert await two.lease_owner("poll:chat-1") is None


async def test_an_expired_lease_is_taken_over(make_stores):
    one, two = make_stores()
    await one.register_lease("poll:chat-1")
    # Long enough that a loaded machine still asks again before it expires.
    assert await one.acquire_lease("poll:chat-1", "a", ttl=1.0)
    assert not await two.acquire_lease("poll:chat-1", "b", ttl=30)
    await wait_until(lambda: two.free_leases(), what="the lease to show as free")
    assert await two.acquire_lease("poll:chat-1", "b", ttl=30)
    assert not await one.renew_lease("poll:chat-1", "a", ttl=0.2), "the old holder learns it lost the lease"
    assert await one.free_leases() == []


async def test_free_leases_lists_the_jobs_nobody_holds(make_stores):
    one, two = make_stores()
    for n in range(4):
        await one.register_lease(f"poll:chat-{n}")
    assert sorted(await two.free_leases()) == [f"poll:chat-{n}" for n in range(4)]
    assert len(await two.free_leases(limit=2)) == 2
    assert await two.acquire_lease("poll:chat-0", "b", ttl=30)
    assert await one.acquire_lease("poll:chat-1", "a", ttl=30)
    assert sorted(await one.free_leases()) == ["poll:chat-2", "poll:chat-3"]
    await one.register_lease("poll:chat-0")  # registering again keeps the holder
    assert await one.lease_owner("poll:chat-0") == "b"
    assert await two.release_lease("poll:chat-0", "b")
    assert sorted(await one.free_leases()) == ["poll:chat-0", "poll:chat-2", "poll:chat-3"]
    await one.unregister_lease("poll:chat-2")
    await one.unregister_lease("poll:chat-1")
    assert sorted(await two.free_leases()) == ["poll:chat-0", "poll:chat-3"]
    assert await two.lease_owner("poll:chat-1") is None


async def test_a_lease_need_not_be_registered(make_stores):
    one, two = make_stores()
    assert await one.acquire_lease("callback:user-1", "a", ttl=30)
    assert not await two.acquire_lease("callback:user-1", "b", ttl=30)
    assert await one.free_leases() == []


async def test_a_job_is_taken_with_its_pointer_and_what_is_after_it(make_stores):
    one, two = make_stores()
    assert await one.take_job("cb:user-1", "a", 30, "user-1", "callback") == (None, [])
    assert await one.free_leases() == [], "held, so not free"
    entries = await one.append("user-1", [message(str(n), to_callback=n != 1) for n in range(4)])
    assert await two.take_job("cb:user-1", "b", 30, "user-1", "callback") is None, "a's lease"
    position, pending = await one.take_job("cb:user-1", "a", 30, "user-1", "callback", limit=3)
    assert position is None
    assert pending == entries[:3], "in order, up to the limit"
    assert [(e.payload, e.kind, e.to_callback) for e in pending] == [(e.payload, e.kind, e.to_callback) for e in entries[:3]]
    assert await one.advance_sink("user-1", "callback", entries[1].entry_id)
    assert await one.release_lease("cb:user-1", "a")
    assert await two.free_leases() == ["cb:user-1"], "registered: taken over once let go"
    position, pending = await two.take_job("cb:user-1", "b", 30, "user-1", "callback")
    assert (position, pending) == (entries[1].entry_id, entries[2:]), "nothing skipped after a takeover"
    assert await one.lease_owner("cb:user-1") == "b"
    assert not await one.renew_lease("cb:user-1", "a", ttl=30)
    assert await one.take_job("cb:user-1", "a", 30, "user-1", "callback") is None


async def test_an_append_takes_the_job_unless_another_holds_it(make_stores):
    one, two = make_stores()
    job = {"lease": "cb:user-1", "sink": "callback", "ttl": 30}
    stored, taken = await one.append_and_take("user-1", [message("0"), message("1")], owner="a", **job)
    assert taken == (None, stored)
    assert await one.advance_sink("user-1", "callback", stored[0].entry_id)
    more, taken = await one.append_and_take("user-1", [message("2")], owner="a", **job)
    assert taken == (stored[0].entry_id, [stored[1], more[0]]), "its own lease: taken again, from the pointer"
    assert await one.free_leases() == []
    later, taken = await two.append_and_take("user-1", [message("3")], owner="b", **job)
    assert taken is None, "a's lease: appended, not taken"
    assert [entry.entry_id for entry in await two.read("user-1")] == [e.entry_id for e in stored + more + later]
    assert await two.lease_owner("cb:user-1") == "a"


async def test_a_repeated_push_is_neither_appended_nor_taken(make_stores):
    one, two = make_stores()
    job = {"lease": "cb:user-1", "sink": "callback", "owner": "a", "ttl": 30}
    assert await one.append_and_take("user-1", [message("hi")], dedupe_key="cb:c:f", dedupe_ttl=60, **job)
    assert await one.release_lease("cb:user-1", "a")
    again = await two.append_and_take("user-1", [message("hi")], dedupe_key="cb:c:f", dedupe_ttl=60, **job)
    assert again is None
    assert len(await two.read("user-1")) == 1
    assert await two.lease_owner("cb:user-1") is None


async def test_a_job_has_one_taker(make_stores):
    one, two = make_stores()
    await one.append("user-1", [message("0")])
    taken = await race(
        *(store.take_job("cb:user-1", f"replica-{n}", 30, "user-1", "callback") for n, store in enumerate([one, two] * 5))
    )
    assert sum(result is not None for result in taken) == 1


async def test_a_holder_moves_the_pointer_renews_and_reads_on_in_one_call(make_stores):
    one, two = make_stores()
    job = {"lease": "cb:user-1", "owner": "a", "ttl": 30}
    entries = await one.append("user-1", [message(str(n), to_callback=n != 1) for n in range(4)])
    assert await one.take_job("cb:user-1", "a", 30, "user-1", "callback")
    assert await one.advance_and_next("user-1", "callback", entries[0].entry_id, limit=0, **job) == (True, [])
    moved, after = await one.advance_and_next("user-1", "callback", entries[1].entry_id, limit=1, **job)
    assert (moved, after) == (True, entries[2:3]), "what is after the new pointer, up to the limit"
    assert [(e.payload, e.kind, e.to_callback) for e in after] == [(e.payload, e.kind, e.to_callback) for e in entries[2:3]]
    assert await two.sink_position("user-1", "callback") == entries[1].entry_id
    assert await two.advance_and_next("user-1", "callback", entries[1].entry_id, **job) == (False, None), "not moved again"
    assert await one.advance_and_next("user-1", "callback", entries[3].entry_id, **job) == (True, [])
    assert await one.free_leases() == [], "renewed: still held"
    with pytest.raises(ValueError):
        await one.advance_and_next("user-1", "callback", "garbage", **job)


async def test_a_holder_whose_lease_is_gone_moves_the_pointer_and_stops(make_stores):
    one, two = make_stores()
    entries = await one.append("user-1", [message("0"), message("1")])
    assert await one.take_job("cb:user-1", "a", 30, "user-1", "callback")
    assert await one.release_lease("cb:user-1", "a")
    assert await two.take_job("cb:user-1", "b", 30, "user-1", "callback")
    moved, after = await one.advance_and_next("user-1", "callback", entries[0].entry_id, "cb:user-1", "a", 30)
    assert (moved, after) == (True, None), "taken (its POST was answered), but b's job now"
    assert await one.lease_owner("cb:user-1") == "b", "b's lease is not renewed for a"
    assert not await one.renew_lease("cb:user-1", "a", ttl=30)


async def test_a_caught_up_holder_lets_go_and_the_job_is_over(make_stores):
    one, two = make_stores()
    entries = await one.append("user-1", [message("0")])
    assert await one.take_job("cb:user-1", "a", 30, "user-1", "callback")
    assert await one.advance_and_next("user-1", "callback", entries[0].entry_id, "cb:user-1", "a", 30) == (True, [])
    assert await one.let_go("cb:user-1", "a", 30, "user-1", "callback") is None
    assert await two.lease_owner("cb:user-1") is None
    assert await two.free_leases() == [], "unregistered: nothing to take over"
    later = await two.append_and_take(
        "user-1", [message("1")], lease="cb:user-1", owner="b", ttl=30, sink="callback"
    )
    assert later is not None and later[1] == (entries[0].entry_id, later[0]), "the next append takes it at once"


async def test_a_holder_does_not_let_go_of_what_was_appended_meanwhile(make_stores):
    one, two = make_stores()
    entries = await one.append("user-1", [message("0")])
    assert await one.take_job("cb:user-1", "a", 30, "user-1", "callback")
    assert await one.advance_and_next("user-1", "callback", entries[0].entry_id, "cb:user-1", "a", 30) == (True, [])
    # Another replica appends while "a" holds the lease: it only appends.
    stored, taken = await two.append_and_take(
        "user-1", [message("1"), message("2")], lease="cb:user-1", owner="b", ttl=30, sink="callback", limit=5
    )
    assert taken is None
    assert await one.let_go("cb:user-1", "a", 30, "user-1", "callback", limit=1) == (entries[0].entry_id, stored[:1])
    assert await two.lease_owner("cb:user-1") == "a", "kept: a posts them"
    assert await two.free_leases() == []


async def test_a_let_go_leaves_another_holders_job_alone(make_stores):
    one, two = make_stores()
    await one.append("user-1", [message("0")])
    assert await two.take_job("cb:user-1", "b", 30, "user-1", "callback")
    assert await one.let_go("cb:user-1", "a", 30, "user-1", "callback") is None
    assert await one.lease_owner("cb:user-1") == "b"
    assert await two.renew_lease("cb:user-1", "b", ttl=30)
    assert await two.release_lease("cb:user-1", "b")
    assert await one.free_leases() == ["cb:user-1"], "still registered for a takeover"


async def test_an_append_racing_a_let_go_is_never_stranded(make_stores):
    """Whatever the interleaving of a caught-up holder letting go and another
    replica appending: either the holder keeps the lease and is handed the
    new entry, or the append takes the lease itself. Never neither."""
    one, two = make_stores()
    outcomes = set()
    for round_ in range(RACERS):
        stream, lease = f"user-{round_}", f"cb:user-{round_}"
        first = await one.append(stream, [message("0")])
        assert await one.take_job(lease, "a", 30, stream, "callback")
        assert await one.advance_and_next(stream, "callback", first[0].entry_id, lease, "a", 30) == (True, [])
        letting_go = one.let_go(lease, "a", 30, stream, "callback")
        appending = two.append_and_take(stream, [message("1")], lease=lease, owner="b", ttl=30, sink="callback")
        # Each started first in turn (one event loop: the first goes out first).
        if round_ % 2:
            appended, kept = await race(appending, letting_go)
        else:
            kept, appended = await race(letting_go, appending)
        stored, taken = appended
        outcomes.add(kept is not None)
        if kept is not None:
            assert taken is None and kept == (first[0].entry_id, stored)
            assert await two.lease_owner(lease) == "a"
        else:
            assert taken == (first[0].entry_id, stored), "the append took the job"
            assert await two.lease_owner(lease) == "b"
    assert outcomes == {True, False}, "both orders happened"


async def test_the_last_pointer_move_of_a_caught_up_holder_lets_go_in_the_same_step(make_stores):
    one, two = make_stores()
    job = {"lease": "cb:user-1", "owner": "a", "ttl": 30}
    entries = await one.append("user-1", [message("0"), message("1")])
    assert await one.take_job("cb:user-1", "a", 30, "user-1", "callback")
    moved, after = await one.advance_and_next("user-1", "callback", entries[0].entry_id, let_go=True, **job)
    assert (moved, after) == (True, entries[1:]), "more to post: the job stays a's"
    assert await two.lease_owner("cb:user-1") == "a"
    assert await one.advance_and_next("user-1", "callback", entries[1].entry_id, let_go=True, **job) == (True, [])
    assert await two.lease_owner("cb:user-1") is None, "caught up: let go"
    assert await two.free_leases() == [], "unregistered: nothing to take over"
    assert await two.sink_position("user-1", "callback") == entries[1].entry_id
    later = await two.append_and_take("user-1", [message("2")], lease="cb:user-1", owner="b", ttl=30, sink="callback")
    assert later is not None and later[1] == (entries[1].entry_id, later[0]), "the next append takes it at once"


async def test_a_pointer_move_lets_go_only_of_its_own_lease_and_only_after_a_read(make_stores):
    one, two = make_stores()
    entries = await one.append("user-1", [message("0")])
    assert await two.take_job("cb:user-1", "b", 30, "user-1", "callback")
    moved, after = await one.advance_and_next("user-1", "callback", entries[0].entry_id, "cb:user-1", "a", 30, let_go=True)
    assert (moved, after) == (True, None), "b's job"
    assert await one.lease_owner("cb:user-1") == "b"
    with pytest.raises(ValueError):
        await one.advance_and_next("user-1", "callback", entries[0].entry_id, "cb:user-1", "b", 30, limit=0, let_go=True)


# -- timers -----------------------------------------------------------------------


async def test_a_timer_fires_when_due(make_stores):
    one, two = make_stores()
    await one.schedule_timer("no_agent:user-1", time.time() + 60)
    assert await two.timer_due_at("no_agent:user-1") == pytest.approx(time.time() + 60, abs=2)
    assert await two.claim_due_timers() == []
    await one.schedule_timer("no_agent:user-1", time.time() - 1)  # moved: due now
    claims = await two.claim_due_timers()
    assert [claim.name for claim in claims] == ["no_agent:user-1"]
    assert await one.claim_due_timers() == [], "a claimed timer is hidden"
    assert await two.finish_timer(claims[0])
    assert await one.timer_due_at("no_agent:user-1") is None
    assert not await two.finish_timer(claims[0])


async def test_a_due_timer_is_claimed_by_one_replica(make_stores):
    one, two = make_stores()
    for n in range(5):
        await one.schedule_timer(f"idle:user-{n}", time.time() - 1)
    results = await race(*(store.claim_due_timers(limit=100) for store in [one, two] * 5))
    names = [claim.name for claims in results for claim in claims]
    assert sorted(names) == [f"idle:user-{n}" for n in range(5)]


async def test_a_timer_whose_holder_died_comes_back(make_stores):
    one, two = make_stores()
    await one.schedule_timer("idle:user-1", time.time() - 1)
    assert len(await one.claim_due_timers(hold=0.2)) == 1
    claims = await wait_until(lambda: two.claim_due_timers(hold=30), what="the abandoned timer to be due again")
    assert [claim.name for claim in claims] == ["idle:user-1"]


async def test_a_timer_moved_while_it_fires_stays(make_stores):
    one, two = make_stores()
    await one.schedule_timer("idle:user-1", time.time() - 1)
    (claim,) = await one.claim_due_timers()
    later = time.time() + 120
    await two.schedule_timer("idle:user-1", later)  # the user wrote meanwhile
    assert not await one.finish_timer(claim)
    assert await two.timer_due_at("idle:user-1") == pytest.approx(later, abs=0.01)


async def test_a_cancelled_timer_does_not_fire(make_stores):
    one, two = make_stores()
    await one.schedule_timer("idle:user-1", time.time() - 1)
    assert await two.cancel_timer("idle:user-1")
    assert not await two.cancel_timer("idle:user-1")
    assert await one.claim_due_timers() == []
    assert not await one.finish_timer(TimerClaim("idle:user-1", 1))


async def test_the_store_answers_a_ping(make_stores):
    one, _ = make_stores()
    assert await one.ping() is None  # a store that does not answer raises StoreUnavailable (test_redis_store.py)


async def test_the_next_due_time_is_the_earliest_timer(make_stores):
    one, two = make_stores()
    assert await two.next_timer_due() is None
    soon, later = time.time() + 30, time.time() + 90
    await one.schedule_timer("waiting:chat-1", later)
    await one.schedule_timer("no_agent:chat-2", soon)
    assert await two.next_timer_due() == pytest.approx(soon, abs=0.01)
    await two.schedule_timer("no_agent:chat-2", later + 10)  # moved after the other one
    assert await one.next_timer_due() == pytest.approx(later, abs=0.01)
    await one.cancel_timer("waiting:chat-1")
    assert await two.next_timer_due() == pytest.approx(later + 10, abs=0.01)
    await one.schedule_timer("idle:chat-3", time.time() - 1)
    (claim,) = await two.claim_due_timers(hold=20)
    # A claimed timer comes back at the end of its hold: that is when it is due.
    assert await one.next_timer_due() == pytest.approx(claim.held_until / 1000, abs=0.01)
    assert await two.finish_timer(claim)
    await one.cancel_timer("no_agent:chat-2")
    assert await two.next_timer_due() is None
