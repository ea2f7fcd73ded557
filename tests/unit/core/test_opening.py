"""Starting a handoff: its saves, the messages sent while it opens, one chat
per user across replicas, and the limits that refuse a start."""

import asyncio
from unittest.mock import AsyncMock

import pytest
from aioresponses import aioresponses
from aiohttp.client import URL

from connectors.servicenow.errors import ConversationBusy, StoreUnavailable
from connectors.servicenow.payloads import UserPayload
from connectors.servicenow.rasa_glue.slots import WRITE_PAUSES
from tests.unit.core.helpers import HeldOpen, breaking_after, receive_close, start_live
from tests.unit.support import (
    GROUP,
    LEAVE,
    MESSAGES,
    SESSIONS,
    TEXTS,
    body_of,
    close,
    delivered_texts,
    new_channel,
    requests_to,
    say,
    slots,
    wait_until,
)


async def test_a_handoff_state_write_rides_out_a_brief_failure(channels, rasa_turn, store, agent):
    store.saves_to_fail = len(WRITE_PAUSES.delays)  # every attempt but the last fails
    with aioresponses() as mock:
        await start_live(channels(), rasa_turn, mock)
        assert not requests_to(mock, "POST", LEAVE)
    assert store.failures == len(WRITE_PAUSES.delays)
    assert (await slots(agent))["handoff_active"] is True

async def test_a_start_that_cannot_be_saved_leaves_the_new_chat_and_tells_the_user(channels, rasa_turn, store, agent):
    channel = channels()
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        rasa_turn.side_effect = breaking_after(agent.handle_message, store)
        replies = await say(channel, rasa_turn, "talk to live agent")
        assert len(requests_to(mock, "POST", LEAVE)) == 1
    assert [reply["text"] for reply in replies] == [TEXTS.start_failed]
    # Each attempt of the write once, and one read for each notice rendered
    # from the demo domain (utter_servicenow_connecting, _start_failed).
    assert store.failures == len(WRITE_PAUSES.delays) + 1 + 2
    assert channel.core.registry.get("u1") is None
    store.broken = False
    assert (await slots(agent))["handoff_active"] is False

async def test_no_new_handoff_starts_before_the_end_of_the_last_one_is_saved(channels, rasa_turn, store, agent):
    channel = channels()
    with aioresponses() as mock:
        await start_live(channel, rasa_turn, mock)
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        store.broken = True
        await receive_close(channel)
        mock.post(SESSIONS, payload={"result": {"group": "d" * 32, "state": 1}})
        output = channel.get_output_channel()  # through Rasa's API, where no webhook turn saves it first
        await output.send_response("u1", {"custom": {"handoff": {}}})
        await asyncio.gather(*channel.core.work)
        assert len(requests_to(mock, "POST", SESSIONS)) == 1  # only the first handoff's
    assert await delivered_texts(channel) == [TEXTS.agent_closed, TEXTS.start_failed]
    store.broken = False
    assert await channel.core.chats.active_chat("u1") is None  # saves the end first
    assert (await slots(agent))["handoff_active"] is False

async def test_messages_sent_while_the_chat_opens_reach_the_agent_in_order(channels, rasa_turn):
    channel = channels()
    held = HeldOpen(channel)
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        mock.post(MESSAGES, payload={"result": {"sys_id": "m", "timestamp": 1}}, repeat=True)
        trigger = asyncio.ensure_future(say(channel, rasa_turn, "talk to live agent"))
        await held.called.wait()
        later = [asyncio.ensure_future(say(channel, rasa_turn, f"detail {n}")) for n in range(3)]
        await asyncio.sleep(0)  # wait-ok: lets the three arrive before the chat opens
        held.release.set()
        assert [reply["text"] for reply in await trigger] == [TEXTS.connecting]
        assert await asyncio.gather(*later) == [[], [], []]
        sent = [body_of(mock, "POST", MESSAGES, i)["message"] for i in range(3)]
    assert sent == ["detail 0", "detail 1", "detail 2"]
    rasa_turn.assert_awaited_once()  # the bot saw the request only

