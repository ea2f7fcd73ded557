"""The outbox: stream buffering and resumption, callback order and retries."""

import time

import aiohttp
import pytest
from aioresponses import aioresponses

from connectors.servicenow import delivery
from connectors.servicenow.delivery import IN_TOTAL, PER_SENDER, Outbox, StreamLimitReached

CALLBACK = "http://frontend.test/callback"


def text_item(n):
    return {"recipient_id": "u1", "text": f"m{n}"}


async def drain(subscription, count):
    return [(await subscription.next(heartbeat=1)).payload["text"] for _ in range(count)]


async def test_items_wait_for_a_stream_and_are_streamed_once():
    outbox = Outbox(callback_url=None)
    for n in range(3):
        outbox.publish("u1", text_item(n))

    first = outbox.subscribe("u1")
    assert await drain(first, 3) == ["m0", "m1", "m2"]
    first.close()

    outbox.publish("u1", text_item(3))
    second = outbox.subscribe("u1")  # a new tab: only what nobody has seen
    assert await drain(second, 1) == ["m3"]
    assert await second.next(heartbeat=0.01) is None  # nothing more: a heartbeat
    second.close()


async def test_last_event_id_resumes_after_what_the_browser_saw():
    outbox = Outbox(callback_url=None)
    items = [outbox.publish("u1", text_item(n)) for n in range(4)]
    stream = outbox.subscribe("u1")
    await drain(stream, 4)
    stream.close()

    resumed = outbox.subscribe("u1", last_event_id=items[1].event_id)
    assert await drain(resumed, 2) == ["m2", "m3"]
    resumed.close()


async def test_an_event_id_from_before_a_restart_does_not_hide_new_items():
    outbox = Outbox(callback_url=None)
    outbox.publish("u1", text_item(0))
    stream = outbox.subscribe("u1", last_event_id="0ldb00t-999")
    assert await drain(stream, 1) == ["m0"]
    stream.close()


async def test_live_items_reach_every_open_stream_of_the_user_only():
    outbox = Outbox(callback_url=None)
    tab1, tab2, other = outbox.subscribe("u1"), outbox.subscribe("u1"), outbox.subscribe("u2")
    outbox.publish("u1", text_item(0))
    assert await drain(tab1, 1) == ["m0"] and await drain(tab2, 1) == ["m0"]
    assert await other.next(heartbeat=0.01) is None
    for subscription in (tab1, tab2, other):
        subscription.close()


async def test_sse_frames_carry_id_event_and_json():
    item = Outbox(callback_url=None).publish("u1", {"recipient_id": "u1", "typing": True}, delivery.TYPING_EVENT)
    frame = item.sse()
    assert frame.startswith(f"id: {item.event_id}\nevent: typing\ndata: ")
    assert frame.endswith('{"recipient_id": "u1", "typing": true}\n\n')


async def test_callbacks_are_posted_in_order_and_retried(monkeypatch):
    monkeypatch.setattr(delivery, "CALLBACK_RETRY", delivery.RetryPolicy(attempts=3, backoff=0.0, max_backoff=0.0))
    outbox = Outbox(CALLBACK)
    with aioresponses() as mock:
        mock.post(CALLBACK, status=503)
        mock.post(CALLBACK, status=200, repeat=True)
        for n in range(3):
            outbox.publish("u1", text_item(n))
        outbox.publish("u1", {"recipient_id": "u1", "handoff": {"active": True}}, delivery.HANDOFF_EVENT, to_callback=False)
        await outbox.drain(timeout=5)
        posted = [call.kwargs["json"]["text"] for call in mock.requests[("POST", aiohttp.client.URL(CALLBACK))]]
    await outbox.aclose()
    assert posted == ["m0", "m0", "m1", "m2"]  # m0 twice: the 503, then its retry


async def test_a_callback_that_stays_down_does_not_block_later_items(monkeypatch):
    monkeypatch.setattr(delivery, "CALLBACK_RETRY", delivery.RetryPolicy(attempts=2, backoff=0.0, max_backoff=0.0))
    outbox = Outbox(CALLBACK)
    with aioresponses() as mock:
        mock.post(CALLBACK, exception=aiohttp.ClientConnectionError())
        mock.post(CALLBACK, exception=aiohttp.ClientConnectionError())
        mock.post(CALLBACK, status=200)
        outbox.publish("u1", text_item(0))
        outbox.publish("u1", text_item(1))
        await outbox.drain(timeout=5)
        calls = mock.requests[("POST", aiohttp.client.URL(CALLBACK))]
    await outbox.aclose()
    assert [call.kwargs["json"]["text"] for call in calls] == ["m0", "m0", "m1"]


