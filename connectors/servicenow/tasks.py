"""Background tasks the connector starts and must not lose: asyncio keeps
only a weak reference to a task, so a task nobody holds can vanish half-way.
One ``TaskSet`` per owner holds them until they finish, and lets the owner
wait for them (or cancel them) when it stops."""

import asyncio
from typing import Any, Awaitable, Iterator, Optional, Set, TypeVar

T = TypeVar("T")


class TaskSet:
    def __init__(self) -> None:
        self._tasks: Set["asyncio.Task[Any]"] = set()

    def spawn(self, work: Awaitable[T], name: Optional[str] = None) -> "asyncio.Task[T]":
        """Run ``work`` as a task held here until it is done."""
        task: "asyncio.Task[T]" = asyncio.ensure_future(work)
        if name is not None:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator["asyncio.Task[Any]"]:
        return iter(list(self._tasks))

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the tasks running now."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def event_within(event: asyncio.Event, timeout: Optional[float]) -> bool:
    """Wait up to ``timeout`` seconds (None: no limit) for ``event``; True
    when it is set.

    Not ``asyncio.wait_for(event.wait(), timeout)``: before Python 3.12, when
    the event is set in the same turn of the loop as the waiting task is
    cancelled, wait_for returns and the cancel is lost (CPython gh-86296), so
    a loop that runs until cancelled (a stream reader whose socket left, a
    poller, the timer runner) runs on for ever."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return bool(done)
