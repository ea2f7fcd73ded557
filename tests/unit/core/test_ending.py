"""Every way a handoff ends, under failing stores and racing agent messages:
a user's end is saved first or changes nothing, an end from ServiceNow is an
end whatever the stores say and is saved later, an end that reaches several
replicas while Redis is away is told once, and nothing of the chat is
delivered after the farewell."""

import asyncio

import pytest
from aioresponses import aioresponses

from connectors.servicenow.core.ending import EndReason
from connectors.servicenow.errors import StoreUnavailable
from connectors.servicenow.retry import Pauses
from connectors.servicenow.servicenow.base import AgentMessage, ChatClosed, CloseReason, PollResult
from tests.unit.core.helpers import HeldLeave, agent_push, receive_close, start_live, transcript
from tests.unit.support import (
    GROUP,
    LEAVE,
    MESSAGES,
    SESSIONS,
    TEXTS,
    close,
    delivered_texts,
    new_channel,
    requests_to,
    say,
    slots,
    wait_until,
)


async def test_a_users_end_that_cannot_be_saved_changes_nothing_and_says_so(channels, rasa_turn, store, agent):
    channel = channels()
    with aioresponses() as mock:
        await start_live(channel, rasa_turn, mock)
        rasa_turn.reset_mock()
        store.broken = True
        for command in ("/end_chat", "/restart"):
            assert [reply["text"] for reply in await say(channel, rasa_turn, command)] == [TEXTS.end_failed]
        assert not requests_to(mock, "POST", LEAVE)  # the agent still has the user
        rasa_turn.assert_not_awaited()
        mock.post(MESSAGES, payload={"result": {"sys_id": "m1", "timestamp": 1}})
        assert await say(channel, rasa_turn, "still there?") == []  # and the chat goes on

        store.broken = False
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        assert [reply["text"] for reply in await say(channel, rasa_turn, "/end_chat")] == [TEXTS.user_ended]
        assert len(requests_to(mock, "POST", LEAVE)) == 1
    assert (await slots(agent))["handoff_active"] is False

async def test_an_end_from_servicenow_that_cannot_be_saved_holds_the_next_message_until_it_is(
    channels, rasa_turn, store, agent
):
    channel = channels()
    with aioresponses() as mock:
        await start_live(channel, rasa_turn, mock)
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        store.broken = True
        await receive_close(channel)
    assert await delivered_texts(channel) == [TEXTS.agent_closed]  # the user is told all the same
    assert channel.core.registry.get("u1") is None

    rasa_turn.reset_mock()
    with pytest.raises(StoreUnavailable):  # the bot must not answer on a tracker that says "in handoff"
        await say(channel, rasa_turn, "hi")
    rasa_turn.assert_not_awaited()

    store.broken = False
    assert (await say(channel, rasa_turn, "hi"))[0]["text"].startswith("Hello!")
    values = await slots(agent)
    assert values["handoff_active"] is False and values["live_chat_id"] is None
    tracker = await agent.tracker_store.retrieve("u1")
    texts = [event.text for event in tracker.events if event.type_name in ("user", "bot")]
    # The end is saved before the next turn, and the hand-back turn it owes runs in between (soak finding 16).
    assert texts.index(TEXTS.agent_closed) < texts.index(RATING_QUESTION) < texts.index("hi")
    assert await told_ends(agent) == (1, 1)
    assert await delivered_texts(channel) == [RATING_QUESTION]  # after the notice, read above

async def test_an_unsaved_end_is_saved_in_the_background_once_the_store_is_back(channels, rasa_turn, store, agent, monkeypatch):
    channel = channels()
    monkeypatch.setattr(channel.core.unsaved, "pauses", Pauses((0.05,)))
    with aioresponses() as mock:
        await start_live(channel, rasa_turn, mock)
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        store.broken = True
        await receive_close(channel)
    failures = store.failures
    await wait_until(lambda: store.failures > failures)  # retried while it fails
    store.broken = False
    await wait_until(lambda: not channel.core.unsaved)
    assert (await slots(agent))["handoff_active"] is False
    await channel.core.work.wait(timeout=5)
    assert await told_ends(agent) == (1, 1)  # the hand-back turn the end owed has run

async def test_an_agent_message_pushed_while_the_user_ends_is_delivered_before_the_farewell_or_not_at_all(
    channels, rasa_turn, agent
):
    channel = channels()
    with aioresponses() as mock:
        await start_live(channel, rasa_turn, mock)
        await channel.core.callbacks.receive(agent_push("before the end", "m1"))
        held = HeldLeave(channel)
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        ending = asyncio.ensure_future(say(channel, rasa_turn, "/end_chat"))
        await held.called.wait()
        await channel.core.callbacks.find_chat(agent_push("during the end", "m2"))  # acknowledged
        await channel.core.callbacks.receive(agent_push("during the end", "m2"))
        held.release.set()
        assert [reply["text"] for reply in await ending] == [TEXTS.user_ended]
    assert await delivered_texts(channel) == ["before the end"]
    texts = await transcript(agent)
    assert "during the end" not in texts
    assert texts.index("before the end") < texts.index(TEXTS.user_ended)

