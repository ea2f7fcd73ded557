"""Outboxes for the outbox tests: on the memory store (one replica), and on
one Redis through fakeredis for two replicas (the same flows over a real
redis-server and real ``rasa run`` processes are in tests/e2e)."""

import uuid

import fakeredis
import pytest
from fakeredis import aioredis as fake_aioredis

from connectors.servicenow.outbox.base import Outgoing
from connectors.servicenow.outbox.stream import Outbox
from connectors.servicenow.store import MemoryStore
from connectors.servicenow.store.redis import RedisStore

CALLBACK = "http://frontend.test/callback"


def message(text, sender="u1"):
    return Outgoing({"recipient_id": sender, "text": text})


async def take(subscription, count, heartbeat=2.0):
    items = []
    while len(items) < count:
        item = await subscription.next(heartbeat)
        assert item is not None, f"only {len(items)} of {count} items came"
        items.append(item)
    return items


async def texts(subscription, count):
    return [item.payload["text"] for item in await take(subscription, count)]


@pytest.fixture
async def outboxes():
    """``new(store=None, callback_url=None, **options)``: an outbox on the
    memory store, or on the given store."""
    made = []

    def new(store=None, callback_url=None, **options):
        outbox = Outbox(store if store is not None else MemoryStore(), callback_url, owner=uuid.uuid4().hex[:8], **options)
        made.append(outbox)
        return outbox

    yield new
    for outbox in made:
        await outbox.drain(1)
        await outbox.aclose()


@pytest.fixture
def server():
    return fakeredis.FakeServer()


@pytest.fixture
async def replicas(server, outboxes):
    """``new(callback_url=None, **options)``: an outbox on its own connection
    to one (fake) Redis: two of them stand for two replicas."""
    stores = []
    prefix = f"t{uuid.uuid4().hex[:6]}:"

    def new(callback_url=None, **options):
        store = RedisStore(fake_aioredis.FakeRedis(server=server), prefix=prefix)
        stores.append(store)
        return outboxes(store, callback_url, **options)

    yield new
    for store in stores:
        await store.aclose()
