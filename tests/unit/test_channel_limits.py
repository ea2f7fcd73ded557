"""Limits on handoff starts and typing, seen through the channel's turn
handling, with the demo model in process and ServiceNow mocked."""

from types import SimpleNamespace
from unittest.mock import AsyncMock

import pytest
from aioresponses import aioresponses
from aiohttp.client import URL

from tests.assistant import demo_agent
from connectors.servicenow import ServiceNowInput
from connectors.servicenow.payloads import UserPayload
from connectors.servicenow.texts import UserTexts

BASE = "https://acme.service-now.com"
SESSIONS = f"{BASE}/api/now/connect/support/queues/q1/sessions"
TEXTS = UserTexts()


@pytest.fixture
async def agent(demo_model):
    return await demo_agent(demo_model)


def opened(mock):
    return len(mock.requests.get(("POST", URL(SESSIONS)), []))


def make_channel(agent, **options):
    channel = ServiceNowInput.from_credentials(
        {
            "instance_url": BASE, "username": "rasa.integration", "password": "pw", "queue_id": "q1",
            "poll_interval": 600, "idle_poll_interval": 600, "session_check_interval": 600,
            "retry_attempts": 1, **options,
        }
    )
    channel.bind(SimpleNamespace(ctx=SimpleNamespace(agent=agent)))
    return channel


async def close(channel):
    await channel.handoffs.shutdown(timeout=1)
    await channel.http.aclose()


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
        assert len(channel.handoffs.registry) == 2
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


async def test_typing_outside_a_handoff_touches_neither_servicenow_nor_the_tracker_store(agent, monkeypatch):
    channel = make_channel(agent, api="virtual_agent", webhook_secret="s")
    retrieve = AsyncMock(side_effect=agent.tracker_store.retrieve)
    monkeypatch.setattr(agent.tracker_store, "retrieve", retrieve)
    try:
        with aioresponses() as mock:
            for n in range(1000):
                assert channel.handoffs.user_typing(f"anonymous-{n}", n % 2 == 0) is False
            assert not mock.requests
        retrieve.assert_not_awaited()
        assert len(channel.handoffs.typing) == 0
        assert not channel.handoffs.registry.known_inactive("anonymous-1")
    finally:
        await close(channel)
