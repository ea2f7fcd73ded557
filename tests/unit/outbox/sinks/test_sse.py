"""Server-Sent Events streams of the outbox: items wait for a stream and are
streamed once, ``Last-Event-ID`` resumes exactly after an entry of the
conversation (on any replica), any other id counts as absent and neither
hides nor consumes anything, and without a callback the first stream to
take an entry reports it."""

import asyncio

from connectors.servicenow.outbox.base import TYPING_EVENT, Outgoing
from connectors.servicenow.store import MemoryStore
from tests.unit.outbox.conftest import message, take, texts


async def put_texts(outbox, count, sender="u1", prefix="m"):
    return await outbox.put(sender, [message(f"{prefix}{n}", sender) for n in range(count)])


async def test_items_wait_for_a_stream_and_are_streamed_once(outboxes):
    outbox = outboxes()
    await put_texts(outbox, 3)
    first = outbox.subscribe("u1")
    assert await texts(first, 3) == ["m0", "m1", "m2"]
    first.close()

    await outbox.put("u1", [message("m3")])
    second = outbox.subscribe("u1")  # a new tab: only what nobody has seen
    assert await texts(second, 1) == ["m3"]
    assert await second.next(heartbeat=0.01) is None  # nothing more: a heartbeat
    second.close()


async def test_last_event_id_resumes_after_what_the_browser_saw(outboxes):
    outbox = outboxes()
    items = await put_texts(outbox, 4)
    stream = outbox.subscribe("u1")
    await take(stream, 4)
    stream.close()

    resumed = outbox.subscribe("u1", last_event_id=items[1].event_id)
    assert await texts(resumed, 2) == ["m2", "m3"]
    resumed.close()


async def test_last_event_id_resumes_exactly_after_it_on_any_replica(replicas):
    a, b = replicas(), replicas()
    stored = await a.put("u1", [message(str(n)) for n in range(5)])
    subscription = b.subscribe("u1", last_event_id=stored[1].event_id)
    assert await texts(subscription, 3) == ["2", "3", "4"]
    subscription.close()


async def test_an_event_id_from_before_a_restart_does_not_hide_new_items(outboxes):
    before = outboxes()
    old = await before.put("u1", [message("before the restart")])
    await take(before.subscribe("u1"), 1)
    restarted = outboxes(MemoryStore())  # one process, started again: its store is empty
    await restarted.put("u1", [message("m0")])
    for last_event_id in (old[0].event_id, "0ldb00t-999"):
        stream = restarted.subscribe("u1", last_event_id=last_event_id)
        assert await texts(stream, 1) == ["m0"]
        stream.close()
        restarted.store._streams["u1"].sinks.clear()  # as if no stream had taken it


async def test_a_foreign_or_future_event_id_does_not_hide_items(replicas):
    a, b = replicas(), replicas()
    other = await a.put("someone-else", [message("theirs", "someone-else")])
    await a.put("u1", [message("seen")])
    first = b.subscribe("u1")
    assert await texts(first, 1) == ["seen"]
    first.close()
    for foreign in (other[0].event_id, "99999999999999-0", "garbage"):
        await a.put("u1", [message(f"after {foreign}")])
        stream = b.subscribe("u1", last_event_id=foreign)
        # Not "after the foreign id": after what streams have taken already.
        assert await texts(stream, 1) == [f"after {foreign}"]
        assert await stream.next(0.05) is None
        stream.close()
    later = b.subscribe("u1", last_event_id="99999999999999-0")
    reading = asyncio.ensure_future(take(later, 1))
    await asyncio.sleep(0)  # wait-ok: one turn of the loop, so the stream waits first
    await a.put("u1", [message("later")])
    assert [item.payload["text"] for item in await asyncio.wait_for(reading, 5)] == ["later"]
    later.close()


