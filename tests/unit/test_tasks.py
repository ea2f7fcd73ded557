"""connectors/servicenow/tasks.py: waiting on an event with a bound, and a
cancel that comes with the event is never lost; work that outlives a
cancelled caller."""

import asyncio
from typing import Any, List

import pytest

from connectors.servicenow.tasks import TaskSet, Wake, bounded, event_within, within


async def test_an_event_set_in_time_is_true_and_one_that_never_comes_is_false():
    event = asyncio.Event()
    asyncio.get_running_loop().call_soon(event.set)
    assert await event_within(event, 5) is True
    assert await event_within(asyncio.Event(), 0.01) is False
    assert await event_within(event, 0) is True  # already set


def _event_waiter():
    event = asyncio.Event()
    return event.set, event_within(event, 10)


def _wake_waiter():
    wake = Wake()
    return wake.set, wake.wait(10)


def _within_waiter():
    answer = asyncio.get_running_loop().create_future()

    async def wait():
        async with within(10):
            return await answer

    return lambda: answer.set_result(True), wait()


def _bounded_waiter():
    answer = asyncio.get_running_loop().create_future()
    return lambda: answer.set_result(True), bounded(answer, 10)


@pytest.mark.parametrize(
    "make", [_event_waiter, _wake_waiter, _within_waiter, _bounded_waiter], ids=["event_within", "Wake", "within", "bounded"]
)
async def test_a_cancel_in_the_same_turn_as_the_wake_is_never_lost(make):
    # asyncio.wait_for(event.wait(), ...) returns True here before Python 3.12
    # (CPython gh-86296): the flag set and the waiting task cancelled in the
    # same turn of the loop.
    wake_up, wait = make()
    waiting = asyncio.ensure_future(wait)
    await asyncio.sleep(0)  # wait-ok: one turn of the loop, so the task waits first
    wake_up()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_wake_says_whether_it_was_set_within_the_deadline():
    wake = Wake()
    assert await wake.wait(0.01) is False
    wake.set()
    assert await wake.wait(0) is True  # set before the wait: no waiting at all
    wake.clear()
    asyncio.get_running_loop().call_soon(wake.set)
    assert await wake.wait(None) is True


async def test_a_wake_has_one_waiter_at_a_time():
    wake = Wake()
    first = asyncio.ensure_future(wake.wait(10))
    await asyncio.sleep(0)  # wait-ok: lets the first wait begin
    with pytest.raises(RuntimeError):
        await wake.wait(10)
    wake.set()
    assert await first is True


async def test_bounded_gives_the_answer_or_the_error_in_time_and_a_timeout_otherwise():
    async def answer():
        return 42

    async def fail():
        raise ValueError("no")

    assert await bounded(answer(), 5) == 42
    with pytest.raises(ValueError):
        await bounded(fail(), 5)
    with pytest.raises(asyncio.TimeoutError):
        await bounded(asyncio.Event().wait(), 0.01)


async def test_a_cancel_the_call_itself_swallows_still_reaches_the_caller():
    # redis-py 4.6 polls its connection under async_timeout(0) and takes a
    # cancel that comes meanwhile for that timeout: run in the caller's task
    # (``within``), the caller's cancel was gone and a reader read on for ever.
    started = asyncio.Event()

    async def swallowing():
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "swallowed"

    calling = asyncio.ensure_future(bounded(swallowing(), 10))
    await started.wait()
    calling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await calling


async def test_run_to_end_gives_the_answer_or_the_error_of_its_work():
    work = TaskSet()

    async def answer(value: int) -> int:
        return value

    async def fail() -> None:
        raise ValueError("refused")

    assert await work.run_to_end(answer(7)) == 7
    with pytest.raises(ValueError, match="refused"):
        await work.run_to_end(fail())


async def test_run_to_end_finishes_the_work_of_a_caller_that_is_cancelled_and_says_how_it_ended():
    work = TaskSet()
    release = asyncio.Event()
    both_started = asyncio.Event()
    started: List[str] = []
    finished: List[str] = []
    abandoned: "asyncio.Queue[asyncio.Task[Any]]" = asyncio.Queue()

    async def turn(outcome: str) -> str:
        started.append(outcome)
        if len(started) == 2:
            both_started.set()
        await release.wait()
        finished.append(outcome)
        if outcome == "error":
            raise ValueError("after the caller left")
        return outcome

    callers = [asyncio.ensure_future(work.run_to_end(turn(outcome), on_abandoned=abandoned.put_nowait)) for outcome in ("ok", "error")]
    await asyncio.wait_for(both_started.wait(), 5)
    for caller in callers:
        caller.cancel()
    await asyncio.wait(callers)
    assert all(caller.cancelled() for caller in callers)
    assert finished == [] and len(work) == 2  # the work goes on without its callers

    release.set()
    ended = [await asyncio.wait_for(abandoned.get(), 5), await asyncio.wait_for(abandoned.get(), 5)]
    assert sorted(finished) == ["error", "ok"]
    results = {task.result() if task.exception() is None else repr(task.exception()) for task in ended}
    assert results == {"ok", "ValueError('after the caller left')"}


async def test_run_to_end_cancels_the_caller_when_its_work_is_cancelled():
    work = TaskSet()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    caller = asyncio.ensure_future(work.run_to_end(forever()))
    await started.wait()
    work.cancel()  # the server stopping
    with pytest.raises(asyncio.CancelledError):
        await caller
