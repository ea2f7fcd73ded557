"""The core as the doors compose it: the store it runs on, and taking up the
handoffs of before a restart."""

import asyncio

from aioresponses import aioresponses

from connectors.servicenow import ServiceNowInput
from connectors.servicenow.retry import Pauses
from connectors.servicenow.store import MemoryStore
from connectors.servicenow.store.redis import RedisStore
from tests.unit.core.helpers import start_live
from tests.unit.support import GROUP, OPTIONS, wait_until


def test_without_redis_url_the_store_is_in_process_and_with_it_redis():
    assert isinstance(ServiceNowInput.from_credentials(OPTIONS).core.store, MemoryStore)
    channel = ServiceNowInput.from_credentials({**OPTIONS, "redis_url": "redis://127.0.0.1:1/0"})
    assert isinstance(channel.core.store, RedisStore)

async def test_the_resume_after_a_restart_keeps_trying_until_the_store_is_back(channels, rasa_turn, store, monkeypatch):
    monkeypatch.setattr("connectors.servicenow.core.core.RESUME_PAUSES", Pauses((0.01,)))
    with aioresponses() as mock:
        await start_live(channels(), rasa_turn, mock)
    restarted = channels()
    store.broken = True
    resuming = asyncio.ensure_future(restarted.core.resume())
    await wait_until(lambda: store.failures >= 3)  # tried, and tried again
    assert not resuming.done()
    store.broken = False
    await asyncio.wait_for(resuming, timeout=5)
    assert restarted.core.registry.get("u1").chat_id == GROUP


def test_virtual_agent_chats_are_reconciled_unless_turned_off():
    virtual_agent = {
        "instance_url": "https://acme.service-now.com", "api": "virtual_agent", "username": "u", "password": "p",
        "webhook_secret": "s",
    }
    on = ServiceNowInput.from_credentials(virtual_agent).core
    assert on.reconciler is not None and on.polling.watches
    assert on.dispatcher._keyed and on.dispatcher._order is not None
    off = ServiceNowInput.from_credentials({**virtual_agent, "reconcile": False}).core
    assert off.reconciler is None and not off.polling.watches
    assert not off.dispatcher._keyed and off.dispatcher._order is None
    # Connect is polled, never reconciled.
    connect = ServiceNowInput.from_credentials(OPTIONS).core
    assert connect.reconciler is None and connect.polling.watches and not connect.dispatcher._keyed
