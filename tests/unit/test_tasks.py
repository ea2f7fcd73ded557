"""connectors/servicenow/tasks.py: waiting on an event with a bound, and a
cancel that comes with the event is never lost."""

import asyncio

import pytest

from connectors.servicenow.tasks import event_within


async def test_an_event_set_in_time_is_true_and_one_that_never_comes_is_false():
    event = asyncio.Event()
    asyncio.get_running_loop().call_soon(event.set)
    assert await event_within(event, 5) is True
    assert await event_within(asyncio.Event(), 0.01) is False
    assert await event_within(event, 0) is True  # already set


async def test_a_cancel_in_the_same_turn_as_the_event_is_not_lost():
    # asyncio.wait_for(event.wait(), ...) returns True here before Python 3.12 (CPython gh-86296).
    event = asyncio.Event()
    waiting = asyncio.ensure_future(event_within(event, 10))
    await asyncio.sleep(0)  # wait-ok: one turn of the loop, so the task waits first
    event.set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
