"""Background tasks the connector starts and must not lose: asyncio keeps
only a weak reference to a task, so a task nobody holds can vanish half-way.
One ``TaskSet`` per owner holds them until they finish, and lets the owner
wait for them (or cancel them) when it stops."""

import asyncio
import sys
from typing import Any, AsyncContextManager, Awaitable, Callable, Coroutine, Iterator, Optional, Set, TypeVar

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # Required by aiohttp (which the connector uses) on Python 3.10; asyncio.timeout is its successor.
    from async_timeout import timeout as _timeout

T = TypeVar("T")


class TaskSet:
    def __init__(self) -> None:
        self._tasks: Set["asyncio.Task[Any]"] = set()

    def spawn(self, work: Awaitable[T], name: Optional[str] = None) -> "asyncio.Task[T]":
        """Run ``work`` as a task held here until it is done."""
        # create_task straight away for a coroutine (nearly always): one task
        # per message, and ensure_future's checks are a share of its cost.
        if asyncio.iscoroutine(work):
            task: "asyncio.Task[T]" = asyncio.get_running_loop().create_task(work, name=name)
        else:
            task = asyncio.ensure_future(work)
            if name is not None:
                task.set_name(name)
        return self._held(task)

    def _held(self, task: "asyncio.Task[T]") -> "asyncio.Task[T]":
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run_to_end(
        self,
        work: Coroutine[Any, Any, T],
        on_abandoned: Optional[Callable[["asyncio.Task[Any]"], None]] = None,
    ) -> T:
        """``work``'s answer, from a task of its own held here: a cancel of
        the caller (Sanic cancels a handler whose client hung up) does not
        reach it. ``on_abandoned`` gets that task once it is done, when the
        caller was cancelled first; its result, or the error it raised, is
        then nobody else's.

        What ``await asyncio.shield(self.spawn(work))`` does, one turn of the
        loop sooner and with less Python: the task hands its answer to the
        caller itself, where shield passes it on from a done callback, which
        the loop runs a turn later (docs/benchmarks.md, "Counted, not timed")."""
        loop = asyncio.get_running_loop()
        answer: "asyncio.Future[T]" = loop.create_future()
        answering = _answer_into(work, answer)
        task = self._held(loop.create_task(answering))
        try:
            return await answer
        except asyncio.CancelledError:
            if on_abandoned is not None:
                task.add_done_callback(on_abandoned)
            raise

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


async def _answer_into(work: Coroutine[Any, Any, T], answer: "asyncio.Future[T]") -> Optional[T]:
    """Run ``work`` and settle ``answer`` with what it gives. An error that
    reaches the caller is the caller's to handle, so the task then ends
    without it; one nobody waits for any more stays the task's own."""
    try:
        result = await work
    except Exception as error:
        if answer.done():
            raise
        answer.set_exception(error)
        return None
    except BaseException:  # cancelled (the server is stopping), or the process is ending
        answer.cancel()
        raise
    if not answer.done():
        answer.set_result(result)
    return result


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
    try:
        await bounded(event.wait(), timeout)
    except asyncio.TimeoutError:
        return False
    return True


async def bounded(call: Awaitable[T], timeout: Optional[float]) -> T:
    """``call``'s answer within ``timeout`` seconds (None: no limit), else
    ``asyncio.TimeoutError``; what ``asyncio.wait_for`` does, without losing a
    cancel.

    The call runs as a task of its own, as in wait_for before Python 3.12:
    a client library may itself wait with ``async_timeout`` (redis-py and
    aiohttp do on Python 3.10), and a cancel of the task running it that
    comes as that inner timeout expires is taken for the timeout and
    swallowed. Here the caller's cancel is raised whatever the call does with
    it, and whether or not it had an answer in the same turn (gh-86296)."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        # Like wait_for: the call has let go of what it held before the caller goes on.
        await asyncio.wait({task})
        if task.cancelled():
            raise asyncio.TimeoutError()
    # Its answer or its error (one that finished instead of stopping included).
    return task.result()


def within(seconds: Optional[float]) -> AsyncContextManager[Any]:
    """Cancel the block after ``seconds`` (None: no limit) and raise
    ``asyncio.TimeoutError``. For waits on asyncio's own primitives: a client
    library's code in the block may swallow the cancel (see ``bounded``).

    Where a hot path waits with a deadline (each message takes its
    conversation's lock and reads its body so), this rather than
    ``asyncio.wait_for``: before Python 3.12 wait_for runs the awaited
    coroutine as a task of its own, a cost on every message although the
    deadline almost never passes; this schedules one timer in the current task."""
    return _timeout(seconds)


class Wake:
    """A flag that one loop waits on with a deadline: what ``event_within``
    does for an ``asyncio.Event``, without a task per wait. Each Connect chat
    waits on one every poll interval, so a thousand chats made a thousand
    tasks a second.

    The wait is one future and one timer in the waiting task itself, so a
    cancel is never lost: one that comes in the same turn as a ``set`` (or
    the deadline) is still raised at the ``await``."""

    def __init__(self) -> None:
        self._set = False
        self._waiter: "Optional[asyncio.Future[bool]]" = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self, timeout: Optional[float]) -> bool:
        """Wait up to ``timeout`` seconds (None: no limit); True when set."""
        if self._set:
            return True
        if self._waiter is not None:
            raise RuntimeError("a Wake has one waiter at a time")
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _time_out, waiter) if timeout is not None else None
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _time_out(waiter: "asyncio.Future[bool]") -> None:
    if not waiter.done():
        waiter.set_result(False)
