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


async def test_a_waiter_cancelled_or_failing_leaves_the_lock_to_the_next_and_no_entry_behind():
    locks = ConversationLocks()
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder():
        async with locks.hold("u1", timeout=1):
            held.set()
            await release.wait()

    async def waiter():
        async with locks.hold("u1", timeout=5):
            return "never"

    first = asyncio.ensure_future(holder())
    await held.wait()
    second = asyncio.ensure_future(waiter())
    await asyncio.sleep(0)  # wait-ok: lets the waiter queue behind the holder
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    release.set()
    await first
    assert len(locks) == 0

    with pytest.raises(RuntimeError):
        async with locks.hold("u1", timeout=1):
            raise RuntimeError("the message's handling failed")
    assert len(locks) == 0
    async with locks.hold("u1", timeout=0.01):  # free again at once
        pass
