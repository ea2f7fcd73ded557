"""Fixtures of the core's tests: a tracker store that breaks on demand, and
channels standing for replicas over one Redis (fakeredis)."""

import uuid

import fakeredis
import pytest
from fakeredis import aioredis as fake_aioredis

from connectors.servicenow import ServiceNowInput
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.store.redis import RedisStore
from tests.unit.core.helpers import StoreSwitch
from tests.unit.support import OPTIONS, bound, close


@pytest.fixture
def store(agent, monkeypatch):
    return StoreSwitch(agent, monkeypatch)


@pytest.fixture
def redis_server():
    return fakeredis.FakeServer()


@pytest.fixture
async def replicas(agent, redis_server):
    made = []
    prefix = f"t{uuid.uuid4().hex[:6]}:"

    def new(store=None):
        store = store or RedisStore(fake_aioredis.FakeRedis(server=redis_server), prefix=prefix)
        channel = bound(ServiceNowInput(ServiceNowSettings.from_credentials(OPTIONS), store=store), agent)
        made.append(channel)
        return channel

    yield new
    for channel in made:
        await close(channel)
        await channel.core.store.aclose()

