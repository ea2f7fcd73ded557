"""The channel's handling of a turn, with the demo model loaded in process and
ServiceNow mocked with aioresponses."""

import asyncio
import json
from types import SimpleNamespace
from unittest.mock import AsyncMock

import aiohttp
import pytest
from aioresponses import aioresponses

from tests.assistant import demo_agent
from connectors.servicenow import ServiceNowInput
from connectors.servicenow.payloads import UserPayload
from connectors.servicenow.texts import UserTexts

BASE = "https://acme.service-now.com"
GROUP = "c" * 32
SESSIONS = f"{BASE}/api/now/connect/support/queues/q1/sessions"
MESSAGES = f"{BASE}/api/now/connect/conversations/{GROUP}/messages"
LEAVE = f"{BASE}/api/now/connect/support/sessions/{GROUP}/leave"
TEXTS = UserTexts()


@pytest.fixture
async def agent(demo_model):
    return await demo_agent(demo_model)


@pytest.fixture
async def channel(agent):
    channel = ServiceNowInput.from_credentials(
        {
            "instance_url": BASE, "username": "rasa.integration", "password": "pw", "queue_id": "q1",
            # No poll inside a test: these tests are about the turn, not the relay.
            "poll_interval": 600, "idle_poll_interval": 600, "session_check_interval": 600,
            "retry_attempts": 2, "retry_backoff": 0,
        }
    )
    channel.bind(SimpleNamespace(ctx=SimpleNamespace(agent=agent)))
    yield channel
    await channel.handoffs.shutdown(timeout=1)
    await channel.http.aclose()


@pytest.fixture
def rasa_turn(agent):
    return AsyncMock(side_effect=agent.handle_message)


async def say(channel, rasa_turn, text, sender="u1"):
    return await channel.handle(UserPayload(sender=sender, message=text), rasa_turn)


async def slots(agent, sender="u1"):
    tracker = await agent.tracker_store.retrieve(sender)
    return tracker.current_slot_values()


def body_of(mock, method, url, index=-1):
    return json.loads(mock.requests[(method, aiohttp.client.URL(url))][index].kwargs["data"])


async def start(channel, rasa_turn, mock):
    mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
    return await say(channel, rasa_turn, "talk to live agent")


async def test_outside_a_handoff_the_bot_answers(channel, rasa_turn):
    replies = await say(channel, rasa_turn, "hello")
    assert replies[0]["text"].startswith("Hello!")
    rasa_turn.assert_awaited_once()


async def test_the_handoff_payload_opens_a_chat_and_sets_the_slots(channel, rasa_turn, agent):
    with aioresponses() as mock:
        replies = await start(channel, rasa_turn, mock)
        assert body_of(mock, "POST", SESSIONS) == {"message": "talk to live agent"}
    assert [reply["text"] for reply in replies] == [TEXTS.connecting]
    assert not [reply for reply in replies if "custom" in reply]  # the payload itself stays internal
    values = await slots(agent)
    assert values["handoff_active"] is True
    assert values["live_chat_id"] == GROUP
    assert values["live_chat_user"] == "rasa.integration"


async def test_during_a_handoff_messages_go_to_servicenow_not_to_rasa(channel, rasa_turn, agent):
    with aioresponses() as mock:
        await start(channel, rasa_turn, mock)
        rasa_turn.reset_mock()
        mock.post(MESSAGES, payload={"result": {"sys_id": "m1", "timestamp": 1}})
        assert await say(channel, rasa_turn, "hello") == []
        assert body_of(mock, "POST", MESSAGES) == {"message": "hello"}
    rasa_turn.assert_not_awaited()
    tracker = await agent.tracker_store.retrieve("u1")
    assert tracker.latest_message.text == "talk to live agent"


async def test_end_chat_leaves_clears_the_slots_and_hands_back_to_the_bot(channel, rasa_turn, agent):
    with aioresponses() as mock:
        await start(channel, rasa_turn, mock)
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        replies = await say(channel, rasa_turn, "/END_CHAT")
        assert ("POST", aiohttp.client.URL(LEAVE)) in mock.requests
    assert [reply["text"] for reply in replies] == [TEXTS.user_ended]
    assert (await slots(agent))["handoff_active"] is False
    rasa_turn.reset_mock()
    assert (await say(channel, rasa_turn, "hi"))[0]["text"].startswith("Hello!")
    rasa_turn.assert_awaited_once()