async def test_live_items_reach_every_open_stream_of_the_user_only(outboxes):
    outbox = outboxes()
    tab1, tab2, other = outbox.subscribe("u1"), outbox.subscribe("u1"), outbox.subscribe("u2")
    readers = [asyncio.ensure_future(texts(tab, 1)) for tab in (tab1, tab2)]
    await asyncio.sleep(0)  # wait-ok: one turn of the loop, so the streams wait first
    await outbox.put("u1", [message("m0")])
    assert await asyncio.wait_for(asyncio.gather(*readers), 5) == [["m0"], ["m0"]]
    assert await other.next(heartbeat=0.01) is None
    for subscription in (tab1, tab2, other):
        subscription.close()


async def test_sse_frames_carry_id_event_and_json(outboxes):
    outbox = outboxes()
    [item] = await outbox.put("u1", [Outgoing({"recipient_id": "u1", "typing": True}, TYPING_EVENT)])
    frame = item.sse()
    assert frame.startswith(f"id: {item.event_id}\nevent: typing\ndata: ")
    assert frame.endswith('{"recipient_id": "u1", "typing": true}\n\n')


async def test_an_event_id_of_another_conversation_neither_hides_nor_consumes_anything(outboxes):
    taken = []
    outbox = outboxes(on_taken=lambda recipient, entry, delivered: taken.append((recipient, entry.payload["text"])))
    mine = await put_texts(outbox, 3)
    await put_texts(outbox, 3, sender="u2", prefix="t")

    # u2 resumes "after" u1's last item: the id is u1's, so it says nothing about u2's stream.
    stream = outbox.subscribe("u2", last_event_id=mine[-1].event_id)
    assert await texts(stream, 3) == ["t0", "t1", "t2"]
    stream.close()
    # u1's items were not marked delivered by u2's stream, and still reach u1.
    assert taken == [("u2", "t0"), ("u2", "t1"), ("u2", "t2")]
    stream = outbox.subscribe("u1")
    assert await texts(stream, 3) == ["m0", "m1", "m2"]
    stream.close()
    assert [text for recipient, text in taken if recipient == "u1"] == ["m0", "m1", "m2"]


async def test_an_event_id_of_an_expired_stream_of_the_same_conversation_does_not_hide_new_items(outboxes):
    clock = [1000.0]
    outbox = outboxes(MemoryStore(stream_ttl=60, clock=lambda: clock[0]))
    [old] = await outbox.put("u1", [message("m0")])
    stream = outbox.subscribe("u1")
    await take(stream, 1)
    stream.close()
    clock[0] += 120  # the stream expired: its ids name nothing now
    await outbox.put("u1", [message("m1")])
    stream = outbox.subscribe("u1", last_event_id=old.event_id)
    assert await texts(stream, 1) == ["m1"]
    stream.close()


async def test_a_last_event_id_with_unusual_digits_counts_as_absent(outboxes):
    outbox = outboxes()
    [item] = await outbox.put("u1", [message("m0")])
    milliseconds = item.event_id.split("-")[0]
    for odd in (
        f"{milliseconds}-\u0662\u0663", f"{milliseconds}-²", f"{milliseconds}-" + "9" * 5000,
        f"{milliseconds}--1", f"{milliseconds}-", "-", "", "\u0661\u0662-0",
    ):
        stream = outbox.subscribe("u1", last_event_id=odd)
        # Absent: the stream starts after what streams have taken, which is nothing yet.
        assert await stream.start_point() is None
        stream.close()
    stream = outbox.subscribe("u1", last_event_id=f"{milliseconds}-" + "9" * 5000)
    assert await texts(stream, 1) == ["m0"]
    stream.close()


async def test_without_a_callback_the_first_stream_to_take_an_entry_reports_it_once(replicas):
    taken = []

    def report(recipient, entry, delivered):
        taken.append((recipient, entry.payload["text"], delivered))

    a, b = replicas(on_taken=report), replicas(on_taken=report)
    streams = [a.subscribe("u1"), b.subscribe("u1")]
    readers = [asyncio.ensure_future(take(stream, 2)) for stream in streams]
    await asyncio.sleep(0)  # wait-ok: one turn of the loop, so the stream waits first
    await a.put("u1", [message("one"), message("two")])
    await asyncio.wait_for(asyncio.gather(*readers), 5)
    assert sorted(taken) == [("u1", "one", True), ("u1", "two", True)]
    for stream in streams:
        stream.close()
