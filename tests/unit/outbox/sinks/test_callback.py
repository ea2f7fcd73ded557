"""The callback sink: each item POSTed once per deployment, in order, with
retries; a callback that stays down does not block later items; the replica
that posts reports each answer and its backlog."""

import asyncio
import base64
import hashlib
import hmac
import json
import time

import aiohttp
from aioresponses import CallbackResult, aioresponses

from connectors.servicenow.config import RetryPolicy
from connectors.servicenow.store import StoreUnavailable
from connectors.servicenow.outbox.base import HANDOFF_EVENT, status_item
from connectors.servicenow.outbox.sinks.callback import _LeaseKeeper
from connectors.servicenow.signing import delivery_id
from connectors.servicenow.store.keys import CALLBACK_SINK
from tests.unit.outbox.conftest import CALLBACK, message
from tests.unit.support import CountingRenewals


def calls(mock):
    return mock.requests.get(("POST", aiohttp.client.URL(CALLBACK)), [])


def posted(mock):
    return [json.loads(call.kwargs["data"]).get("text") for call in calls(mock)]


SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def verified(call) -> bool:
    """What a frontend does (Standard Webhooks), written here without the channel's code."""
    headers, body = call.kwargs["headers"], call.kwargs["data"]
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(b"k" * 32, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest("v1," + expected, part) for part in headers["webhook-signature"].split())


async def posters_done(*outboxes):
    await asyncio.wait_for(asyncio.gather(*(worker for outbox in outboxes for worker in outbox.callback.workers())), 5)


async def test_callbacks_are_posted_in_order_and_retried(outboxes, monkeypatch):
    monkeypatch.setattr("connectors.servicenow.outbox.base.CALLBACK_RETRY", RetryPolicy(attempts=3, backoff=0.0, max_backoff=0.0))
    outbox = outboxes(callback_url=CALLBACK)
    with aioresponses() as mock:
        mock.post(CALLBACK, status=503)
        mock.post(CALLBACK, status=200, repeat=True)
        await outbox.put("u1", [message(f"m{n}") for n in range(3)])
        await outbox.put("u1", [status_item("u1", active=True, chat_id="c", api="connect")])
        await outbox.drain(timeout=5)
        sent = posted(mock)
    assert sent == ["m0", "m0", "m1", "m2"]  # m0 twice: the 503, then its retry


async def test_every_post_is_signed_and_a_retry_keeps_its_delivery_id(outboxes, monkeypatch):
    monkeypatch.setattr("connectors.servicenow.outbox.base.CALLBACK_RETRY", RetryPolicy(attempts=3, backoff=0.0, max_backoff=0.0))
    outbox = outboxes(callback_url=CALLBACK, callback_secret=SECRET)
    with aioresponses() as mock:
        mock.post(CALLBACK, status=503)
        mock.post(CALLBACK, status=200, repeat=True)
        stored = await outbox.put("u1", [message("m0"), message("m1")])
        await outbox.put("u2", [message("other", "u2")])
        await outbox.drain(timeout=5)
        made = calls(mock)
    assert all(verified(call) for call in made)
    assert all(abs(int(call.kwargs["headers"]["webhook-timestamp"]) - time.time()) < 60 for call in made)
    # u1 and u2 post side by side, so either may get the 503: the first post
    # made, sent again under its id. Every delivery has its own id, never with a dot.
    ids = [call.kwargs["headers"]["webhook-id"] for call in made]
    texts = [json.loads(call.kwargs["data"])["text"] for call in made]
    assert len(made) == 4 and ids.count(ids[0]) == 2 and texts.count(texts[0]) == 2
    assert len(set(ids)) == 3 and not any("." in webhook_id for webhook_id in ids)
    id_of = dict(zip(texts, ids))
    assert stored[0].event_id in id_of["m0"] and stored[1].event_id in id_of["m1"]
    # A body changed on the way no longer verifies.
    first = made[texts.index("m0")]
    tampered = type(first)(first.args, {**first.kwargs, "data": first.kwargs["data"].replace(b"m0", b"m9")})
    assert not verified(tampered)


async def test_without_a_secret_posts_carry_the_delivery_id_and_no_signature(outboxes):
    outbox = outboxes(callback_url=CALLBACK)
    with aioresponses() as mock:
        mock.post(CALLBACK, status=200, repeat=True)
        await outbox.put("u1", [message("m0")])
        await outbox.drain(timeout=5)
        (call,) = calls(mock)
    assert call.kwargs["headers"]["webhook-id"].startswith("msg_") and "webhook-signature" not in call.kwargs["headers"]


async def test_a_callback_that_stays_down_does_not_block_later_items(outboxes, monkeypatch):
    monkeypatch.setattr("connectors.servicenow.outbox.base.CALLBACK_RETRY", RetryPolicy(attempts=2, backoff=0.0, max_backoff=0.0))
    outbox = outboxes(callback_url=CALLBACK)
    with aioresponses() as mock:
        mock.post(CALLBACK, exception=aiohttp.ClientConnectionError())
        mock.post(CALLBACK, exception=aiohttp.ClientConnectionError())
        mock.post(CALLBACK, status=200)
        await outbox.put("u1", [message("m0")])
        await outbox.put("u1", [message("m1")])
        await outbox.drain(timeout=5)
        sent = posted(mock)
    assert sent == ["m0", "m0", "m1"]


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
        await posters_done(a, b)
        sent = posted(mock)
        ids = [call.kwargs["headers"]["webhook-id"] for call in calls(mock)]
    assert sent == ["one", "two", "three", "four"]  # the status event is for streams only
    # The delivery id is the stored entry's, whichever replica posted it.
    entries = [entry for entry in await a.store.read("u1") if entry.to_callback]
    assert ids == [delivery_id("u1", entry.entry_id) for entry in entries]
    assert await a.store.free_leases() == []  # nothing left for a takeover


