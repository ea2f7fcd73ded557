"""The timer loop on the in-process store: fires at the due time, woken by an
earlier timer, without polling in between; and the wait texts."""

import asyncio
import math
import time
from typing import List

import pytest

from connectors.servicenow.core.timers import TimerLoop, TimerSchedule, describe_duration, describe_seconds
from connectors.servicenow.store import MemoryStore, TimerClaim


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    async def claim_due_timers(self, *, hold: float = 30.0, limit: int = 100) -> List[TimerClaim]:
        self.looks += 1
        return await super().claim_due_timers(hold=hold, limit=limit)


@pytest.fixture
async def loop_and_fired():
    store = CountingStore()
    fired: "asyncio.Queue[tuple]" = asyncio.Queue()

    async def fire(claim: TimerClaim) -> None:
        await fired.put((claim.name, time.time()))

    schedule = TimerSchedule(store)
    loop = TimerLoop(schedule, fire)
    loop.start()
    yield store, schedule, fired
    await loop.stop()


async def test_a_timer_fires_at_its_due_time_and_once(loop_and_fired):
    store, timers, fired = loop_and_fired
    due = time.time() + 0.3
    await timers.schedule("no_agent:chat-1", due)
    name, at = await asyncio.wait_for(fired.get(), 5)
    assert name == "no_agent:chat-1"
    assert due - 0.02 <= at < due + 0.5
    await asyncio.sleep(0.2)  # wait-ok: a window in which a second firing would show
    assert fired.empty()
    assert await store.timer_due_at("no_agent:chat-1") is None, "finished once fired"


async def test_an_earlier_timer_wakes_the_sleeping_loop_which_does_not_poll(loop_and_fired):
    store, timers, fired = loop_and_fired
    await timers.schedule("waiting:later", time.time() + 60)
    deadline = time.monotonic() + 5
    while not time.time() + 30 < timers.next_look < math.inf:  # the loop sleeps towards the far timer
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)  # wait-ok: polling a condition with a deadline
    looks = store.looks
    await asyncio.sleep(0.5)  # wait-ok: a window in which polling would show
    assert store.looks == looks, "no looks at the store while nothing is due"
    await timers.schedule("idle:sooner", time.time() + 0.1)
    name, _at = await asyncio.wait_for(fired.get(), 5)
    assert name == "idle:sooner"
    assert await store.timer_due_at("waiting:later") is not None


async def test_a_cancelled_timer_does_not_fire(loop_and_fired):
    store, timers, fired = loop_and_fired
    await timers.schedule("no_agent:chat-2", time.time() + 0.2)
    await timers.schedule("no_agent:chat-3", time.time() + 0.4)
    await timers.cancel("no_agent:chat-2")
    name, _at = await asyncio.wait_for(fired.get(), 5)
    assert name == "no_agent:chat-3"


async def test_a_timer_whose_firing_failed_comes_back_after_its_hold():
    store = MemoryStore()
    attempts: List[float] = []
    done = asyncio.Event()

    async def fire(claim: TimerClaim) -> None:
        attempts.append(time.time())
        if len(attempts) == 1:
            raise RuntimeError("the chat could not be left")
        done.set()

    schedule = TimerSchedule(store)
    loop = TimerLoop(schedule, fire, rescan=0.1, hold=0.3)
    loop.start()
    try:
        await schedule.schedule("no_agent:chat-4", time.time())
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await loop.stop()
    assert len(attempts) == 2 and attempts[1] - attempts[0] >= 0.25


@pytest.mark.parametrize(
    "value, text",
    [
        ("8 Seconds", "8 Seconds"),  # ServiceNow's own words stay
        ("120", "about 2 minutes"),
        (30, "less than a minute"),
        (3600, "about 1 hour"),
        ("0", None),
        (0, None),
        ("", None),
        (None, None),
        (True, None),
        (-5, None),
        ("x" * 41, None),
    ],
)
def test_wait_estimates_for_the_user(value, text):
    assert describe_seconds(value) == text


def test_durations_for_the_agent():
    assert describe_duration(3) == "3 seconds"
    assert describe_duration(600) == "10 minutes"
    assert describe_duration(7200) == "2 hours"