async def test_messages_sent_while_an_open_fails_get_an_answer_not_the_bot(channels, rasa_turn):
    channel = channels()
    held = HeldOpen(channel)
    with aioresponses() as mock:
        mock.post(SESSIONS, status=503, repeat=True)
        trigger = asyncio.ensure_future(say(channel, rasa_turn, "talk to live agent"))
        await held.called.wait()
        later = asyncio.ensure_future(say(channel, rasa_turn, "my VPN is broken"))
        await asyncio.sleep(0)  # wait-ok: lets it arrive before the open fails
        held.release.set()
        assert [reply["text"] for reply in await trigger] == [TEXTS.start_failed]
        assert [reply["text"] for reply in await later] == [TEXTS.message_not_delivered]
    rasa_turn.assert_awaited_once()
    # A message sent after the failure is the bot's again.
    assert (await say(channel, rasa_turn, "hi"))[0]["text"].startswith("Hello!")

async def test_a_message_waits_for_a_handoff_opened_through_rasas_api(channels, rasa_turn):
    channel = channels()
    held = HeldOpen(channel)
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        mock.post(MESSAGES, payload={"result": {"sys_id": "m", "timestamp": 1}})
        await channel.get_output_channel().send_response("u1", {"custom": {"handoff": {}}})
        await held.called.wait()
        message = asyncio.ensure_future(say(channel, rasa_turn, "hello agent"))
        await asyncio.sleep(0)  # wait-ok: lets it arrive before the chat opens
        held.release.set()
        assert await message == []
        assert body_of(mock, "POST", MESSAGES) == {"message": "hello agent"}
    rasa_turn.assert_not_awaited()

async def test_a_message_that_waits_too_long_for_the_open_is_told_to_retry(channels, rasa_turn):
    channel = channels()
    held = HeldOpen(channel)
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        await channel.get_output_channel().send_response("u1", {"custom": {"handoff": {}}})
        await held.called.wait()
        with pytest.raises(ConversationBusy):
            await channel.core.chats.active_chat("u1", wait_s=0.01)
        held.release.set()
        await wait_until(lambda: channel.core.registry.get("u1") is not None)

async def test_a_second_replica_cannot_start_a_second_chat_for_the_same_user(replicas, rasa_turn):
    a, b = replicas(), replicas()
    with aioresponses() as mock:
        await start_live(a, rasa_turn, mock)
        other = "d" * 32
        mock.post(SESSIONS, payload={"result": {"group": other, "state": 1}})
        mock.post(f"https://acme.service-now.com/api/now/connect/support/sessions/{other}/leave", payload={})
        # B's own start (out of band: Rasa's API) loses to the filed record and leaves its chat.
        from connectors.servicenow.servicenow.base import HandoffRequest

        assert await b.core.opening.start(HandoffRequest(sender_id="u1", text="agent please"), in_request=True) == []
        assert len(requests_to(mock, "POST", f"https://acme.service-now.com/api/now/connect/support/sessions/{other}/leave")) == 1
    assert (await a.core.store.get_handoff("u1")).chat_id == GROUP

async def test_a_handoff_is_not_opened_while_redis_is_down(replicas, rasa_turn, redis_server):
    a = replicas()
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        redis_server.connected = False
        # The routing check itself fails first: 503, the bot is not asked.
        with pytest.raises(StoreUnavailable):
            await say(a, rasa_turn, "talk to live agent")
        assert not requests_to(mock, "POST", SESSIONS)

def opened(mock):
    return len(mock.requests.get(("POST", URL(SESSIONS)), []))

def make_channel(agent, **options):
    return new_channel(agent, retry_attempts=1, **options)

async def ask_for_agent(channel, agent, sender):
    turn = AsyncMock(side_effect=agent.handle_message)
    replies = await channel.handle(UserPayload(sender=sender, message="talk to live agent"), turn)
    return [reply["text"] for reply in replies]

async def test_beyond_max_live_chats_the_user_hears_that_agents_are_busy(agent):
    channel = make_channel(agent, max_live_chats=2)
    try:
        with aioresponses() as mock:
            for n in range(3):
                mock.post(SESSIONS, payload={"result": {"group": f"group-{n}"}})
            assert await ask_for_agent(channel, agent, "busy-1") == [TEXTS.connecting]
            assert await ask_for_agent(channel, agent, "busy-2") == [TEXTS.connecting]
            assert await ask_for_agent(channel, agent, "busy-3") == [TEXTS.handoff_busy]
            assert opened(mock) == 2
        assert len(channel.core.registry) == 2
        tracker = await agent.tracker_store.retrieve("busy-3")
        assert tracker.get_slot("handoff_active") is False
        assert tracker.events[-1].text == TEXTS.handoff_busy  # the user's transcript says why
    finally:
        await close(channel)