async def test_restart_during_a_handoff_ends_it_and_reaches_rasa(channel, rasa_turn, agent):
    with aioresponses() as mock:
        await start(channel, rasa_turn, mock)
        rasa_turn.reset_mock()
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        replies = await say(channel, rasa_turn, "/restart")
    assert replies[0]["text"] == TEXTS.user_ended
    assert rasa_turn.await_args.args[0].text == "/restart"
    tracker = await agent.tracker_store.retrieve("u1")
    assert tracker.events[-1].type_name in ("restart", "action")


async def test_when_servicenow_cannot_open_a_chat_the_user_stays_with_the_bot(channel, rasa_turn, agent):
    with aioresponses() as mock:
        mock.post(SESSIONS, status=503, repeat=True)
        replies = await say(channel, rasa_turn, "talk to live agent")
    assert [reply["text"] for reply in replies] == [TEXTS.start_failed]
    assert (await slots(agent))["handoff_active"] is False
    assert (await say(channel, rasa_turn, "hi"))[0]["text"].startswith("Hello!")


async def test_the_flag_check_reads_each_tracker_once_not_on_every_message(channel, rasa_turn, agent, monkeypatch):
    retrieve = AsyncMock(side_effect=agent.tracker_store.retrieve)
    monkeypatch.setattr(agent.tracker_store, "retrieve", retrieve)
    with aioresponses() as mock:
        await start(channel, rasa_turn, mock)
        mock.post(MESSAGES, payload={"result": {"sys_id": "m", "timestamp": 1}}, repeat=True)
        reads_after_start = retrieve.await_count
        for n in range(5):
            await say(channel, rasa_turn, f"message {n}")
    assert retrieve.await_count == reads_after_start  # slot writes aside, no reads while forwarding


async def test_a_handoff_requested_through_rasas_api_starts_out_of_band(channel, agent):
    subscription = channel.outbox.subscribe("u9")
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP}})
        output = channel.get_output_channel()
        await output.send_response("u9", {"text": "One moment.", "custom": {"handoff": {"message": "VPN is down"}}})
        items = [await subscription.next(heartbeat=5) for _ in range(3)]
        assert body_of(mock, "POST", SESSIONS) == {"message": "VPN is down"}
    subscription.close()
    assert [item.kind for item in items] == ["message", "handoff", "message"]
    assert items[0].payload["text"] == "One moment."
    assert items[2].payload["text"] == TEXTS.connecting
    assert (await slots(agent, "u9"))["handoff_active"] is True


async def test_asking_twice_opens_one_chat(channel, rasa_turn):
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP}}, repeat=True)
        # Depending on timing the second request reaches the agent as a message.
        mock.post(MESSAGES, payload={"result": {"sys_id": "m", "timestamp": 1}}, repeat=True)
        replies = await asyncio.gather(
            say(channel, rasa_turn, "talk to live agent"), say(channel, rasa_turn, "live agent")
        )
        opened = mock.requests[("POST", aiohttp.client.URL(SESSIONS))]
    assert len(opened) == 1
    assert [reply["text"] for turn in replies for reply in turn] == [TEXTS.connecting]


async def test_a_german_conversation_hears_the_domains_german_notices_with_their_placeholders(channel, rasa_turn, agent):
    await say(channel, rasa_turn, '/set_language{"language":"de"}')
    with aioresponses() as mock:
        mock.post(SESSIONS, status=503, repeat=True)
        replies = await say(channel, rasa_turn, "Mitarbeiter")
    assert [reply["text"] for reply in replies] == [
        "Leider konnte ich gerade keinen Mitarbeiter erreichen. Bitte versuchen Sie es in ein paar Minuten noch einmal."
    ]
    with aioresponses() as mock:
        await start(channel, rasa_turn, mock)
        mock.post(MESSAGES, status=500, repeat=True)
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        replies = await say(channel, rasa_turn, "Hallo?")
    lost, undelivered = [reply["text"] for reply in replies]
    assert lost.startswith(f"Die Verbindung zum Mitarbeiter ist leider abgebrochen. Chat {GROUP}, letzte Nachricht um ")
    assert "{last_message_at}" not in lost
    assert undelivered == "Ihre letzte Nachricht konnte dem Mitarbeiter nicht zugestellt werden."
    assert (await slots(agent))["handoff_active"] is False