async def test_with_a_callback_the_poster_reports_what_the_frontend_answered(replicas):
    taken = []
    a = replicas(CALLBACK, on_taken=lambda recipient, entry, delivered: taken.append((entry.payload["text"], delivered)))
    with aioresponses() as mock:
        mock.post(CALLBACK, status=200)
        await a.put("u1", [message("one"), status_item("u1", active=True, chat_id="c", api="va")])
        await posters_done(a)
    assert taken == [("one", True)]  # the status event is not the callback's


async def test_the_replica_that_posts_reports_each_answered_callback_and_its_backlog(replicas):
    delivered = []
    a = replicas(CALLBACK, on_delivered=lambda event_id, sink: delivered.append(("a", event_id, sink)))
    b = replicas(CALLBACK, on_delivered=lambda event_id, sink: delivered.append(("b", event_id, sink)))
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
        assert b.callback_backlog == 0 and not b.callback.workers()
        answer.set()
        await asyncio.wait_for(owed(0), 5)
        await posters_done(a, b)
    messages = [item.event_id for item in stored if item.kind != HANDOFF_EVENT]
    assert delivered == [("a", event_id, "callback") for event_id in messages]


async def test_a_refused_callback_leaves_the_backlog_without_a_delivery(replicas, monkeypatch):
    monkeypatch.setattr("connectors.servicenow.outbox.base.CALLBACK_RETRY", RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.01))
    delivered = []
    a = replicas(CALLBACK, on_delivered=lambda event_id, sink: delivered.append(event_id))
    with aioresponses() as mock:
        mock.post(CALLBACK, status=400, repeat=True)
        await a.put("u1", [message("one")])
        await posters_done(a)
    assert delivered == [] and a.callback_backlog == 0


async def test_the_backlog_counts_callback_posts_not_yet_answered(outboxes):
    outbox = outboxes(callback_url=CALLBACK)
    answer = asyncio.Event()

    async def held(url, **kwargs):
        await answer.wait()

    with aioresponses() as mock:
        mock.post(CALLBACK, status=200, repeat=True, callback=held)
        assert outbox.callback_backlog == 0
        await outbox.put("u1", [message("one"), message("two")])
        await outbox.put("u2", [message("three", "u2")])

        async def owed(count):
            while outbox.callback_backlog != count:
                await asyncio.sleep(0.01)  # wait-ok: polling a condition with a deadline

        await asyncio.wait_for(owed(3), 5)
        answer.set()
        await asyncio.wait_for(owed(0), 5)
        await posters_done(outbox)


async def test_a_post_that_outlasts_the_lease_keeps_it_and_is_posted_once(replicas):
    # Soak finding 7: the poster's lease ran out while its POST was still in
    # flight on a busy replica, and another replica posted the entry again.
    # The lease is renewed while the POST is in flight.
    a, b = replicas(CALLBACK), replicas(CALLBACK)
    counting = CountingRenewals(a.store)
    a.callback._store = counting
    a.callback.lease_s, a.callback.renew_every = 0.3, 0.1  # a POST much longer than its lease
    answering, answer = asyncio.Event(), asyncio.Event()

    async def slow_frontend(url, **kwargs):
        answering.set()
        await answer.wait()
        return CallbackResult(status=200)

    with aioresponses() as mock:
        mock.post(CALLBACK, callback=slow_frontend, repeat=True)
        await a.put("u1", [message("only once")])
        await asyncio.wait_for(answering.wait(), 5)
        deadline = asyncio.get_running_loop().time() + 5
        while counting.renewals < 5:  # well past the 0.3 s the lease was taken for
            assert asyncio.get_running_loop().time() < deadline, "the lease was not renewed during the POST"
            await asyncio.sleep(0.01)  # wait-ok: polling a condition with a deadline
        b.take_over("u1")  # the takeover scan of another replica
        await posters_done(b)
        answer.set()
        await posters_done(a)
        sent = posted(mock)
    assert sent == ["only once"]


async def test_the_lease_keeper_renews_on_its_timer_through_a_failing_store_until_stopped():
    renewals = []
    third = asyncio.Event()

    async def renew() -> bool:
        renewals.append(asyncio.get_running_loop().time())
        if len(renewals) == 2:
            raise StoreUnavailable("down for a moment")  # logged, and the timer goes on
        if len(renewals) == 3:
            third.set()
        return True

    keeper = _LeaseKeeper(renew, "cb:u1", every=0.02)
    await asyncio.wait_for(third.wait(), 5)
    keeper.stop()
    assert len(renewals) == 3
    assert keeper._timer is None or keeper._timer.cancelled()  # nothing left to fire


async def test_the_lease_keeper_stops_renewing_a_lease_another_replica_holds():
    asked = asyncio.Event()

    async def renew() -> bool:
        asked.set()
        return False

    keeper = _LeaseKeeper(renew, "cb:u1", every=0.01)
    await asyncio.wait_for(asked.wait(), 5)
    assert keeper._renewing is not None
    await asyncio.wait_for(keeper._renewing, 5)
    assert keeper._timer is None  # not armed again
    keeper.stop()