async def test_a_connect_poll_in_flight_when_the_user_ends_delivers_nothing_after_the_farewell(agent, rasa_turn, monkeypatch):
    channel = new_channel(agent, poll_interval=0.01)
    polling, answer = asyncio.Event(), asyncio.Event()

    async def slow_poll(chat, cursor):
        polling.set()
        await answer.wait()
        return PollResult([AgentMessage("m9", "too late", "Beth", 9)], 9, ("m9",))

    channel.core.backend.poll = slow_poll
    try:
        with aioresponses() as mock:
            await start_live(channel, rasa_turn, mock)
            await polling.wait()
            poller = channel.core.registry.get("u1").poller
            mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
            assert [reply["text"] for reply in await say(channel, rasa_turn, "/end_chat")] == [TEXTS.user_ended]
            answer.set()
            await asyncio.wait([poller], timeout=5)
            assert poller.cancelled()  # the poll in flight was dropped, its messages stay unread in ServiceNow
        assert await delivered_texts(channel) == []
        assert "too late" not in await transcript(agent)
    finally:
        await close(channel)


# -- an end that reaches several replicas while Redis is away (soak findings 16 and 17)

RATING_QUESTION = "How was your chat with the agent?"


async def live_on_two_replicas(replicas, rasa_turn, mock):
    """A opens the chat, B holds it too (a message routed through B)."""
    a, b = replicas(), replicas()
    await start_live(a, rasa_turn, mock)
    mock.post(MESSAGES, payload={"result": {"sys_id": "m1", "timestamp": 1}})
    assert await say(b, rasa_turn, "hello agent") == []
    for channel in (a, b):
        channel.core.records.pauses = Pauses((0.05,))
    return a, b


async def agent_closes_on(channel):
    await channel.core.ending.closed_by_servicenow(channel.core.registry.get("u1"), ChatClosed(CloseReason.AGENT_CLOSED))


async def told_ends(agent):
    """What the tracker has of the end: farewells and hand-back turns."""
    tracker = await agent.tracker_store.retrieve("u1")
    farewells = [e for e in tracker.events if e.type_name == "bot" and e.text == TEXTS.agent_closed]
    hand_backs = [e for e in tracker.events if e.type_name == "user" and e.intent_name == "handoff_ended"]
    return len(farewells), len(hand_backs)


async def closed_while_redis_is_away(replicas, rasa_turn, redis_server, mock, hold_s=None):
    """One replica's chat, closed by the agent while Redis is away; its
    removal is retried only after a minute, so what lands it is the test's."""
    a = replicas()
    await start_live(a, rasa_turn, mock)
    a.core.records.pauses = Pauses((60.0,))
    if hold_s is not None:
        a.core.ending.hold_s = hold_s
    mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
    redis_server.connected = False
    await agent_closes_on(a)
    return a


async def test_a_close_two_replicas_take_while_redis_is_away_is_told_once(replicas, rasa_turn, redis_server, agent):
    with aioresponses() as mock:
        a, b = await live_on_two_replicas(replicas, rasa_turn, mock)
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}}, repeat=True)
        redis_server.connected = False
        await agent_closes_on(a)
        await agent_closes_on(b)
        assert "u1" in a.core.held and "u1" in b.core.held  # nobody knows yet which replica ended it
        assert (await slots(agent))["handoff_active"] is True
        redis_server.connected = True
        await wait_until(lambda: not a.core.held and not b.core.held)
        assert len(requests_to(mock, "POST", LEAVE)) == 1
    assert await delivered_texts(a) == [TEXTS.agent_closed, RATING_QUESTION]
    assert await told_ends(agent) == (1, 1)
    assert (await slots(agent))["handoff_active"] is False


async def test_a_held_end_is_dropped_when_another_replica_removed_the_record_first(replicas, rasa_turn, redis_server, agent):
    with aioresponses() as mock:
        a, b = await live_on_two_replicas(replicas, rasa_turn, mock)
        a.core.records.pauses = Pauses((60.0,))  # A's removal waits for the next message
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}}, repeat=True)
        redis_server.connected = False
        await agent_closes_on(a)
        redis_server.connected = True
        assert await a.core.chats.refresh("u1") is None  # A does not take back a chat it is ending
        await agent_closes_on(b)  # B reads the close once Redis is back, and ends the chat at once
        await b.core.outbox.drain(timeout=5)
        rasa_turn.reset_mock()
        replies = await say(a, rasa_turn, "hi")  # A's removal lands: the chat was gone
    assert replies[0]["text"].startswith("Hello!")
    assert not a.core.held
    assert len(requests_to(mock, "POST", LEAVE)) == 1
    assert await delivered_texts(a) == [TEXTS.agent_closed, RATING_QUESTION]  # the answer to "hi" was in its request
    assert await told_ends(agent) == (1, 1)