async def test_a_conversation_that_keeps_asking_is_rate_limited(agent):
    channel = make_channel(agent, handoff_starts_per_minute=2, messages={"handoff_rate_limited": "Slow down."})
    try:
        with aioresponses() as mock:
            mock.post(SESSIONS, status=503, repeat=True)  # every start fails and the user asks again
            assert await ask_for_agent(channel, agent, "eager") == [TEXTS.start_failed]
            assert await ask_for_agent(channel, agent, "eager") == [TEXTS.start_failed]
            assert await ask_for_agent(channel, agent, "eager") == ["Slow down."]
            assert await ask_for_agent(channel, agent, "patient") == [TEXTS.start_failed]
            assert opened(mock) == 3
    finally:
        await close(channel)


async def test_a_record_filed_as_redis_went_away_is_removed_and_the_user_stays_with_the_bot(replicas, rasa_turn, redis_server):
    # Found by the soak: Redis stopped right as it stored the new handoff
    # record, so the reply was lost and the start failed (start_failed), but
    # the record stayed: the user's next messages went to a chat nobody was in.
    a = replicas()
    store = a.core.store
    create = store.create_handoff

    async def filed_then_lost(record):
        await create(record)
        redis_server.connected = False
        raise StoreUnavailable("Redis is unavailable: ConnectionError: Connection closed by server.")

    store.create_handoff = filed_then_lost
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        mock.post(LEAVE, payload={}, repeat=True)
        replies = await say(a, rasa_turn, "talk to live agent")
        assert [reply["text"] for reply in replies] == [TEXTS.start_failed]
        with pytest.raises(StoreUnavailable):  # Redis still down: not the bot, not the agent
            await say(a, rasa_turn, "hello?")
        redis_server.connected = True
        rasa_turn.reset_mock()
        replies = await say(a, rasa_turn, "hello?")
        assert not requests_to(mock, "POST", MESSAGES)
    rasa_turn.assert_awaited_once()
    assert replies and replies[0]["text"].startswith("Hello!")
    assert await store.get_handoff("u1") is None


async def test_max_live_chats_counts_the_chats_of_every_replica(agent, redis_server):
    """Issue 22: the limit was per process; with redis_url it is the deployment's."""
    import uuid

    from fakeredis import aioredis as fake_aioredis

    from connectors.servicenow import ServiceNowInput
    from connectors.servicenow.config import ServiceNowSettings
    from connectors.servicenow.store.redis import RedisStore
    from tests.unit.support import OPTIONS, bound

    prefix = f"t{uuid.uuid4().hex[:6]}:"
    settings = ServiceNowSettings.from_credentials({**OPTIONS, "max_live_chats": 2, "retry_attempts": 1})
    a, b = (
        bound(ServiceNowInput(settings, store=RedisStore(fake_aioredis.FakeRedis(server=redis_server), prefix=prefix)), agent)
        for _ in range(2)
    )
    try:
        with aioresponses() as mock:
            for n in range(3):
                mock.post(SESSIONS, payload={"result": {"group": f"group-{n}"}})
            assert await ask_for_agent(a, agent, "wide-1") == [TEXTS.connecting]
            assert await ask_for_agent(b, agent, "wide-2") == [TEXTS.connecting]
            assert await ask_for_agent(a, agent, "wide-3") == [TEXTS.handoff_busy]
            assert await ask_for_agent(b, agent, "wide-4") == [TEXTS.handoff_busy]
            assert opened(mock) == 2
            # One ends on b: a has room again.
            mock.post(LEAVE, payload={"result": {"state": 7}})
            turn = AsyncMock(side_effect=agent.handle_message)
            await b.handle(UserPayload(sender="wide-2", message="/end_chat"), turn)
            assert await ask_for_agent(a, agent, "wide-3") == [TEXTS.connecting]
    finally:
        for channel in (a, b):
            await close(channel)
            await channel.core.store.aclose()


async def test_the_deployment_starts_a_burst_of_chats_then_tells_the_others_agents_are_busy(agent):
    channel = make_channel(agent, deployment_handoff_starts_per_minute=60, deployment_handoff_start_burst=3)
    try:
        with aioresponses() as mock:
            mock.post(SESSIONS, payload={"result": {"group": GROUP}}, repeat=True)
            answers = [await ask_for_agent(channel, agent, f"anonymous-{n}") for n in range(6)]
            assert answers == [[TEXTS.connecting]] * 3 + [[TEXTS.handoff_busy]] * 3
            assert opened(mock) == 3
    finally:
        await close(channel)