async def test_idle_mailboxes_are_pruned():
    outbox = Outbox(callback_url=None)
    outbox.publish("u1", text_item(0))
    listening = outbox.subscribe("u2")
    far_future = time.monotonic() + delivery.MAILBOX_IDLE_TTL_S * 10
    assert outbox.prune(now=far_future) == 1  # u1 goes; u2 has an open stream
    listening.close()


# -- what a stream costs, and what its event ids can reach ---------------------


async def test_a_stream_for_a_quiet_conversation_leaves_nothing_behind():
    outbox = Outbox(callback_url=None)
    for n in range(500):
        stream = outbox.subscribe(f"anonymous-{n}", last_event_id=f"whatever-{n}")
        assert outbox.mailbox_count == 1 and outbox.open_streams == 1
        stream.close()
        stream.close()  # twice is harmless
    assert outbox.mailbox_count == 0 and outbox.open_streams == 0


async def test_a_mailbox_stays_while_it_holds_items_or_serves_a_stream():
    outbox = Outbox(callback_url=None)
    outbox.publish("u1", text_item(0))
    first, second = outbox.subscribe("u1"), outbox.subscribe("u2")
    first.close()
    assert outbox.mailbox_count == 2  # u1 keeps its item for a reconnect; u2 is still listening
    second.close()
    assert outbox.mailbox_count == 1


async def test_streams_are_capped_per_conversation_and_in_total_and_a_refusal_changes_nothing():
    outbox = Outbox(callback_url=None, max_streams_per_sender=2, max_open_streams=3)
    tabs = [outbox.subscribe("u1"), outbox.subscribe("u1")]
    with pytest.raises(StreamLimitReached) as refused:
        outbox.subscribe("u1")
    assert refused.value.scope == PER_SENDER and outbox.open_streams == 2
    tabs.append(outbox.subscribe("u2"))
    with pytest.raises(StreamLimitReached) as refused:
        outbox.subscribe("u3")
    assert refused.value.scope == IN_TOTAL
    assert outbox.open_streams == 3 and outbox.mailbox_count == 2  # no mailbox for the refused u3
    tabs.pop().close()
    tabs.append(outbox.subscribe("u3"))  # room again once a stream closed
    for tab in tabs:
        tab.close()
    assert outbox.open_streams == 0 and outbox.mailbox_count == 0


async def test_an_event_id_of_another_conversation_neither_hides_nor_consumes_anything():
    outbox = Outbox(callback_url=None)
    mine = [outbox.publish("u1", text_item(n), track=True) for n in range(3)]
    theirs = [outbox.publish("u2", {"recipient_id": "u2", "text": f"t{n}"}, track=True) for n in range(3)]

    # u2 resumes "after" u1's last item: the id is u1's, so it says nothing about u2's mailbox.
    stream = outbox.subscribe("u2", last_event_id=mine[-1].event_id)
    assert [(await stream.next(heartbeat=1)).payload["text"] for _ in range(3)] == ["t0", "t1", "t2"]
    stream.close()
    assert all(item.outcome.done() for item in theirs)
    # u1's items were not marked delivered by u2's stream, and still reach u1.
    assert not any(item.outcome.done() for item in mine)
    # A forged id with u1's mailbox stamp and a huge number, used on u2's stream, does not reach u1 either.
    forged = mine[0].event_id.rpartition("-")[0] + "-999999"
    outbox.subscribe("u2", last_event_id=forged).close()
    stream = outbox.subscribe("u1")
    assert await drain(stream, 3) == ["m0", "m1", "m2"]
    stream.close()
    assert all(item.outcome.result() is True for item in mine)


async def test_an_event_id_from_an_earlier_mailbox_of_the_same_conversation_does_not_hide_new_items():
    outbox = Outbox(callback_url=None)
    old = outbox.publish("u1", text_item(0))
    stream = outbox.subscribe("u1")
    await drain(stream, 1)
    stream.close()
    assert outbox.prune(now=time.monotonic() + delivery.MAILBOX_IDLE_TTL_S * 10) == 1
    outbox.publish("u1", text_item(1))  # numbering starts again in a new mailbox
    stream = outbox.subscribe("u1", last_event_id=old.event_id)
    assert await drain(stream, 1) == ["m1"]
    stream.close()


async def test_a_last_event_id_with_unusual_digits_counts_as_absent():
    outbox = Outbox(callback_url=None)
    item = outbox.publish("u1", text_item(0))
    boot = item.event_id.split("-")[0]
    for odd in (f"{boot}-\u0662\u0663", f"{boot}-²", f"{boot}-" + "9" * 5000, f"{boot}--1", f"{boot}-", "-", ""):
        stream = outbox.subscribe("u1", last_event_id=odd)
        stream.close()