async def test_an_end_another_replica_told_first_keeps_this_replicas_transcript(replicas, rasa_turn, redis_server, agent):
    with aioresponses() as mock:
        a, b = await live_on_two_replicas(replicas, rasa_turn, mock)
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}}, repeat=True)
        await a.core.callbacks.receive(agent_push("Your printer is back online.", "m-a1"))
        await a.core.work.wait(timeout=5)
        await agent_closes_on(b)  # B removes the record and tells the user
        await agent_closes_on(a)  # A's removal finds it gone
        await a.core.pending.flush("u1")
    assert not a.core.registry.get("u1")
    # Delivered by A, so A records it (after B's end, which did not have it).
    assert (await transcript(agent)).count("Your printer is back online.") == 1
    assert await told_ends(agent) == (1, 1)


async def test_a_held_end_is_dropped_when_the_tracker_shows_another_replica_told_it(replicas, rasa_turn, redis_server, agent):
    with aioresponses() as mock:
        a, b = await live_on_two_replicas(replicas, rasa_turn, mock)
        a.core.records.pauses = Pauses((60.0,))  # A's removal stays pending: B's lands
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}}, repeat=True)
        redis_server.connected = False
        # A user's message on A could not be sent: A answers the end in that request.
        answer = await a.core.ending.end(a.core.registry.get("u1"), EndReason.FAILED, in_request=True, undelivered=True)
        assert answer and not a.core.held
        await agent_closes_on(b)  # B reads the close while Redis is away: held
        assert "u1" in b.core.held
        redis_server.connected = True
        await wait_until(lambda: not b.core.held)
    assert TEXTS.agent_closed not in await delivered_texts(b)  # A wrote the end to the tracker: B said nothing
    assert await told_ends(agent) == (0, 1)  # A's end, with its hand-back turn; none from B


async def test_a_message_while_an_end_is_held_waits_for_it_then_reaches_the_bot(replicas, rasa_turn, redis_server, agent):
    with aioresponses() as mock:
        a = await closed_while_redis_is_away(replicas, rasa_turn, redis_server, mock)
        rasa_turn.reset_mock()
        with pytest.raises(StoreUnavailable):
            await say(a, rasa_turn, "hi")
        redis_server.connected = True
        replies = await say(a, rasa_turn, "hi")  # lands the removal, and the end is told before the bot's turn
    assert replies[0]["text"].startswith("Hello!")
    rasa_turn.assert_awaited_once()
    assert await told_ends(agent) == (1, 1)
    tracker = await agent.tracker_store.retrieve("u1")
    texts = [event.text for event in tracker.events if event.type_name in ("user", "bot")]
    assert texts.index(TEXTS.agent_closed) < texts.index(RATING_QUESTION) < texts.index("hi")


async def test_a_handoff_the_bot_asks_for_while_an_end_is_held_opens_after_that_end_is_told(
    replicas, rasa_turn, redis_server, agent
):
    second = "d" * 32
    with aioresponses() as mock:
        a = await closed_while_redis_is_away(replicas, rasa_turn, redis_server, mock)
        redis_server.connected = True  # A's removal is retried only in a minute: the end stays held
        mock.post(SESSIONS, payload={"result": {"group": second, "state": 1}})
        await a.core.out_of_band_output().send_custom_json("u1", {"handoff": {}})  # Rasa's HTTP API, say
        await a.core.work.wait(timeout=10)
        assert not a.core.held
        assert a.core.registry.get("u1").chat_id == second
    assert await delivered_texts(a) == [TEXTS.agent_closed, RATING_QUESTION, TEXTS.connecting]
    assert await told_ends(agent) == (1, 1)
    assert (await slots(agent))["handoff_active"] is True


async def test_a_store_away_past_the_hold_ends_the_handoff_here_anyway(replicas, rasa_turn, redis_server, agent):
    with aioresponses() as mock:
        a = await closed_while_redis_is_away(replicas, rasa_turn, redis_server, mock, hold_s=0.1)
        await wait_until(lambda: not a.core.held)
        # The tracker (another store here) took the end: the user is not left in a dead handoff.
        assert (await slots(agent))["handoff_active"] is False
        assert await told_ends(agent) == (1, 1)
        redis_server.connected = True
        await a.core.outbox.drain(timeout=5)  # what was said waited in the process for Redis
    assert await delivered_texts(a) == [TEXTS.agent_closed, RATING_QUESTION]


async def test_a_replica_that_stops_while_an_end_is_held_tells_the_user_before_it_goes(replicas, rasa_turn, redis_server, agent):
    with aioresponses() as mock:
        a = await closed_while_redis_is_away(replicas, rasa_turn, redis_server, mock)
        await a.core.shutdown(timeout=2)  # the last removal fails too: the end is told all the same
        assert not a.core.held
    assert (await slots(agent))["handoff_active"] is False
    assert await told_ends(agent) == (1, 1)
