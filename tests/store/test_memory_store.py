"""What only the in-process store has to prove: memory stays bounded, ids
are its own, and what it forgets at exit comes back from the mirror."""

import pytest

from connectors.servicenow.store import HandoffRecord, NewEntry, StoreUnavailable, parse_entry_id
from connectors.servicenow.store.memory import SWEEP_INTERVAL_S, MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_dedupe_marks_expire_and_are_capped():
    clock = Clock()
    store = MemoryStore(max_dedupe_keys=100, clock=clock)
    for n in range(50):
        assert await store.claim_once(f"old-{n}", ttl=10)
    clock.now += 11
    assert await store.claim_once("new", ttl=10)
    assert len(store._dedupe) == 1, "expired marks are dropped"
    for n in range(500):
        await store.claim_once(f"many-{n}", ttl=3600)
    assert len(store._dedupe) == 100
    assert not await store.claim_once("many-499", ttl=3600)


async def test_idle_streams_are_dropped():
    clock = Clock()
    store = MemoryStore(stream_ttl=60, clock=clock)
    for n in range(1000):
        await store.append(f"user-{n}", [NewEntry({"text": "x"})])
    clock.now += max(60, SWEEP_INTERVAL_S) + 1
    await store.append("late", [NewEntry({"text": "x"})])
    assert list(store._streams) == ["late"]


async def test_a_stream_keeps_exactly_its_retained_entries():
    store = MemoryStore(retained=5)
    for n in range(20):
        await store.append("user-1", [NewEntry({"n": n})])
    assert [entry.payload["n"] for entry in await store.read("user-1")] == list(range(15, 20))


async def test_ids_keep_growing_when_the_clock_steps_back():
    clock = Clock()
    store = MemoryStore(clock=clock)
    (first,) = await store.append("user-1", [NewEntry({})])
    clock.now -= 5
    (second,) = await store.append("user-1", [NewEntry({})])
    first_ms, first_n = parse_entry_id(first.entry_id)
    second_ms, second_n = parse_entry_id(second.entry_id)
    assert second_ms == first_ms and second_n == first_n + 1


async def test_a_restarted_process_gives_out_ids_the_last_one_did_not():
    # Same clock, same conversation, one process after the other: an SSE
    # client's Last-Event-ID from before the restart must name no new entry.
    clock = Clock()
    before, after = MemoryStore(clock=clock), MemoryStore(clock=clock)
    old = [entry.entry_id for entry in await before.append("user-1", [NewEntry({}) for _ in range(50)])]
    new = [entry.entry_id for entry in await after.append("user-1", [NewEntry({}) for _ in range(50)])]
    assert not set(old) & set(new)


async def test_rescheduled_timers_do_not_pile_up():
    store = MemoryStore()
    for n in range(10_000):
        await store.schedule_timer("idle:user-1", 1_000_000 + n)
    assert len(store._timer_heap) < 100
    assert len(await store.claim_due_timers()) == 1


async def test_expired_leases_are_forgotten():
    clock = Clock()
    store = MemoryStore(clock=clock)
    for n in range(1000):
        assert await store.acquire_lease(f"callback:user-{n}", "a", ttl=30)
    clock.now += max(30, SWEEP_INTERVAL_S) + 1
    assert await store.acquire_lease("callback:late", "a", ttl=30)
    assert list(store._leases) == ["callback:late"]


async def test_an_ended_handoff_is_remembered_inactive():
    store = MemoryStore()
    record = HandoffRecord(sender_id="u1", chat_id="g1", api="connect")
    assert await store.create_handoff(record)
    assert await store.end_handoff("u1", "g1") == record
    assert await store.get_handoff("u1") is None and store.known_inactive("u1")
    assert await store.create_handoff(record) and not store.known_inactive("u1")  # a new handoff


async def test_the_least_recently_seen_inactive_senders_are_forgotten_first():
    store = MemoryStore(mirror=Mirror(), inactive_capacity=2)
    for sender in ("a", "b"):
        assert await store.find_handoff(sender) is None
    assert store.known_inactive("a")  # a is now the most recent
    assert await store.find_handoff("c") is None
    assert store.known_inactive("a") and store.known_inactive("c")
    assert not store.known_inactive("b")


class Mirror:
    """A tracker store stand-in: u-live is in handoff, nobody else; it counts reads."""

    def __init__(self, failing=False):
        self.reads = 0
        self.failing = failing

    async def load_handoff(self, sender_id):
        self.reads += 1
        if self.failing:
            raise StoreUnavailable("the tracker store is down")
        return HandoffRecord(sender_id=sender_id, chat_id="live-chat", api="connect") if sender_id == "u-live" else None

    async def live_handoffs(self):
        yield HandoffRecord(sender_id="u-live", chat_id="live-chat", api="connect")
        yield HandoffRecord(sender_id="u-ended", chat_id="ended-chat", api="connect")


async def test_the_mirror_is_read_once_per_sender_and_a_failure_is_not_remembered():
    mirror = Mirror(failing=True)
    store = MemoryStore(mirror=mirror)
    with pytest.raises(StoreUnavailable):
        await store.find_handoff("u-live")
    assert not store.known_inactive("u-live")
    mirror.failing = False
    assert (await store.find_handoff("u-live")).chat_id == "live-chat"
    assert await store.find_handoff("nobody") is None
    reads = mirror.reads
    for _ in range(3):
        assert (await store.find_handoff("u-live")).chat_id == "live-chat"
        assert await store.find_handoff("nobody") is None
    assert mirror.reads == reads  # the record is filed, the other remembered inactive
    assert await store.get_handoff("someone") is None and mirror.reads == reads  # get_handoff never reads it


async def test_the_import_at_start_up_brings_back_live_handoffs_but_not_ones_ended_since():
    store = MemoryStore(mirror=Mirror())
    await store.create_handoff(HandoffRecord(sender_id="u-ended", chat_id="ended-chat", api="connect"))
    await store.end_handoff("u-ended", "ended-chat")  # ended here after the mirror was read
    imported = await store.import_handoffs()
    assert [record.sender_id for record in imported] == ["u-live"]
    assert (await store.handoff_by_chat("live-chat")).sender_id == "u-live"
    assert await store.get_handoff("u-ended") is None
    assert await MemoryStore().import_handoffs() == []  # no mirror: nothing to bring back


async def test_making_room_says_so_when_it_drops_an_entry_nobody_took(caplog):
    store = MemoryStore(retained=2)
    await store.append("user-1", [NewEntry({"n": 1}), NewEntry({"n": 2})])
    [taken] = await store.read("user-1", limit=1)
    await store.advance_sink("user-1", "stream", taken.entry_id)
    await store.append("user-1", [NewEntry({"n": 3})])  # drops n=1, which a stream took: quiet
    assert "undelivered" not in caplog.text
    await store.append("user-1", [NewEntry({"n": 4})])  # drops n=2, which nobody took
    assert "Dropping an undelivered item for user-1" in caplog.text
