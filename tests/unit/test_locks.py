"""One lock per conversation, first come first served."""

import asyncio

import pytest

from connectors.servicenow.errors import ConversationBusy
from connectors.servicenow.locks import ChatLock, ConversationLocks


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


# -- a live chat's lock --------------------------------------------------------


async def hold_until_released(lock, done):
    """A holder of ``lock``, once it holds it; it appends "holder" to ``done``
    and lets go when the returned event is set."""
    held, release = asyncio.Event(), asyncio.Event()

    async def holder():
        async with lock:
            held.set()
            await release.wait()
            done.append("holder")

    task = asyncio.ensure_future(holder())
    await held.wait()
    return task, release


async def test_a_chat_lock_serves_in_arrival_order_and_keeps_no_asyncio_lock_once_free():
    lock = ChatLock()
    order = []

    async def turn(n):
        async with lock:
            order.append(n)
            await asyncio.sleep(0)  # wait-ok: gives the others a chance to overtake

    await asyncio.gather(*(turn(n) for n in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert not lock.locked() and lock._lock is None

    async with lock:  # alone: no asyncio.Lock is made
        assert lock.locked() and lock._lock is None
    assert not lock.locked()


async def test_a_chat_lock_holder_keeps_it_while_others_wait_and_a_cancelled_waiter_leaves_nothing():
    lock = ChatLock()
    inside = []

    async def waiter(name):
        async with lock:
            inside.append(name)

    first, release = await hold_until_released(lock, inside)
    cancelled = asyncio.ensure_future(waiter("cancelled"))
    second = asyncio.ensure_future(waiter("second"))
    await asyncio.sleep(0)  # wait-ok: lets both waiters queue behind the holder
    assert not second.done()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    release.set()
    await asyncio.gather(first, second)
    assert inside == ["holder", "second"]
    assert not lock.locked() and lock._lock is None

    with pytest.raises(RuntimeError):
        async with lock:
            raise RuntimeError("the delivery failed")
    assert not lock.locked()
    async with lock:  # free again at once
        pass


async def test_a_chat_lock_woken_waiter_keeps_its_place_against_a_late_arrival():
    lock = ChatLock()
    order = []

    async def user(name):
        async with lock:
            order.append(name)

    first, release = await hold_until_released(lock, [])
    early = asyncio.ensure_future(user("early"))
    await asyncio.sleep(0)  # wait-ok: the early one queues
    release.set()
    await first  # released: "early" is woken but has not run yet
    late = asyncio.ensure_future(user("late"))
    await asyncio.gather(early, late)
    assert order == ["early", "late"]
