"""Fixtures of the unit tests that run the demo model in process."""

from unittest.mock import AsyncMock

import pytest

from tests.assistant import demo_agent
from tests.unit.support import close, new_channel


@pytest.fixture
async def agent(demo_model):
    return await demo_agent(demo_model)


@pytest.fixture
def rasa_turn(agent):
    """Rasa's ``on_new_message``: the agent handles the message (and the test sees whether it was asked)."""
    return AsyncMock(side_effect=agent.handle_message)


@pytest.fixture
async def channel(agent):
    channel = new_channel(agent)
    yield channel
    await close(channel)


@pytest.fixture
async def channels(agent):
    """Channels standing for processes that share the demo agent's tracker store (a restart, or replicas)."""
    made = []

    def new(**options):
        made.append(new_channel(agent, **options))
        return made[-1]

    yield new
    for channel in made:
        await close(channel)
