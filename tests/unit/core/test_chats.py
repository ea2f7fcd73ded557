"""Which conversations are in handoff: the store's records decide, on one
process (read back from the tracker slots after a restart) or on replicas
(one Redis); whether one is in handoff is never guessed when a store fails."""

import asyncio

import pytest
from aioresponses import aioresponses
from types import SimpleNamespace

from connectors.servicenow.errors import ServiceNowError, StoreUnavailable
from tests.unit.core.helpers import forwarded, start_live
from tests.unit.support import GROUP, LEAVE, MESSAGES, TEXTS, body_of, requests_to, say


async def test_a_failing_store_never_sends_a_user_in_handoff_to_the_bot(channels, rasa_turn, store, agent):
    with aioresponses() as mock:
        await start_live(channels(), rasa_turn, mock)
        restarted = channels()  # a process that has not seen this user yet
        rasa_turn.reset_mock()

        store.broken = True
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                await say(restarted, rasa_turn, "are you there?")
        rasa_turn.assert_not_awaited()
        assert not restarted.core.store.known_inactive("u1")  # nothing cached from a failed read

        store.broken = False
        mock.post(MESSAGES, payload={"result": {"sys_id": "m1", "timestamp": 1}})
        assert await say(restarted, rasa_turn, "are you there?") == []
        assert [body_of(mock, "POST", MESSAGES, i)["message"] for i in range(len(requests_to(mock, "POST", MESSAGES)))] == [
            "are you there?"
        ]
    rasa_turn.assert_not_awaited()
    tracker = await agent.tracker_store.retrieve("u1")
    assert tracker.latest_message.text == "talk to live agent"  # the bot never saw the others

async def test_a_user_not_in_handoff_waits_for_the_store_too_then_reaches_the_bot(channels, rasa_turn, store):
    channel = channels()
    store.broken = True
    with pytest.raises(StoreUnavailable):
        await say(channel, rasa_turn, "hello", sender="newcomer")
    rasa_turn.assert_not_awaited()
    store.broken = False
    assert (await say(channel, rasa_turn, "hello", sender="newcomer"))[0]["text"].startswith("Hello!")
    assert channel.core.store.known_inactive("newcomer")

async def test_typing_is_dropped_and_a_callback_refused_while_the_store_fails(channels, store):
    channel = channels()
    store.broken = True
    # Typing never reads the tracker store: unknown here is simply dropped.
    assert await channel.core.router.user_typing("u1", True) is False
    callback = SimpleNamespace(chat_id="va-chat", sender_id="u1", fingerprint="f", events=[])
    with pytest.raises(StoreUnavailable):
        await channel.core.callbacks.find_chat(callback)
    store.broken = False
    await channel.core.callbacks.find_chat(callback)  # no chat: acknowledged, nothing to deliver

async def test_resume_after_a_restart_reports_a_failing_store_instead_of_finding_no_chats(channels, rasa_turn, store):
    with aioresponses() as mock:
        await start_live(channels(), rasa_turn, mock)
    restarted = channels()
    store.broken = True
    with pytest.raises(StoreUnavailable):
        await restarted.core.chats.resume()
    store.broken = False
    assert await restarted.core.chats.resume() == 1
    assert restarted.core.registry.get("u1").chat_id == GROUP

async def test_a_handoff_started_on_one_replica_routes_messages_on_another(replicas, rasa_turn):
    a, b = replicas(), replicas()
    with aioresponses() as mock:
        await start_live(a, rasa_turn, mock)
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
        await start_live(a, rasa_turn, mock)
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

async def test_redis_down_answers_503_and_never_reaches_the_bot(replicas, rasa_turn, redis_server):
    a = replicas()
    with aioresponses() as mock:
        await start_live(a, rasa_turn, mock)
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

async def test_a_replica_forgets_chats_that_ended_on_another(replicas, rasa_turn):
    a, b = replicas(), replicas()
    with aioresponses() as mock:
        await start_live(a, rasa_turn, mock)
        mock.post(MESSAGES, payload={"result": {"sys_id": "m1", "timestamp": 1}})
        await say(b, rasa_turn, "hello agent")
        mock.post(LEAVE, payload={})
        await say(a, rasa_turn, "/end_chat")
    assert len(b.core.registry) == 1  # B was not asked since
    assert await b.core.chats.forget_ended_elsewhere() == 1
    assert len(b.core.registry) == 0


async def test_a_message_that_failed_while_another_replica_ended_the_chat_is_reported_undelivered(replicas, rasa_turn):
    # Soak finding 2 (the old core answered 200 []): ServiceNow failed past the
    # retries on both replicas; A's poller stored the end first, and B, whose
    # forward of the user's message failed, finds the chat ended already.
    a, b = replicas(), replicas()
    with aioresponses() as mock:
        await start_live(a, rasa_turn, mock)
        mock.post(MESSAGES, payload={"result": {"sys_id": "m1", "timestamp": 1}})
        await say(b, rasa_turn, "hello agent")  # B holds the chat too
        sending, fail = asyncio.Event(), asyncio.Event()

        async def failing_send(ref, text):
            sending.set()
            await fail.wait()
            raise ServiceNowError("ServiceNow answered 503 five times")

        b.core.backend.send = failing_send
        message = asyncio.ensure_future(say(b, rasa_turn, "are you there?"))
        await sending.wait()
        mock.post(LEAVE, payload={})
        await a.core.ending.failed_in_background(a.core.registry.get("u1"), ServiceNowError("polling failed"))
        fail.set()
        replies = await message
    assert [reply["text"] for reply in replies] == [TEXTS.message_not_delivered]
