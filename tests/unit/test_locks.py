"""One lock per conversation, first come first served."""

import asyncio

import pytest

from connectors.servicenow.errors import ConversationBusy
from connectors.servicenow.locks import ConversationLocks


async def test_conversation_locks_serve_in_arrival_order_and_forget_idle_conversations():
    locks = ConversationLocks()
    order = []

    async def turn(n):
        async with locks.hold("u1", timeout=1):
            order.append(n)
            await asyncio.sleep(0)  # wait-ok: gives the others a chance to overtake

    await asyncio.gather(*(turn(n) for n in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert len(locks) == 0

    async with locks.hold("u1", timeout=1):
        with pytest.raises(ConversationBusy):
            async with locks.hold("u1", timeout=0.01):
                pass
    assert len(locks) == 0
