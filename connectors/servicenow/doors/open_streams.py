"""The ``/stream`` handlers running now, so that a stopping server ends them.

Sanic stops a server by waiting up to ``GRACEFUL_SHUTDOWN_TIMEOUT`` (15 s) for
busy connections, then aborting them; an event stream waiting for the next
item is busy for as long as the conversation lasts. So ``make run`` took 15 s
to stop with a chat page open, and the aborted handler's task was left
pending when the loop closed ("Task was destroyed but it is pending!").

Ended here instead, each stream finishes its response properly (the final
chunk), the browser's ``EventSource`` reconnects with its ``Last-Event-ID``
(to another replica, or to this one once it is back), and nothing is lost:
the items stay in the outbox.
"""

import asyncio
from contextlib import contextmanager
from typing import Iterator, Set


class OpenStreams:
    def __init__(self) -> None:
        self._tasks: "Set[asyncio.Task[object]]" = set()
        #: Set once the server stops: a cancelled stream then ends its response normally.
        self.closing = False

    @contextmanager
    def track(self) -> Iterator[None]:
        """Around a stream handler's loop (in the handler's own task)."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)

    async def close(self, timeout: float) -> None:
        """End every open stream and wait (up to ``timeout``) until they have."""
        self.closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
